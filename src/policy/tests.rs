//! Data-driven tests of parsing and validation. Each case is a policy text;
//! the expectations are insta snapshots (`INSTA_UPDATE=always cargo test` to
//! regenerate, then review the diff).

#![allow(clippy::pedantic, reason = "pedantic is for the shipped code")]

use super::*;
use crate::limits::{Domain, LimitItem, LimitValue};
use crate::sysctl::{SysctlValue, Token};

fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    Policy::from_files([("p.yaml", text)])
}

/// Renders the errors of each case, so one snapshot shows every message.
fn check_errors(cases: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, text) in cases {
        out.push_str(&format!("### {name}\n"));
        match parse(text) {
            Ok(_) => out.push_str("(valid)\n"),
            Err(e) => {
                out.push_str(&e.to_string());
                out.push('\n');
            }
        }
    }
    out
}

const ISSUE_EXAMPLE: &str = r#"version: 1
mode: enforce            # enforce = correct drift; audit = report only (the default)
sysctl:
  vm.overcommit_memory: 2                       # exact value
  vm.overcommit_ratio: 80
  net.ipv4.ip_local_port_range: "32768 60999"   # multi-value key: all fields, whitespace-insensitive
  net.core.somaxconn: {min: 4096}               # at least (a higher value is compliant)
  kernel.pid_max: {min: 4194304, mode: audit}   # per-item mode overrides the policy's
  fs.suid_dumpable: {max: 0}                    # at most
limits:
  - {domain: "*", item: nofile, soft: 65536, hard: 65536}
  - {domain: "@app", item: nproc, soft: 8192, hard: 8192}
services:
  myapp.service: {slice: go-app, limit_nofile: 65536}
cgroup:
  controllers: [cpu, memory, pids, io]
  slices:
    go-app: {memory.max: 100M, memory.high: 90M, cpu.max: "100000 1000000", pids.max: 512}
"#;

#[test]
fn the_format_example_means_what_its_comments_say() {
    let p = parse(ISSUE_EXAMPLE).unwrap();
    assert_eq!(p.default_mode(), Mode::Enforce);
    let rule = |k: &str| &p.sysctls[&SysctlKey::parse(k).unwrap()];
    assert_eq!(
        rule("vm.overcommit_memory").expect,
        Expect::Exact(SysctlValue::from_int(2))
    );
    assert_eq!(
        rule("net.ipv4.ip_local_port_range").expect,
        Expect::Exact(SysctlValue::from_kernel("32768\t60999"))
    );
    assert_eq!(
        rule("net.core.somaxconn").expect,
        Expect::Range {
            min: Some(4096),
            max: None
        }
    );
    assert_eq!(rule("kernel.pid_max").mode, Some(Mode::Audit));
    assert_eq!(p.mode_of(rule("kernel.pid_max").mode), Mode::Audit);
    assert_eq!(p.mode_of(rule("net.core.somaxconn").mode), Mode::Enforce);
    assert_eq!(
        rule("fs.suid_dumpable").expect,
        Expect::Range {
            min: None,
            max: Some(0)
        }
    );
    // Sources are the line of the key.
    assert_eq!(rule("vm.overcommit_ratio").source.line, 5);
    assert_eq!(rule("fs.suid_dumpable").source.to_string(), "p.yaml:9");

    assert_eq!(p.limits.len(), 2);
    assert_eq!(p.limits[0].domain, Domain::All);
    assert_eq!(p.limits[0].item, LimitItem::Nofile);
    assert_eq!(p.limits[0].soft, Some(LimitValue::Value(65536)));
    assert_eq!(p.limits[1].domain, Domain::Group("app".into()));
    assert_eq!(p.limits[1].source.line, 12);

    let svc = &p.services["myapp.service"];
    assert_eq!(svc.slice.as_ref().unwrap().value, "go-app");
    assert_eq!(
        svc.limit_nofile.as_ref().unwrap().value,
        LimitPair {
            soft: LimitValue::Value(65536),
            hard: LimitValue::Value(65536)
        }
    );

    let cg = &p.cgroup;
    assert_eq!(
        cg.controllers.as_ref().unwrap().value,
        ["cpu", "memory", "pids", "io"]
    );
    let slice = &cg.slices["go-app"];
    assert_eq!(
        slice.memory_max.as_ref().unwrap().value,
        Bytes::Value(104_857_600)
    );
    assert_eq!(
        slice.memory_high.as_ref().unwrap().value,
        Bytes::Value(90 << 20)
    );
    assert_eq!(
        slice.cpu_max.as_ref().unwrap().value,
        CpuMax {
            quota_us: Some(100_000),
            period_us: 1_000_000
        }
    );
    assert_eq!(slice.pids_max.as_ref().unwrap().value, Count::Value(512));
}

