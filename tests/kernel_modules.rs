//! The kernel modules area on a fake host root, through the CLI: modprobe.d
//! read as modprobe reads it, holdfast's file written in enforce mode, a
//! loaded module reported and never unloaded, a competing earlier install
//! line named, and rollback removing holdfast's file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use common::{FakeHost, item, state};

const OWN: &str = "etc/modprobe.d/00-holdfast.conf";

const CIS: &str = "version: 1
mode: enforce
kernel_modules:
  cramfs: disabled
  usb-storage: disabled
  hfs: disabled
";

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.write("etc/modprobe.d/.keep", "");
    // usb_storage is loaded (used by uas); the others are not.
    h.write(
        "proc/modules",
        "usb_storage 81920 1 uas, Live 0x0000000000000000\nuas 32768 0 - Live 0x0000000000000000\n",
    );
    h
}

#[test]
fn apply_writes_both_lines_per_module_reports_a_loaded_one_and_rollback_removes_the_file() {
    let h = host();
    let p = h.policy("p.yaml", CIS);
    let p = p.to_str().unwrap();

    let (code, before) = h.json(&["check", "--policy", p]);
    assert_eq!(code, 2, "{before:#}");
    assert_eq!(state(&before, "kernel module cramfs"), "drifted");
    assert_eq!(item(&before, "kernel module cramfs")["actual"], "loadable");

    let (code, after) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 2, "a loaded module stays: {after:#}");
    assert_eq!(state(&after, "kernel module cramfs"), "corrected");
    assert_eq!(state(&after, "kernel module hfs"), "corrected");
    let usb = item(&after, "kernel module usb-storage");
    assert_eq!(usb["state"], "restart-required", "{usb:#}");
    let detail = usb["detail"].to_string();
    assert!(detail.contains("used by uas"), "{detail}");
    let own = h.read(OWN);
    assert!(own.starts_with("# Managed by holdfast"), "{own}");
    for line in [
        "install cramfs /bin/false",
        "blacklist cramfs",
        "install usb-storage /bin/false",
        "blacklist usb-storage",
        "install hfs /bin/false",
        "blacklist hfs",
    ] {
        assert!(own.lines().any(|l| l == line), "{line} missing from {own}");
    }
    // Nothing unloaded: the kernel's list is as it was.
    assert!(h.read("proc/modules").contains("usb_storage"));

    // Once the module is gone (unloaded by hand, or a reboot), all compliant.
    h.write("proc/modules", "");
    let (code, again) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{again:#}");
    assert!(
        again["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"].is_null())
    );

    h.holdfast(&["rollback"]).assert().success();
    assert!(!h.path(OWN).exists(), "rollback removes holdfast's file");
}

#[test]
fn an_earlier_files_install_line_beats_holdfasts_and_is_named() {
    let h = host();
    // Sorts before 00-holdfast.conf: modprobe runs its install line.
    h.write(
        "usr/lib/modprobe.d/00-aaa.conf",
        "install cramfs /sbin/modprobe --ignore-install cramfs\n",
    );
    let p = h.policy(
        "p.yaml",
        "version: 1\nmode: enforce\nkernel_modules:\n  cramfs: disabled\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{report:#}");
    let cramfs = item(&report, "kernel module cramfs");
    assert_eq!(cramfs["state"], "drifted", "{cramfs:#}");
    let detail = cramfs["detail"].to_string();
    assert!(detail.contains("00-aaa.conf:1"), "{detail}");
    assert!(
        !cramfs["conflicts"].as_array().unwrap().is_empty(),
        "{cramfs:#}"
    );
}

#[test]
fn audit_mode_reports_and_writes_nothing() {
    let h = host();
    let p = h.policy("p.yaml", &CIS.replace("mode: enforce", "mode: audit"));
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(state(&report, "kernel module hfs"), "drifted");
    assert!(!h.path(OWN).exists());
}

