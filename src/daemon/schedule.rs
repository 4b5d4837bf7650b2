//! The loop's timing decisions, pure: which pass runs next and when, the
//! debounce of policy pushes, and per-item backoff (a failing write, a
//! contested setting). Time is `tokio::time::Instant`, passed in, so tests
//! drive it with `tokio::time::pause()`/`advance()` or plain arithmetic.
//!
//! # Guarantees
//! - Setting events are never debounced: a key an event names is due at once
//!   (DESIGN-NOTES §7: a debounce window on a setting is pure drift time).
//! - Policy events are debounced (editors and config management write in
//!   several steps), but never postponed beyond `max_wait` after the first.
//! - A full rescan is due at most `rescan` after the previous full pass,
//!   whatever else happens.
//! - Units named by systemd's announcements are due at once, except while
//!   systemd reloads: what it announces during a daemon-reload waits for
//!   the reload's end (at most [`RELOAD_WAIT_MAX`]) and becomes one pass
//!   over every managed unit.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::item::State;
use crate::sysctl::SysctlKey;

/// Why a pass runs. Shown in status and used as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The first pass after start.
    Start,
    /// A watched file changed (inotify).
    Event,
    /// The policy changed (debounced).
    Policy,
    /// SIGHUP: reload the policy and pass now.
    Signal,
    /// The periodic full rescan.
    Rescan,
    /// A held item's backoff ran out.
    Retry,
    /// systemd announced a change to a managed unit, or a reload (D-Bus).
    Systemd,
    /// A root client asked over the Unix socket (`holdfast apply`).
    Request,
}

impl Trigger {
    pub const ALL: [Trigger; 8] = [
        Trigger::Start,
        Trigger::Event,
        Trigger::Policy,
        Trigger::Signal,
        Trigger::Rescan,
        Trigger::Retry,
        Trigger::Systemd,
        Trigger::Request,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Event => "inotify",
            Trigger::Policy => "policy",
            Trigger::Signal => "sighup",
            Trigger::Rescan => "rescan",
            Trigger::Retry => "retry",
            Trigger::Systemd => "systemd",
            Trigger::Request => "request",
        }
    }
}

/// A trailing debounce with a ceiling: due `quiet` after the last event, but
/// never later than `max_wait` after the first one of a burst.
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    pub fn new(quiet: Duration, max_wait: Duration) -> Debouncer {
        Debouncer {
            quiet,
            max_wait: max_wait.max(quiet),
            first: None,
            last: None,
        }
    }

    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the burst seen so far is due, if there is one.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_wait))
    }

    /// Whether the burst is due at `now`; if so, it is consumed.
    pub fn take(&mut self, now: Instant) -> bool {
        match self.due() {
            Some(due) if due <= now => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }
}

/// Exponential backoff: `base` for the first attempt, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `n + 1` after `n` consecutive setbacks (n >= 1).
    pub fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// When a setting counts as contested, and how the loop then slows down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContestRule {
    /// Corrections within `window` that make a setting contested; 0 turns
    /// detection off.
    pub after: u32,
    pub window: Duration,
    /// Delay before the next correction of a contested setting, by how many
    /// corrections it has had since it became contested.
    pub backoff: Backoff,
}

/// Per-item backoff configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    pub contest: ContestRule,
    /// Delay before retrying a write that failed, by consecutive failures.
    pub retry: Backoff,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            contest: ContestRule {
                after: 5,
                window: Duration::from_secs(300),
                backoff: Backoff {
                    base: Duration::from_secs(10),
                    max: Duration::from_secs(900),
                },
            },
            retry: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
        }
    }
}

/// What an outcome changed about an item, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Nothing,
    /// The item just became contested: `corrections` within the window.
    Contested {
        corrections: usize,
        hold: Duration,
    },
    /// A contested item was corrected again; the next correction waits `hold`.
    StillContested {
        hold: Duration,
    },
    /// A contested item stayed compliant for a whole window.
    Uncontested,
    /// A write failed (`attempt` in a row); the next one waits `retry_in`.
    Failing {
        attempt: u32,
        retry_in: Duration,
    },
    /// A failing item is in line again.
    Recovered,
}

/// The history the loop keeps per item: recent corrections, consecutive
/// failures, and until when writes are held back.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    corrections: VecDeque<Instant>,
    /// 0 when not contested; else the corrections since it became contested.
    contested: u32,
    failures: u32,
    hold_until: Option<Instant>,
}