#[test]
fn string_values_keep_words() {
    let p = parse("version: 1\nsysctl:\n  kernel.core_pattern: \"|/bin/false %p\"\n").unwrap();
    let rule = p.sysctls.values().next().unwrap();
    let Expect::Exact(v) = &rule.expect else {
        panic!("exact expected")
    };
    assert_eq!(
        v.tokens(),
        [Token::Word("|/bin/false".into()), Token::Word("%p".into())]
    );
}

#[test]
fn mode_defaults_to_audit() {
    let p = parse("version: 1\nsysctl:\n  vm.swappiness: 10\n").unwrap();
    assert_eq!(p.default_mode(), Mode::Audit);
}

#[test]
fn later_files_override_key_by_key_and_keep_their_sources() {
    let a = "version: 1\nmode: audit\nsysctl:\n  vm.swappiness: 10\n  vm.overcommit_ratio: 80\nlimits:\n  - {domain: \"*\", item: nofile, soft: 1024, hard: 4096}\nservices:\n  a.service: {slice: one, limit_nofile: 100}\ncgroup:\n  slices:\n    one: {memory.max: 1G, pids.max: 10}\n";
    let b = "version: 1\nmode: enforce\nsysctl:\n  vm.swappiness: 1\nlimits:\n  - {domain: \"*\", item: nofile, soft: 65536, hard: 65536}\nservices:\n  a.service: {limit_nofile: 200}\ncgroup:\n  slices:\n    one: {pids.max: 20}\n";
    let p = Policy::from_files([("10-a.yaml", a), ("20-b.yaml", b)]).unwrap();
    assert_eq!(p.files, ["10-a.yaml", "20-b.yaml"]);
    // Each file's digest, as `sha256sum` prints it.
    assert_eq!(p.sha256.len(), 2);
    assert_eq!(
        crate::policy::sha256_hex("version: 1\n"),
        "09bfcc6a14b83e2192b8673677725c84883ee9cd0c70e45c9ec09daa8f2b2847"
    );
    assert_eq!(p.sha256["20-b.yaml"], crate::policy::sha256_hex(b));
    assert_eq!(p.default_mode(), Mode::Enforce);
    assert_eq!(p.mode.as_ref().unwrap().source.to_string(), "20-b.yaml:2");
    let swappiness = &p.sysctls[&SysctlKey::parse("vm.swappiness").unwrap()];
    assert_eq!(swappiness.expect, Expect::Exact(SysctlValue::from_int(1)));
    assert_eq!(swappiness.source.to_string(), "20-b.yaml:4");
    let ratio = &p.sysctls[&SysctlKey::parse("vm.overcommit_ratio").unwrap()];
    assert_eq!(ratio.source.to_string(), "10-a.yaml:5");
    assert_eq!(p.limits.len(), 1);
    assert_eq!(p.limits[0].soft, Some(LimitValue::Value(65536)));
    assert_eq!(p.limits[0].source.file.as_ref(), "20-b.yaml");
    let svc = &p.services["a.service"];
    assert_eq!(
        svc.slice.as_ref().unwrap().source.to_string(),
        "10-a.yaml:9"
    );
    assert_eq!(
        svc.limit_nofile.as_ref().unwrap().source.to_string(),
        "20-b.yaml:8"
    );
    let slice = &p.cgroup.slices["one"];
    assert_eq!(
        slice.memory_max.as_ref().unwrap().value,
        Bytes::Value(1 << 30)
    );
    assert_eq!(slice.pids_max.as_ref().unwrap().value, Count::Value(20));
}

