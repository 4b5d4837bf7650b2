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
//!   write when it drifted); other events, the rescan and policy changes
//!   re-read everything and re-arm the watches.
//! - The loop never waits on an HTTP client: it publishes an immutable
//!   snapshot (`watch::Sender::send_replace`) and increments counters.
//! - Shutdown waits only for the pass in flight: control messages are
//!   looked at before any new work.
//!
//! # Caveats
//! - inotify misses writes through another procfs instance and `net.*`
//!   writes from another network namespace; the rescan corrects those.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::diff::{self, SettingId};
use super::metrics::Metrics;
use super::schedule::{Debouncer, Retries, Schedule, Tracker, TrackerConfig, Transition, Work};
use super::sdnotify::Notifier;
use super::state::{
    ItemStatus, ListenerStatus, PassInfo, PolicyState, Rejection, Snapshot, WatchStatus,
    human_duration,
};
use super::watch::{self as watches, Arm, Concern, PolicySource, WatchEvent, WatchMap};
use super::writers;
use crate::area;
use crate::engine;
use crate::host::{self, HostRoot};
use crate::item::{Item, ItemKey, State};
use crate::policy::{Mode, Policy};
use crate::safety::{MemInfo, OvercommitKey};
use crate::sources::{self, LoadError};
use crate::sysctl::SysctlKey;
use crate::sysctl::observe::{self as sysctl_observe, Observed};
use crate::sysctl::plan::{self as sysctl_plan, SysctlHost};
use crate::systemd::SystemdClient;

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
        }
    }
}

/// Messages to the loop (from the signal handlers, or tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: reload the policy and pass now.
    Reload,
    /// SIGTERM/SIGINT: finish the pass in flight and stop.
    Shutdown,
}

type ItemId = ItemKey;

fn id_of(item: &Item) -> ItemId {
    item.key.clone()
}

/// One setting as the loop keeps it.
#[derive(Debug, Clone)]
struct Entry {
    status: ItemStatus,
    /// The state the last pass found, before the daemon's view (contested,
    /// sticky corrected) was put on it.
    found: State,
    /// Who else likely writes it, found when it became contested.
    suspects: Vec<String>,
}

/// The loop's state.
pub struct Reconciler {
    cfg: LoopConfig,
    sources: Vec<PolicySource>,
    policy: PolicyState,
    /// What the last passes read of the sysctls, so that an event on one
    /// key re-reads only that key.
    cache: Option<SysctlHost>,
    entries: Vec<Entry>,
    warnings: Vec<String>,
    trackers: HashMap<ItemId, Tracker>,
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
            sources,
            policy: PolicyState::default(),
            cache: None,
            entries: Vec::new(),
            warnings: Vec::new(),
            trackers: HashMap::new(),
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
        loop {
            // Control first: a shutdown waits only for the pass in flight.
            loop {
                match control.try_recv() {
                    Ok(Control::Reload) => self.schedule.reload_now(),
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
            if overflow.swap(false, Ordering::SeqCst) {
                self.schedule.files_changed();
            }
            let now = Instant::now();
            self.systemd.tick(now);
            let retries = self.due_retries(now);
            if let Some(work) = self.schedule.take(now, retries) {
                self.execute(work, watcher);
                continue;
            }
            let mut deadline = self.schedule.next_deadline(self.next_retry(now));
            if let Some(ping) = self.systemd.next_ping(now) {
                deadline = deadline.min(ping);
            }
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(Control::Reload) => self.schedule.reload_now(),
                    Some(Control::Shutdown) | None => return self.stop(),
                },
                e = events.recv(), if events_open => match e {
                    Some(e) => self.note_event(&e, Instant::now()),
                    None => events_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn stop(&mut self) {
        tracing::info!("stopping");
        self.systemd.stopping();
    }

    fn note_event(&mut self, event: &WatchEvent, now: Instant) {
        for path in &event.paths {
            for concern in self.watch_map.concerns(path) {
                match concern {
                    Concern::Sysctl(key) => self.schedule.key_changed(key),
                    Concern::Files => self.schedule.files_changed(),
                    Concern::Policy => self.schedule.policy_changed(now),
                }
            }
        }
    }

    /// Held items whose backoff ran out.
    fn due_retries(&self, now: Instant) -> Retries {
        let mut retries = Retries::default();
        for e in self.held_entries() {
            let Some(t) = self.trackers.get(&id_of(&e.status.item)) else {
                continue;
            };
            if t.hold_until().is_some_and(|h| h <= now) {
                match e.status.item.key.sysctl() {
                    Some(k) => {
                        retries.keys.insert(k.clone());
                    }
                    None => retries.other = true,
                }
            }
        }
        retries
    }

    fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.held_entries()
            .filter_map(|e| self.trackers.get(&id_of(&e.status.item))?.hold_until())
            .filter(|&h| h > now)
            .min()
    }

    /// Items waiting for their backoff to end: drifted with a write held
    /// back (contested), or enforced and failed (a write or read to retry).
    fn held_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| match e.found {
            State::Drifted => e.status.item.action.is_some(),
            State::Failed => e.status.item.mode == Mode::Enforce,
            _ => false,
        })
    }