#[test]
fn a_bad_module_entry_is_refused_with_its_line() {
    let h = host();
    let p = h.policy(
        "p.yaml",
        "version: 1\nkernel_modules:\n  cramfs: enabled\n  \"a b\": disabled\n  usb_storage: disabled\n  usb-storage: disabled\n",
    );
    let out = h
        .holdfast(&["validate", "--policy", p.to_str().unwrap()])
        .output()
        .expect("run holdfast validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.yaml:3:"), "{err}");
    assert!(err.contains("unknown state \"enabled\""), "{err}");
    assert!(err.contains("p.yaml:4:"), "{err}");
    assert!(
        err.contains("p.yaml:6:") && err.contains("listed twice"),
        "{err}"
    );
}

/// The running kernel's module index decides what it has: a module in
/// modules.builtin is unsupported even without a /sys/module directory (a
/// built-in module without parameters has none), and one in neither
/// modules.dep nor modules.builtin is "not in this kernel" — still drifted
/// until the configuration refuses it, compliant once it does.
#[test]
fn the_kernel_module_index_tells_built_in_and_missing_modules() {
    let h = host();
    h.write("proc/sys/kernel/osrelease", "6.1.0-test-amd64\n");
    h.write(
        "lib/modules/6.1.0-test-amd64/modules.dep",
        "kernel/fs/hfs/hfs.ko.xz: kernel/drivers/cdrom/cdrom.ko.xz\n\
         kernel/drivers/usb/storage/usb-storage.ko.xz: kernel/drivers/scsi/sd_mod.ko.xz\n",
    );
    h.write(
        "lib/modules/6.1.0-test-amd64/modules.builtin",
        "kernel/fs/udf/udf.ko\n",
    );
    let p = h.policy(
        "p.yaml",
        "version: 1
mode: enforce
kernel_modules:
  cramfs: disabled
  hfs: disabled
  udf: disabled
",
    );
    let p = p.to_str().unwrap();

    let (code, before) = h.json(&["check", "--policy", p]);
    assert_eq!(code, 2, "{before:#}");
    let cramfs = item(&before, "kernel module cramfs");
    assert_eq!(cramfs["state"], "drifted", "{cramfs:#}");
    assert_eq!(cramfs["actual"], "not in this kernel");
    assert!(
        cramfs["detail"]
            .to_string()
            .contains("kernel 6.1.0-test-amd64 has no such module"),
        "{cramfs:#}"
    );
    assert_eq!(item(&before, "kernel module hfs")["actual"], "loadable");
    let udf = item(&before, "kernel module udf");
    assert_eq!(udf["state"], "unsupported", "{udf:#}");
    assert_eq!(udf["actual"], "built into the kernel");

    let (_, after) = h.json(&["apply", "--policy", p]);
    let cramfs = item(&after, "kernel module cramfs");
    assert_eq!(cramfs["state"], "corrected", "{cramfs:#}");
    assert_eq!(cramfs["actual"], "disabled (not in this kernel)");
    let (_, again) = h.json(&["check", "--policy", p]);
    assert_eq!(state(&again, "kernel module cramfs"), "compliant");
    assert_eq!(state(&again, "kernel module hfs"), "compliant");
}

