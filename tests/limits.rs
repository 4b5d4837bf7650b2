//! Session limits (pam_limits) on a fake host root: the managed file,
//! shadowing by a later file, the nr_open refusal, idempotence.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use common::{FakeHost, item, state};

const MANAGED: &str = "etc/security/limits.d/90-holdfast.conf";

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.sysctl("fs.nr_open", "1048576");
    h.write(
        "etc/security/limits.conf",
        "# stock file\n* soft nofile 1024\n",
    );
    h
}

const NOFILE: &str = "version: 1\nmode: enforce\nlimits:\n  - {domain: \"*\", item: nofile, soft: 65536, hard: 65536}\n";

#[test]
fn apply_writes_the_managed_file_and_a_second_apply_changes_nothing() {
    let h = host();
    let p = h.policy("p.yaml", NOFILE);
    let p = p.to_str().unwrap();
    let (code, first) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{first:#}");
    assert_eq!(state(&first, "* soft nofile"), "corrected");
    assert_eq!(item(&first, "* soft nofile")["actual"], "65536");
    assert_eq!(state(&first, "* hard nofile"), "corrected");
    let content = h.read(MANAGED);
    assert!(content.starts_with("# Managed by holdfast"), "{content}");
    assert!(
        content.contains("*\tsoft\tnofile\t65536\n*\thard\tnofile\t65536\n"),
        "{content}"
    );
    let (code, second) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0);
    for i in second["items"].as_array().unwrap() {
        assert_eq!(i["state"], "compliant", "{i:#}");
    }
    assert_eq!(h.read(MANAGED), content);
}

#[test]
fn a_later_file_that_shadows_the_entry_is_drift_with_its_path_and_line() {
    let h = host();
    h.write(
        "etc/security/limits.d/99-other.conf",
        "# site override\n* soft nofile 1024\n",
    );
    let p = h.policy("p.yaml", NOFILE);
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    let soft = item(&report, "* soft nofile");
    assert_eq!(soft["state"], "drifted");
    assert_eq!(soft["actual"], "1024");
    let conflict = &soft["conflicts"][0];
    assert!(
        conflict["file"]
            .as_str()
            .unwrap()
            .ends_with("limits.d/99-other.conf")
    );
    assert_eq!(conflict["line"], 2);
    assert_eq!(conflict["value"], "1024");
    // The hard limit is not shadowed.
    assert_eq!(state(&report, "* hard nofile"), "corrected");
    let (code, _) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
}

#[test]
fn a_nofile_limit_above_nr_open_is_refused_with_both_numbers_and_not_written() {
    let h = host();
    let p = h.policy(
        "p.yaml",
        "version: 1\nmode: enforce\nlimits:\n  - {domain: \"*\", item: nofile, soft: 65536, hard: 2000000}\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    let hard = item(&report, "* hard nofile");
    assert_eq!(hard["state"], "refused");
    let detail = hard["detail"].to_string();
    assert!(
        detail.contains("2000000") && detail.contains("fs.nr_open 1048576"),
        "{detail}"
    );
    let content = h.read(MANAGED);
    assert!(!content.contains("2000000"), "{content}");
    assert!(content.contains("*\tsoft\tnofile\t65536"), "{content}");
}

#[test]
fn audit_mode_reports_effective_values_and_writes_nothing() {
    let h = host();
    let p = h.policy(
        "p.yaml",
        "version: 1\nlimits:\n  - {domain: \"*\", item: nofile, soft: 65536}\n  - {domain: \"@app\", item: nproc, hard: 8192}\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    let soft = item(&report, "* soft nofile");
    assert_eq!(soft["state"], "drifted");
    assert_eq!(soft["actual"], "1024");
    assert!(soft["detail"].to_string().contains("limits.conf:2"));
    let nproc = item(&report, "@app hard nproc");
    assert!(nproc["actual"].is_null());
    assert!(!h.path(MANAGED).exists());
}

#[test]
fn malformed_lines_in_other_files_are_reported_with_file_and_line() {
    let h = host();
    h.write("etc/security/limits.d/50-bad.conf", "* soft nofile\n");
    let p = h.policy("p.yaml", NOFILE);
    let (_, report) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    let key = format!(
        "{}:1",
        h.path("etc/security/limits.d/50-bad.conf").display()
    );
    assert_eq!(state(&report, &key), "failed");
}