    fn execute(&mut self, work: Work, watcher: &mut dyn Arm) {
        let started = std::time::Instant::now();
        let now = Instant::now();
        if work.reload {
            self.reload_policy();
        }
        let policy = self.policy.in_force.clone();
        let full = work.full || self.cache.is_none();
        if let Some(policy) = &policy {
            if full {
                self.full_pass(policy, now);
            } else {
                self.key_pass(policy, &work.keys, now);
            }
        }
        if full {
            self.rearm(watcher, policy.as_deref());
        }
        let duration = started.elapsed();
        self.pass_number += 1;
        self.last_pass = Some(PassInfo {
            number: self.pass_number,
            at: SystemTime::now(),
            at_monotonic: std::time::Instant::now(),
            duration,
            trigger: work.trigger,
            full,
        });
        self.metrics.pass(work.trigger, duration);
        tracing::debug!(
            trigger = work.trigger.as_str(),
            full,
            keys = work.keys.len(),
            duration_us = duration.as_micros() as u64,
            "pass"
        );
        self.publish();
    }

    /// Reads and validates the policy sources. A valid policy replaces the
    /// one in force; an invalid one is reported and changes nothing.
    fn reload_policy(&mut self) {
        let at = SystemTime::now();
        let loaded = sources::read(&self.cfg.host, &self.cfg.policy_paths)
            .and_then(|files| files.parse().map_err(LoadError::from));
        let new = match loaded {
            Ok(p) => p,
            Err(e) => {
                self.metrics.reload(false);
                let keeps = if self.policy.in_force.is_some() {
                    "the previous policy stays in force"
                } else {
                    "no policy is in force"
                };
                let rejection = match e {
                    LoadError::Invalid(errors) => {
                        for err in &errors.0 {
                            tracing::error!("policy: {err}");
                        }
                        tracing::error!(
                            "policy push rejected ({} error(s)); {keeps}",
                            errors.0.len()
                        );
                        Rejection {
                            at,
                            errors: errors.0,
                            message: None,
                        }
                    }
                    other => {
                        tracing::error!("policy push rejected: {other}; {keeps}");
                        Rejection {
                            at,
                            errors: Vec::new(),
                            message: Some(other.to_string()),
                        }
                    }
                };
                self.policy.rejected = Some(rejection);
                return;
            }
        };
        self.metrics.reload(true);
        if self.policy.rejected.take().is_some() {
            tracing::info!("policy push accepted; the rejection is cleared");
        }
        if self.policy.in_force.as_deref() == Some(&new) {
            tracing::debug!("policy reloaded: unchanged");
            return;
        }
        let mut change = diff::policy_change(self.policy.in_force.as_deref(), &new);
        change.at = Some(at);
        self.forget_history(&change);
        tracing::info!(
            files = %new.files.join(", "),
            mode = new.default_mode().as_str(),
            added = change.added.len(),
            changed = change.changed.len(),
            removed = change.removed.len(),
            "policy loaded"
        );
        self.policy.in_force = Some(Arc::new(new));
        self.policy.loaded_at = Some(at);
        self.policy.last_change = Some(change);
        // The next pass is full and rebuilds the cache for the new keys.
        self.cache = None;
    }

    /// A setting that a push added, changed or removed starts with a clean
    /// backoff history: exactly the items it covers forget theirs.
    fn forget_history(&mut self, change: &super::state::PolicyChange) {
        let ids: Vec<&SettingId> = change
            .added
            .iter()
            .chain(&change.changed)
            .chain(&change.removed)
            .collect();
        self.trackers
            .retain(|key, _| !ids.iter().any(|id| id.covers(key)));
    }

    /// Re-reads everything (every kind, through the engine), corrects what
    /// may be corrected, and rebuilds the sysctl cache.
    fn full_pass(&mut self, policy: &Policy, now: Instant) {
        let trackers = &self.trackers;
        let hold = |item: &Item| is_held(trackers, item, now);
        let ctx = engine::Context {
            host: &self.cfg.host,
            systemd: self.cfg.systemd.as_deref(),
        };
        let pass = engine::apply_in_holding(&ctx, policy, engine::ApplyOptions::default(), &hold);
        self.warnings = pass.warnings;
        self.absorb(pass.items, now, true, &HashMap::new());
        self.cache = pass.sysctl;
    }