/// The correction history kept per item is bounded; the count it shows
/// saturates here.
const MAX_REMEMBERED_CORRECTIONS: usize = 256;

impl Tracker {
    /// Whether holdfast may write this item at `now`.
    pub fn may_write(&self, now: Instant) -> bool {
        self.hold_until.is_none_or(|t| now >= t)
    }

    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    pub fn is_contested(&self) -> bool {
        self.contested > 0
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Corrections within the window ending at `now`.
    pub fn corrections_within(&self, now: Instant, window: Duration) -> usize {
        self.corrections
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < window)
            .count()
    }

    fn last_correction(&self) -> Option<Instant> {
        self.corrections.back().copied()
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(&t) = self.corrections.front() {
            if now.saturating_duration_since(t) >= window
                || self.corrections.len() > MAX_REMEMBERED_CORRECTIONS
            {
                self.corrections.pop_front();
            } else {
                break;
            }
        }
    }

    /// holdfast wrote the item and read the policy's value back.
    pub fn corrected(&mut self, now: Instant, cfg: &TrackerConfig) -> Transition {
        let rule = &cfg.contest;
        self.failures = 0;
        self.prune(now, rule.window);
        self.corrections.push_back(now);
        if self.contested > 0 {
            self.contested = self.contested.saturating_add(1);
            let hold = rule.backoff.delay(self.contested);
            self.hold_until = Some(now + hold);
            return Transition::StillContested { hold };
        }
        let recent = self.corrections.len();
        if rule.after > 0 && recent >= rule.after as usize {
            self.contested = 1;
            let hold = rule.backoff.delay(1);
            self.hold_until = Some(now + hold);
            return Transition::Contested {
                corrections: recent,
                hold,
            };
        }
        self.hold_until = None;
        Transition::Nothing
    }

    /// A write (or the read that verifies it) failed.
    pub fn failed(&mut self, now: Instant, cfg: &TrackerConfig) -> Transition {
        self.failures = self.failures.saturating_add(1);
        let retry_in = cfg.retry.delay(self.failures);
        let until = now + retry_in;
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
        Transition::Failing {
            attempt: self.failures,
            retry_in,
        }
    }

    /// A pass found the item in line without writing it.
    pub fn compliant(&mut self, now: Instant, cfg: &TrackerConfig) -> Transition {
        let window = cfg.contest.window;
        let was_failing = self.failures > 0;
        self.failures = 0;
        self.prune(now, window);
        if self.contested > 0 {
            let quiet = self
                .last_correction()
                .is_none_or(|t| now.saturating_duration_since(t) >= window);
            if quiet {
                self.contested = 0;
                self.hold_until = None;
                return Transition::Uncontested;
            }
            return Transition::Nothing;
        }
        self.hold_until = None;
        if was_failing {
            Transition::Recovered
        } else {
            Transition::Nothing
        }
    }

    /// The state the daemon shows: `contested` while contested (even when
    /// the last correction holds), `failed` while a failed write waits for
    /// its retry, `corrected` for a compliant item holdfast corrected within
    /// the window; else what the pass found.
    pub fn shown_state(&self, found: State, now: Instant, window: Duration) -> State {
        if self.contested > 0 {
            return State::Contested;
        }
        match found {
            State::Drifted if self.failures > 0 && !self.may_write(now) => State::Failed,
            State::Compliant if self.corrections_within(now, window) > 0 => State::Corrected,
            other => other,
        }
    }
}

/// What the next pass must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    /// Re-read and re-validate the policy first.
    pub reload: bool,
    /// Re-read everything (and re-arm the watches).
    pub full: bool,
    /// Re-read only these keys (when not `full`).
    pub keys: BTreeSet<SysctlKey>,
    /// Re-read only these units (when not `full`).
    pub units: BTreeSet<String>,
    /// Re-read every managed unit (systemd reloaded), when not `full`.
    pub all_units: bool,
    pub trigger: Trigger,
}

impl Work {
    /// Whether the pass is about units (and not everything).
    pub fn has_units(&self) -> bool {
        !self.full && (self.all_units || !self.units.is_empty())
    }
}

/// Items whose backoff has run out and that are still out of line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retries {
    pub keys: BTreeSet<SysctlKey>,
    /// Items of units, which a pass over those units re-reads.
    pub units: BTreeSet<String>,
    /// Items of other kinds, which only a full pass re-reads.
    pub other: bool,
}

impl Retries {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.units.is_empty() && !self.other
    }
}

/// How long announcements wait for the end of a daemon-reload
/// (`Reloading(false)`) before they are acted on anyway.
pub const RELOAD_WAIT_MAX: Duration = Duration::from_secs(10);

