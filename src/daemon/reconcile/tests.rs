//! The loop over a fake host, with tokio's clock paused: time moves only
//! when a test advances it, so debounce, backoff, contested detection and
//! the rescan are checked to the millisecond without waiting. Events are
//! sent to the loop directly (real inotify is covered by the integration
//! tests); every file read and write is real, under a temp dir.

use std::sync::Mutex;

use super::*;
use crate::daemon::ask::{self, Answer, Asked, Request};
use crate::daemon::schedule::{Backoff, ContestRule, Trigger};
use crate::daemon::state::ItemStatus;
use crate::daemon::watch::{ArmReport, WatchSpec};
use crate::item::State;

const BASE: &str = "etc/holdfast/policy.d/10-base.yaml";
const SOMAXCONN: &str = "proc/sys/net/core/somaxconn";

/// Records how often the loop armed its watches, and with what; says the
/// policy's sources are unwatched when its flag is set (as when inotify
/// ran out of watches).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<WatchSpec>>>>, Arc<AtomicBool>);

impl Arm for Recorder {
    fn arm(&mut self, specs: &[WatchSpec]) -> ArmReport {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(specs.to_vec());
        ArmReport {
            watched: specs.len(),
            missing: 0,
            errors: Vec::new(),
            policy_unwatched: self.1.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

struct Harness {
    dir: tempfile::TempDir,
    snaps: watch::Receiver<Arc<Snapshot>>,
    events: mpsc::Sender<WatchEvent>,
    control: mpsc::UnboundedSender<Control>,
    arms: Recorder,
    overflow: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn write(root: &std::path::Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A fake host with somaxconn at 128 and an enforce policy wanting 4096.
fn fake_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), SOMAXCONN, "128\n");
    write(dir.path(), "proc/meminfo", "MemTotal: 16000000 kB\n");
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n",
    );
    dir
}

fn config(dir: &tempfile::TempDir) -> LoopConfig {
    let mut cfg = LoopConfig::new(HostRoot::new(dir.path()), Vec::new());
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
    cfg
}

/// Lets the loop task run until it waits again (the clock is paused, so
/// yielding never moves time).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

impl Harness {
    async fn start(dir: tempfile::TempDir, cfg: LoopConfig) -> Harness {
        Harness::start_with(dir, cfg, Recorder::default()).await
    }

    async fn start_with(dir: tempfile::TempDir, cfg: LoopConfig, arms: Recorder) -> Harness {
        let (publish, snaps) = watch::channel(Arc::new(Snapshot::starting(
            Arc::new(Vec::new()),
            cfg.rescan,
        )));
        let metrics = Arc::new(Metrics::new(snaps.clone()));
        let reconciler = Reconciler::new(cfg, Arc::new(Vec::new()), metrics, publish);
        let (events, events_rx) = mpsc::channel(64);
        let (control, control_rx) = mpsc::unbounded_channel();
        let mut watcher = arms.clone();
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&overflow);
        let task = tokio::spawn(async move {
            reconciler
                .run(events_rx, control_rx, &mut watcher, flag)
                .await;
        });
        settle().await;
        Harness {
            dir,
            snaps,
            events,
            control,
            arms,
            overflow,
            task,
        }
    }

    fn snap(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snaps.borrow())
    }

    fn item(&self, key: &str) -> ItemStatus {
        self.snap()
            .items
            .iter()
            .find(|i| i.item.key.to_string() == key)
            .map_or_else(|| panic!("no item {key}"), |i| ItemStatus::clone(i))
    }

    fn passes(&self) -> u64 {
        self.snap().last_pass.as_ref().map_or(0, |p| p.number)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Writes a file under the root and tells the loop, as inotify would.
    async fn change(&self, rel: &str, text: &str) {
        write(self.dir.path(), rel, text);
        self.events
            .send(WatchEvent {
                paths: vec![self.dir.path().join(rel)],
                removed: false,
            })
            .await
            .unwrap();
        settle().await;
    }

    async fn advance(&self, d: Duration) {
        tokio::time::advance(d).await;
        settle().await;
    }

    /// What a root client's `apply` or `rollback` gets back.
    async fn ask(&self, request: Request, format: ask::ReportFormat) -> Answer {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::Ask(Asked {
                request,
                format,
                reply,
            }))
            .unwrap();
        settle().await;
        answer.await.unwrap()
    }
}

