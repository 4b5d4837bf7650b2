//! The daemon's loop over services and cgroup slices, with the systemd
//! double injected through `LoopConfig::systemd` and tokio's clock paused:
//! a removed drop-in is restored, a foreign runtime override of a slice is
//! corrected through systemd, and a service setting someone keeps reverting
//! becomes contested and is backed off. Passes are triggered the way
//! SIGHUP does (the watches are covered by the integration tests with real
//! inotify).

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::FakeHost;
use common::fake_systemd::FakeSystemd;
use holdfast::daemon::metrics::Metrics;
use holdfast::daemon::reconcile::{Control, LoopConfig, Reconciler};
use holdfast::daemon::schedule::{Backoff, ContestRule, TrackerConfig};
use holdfast::daemon::state::{ItemStatus, Snapshot};
use holdfast::daemon::watch::{Arm, ArmReport, WatchSpec};
use holdfast::host::HostRoot;
use holdfast::item::State;
use holdfast::systemd::SystemdClient;
use tokio::sync::{mpsc, watch};

const POLICY: &str = r#"version: 1
mode: enforce
services:
  myapp.service: {slice: go-app, limit_nofile: 65536}
cgroup:
  controllers: [memory, pids]
  slices:
    go-app: {memory.max: 100M, pids.max: 512}
"#;
const DROP_IN: &str = "etc/systemd/system/myapp.service.d/90-holdfast.conf";
const MEMORY_MAX: &str = "sys/fs/cgroup/go.slice/go-app.slice/memory.max";

struct NoWatches;

impl Arm for NoWatches {
    fn arm(&mut self, specs: &[WatchSpec]) -> ArmReport {
        ArmReport {
            watched: specs.len(),
            missing: 0,
            errors: Vec::new(),
        }
    }
}

struct Harness {
    host: FakeHost,
    systemd: Arc<FakeSystemd>,
    snaps: watch::Receiver<Arc<Snapshot>>,
    control: mpsc::UnboundedSender<Control>,
    _events: mpsc::Sender<holdfast::daemon::watch::WatchEvent>,
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

impl Harness {
    async fn start() -> Harness {
        let host = FakeHost::new();
        host.write("etc/holdfast/policy.d/10-units.yaml", POLICY);
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
        settle().await;
        Harness {
            host,
            systemd,
            snaps,
            control,
            _events: events,
        }
    }

    /// A full pass now, as SIGHUP asks for one.
    async fn pass(&self) {
        self.control.send(Control::Reload).unwrap();
        settle().await;
    }

    async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
        settle().await;
    }

    fn item(&self, key_end: &str) -> ItemStatus {
        let snap = Arc::clone(&self.snaps.borrow());
        snap.items
            .iter()
            .find(|i| i.item.key.to_string().ends_with(key_end))
            .cloned()
            .unwrap_or_else(|| panic!("no item ending {key_end}: {:#?}", snap.items))
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
