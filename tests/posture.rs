//! Service posture on a fake host with the systemd double: the drop-in's
//! directives, GOMAXPROCS from the slice's quota, and verification on the
//! running processes' /proc/PID/status and environ.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use common::FakeHost;
use common::fake_systemd::FakeSystemd;
use holdfast::engine::{self, ApplyOptions};
use holdfast::host::HostRoot;
use holdfast::item::{Item, State};
use holdfast::policy::Policy;

const POLICY: &str = r#"version: 1
mode: enforce
services:
  myapp.service:
    slice: go-app
    limit_nofile: 65536
    no_new_privileges: true
    seccomp: ["@system-service"]
    capabilities: [CAP_NET_BIND_SERVICE]
    user: myapp
    go_runtime: {gomaxprocs: auto, godebug: "madvdontneed=1", gotraceback: single}
cgroup:
  slices:
    go-app: {cpu.max: "100000 1000000"}
"#;

const ROOT_STATUS: &str = "Name:\tsleep\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";
const HARDENED_STATUS: &str = "Name:\tmyapp\nUid:\t998\t998\t998\t998\nGid:\t998\t998\t998\t998\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapBnd:\t0000000000000400\nCapAmb:\t0000000000000400\nNoNewPrivs:\t1\nSeccomp:\t2\n";

fn find<'a>(items: &'a [Item], key: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.key.to_string() == key)
        .unwrap_or_else(|| panic!("no {key}: {items:#?}"))
}

#[test]
fn posture_is_enforced_through_the_drop_in_and_verified_on_the_processes() {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    h.write("sys/devices/system/cpu/online", "0-7\n");
    for pid in [4242, 4243] {
        h.write(&format!("proc/{pid}/status"), ROOT_STATUS);
        h.write(
            &format!("proc/{pid}/environ"),
            "PATH=/usr/bin\0GOMAXPROCS=8\0",
        );
    }
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let p = Policy::from_files([("p.yaml", POLICY)]).unwrap();

    let pass = engine::apply_in(&ctx, &p, ApplyOptions::default());
    insta::assert_snapshot!(h.read("etc/systemd/system/myapp.service.d/90-holdfast.conf"));
    for key in [
        "no_new_privileges",
        "seccomp",
        "capabilities",
        "user",
        "go_runtime",
    ] {
        let item = find(&pass.items, &format!("myapp.service {key}"));
        assert_eq!(item.state, State::RestartRequired, "{item:#?}");
    }
    let caps = find(&pass.items, "myapp.service capabilities");
    assert!(
        caps.detail
            .iter()
            .any(|d| d.starts_with("PID 4242: CapBnd has CAP_CHOWN")
                && d.contains("CapEff has")
                && d.contains("CAP_SYS_ADMIN")),
        "{caps:#?}"
    );
    let go = find(&pass.items, "myapp.service go_runtime");
    assert_eq!(
        go.desired,
        "GOMAXPROCS=1 GODEBUG=madvdontneed=1 GOTRACEBACK=single"
    );
    assert!(go.detail.iter().any(|d| d == "PID 4242: GOMAXPROCS=8 (want 1), GODEBUG unset (want madvdontneed=1), GOTRACEBACK unset (want single)"), "{go:#?}");
    assert_eq!(
        find(&pass.items, "myapp.service user").detail[0],
        "PID 4242: runs as UID 0 (effective 0)"
    );

    // What a restart under the new drop-in gives the processes.
    for pid in [4242, 4243] {
        h.write(&format!("proc/{pid}/status"), HARDENED_STATUS);
        h.write(
            &format!("proc/{pid}/environ"),
            "GOMAXPROCS=1\0GODEBUG=madvdontneed=1\0GOTRACEBACK=single\0",
        );
    }
    let check = engine::plan_in(&ctx, &p);
    for key in [
        "no_new_privileges",
        "seccomp",
        "capabilities",
        "user",
        "go_runtime",
    ] {
        let item = find(&check.items, &format!("myapp.service {key}"));
        assert_eq!(item.state, State::Compliant, "{item:#?}");
        assert_eq!(item.actual, "ok in 2 process(es)");
    }
}

#[test]
fn posture_fields_are_validated_with_locations() {
    let bad = "version: 1\nservices:\n  a.service:\n    user: root\n    capabilities: [CAP_NET_BIND, CAP_CHOWN]\n    seccomp: [\"@system-servic\"]\n    no_new_privileges: yes-please\n    go_runtime: {gomaxprocs: many, gotraceback: loud}\n";
    let err = Policy::from_files([("p.yaml", bad)])
        .unwrap_err()
        .to_string();
    insta::assert_snapshot!(err);
}

#[test]
fn a_fixed_gomaxprocs_above_the_slice_quota_is_rejected() {
    let text = "version: 1\nservices:\n  a.service:\n    slice: s\n    go_runtime: {gomaxprocs: 4}\ncgroup:\n  slices:\n    s: {cpu.max: \"200000 100000\"}\n";
    let err = Policy::from_files([("p.yaml", text)])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("p.yaml:5:17: a.service: gomaxprocs 4 exceeds the CPU quota of slice s (ceil(200000 / 100000) = 2)"), "{err}");
    let ok = text.replace("gomaxprocs: 4", "gomaxprocs: 2");
    assert!(Policy::from_files([("p.yaml", ok.as_str())]).is_ok());
}