fn rollback_all() -> Request {
    Request::Rollback(crate::rollback::RollbackOptions {
        dry_run: false,
        restart_services: false,
        selectors: Vec::new(),
        overcommit_headroom_percent: 5,
    })
}

#[tokio::test(start_paused = true)]
async fn a_clients_rollback_pauses_enforcement_until_an_apply_or_a_new_policy() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    assert_eq!(h.read(SOMAXCONN), "4096");

    let answer = h.ask(rollback_all(), ask::ReportFormat::Text).await;
    assert_eq!(answer.exit, 0, "{answer:?}");
    assert!(answer.stdout.contains("restored"), "{}", answer.stdout);
    assert_eq!(h.read(SOMAXCONN), "128", "rolled back");
    settle().await;
    let paused = h.snap().paused.clone();
    assert!(paused.is_some_and(|(_, scope)| scope.is_empty()));
    // The daemon reports the drift and leaves it: an event, the rescan.
    h.change(SOMAXCONN, "100\n").await;
    h.advance(Duration::from_secs(61)).await;
    assert_eq!(h.read(SOMAXCONN), "100");
    let item = h.item("net.core.somaxconn");
    assert_eq!(item.item.state, State::Drifted, "{item:?}");

    // An explicit apply resumes enforcement and answers with its report.
    let answer = h
        .ask(
            Request::Apply {
                restart_services: false,
            },
            ask::ReportFormat::Json,
        )
        .await;
    assert_eq!(answer.exit, 0, "{answer:?}");
    let report: serde_json::Value = serde_json::from_str(&answer.stdout).unwrap();
    assert_eq!(report["command"], "apply");
    assert_eq!(report["compliant"], true);
    assert_eq!(h.read(SOMAXCONN), "4096");
    let snap = h.snap();
    assert!(snap.paused.is_none());
    assert_eq!(snap.last_pass.as_ref().unwrap().trigger, Trigger::Request);
    h.change(SOMAXCONN, "100\n").await;
    assert_eq!(h.read(SOMAXCONN), "4096", "enforced again, by event");

    // Paused again; a new policy resumes it.
    assert_eq!(h.ask(rollback_all(), ask::ReportFormat::Text).await.exit, 0);
    // What the host had before holdfast changed it again: the value
    // written while enforcement was paused.
    assert_eq!(h.read(SOMAXCONN), "100");
    h.change(
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 2048\n",
    )
    .await;
    h.advance(Duration::from_secs(3)).await;
    assert_eq!(h.read(SOMAXCONN), "2048");
    assert!(h.snap().paused.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pause_outlives_a_restart_of_the_daemon_for_the_same_policy() {
    const PAUSE: &str = "var/lib/holdfast/paused.json";
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    assert_eq!(h.ask(rollback_all(), ask::ReportFormat::Text).await.exit, 0);
    assert!(h.dir.path().join(PAUSE).exists());
    let Harness {
        dir, control, task, ..
    } = h;
    control.send(Control::Shutdown).unwrap();
    task.await.unwrap();

    // Restarted (an upgrade, say): still paused, nothing written.
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    assert_eq!(h.read(SOMAXCONN), "128");
    assert!(h.snap().paused.is_some());
    assert_eq!(h.item("net.core.somaxconn").item.state, State::Drifted);
    let Harness {
        dir, control, task, ..
    } = h;
    control.send(Control::Shutdown).unwrap();
    task.await.unwrap();

    // Restarted with another policy: the pause is over, and its file gone.
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 2048\n",
    );
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    assert_eq!(h.read(SOMAXCONN), "2048");
    assert!(h.snap().paused.is_none());
    assert!(!h.dir.path().join(PAUSE).exists());
}