    /// Re-reads only `keys` (and what the overcommit gate needs with them),
    /// corrects them, and updates the persisted file.
    fn key_pass(&mut self, policy: &Policy, keys: &BTreeSet<SysctlKey>, now: Instant) {
        let host = &self.cfg.host;
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let wanted: HashSet<&str> = keys
            .iter()
            .filter(|k| policy.sysctls.contains_key(*k))
            .map(SysctlKey::as_str)
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut refresh: Vec<SysctlKey> = keys
            .iter()
            .filter(|k| wanted.contains(k.as_str()))
            .cloned()
            .collect();
        let gate = sysctl_plan::needs_meminfo(policy)
            && refresh
                .iter()
                .any(|k| OvercommitKey::from_sysctl(k.as_str()).is_some());
        if gate {
            for k in sysctl_plan::keys_to_read(policy) {
                if OvercommitKey::from_sysctl(k.as_str()).is_some() && !refresh.contains(&k) {
                    refresh.push(k);
                }
            }
            cache.meminfo = host::read_optional(&host.meminfo())
                .ok()
                .flatten()
                .as_deref()
                .and_then(MemInfo::parse);
        }
        let mut before: HashMap<ItemKey, String> = HashMap::new();
        let mut torn: HashSet<String> = HashSet::new();
        for k in &refresh {
            let observed = sysctl_observe::read_key(host, k);
            if let Observed::Value(v) = &observed {
                if v.tokens().is_empty() {
                    // A write in progress that truncated first (a regular
                    // file, as in a fake root; procfs never reads empty).
                    // Its end fires another event; acting on the empty
                    // value would mark the key failed and drop it from the
                    // persisted file. The cache keeps the last value.
                    torn.insert(k.as_str().to_string());
                    continue;
                }
                before.insert(ItemKey::Sysctl(k.clone()), v.canonical());
            }
            cache.values.insert(k.clone(), observed);
        }
        let wanted: HashSet<&str> = wanted.into_iter().filter(|k| !torn.contains(*k)).collect();
        if wanted.is_empty() {
            return;
        }
        let trackers = &self.trackers;
        let refreshed: HashSet<&str> = refresh
            .iter()
            .map(SysctlKey::as_str)
            .filter(|k| !torn.contains(*k))
            .collect();
        // Keys not re-read keep their cached state and are never written
        // from it.
        let hold = |item: &Item| {
            item.key
                .sysctl()
                .is_some_and(|k| !refreshed.contains(k.as_str()))
                || is_held(trackers, item, now)
        };
        // The engine keeps the cache true: it re-reads what it wrote and
        // records the persisted file it wrote.
        let items = engine::apply_sysctls_observed(host, policy, cache, &hold);
        let fresh: Vec<Item> = items
            .into_iter()
            .filter(|i| match &i.key {
                ItemKey::Sysctl(k) => wanted.contains(k.as_str()),
                ItemKey::SysctlFile(_) => true,
                _ => false,
            })
            .collect();
        self.absorb(fresh, now, false, &before);
    }

