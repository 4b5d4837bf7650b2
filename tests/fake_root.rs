//! End-to-end behaviour of the CLI on a fake host root: convergence,
//! idempotence, audit mode, the overcommit gate, persistence and conflicts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use common::{FakeHost, TIGHT_MEMINFO, item, state};

const PERSIST: &str = "etc/sysctl.d/99-zz-holdfast.conf";

fn host_with_defaults() -> FakeHost {
    let h = FakeHost::new();
    h.sysctl("vm.overcommit_memory", "0");
    h.sysctl("vm.overcommit_ratio", "50");
    h.sysctl("vm.overcommit_kbytes", "0");
    h.sysctl("net.core.somaxconn", "128");
    h.sysctl("net.ipv4.ip_local_port_range", "32768\t60999");
    h.sysctl("fs.suid_dumpable", "2");
    h.sysctl("kernel.pid_max", "32768");
    h
}

const ENFORCE: &str = r#"version: 1
mode: enforce
sysctl:
  vm.overcommit_memory: 2
  vm.overcommit_ratio: 80
  net.ipv4.ip_local_port_range: "1024   65000"
  net.core.somaxconn: {min: 4096}
  kernel.pid_max: {min: 4194304, mode: audit}
  fs.suid_dumpable: {max: 0}
"#;

#[test]
fn apply_converges_a_fake_host_and_a_second_apply_changes_nothing() {
    let h = host_with_defaults();
    let p = h.policy("p.yaml", ENFORCE);
    let p = p.to_str().unwrap();

    let (code, first) = h.json(&["apply", "--policy", p]);
    // kernel.pid_max is audit-only, so drift remains: exit 2.
    assert_eq!(code, 2, "{first:#}");
    assert_eq!(state(&first, "vm.overcommit_memory"), "corrected");
    assert_eq!(state(&first, "vm.overcommit_ratio"), "corrected");
    assert_eq!(state(&first, "net.ipv4.ip_local_port_range"), "corrected");
    assert_eq!(state(&first, "net.core.somaxconn"), "corrected");
    assert_eq!(state(&first, "fs.suid_dumpable"), "corrected");
    assert_eq!(state(&first, "kernel.pid_max"), "drifted");
    assert_eq!(h.get_sysctl("vm.overcommit_memory"), "2");
    assert_eq!(h.get_sysctl("vm.overcommit_ratio"), "80");
    // Canonical, full vector, single spaces.
    assert_eq!(h.get_sysctl("net.ipv4.ip_local_port_range"), "1024 65000");
    // A min bound writes the bound; a max bound writes the bound.
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "4096");
    assert_eq!(h.get_sysctl("fs.suid_dumpable"), "0");
    assert_eq!(
        h.get_sysctl("kernel.pid_max"),
        "32768",
        "audit item untouched"
    );

    let persisted = h.read(PERSIST);
    insta::assert_snapshot!(persisted);

    let (code, second) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 2);
    for i in second["items"].as_array().unwrap() {
        if i["key"] == "kernel.pid_max" {
            continue;
        }
        assert_eq!(i["state"], "compliant", "{i:#}");
        assert!(i["action"].is_null(), "{i:#}");
    }
    assert_eq!(h.read(PERSIST), persisted, "no rewrite");
}

#[test]
fn check_exit_codes_follow_compliance() {
    let h = host_with_defaults();
    let compliant = h.policy(
        "ok.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: {min: 100}\n",
    );
    h.holdfast(&["check", "--policy", compliant.to_str().unwrap()])
        .assert()
        .code(0);
    let drifted = h.policy(
        "drift.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: 4096\n",
    );
    h.holdfast(&["check", "--policy", drifted.to_str().unwrap()])
        .assert()
        .code(2);
    h.holdfast(&["plan", "--policy", drifted.to_str().unwrap()])
        .assert()
        .code(2);
    // check never writes.
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "128");
    assert!(!h.path(PERSIST).exists());
}

#[test]
fn audit_mode_reports_and_changes_nothing() {
    let h = host_with_defaults();
    let p = h.policy(
        "audit.yaml",
        "version: 1\nmode: audit\nsysctl:\n  net.core.somaxconn: 4096\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(state(&report, "net.core.somaxconn"), "drifted");
    assert_eq!(item(&report, "net.core.somaxconn")["mode"], "audit");
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "128");
    assert!(!h.path(PERSIST).exists());
}