#[tokio::test(start_paused = true)]
async fn an_apply_asked_while_the_newest_push_is_rejected_changes_nothing() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    h.change(
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: {value: 1, mni: 2}\n",
    )
    .await;
    write(h.dir.path(), SOMAXCONN, "100\n");
    let answer = h
        .ask(
            Request::Apply {
                restart_services: true,
            },
            ask::ReportFormat::Text,
        )
        .await;
    assert_eq!(answer.exit, 1, "{answer:?}");
    assert!(
        answer.stderr.contains("10-base.yaml:4"),
        "{}",
        answer.stderr
    );
    assert!(
        answer.stderr.contains("nothing was applied"),
        "{}",
        answer.stderr
    );
    assert_eq!(h.read(SOMAXCONN), "100");
}

#[tokio::test(start_paused = true)]
async fn the_first_pass_corrects_and_an_event_corrects_again_reading_one_key() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;

    assert_eq!(h.read(SOMAXCONN), "4096");
    let first = h.snap();
    assert_eq!(first.last_pass.as_ref().unwrap().trigger, Trigger::Start);
    assert!(first.last_pass.as_ref().unwrap().full);
    let item = h.item("net.core.somaxconn");
    assert_eq!(item.item.state, State::Corrected);
    assert_eq!(item.corrections, 1);
    assert!(
        h.read("etc/sysctl.d/99-zz-holdfast.conf")
            .contains("net.core.somaxconn = 4096")
    );

    h.change(SOMAXCONN, "100\n").await;
    assert_eq!(h.read(SOMAXCONN), "4096");
    let snap = h.snap();
    let pass = snap.last_pass.as_ref().unwrap();
    assert_eq!((pass.trigger, pass.full), (Trigger::Event, false));
    let item = h.item("net.core.somaxconn");
    assert_eq!((item.item.state, item.corrections), (State::Corrected, 2));
    assert!(snap.compliant());

    // Holdfast's own write fires the same event: a re-read, no write.
    let before = h.passes();
    h.change(SOMAXCONN, "4096\n").await;
    assert_eq!(h.passes(), before + 1);
    assert_eq!(h.item("net.core.somaxconn").corrections, 2);
}

#[tokio::test(start_paused = true)]
async fn holdfasts_own_write_of_its_sysctl_d_file_runs_no_pass_and_an_edit_of_it_does() {
    const OWN: &str = "etc/sysctl.d/99-zz-holdfast.conf";
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let ours = std::fs::read_to_string(h.dir.path().join(OWN)).unwrap();
    // The event its own write (the rename into place) fires: the file is as
    // the pass left it, so nothing is read again.
    let before = h.passes();
    h.change(OWN, &ours).await;
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.passes(), before);
    // Someone else's edit of it: a full pass, which puts holdfast's back.
    h.change(OWN, "net.core.somaxconn = 100\n").await;
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.passes(), before + 1);
    assert!(h.snap().last_pass.as_ref().unwrap().full);
    assert_eq!(
        std::fs::read_to_string(h.dir.path().join(OWN)).unwrap(),
        ours
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_in_the_middle_of_a_write_is_not_a_failure() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let persisted = h.read("etc/sysctl.d/99-zz-holdfast.conf");
    // A writer that truncates first: the first event finds the file empty.
    h.change(SOMAXCONN, "").await;
    let item = h.item("net.core.somaxconn");
    assert_eq!(item.item.state, State::Corrected, "{:?}", item.item.detail);
    assert_eq!(h.read("etc/sysctl.d/99-zz-holdfast.conf"), persisted);
    // The end of the write fires the next event, which corrects at once.
    h.change(SOMAXCONN, "100\n").await;
    assert_eq!(h.read(SOMAXCONN), "4096");
    assert_eq!(h.item("net.core.somaxconn").corrections, 2);
}

