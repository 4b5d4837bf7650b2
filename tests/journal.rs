//! The originals journal and `holdfast rollback` on a fake host root: what
//! apply records before its first change, that a later apply never
//! replaces it, that rollback brings the fake root back byte for byte
//! (files and /proc/sys values), and that rollback does not run beside
//! another writer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fake_systemd::FakeSystemd;
use common::{FakeHost, item};
use holdfast::engine::{self, ApplyOptions};
use holdfast::policy::Policy;
use holdfast::rollback::{self, RollbackOptions, Step, UnitStep};

use holdfast::host::HostRoot;
use holdfast::journal::store as journal_store;
use holdfast::journal::{Original, Target};
use holdfast::systemd::SystemdClient;

const JOURNAL: &str = "var/lib/holdfast/originals.json";

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.sysctl("net.core.somaxconn", "128");
    h.sysctl("net.ipv4.ip_forward", "1");
    h.sysctl("kernel.kptr_restrict", "0");
    h.sysctl("fs.nr_open", "1048576");
    h.write(
        "etc/security/limits.conf",
        "# stock file\n* soft nofile 1024\n",
    );
    h
}

const POLICY: &str = r#"version: 1
mode: enforce
sysctl:
  net.core.somaxconn: 4096
  net.ipv4.ip_forward: 0
  kernel.kptr_restrict: 1
limits:
  - {domain: "*", item: nofile, soft: 65536, hard: 65536}
"#;