/// What is pending, and when the next timed thing is due.
#[derive(Debug, Clone)]
pub struct Schedule {
    keys: BTreeSet<SysctlKey>,
    units: BTreeSet<String>,
    all_units: bool,
    /// What first asked for the pending unit work.
    units_trigger: Option<Trigger>,
    /// When systemd announced the reload in progress.
    reloading_since: Option<Instant>,
    full: Option<Trigger>,
    reload_now: bool,
    policy: Debouncer,
    rescan: Duration,
    next_rescan: Instant,
}

impl Schedule {
    /// A schedule whose first pass (reload and full) is due at once.
    pub fn new(now: Instant, rescan: Duration, debounce: Debouncer) -> Schedule {
        Schedule {
            keys: BTreeSet::new(),
            units: BTreeSet::new(),
            all_units: false,
            units_trigger: None,
            reloading_since: None,
            full: Some(Trigger::Start),
            reload_now: true,
            policy: debounce,
            rescan,
            next_rescan: now + rescan,
        }
    }

    /// An event on a key's /proc/sys file.
    pub fn key_changed(&mut self, key: SysctlKey) {
        self.keys.insert(key);
    }

    /// A unit's files changed (inotify: `Trigger::Event`), or systemd
    /// announced a change to it (`Trigger::Systemd`).
    pub fn unit_changed(&mut self, unit: String, trigger: Trigger) {
        self.units.insert(unit);
        self.units_trigger.get_or_insert(trigger);
    }

    /// systemd started (`true`) or finished (`false`) a daemon-reload.
    /// What is announced in between waits for the end, which asks for a
    /// pass over every managed unit.
    pub fn systemd_reloading(&mut self, reloading: bool, now: Instant) {
        if reloading {
            self.reloading_since.get_or_insert(now);
        } else {
            self.reloading_since = None;
            self.all_units();
        }
    }

    /// Any managed unit may have changed (a reload, unit files enabled or
    /// disabled).
    pub fn all_units(&mut self) {
        self.all_units = true;
        self.units_trigger.get_or_insert(Trigger::Systemd);
    }

    /// Whether unit work waits for a reload to end at `now`.
    fn reload_pending(&self, now: Instant) -> bool {
        self.reloading_since
            .is_some_and(|t| now < t + RELOAD_WAIT_MAX)
    }

    fn has_units(&self) -> bool {
        self.all_units || !self.units.is_empty()
    }

    /// An event on a file only a full pass re-reads (sysctl.d, limits.d), or
    /// lost events (inotify queue overflow).
    pub fn files_changed(&mut self) {
        self.full.get_or_insert(Trigger::Event);
    }

    /// An event in the policy sources (debounced).
    pub fn policy_changed(&mut self, now: Instant) {
        self.policy.event(now);
    }

    /// SIGHUP: reload and pass now.
    pub fn reload_now(&mut self) {
        self.reload_now = true;
    }

    /// Whether something is due without waiting.
    pub fn has_immediate(&self) -> bool {
        self.reload_now
            || self.full.is_some()
            || !self.keys.is_empty()
            || (self.has_units() && self.reloading_since.is_none())
    }

    /// The next instant something timed is due: the debounced policy, the
    /// rescan, or a retry (`retry_at`).
    pub fn next_deadline(&self, retry_at: Option<Instant>) -> Instant {
        let mut at = self.next_rescan;
        if let Some(due) = self.policy.due() {
            at = at.min(due);
        }
        if let Some(r) = retry_at {
            at = at.min(r);
        }
        if let Some(t) = self.reloading_since {
            at = at.min(t + RELOAD_WAIT_MAX);
        }
        at
    }

    /// Only the sysctl keys due (events and `retries`), if any, for a pass
    /// while a pass over units is out; everything else stays pending.
    pub fn take_keys(&mut self, retries: BTreeSet<SysctlKey>) -> Option<Work> {
        let trigger = if self.keys.is_empty() {
            Trigger::Retry
        } else {
            Trigger::Event
        };
        let mut keys = std::mem::take(&mut self.keys);
        keys.extend(retries);
        (!keys.is_empty()).then(|| Work {
            reload: false,
            full: false,
            keys,
            units: BTreeSet::new(),
            all_units: false,
            trigger,
        })
    }