    /// Takes a pass's items into the loop's view: updates each item's
    /// backoff history, logs and counts what happened, and puts the
    /// daemon's state (contested, failed while backing off, recently
    /// corrected) on it. A full pass replaces the view; a key pass updates
    /// the items it re-read.
    fn absorb(
        &mut self,
        fresh: Vec<Item>,
        now: Instant,
        full: bool,
        before: &HashMap<ItemKey, String>,
    ) {
        let wall = SystemTime::now();
        let cfg = self.cfg.trackers;
        let window = cfg.contest.window;
        let index: HashMap<ItemId, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (id_of(&e.status.item), i))
            .collect();
        let mut running: Option<Vec<String>> = None;
        let mut updated = Vec::with_capacity(fresh.len());
        for mut item in fresh {
            let id = id_of(&item);
            let prev = index.get(&id).map(|&i| &self.entries[i]);
            let found = item.state;
            let tracker = self.trackers.entry(id).or_default();
            let transition = match found {
                State::Corrected => tracker.corrected(now, &cfg),
                State::Failed => tracker.failed(now, &cfg),
                State::Compliant => tracker.compliant(now, &cfg),
                _ => Transition::Nothing,
            };
            let shown = tracker.shown_state(found, now, window);
            let corrections = tracker.corrections_within(now, window);
            let hold_until = tracker.hold_until().filter(|&h| h > now);
            let failures = tracker.failures();
            let contested = tracker.is_contested();

            match found {
                State::Corrected => {
                    self.metrics.correction(item.kind());
                    // The value found: read just now by a key pass, else the
                    // last one known.
                    let from = before
                        .get(&item.key)
                        .cloned()
                        .or_else(|| prev.map(|p| p.status.item.actual.clone()))
                        .filter(|v| !v.is_empty());
                    match from {
                        Some(from) => tracing::info!(
                            kind = item.kind().as_str(),
                            key = %item.key,
                            from = %from,
                            to = %item.actual,
                            "corrected"
                        ),
                        None => tracing::info!(
                            kind = item.kind().as_str(),
                            key = %item.key,
                            to = %item.actual,
                            "corrected"
                        ),
                    }
                }
                State::Failed => self.metrics.failure(item.kind()),
                _ => {}
            }
            let mut suspects = prev.map(|p| p.suspects.clone()).unwrap_or_default();
            match transition {
                Transition::Contested { corrections, hold } => {
                    let names =
                        running.get_or_insert_with(|| writers::running_processes(&self.cfg.host));
                    suspects = writers::likely_writers(&item.key, &item.conflicts, names);
                    tracing::warn!(
                        kind = item.kind().as_str(),
                        key = %item.key,
                        corrections,
                        next_correction_in = %human_duration(hold),
                        likely_writers = %suspects.join("; "),
                        "contested: another writer keeps reverting this setting; backing off"
                    );
                }
                Transition::StillContested { hold } => tracing::warn!(
                    kind = item.kind().as_str(),
                    key = %item.key,
                    next_correction_in = %human_duration(hold),
                    "contested setting corrected again"
                ),
                Transition::Uncontested => {
                    suspects.clear();
                    tracing::info!(
                        kind = item.kind().as_str(),
                        key = %item.key,
                        "no longer contested"
                    );
                }
                Transition::Failing { attempt, retry_in } => tracing::warn!(
                    kind = item.kind().as_str(),
                    key = %item.key,
                    attempt,
                    retry_in = %human_duration(retry_in),
                    detail = %item.detail.join("; "),
                    "failed"
                ),
                Transition::Recovered => tracing::info!(
                    kind = item.kind().as_str(),
                    key = %item.key,
                    "recovered"
                ),
                Transition::Nothing => {}
            }

            let next_attempt = hold_until.map(|h| wall + (h - now));
            if contested {
                item.detail.push(format!(
                    "contested: corrected {corrections} time(s) within {}; another writer keeps reverting it",
                    human_duration(window)
                ));
                if suspects.is_empty() {
                    item.detail.push(
                        "likely writer: not identified (no competing sysctl.d file, no known writer running)"
                            .into(),
                    );
                }
                for s in &suspects {
                    item.detail.push(format!("likely writer: {s}"));
                }
            }
            if let Some(h) = hold_until {
                let why = if contested {
                    "backing off"
                } else {
                    "retrying with backoff"
                };
                if contested || failures > 0 {
                    item.detail.push(format!(
                        "{why}: next write in {}{}",
                        human_duration(h - now),
                        if failures > 0 {
                            format!(" (failed {failures} time(s) in a row)")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            if shown == State::Failed && found == State::Drifted {
                // Held after a failure: the reason is the last failure's.
                if let Some(p) = prev {
                    for d in &p.status.item.detail {
                        if !d.starts_with("retrying with backoff") && !item.detail.contains(d) {
                            item.detail.push(d.clone());
                        }
                    }
                }
            }
            item.state = shown;
            let last_change = match prev {
                Some(p)
                    if p.status.item.state == item.state && p.status.item.actual == item.actual =>
                {
                    p.status.last_change
                }
                _ => wall,
            };
            updated.push(Entry {
                status: ItemStatus {
                    item,
                    last_change,
                    corrections,
                    next_attempt,
                },
                found,
                suspects,
            });
        }
        if full {
            let keep: HashSet<ItemId> = updated.iter().map(|e| id_of(&e.status.item)).collect();
            self.trackers.retain(|id, _| keep.contains(id));
            self.entries = updated;
        } else {
            for e in updated {
                match index.get(&id_of(&e.status.item)) {
                    Some(&i) => self.entries[i] = e,
                    None => self.entries.push(e),
                }
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
        };
        self.watch_map = WatchMap::new(specs);
    }

    fn publish(&mut self) {
        let snap = Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at: self.started_at,
            policy: self.policy.clone(),
            last_pass: self.last_pass.clone(),
            items: self.entries.iter().map(|e| e.status.clone()).collect(),
            warnings: self.warnings.clone(),
            listeners: Arc::clone(&self.listeners),
            watches: self.watches.clone(),
            rescan_interval: self.cfg.rescan,
        };
        let line = snap.summary_line();
        self.publish.send_replace(Arc::new(snap));
        self.systemd.after_pass(&line);
    }
}

/// Whether holdfast must leave an item alone now: it is in backoff.
fn is_held(trackers: &HashMap<ItemId, Tracker>, item: &Item, now: Instant) -> bool {
    item.mode == Mode::Enforce
        && trackers
            .get(&id_of(item))
            .is_some_and(|t| !t.may_write(now))
}

#[cfg(test)]
mod tests;