/// Every file under the root (path, mode and content), the lock file and
/// the policies aside: what "the host as it was" means for a fake root,
/// /proc/sys values included.
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with("policies") || rel.starts_with("run/holdfast") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let content = std::fs::read(&p).unwrap();
                out.insert(
                    rel,
                    format!(
                        "{:o} {}",
                        meta.permissions().mode() & 0o7777,
                        String::from_utf8_lossy(&content)
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn apply_journals_each_original_before_its_first_change() {
    let h = host();
    h.write("etc/security/limits.d/90-holdfast.conf", "# left by hand\n");
    std::fs::set_permissions(
        h.path("etc/security/limits.d/90-holdfast.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let p = h.policy("p.yaml", POLICY);
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");

    let journal = journal_store::load(&HostRoot::new(h.root())).unwrap();
    let original = |t: Target| journal.get(&t).map(|e| e.original.clone());
    let sysctl = |k: &str| Target::Sysctl(holdfast::sysctl::SysctlKey::parse(k).unwrap());
    assert_eq!(
        original(sysctl("net.core.somaxconn")),
        Some(Original::Value("128".into()))
    );
    assert_eq!(
        original(sysctl("net.ipv4.ip_forward")),
        Some(Original::Value("1".into()))
    );
    assert_eq!(
        original(Target::File(
            "etc/security/limits.d/90-holdfast.conf".into()
        )),
        Some(Original::File {
            content: "# left by hand\n".into(),
            mode: 0o640
        })
    );
    assert_eq!(
        original(Target::File("etc/sysctl.d/99-zz-holdfast.conf".into())),
        Some(Original::Absent)
    );
    assert_eq!(journal.len(), 5, "{journal:#?}");

    // check --format json shows each changed item's original; an item
    // holdfast did not change has none.
    let (_, check) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    let o = &item(&check, "net.core.somaxconn")["original"];
    assert_eq!(o["state"], "value", "{o:#}");
    assert_eq!(o["value"], "128");
    assert!(item(&check, "* soft nofile").get("original").is_none());
}

#[test]
fn a_second_apply_with_other_values_never_overwrites_the_journal() {
    let h = host();
    let p = h.policy("p.yaml", POLICY);
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let first = h.read(JOURNAL);

    // The same policy again: nothing changes, the journal is not rewritten.
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(h.read(JOURNAL), first);

    // Other values for the same settings: the host changes, the originals
    // stay those from before the first apply.
    let other = h.policy(
        "other.yaml",
        &POLICY
            .replace("4096", "8192")
            .replace("soft: 65536, hard: 65536", "soft: 4096, hard: 8192"),
    );
    let (code, report) = h.json(&["apply", "--policy", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "8192");
    assert_eq!(h.read(JOURNAL), first);
}

#[test]
fn rollback_after_apply_gives_back_the_exact_fake_root() {
    let h = host();
    // A limits file of holdfast's name already there: restored, content
    // and mode.
    h.write("etc/security/limits.d/90-holdfast.conf", "# by hand\n");
    std::fs::set_permissions(
        h.path("etc/security/limits.d/90-holdfast.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let before = fingerprint(h.root());
    let p = h.policy("p.yaml", POLICY);
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_ne!(fingerprint(h.root()), before);

    // A dry run writes nothing and says there is something to do.
    let during = fingerprint(h.root());
    let (code, dry) = h.json(&["rollback", "--dry-run"]);
    assert_eq!(code, 2, "{dry:#}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(fingerprint(h.root()), during);

    // A kind selector: only the sysctls; the files stay in the journal.
    let (code, some) = h.json(&["rollback", "sysctl"]);
    assert_eq!(code, 0, "{some:#}");
    assert_eq!(some["items"].as_array().unwrap().len(), 3);
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "128");
    assert!(h.path(JOURNAL).exists());

    let (code, rest) = h.json(&["rollback"]);
    assert_eq!(code, 0, "{rest:#}");
    assert!(
        rest["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["result"] == "restored")
    );
    assert!(!h.path(JOURNAL).exists(), "an empty journal is removed");
    assert_eq!(fingerprint(h.root()), before);

    // Nothing left: a second rollback does nothing and succeeds.
    let (code, again) = h.json(&["rollback"]);
    assert_eq!(code, 0);
    assert!(again["items"].as_array().unwrap().is_empty());
}

#[test]
fn rollback_is_refused_while_another_writer_holds_the_lock() {
    let h = host();
    let p = h.policy("p.yaml", POLICY);
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let journal = h.read(JOURNAL);
    let root = HostRoot::new(h.root());
    let lock = root
        .lock_writers("serve", std::time::Duration::from_millis(10))
        .unwrap();
    let out = h
        .holdfast(&["rollback", "--lock-wait", "100ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holdfast serve"), "{stderr}");
    assert!(stderr.contains("stop the daemon"), "{stderr}");
    assert_eq!(
        h.get_sysctl("net.core.somaxconn"),
        "4096",
        "nothing restored"
    );
    assert_eq!(h.read(JOURNAL), journal);
    drop(lock);
    let (code, _) = h.json(&["rollback"]);
    assert_eq!(code, 0);
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "128");
}

#[test]
fn rollback_of_a_service_drop_in_reloads_once_and_reports_the_running_service() {
    let h = host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let policy = |text: &str| Policy::from_files([("p.yaml", text)]).unwrap();
    let p = policy(&format!(
        "{POLICY}services:\n  myapp.service: {{limit_nofile: 65536}}\n"
    ));
    let before = fingerprint(h.root());
    let pass = engine::apply_in(&ctx, &p, ApplyOptions::default());
    let drop_in = "etc/systemd/system/myapp.service.d/90-holdfast.conf";
    assert!(h.path(drop_in).exists(), "{:#?}", pass.items);
    let reloads = fake.calls_matching("reload");

    let report = rollback::run(&ctx, &RollbackOptions::default()).unwrap();
    assert!(
        report.items.iter().all(|r| r.step == Step::Restored),
        "{report:#?}"
    );
    assert!(!h.path(drop_in).exists());
    assert_eq!(fake.calls_matching("reload"), reloads + 1, "one reload");
    // Its processes were started before the drop-in went away.
    assert_eq!(
        report.units,
        vec![("myapp.service".to_string(), UnitStep::RestartRequired)]
    );
    assert!(!report.complete());
    assert_eq!(fake.calls_matching("restart"), 0, "never without asking");
    // Empty directories holdfast made for its files are the only trace.
    assert_eq!(fingerprint(h.root()), before);
}

#[test]
fn rollback_restarts_services_only_when_asked() {
    let h = host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    let p = Policy::from_files([(
        "p.yaml",
        "version: 1\nmode: enforce\nservices:\n  myapp.service: {limit_nofile: 65536}\n",
    )])
    .unwrap();
    engine::apply_in(&ctx, &p, ApplyOptions::default());
    let options = RollbackOptions {
        restart_services: true,
        ..RollbackOptions::default()
    };
    let report = rollback::run(&ctx, &options).unwrap();
    assert_eq!(
        report.units,
        vec![("myapp.service".to_string(), UnitStep::Restarted)]
    );
    assert!(report.complete(), "{report:#?}");
    assert_eq!(fake.calls_matching("restart myapp.service"), 1);
}

#[test]
fn the_overcommit_gate_judges_rollback_writes_too() {
    let h = FakeHost::new();
    h.sysctl("vm.overcommit_memory", "2");
    h.sysctl("vm.overcommit_ratio", "50");
    h.sysctl("vm.overcommit_kbytes", "0");
    let p = h.policy(
        "p.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  vm.overcommit_memory: 0\n",
    );
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(h.get_sysctl("vm.overcommit_memory"), "0");
    // Memory got committed since: switching back to strict would leave no
    // room.
    h.write("proc/meminfo", common::TIGHT_MEMINFO);
    let (code, report) = h.json(&["rollback", "vm.overcommit_memory"]);
    assert_eq!(code, 2, "{report:#}");
    let entry = &report["items"][0];
    assert_eq!(entry["result"], "refused", "{entry:#}");
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .contains("overcommit gate"),
        "{entry:#}"
    );
    assert_eq!(h.get_sysctl("vm.overcommit_memory"), "0");
    // Still in the journal, for when there is room again.
    h.write("proc/meminfo", common::ROOMY_MEMINFO);
    let (code, report) = h.json(&["rollback", "vm.overcommit_memory"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(h.get_sysctl("vm.overcommit_memory"), "2");
}

#[test]
fn rollback_stops_a_slice_holdfast_started_once_nothing_runs_in_it() {
    let policy = "version: 1\nmode: enforce\nservices:\n  myapp.service: {slice: go-app}\ncgroup:\n  slices:\n    go-app: {memory.max: 100M}\n";
    let p = Policy::from_files([("p.yaml", policy)]).unwrap();
    let restart = ApplyOptions {
        restart_services: true,
    };

    // Without restarting the service, it still runs in the slice: left.
    let h = host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    engine::apply_in(&ctx, &p, restart);
    assert_eq!(fake.calls_matching("start go-app.slice"), 1);
    let report = rollback::run(&ctx, &RollbackOptions::default()).unwrap();
    let slice = |r: &rollback::Report| {
        r.items
            .iter()
            .find(|i| i.entry.target.to_string() == "go-app.slice active")
            .map(|i| i.step.clone())
    };
    assert!(
        matches!(slice(&report), Some(Step::Left(why)) if why.contains("processes still run in go-app.slice")),
        "{report:#?}"
    );
    assert_eq!(
        fake.calls_matching("stop"),
        0,
        "a slice with processes is never stopped"
    );
    // It stays in the journal: the next rollback, after the restart, stops it.
    let options = RollbackOptions {
        restart_services: true,
        ..RollbackOptions::default()
    };
    fake.restart_unit("myapp.service");
    let report = rollback::run(&ctx, &options).unwrap();
    assert_eq!(slice(&report), Some(Step::Restored), "{report:#?}");
    assert_eq!(fake.calls_matching("stop go-app.slice"), 1);

    // With --restart-services the service leaves the slice first.
    let h = host();
    let fake = FakeSystemd::new(&h);
    let root = HostRoot::new(h.root());
    let ctx = fake.context(&root);
    engine::apply_in(&ctx, &p, restart);
    let report = rollback::run(&ctx, &options).unwrap();
    assert!(report.complete(), "{report:#?}");
    assert_eq!(slice(&report), Some(Step::Restored));
    assert_eq!(
        fake.unit("myapp.service").unwrap().control_group.as_deref(),
        Some("/system.slice/myapp.service")
    );
    assert_eq!(fake.unit("go-app.slice").unwrap().active_state, "inactive");
}