#[test]
fn sysctl_conflicts_defaults_to_report_and_the_last_file_that_sets_it_wins() {
    let p = parse("version: 1\n").unwrap();
    assert_eq!(p.sysctl_conflicts(), SysctlConflicts::Report);
    let over = "version: 1\nsysctl_conflicts: override\n";
    let back = "version: 1\nsysctl_conflicts: report\n";
    let none = "version: 1\nmode: enforce\n";
    let p = Policy::from_files([("10-a.yaml", over), ("20-b.yaml", none)]).unwrap();
    assert_eq!(p.sysctl_conflicts(), SysctlConflicts::Override);
    assert_eq!(
        p.sysctl_conflicts.as_ref().unwrap().source.to_string(),
        "10-a.yaml:2"
    );
    let p = Policy::from_files([("10-a.yaml", over), ("20-b.yaml", back)]).unwrap();
    assert_eq!(p.sysctl_conflicts(), SysctlConflicts::Report);
    assert_eq!(
        p.sysctl_conflicts.as_ref().unwrap().source.to_string(),
        "20-b.yaml:2"
    );
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let err = Policy::from_files([
        ("a.yaml", "version: 1\nmode: loud\n"),
        ("b.yaml", "version: 1\nsysctl:\n  swappiness: 1\n"),
    ])
    .unwrap_err();
    let files: Vec<&str> = err.0.iter().map(|e| e.source.file.as_ref()).collect();
    assert_eq!(files, ["a.yaml", "b.yaml"]);
}

#[test]
fn go_build_expectations_are_typed_with_their_sources() {
    let p = Policy::from_files([(
        "go.yaml",
        "version: 1\nservices:\n  app.service:\n    go_build: {pie: true, stripped: false, cgo: false, min_version: \"1.22.3\"}\n",
    )])
    .unwrap();
    let g = p.services["app.service"].go_build.as_ref().unwrap();
    assert_eq!(g.value.pie.as_ref().map(|f| f.value), Some(true));
    assert_eq!(g.value.stripped.as_ref().map(|f| f.value), Some(false));
    assert_eq!(g.value.trimpath, None);
    assert_eq!(
        g.value
            .cgo
            .as_ref()
            .map(|f| (f.value, f.source.line, f.source.column)),
        Some((false, 4, 49))
    );
    assert_eq!(
        g.value.min_version.as_ref().map(|v| v.value.to_string()),
        Some("go1.22.3".to_string())
    );
    // A later file replaces the whole section.
    let p = Policy::from_files([
        (
            "a.yaml",
            "version: 1\nservices:\n  app.service:\n    go_build: {pie: true}\n",
        ),
        (
            "b.yaml",
            "version: 1\nservices:\n  app.service:\n    go_build: {cgo: false}\n",
        ),
    ])
    .unwrap();
    let g = &p.services["app.service"].go_build.as_ref().unwrap().value;
    assert!(g.pie.is_none() && g.cgo.is_some());
}