    /// The work due at `now`, if any; it is removed from the schedule.
    pub fn take(&mut self, now: Instant, retries: Retries) -> Option<Work> {
        if self.reloading_since.is_some() && !self.reload_pending(now) {
            // The end of the reload was not announced in time.
            self.reloading_since = None;
            self.all_units();
        }
        let unit_retries = !retries.units.is_empty();
        self.units.extend(retries.units);
        if unit_retries {
            self.units_trigger.get_or_insert(Trigger::Retry);
        }
        let units_due = self.has_units() && !self.reload_pending(now);
        let signal = std::mem::take(&mut self.reload_now);
        let policy = self.policy.take(now);
        let rescan = now >= self.next_rescan;
        let requested = self.full.take();
        let reload = signal || policy;
        let full = reload || rescan || requested.is_some() || retries.other;
        let trigger = if requested == Some(Trigger::Start) {
            Trigger::Start
        } else if signal {
            Trigger::Signal
        } else if policy {
            Trigger::Policy
        } else if let Some(t) = requested {
            t
        } else if rescan {
            Trigger::Rescan
        } else if !self.keys.is_empty() {
            Trigger::Event
        } else if units_due && let Some(t) = self.units_trigger {
            t
        } else {
            Trigger::Retry
        };
        let mut keys = std::mem::take(&mut self.keys);
        keys.extend(retries.keys);
        let (mut units, mut all_units) = (BTreeSet::new(), false);
        if full || units_due {
            units = std::mem::take(&mut self.units);
            all_units = std::mem::take(&mut self.all_units);
            self.units_trigger = None;
        }
        if full {
            self.next_rescan = now + self.rescan;
            keys.clear();
            units.clear();
            all_units = false;
        } else if keys.is_empty() && !units_due {
            return None;
        }
        if all_units {
            units.clear();
        }
        Some(Work {
            reload,
            full,
            keys,
            units,
            all_units,
            trigger,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn key(s: &str) -> SysctlKey {
        SysctlKey::parse(s).unwrap()
    }

    fn cfg(after: u32) -> TrackerConfig {
        TrackerConfig {
            contest: ContestRule {
                after,
                window: Duration::from_secs(60),
                backoff: Backoff {
                    base: Duration::from_secs(10),
                    max: Duration::from_secs(80),
                },
            },
            retry: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(4),
            },
        }
    }

    #[test]
    fn backoff_doubles_from_base_and_stops_at_max() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let got: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_beyond_max_wait() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(200), ms(1000));
        assert_eq!(d.due(), None);
        d.event(t0);
        d.event(t0 + ms(150));
        assert_eq!(d.due(), Some(t0 + ms(350)));
        assert!(!d.take(t0 + ms(349)));
        assert!(d.take(t0 + ms(350)));
        assert_eq!(d.due(), None, "consumed");

        // A steady stream of events every 100 ms is cut at max_wait.
        let mut d = Debouncer::new(ms(200), ms(1000));
        for i in 0..20 {
            d.event(t0 + ms(100 * i));
        }
        assert_eq!(d.due(), Some(t0 + ms(1000)));
    }