#[tokio::test(start_paused = true)]
async fn a_setting_reverted_again_and_again_becomes_contested_and_is_backed_off() {
    let dir = fake_host();
    write(
        dir.path(),
        "etc/sysctl.d/10-tuning.conf",
        "net.core.somaxconn = 100\n",
    );
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    // Start: 1 correction; two external reverts: 3 within the window.
    h.advance(Duration::from_secs(1)).await;
    h.change(SOMAXCONN, "100\n").await;
    h.advance(Duration::from_secs(1)).await;
    h.change(SOMAXCONN, "100\n").await;
    assert_eq!(h.read(SOMAXCONN), "4096");
    let item = h.item("net.core.somaxconn");
    assert_eq!(item.item.state, State::Contested);
    assert!(item.next_attempt.is_some());
    let detail = item.item.detail.join("\n");
    assert!(detail.contains("corrected 3 time(s) within 1m"), "{detail}");
    assert!(
        detail.contains("likely writer: ") && detail.contains("10-tuning.conf:1 sets 100"),
        "{detail}"
    );
    assert!(!h.snap().compliant());

    // The next revert is left alone until the backoff (10 s) ends.
    h.change(SOMAXCONN, "100\n").await;
    assert_eq!(h.read(SOMAXCONN), "100");
    assert_eq!(h.item("net.core.somaxconn").item.state, State::Contested);
    h.advance(Duration::from_millis(9_900)).await;
    assert_eq!(h.read(SOMAXCONN), "100");
    h.advance(Duration::from_millis(100)).await;
    assert_eq!(h.read(SOMAXCONN), "4096", "corrected when the backoff ends");
    assert_eq!(h.snap().last_pass.as_ref().unwrap().trigger, Trigger::Retry);

    // The backoff doubles: a revert now waits 20 s.
    h.change(SOMAXCONN, "100\n").await;
    h.advance(Duration::from_millis(19_900)).await;
    assert_eq!(h.read(SOMAXCONN), "100");
    h.advance(Duration::from_millis(100)).await;
    assert_eq!(h.read(SOMAXCONN), "4096");

    // A whole quiet window later, a rescan finds it compliant: uncontested.
    h.advance(Duration::from_secs(61)).await;
    h.advance(Duration::from_secs(60)).await;
    let item = h.item("net.core.somaxconn");
    assert_eq!(item.item.state, State::Compliant, "{:?}", item.item.detail);
    assert!(h.snap().compliant());
}

#[tokio::test(start_paused = true)]
async fn a_failing_write_is_retried_with_backoff_and_never_stops_the_loop() {
    let dir = fake_host();
    // A link out of the fake root to a real sysctl: holdfast reads through
    // it but refuses to write through it, so the write fails for real and
    // nothing on this host changes.
    std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
    std::os::unix::fs::symlink(
        "/proc/sys/kernel/ngroups_max",
        dir.path().join("proc/sys/kernel/ngroups_max"),
    )
    .unwrap();
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n  kernel.ngroups_max: 1000\n",
    );
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let persisted = || {
        use std::os::unix::fs::MetadataExt;
        let path = h.dir.path().join("etc/sysctl.d/99-zz-holdfast.conf");
        (
            std::fs::metadata(&path).unwrap().ino(),
            std::fs::read_to_string(&path).unwrap(),
        )
    };
    let first = persisted();
    let item = h.item("kernel.ngroups_max");
    assert_eq!(item.item.state, State::Failed);
    let detail = item.item.detail.join("\n");
    assert!(detail.contains("symbolic link"), "{detail}");
    assert!(detail.contains("next write in 1s"), "{detail}");
    // The other key was corrected all the same.
    assert_eq!(h.read(SOMAXCONN), "4096");

    let passes = h.passes();
    h.advance(Duration::from_millis(900)).await;
    assert_eq!(h.passes(), passes, "no attempt before the backoff ends");
    h.advance(Duration::from_millis(100)).await;
    assert_eq!(h.passes(), passes + 1);
    let snap = h.snap();
    assert_eq!(snap.last_pass.as_ref().unwrap().trigger, Trigger::Retry);
    let detail = h.item("kernel.ngroups_max").item.detail.join("\n");
    assert!(detail.contains("failed 2 time(s) in a row"), "{detail}");
    assert!(detail.contains("next write in 2s"), "{detail}");
    // 2 s, then 4 s, then 8 s (the maximum), then 8 s again.
    for (wait, n) in [(2, 3), (4, 4), (8, 5), (8, 6)] {
        h.advance(Duration::from_secs(wait)).await;
        assert_eq!(h.passes(), passes + n - 1, "after {wait}s");
    }
    // The persisted file holds the policy's value for the failing key from
    // the first pass on, as for a key held back, and is never rewritten by
    // the retries: the passes agree on it, so holdfast does not fight its
    // own file (each rewrite would be an event and another pass).
    assert!(first.1.contains("kernel.ngroups_max = 1000"), "{}", first.1);
    assert_eq!(persisted(), first, "rewritten by a retry");
    // A full pass while the key is held back agrees too.
    h.control.send(Control::Reload).unwrap();
    settle().await;
    assert_eq!(h.item("kernel.ngroups_max").item.state, State::Failed);
    assert_eq!(persisted(), first, "rewritten by a full pass");
}