#[test]
fn overcommit_gate_refuses_on_a_tight_host_but_still_writes_the_ratio() {
    let h = host_with_defaults();
    h.write("proc/meminfo", TIGHT_MEMINFO);
    let p = h.policy(
        "oc.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  vm.overcommit_memory: 2\n  vm.overcommit_ratio: 80\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    let mode = item(&report, "vm.overcommit_memory");
    assert_eq!(mode["state"], "refused");
    let detail = mode["detail"].to_string();
    // Both numbers are in the message: projected limit and Committed_AS.
    assert!(
        detail.contains("projected CommitLimit 12800000 kB"),
        "{detail}"
    );
    assert!(detail.contains("Committed_AS 14000000 kB"), "{detail}");
    assert_eq!(h.get_sysctl("vm.overcommit_memory"), "0");
    // The ratio is harmless outside mode 2, and is written.
    assert_eq!(state(&report, "vm.overcommit_ratio"), "corrected");
    assert_eq!(h.get_sysctl("vm.overcommit_ratio"), "80");
    // A refused value is not persisted for boot either.
    let persisted = h.read(PERSIST);
    assert!(!persisted.contains("overcommit_memory"), "{persisted}");
    // The kernel has the key, so the line is plain `KEY = VALUE` (what
    // compliance scanners read), without the `-` kept for absent keys.
    assert!(
        persisted.lines().any(|l| l == "vm.overcommit_ratio = 80"),
        "{persisted}"
    );
}

#[test]
fn overcommit_gate_allows_with_headroom() {
    let h = host_with_defaults();
    let p = h.policy(
        "oc.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  vm.overcommit_memory: 2\n  vm.overcommit_ratio: 80\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(state(&report, "vm.overcommit_memory"), "corrected");
    let detail = item(&report, "vm.overcommit_memory")["detail"].to_string();
    assert!(detail.contains("allowed"), "{detail}");
    assert_eq!(h.get_sysctl("vm.overcommit_memory"), "2");
}

#[test]
fn absent_keys_are_unsupported_and_persisted_with_a_dash() {
    let h = host_with_defaults();
    let p = h.policy(
        "absent.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  net.netfilter.nf_conntrack_max: 262144\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0, "unsupported is not drift: {report:#}");
    assert_eq!(
        state(&report, "net.netfilter.nf_conntrack_max"),
        "unsupported"
    );
    assert!(item(&report, "net.netfilter.nf_conntrack_max")["actual"].is_null());
    assert!(
        h.read(PERSIST)
            .contains("-net.netfilter.nf_conntrack_max = 262144\n")
    );
}

#[test]
fn competing_sysctl_d_files_are_reported_with_the_boot_winner() {
    let h = host_with_defaults();
    h.write(
        "usr/lib/sysctl.d/50-default.conf",
        "net.core.somaxconn = 1024\n",
    );
    h.write(
        "etc/sysctl.d/zz-late.conf",
        "# sorts after holdfast's file\nnet.core.somaxconn=512\n",
    );
    let p = h.policy(
        "c.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n",
    );
    let (_, report) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    let conflicts = item(&report, "net.core.somaxconn")["conflicts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(
        conflicts[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("usr/lib/sysctl.d/50-default.conf")
    );
    assert_eq!(conflicts[0]["wins_at_boot"], false);
    assert!(
        conflicts[1]["file"]
            .as_str()
            .unwrap()
            .ends_with("etc/sysctl.d/zz-late.conf")
    );
    assert_eq!(conflicts[1]["line"], 2);
    assert_eq!(conflicts[1]["value"], "512");
    assert_eq!(conflicts[1]["wins_at_boot"], true);
    let text = h
        .holdfast(&["check", "--policy", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("zz-late.conf:2 sets 512 and wins at boot"),
        "{text}"
    );
    // The earlier line is not what boot applies: the later file's is.
    assert!(
        text.contains("also set to 1024 by")
            && text.contains("(not what boot applies to this key)"),
        "{text}"
    );
}

#[test]
fn default_policy_is_the_policy_dir_under_the_root_then_the_bundled_baseline() {
    let h = host_with_defaults();
    let (code, report) = h.json(&["check"]);
    assert_eq!(code, 2);
    assert_eq!(
        report["policy"]["files"][0],
        "policies/baseline.yaml (bundled)"
    );
    assert_eq!(report["policy"]["mode"], "audit");
    h.write(
        "etc/holdfast/policy.d/10-site.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: 128\n",
    );
    let (code, report) = h.json(&["check"]);
    assert_eq!(code, 0, "{report:#}");
    assert!(
        report["policy"]["files"][0]
            .as_str()
            .unwrap()
            .ends_with("10-site.yaml")
    );
}

#[test]
fn json_report_shape_is_stable() {
    let h = host_with_defaults();
    let p = h.policy(
        "p.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: {min: 4096}\n",
    );
    let (_, report) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    let mut top: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    top.sort_unstable();
    assert_eq!(
        top,
        [
            "command",
            "compliant",
            "duration_ms",
            "items",
            "policy",
            "root",
            "schema_version",
            "summary",
            "warnings"
        ]
    );
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["command"], "check");
    assert_eq!(report["compliant"], false);
    assert_eq!(report["summary"]["drifted"], 1);
    assert_eq!(report["summary"]["compliant"], 0);
    let i = item(&report, "net.core.somaxconn");
    let mut fields: Vec<&str> = i.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "action",
            "actual",
            "conflicts",
            "desired",
            "detail",
            "key",
            "kind",
            "mode",
            "source",
            "state"
        ]
    );
    assert_eq!(i["kind"], "sysctl");
    assert_eq!(i["desired"], ">= 4096");
    assert_eq!(i["actual"], "128");
    assert_eq!(i["source"]["line"], 3);
    assert_eq!(i["source"]["column"], 3);
    assert!(i["source"]["file"].as_str().unwrap().ends_with("p.yaml"));
}

#[test]
fn an_invalid_policy_is_rejected_whole_with_its_location() {
    let h = host_with_defaults();
    let p = h.policy(
        "bad.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n  vm.swappiness: {mni: 3}\n",
    );
    let path = p.to_str().unwrap();
    let out = h.holdfast(&["apply", "--policy", path]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{path}:5:19: unknown field `mni`")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    // The valid key in the same policy was not applied either.
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "128");
}

#[test]
fn validate_reports_file_line_column_and_exits_1() {
    let h = FakeHost::new();
    let bad = h.policy(
        "bad.yaml",
        "version: 1\nsysctl:\n  vm.swappiness: 10\n  colour: blue\nfoo: 1\n",
    );
    let path = bad.to_str().unwrap();
    let out = h.holdfast(&["validate", path]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{path}:5:1: unknown field `foo`")),
        "{stderr}"
    );

    let good = h.policy("good.yaml", "version: 1\nsysctl:\n  vm.swappiness: 10\n");
    let out = h
        .holdfast(&["validate", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid: "));

    let (code, json) = h.json(&[
        "validate",
        h.policy("k.yaml", "version: 1\nsysctl:\n  colour: blue\n")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(json["valid"], false);
    assert_eq!(json["errors"][0]["line"], 3);
    assert_eq!(json["errors"][0]["column"], 3);
}

#[test]
fn validate_with_policy_dir_checks_the_candidate_merged_with_the_directory() {
    let h = FakeHost::new();
    let dir = h.path("etc/holdfast/policy.d");
    h.write(
        "etc/holdfast/policy.d/50-max.yaml",
        "version: 1\ncgroup:\n  slices:\n    app: {memory.max: 100M}\n",
    );
    h.write(
        "etc/holdfast/policy.d/60-high.yaml",
        "version: 1\ncgroup:\n  slices:\n    app: {memory.high: 50M}\n",
    );
    let dir = dir.to_str().unwrap();
    // Valid alone, rejected together with the directory's memory.max.
    let high = h.policy(
        "70-site.yaml",
        "version: 1\ncgroup:\n  slices:\n    app: {memory.high: 200M}\n",
    );
    let high = high.to_str().unwrap();
    let alone = h.holdfast(&["validate", high]).output().unwrap();
    assert_eq!(alone.status.code(), Some(0));
    let merged = h
        .holdfast(&[
            "validate",
            "--policy-dir",
            dir,
            "--as",
            "70-site.yaml",
            high,
        ])
        .output()
        .unwrap();
    assert_eq!(merged.status.code(), Some(1));
    let err = String::from_utf8_lossy(&merged.stderr);
    assert!(
        err.contains("memory.high") && err.contains("memory.max"),
        "{err}"
    );

    // The same content replacing 60-high.yaml is fine: it replaces the
    // directory's memory.high; and a candidate replacing 50-max.yaml with
    // a lower memory.max is rejected against 60-high.yaml.
    let replace = h
        .holdfast(&[
            "validate",
            "--policy-dir",
            dir,
            "--as",
            "60-high.yaml",
            high,
        ])
        .output()
        .unwrap();
    assert_eq!(
        replace.status.code(),
        Some(1),
        "200M high is still above the 100M max"
    );
    let raise = h.policy(
        "50-max.yaml",
        "version: 1\ncgroup:\n  slices:\n    app: {memory.max: 1G}\n",
    );
    let out = h
        .holdfast(&[
            "validate",
            "--policy-dir",
            dir,
            raise.to_str().unwrap(),
            high,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let low = h.policy(
        "max-low.yaml",
        "version: 1\ncgroup:\n  slices:\n    app: {memory.max: 10M}\n",
    );
    let out = h
        .holdfast(&[
            "validate",
            "--policy-dir",
            dir,
            "--as",
            "50-max.yaml",
            low.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // A name the daemon would ignore is an error, and --as takes one file.
    let out = h
        .holdfast(&["validate", "--policy-dir", dir, "--as", "site.conf", high])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("*.yaml"));
    let out = h
        .holdfast(&[
            "validate",
            "--policy-dir",
            dir,
            "--as",
            "x.yaml",
            high,
            high,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_bad_root_or_missing_policy_is_an_error() {
    let h = FakeHost::new();
    let out = h
        .holdfast(&["check", "--policy", "/nonexistent/p.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read /nonexistent/p.yaml: No such file")
    );
    let mut cmd = assert_cmd::Command::cargo_bin("holdfast").unwrap();
    cmd.args(["--root", "/nonexistent-root", "check"])
        .assert()
        .code(1);
}

#[test]
fn a_persist_file_left_by_an_enforced_policy_is_reported_in_audit_mode() {
    let h = host_with_defaults();
    h.write(PERSIST, "-net.core.somaxconn = 4096\n");
    let p = h.policy("a.yaml", "version: 1\nsysctl:\n  net.core.somaxconn: 128\n");
    let (code, report) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    let persist = item(&report, h.path(PERSIST).to_str().unwrap());
    assert_eq!(persist["state"], "drifted");
    assert_eq!(persist["kind"], "sysctl-persist");
}
