//! What the loop publishes after every pass: an immutable [`Snapshot`] that
//! the status API, the metrics and `holdfast status` read. The loop swaps in
//! a new `Arc<Snapshot>`; readers clone the `Arc` and never hold a lock
//! while they serialize or write to a client.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::host::HostRoot;
use crate::item::{Item, State};
use crate::journal::{Journal, store as journal_store};
use crate::policy::{Mode, Policy, PolicyError};

pub use super::diff::PolicyChange;
use super::schedule::Trigger;

/// The state of the daemon after a pass.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: &'static str,
    pub pid: u32,
    pub started_at: SystemTime,
    pub policy: PolicyState,
    pub last_pass: Option<PassInfo>,
    pub items: Vec<Arc<ItemStatus>>,
    /// Problems reading auxiliary files in the last full pass.
    pub warnings: Vec<String>,
    pub listeners: Arc<Vec<ListenerStatus>>,
    pub watches: WatchStatus,
    pub rescan_interval: Duration,
    /// The originals journal as of the last pass: each item's original.
    pub originals: Arc<Journal>,
    /// Since when a pass over units has been waiting on systemd, when one
    /// is out (sysctl events are served meanwhile).
    pub unit_pass_since: Option<SystemTime>,
    /// Since when enforcement has been paused by a rollback through the
    /// daemon, and what it covers (no selectors: everything).
    pub paused: Option<(SystemTime, Vec<String>)>,
}

/// The originals journal for the snapshots, read again only when its file
/// changed: the journal changes about once per setting in a host's life,
/// and the loop publishes after every pass, key passes included.
#[derive(Debug, Default)]
pub struct OriginalsCache {
    /// The file as last read: inode, size and modification time (none when
    /// absent); `None` before the first read.
    #[expect(
        clippy::option_option,
        reason = "not read yet, read and absent, read and present"
    )]
    stamp: Option<Option<(u64, u64, i64, i64)>>,
    journal: Arc<Journal>,
    /// Why it could not be read, if it could not (the items then show no
    /// original).
    warning: Option<String>,
}

impl OriginalsCache {
    pub fn current(&mut self, host: &HostRoot) -> (Arc<Journal>, Option<String>) {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(host.journal_file())
            .ok()
            .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
        if self.stamp != Some(stamp) {
            (self.journal, self.warning) = match journal_store::load(host) {
                Ok(j) => (Arc::new(j), None),
                Err(e) => (Arc::default(), Some(format!("originals journal: {e}"))),
            };
            self.stamp = Some(stamp);
        }
        (Arc::clone(&self.journal), self.warning.clone())
    }
}

impl Snapshot {
    /// Before the first pass.
    pub fn starting(listeners: Arc<Vec<ListenerStatus>>, rescan_interval: Duration) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at: SystemTime::now(),
            policy: PolicyState::default(),
            last_pass: None,
            items: Vec::new(),
            warnings: Vec::new(),
            listeners,
            watches: WatchStatus::default(),
            rescan_interval,
            originals: Arc::default(),
            unit_pass_since: None,
            paused: None,
        }
    }

    /// Whether the host is in line with a policy in force. With no policy in
    /// force (the first one was rejected) nothing is enforced: not compliant.
    pub fn compliant(&self) -> bool {
        self.policy.in_force.is_some() && !self.items.iter().any(|i| i.item.state.is_drift())
    }

    pub fn count(&self, state: State) -> usize {
        self.items.iter().filter(|i| i.item.state == state).count()
    }

    /// `3 drifted, 41 compliant`: the non-zero counts, for systemd's STATUS=.
    pub fn summary_line(&self) -> String {
        let counts: Vec<String> = State::ALL
            .into_iter()
            .map(|s| (s, self.count(s)))
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        let mut line = if self.policy.in_force.is_none() {
            "no policy in force".to_string()
        } else if counts.is_empty() {
            "no settings".to_string()
        } else {
            counts.join(", ")
        };
        if self.policy.rejected.is_some() {
            line.push_str("; newest policy push rejected");
        }
        line
    }
}

/// The policy in force and the fate of the newest push.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    pub in_force: Option<Arc<Policy>>,
    /// When the policy in force was loaded.
    pub loaded_at: Option<SystemTime>,
    /// Set while the newest push is rejected; the policy in force stays.
    pub rejected: Option<Rejection>,
    /// What the last accepted reload changed.
    pub last_change: Option<PolicyChange>,
}