    #[test]
    fn a_setting_becomes_contested_after_n_corrections_within_the_window() {
        let c = cfg(3);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        assert_eq!(t.corrected(t0, &c), Transition::Nothing);
        assert_eq!(t.corrected(t0 + ms(10_000), &c), Transition::Nothing);
        assert!(t.may_write(t0 + ms(10_000)));
        assert_eq!(
            t.corrected(t0 + ms(20_000), &c),
            Transition::Contested {
                corrections: 3,
                hold: Duration::from_secs(10)
            }
        );
        assert!(t.is_contested());
        assert!(!t.may_write(t0 + ms(29_999)));
        assert!(t.may_write(t0 + ms(30_000)));
        assert_eq!(
            t.shown_state(State::Drifted, t0 + ms(25_000), c.contest.window),
            State::Contested
        );
        // Each further correction doubles the hold, up to the maximum.
        let holds: Vec<u64> = (0..4)
            .map(|i| match t.corrected(t0 + ms(30_000 + i * 1000), &c) {
                Transition::StillContested { hold } => hold.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(holds, [20, 40, 80, 80]);
    }

    #[test]
    fn corrections_spread_wider_than_the_window_never_contest() {
        let c = cfg(3);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        for i in 0..10 {
            assert_eq!(t.corrected(t0 + ms(i * 31_000), &c), Transition::Nothing);
        }
        assert!(!t.is_contested());
    }

    #[test]
    fn contest_ends_after_a_quiet_window_and_zero_turns_detection_off() {
        let c = cfg(2);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.corrected(t0, &c);
        assert!(matches!(
            t.corrected(t0 + ms(1000), &c),
            Transition::Contested { .. }
        ));
        // Compliant, but the last correction is recent: still contested.
        assert_eq!(t.compliant(t0 + ms(30_000), &c), Transition::Nothing);
        assert!(t.is_contested());
        assert_eq!(t.compliant(t0 + ms(61_000), &c), Transition::Uncontested);
        assert!(!t.is_contested());
        assert!(t.may_write(t0 + ms(61_000)));

        let off = cfg(0);
        let mut t = Tracker::default();
        for i in 0..1000 {
            assert_eq!(t.corrected(t0 + ms(i), &off), Transition::Nothing);
        }
        assert!(t.corrections_within(t0 + ms(1000), off.contest.window) <= 257);
    }

    #[test]
    fn failed_writes_back_off_and_recover() {
        let c = cfg(3);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let retries: Vec<(u32, u64)> = (0..4)
            .map(|i| match t.failed(t0 + ms(i * 10_000), &c) {
                Transition::Failing { attempt, retry_in } => (attempt, retry_in.as_secs()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(retries, [(1, 1), (2, 2), (3, 4), (4, 4)]);
        assert!(!t.may_write(t0 + ms(33_000)));
        assert_eq!(
            t.shown_state(State::Drifted, t0 + ms(33_000), c.contest.window),
            State::Failed
        );
        assert!(t.may_write(t0 + ms(34_000)));
        assert_eq!(t.compliant(t0 + ms(40_000), &c), Transition::Recovered);
        assert_eq!(t.failures(), 0);
        assert!(t.may_write(t0 + ms(40_000)));
    }

    #[test]
    fn corrected_is_shown_for_a_window_then_compliant() {
        let c = cfg(5);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.corrected(t0, &c);
        let w = c.contest.window;
        assert_eq!(
            t.shown_state(State::Compliant, t0 + ms(59_000), w),
            State::Corrected
        );
        assert_eq!(
            t.shown_state(State::Compliant, t0 + ms(60_000), w),
            State::Compliant
        );
        assert_eq!(t.shown_state(State::Unsupported, t0, w), State::Unsupported);
    }

    fn schedule(now: Instant) -> Schedule {
        Schedule::new(
            now,
            Duration::from_secs(60),
            Debouncer::new(ms(200), ms(2000)),
        )
    }

    #[test]
    fn the_first_pass_reloads_and_reads_everything_then_nothing_is_due() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        assert!(s.has_immediate());
        let w = s.take(t0, Retries::default()).unwrap();
        assert_eq!(
            w,
            Work {
                reload: true,
                full: true,
                keys: BTreeSet::new(),
                units: BTreeSet::new(),
                all_units: false,
                trigger: Trigger::Start
            }
        );
        assert!(!s.has_immediate());
        assert_eq!(s.take(t0 + ms(1), Retries::default()), None);
        assert_eq!(s.next_deadline(None), t0 + Duration::from_secs(60));
    }

    #[test]
    fn key_events_are_due_at_once_and_coalesce() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        s.key_changed(key("net.core.somaxconn"));
        s.key_changed(key("net.core.somaxconn"));
        s.key_changed(key("vm.swappiness"));
        assert!(s.has_immediate());
        let w = s.take(t0 + ms(1), Retries::default()).unwrap();
        assert!(!w.full && !w.reload);
        assert_eq!(w.trigger, Trigger::Event);
        assert_eq!(w.keys.len(), 2);
    }

    #[test]
    fn rescan_is_periodic_and_any_full_pass_restarts_its_clock() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        let w = s
            .take(t0 + Duration::from_secs(60), Retries::default())
            .unwrap();
        assert_eq!((w.full, w.trigger), (true, Trigger::Rescan));
        assert_eq!(s.next_deadline(None), t0 + Duration::from_secs(120));
        // A file event at 90 s: full pass; the next rescan moves to 150 s.
        s.files_changed();
        let w = s
            .take(t0 + Duration::from_secs(90), Retries::default())
            .unwrap();
        assert_eq!((w.full, w.trigger), (true, Trigger::Event));
        assert_eq!(s.next_deadline(None), t0 + Duration::from_secs(150));
        // A full pass covers pending keys.
        s.key_changed(key("net.core.somaxconn"));
        s.files_changed();
        let w = s
            .take(t0 + Duration::from_secs(91), Retries::default())
            .unwrap();
        assert!(w.full && w.keys.is_empty());
    }

    #[test]
    fn policy_events_are_debounced_and_sighup_is_not() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        s.policy_changed(t0 + ms(100));
        s.policy_changed(t0 + ms(250));
        assert!(!s.has_immediate());
        assert_eq!(s.next_deadline(None), t0 + ms(450));
        assert_eq!(s.take(t0 + ms(449), Retries::default()), None);
        let w = s.take(t0 + ms(450), Retries::default()).unwrap();
        assert_eq!((w.reload, w.full, w.trigger), (true, true, Trigger::Policy));

        s.reload_now();
        assert!(s.has_immediate());
        let w = s.take(t0 + ms(500), Retries::default()).unwrap();
        assert_eq!((w.reload, w.full, w.trigger), (true, true, Trigger::Signal));
    }

    #[test]
    fn retries_are_due_at_their_time_and_other_kinds_need_a_full_pass() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        assert_eq!(s.next_deadline(Some(t0 + ms(10))), t0 + ms(10));
        let w = s
            .take(
                t0 + ms(10),
                Retries {
                    keys: [key("vm.swappiness")].into(),
                    ..Retries::default()
                },
            )
            .unwrap();
        assert_eq!(
            (w.full, w.trigger, w.keys.len()),
            (false, Trigger::Retry, 1)
        );
        let w = s
            .take(
                t0 + ms(20),
                Retries {
                    other: true,
                    ..Retries::default()
                },
            )
            .unwrap();
        assert_eq!((w.full, w.trigger), (true, Trigger::Retry));
    }