/// `unload: true` plans `rmmod NAME` for a loaded module nothing uses, and
/// leaves one in use reported with its users. Under a fake root the running
/// kernel is not the root's: the unload fails, saying so, and the kernel's
/// list is untouched.
#[test]
fn unload_true_plans_an_unload_of_an_unused_module_only() {
    let h = host();
    h.write(
        "proc/modules",
        "usb_storage 81920 1 uas, Live 0x0000000000000000\n\
         uas 32768 0 - Live 0x0000000000000000\n\
         hfs 65536 0 - Live 0x0000000000000000\n",
    );
    let p = h.policy(
        "p.yaml",
        "version: 1
mode: enforce
kernel_modules:
  hfs: {state: disabled, unload: true}
  usb-storage: {unload: true}
",
    );
    let p = p.to_str().unwrap();

    let (code, plan) = h.json(&["check", "--policy", p]);
    assert_eq!(code, 2, "{plan:#}");
    let hfs = item(&plan, "kernel module hfs");
    assert_eq!(hfs["state"], "drifted", "{hfs:#}");
    assert_eq!(hfs["desired"], "disabled, not loaded");
    assert_eq!(hfs["action"], "rmmod hfs", "{hfs:#}");
    let usb = item(&plan, "kernel module usb-storage");
    assert!(
        usb["action"].is_null(),
        "in use: no unload planned: {usb:#}"
    );
    let detail = usb["detail"].to_string();
    assert!(
        detail.contains("holdfast unloads it once nothing uses it (used by uas now)"),
        "{detail}"
    );

    let (code, after) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 2, "{after:#}");
    let hfs = item(&after, "kernel module hfs");
    assert_eq!(hfs["state"], "failed", "{hfs:#}");
    assert!(
        hfs["detail"]
            .to_string()
            .contains("not this machine's kernel"),
        "{hfs:#}"
    );
    assert!(h.read("proc/modules").contains("hfs "), "nothing unloaded");
    // The configuration is written all the same.
    assert!(h.read(OWN).lines().any(|l| l == "install hfs /bin/false"));

    // Gone (unloaded elsewhere): compliant, nothing planned.
    h.write("proc/modules", "");
    let (code, again) = h.json(&["check", "--policy", p]);
    assert_eq!(code, 0, "{again:#}");
}

/// A module's own mode: audited modules are reported and left out of
/// holdfast's file, in a policy that enforces the others; a later file's
/// entry replaces the earlier one whole.
#[test]
fn a_modules_own_mode_keeps_it_out_of_holdfasts_file() {
    let h = host();
    let dir = h.path("policy.d");
    h.write("policy.d/50-cis.yaml", CIS);
    h.write(
        "policy.d/90-exempt.yaml",
        "version: 1\nkernel_modules:\n  hfs: {mode: audit}\n",
    );
    let dir = dir.to_str().unwrap();
    let (code, report) = h.json(&["apply", "--policy", dir]);
    assert_eq!(code, 2, "{report:#}");
    let hfs = item(&report, "kernel module hfs");
    assert_eq!(hfs["state"], "drifted", "{hfs:#}");
    assert_eq!(hfs["mode"], "audit", "{hfs:#}");
    assert!(
        hfs["source"].to_string().contains("90-exempt.yaml"),
        "{hfs:#}"
    );
    assert_eq!(state(&report, "kernel module cramfs"), "corrected");
    let own = h.read(OWN);
    assert!(
        own.lines().any(|l| l == "install cramfs /bin/false"),
        "{own}"
    );
    assert!(
        !own.contains("hfs"),
        "an audited module is not written: {own}"
    );

    // Every module audited: the file left from before is removed, in the
    // policy's enforce mode.
    h.write(
        "policy.d/90-exempt.yaml",
        "version: 1\nkernel_modules:\n  hfs: {mode: audit}\n  cramfs: {mode: audit}\n  usb-storage: {mode: audit}\n",
    );
    let (_, report) = h.json(&["apply", "--policy", dir]);
    let own_key = h.path(OWN).display().to_string();
    assert_eq!(state(&report, &own_key), "corrected", "{report:#}");
    assert!(!h.path(OWN).exists());
}

#[test]
fn a_bad_module_table_is_refused_with_its_line() {
    let h = host();
    let validate = |text: &str| {
        let p = h.policy("p.yaml", text);
        let out = h
            .holdfast(&["validate", "--policy", p.to_str().unwrap()])
            .output()
            .expect("run holdfast validate");
        assert!(!out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = validate(
        "version: 1\nkernel_modules:\n  hfs: {unload: 1}\n  udf: {state: enabled}\n  jffs2: {mode: loud}\n",
    );
    for (line, what) in [
        (3, "unload must be true or false, not 1"),
        (4, "unknown state \"enabled\""),
        (5, "unknown mode \"loud\""),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("p.yaml:{line}:")) && l.contains(what)),
            "{what} at line {line}: {err}"
        );
    }
    let err = validate("version: 1\nkernel_modules:\n  cramfs: {unlod: true}\n");
    assert!(
        err.contains("p.yaml:3:") && err.contains("unknown field `unlod`"),
        "{err}"
    );
}
