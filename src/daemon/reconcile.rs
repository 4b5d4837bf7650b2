//! The reconcile loop: one full pass at start, then passes triggered by
//! inotify events, policy pushes (debounced), the periodic rescan, SIGHUP
//! and backoff retries, until SIGTERM/SIGINT.
//!
//! # Guarantees
//! - Errors never stop the loop: a failed read or write is the item's
//!   `failed` state, retried with backoff. A panic is a bug: the release
//!   build aborts and systemd restarts the daemon (the watchdog catches a
//!   loop that hangs instead).
//! - A rejected policy push changes nothing on the host: the last good
//!   policy stays in force, and the rejection (file:line:col) is in status,
//!   the log and the metrics until a valid push replaces it.
//! - An event on a key's /proc/sys file costs a read of that key (and a
//!   write when it drifted); an announcement from systemd about a managed
//!   unit (D-Bus), or an event on that unit's files, costs a read of that
//!   unit; a daemon-reload, a read of every managed unit, once, after the
//!   reload ended; other events, the rescan and policy changes re-read
//!   everything and re-arm the watches.
//! - The loop never waits on an HTTP client: it publishes an immutable
//!   snapshot (`watch::Sender::send_replace`) and increments counters.
//! - The loop never waits on systemd for a sysctl: a pass over units (the
//!   calls that wait while systemd reloads) runs on the blocking pool with
//!   the unit areas' observations, and key events are served meanwhile; a
//!   full pass, which reads every area, waits until it is back.
//! - Shutdown waits only for the pass in flight: control messages are
//!   looked at before any new work.
//!
//! # Caveats
//! - inotify misses writes through another procfs instance and `net.*`
//!   writes from another network namespace; the rescan corrects those.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ask::{self, Answer, Asked, Pause, Request};
use super::keeper::{PolicyKeeper, Reload};
use super::metrics::Metrics;
use super::schedule::{Debouncer, Schedule, TrackerConfig, Trigger, Work};
use super::sdnotify::Notifier;
use super::state::{
    ListenerStatus, OriginalsCache, PassInfo, Snapshot, WatchStatus, human_duration,
};
use super::uevent::{self, UEvent};
use super::view::{Event, ItemView};
use super::watch::{self as watches, Arm, Concern, PolicySource, WatchEvent, WatchMap};
use super::writers;
use crate::area::{self, Focus, Observation};
use crate::engine;
use crate::host::{self, HostRoot};
use crate::item::{Item, ItemKey};
use crate::policy::{Mode, Policy};
use crate::systemd::{SystemdClient, UnitEvent};

/// Announcements from systemd waiting for the loop; when full, the loop is
/// told to do a full pass instead.
const UNIT_EVENT_QUEUE: usize = 1024;
/// Module uevents queued for the loop (a burst of loads at once; beyond
/// it, the pass they cause reads every module anyway).
const MODULE_EVENT_QUEUE: usize = 64;

