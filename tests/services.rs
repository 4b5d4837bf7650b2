//! Service limits on a fake host root with a systemd test double: drop-in
//! contents, one batched daemon-reload, restart-required from
//! /proc/PID/limits, explicit restarts, overrides by later drop-ins, and
//! hosts without systemd.

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
use holdfast::engine::{self, ApplyOptions, Context};
use holdfast::host::HostRoot;
use holdfast::item::{Item, Kind, State};
use holdfast::policy::Policy;

const UNIT_DROP_IN: &str = "etc/systemd/system/myapp.service.d/90-holdfast.conf";
const MANAGER_CONF: &str = "etc/systemd/system.conf.d/90-holdfast.conf";

fn policy(text: &str) -> Policy {
    Policy::from_files([("svc.yaml", text)]).unwrap()
}

const ENFORCE: &str =
    "version: 1\nmode: enforce\nservices:\n  myapp.service: {limit_nofile: 65536}\n";

fn find<'a>(items: &'a [Item], kind: Kind, key_end: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.kind() == kind && i.key.to_string().ends_with(key_end))
        .unwrap_or_else(|| panic!("no {kind:?} item ending {key_end}: {items:#?}"))
}

fn systemd_host() -> FakeHost {
    FakeHost::new()
}

#[test]
fn drop_in_then_one_reload_then_restart_required_until_restarted() {
    let h = systemd_host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let p = policy(ENFORCE);

    let before = engine::plan_in(&ctx, &p);
    let svc = find(&before.items, Kind::ServiceLimit, "LimitNOFILE");
    assert_eq!(svc.state, State::Drifted);
    assert_eq!(svc.actual, "1024:524288");

    let first = engine::apply_in(&ctx, &p, ApplyOptions::default());
    insta::assert_snapshot!(h.read(UNIT_DROP_IN));
    assert_eq!(fake.calls_matching("reload"), 1, "one reload for the pass");
    let svc = find(&first.items, Kind::ServiceLimit, "LimitNOFILE");
    assert_eq!(svc.state, State::RestartRequired, "{svc:#?}");
    assert!(
        svc.detail
            .iter()
            .any(|d| d == "PID 4242 runs with 1024:524288"),
        "{svc:#?}"
    );
    assert!(
        svc.detail
            .iter()
            .any(|d| d == "PID 4243 runs with 1024:524288"),
        "{svc:#?}"
    );
    assert_eq!(
        find(&first.items, Kind::UnitFile, "90-holdfast.conf").state,
        State::Corrected
    );
    assert_eq!(
        fake.calls_matching("restart"),
        0,
        "never restarts implicitly"
    );

    // A second pass rewrites nothing and reloads nothing.
    let second = engine::apply_in(&ctx, &p, ApplyOptions::default());
    assert_eq!(fake.calls_matching("reload"), 1);
    assert_eq!(
        find(&second.items, Kind::UnitFile, "90-holdfast.conf").state,
        State::Compliant
    );
    assert_eq!(
        find(&second.items, Kind::ServiceLimit, "LimitNOFILE").state,
        State::RestartRequired
    );

    // Explicitly asked: restart, and the running processes now comply.
    let third = engine::apply_in(
        &ctx,
        &p,
        ApplyOptions {
            restart_services: true,
        },
    );
    assert_eq!(fake.calls_matching("restart myapp.service"), 1);
    let svc = find(&third.items, Kind::ServiceLimit, "LimitNOFILE");
    assert_eq!(svc.state, State::Corrected, "{svc:#?}");
    assert_eq!(svc.actual, "65536");
    let fourth = engine::plan_in(&ctx, &p);
    assert_eq!(
        find(&fourth.items, Kind::ServiceLimit, "LimitNOFILE").state,
        State::Compliant
    );
}

#[test]
fn a_later_drop_in_that_overrides_holdfast_is_drift_naming_it() {
    let h = systemd_host();
    let fake = FakeSystemd::new(&h);
    let override_path = "/etc/systemd/system/myapp.service.d/99-override.conf".to_string();
    fake.units
        .borrow_mut()
        .get_mut("myapp.service")
        .unwrap()
        .drop_in_paths
        .push(override_path.clone());
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let report = engine::apply_in(&ctx, &policy(ENFORCE), ApplyOptions::default());
    let svc = find(&report.items, Kind::ServiceLimit, "LimitNOFILE");
    assert_eq!(svc.state, State::Drifted, "{svc:#?}");
    assert_eq!(svc.conflicts[0].file.display().to_string(), override_path);
    assert!(
        svc.detail
            .iter()
            .any(|d| d.contains("overridden by") && d.contains("99-override.conf"))
    );
}

