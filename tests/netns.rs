//! Real-kernel tests: holdfast against the real /proc/sys, inside a fresh
//! network namespace (`unshare --net`) with a tmpfs over /etc/sysctl.d
//! (`--mount`), so nothing it writes reaches this host's settings or files.
//! Only `net.*` keys are used: they belong to the namespace. Needs root (CI
//! is root); elsewhere the tests say they were skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::path::Path;

/// Runs a shell script in a new network and mount namespace, with a private
/// tmpfs on /etc/sysctl.d. `$HF` is the holdfast binary, `$P` the policy.
fn in_netns(policy: &Path, script: &str) -> (i32, String) {
    let full = format!("set -u\nmount -t tmpfs holdfast-test /etc/sysctl.d\n{script}");
    common::run_in_netns(policy, &full)
}

macro_rules! require_namespaces {
    () => {
        common::require(
            common::can_unshare(),
            "root and unshare(2) for a network namespace",
        );
    };
}

fn policy(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("netns.yaml");
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

#[test]
#[ignore = "needs root and network namespaces: cargo test -- --include-ignored"]
fn apply_sets_net_keys_on_the_real_kernel_and_check_then_passes() {
    require_namespaces!();
    let host_somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    let host_persist_exists = Path::new("/etc/sysctl.d/99-zz-holdfast.conf").exists();
    let (_d, p) = policy(
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 8191\n  net.ipv4.ip_local_port_range: \"20000   50000\"\n  net.ipv4.conf.holdfast0.rp_filter: 1\n",
    );
    let (code, out) = in_netns(
        &p,
        r#"
"$HF" check --policy "$P" >/dev/null; echo "check-before=$?"
J=$(mktemp)
"$HF" apply --policy "$P" --format json > "$J"; echo "apply=$?"
echo "somaxconn=$(cat /proc/sys/net/core/somaxconn)"
echo "range=$(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' ')"
"$HF" check --policy "$P"; echo "check-after=$?"
"$HF" apply --policy "$P" --format json | grep -c '"state": "corrected"' ; echo "reapply-corrected-count"
echo "persisted:"; cat /etc/sysctl.d/99-zz-holdfast.conf
grep -o '"state": "[a-z-]*"' "$J" | sort | uniq -c
rm -f "$J"
"#,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("check-before=2"), "{out}");
    assert!(out.contains("apply=0"), "{out}");
    assert!(out.contains("somaxconn=8191"), "{out}");
    assert!(out.contains("range=20000 50000"), "{out}");
    assert!(out.contains("check-after=0"), "{out}");
    // The second apply corrects nothing.
    assert!(out.contains("0\nreapply-corrected-count"), "{out}");
    // The missing interface's key is unsupported, and persisted with '-';
    // the keys the kernel has are plain `KEY = VALUE` lines.
    assert!(out.contains("\"state\": \"unsupported\""), "{out}");
    assert!(
        out.contains("-net.ipv4.conf.holdfast0.rp_filter = 1"),
        "{out}"
    );
    assert!(out.contains("\nnet.core.somaxconn = 8191\n"), "{out}");
    assert!(!out.contains("-net.core.somaxconn"), "{out}");
    // Nothing leaked to this host.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap(),
        host_somaxconn
    );
    assert_eq!(
        Path::new("/etc/sysctl.d/99-zz-holdfast.conf").exists(),
        host_persist_exists
    );
}

#[test]
#[ignore = "needs root and network namespaces: cargo test -- --include-ignored"]
fn a_key_that_appears_later_is_applied_when_it_appears() {
    require_namespaces!();
    let (_d, p) = policy("version: 1\nmode: enforce\nsysctl:\n  net.ipv4.conf.hf0.rp_filter: 2\n");
    let (code, out) = in_netns(
        &p,
        r#"
"$HF" apply --policy "$P" >/dev/null; echo "first=$?"
echo "persisted-before: $(grep rp_filter /etc/sysctl.d/99-zz-holdfast.conf)"
ip link add hf0 type veth peer name hf1 2>/dev/null || { echo "no-veth"; exit 0; }
"$HF" check --policy "$P" >/dev/null; echo "check=$?"
"$HF" apply --policy "$P" >/dev/null; echo "second=$?"
echo "value=$(cat /proc/sys/net/ipv4/conf/hf0/rp_filter)"
echo "persisted-after: $(grep rp_filter /etc/sysctl.d/99-zz-holdfast.conf)"
"#,
    );
    assert_eq!(code, 0, "{out}");
    common::require(!out.contains("no-veth"), "a veth pair (ip link add)");
    assert!(out.contains("first=0"), "{out}");
    assert!(out.contains("check=2"), "{out}");
    assert!(out.contains("second=0"), "{out}");
    assert!(out.contains("value=2"), "{out}");
    // Absent, the key was persisted with systemd-sysctl's '-'; once the
    // kernel has it, as a plain line that scanners read.
    assert!(
        out.contains("persisted-before: -net.ipv4.conf.hf0.rp_filter = 2"),
        "{out}"
    );
    assert!(
        out.contains("persisted-after: net.ipv4.conf.hf0.rp_filter = 2"),
        "{out}"
    );
}

#[test]
#[ignore = "needs root and network namespaces: cargo test -- --include-ignored"]
fn the_kernel_rejecting_a_value_is_a_failed_item_not_a_crash() {
    require_namespaces!();
    // ip_local_port_range rejects a range whose start is above its end.
    let (_d, p) = policy(
        "version: 1\nmode: enforce\nsysctl:\n  net.ipv4.ip_local_port_range: \"60000 1000\"\n",
    );
    let (code, out) = in_netns(
        &p,
        r#"
"$HF" apply --policy "$P"; echo "apply=$?"
"#,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("apply=2"), "{out}");
    assert!(out.contains("failed"), "{out}");
    assert!(out.contains("EINVAL"), "{out}");
}

#[test]
#[ignore = "needs root and network namespaces: cargo test -- --include-ignored"]
fn what_holdfast_says_boot_does_with_globs_exclusions_and_masks_is_what_systemd_sysctl_does() {
    require_namespaces!();
    let sysctl = Path::new("/lib/systemd/systemd-sysctl");
    common::require(sysctl.exists(), "systemd-sysctl (Debian: systemd)");
    // Keys of four veth interfaces (and `all`), each decided differently at
    // boot by the same files. rp_filter (the policy wants 1): the vendor
    // glob sets every interface to 2 and excludes `all`; a site file names
    // hf1; a file read after holdfast's sets hf0-hf9 to 0 by a glob and
    // excludes hf2. accept_local (the policy wants 0): hf0's vendor file is
    // masked by a link to /dev/null in /etc, hf1's by a file of its name in
    // /run that sets the wanted value.
    let keys: Vec<(String, &str)> = ["all", "hf0", "hf1", "hf2", "hf3"]
        .iter()
        .map(|k| (format!("net.ipv4.conf.{k}.rp_filter"), "1"))
        .chain(
            ["hf0", "hf1"]
                .iter()
                .map(|k| (format!("net.ipv4.conf.{k}.accept_local"), "0")),
        )
        .collect();
    let rules: String = keys.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect();
    let (_d, audit) = policy(&format!("version: 1\nmode: audit\nsysctl:\n{rules}"));
    let (_e, enforce) = policy(&format!("version: 1\nmode: enforce\nsysctl:\n{rules}"));
    // Before boot runs, every key has the policy's value, so a key boot
    // leaves alone still reads it.
    let reset: String = keys
        .iter()
        .map(|(k, v)| format!("echo {v} > /proc/sys/{}; ", k.replace('.', "/")))
        .collect();
    let show: String = keys
        .iter()
        .map(|(k, _)| {
            format!(
                "echo \"$1 kernel {k}=$(cat /proc/sys/{})\"; ",
                k.replace('.', "/")
            )
        })
        .collect();
    let script = format!(
        r#"set -u
for d in /etc/sysctl.d /run/sysctl.d /usr/local/lib/sysctl.d /usr/lib/sysctl.d /lib/sysctl.d; do
    [ -d "$d" ] && mount -t tmpfs holdfast-test "$d"
done
T=$(mktemp -d); mount -t tmpfs holdfast-test "$T"; trap 'umount "$T"; rmdir "$T"' EXIT
[ -e /etc/sysctl.conf ] && : > "$T/empty" && mount --bind "$T/empty" /etc/sysctl.conf
mkdir -p /usr/lib/sysctl.d /run/sysctl.d
printf 'net.ipv4.conf.*.rp_filter = 2\n-net.ipv4.conf.all.rp_filter\n' > /usr/lib/sysctl.d/50-vendor.conf
printf 'net.ipv4.conf.hf1.rp_filter = 0\n' > /etc/sysctl.d/60-site.conf
printf 'net.ipv4.conf.hf[0-9].rp_filter = 0\n-net.ipv4.conf.hf2.rp_filter\n' > /etc/sysctl.d/99-zzz-late.conf
printf 'net.ipv4.conf.hf0.accept_local = 1\n' > /usr/lib/sysctl.d/40-masked.conf
ln -s /dev/null /etc/sysctl.d/40-masked.conf
printf 'net.ipv4.conf.hf1.accept_local = 1\n' > /usr/lib/sysctl.d/45-same.conf
printf 'net.ipv4.conf.hf1.accept_local = 0\n' > /run/sysctl.d/45-same.conf
ip link add hf0 type veth peer name hf1 && ip link add hf2 type veth peer name hf3 || {{ echo no-veth; exit 0; }}
reset() {{ {reset}}}
boot() {{
    reset; /lib/systemd/systemd-sysctl || echo "systemd-sysctl failed"
    {show}
}}
reset; echo "audit json $("$HF" check --policy "$A" --format json | tr -d '\n')"
boot audit
"$HF" apply --policy "$P" > /dev/null; echo "apply=$?"
reset; echo "enforce json $("$HF" check --policy "$P" --format json | tr -d '\n')"
boot enforce
"#
    );
    let (code, out) = common::run_in_netns_with(&enforce, &script, &[("A", audit.as_path())]);
    assert_eq!(code, 0, "{out}");
    common::require(!out.contains("no-veth"), "a veth pair (ip link add)");
    assert!(!out.contains("systemd-sysctl failed"), "{out}");
    assert!(out.contains("apply=0"), "{out}");
    for mode in ["audit", "enforce"] {
        let json = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{mode} json ")))
            .unwrap_or_else(|| panic!("no {mode} report: {out}"));
        let report: serde_json::Value = serde_json::from_str(json).unwrap();
        for (key, wanted) in &keys {
            let item = report["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["key"] == key.as_str())
                .unwrap_or_else(|| panic!("no item {key}: {json}"));
            // What holdfast says boot leaves: the winning conflict's value;
            // else, enforced, holdfast's; in audit mode, a compliant line or
            // nothing, which both leave the policy's value here.
            let winner = item["conflicts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["wins_at_boot"] == true)
                .and_then(|c| c["value"].as_str())
                .filter(|v| !v.starts_with("nothing"));
            let judged = format!("{mode} kernel {key}={}", winner.unwrap_or(wanted));
            assert!(
                out.lines().any(|l| l == judged),
                "holdfast predicts {judged}, systemd-sysctl did otherwise:\n{out}"
            );
        }
    }
    // The cases are not all alike.
    for line in [
        // The late glob; hf1's own line, though the glob comes after it;
        // hf2's exclusion keeps both globs off it, the earlier one too;
        // `all`'s keeps the vendor glob off.
        "audit kernel net.ipv4.conf.hf0.rp_filter=0",
        "audit kernel net.ipv4.conf.hf1.rp_filter=0",
        "audit kernel net.ipv4.conf.hf2.rp_filter=1",
        "audit kernel net.ipv4.conf.all.rp_filter=1",
        // Enforced, holdfast's line beats every glob and hf1's earlier
        // line; the late exclusion drops holdfast's line for hf2 (which the
        // check reports).
        "enforce kernel net.ipv4.conf.hf0.rp_filter=1",
        "enforce kernel net.ipv4.conf.hf1.rp_filter=1",
        "enforce kernel net.ipv4.conf.hf3.rp_filter=1",
    ] {
        assert!(out.lines().any(|l| l == line), "{line}:\n{out}");
    }
    assert!(
        out.contains("99-zzz-late.conf:2 excludes the key (`-net.ipv4.conf.hf2.rp_filter`)"),
        "{out}"
    );
}
