//! The shipped CIS policy (`policies/cis-sysctl-level1.yaml`): it validates
//! (its sysctls, the seven kernel modules and the core dump limit of the
//! profile, each under its CIS recommendation), and its `net.*` keys converge
//! on the real kernel — in one `apply` pass and at boot, when the persisted
//! file alone is applied from any starting state — and pass OpenSCAP's CIS
//! rules. The modules and the limit on a real host are the VM suite's
//! (`tests/e2e/scenarios/60-modules.sh`).
//!
//! The real-kernel tests run in a fresh network namespace with a private
//! mount namespace (`unshare --net --mount`): only `net.*` keys are written
//! (they belong to the namespace), and tmpfs mounts hide every sysctl.d
//! directory and /etc/sysctl.conf, so holdfast's persisted file is the only
//! boot configuration and nothing reaches this host's files. The global keys
//! of the policy (`kernel.randomize_va_space`, `fs.suid_dumpable`) are left
//! to the VM suite. They are `#[ignore]`d by default; CI runs them with
//! `--include-ignored`, where a missing scanner or namespace fails them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use holdfast::limits::LimitValue;
use holdfast::policy::{Mode, Policy};
use holdfast::sysctl::Expect;

const POLICY: &str = include_str!("../policies/cis-sysctl-level1.yaml");
const POLICY_NAME: &str = "policies/cis-sysctl-level1.yaml";
const PERSIST: &str = "/etc/sysctl.d/99-zz-holdfast.conf";

/// ComplianceAsCode's content, as Debian's ssg-debderived installs it.
const SSG_DIR: &str = "/usr/share/xml/scap/ssg/content";
const PROFILE: &str = "xccdf_org.ssgproject.content_profile_cis_level1_server";

/// The real-kernel tests need network namespaces; without them they fail.
fn namespaces_available() -> bool {
    common::require(
        common::can_unshare(),
        "root and unshare(2) for a network namespace",
    );
    true
}

/// The shipped policy's keys and their exact values.
fn shipped_keys() -> BTreeMap<String, i128> {
    let policy = Policy::from_files([(POLICY_NAME, POLICY)]).expect("the shipped policy validates");
    policy
        .sysctls
        .values()
        .map(|rule| match &rule.expect {
            Expect::Exact(v) => (
                rule.key.to_string(),
                v.as_single_int().expect("a single number"),
            ),
            other => panic!("{}: scanners check exact values, got {other}", rule.key),
        })
        .collect()
}

/// The policy's `net.*` keys that this kernel has (IPv6 may be disabled).
fn net_keys() -> BTreeMap<String, i128> {
    shipped_keys()
        .into_iter()
        .filter(|(k, _)| k.starts_with("net."))
        .filter(|(k, _)| Path::new("/proc/sys").join(k.replace('.', "/")).exists())
        .collect()
}

