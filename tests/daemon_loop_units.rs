//! The daemon's loop over services and cgroup slices, with the systemd
//! double injected through `LoopConfig::systemd` and tokio's clock paused:
//! a removed drop-in is restored, a foreign runtime override of a slice is
//! corrected through systemd, and a service setting someone keeps reverting
//! becomes contested and is backed off. Passes are triggered the way
//! SIGHUP does (the watches are covered by the integration tests with real
//! inotify), or by systemd's announcements, which the double makes as
//! systemd does on D-Bus: an announcement about a unit is a pass over that
//! unit alone, and a burst of them during a daemon-reload is one pass.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::FakeHost;
use common::fake_systemd::FakeSystemd;
use holdfast::daemon::metrics::Metrics;
use holdfast::daemon::reconcile::{Control, LoopConfig, Reconciler};
use holdfast::daemon::schedule::{Backoff, ContestRule, TrackerConfig, Trigger};
use holdfast::daemon::state::{ItemStatus, PassInfo, Snapshot};
use holdfast::daemon::watch::{Arm, ArmReport, WatchSpec};
use holdfast::host::HostRoot;
use holdfast::item::State;
use holdfast::limits::LimitValue;
use holdfast::systemd::{SystemdClient, UnitEvent};
use tokio::sync::{mpsc, watch};

const POLICY: &str = r"version: 1
mode: enforce
services:
  myapp.service: {slice: go-app, limit_nofile: 65536}
cgroup:
  controllers: [memory, pids]
  slices:
    go-app: {memory.max: 100M, pids.max: 512}
";
const SOMAXCONN: &str = "proc/sys/net/core/somaxconn";
const DROP_IN: &str = "etc/systemd/system/myapp.service.d/90-holdfast.conf";
const MEMORY_MAX: &str = "sys/fs/cgroup/go.slice/go-app.slice/memory.max";

struct NoWatches;

impl Arm for NoWatches {
    fn arm(&mut self, specs: &[WatchSpec]) -> ArmReport {
        ArmReport {
            watched: specs.len(),
            missing: 0,
            errors: Vec::new(),
            policy_unwatched: false,
        }
    }
}

struct Harness {
    host: FakeHost,
    systemd: Arc<FakeSystemd>,
    snaps: watch::Receiver<Arc<Snapshot>>,
    control: mpsc::UnboundedSender<Control>,
    events: mpsc::Sender<holdfast::daemon::watch::WatchEvent>,
}

/// Lets the loop run until it waits again: the clock is paused, so
/// yielding never moves time, and a pass over units, which runs on the
/// blocking pool (tokio does not move a paused clock while it runs), is
/// waited for until it is back.
async fn settle(snaps: &watch::Receiver<Arc<Snapshot>>) {
    let mut snaps = snaps.clone();
    loop {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        if snaps.borrow_and_update().unit_pass_since.is_none() {
            return;
        }
        snaps.changed().await.expect("the loop runs");
    }
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(POLICY).await
    }

    async fn start_with(policy: &str) -> Harness {
        let host = FakeHost::new();
        host.write("etc/holdfast/policy.d/10-units.yaml", policy);
        host.write(SOMAXCONN, "128\n");
        let systemd = Arc::new(FakeSystemd::new(&host));
        let mut cfg = LoopConfig::new(HostRoot::new(host.root()), Vec::new());
        cfg.systemd = Some(Arc::clone(&systemd) as Arc<dyn SystemdClient>);
        cfg.rescan = Duration::from_secs(3600);
        cfg.trackers = TrackerConfig {
            contest: ContestRule {
                after: 3,
                window: Duration::from_secs(60),
                backoff: Backoff {
                    base: Duration::from_secs(10),
                    max: Duration::from_secs(80),
                },
            },
            retry: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(8),
            },
        };
        let (publish, snaps) = watch::channel(Arc::new(Snapshot::starting(
            Arc::new(Vec::new()),
            cfg.rescan,
        )));
        let metrics = Arc::new(Metrics::new(snaps.clone()));
        let reconciler = Reconciler::new(cfg, Arc::new(Vec::new()), metrics, publish);
        let (events, events_rx) = mpsc::channel(64);
        let (control, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut arm = NoWatches;
            reconciler
                .run(
                    events_rx,
                    control_rx,
                    &mut arm,
                    Arc::new(AtomicBool::new(false)),
                )
                .await;
        });
        settle(&snaps).await;
        Harness {
            host,
            systemd,
            snaps,
            control,
            events,
        }
    }

    /// A full pass now, as SIGHUP asks for one.
    async fn pass(&self) {
        self.control.send(Control::Reload).unwrap();
        self.settle().await;
    }

    async fn settle(&self) {
        settle(&self.snaps).await;
    }

    async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
        self.settle().await;
    }

    fn last_pass(&self) -> PassInfo {
        self.snaps
            .borrow()
            .last_pass
            .clone()
            .expect("a pass has run")
    }

    fn item(&self, key_end: &str) -> ItemStatus {
        let snap = Arc::clone(&self.snaps.borrow());
        snap.items
            .iter()
            .find(|i| i.item.key.to_string().ends_with(key_end))
            .map_or_else(
                || panic!("no item ending {key_end}: {:#?}", snap.items),
                |i| ItemStatus::clone(i),
            )
    }
}