impl PolicyState {
    pub fn files(&self) -> Vec<String> {
        self.in_force
            .as_ref()
            .map(|p| p.files.clone())
            .unwrap_or_default()
    }

    pub fn mode(&self) -> Option<Mode> {
        self.in_force.as_ref().map(|p| p.default_mode())
    }
}

/// A rejected policy push.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub at: SystemTime,
    /// Validation errors, each with file, line and column.
    pub errors: Vec<PolicyError>,
    /// An error reading the sources (a file vanished, a directory is empty).
    pub message: Option<String>,
}

/// The last pass.
#[derive(Debug, Clone)]
pub struct PassInfo {
    pub number: u64,
    pub at: SystemTime,
    /// Monotonic time of the pass, for the health check.
    pub at_monotonic: std::time::Instant,
    pub duration: Duration,
    pub trigger: Trigger,
    /// Whether everything was re-read, or only the keys an event named.
    pub full: bool,
    /// Whether a pass that was not full re-read units (systemd's
    /// announcements, a unit's files) rather than, or besides, keys.
    pub units: bool,
    /// Whether a pass that was not full re-read sysctl keys.
    pub keys: bool,
}

/// One setting as the daemon shows it.
#[derive(Debug, Clone)]
pub struct ItemStatus {
    /// The item, with the state the daemon shows (see `Tracker::shown_state`).
    pub item: Item,
    /// When the shown state or the actual value last changed.
    pub last_change: SystemTime,
    /// Corrections within the contested-detection window.
    pub corrections: usize,
    /// When holdfast will write the item again, while it is held back.
    pub next_attempt: Option<SystemTime>,
}

/// Where the API listens (or failed to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub address: String,
    pub origin: ListenerOrigin,
    /// Why it is not listening, if it is not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerOrigin {
    /// The default set (loopback :80 and the Unix socket).
    Default,
    /// `--listen`.
    Configured,
    /// Passed by systemd (LISTEN_FDS).
    SocketActivation,
}

impl ListenerOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerOrigin::Default => "default",
            ListenerOrigin::Configured => "configured",
            ListenerOrigin::SocketActivation => "socket-activation",
        }
    }
}

/// The inotify watches after the last arming.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    pub watched: usize,
    pub missing: usize,
    pub errors: Vec<String>,
    /// A policy source has no watch: the rescan reads the policy again.
    pub policy_unwatched: bool,
}

/// RFC 3339 in UTC with milliseconds: `2025-05-01T12:34:56.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the algorithm gives a day in 1..=31 and a month in 1..=12"
)]
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A duration as people read it: `850ms`, `12s`, `5m`, `1h30m`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// `60s`, `5m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 60s, 5m, 500ms)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err("a duration must be more than 0".into());
    }
    Ok(d)
}

/// A duration option, within `[min, max]`: an out-of-range value is a usage
/// error at parse time, never an overflow later (`Instant + Duration`).
pub fn bounded_duration(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "`{}` is out of range: between {} and {}",
            s.trim(),
            human_duration(min),
            human_duration(max)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_originals_are_read_again_only_when_the_journal_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let mut cache = OriginalsCache::default();
        assert_eq!(cache.current(&host).1, None);
        let file = host.journal_file();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "not a journal\n").unwrap();
        let (_, warning) = cache.current(&host);
        assert!(warning.is_some_and(|w| w.contains("originals journal")));
        // Unchanged file: the same result without reading it again.
        assert!(cache.current(&host).1.is_some());
        std::fs::remove_file(&file).unwrap();
        assert_eq!(cache.current(&host).1, None);
    }

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        let at = |s: u64, ms: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_746_102_896, 789), "2025-05-01T12:34:56.789Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let s = Duration::from_secs;
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(s(12)), "12s");
        assert_eq!(human_duration(s(300)), "5m");
        assert_eq!(human_duration(s(330)), "5m30s");
        assert_eq!(human_duration(s(5400)), "1h30m");
        assert_eq!(human_duration(s(7200)), "2h");
    }

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 min").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").unwrap_err().contains("unknown unit"));
    }
}