/// A policy enforcing `keys`, written in a temp dir.
fn enforce_policy(keys: &BTreeMap<String, i128>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("version: 1\nmode: enforce\nsysctl:\n");
    for (k, v) in keys {
        text.push_str(&format!("  {k}: {v}\n"));
    }
    let path = dir.path().join("cis-net.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A shell fragment that sets every key to a valid value other than the
/// policy's (0 and 1 swapped: every key here is a switch). The keys that
/// reset others go first, so that their side effects do not undo the rest.
fn scramble(keys: &BTreeMap<String, i128>) -> String {
    let mut order: Vec<(&String, &i128)> = keys.iter().collect();
    order.sort_by_key(|(k, _)| !holdfast::sysctl::plan::resets_others(k));
    order
        .iter()
        .map(|(k, v)| format!("sysctl -qw {k}={}\n", i128::from(**v == 0)))
        .collect()
}

/// Runs a script in a new network and mount namespace whose boot
/// configuration is empty: tmpfs over every sysctl.d directory that exists,
/// /dev/null over /etc/sysctl.conf. `$HF` is holdfast, `$P` the policy.
fn in_netns(policy: &Path, script: &str) -> (i32, String) {
    let full = format!(
        r#"set -u
for d in /etc/sysctl.d /run/sysctl.d /usr/local/lib/sysctl.d /usr/lib/sysctl.d /lib/sysctl.d; do
    [ -d "$d" ] && mount -t tmpfs holdfast-test "$d"
done
[ -e /etc/sysctl.conf ] && mount --bind /dev/null /etc/sysctl.conf
ip link set lo up
{script}"#
    );
    common::run_in_netns(policy, &full)
}

/// Values printed by the script as `label KEY=VALUE` lines.
fn values(out: &str, label: &str) -> BTreeMap<String, i128> {
    out.lines()
        .filter_map(|l| l.strip_prefix(label)?.strip_prefix(' '))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn print_values(keys: &BTreeMap<String, i128>, label: &str) -> String {
    keys.keys()
        .map(|k| format!("echo \"{label} {k}=$(sysctl -n {k})\"\n"))
        .collect()
}

#[test]
fn the_shipped_cis_policy_validates_in_audit_mode_with_a_cis_reference_per_key() {
    let policy = Policy::from_files([(POLICY_NAME, POLICY)]).expect("the shipped policy validates");
    assert_eq!(policy.default_mode(), Mode::Audit);
    assert!(policy.sysctls.values().all(|r| r.mode.is_none()));
    // The 25 sysctl rules of ComplianceAsCode's cis_level1_server profile:
    // 16 IPv4, 7 IPv6, ASLR and setuid core dumps.
    let keys = shipped_keys();
    assert_eq!(keys.len(), 25, "{keys:?}");
    assert_eq!(
        keys.keys().filter(|k| k.starts_with("net.ipv4.")).count(),
        16
    );
    assert_eq!(
        keys.keys().filter(|k| k.starts_with("net.ipv6.")).count(),
        7
    );
    assert_eq!(keys["kernel.randomize_va_space"], 2);
    assert_eq!(keys["fs.suid_dumpable"], 0);
    // The seven modules of the profile's kernel_module_*_disabled rules,
    // spelt as the scanners match the modprobe.d line (`usb-storage`).
    let modules: Vec<&str> = policy
        .kernel_modules
        .keys()
        .map(holdfast::modules::ModuleName::written)
        .collect();
    assert_eq!(
        modules,
        [
            "cramfs",
            "freevxfs",
            "hfs",
            "hfsplus",
            "jffs2",
            "udf",
            "usb-storage"
        ]
    );
    // Users' core dumps off (disable_users_coredumps): `* hard core 0`.
    assert_eq!(policy.limits.len(), 1, "{:?}", policy.limits);
    let core = &policy.limits[0];
    assert_eq!(
        (
            core.domain.to_string(),
            core.item.to_string(),
            core.soft,
            core.hard,
            core.mode
        ),
        (
            "*".to_string(),
            "core".to_string(),
            None,
            Some(LimitValue::Value(0)),
            None
        )
    );
    // Every entry is under a comment naming its CIS recommendation, in its
    // own section: `N.N.N` for a key and the limit, `N.N.N` or `N.N.N.N` for a
    // module (CIS numbers the filesystems 1.1.1.x).
    let mut last_cis: Option<&str> = None;
    let mut section = "";
    let mut entries = 0;
    for line in POLICY.lines() {
        let t = line.trim();
        if !t.is_empty() && !line.starts_with([' ', '#']) {
            section = t.split(':').next().unwrap();
            last_cis = None;
        } else if t.starts_with("# CIS ") {
            last_cis = Some(t);
        } else if !t.is_empty() && !t.starts_with('#') {
            let parts = match section {
                "sysctl" | "limits" => 3..=3,
                "kernel_modules" => 3..=4,
                other => panic!("{t}: an entry of {other}, which has no CIS comments"),
            };
            let cis = last_cis.unwrap_or_else(|| panic!("no CIS comment above {t} in {section}"));
            let number = cis["# CIS ".len()..].split(':').next().unwrap();
            assert!(
                parts.contains(&number.split('.').count())
                    && number.split('.').all(|n| n.parse::<u32>().is_ok()),
                "{section}: {cis}"
            );
            entries += 1;
        }
    }
    assert_eq!(
        entries,
        25 + 7 + 1,
        "every entry of the three sections was checked"
    );
    // And the CLI accepts it as a user would give it.
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args([
            "validate",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/policies/cis-sysctl-level1.yaml"
            ),
        ])
        .status()
        .map(|s| assert!(s.success()))
        .unwrap();
}

#[test]
#[ignore = "needs root, network namespaces and OpenSCAP: cargo test -- --include-ignored"]
fn one_apply_pass_converges_the_cis_net_keys_from_any_values() {
    if !namespaces_available() {
        return;
    }
    let keys = net_keys();
    let (_d, p) = enforce_policy(&keys);
    let script = format!(
        "{scramble}{before}\"$HF\" apply --policy \"$P\" >/dev/null; echo \"apply=$?\"\n{after}\"$HF\" check --policy \"$P\"; echo \"check=$?\"\n",
        scramble = scramble(&keys),
        before = print_values(&keys, "scrambled"),
        after = print_values(&keys, "after"),
    );
    let (code, out) = in_netns(&p, &script);
    assert_eq!(code, 0, "{out}");
    let scrambled = values(&out, "scrambled");
    assert_eq!(scrambled.len(), keys.len(), "{out}");
    for (k, v) in &keys {
        assert_ne!(scrambled[k], *v, "{k} was not scrambled: {out}");
    }
    assert_eq!(values(&out, "after"), keys, "{out}");
    assert!(out.contains("apply=0"), "{out}");
    assert!(out.contains("check=0"), "{out}");
}

#[test]
#[ignore = "needs root, network namespaces and OpenSCAP: cargo test -- --include-ignored"]
fn boot_applying_the_persisted_file_alone_converges_from_any_values() {
    if !namespaces_available() {
        return;
    }
    let keys = net_keys();
    let (_d, p) = enforce_policy(&keys);
    // procps' `sysctl -p FILE` stands in for systemd-sysctl where systemd
    // is absent; both apply the lines in file order. systemd-sysctl, when
    // installed, is run on the same scrambled state too.
    let mut script = format!(
        "\"$HF\" apply --policy \"$P\" >/dev/null; echo \"apply=$?\"\necho persisted:; cat {PERSIST}\n{scramble}{before}sysctl -p {PERSIST} >/dev/null; echo \"sysctl-p=$?\"\n{after}\"$HF\" check --policy \"$P\" >/dev/null; echo \"check=$?\"\n",
        scramble = scramble(&keys),
        before = print_values(&keys, "scrambled"),
        after = print_values(&keys, "after-sysctl-p"),
    );
    let systemd_sysctl = [
        "/usr/lib/systemd/systemd-sysctl",
        "/lib/systemd/systemd-sysctl",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(bin) = systemd_sysctl {
        script.push_str(&format!(
            "{scramble}{bin} {PERSIST}; echo \"systemd-sysctl=$?\"\n{after}",
            scramble = scramble(&keys),
            after = print_values(&keys, "after-systemd-sysctl"),
        ));
    }
    let (code, out) = in_netns(&p, &script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("apply=0"), "{out}");
    let scrambled = values(&out, "scrambled");
    for (k, v) in &keys {
        assert_ne!(scrambled.get(k), Some(v), "{k} was not scrambled: {out}");
    }
    // Every key the kernel has is a plain line, so scanners can read it.
    for k in keys.keys() {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{k} = "))),
            "{k}: {out}"
        );
    }
    assert!(out.contains("sysctl-p=0"), "{out}");
    assert_eq!(values(&out, "after-sysctl-p"), keys, "{out}");
    assert!(out.contains("check=0"), "{out}");
    if systemd_sysctl.is_some() {
        assert!(out.contains("systemd-sysctl=0"), "{out}");
        assert_eq!(values(&out, "after-systemd-sysctl"), keys, "{out}");
    } else {
        eprintln!("systemd-sysctl is not installed: checked with sysctl -p only");
    }
}

/// The Ubuntu 22.04 content with its `<platform idref=…/>` lines removed, so
/// that OpenSCAP evaluates it on Debian too, in a temp dir beside links to
/// the files it references. `None` when the scanner or content is missing.
fn scanner_content() -> Option<(tempfile::TempDir, PathBuf)> {
    let xccdf = Path::new(SSG_DIR).join("ssg-ubuntu2204-xccdf.xml");
    let have_oscap = Command::new("oscap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    common::require(
        have_oscap && xccdf.exists(),
        "oscap and ComplianceAsCode content (apt-get install openscap-scanner ssg-debderived)",
    );
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&xccdf).unwrap();
    let trimmed: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("<xccdf-1.2:platform idref="))
        .flat_map(|l| [l, "\n"])
        .collect();
    let path = dir.path().join("ssg-ubuntu2204-xccdf.xml");
    std::fs::write(&path, trimmed).unwrap();
    for entry in std::fs::read_dir(SSG_DIR).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ssg-ubuntu2204-") && !name.ends_with("-xccdf.xml") {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(&*name)).unwrap();
        }
    }
    Some((dir, path))
}