#[tokio::test(start_paused = true)]
async fn a_removed_drop_in_is_restored_by_the_next_pass() {
    let h = Harness::start().await;
    let written = h.host.read(DROP_IN);
    assert!(written.contains("LimitNOFILE=65536"), "{written}");
    assert_eq!(h.systemd.calls_matching("reload"), 1);

    std::fs::remove_file(h.host.path(DROP_IN)).unwrap();
    h.pass().await;
    assert_eq!(h.host.read(DROP_IN), written);
    assert_eq!(h.systemd.calls_matching("reload"), 2);
    assert_eq!(
        h.item("myapp.service.d/90-holdfast.conf").item.state,
        State::Corrected
    );
}

#[tokio::test(start_paused = true)]
async fn a_foreign_runtime_override_of_a_slice_is_corrected_through_systemd() {
    let h = Harness::start().await;
    assert_eq!(h.host.read(MEMORY_MAX).trim(), "104857600");
    // Another tool: `systemctl set-property --runtime go-app.slice MemoryMax=300M`.
    h.systemd
        .set_properties_runtime("go-app.slice", &["MemoryMax=314572800".into()])
        .unwrap();
    assert_eq!(h.host.read(MEMORY_MAX).trim(), "314572800");
    h.pass().await;
    assert_eq!(h.host.read(MEMORY_MAX).trim(), "104857600");
    assert_eq!(
        h.item("go-app.slice memory.max").item.state,
        State::Corrected
    );
    assert!(
        h.systemd
            .calls_matching("set go-app.slice MemoryMax=104857600")
            >= 1
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_setting_reverted_again_and_again_is_contested_and_backed_off() {
    let h = Harness::start().await;
    let written = h.host.read(DROP_IN);
    // The first pass corrected it once; two external removals make three
    // corrections within the window.
    for _ in 0..2 {
        h.advance(Duration::from_secs(1)).await;
        std::fs::remove_file(h.host.path(DROP_IN)).unwrap();
        h.pass().await;
        assert_eq!(h.host.read(DROP_IN), written);
    }
    let item = h.item("myapp.service.d/90-holdfast.conf");
    assert_eq!(item.item.state, State::Contested, "{:#?}", item.item.detail);
    assert!(item.next_attempt.is_some());
    let detail = item.item.detail.join("\n");
    assert!(detail.contains("corrected 3 time(s)"), "{detail}");
    // No sysctl writer is blamed for a unit file.
    assert!(!detail.contains("systemd-sysctl"), "{detail}");

    // The next removal is left alone until the backoff (10 s) ends.
    std::fs::remove_file(h.host.path(DROP_IN)).unwrap();
    h.pass().await;
    assert!(!h.host.path(DROP_IN).exists());
    h.advance(Duration::from_secs(10)).await;
    assert_eq!(
        h.host.read(DROP_IN),
        written,
        "restored when the backoff ends"
    );
}

#[tokio::test(start_paused = true)]
async fn a_unit_announcement_is_a_pass_over_that_unit_not_a_full_pass() {
    let h = Harness::start().await;
    let before = h.last_pass().number;
    h.systemd.queries.borrow_mut().clear();
    h.systemd.calls.borrow_mut().clear();

    // Another tool calls SetUnitProperties on the slice, which leaves no
    // file behind; systemd announces the change.
    h.systemd
        .set_runtime("go-app.slice", &["MemoryMax=314572800".into()]);
    h.systemd.emit(UnitEvent::Changed("go-app.slice".into()));
    h.settle().await;
    assert_eq!(h.host.read(MEMORY_MAX).trim(), "104857600");
    assert_eq!(
        h.item("go-app.slice memory.max").item.state,
        State::Corrected
    );
    let pass = h.last_pass();
    assert!(pass.number > before);
    assert!(!pass.full, "{pass:?}");
    assert_eq!(pass.trigger, Trigger::Systemd);
    // Only the slice was asked about: before and after correcting it, and
    // once more for the announcement of holdfast's own change.
    assert_eq!(h.systemd.queries_of("myapp.service"), 0);
    assert_eq!(h.systemd.queries_of("go-app.slice"), 3);
    assert_eq!(h.systemd.calls_matching("reload"), 0);
    assert_eq!(
        h.systemd
            .calls_matching("set go-app.slice MemoryMax=104857600"),
        1
    );

    // An announcement about a unit the policy does not manage wakes nothing.
    let quiet = h.last_pass().number;
    h.systemd.emit(UnitEvent::Changed("cron.service".into()));
    h.settle().await;
    assert_eq!(h.last_pass().number, quiet);
}

#[tokio::test(start_paused = true)]
async fn a_service_restarted_by_someone_else_is_verified_on_its_new_process() {
    let h = Harness::start().await;
    // Someone restarts myapp.service with its own limit (say, by hand with
    // a transient override): a new main process with other limits.
    {
        let mut units = h.systemd.units.borrow_mut();
        let info = units.get_mut("myapp.service").unwrap();
        info.main_pid = Some(5151);
        info.control_group = Some("/go.slice/go-app.slice/myapp.service".into());
        assert_eq!(info.limit_nofile_hard, Some(LimitValue::Value(65536)));
    }
    h.host.write(
        "sys/fs/cgroup/go.slice/go-app.slice/myapp.service/cgroup.procs",
        "5151\n",
    );
    h.host.write(
        "proc/5151/limits",
        &common::fake_systemd::proc_limits(1024, 4096),
    );
    h.systemd.queries.borrow_mut().clear();
    h.systemd.emit(UnitEvent::Changed("myapp.service".into()));
    h.settle().await;
    let pass = h.last_pass();
    assert!(!pass.full && pass.trigger == Trigger::Systemd, "{pass:?}");
    assert_eq!(h.systemd.queries_of("myapp.service"), 1);
    assert_eq!(h.systemd.queries_of("go-app.slice"), 0);
    let item = h.item("myapp.service LimitNOFILE");
    assert_eq!(item.item.state, State::RestartRequired, "{item:#?}");
    assert!(
        item.item.detail.iter().any(|d| d.contains("PID 5151")),
        "{:#?}",
        item.item.detail
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_announcements_during_a_daemon_reload_is_one_pass() {
    let h = Harness::start().await;
    let before = h.last_pass().number;
    h.systemd.queries.borrow_mut().clear();

    h.systemd.emit(UnitEvent::Reloading(true));
    h.settle().await;
    for _ in 0..10 {
        for unit in ["myapp.service", "go-app.slice"] {
            h.systemd.emit(UnitEvent::Changed(unit.into()));
        }
        h.advance(Duration::from_millis(20)).await;
    }
    // Nothing is read while systemd reloads.
    assert_eq!(h.last_pass().number, before);
    assert!(h.systemd.queries.borrow().is_empty());

    h.systemd.emit(UnitEvent::Reloading(false));
    h.settle().await;
    let pass = h.last_pass();
    assert_eq!(pass.number, before + 1, "one pass for the whole reload");
    assert!(!pass.full, "a pass over the units, not everything");
    assert_eq!(pass.trigger, Trigger::Systemd);
    // Every managed unit read once: nothing had drifted, nothing was done.
    assert_eq!(h.systemd.queries_of("myapp.service"), 1);
    assert_eq!(h.systemd.queries_of("go-app.slice"), 1);
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(h.last_pass().number, before + 1);
}

#[tokio::test(start_paused = true)]
async fn a_sysctl_is_corrected_while_a_pass_over_units_waits_on_systemd() {
    let policy = POLICY.replacen(
        "mode: enforce\n",
        "mode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n",
        1,
    );
    let h = Harness::start_with(&policy).await;
    assert_eq!(h.host.read(SOMAXCONN).trim(), "4096");
    let before = h.last_pass().number;
    h.systemd.queries.borrow_mut().clear();

    // systemd stops answering (a daemon-reload in progress), and a unit
    // announcement sends a pass over that unit to wait on it.
    h.systemd.stall();
    h.systemd.emit(UnitEvent::Changed("myapp.service".into()));
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(
        h.snaps.borrow().unit_pass_since.is_some(),
        "the unit pass waits"
    );

    // Someone writes the sysctl meanwhile: corrected at once, by a key pass.
    h.host.write(SOMAXCONN, "128\n");
    h.events
        .send(holdfast::daemon::watch::WatchEvent {
            paths: vec![h.host.path(SOMAXCONN)],
            removed: false,
        })
        .await
        .unwrap();
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.host.read(SOMAXCONN).trim(), "4096");
    let pass = h.last_pass();
    assert_eq!(pass.number, before + 1);
    assert!(pass.keys && !pass.units && !pass.full, "{pass:?}");
    assert_eq!(h.item("net.core.somaxconn").item.state, State::Corrected);
    assert!(h.snaps.borrow().unit_pass_since.is_some(), "still waiting");

    // systemd answers: the unit pass ends, and the status no longer waits.
    h.systemd.answer();
    h.settle().await;
    let pass = h.last_pass();
    assert_eq!(pass.number, before + 2);
    assert!(pass.units && !pass.full, "{pass:?}");
    assert_eq!(pass.trigger, Trigger::Systemd);
    assert!(h.snaps.borrow().unit_pass_since.is_none());
    assert_eq!(h.systemd.queries_of("myapp.service"), 1);
}