#[tokio::test(start_paused = true)]
async fn the_rescan_rereads_everything_and_applies_keys_that_appear_later() {
    let dir = fake_host();
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n  net.ipv4.conf.hf0.rp_filter: 2\n",
    );
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    assert_eq!(
        h.item("net.ipv4.conf.hf0.rp_filter").item.state,
        State::Unsupported
    );
    let arms = h.arms.0.lock().unwrap().len();

    // The interface appears: no watch could exist on it, and no event comes.
    write(h.dir.path(), "proc/sys/net/ipv4/conf/hf0/rp_filter", "0\n");
    // An external change that inotify would miss (another procfs instance).
    write(h.dir.path(), SOMAXCONN, "128\n");
    let passes = h.passes();
    h.advance(Duration::from_secs(59)).await;
    assert_eq!(h.passes(), passes, "nothing before the rescan");
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.passes(), passes + 1);
    let snap = h.snap();
    assert_eq!(snap.last_pass.as_ref().unwrap().trigger, Trigger::Rescan);
    assert_eq!(h.read("proc/sys/net/ipv4/conf/hf0/rp_filter"), "2");
    assert_eq!(h.read(SOMAXCONN), "4096");
    assert_eq!(
        h.arms.0.lock().unwrap().len(),
        arms + 1,
        "the rescan re-arms the watches"
    );
    // Periodic: the next one 60 s later.
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(h.passes(), passes + 2);
}