fn rule_id(key: &str) -> String {
    format!(
        "xccdf_org.ssgproject.content_rule_sysctl_{}",
        key.replace('.', "_")
    )
}

/// `Rule`/`Result` pairs of `oscap xccdf eval`'s report on stdout. Each
/// line is `LABEL\r\tVALUE` (the carriage return serves its progress
/// display).
fn oscap_results(out: &str) -> BTreeMap<String, String> {
    let mut results = BTreeMap::new();
    let mut rule = None;
    for line in out.lines() {
        let Some((label, value)) = line.split_once('\t') else {
            continue;
        };
        match label.trim() {
            "Rule" => rule = Some(value.trim().to_string()),
            "Result" => {
                if let Some(r) = rule.take() {
                    results.insert(r, value.trim().to_string());
                }
            }
            _ => {}
        }
    }
    results
}

#[test]
#[ignore = "needs root, network namespaces and OpenSCAP: cargo test -- --include-ignored"]
fn openscap_passes_the_cis_rules_of_the_policy_net_keys_after_apply() {
    if !namespaces_available() {
        return;
    }
    let Some((_content, xccdf)) = scanner_content() else {
        return;
    };
    let keys = net_keys();
    assert!(
        keys.keys().filter(|k| k.starts_with("net.ipv4.")).count() == 16,
        "{keys:?}"
    );
    // Every key is a rule of the profile (the policy follows the content).
    let content = std::fs::read_to_string(&xccdf).unwrap();
    let profile_start = content
        .find(&format!("Profile id=\"{PROFILE}\""))
        .expect("the profile is in the content");
    let profile = &content[profile_start..];
    let profile = &profile[..profile.find("Profile>").unwrap()];
    let rules: Vec<String> = keys.keys().map(|k| rule_id(k)).collect();
    for rule in &rules {
        assert!(
            profile.contains(&format!("idref=\"{rule}\" selected=\"true\"")),
            "{rule} is not in {PROFILE}"
        );
    }
    let (_d, p) = enforce_policy(&keys);
    let rule_args: String = rules.iter().map(|r| format!(" --rule {r}")).collect();
    let script = format!(
        "{scramble}\"$HF\" apply --policy \"$P\" >/dev/null; echo \"apply=$?\"\noscap xccdf eval --profile {PROFILE}{rule_args} {xccdf} 2>&1; echo \"oscap=$?\"\n",
        scramble = scramble(&keys),
        xccdf = xccdf.display(),
    );
    let (code, out) = in_netns(&p, &script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("apply=0"), "{out}");
    let results = oscap_results(&out);
    let passed = results.values().filter(|r| *r == "pass").count();
    eprintln!(
        "OpenSCAP {PROFILE}: {passed} passed, {} not passed, of {} rules",
        results.len() - passed,
        rules.len()
    );
    for rule in &rules {
        assert_eq!(
            results.get(rule).map(String::as_str),
            Some("pass"),
            "{rule}: {out}"
        );
    }
    assert!(out.contains("oscap=0"), "{out}");
}

