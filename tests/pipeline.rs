//! The apply pipeline's contract, checked with the systemd double: each area
//! is observed at most twice in a pass (before and after acting) and once
//! when nothing was done; holdfast never replaces a unit file it did not
//! write.

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
use common::find_item as find;
use holdfast::engine::{self, ApplyOptions};
use holdfast::host::HostRoot;
use holdfast::item::State;
use holdfast::policy::Policy;
use holdfast::systemd::SystemdClient;

const POLICY: &str = r"version: 1
mode: enforce
services:
  myapp.service: {slice: go-app, limit_nofile: 65536, no_new_privileges: true}
cgroup:
  controllers: [cpu, memory, pids]
  slices:
    go-app: {memory.max: 100M, pids.max: 512}
";

fn policy() -> Policy {
    Policy::from_files([("p.yaml", POLICY)]).unwrap()
}

#[test]
fn a_pass_observes_each_unit_at_most_twice_and_once_when_converged() {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let p = policy();

    let first = engine::apply_in(&ctx, &p, ApplyOptions::default());
    assert_eq!(fake.calls_matching("reload"), 1);
    assert!(
        first.items.iter().any(|i| i.state == State::Corrected),
        "{:#?}",
        first.items
    );
    // Before and after acting: the service area asks about the service,
    // the cgroup area about the slice, each twice.
    assert_eq!(fake.queries_of("myapp.service"), 2);
    assert_eq!(fake.queries_of("go-app.slice"), 2);

    fake.queries.borrow_mut().clear();
    fake.calls.borrow_mut().clear();
    let second = engine::apply_in(&ctx, &p, ApplyOptions::default());
    // Converged except what waits for a restart: nothing to do, so each
    // area is read once and nothing is asked of systemd but its view.
    assert!(fake.calls.borrow().is_empty(), "{:?}", fake.calls.borrow());
    assert_eq!(fake.queries_of("myapp.service"), 1);
    assert_eq!(fake.queries_of("go-app.slice"), 1);
    assert!(
        second
            .items
            .iter()
            .all(|i| matches!(i.state, State::Compliant | State::RestartRequired)),
        "{:#?}",
        second.items
    );
}

#[test]
fn a_unit_file_holdfast_did_not_write_is_refused_not_replaced() {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    let site = "# the site's own slice\n[Slice]\nMemoryMax=2G\n";
    h.write("etc/systemd/system/go-app.slice", site);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let pass = engine::apply_in(&ctx, &policy(), ApplyOptions::default());
    assert_eq!(h.read("etc/systemd/system/go-app.slice"), site);
    let path = h.path("etc/systemd/system/go-app.slice");
    let file = find(&pass.items, &path.display().to_string());
    assert_eq!(file.state, State::Refused, "{file:#?}");
    assert!(
        file.detail
            .iter()
            .any(|d| d.contains(&path.display().to_string()) && d.contains("did not write")),
        "{file:#?}"
    );
    assert!(file.action.is_none());
}

#[test]
fn a_new_value_reaches_a_slice_that_a_runtime_override_pins() {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    engine::apply_in(&ctx, &policy(), ApplyOptions::default());
    // Someone's `set-property --runtime`, corrected through systemd: the
    // correction is itself a runtime override, which outranks unit files.
    fake.set_properties_runtime("go-app.slice", &["MemoryMax=314572800".into()])
        .unwrap();
    engine::apply_in(&ctx, &policy(), ApplyOptions::default());
    let memory_max = "sys/fs/cgroup/go.slice/go-app.slice/memory.max";
    assert_eq!(h.read(memory_max).trim(), "104857600");
    // The policy raises the limit: the unit file changes, and the runtime
    // override must follow, or it would keep the old value.
    let raised = Policy::from_files([("p.yaml", POLICY.replace("100M", "1G").as_str())]).unwrap();
    let pass = engine::apply_in(&ctx, &raised, ApplyOptions::default());
    assert_eq!(h.read(memory_max).trim(), "1073741824");
    let knob = find(&pass.items, "go-app.slice memory.max");
    assert_eq!(knob.state, State::Corrected, "{knob:#?}");
}

#[test]
fn an_area_with_nothing_managed_costs_no_systemd_round_trip() {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    // Sysctls, limits and controllers only: nothing systemd is asked about.
    let p = Policy::from_files([(
        "p.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  vm.swappiness: 10\nlimits:\n  - {domain: \"*\", item: nofile, soft: 1024, hard: 1024}\ncgroup:\n  controllers: [memory]\n",
    )])
    .unwrap();
    h.write("proc/sys/vm/swappiness", "60\n");
    engine::apply_in(&ctx, &p, ApplyOptions::default());
    engine::plan_in(&ctx, &p);
    assert_eq!(*fake.round_trips.borrow(), 0, "{:?}", fake.calls.borrow());

    // Services only: the slices' area asks nothing, the service's asks once.
    let p = Policy::from_files([(
        "p.yaml",
        "version: 1\nmode: audit\nservices:\n  myapp.service: {limit_nofile: 65536}\n",
    )])
    .unwrap();
    engine::plan_in(&ctx, &p);
    assert_eq!(*fake.round_trips.borrow(), 1);
    assert_eq!(fake.queries_of("myapp.service"), 1);
}

#[test]
fn a_slice_unit_that_cannot_be_written_is_failed_with_the_reason() {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let slice_only =
        "version: 1\nmode: enforce\ncgroup:\n  slices:\n    go-app: {memory.max: 100M}\n";
    let p = Policy::from_files([("p.yaml", slice_only)]).unwrap();
    engine::apply_in(&ctx, &p, ApplyOptions::default());
    // Something that is not a file holds the slice unit's name: the write
    // fails, and nothing else in the cgroup area acts in this pass.
    let unit = h.path("etc/systemd/system/go-app.slice");
    std::fs::remove_file(&unit).unwrap();
    std::fs::create_dir_all(unit.join("in-the-way")).unwrap();
    let raised =
        Policy::from_files([("p.yaml", slice_only.replace("100M", "1G").as_str())]).unwrap();
    let pass = engine::apply_in(&ctx, &raised, ApplyOptions::default());
    let file = find(&pass.items, &unit.display().to_string());
    assert_eq!(file.state, State::Failed, "{file:#?}");
    assert!(file.action.is_none(), "{file:#?}");
}