    #[test]
    fn unit_announcements_are_due_at_once_as_a_pass_over_those_units() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        s.unit_changed("go-app.slice".into(), Trigger::Systemd);
        s.unit_changed("go-app.slice".into(), Trigger::Systemd);
        s.unit_changed("myapp.service".into(), Trigger::Event);
        assert!(s.has_immediate());
        let w = s.take(t0 + ms(1), Retries::default()).unwrap();
        assert!(!w.full && !w.reload && !w.all_units && w.has_units());
        assert_eq!(w.trigger, Trigger::Systemd);
        assert_eq!(w.units.len(), 2);
        assert_eq!(s.take(t0 + ms(2), Retries::default()), None);
        // With a key event in the same wake-up: one pass does both.
        s.unit_changed("go-app.slice".into(), Trigger::Event);
        s.key_changed(key("vm.swappiness"));
        let w = s.take(t0 + ms(3), Retries::default()).unwrap();
        assert_eq!((w.keys.len(), w.units.len()), (1, 1));
    }

    #[test]
    fn announcements_during_a_reload_wait_for_its_end_and_become_one_pass() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        s.systemd_reloading(true, t0);
        for unit in ["a.service", "b.service", "go-app.slice"] {
            s.unit_changed(unit.into(), Trigger::Systemd);
        }
        assert!(!s.has_immediate());
        assert_eq!(s.take(t0 + ms(5), Retries::default()), None);
        assert_eq!(s.next_deadline(None), t0 + RELOAD_WAIT_MAX);
        s.systemd_reloading(false, t0 + ms(10));
        let w = s.take(t0 + ms(10), Retries::default()).unwrap();
        assert!(w.all_units && w.units.is_empty() && !w.full);
        assert_eq!(w.trigger, Trigger::Systemd);
        assert_eq!(s.take(t0 + ms(11), Retries::default()), None);

        // An end never announced: the wait is bounded.
        s.systemd_reloading(true, t0 + ms(20));
        s.unit_changed("a.service".into(), Trigger::Systemd);
        assert_eq!(s.take(t0 + ms(21), Retries::default()), None);
        let w = s
            .take(t0 + ms(20) + RELOAD_WAIT_MAX, Retries::default())
            .unwrap();
        assert!(w.all_units);
        // A full pass covers pending units.
        s.unit_changed("a.service".into(), Trigger::Systemd);
        s.files_changed();
        let w = s.take(t0 + ms(30_000), Retries::default()).unwrap();
        assert!(w.full && w.units.is_empty() && !w.has_units());
        assert_eq!(s.take(t0 + ms(30_001), Retries::default()), None);
    }

    #[test]
    fn unit_retries_are_a_pass_over_their_units() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.take(t0, Retries::default());
        let w = s
            .take(
                t0 + ms(10),
                Retries {
                    units: ["go-app.slice".to_string()].into(),
                    ..Retries::default()
                },
            )
            .unwrap();
        assert_eq!(
            (w.full, w.trigger, w.units.len()),
            (false, Trigger::Retry, 1)
        );
    }
}