/// A push no event announces (the policy directory could not be watched:
/// inotify ran out of watches) is applied by the next rescan; with its
/// watch in place, the rescan does not read the policy.
#[tokio::test(start_paused = true)]
async fn the_rescan_reads_the_policy_again_when_its_directory_has_no_watch() {
    for unwatched in [true, false] {
        let dir = fake_host();
        let cfg = config(&dir);
        let arms = Recorder::default();
        arms.1.store(unwatched, std::sync::atomic::Ordering::SeqCst);
        let h = Harness::start_with(dir, cfg, arms).await;
        assert_eq!(h.read(SOMAXCONN), "4096");
        write(
            h.dir.path(),
            BASE,
            "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 2048\n",
        );
        h.advance(Duration::from_secs(60)).await;
        assert_eq!(
            h.snap().last_pass.as_ref().unwrap().trigger,
            Trigger::Rescan
        );
        let want = if unwatched { "2048" } else { "4096" };
        assert_eq!(h.read(SOMAXCONN), want, "policy unwatched: {unwatched}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_push_keeps_the_last_good_policy_and_a_good_one_replaces_it() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let push = "etc/holdfast/policy.d/20-push.yaml";

    // Config management writes the file in bursts: one reload after 200 ms
    // of quiet.
    h.change(push, "version: 1\nsysctl:\n").await;
    h.advance(Duration::from_millis(100)).await;
    h.change(
        push,
        "version: 1\nsysctl:\n  net.core.somaxconn: {mni: 1}\n",
    )
    .await;
    h.advance(Duration::from_millis(199)).await;
    assert!(h.snap().policy.rejected.is_none(), "still debouncing");
    h.advance(Duration::from_millis(1)).await;
    let snap = h.snap();
    let rejected = snap.policy.rejected.as_ref().expect("rejected");
    assert_eq!(rejected.errors.len(), 1);
    let e = &rejected.errors[0];
    assert!(e.source.file.ends_with("20-push.yaml"), "{e}");
    assert_eq!((e.source.line, e.source.column), (3, 24));
    assert_eq!(snap.last_pass.as_ref().unwrap().trigger, Trigger::Policy);
    let files = snap.policy.files();
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("10-base.yaml"), "{files:?}");

    // The old policy is still enforced.
    h.change(SOMAXCONN, "1\n").await;
    assert_eq!(h.read(SOMAXCONN), "4096");

    // A valid push replaces it: only the changed setting is written.
    h.change(push, "version: 1\nsysctl:\n  net.core.somaxconn: 8192\n")
        .await;
    h.advance(Duration::from_millis(200)).await;
    let snap = h.snap();
    assert!(snap.policy.rejected.is_none());
    assert_eq!(h.read(SOMAXCONN), "8192");
    let change = snap.policy.last_change.as_ref().unwrap();
    assert_eq!(
        change
            .changed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["sysctl net.core.somaxconn"]
    );
    assert!(change.added.is_empty() && change.removed.is_empty());
    let item = h.item("net.core.somaxconn");
    assert_eq!(item.item.desired, "8192");
    assert!(
        item.item
            .source
            .as_ref()
            .unwrap()
            .file
            .ends_with("20-push.yaml")
    );
    // A fresh backoff history for the changed setting.
    assert_eq!(item.corrections, 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_first_policy_enforces_nothing_until_a_valid_one_arrives() {
    let dir = fake_host();
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 050\n",
    );
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let snap = h.snap();
    assert!(snap.policy.in_force.is_none());
    assert!(snap.policy.rejected.is_some());
    assert!(!snap.compliant());
    assert_eq!(h.read(SOMAXCONN), "128", "nothing written");

    h.change(
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n",
    )
    .await;
    h.advance(Duration::from_millis(200)).await;
    assert!(h.snap().policy.in_force.is_some());
    assert_eq!(h.read(SOMAXCONN), "4096");
}

#[tokio::test(start_paused = true)]
async fn sighup_reloads_at_once_and_shutdown_ends_the_loop() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    write(
        h.dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 2048\n",
    );
    h.control.send(Control::Reload).unwrap();
    settle().await;
    assert_eq!(
        h.snap().last_pass.as_ref().unwrap().trigger,
        Trigger::Signal
    );
    assert_eq!(h.read(SOMAXCONN), "2048");

    h.control.send(Control::Shutdown).unwrap();
    settle().await;
    assert!(h.task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn file_events_and_lost_events_cause_a_full_pass() {
    let dir = fake_host();
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    h.change("etc/sysctl.d/50-other.conf", "net.core.somaxconn = 1\n")
        .await;
    let snap = h.snap();
    let pass = snap.last_pass.as_ref().unwrap();
    assert_eq!((pass.trigger, pass.full), (Trigger::Event, true));
    // The conflict is now known.
    assert_eq!(h.item("net.core.somaxconn").item.conflicts.len(), 1);

    // inotify's queue overflowed (or the loop's channel was full): the
    // events that were lost are made up for by a full pass.
    let passes = h.passes();
    write(h.dir.path(), SOMAXCONN, "7\n");
    h.overflow.store(true, Ordering::SeqCst);
    // Any wake-up makes the loop look at the flag.
    h.events
        .send(WatchEvent {
            paths: vec![h.dir.path().join("unrelated")],
            removed: false,
        })
        .await
        .unwrap();
    settle().await;
    assert_eq!(h.passes(), passes + 1);
    assert!(h.snap().last_pass.as_ref().unwrap().full);
    assert_eq!(h.read(SOMAXCONN), "4096");
}

#[tokio::test(start_paused = true)]
async fn a_vendor_file_upgrade_refreshes_holdfasts_copy_of_it() {
    const VENDOR: &str = "usr/lib/sysctl.d/50-default.conf";
    const COPY: &str = "etc/sysctl.d/50-default.conf";
    let dir = fake_host();
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nsysctl_conflicts: override\nsysctl:\n  net.core.somaxconn: 4096\n",
    );
    write(
        dir.path(),
        VENDOR,
        "net.core.somaxconn = 128\nvm.swappiness = 60\n",
    );
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let copy = h.read(COPY);
    assert!(copy.contains("\n#net.core.somaxconn = 128\n"), "{copy}");
    let copy_key = h.dir.path().join(COPY).display().to_string();
    assert_eq!(h.item(&copy_key).item.state, State::Corrected);

    // A key event is a key pass: it writes the key, never the copy.
    h.change(SOMAXCONN, "100\n").await;
    assert_eq!(h.read(SOMAXCONN), "4096");
    assert!(!h.snap().last_pass.as_ref().unwrap().full);
    assert_eq!(h.read(COPY), copy);

    // A package upgrade replaces the vendor file: the event on its
    // directory is a full pass, which rewrites the copy from the new file.
    h.change(VENDOR, "net.core.somaxconn = 256\nvm.swappiness = 30\n")
        .await;
    assert!(h.snap().last_pass.as_ref().unwrap().full);
    let refreshed = h.read(COPY);
    assert!(
        refreshed.contains("\n#net.core.somaxconn = 256\nvm.swappiness = 30"),
        "{refreshed}"
    );
    assert!(refreshed.contains(&crate::policy::sha256_hex(
        "net.core.somaxconn = 256\nvm.swappiness = 30\n"
    )));
    assert_eq!(h.item(&copy_key).item.state, State::Corrected);
    assert!(h.item("net.core.somaxconn").item.conflicts.is_empty());
}

#[tokio::test(start_paused = true)]
async fn session_limits_plug_into_the_same_loop() {
    let dir = fake_host();
    write(
        dir.path(),
        BASE,
        "version: 1\nmode: enforce\nlimits:\n  - {domain: \"*\", item: nofile, soft: 65536, hard: 65536}\n",
    );
    write(dir.path(), "proc/sys/fs/nr_open", "1048576\n");
    let cfg = config(&dir);
    let h = Harness::start(dir, cfg).await;
    let managed = "etc/security/limits.d/90-holdfast.conf";
    assert!(h.read(managed).contains("65536"));
    assert_eq!(h.item("* soft nofile").item.state, State::Corrected);

    // Someone removes holdfast's file: the limits.d event brings a full
    // pass, which writes it again.
    std::fs::remove_file(h.dir.path().join(managed)).unwrap();
    h.events
        .send(WatchEvent {
            paths: vec![h.dir.path().join(managed)],
            removed: true,
        })
        .await
        .unwrap();
    settle().await;
    assert!(h.read(managed).contains("65536"));
    let snap = h.snap();
    assert!(snap.last_pass.as_ref().unwrap().full);

    // A file read after holdfast's shadows it: drift, with the culprit named.
    h.change(
        "etc/security/limits.d/99-other.conf",
        "*  soft  nofile  1024\n",
    )
    .await;
    let item = h.item("* soft nofile");
    assert_eq!(item.item.state, State::Drifted);
    assert!(
        item.item
            .detail
            .iter()
            .any(|d| d.contains("99-other.conf:1")),
        "{:?}",
        item.item.detail
    );
}