#[test]
fn validation_errors_name_file_line_and_column() {
    insta::assert_snapshot!(check_errors(&[
        (
            "unknown top-level field",
            "version: 1\nsysctls:\n  vm.swappiness: 1\n"
        ),
        (
            "unknown field in a sysctl table",
            "version: 1\nsysctl:\n  net.core.somaxconn: {mni: 4096}\n"
        ),
        ("missing version", "mode: audit\n"),
        ("unsupported version", "version: 2\n"),
        ("unknown mode", "version: 1\nmode: enforcing\n"),
        (
            "unknown sysctl_conflicts",
            "version: 1\nsysctl_conflicts: overwrite\n"
        ),
        (
            "sysctl_conflicts not a word",
            "version: 1\nsysctl_conflicts: [override]\n"
        ),
        (
            "unknown per-item mode",
            "version: 1\nsysctl:\n  vm.swappiness: {value: 1, mode: strict}\n"
        ),
        (
            "key without dots",
            "version: 1\nsysctl:\n  swappiness: 10\n"
        ),
        (
            "key in path form",
            "version: 1\nsysctl:\n  vm/swappiness: 10\n"
        ),
        (
            "glob key",
            "version: 1\nsysctl:\n  net.ipv4.conf.*.rp_filter: 1\n"
        ),
        (
            "octal-looking value",
            "version: 1\nsysctl:\n  vm.swappiness: \"010\"\n"
        ),
        (
            "hex value",
            "version: 1\nsysctl:\n  vm.swappiness: \"0x10\"\n"
        ),
        (
            "boolean value",
            "version: 1\nsysctl:\n  net.ipv4.ip_forward: true\n"
        ),
        ("float value", "version: 1\nsysctl:\n  vm.swappiness: 1.5\n"),
        (
            "min above max",
            "version: 1\nsysctl:\n  vm.swappiness: {min: 60, max: 10}\n"
        ),
        (
            "value with min",
            "version: 1\nsysctl:\n  vm.swappiness: {value: 10, min: 5}\n"
        ),
        (
            "empty table",
            "version: 1\nsysctl:\n  vm.swappiness: {mode: audit}\n"
        ),
        (
            "bound on multi-value",
            "version: 1\nsysctl:\n  net.ipv4.ip_local_port_range: {min: \"1 2\"}\n"
        ),
        (
            "duplicate key",
            "version: 1\nsysctl:\n  vm.swappiness: 1\n  vm.swappiness: 2\n"
        ),
        (
            "wrong type for a section",
            "version: 1\nsysctl: [vm.swappiness]\n"
        ),
        ("yaml syntax", "version: 1\nsysctl:\n  vm.swappiness: [1\n"),
        (
            "limits: bad domain, item, soft above hard",
            "version: 1\nlimits:\n  - {domain: \"2000:1000\", item: nofiles, soft: 10, hard: 5}\n  - {domain: \"*\", item: nofile, soft: 10, hard: 5}\n"
        ),
        (
            "limits: no soft nor hard",
            "version: 1\nlimits:\n  - {domain: \"*\", item: nofile}\n"
        ),
        (
            "limits: twice in one file",
            "version: 1\nlimits:\n  - {domain: \"*\", item: nofile, soft: 1}\n  - {domain: \"*\", item: nofile, hard: 2}\n"
        ),
        (
            "limits: bad value",
            "version: 1\nlimits:\n  - {domain: \"*\", item: nofile, soft: lots}\n"
        ),
        (
            "service without suffix",
            "version: 1\nservices:\n  myapp: {limit_nofile: 1024}\n"
        ),
        (
            "service limit soft above hard",
            "version: 1\nservices:\n  myapp.service: {limit_nofile: \"2048:1024\"}\n"
        ),
        (
            "service bad slice name",
            "version: 1\nservices:\n  myapp.service: {slice: \"go app\"}\n"
        ),
        (
            "unknown controller",
            "version: 1\ncgroup:\n  controllers: [cpu, memroy]\n"
        ),
        (
            "bad sizes",
            "version: 1\ncgroup:\n  slices:\n    a: {memory.max: 10X, memory.high: lots}\n"
        ),
        (
            "cpu.max quota below 1 ms",
            "version: 1\ncgroup:\n  slices:\n    a: {cpu.max: \"500 100000\"}\n"
        ),
        (
            "cpu.max period above 1 s",
            "version: 1\ncgroup:\n  slices:\n    a: {cpu.max: \"100000 2000000\"}\n"
        ),
        (
            "pids.max zero",
            "version: 1\ncgroup:\n  slices:\n    a: {pids.max: 0}\n"
        ),
        (
            "memory.high above memory.max",
            "version: 1\ncgroup:\n  slices:\n    a: {memory.max: 100M, memory.high: 200M}\n"
        ),
        (
            "go_build: unknown field",
            "version: 1\nservices:\n  app.service:\n    go_build: {pie: true, strip: true}\n"
        ),
        (
            "go_build: not a boolean, unquoted and bad versions",
            "version: 1\nservices:\n  a.service:\n    go_build: {cgo: \"no\", trimpath: 1, min_version: 1.20}\n  b.service:\n    go_build: {min_version: \"2.0\"}\n"
        ),
        (
            "gomaxprocs above the quota of an enclosing slice",
            "version: 1\nservices:\n  app.service:\n    slice: go-app\n    go_runtime: {gomaxprocs: 4}\ncgroup:\n  slices:\n    go: {cpu.max: \"200000 100000\"}\n    go-app: {cpu.max: \"800000 100000\"}\n"
        ),
        (
            "headroom out of range",
            "version: 1\nsafety:\n  overcommit_headroom_percent: 95\n"
        ),
        (
            "several errors at once",
            "version: 1\nmode: x\nsysctl:\n  a: 1\n  vm.swappiness: \"08\"\n"
        ),
    ]));
}

/// Found by the policy fuzz target: YAML counts a lone CR as a line break,
/// editors do not, so an error after one named a line the file did not have.
/// A lone CR is refused where editors see it; CRLF line ends stay valid.
#[test]
fn a_lone_carriage_return_is_refused_at_the_line_editors_show() {
    let err = parse("version: 1\nsysctl:\n  kernel.pid_max: \"4\r\r\r1\"\n  x: 1\n").unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(
        (err.0[0].source.line, err.0[0].source.column),
        (3, 21),
        "{err}"
    );
    assert!(err.to_string().contains("control character \\r"), "{err}");

    let crlf = parse("version: 1\r\nsysctl:\r\n  kernel.pid_max: 4194304\r\n").unwrap();
    assert_eq!(crlf.sysctls.len(), 1);
}