/// A distribution file as upstream systemd's 50-default.conf has it: one
/// line that sets a CIS key to another value (loose reverse-path filtering),
/// lines that agree with the policy or set keys it does not manage. Only
/// `net.*` keys, which belong to the test's network namespace.
const VENDOR_DEFAULT: &str = "# Source route verification\n\
net.ipv4.conf.default.rp_filter = 2\n\
# Do not accept source routing\n\
net.ipv4.conf.default.accept_source_route = 0\n\
# Promote secondary addresses when the primary address is removed\n\
net.ipv4.conf.default.promote_secondaries = 1\n";

#[test]
#[ignore = "needs root, network namespaces and OpenSCAP: cargo test -- --include-ignored"]
fn boot_applies_holdfasts_copy_of_a_conflicting_vendor_file_instead_of_the_file() {
    if !namespaces_available() {
        return;
    }
    let keys = net_keys();
    let (dir, report) = enforce_policy(&keys);
    let text = std::fs::read_to_string(&report).unwrap();
    let over = dir.path().join("cis-net-override.yaml");
    std::fs::write(
        &over,
        text.replace(
            "mode: enforce\n",
            "mode: enforce\nsysctl_conflicts: override\n",
        ),
    )
    .unwrap();
    // A host root of its own: holdfast's files, journal and lock stay in
    // it; its proc is the namespace's, and its sysctl.d directories are
    // mounted where systemd-sysctl and `sysctl --system` read them.
    let root = tempfile::tempdir().unwrap();
    let systemd_sysctl = [
        "/usr/lib/systemd/systemd-sysctl",
        "/lib/systemd/systemd-sysctl",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let mut script = format!(
        r#"R="$ROOT"
mkdir -p "$R/proc" "$R/etc/sysctl.d" "$R/usr/lib/sysctl.d"
mount --bind /proc "$R/proc"
mount --bind "$R/etc/sysctl.d" /etc/sysctl.d
mount --bind "$R/usr/lib/sysctl.d" /usr/lib/sysctl.d
cat > "$R/usr/lib/sysctl.d/50-default.conf" <<'VENDOR'
{VENDOR_DEFAULT}VENDOR
"$HF" --root "$R" apply --policy "$P" >/dev/null; echo "apply-report=$?"
sysctl --system 2>&1 | sed 's/^/reported /'
"$HF" --root "$R" apply --policy "$OVER" >/dev/null; echo "apply-override=$?"
sed 's/^/copy /' "$R/etc/sysctl.d/50-default.conf"
{scramble}sysctl --system 2>&1 | sed 's/^/system /'
{after}"$HF" --root "$R" check --policy "$OVER" >/dev/null; echo "check=$?"
"#,
        scramble = scramble(&keys),
        after = print_values(&keys, "after-system"),
    );
    if let Some(bin) = systemd_sysctl {
        script.push_str(&format!(
            "{scramble}{bin}; echo \"systemd-sysctl=$?\"\n{after}",
            scramble = scramble(&keys),
            after = print_values(&keys, "after-systemd-sysctl"),
        ));
    }
    let full = format!(
        r#"set -u
for d in /etc/sysctl.d /run/sysctl.d /usr/local/lib/sysctl.d /usr/lib/sysctl.d /lib/sysctl.d; do
    [ -d "$d" ] && mount -t tmpfs holdfast-test "$d"
done
[ -e /etc/sysctl.conf ] && mount --bind /dev/null /etc/sysctl.conf
ip link set lo up
{script}"#
    );
    let (code, out) = common::run_in_netns_with(
        &report,
        &full,
        &[("ROOT", root.path()), ("OVER", over.as_path())],
    );
    assert_eq!(code, 0, "{out}");
    let section = |label: &str| -> String {
        out.lines()
            .filter_map(|l| l.strip_prefix(label)?.strip_prefix(' '))
            .flat_map(|l| [l, "\n"])
            .collect()
    };
    assert!(out.contains("apply-report=0"), "{out}");
    assert!(out.contains("apply-override=0"), "{out}");
    // Reported only: boot applies the vendor file (holdfast's own file
    // wins, later).
    assert!(
        section("reported").contains("Applying /usr/lib/sysctl.d/50-default.conf"),
        "{out}"
    );
    // The copy: the conflicting line commented out, the others kept.
    let copy = section("copy");
    assert!(copy.starts_with("# Managed by holdfast"), "{out}");
    assert!(
        copy.contains("\n#net.ipv4.conf.default.rp_filter = 2\n"),
        "{out}"
    );
    assert!(
        copy.contains("\nnet.ipv4.conf.default.promote_secondaries = 1\n"),
        "{out}"
    );
    // Overridden: boot applies the copy instead of the vendor file, and
    // ends with the policy's values from any start.
    let system = section("system");
    assert!(
        system.contains("Applying /etc/sysctl.d/50-default.conf"),
        "{out}"
    );
    assert!(
        !system.contains("/usr/lib/sysctl.d/50-default.conf"),
        "{out}"
    );
    assert!(!system.contains("rp_filter = 2"), "{out}");
    assert_eq!(values(&out, "after-system"), keys, "{out}");
    assert!(out.contains("check=0"), "{out}");
    if systemd_sysctl.is_some() {
        assert!(out.contains("systemd-sysctl=0"), "{out}");
        assert_eq!(values(&out, "after-systemd-sysctl"), keys, "{out}");
    } else {
        eprintln!("systemd-sysctl is not installed: checked with sysctl --system only");
    }
}