/// The pass over units in flight, when it ends (the branch is off without
/// one).
async fn unit_pass_end(
    lane: &mut Option<JoinHandle<UnitPassDone>>,
) -> Result<UnitPassDone, tokio::task::JoinError> {
    match lane {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// What a pass over units on the blocking pool gives back: the unit areas'
/// observations it took with it, and the pass.
pub struct UnitPassDone {
    observed: Vec<Observation>,
    pass: engine::Pass,
}

/// The pass over units in flight.
struct UnitLane {
    trigger: Trigger,
    started: std::time::Instant,
}

/// The next announcement, for `select!` (the branch is off without one).
async fn recv_from<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How the loop runs.
#[derive(Clone)]
pub struct LoopConfig {
    pub host: HostRoot,
    /// The host's systemd, when holdfast may talk to it (the production
    /// client when the root is `/` and systemd is PID 1; a test double in
    /// tests; none otherwise).
    pub systemd: Option<Arc<dyn SystemdClient>>,
    /// `--policy` paths; empty: the policy directory under the root.
    pub policy_paths: Vec<PathBuf>,
    pub rescan: Duration,
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub trackers: TrackerConfig,
    /// systemd's watchdog interval (`WATCHDOG_USEC`), when set.
    pub watchdog: Option<Duration>,
    /// Listen to the kernel's uevents for module loads (the root is the
    /// running kernel's host).
    pub uevents: bool,
}

impl LoopConfig {
    pub fn new(host: HostRoot, policy_paths: Vec<PathBuf>) -> LoopConfig {
        LoopConfig {
            systemd: area::production_client_arc(&host),
            host,
            policy_paths,
            rescan: Duration::from_secs(60),
            debounce: Duration::from_millis(200),
            debounce_max: Duration::from_secs(2),
            trackers: TrackerConfig::default(),
            watchdog: None,
            uevents: false,
        }
    }
}

/// Messages to the loop (from the signal handlers, the API, or tests).
#[derive(Debug)]
pub enum Control {
    /// SIGHUP: reload the policy and pass now.
    Reload,
    /// SIGTERM/SIGINT: finish the pass in flight and stop.
    Shutdown,
    /// A root client's `apply` or `rollback` (the Unix socket): run as the
    /// next pass, once no pass over units is out.
    Ask(Asked),
}

/// The loop's state.
pub struct Reconciler {
    cfg: LoopConfig,
    /// The originals journal the snapshots show.
    originals: OriginalsCache,
    sources: Vec<PolicySource>,
    keeper: PolicyKeeper,
    /// What the last passes read of every area, so that an event on one
    /// key re-reads only that key and an announcement about one unit only
    /// that unit. `None` until the first full pass, and after a new policy.
    observed: Option<Vec<Observation>>,
    /// The units the policy in force manages: systemd's announcements about
    /// other units are dropped on the client's thread, and never wake the
    /// loop.
    managed: Arc<Mutex<BTreeSet<String>>>,
    view: ItemView,
    warnings: Vec<String>,
    schedule: Schedule,
    watch_map: WatchMap,
    watches: WatchStatus,
    pass_number: u64,
    last_pass: Option<PassInfo>,
    started_at: SystemTime,
    listeners: Arc<Vec<ListenerStatus>>,
    metrics: Arc<Metrics>,
    publish: watch::Sender<Arc<Snapshot>>,
    systemd: Notifier,
    /// A pass over units running on the blocking pool (its observations are
    /// out of `observed` until it ends).
    lane: Option<UnitLane>,
    /// When it started, for the snapshots.
    lane_since: Option<SystemTime>,
    /// Clients' requests waiting for their turn.
    asked: std::collections::VecDeque<Asked>,
    /// What a rollback through the daemon paused, until the policy changes
    /// or an apply asks for enforcement again.
    pause: Option<Pause>,
}

impl Reconciler {
    pub fn new(
        cfg: LoopConfig,
        listeners: Arc<Vec<ListenerStatus>>,
        metrics: Arc<Metrics>,
        publish: watch::Sender<Arc<Snapshot>>,
    ) -> Reconciler {
        let now = Instant::now();
        let sources = PolicySource::classify(&cfg.host, &cfg.policy_paths);
        let schedule = Schedule::new(
            now,
            cfg.rescan,
            Debouncer::new(cfg.debounce, cfg.debounce_max),
        );
        let systemd = Notifier::new(cfg.watchdog);
        Reconciler {
            originals: OriginalsCache::default(),
            sources,
            keeper: PolicyKeeper::default(),
            observed: None,
            managed: Arc::new(Mutex::new(BTreeSet::new())),
            view: ItemView::new(cfg.trackers),
            warnings: Vec::new(),
            schedule,
            watch_map: WatchMap::default(),
            watches: WatchStatus::default(),
            pass_number: 0,
            last_pass: None,
            started_at: SystemTime::now(),
            listeners,
            metrics,
            publish,
            systemd,
            lane: None,
            lane_since: None,
            asked: std::collections::VecDeque::new(),
            pause: None,
            cfg,
        }
    }

    /// Runs until a `Shutdown` (or the control channel closes).
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<WatchEvent>,
        mut control: mpsc::UnboundedReceiver<Control>,
        watcher: &mut dyn Arm,
        overflow: Arc<AtomicBool>,
    ) {
        let mut events_open = true;
        let (mut units, units_lost) = self.subscribe();
        let mut units_open = units.is_some();
        let mut modules = self.listen_modules();
        let mut modules_open = modules.is_some();
        let mut lane: Option<JoinHandle<UnitPassDone>> = None;
        loop {
            // Control first: a shutdown waits only for the pass in flight.
            loop {
                match control.try_recv() {
                    Ok(Control::Reload) => self.schedule.reload_now(),
                    Ok(Control::Ask(asked)) => self.asked.push_back(asked),
                    Ok(Control::Shutdown) | Err(mpsc::error::TryRecvError::Disconnected) => {
                        return self.stop();
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            while events_open {
                match events.try_recv() {
                    Ok(e) => self.note_event(&e, Instant::now()),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => events_open = false,
                }
            }
            while units_open && let Some(rx) = units.as_mut() {
                match rx.try_recv() {
                    Ok(e) => self.note_unit_event(e, Instant::now()),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => units_open = false,
                }
            }
            while modules_open && let Some(rx) = modules.as_mut() {
                match rx.try_recv() {
                    Ok(e) => self.note_module_event(&e),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => modules_open = false,
                }
            }
            if overflow.swap(false, Ordering::SeqCst) || units_lost.swap(false, Ordering::SeqCst) {
                self.schedule.files_changed();
            }
            let now = Instant::now();
            self.systemd.tick(now);
            // A client's request is the next pass, once the unit lane is in.
            if lane.is_none()
                && let Some(asked) = self.asked.pop_front()
            {
                self.answer(asked, watcher);
                continue;
            }
            let retries = self.view.due_retries(now);
            // While a pass over units is out, only keys are served: a full
            // pass and more unit work wait for its observations.
            let work = if lane.is_some() {
                self.schedule.take_keys(retries.keys)
            } else {
                self.schedule.take(now, retries)
            };
            if let Some(work) = work {
                if let Some(dispatched) = self.execute(&work, watcher) {
                    lane = Some(dispatched);
                }
                continue;
            }
            // While a pass over units is out, only what a key pass can serve
            // is waited for: the rescan, a debounced push or the end of a
            // reload, already due, would wake the loop at once, again and
            // again, until the lane is back.
            let mut deadline = if lane.is_some() {
                self.view.next_retry(now).unwrap_or(now + self.cfg.rescan)
            } else {
                self.schedule.next_deadline(self.view.next_retry(now))
            };
            if let Some(ping) = self.systemd.next_ping(now) {
                deadline = deadline.min(ping);
            }
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(Control::Reload) => self.schedule.reload_now(),
                    Some(Control::Ask(asked)) => self.asked.push_back(asked),
                    Some(Control::Shutdown) | None => return self.stop(),
                },
                e = events.recv(), if events_open => match e {
                    Some(e) => self.note_event(&e, Instant::now()),
                    None => events_open = false,
                },
                u = recv_from(&mut units), if units_open => match u {
                    Some(u) => self.note_unit_event(u, Instant::now()),
                    None => units_open = false,
                },
                m = recv_from(&mut modules), if modules_open => match m {
                    Some(m) => self.note_module_event(&m),
                    None => modules_open = false,
                },
                done = unit_pass_end(&mut lane) => {
                    lane = None;
                    self.finish_units(done, watcher);
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Asks the systemd client for its announcements about units, filtered
    /// on its thread to the managed units. The flag says announcements were
    /// dropped (the queue was full): only a full pass is then sure.
    fn subscribe(&self) -> (Option<mpsc::Receiver<UnitEvent>>, Arc<AtomicBool>) {
        let lost = Arc::new(AtomicBool::new(false));
        let Some(client) = &self.cfg.systemd else {
            return (None, lost);
        };
        let (tx, rx) = mpsc::channel(UNIT_EVENT_QUEUE);
        let managed = Arc::clone(&self.managed);
        let dropped = Arc::clone(&lost);
        let sink = Box::new(move |event: UnitEvent| {
            if let UnitEvent::Changed(unit) = &event
                && !managed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(unit)
            {
                return true;
            }
            match tx.try_send(event) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped.store(true, Ordering::SeqCst);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        match client.subscribe(sink) {
            Ok(()) => (Some(rx), lost),
            Err(e) => {
                tracing::warn!(
                    "cannot listen to systemd's announcements ({e}); unit drift is found by the rescan"
                );
                (None, lost)
            }
        }
    }

    /// Listens to the kernel's module uevents, when the root is the running
    /// kernel's host. An event that finds the queue full is dropped: the
    /// queued ones cause a full pass, which reads every module.
    fn listen_modules(&self) -> Option<mpsc::Receiver<UEvent>> {
        if !self.cfg.uevents {
            return None;
        }
        let (tx, rx) = mpsc::channel(MODULE_EVENT_QUEUE);
        let sink = Box::new(move |event: UEvent| match tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        match uevent::listen(sink) {
            Ok(()) => Some(rx),
            Err(e) => {
                tracing::warn!("{e}; module loads are found by the rescan");
                None
            }
        }
    }

    /// A module the policy disables loaded or unloaded (or events were
    /// lost): the modules' state is read again, in a full pass (a module
    /// loads rarely; the pass reads /proc/modules afresh).
    fn note_module_event(&mut self, event: &UEvent) {
        let concerns = match event {
            UEvent::Lost => true,
            UEvent::Module { name, .. } => self
                .keeper
                .in_force()
                .is_some_and(|p| p.kernel_modules.keys().any(|m| m.as_str() == name.as_str())),
        };
        if concerns {
            self.schedule.files_changed();
        }
    }

    fn note_unit_event(&mut self, event: UnitEvent, now: Instant) {
        match event {
            UnitEvent::Changed(unit) => self.schedule.unit_changed(unit, Trigger::Systemd),
            UnitEvent::Reloading(reloading) => self.schedule.systemd_reloading(reloading, now),
            UnitEvent::UnitFilesChanged => self.schedule.all_units(),
            UnitEvent::Lost => self.schedule.files_changed(),
        }
    }

    fn stop(&mut self) {
        if let Some(lane) = &self.lane {
            tracing::info!(
                waited_ms = u64::try_from(lane.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "stopping; a pass over units is still waiting on systemd and is left to end"
            );
        } else {
            tracing::info!("stopping");
        }
        self.systemd.stopping();
    }

    fn note_event(&mut self, event: &WatchEvent, now: Instant) {
        for path in &event.paths {
            if event.removed && self.watch_map.is_watched(path) {
                // A watched path itself went away, and its watch with it: a
                // full pass re-reads and re-arms.
                self.schedule.files_changed();
            }
            for concern in self.watch_map.concerns(path) {
                match concern {
                    Concern::Sysctl(key) => self.schedule.key_changed(key),
                    Concern::Unit(unit) => self.schedule.unit_changed(unit, Trigger::Event),
                    Concern::Files if self.left_as_ours(path) => {}
                    Concern::Files => self.schedule.files_changed(),
                    Concern::Policy => self.schedule.policy_changed(now),
                }
            }
        }
    }

    /// Whether `path` is one of holdfast's own files and holds what the
    /// last pass wrote or read of it: the event was the pass's own write
    /// (or changed nothing), and a full pass would find nothing to do. Any
    /// other content, someone else's edit, calls for the pass.
    fn left_as_ours(&self, path: &std::path::Path) -> bool {
        let known = self
            .observed
            .iter()
            .flatten()
            .find_map(|o| o.own_file(path));
        let Some(known) = known else {
            return false;
        };
        match host::read_optional(path) {
            Ok(now) => now.as_deref() == known,
            Err(_) => false,
        }
    }

    /// Runs `work`: a full pass and a key pass here, a pass over units on
    /// the blocking pool (returned, for the loop to wait on).
    fn execute(&mut self, work: &Work, watcher: &mut dyn Arm) -> Option<JoinHandle<UnitPassDone>> {
        let started = std::time::Instant::now();
        let now = Instant::now();
        // A policy source without a watch: no event says it changed, so
        // the rescan reads it again.
        let unwatched = work.trigger == Trigger::Rescan && self.watches.policy_unwatched;
        if work.reload || unwatched {
            self.reload_policy();
        }
        let policy = self.keeper.in_force();
        let full = work.full || self.observed.is_none();
        let mut dispatched = None;
        if let Some(policy) = &policy {
            if full {
                self.pass(policy, Focus::All, now);
                *self.managed.lock().unwrap_or_else(PoisonError::into_inner) =
                    area::managed_units(policy);
            } else {
                if !work.keys.is_empty() {
                    self.pass(policy, Focus::Keys(&work.keys), now);
                }
                if work.all_units {
                    dispatched = Some(self.dispatch_units(policy, None, work.trigger, now));
                } else if work.has_units() {
                    let named: BTreeSet<String> = work
                        .units
                        .intersection(&area::managed_units(policy))
                        .cloned()
                        .collect();
                    if !named.is_empty() {
                        dispatched =
                            Some(self.dispatch_units(policy, Some(named), work.trigger, now));
                    }
                }
            }
        }
        if full {
            self.rearm(watcher, policy.as_deref());
        }
        let keys = !full && !work.keys.is_empty();
        if full || keys || dispatched.is_none() {
            self.finish_pass(work.trigger, started.elapsed(), full, false, keys);
        } else {
            // The snapshots say a pass over units is waiting.
            self.publish_snapshot();
        }
        dispatched
    }

    /// Sends a pass over `units` (every managed unit: `None`) to the
    /// blocking pool with the unit areas' observations: systemd may take
    /// seconds to answer (it answers nothing while it reloads), and the
    /// loop serves key events meanwhile. What is held is decided now, from
    /// the view.
    fn dispatch_units(
        &mut self,
        policy: &Arc<Policy>,
        units: Option<BTreeSet<String>>,
        trigger: Trigger,
        now: Instant,
    ) -> JoinHandle<UnitPassDone> {
        let observed = self.observed.get_or_insert_with(Vec::new);
        let (mut taken, kept): (Vec<Observation>, Vec<Observation>) = std::mem::take(observed)
            .into_iter()
            .partition(|o| o.area().has_units());
        *observed = kept;
        let held: HashSet<ItemKey> = self.view.held_keys(now);
        let pause = self.pause.clone();
        let host = self.cfg.host.clone();
        let systemd = self.cfg.systemd.clone();
        let policy = Arc::clone(policy);
        self.lane = Some(UnitLane {
            trigger,
            started: std::time::Instant::now(),
        });
        self.lane_since = Some(SystemTime::now());
        tokio::task::spawn_blocking(move || {
            let ctx = engine::Context {
                host: &host,
                systemd: systemd.as_deref(),
                heartbeat: None,
            };
            let focus = match &units {
                Some(units) => Focus::Units(units),
                None => Focus::AllUnits,
            };
            let hold = |item: &Item| {
                (item.mode == Mode::Enforce && held.contains(&item.key))
                    || pause.as_ref().is_some_and(|p| p.holds(item))
            };
            let pass = engine::pass(
                &ctx,
                &policy,
                &mut taken,
                focus,
                engine::ApplyOptions::default(),
                &hold,
            );
            UnitPassDone {
                observed: taken,
                pass,
            }
        })
    }

    /// A pass over units came back: its observations return, its items go
    /// into the view, and the watches are armed again (a unit's
    /// runtime-override directory that appeared, or a drop-in directory
    /// replaced, gets its watch at once, not at the next full pass).
    fn finish_units(
        &mut self,
        done: Result<UnitPassDone, tokio::task::JoinError>,
        watcher: &mut dyn Arm,
    ) {
        let Some(lane) = self.lane.take() else {
            return;
        };
        self.lane_since = None;
        let now = Instant::now();
        match done {
            Ok(UnitPassDone { observed, pass }) => {
                let kept = self.observed.get_or_insert_with(Vec::new);
                kept.extend(observed);
                // The order of a pass is the order of `Area::ALL`.
                kept.sort_by_key(Observation::area);
                self.take_pass(pass, now, false);
            }
            Err(e) => {
                // The unit areas' observations are lost with the pass: a
                // full pass reads them again.
                tracing::error!("the pass over units ended without a result: {e}");
                self.observed = None;
                self.schedule.files_changed();
            }
        }
        let policy = self.keeper.in_force();
        self.rearm(watcher, policy.as_deref());
        self.finish_pass(lane.trigger, lane.started.elapsed(), false, true, false);
    }

    /// Counts, logs and publishes a pass that ended.
    fn finish_pass(
        &mut self,
        trigger: Trigger,
        duration: Duration,
        full: bool,
        units: bool,
        keys: bool,
    ) {
        self.pass_number += 1;
        self.last_pass = Some(PassInfo {
            number: self.pass_number,
            at: SystemTime::now(),
            at_monotonic: std::time::Instant::now(),
            duration,
            trigger,
            full,
            units,
            keys,
        });
        self.metrics.pass(trigger, duration);
        tracing::debug!(
            trigger = trigger.as_str(),
            full,
            units,
            keys,
            duration_us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            "pass"
        );
        self.publish();
    }

    /// Runs a client's request as a pass of its own and answers it (a
    /// client that went away misses the answer; the pass is done anyway).
    fn answer(&mut self, asked: Asked, watcher: &mut dyn Arm) {
        let started = std::time::Instant::now();
        tracing::info!(
            command = asked.request.command(),
            "a client asked over the Unix socket"
        );
        let answer = match asked.request {
            Request::Apply { restart_services } => {
                self.apply_now(restart_services, asked.format, watcher)
            }
            Request::Rollback(options) => self.rollback_now(options, asked.format),
        };
        self.finish_pass(Trigger::Request, started.elapsed(), true, false, false);
        let _ = asked.reply.send(answer);
    }

    /// `holdfast apply` through the daemon: the policy read again (what was
    /// pushed is what is applied), then a full pass that ignores the
    /// backoff and ends a pause.
    fn apply_now(
        &mut self,
        restart_services: bool,
        format: ask::ReportFormat,
        watcher: &mut dyn Arm,
    ) -> Answer {
        self.reload_policy();
        let state = self.keeper.state().clone();
        if let Some(rejected) = &state.rejected {
            let mut lines: Vec<String> = rejected.errors.iter().map(ToString::to_string).collect();
            lines.extend(rejected.message.clone());
            return Answer::error(&format!(
                "{}\nholdfast: the newest policy push is rejected; nothing was applied (the daemon keeps {})",
                lines.join("\n"),
                if state.in_force.is_some() {
                    "the last good policy in force"
                } else {
                    "no policy in force"
                }
            ));
        }
        let Some(policy) = self.keeper.in_force() else {
            return Answer::error(
                "holdfast: the daemon has no policy in force; nothing was applied",
            );
        };
        if self.pause.is_some() {
            tracing::info!("apply asked: enforcement paused by a rollback resumes");
            self.set_pause(None);
        }
        let options = engine::ApplyOptions { restart_services };
        let pass = self.pass_with(&policy, Focus::All, Instant::now(), options, false);
        *self.managed.lock().unwrap_or_else(PoisonError::into_inner) = area::managed_units(&policy);
        self.rearm(watcher, Some(&policy));
        let Some(pass) = pass else {
            return Answer::error("holdfast: the pass gave no report");
        };
        let originals = crate::journal::store::load(&self.cfg.host).unwrap_or_default();
        ask::apply_answer(format, &self.root_display(), &policy, &pass, &originals)
    }

    /// `holdfast rollback` through the daemon; unless a dry run, what it
    /// rolled back is paused, and a full pass shows the host as it now is.
    fn rollback_now(
        &mut self,
        mut options: crate::rollback::RollbackOptions,
        format: ask::ReportFormat,
    ) -> Answer {
        if let Some(policy) = self.keeper.in_force() {
            options.overcommit_headroom_percent = policy.safety.overcommit_headroom_percent();
        }
        let ctx = engine::Context {
            host: &self.cfg.host,
            systemd: self.cfg.systemd.as_deref(),
            heartbeat: None,
        };
        let report = match crate::rollback::run(&ctx, &options) {
            Ok(r) => r,
            Err(e) => return Answer::error(&format!("holdfast: {e}")),
        };
        if !options.dry_run {
            let pause = Pause {
                since: SystemTime::now(),
                selectors: options.selectors.clone(),
            };
            tracing::warn!(
                scope = %pause.describe(),
                "rolled back through the daemon: enforcement paused until the policy changes or `holdfast apply`"
            );
            self.set_pause(Some(pause));
            // The host changed under every area: read it all again.
            self.observed = None;
            self.schedule.files_changed();
        }
        ask::rollback_answer(format, &self.root_display(), &report)
    }

    /// Sets (or ends) the pause, and keeps it in its file so that a
    /// restarted daemon keeps it too (an upgrade must not undo a rollback).
    fn set_pause(&mut self, pause: Option<Pause>) {
        let path = self.cfg.host.pause_file();
        let kept = match (&pause, self.keeper.in_force()) {
            (Some(p), Some(policy)) => self.cfg.host.write_atomic(&path, &p.render(&policy), 0o600),
            _ => match self.cfg.host.remove_file(&path) {
                Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        if let Err(e) = kept {
            tracing::warn!("{e}; a restarted daemon will not know of the pause");
        }
        self.pause = pause;
    }

    /// The pause its file kept, when it was made under the policy in force;
    /// a file for another policy goes.
    fn kept_pause(&mut self) -> Option<Pause> {
        let path = self.cfg.host.pause_file();
        let text = host::read_optional(&path).ok().flatten()?;
        let policy = self.keeper.in_force()?;
        let kept = Pause::parse(&text, &policy);
        if let Some(p) = &kept {
            tracing::warn!(
                scope = %p.describe(),
                "enforcement stays paused by an earlier rollback until the policy changes or `holdfast apply`"
            );
        } else {
            tracing::info!("the pause an earlier rollback left was for another policy: enforcing");
            if let Err(e) = self.cfg.host.remove_file(&path) {
                tracing::warn!("{e}");
            }
        }
        kept
    }

    fn root_display(&self) -> String {
        self.cfg.host.root().display().to_string()
    }

    /// Reads and validates the policy sources (the keeper); a new policy
    /// resets the backoff history of the settings it changed and the cache.
    fn reload_policy(&mut self) {
        match self.keeper.reload(&self.cfg.host, &self.cfg.policy_paths) {
            Reload::Rejected => self.metrics.reload(false),
            Reload::Unchanged => self.metrics.reload(true),
            Reload::Loaded(change) => {
                self.metrics.reload(true);
                if self.pass_number == 0 {
                    // A pause a rollback left before this daemon started
                    // holds when the policy is still that one.
                    self.pause = self.kept_pause();
                } else if self.pause.is_some() {
                    tracing::info!("a new policy: enforcement paused by a rollback resumes");
                    self.set_pause(None);
                }
                self.view.forget(
                    change
                        .added
                        .iter()
                        .chain(&change.changed)
                        .chain(&change.removed),
                );
                // The next pass is full and reads every area for the new
                // policy.
                self.observed = None;
            }
        }
    }

    /// One pass of the engine over the observations kept from the last
    /// passes: it reads again what `focus` concerns (everything, in a full
    /// pass), corrects what may be corrected, and the view takes the
    /// focus's items. Held: what the view backs off from.
    fn pass(&mut self, policy: &Policy, focus: Focus<'_>, now: Instant) {
        self.pass_with(policy, focus, now, engine::ApplyOptions::default(), true);
    }

    /// [`Reconciler::pass`] with `options`; `backoff: false` (a client's
    /// explicit apply) acts on items in backoff too. Returns the pass's
    /// items as the engine gave them, for a client's report, when the
    /// backoff is ignored.
    fn pass_with(
        &mut self,
        policy: &Policy,
        focus: Focus<'_>,
        now: Instant,
        options: engine::ApplyOptions,
        backoff: bool,
    ) -> Option<engine::Pass> {
        let full = matches!(focus, Focus::All);
        let view = &self.view;
        let pause = self.pause.as_ref();
        let hold = |item: &Item| {
            (backoff && view.is_held(item, now)) || pause.is_some_and(|p| p.holds(item))
        };
        // The watchdog is pinged between the steps of the pass too: a pass
        // longer than half WATCHDOG_USEC (a big push, a slow systemd) is
        // not a stuck loop.
        let notifier = std::cell::RefCell::new(&mut self.systemd);
        let beat = || notifier.borrow_mut().tick(Instant::now());
        let ctx = engine::Context {
            host: &self.cfg.host,
            systemd: self.cfg.systemd.as_deref(),
            heartbeat: Some(&beat),
        };
        let observed = self.observed.get_or_insert_with(Vec::new);
        let pass = engine::pass(&ctx, policy, observed, focus, options, &hold);
        let kept = (!backoff).then(|| pass.clone());
        self.take_pass(pass, now, full);
        kept
    }

    /// A pass's warnings and items into the view.
    fn take_pass(&mut self, pass: engine::Pass, now: Instant, full: bool) {
        if full {
            self.warnings = pass.warnings;
        } else {
            for w in pass.warnings {
                if !self.warnings.contains(&w) {
                    self.warnings.push(w);
                }
            }
        }
        if full || !pass.items.is_empty() {
            self.absorb(pass.items, now, full, &pass.found);
        }
    }

    /// Takes a pass's items into the view, then logs and counts what
    /// happened.
    fn absorb(
        &mut self,
        fresh: Vec<Item>,
        now: Instant,
        full: bool,
        before: &HashMap<ItemKey, String>,
    ) {
        let host = &self.cfg.host;
        let events = self
            .view
            .absorb(fresh, (now, SystemTime::now()), full, before, &mut || {
                writers::running_processes(host)
            });
        for event in events {
            self.report(event);
        }
    }

    /// One thing that happened to a setting: to the log and the metrics.
    fn report(&self, event: Event) {
        match event {
            Event::Corrected {
                kind,
                key,
                from,
                to,
            } => {
                self.metrics.correction(kind);
                if let Some(from) = from {
                    tracing::info!(
                        kind = kind.as_str(),
                        key = %key,
                        from = %from,
                        to = %to,
                        "corrected"
                    );
                } else {
                    tracing::info!(kind = kind.as_str(), key = %key, to = %to, "corrected");
                }
            }
            Event::Failed { kind } => self.metrics.failure(kind),
            Event::Contested {
                kind,
                key,
                corrections,
                hold,
                suspects,
            } => tracing::warn!(
                kind = kind.as_str(),
                key = %key,
                corrections,
                next_correction_in = %human_duration(hold),
                likely_writers = %suspects.join("; "),
                "contested: another writer keeps reverting this setting; backing off"
            ),
            Event::StillContested { kind, key, hold } => tracing::warn!(
                kind = kind.as_str(),
                key = %key,
                next_correction_in = %human_duration(hold),
                "contested setting corrected again"
            ),
            Event::Uncontested { kind, key } => {
                tracing::info!(kind = kind.as_str(), key = %key, "no longer contested");
            }
            Event::Failing {
                kind,
                key,
                attempt,
                retry_in,
                detail,
            } => tracing::warn!(
                kind = kind.as_str(),
                key = %key,
                attempt,
                retry_in = %human_duration(retry_in),
                detail = %detail,
                "failed"
            ),
            Event::Recovered { kind, key } => {
                tracing::info!(kind = kind.as_str(), key = %key, "recovered");
            }
        }
    }

    fn rearm(&mut self, watcher: &mut dyn Arm, policy: Option<&Policy>) {
        let specs = watches::plan(&self.cfg.host, policy, &self.sources);
        let report = watcher.arm(&specs);
        if report.errors != self.watches.errors {
            for e in &report.errors {
                tracing::warn!("{e}");
            }
        }
        self.watches = WatchStatus {
            watched: report.watched,
            missing: report.missing,
            errors: report.errors,
            policy_unwatched: report.policy_unwatched,
        };
        self.watch_map = WatchMap::new(specs);
    }

    /// Publishes the snapshot and tells systemd the summary (after a pass).
    fn publish(&mut self) {
        let line = self.publish_snapshot();
        self.systemd.after_pass(&line);
    }

    /// Publishes the snapshot; returns its summary line.
    fn publish_snapshot(&mut self) -> String {
        let (originals, journal_warning) = self.originals.current(&self.cfg.host);
        let snap = Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at: self.started_at,
            policy: self.keeper.state().clone(),
            last_pass: self.last_pass.clone(),
            items: self.view.statuses().cloned().collect(),
            warnings: self
                .warnings
                .iter()
                .cloned()
                .chain(journal_warning)
                .collect(),
            listeners: Arc::clone(&self.listeners),
            watches: self.watches.clone(),
            rescan_interval: self.cfg.rescan,
            originals,
            unit_pass_since: self.lane_since,
            paused: self.pause.as_ref().map(|p| (p.since, p.scope())),
        };
        let line = snap.summary_line();
        self.publish.send_replace(Arc::new(snap));
        line
    }
}

#[cfg(test)]
mod tests;