#[test]
fn audit_mode_writes_no_unit_file_and_does_not_reload() {
    let h = systemd_host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let report = engine::apply_in(
        &ctx,
        &policy("version: 1\nservices:\n  myapp.service: {limit_nofile: 65536}\n"),
        ApplyOptions {
            restart_services: true,
        },
    );
    assert_eq!(
        find(&report.items, Kind::ServiceLimit, "LimitNOFILE").state,
        State::Drifted
    );
    assert!(!h.path(UNIT_DROP_IN).exists());
    assert!(fake.calls.borrow().is_empty(), "{:?}", fake.calls.borrow());
}

#[test]
fn without_systemd_the_report_says_so_and_no_unit_file_is_written() {
    let h = FakeHost::new();
    let root = HostRoot::new(h.root());
    let ctx = Context {
        host: &root,
        systemd: None,
        heartbeat: None,
    };
    let p = policy(
        "version: 1\nmode: enforce\nservices:\n  myapp.service: {limit_nofile: 65536}\nservice_defaults:\n  limit_nofile: \"65536:524288\"\n",
    );
    let report = engine::apply_in(&ctx, &p, ApplyOptions::default());
    for key in ["LimitNOFILE", "DefaultLimitNOFILE"] {
        let item = find(&report.items, Kind::ServiceLimit, key);
        assert_eq!(item.state, State::Unsupported);
        assert!(item.detail[0].contains("systemd is not PID 1"), "{item:#?}");
    }
    assert!(!h.path("etc/systemd").exists());
}

#[test]
fn service_defaults_go_to_system_conf_d() {
    let h = systemd_host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let p =
        policy("version: 1\nmode: enforce\nservice_defaults:\n  limit_nofile: \"65536:524288\"\n");
    let report = engine::apply_in(&ctx, &p, ApplyOptions::default());
    let content = h.read(MANAGER_CONF);
    assert!(
        content.contains("[Manager]\nDefaultLimitNOFILE=65536:524288\n"),
        "{content}"
    );
    assert_eq!(fake.calls_matching("reload"), 1);
    let item = find(&report.items, Kind::ServiceLimit, "DefaultLimitNOFILE");
    // The double keeps systemd's default at 1024:524288, as a systemd that
    // failed to pick the file up would.
    assert_eq!(item.state, State::Drifted);
    assert_eq!(item.actual, "1024:524288");
}

#[test]
fn a_fake_root_with_systemd_files_never_reaches_the_running_systemd() {
    let h = systemd_host();
    std::fs::create_dir_all(h.path("run/systemd/system")).unwrap();
    let root = HostRoot::new(h.root());
    let ctx = Context::for_host(&root);
    assert!(ctx.systemd.is_none());
    let report = engine::apply_in(&ctx, &policy(ENFORCE), ApplyOptions::default());
    assert!(h.path(UNIT_DROP_IN).exists());
    let svc = find(&report.items, Kind::ServiceLimit, "LimitNOFILE");
    assert!(
        svc.detail.iter().any(|d| d.contains("systemd not asked")),
        "{svc:#?}"
    );
}

/// The pass beats its heartbeat between its steps (the daemon pings
/// systemd's watchdog there), so a long pass — a reload, then restarts of
/// slow services — shows progress between systemd's answers, never only at
/// its end.
#[test]
fn a_pass_beats_its_heartbeat_between_systemd_requests() {
    let h = systemd_host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let beat = || fake.calls.borrow_mut().push("beat".into());
    let ctx = Context {
        heartbeat: Some(&beat),
        ..fake.context(&root)
    };
    let p = policy(ENFORCE);
    engine::apply_in(
        &ctx,
        &p,
        ApplyOptions {
            restart_services: true,
        },
    );
    let calls = fake.calls.borrow().clone();
    let at = |what: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in {calls:?}"))
    };
    let (reload, restart) = (at("reload"), at("restart myapp.service"));
    assert!(reload < restart, "{calls:?}");
    assert!(
        calls[reload..restart].iter().any(|c| c == "beat"),
        "a beat between the reload and the restart: {calls:?}"
    );
    assert!(
        calls[restart..].iter().any(|c| c == "beat"),
        "a beat after the restart: {calls:?}"
    );
    assert!(calls[..reload].iter().any(|c| c == "beat"), "{calls:?}");
}
