//! What the daemon watches, and what an event on a path means.
//!
//! [`plan`] lists the files and directories to watch — the policy sources
//! and each area's own list (`Area::watches`, pure) — and [`WatchMap`]
//! (pure) maps an event's path back to what it concerns.
//! [`InotifyWatcher`] is the I/O side: it arms inotify watches (the
//! `inotify` crate) for writes only, never opens or reads, and forwards
//! events to the loop.
//!
//! An event is only ever a reason to re-read (DESIGN-NOTES §7): inotify
//! misses writes through another procfs instance or from another network
//! namespace, so the periodic rescan stays the backstop.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;

use crate::area::Area;
use crate::host::HostRoot;
use crate::policy::Policy;

pub use crate::area::{Concern, Scope, WatchSpec};

/// Where the policy comes from, as the daemon watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The policy directory under the host root (the default).
    Default(PathBuf),
    Dir(PathBuf),
    File(PathBuf),
}

impl PolicySource {
    /// Classifies the `--policy` arguments (I/O: whether each is a
    /// directory); none means the host's policy directory.
    pub fn classify(host: &HostRoot, explicit: &[PathBuf]) -> Vec<PolicySource> {
        if explicit.is_empty() {
            return vec![PolicySource::Default(host.policy_dir())];
        }
        explicit
            .iter()
            .map(|p| {
                if p.is_dir() {
                    PolicySource::Dir(p.clone())
                } else {
                    PolicySource::File(p.clone())
                }
            })
            .collect()
    }
}

const YAML: &[&str] = &[".yaml", ".yml"];

/// The watches for a policy: its sources, then what each area asks for
/// (`Area::watches`, pure). Reads only whether systemd is PID 1 under the
/// root (its cgroups are not holdfast's to watch).
pub fn plan(host: &HostRoot, policy: Option<&Policy>, sources: &[PolicySource]) -> Vec<WatchSpec> {
    let mut out = Vec::new();
    for source in sources {
        out.push(match source {
            PolicySource::Default(dir) => WatchSpec {
                path: dir.clone(),
                scope: Scope::Entries(YAML),
                concern: Concern::Policy,
                follow_creation: true,
            },
            PolicySource::Dir(dir) => WatchSpec {
                path: dir.clone(),
                scope: Scope::Entries(YAML),
                concern: Concern::Policy,
                follow_creation: false,
            },
            PolicySource::File(file) => WatchSpec {
                path: file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
                scope: Scope::Entry(file.clone()),
                concern: Concern::Policy,
                follow_creation: false,
            },
        });
    }
    let Some(policy) = policy else {
        return out;
    };
    let systemd = crate::systemd::is_pid1(host);
    for area in Area::ALL {
        out.extend(area.watches(host, policy, systemd));
    }
    out
}

/// Maps an event's path to what it concerns.
#[derive(Debug, Clone, Default)]
pub struct WatchMap {
    specs: Vec<WatchSpec>,
    by_path: HashMap<PathBuf, Vec<usize>>,
}

impl WatchMap {
    pub fn new(specs: Vec<WatchSpec>) -> WatchMap {
        let mut by_path: HashMap<PathBuf, Vec<usize>> = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            by_path.entry(s.path.clone()).or_default().push(i);
        }
        WatchMap { specs, by_path }
    }

    pub fn specs(&self) -> &[WatchSpec] {
        &self.specs
    }

    /// Whether `path` itself is watched (not only an entry of a watched
    /// directory).
    pub fn is_watched(&self, path: &Path) -> bool {
        self.by_path.contains_key(path)
    }

    /// What an event on `path` concerns (deduplicated, in a stable order).
    pub fn concerns(&self, path: &Path) -> Vec<Concern> {
        let mut out = Vec::new();
        // The watched path itself: a file written, or a directory removed.
        for &i in self.by_path.get(path).into_iter().flatten() {
            out.push(self.specs[i].concern.clone());
        }
        // An entry of a watched directory.
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            for &i in self.by_path.get(dir).into_iter().flatten() {
                let spec = &self.specs[i];
                let relevant = match &spec.scope {
                    Scope::File => false,
                    Scope::Entries(suffixes) => entry_matches(name, suffixes),
                    Scope::Entry(file) => file.as_path() == path,
                };
                if relevant {
                    out.push(spec.concern.clone());
                }
            }
        }
        // Something on the way to a path that does not exist yet.
        for spec in self.specs.iter().filter(|s| s.follow_creation) {
            if spec.path != path && spec.path.starts_with(path) {
                out.push(spec.concern.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

fn entry_matches(name: &OsStr, suffixes: &[&str]) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    !name.starts_with('.') && suffixes.iter().any(|s| name.ends_with(s))
}

/// An inotify event the loop must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub paths: Vec<PathBuf>,
    /// The path was removed or moved away: its watch is gone.
    pub removed: bool,
}

/// What a watch on a file asks the kernel for: writes (`IN_MODIFY` while
/// written, `IN_CLOSE_WRITE` when the writer closes), and its own end
/// (removed or moved away). Never `IN_OPEN`, `IN_ACCESS` or
/// `IN_CLOSE_NOWRITE`: a process that only reads a watched /proc/sys key
/// must not wake the daemon (holdfast's own reads included).
pub const FILE_MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// What a watch on a directory asks for: entries created, removed, moved
/// in or out, written, and the directory's own end. Never opens or reads.
pub const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// Whether an event is a reason to re-read: `None` if not, else whether
/// the path was removed or moved away (its watch is gone). Pure.
pub fn relevant(mask: EventMask) -> Option<bool> {
    let gone = EventMask::DELETE
        | EventMask::DELETE_SELF
        | EventMask::MOVED_FROM
        | EventMask::MOVE_SELF
        | EventMask::IGNORED;
    let changed =
        EventMask::MODIFY | EventMask::CLOSE_WRITE | EventMask::CREATE | EventMask::MOVED_TO;
    if mask.intersects(gone) {
        Some(true)
    } else if mask.intersects(changed) {
        Some(false)
    } else {
        None
    }
}

/// Counts of the last arming, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArmReport {
    /// Paths with a watch.
    pub watched: usize,
    /// Wanted paths that do not exist (armed when they appear, at a rescan).
    pub missing: usize,
    pub errors: Vec<String>,
    /// Whether a policy source has no watch (an error, or no inotify at
    /// all): then the rescan must read the policy again, since no event
    /// will say it changed.
    pub policy_unwatched: bool,
}

/// Keeps the set of watches in line with a list of specs.
pub trait Arm: Send {
    fn arm(&mut self, specs: &[WatchSpec]) -> ArmReport;
}

/// The path to watch for a spec right now: itself if it exists, else (for
/// `follow_creation`) its nearest existing ancestor.
fn watch_target(spec: &WatchSpec) -> Option<PathBuf> {
    if spec.path.exists() {
        return Some(spec.path.clone());
    }
    if !spec.follow_creation {
        return None;
    }
    spec.path
        .ancestors()
        .skip(1)
        .find(|p| p.is_dir())
        .map(Path::to_path_buf)
}

/// inotify through the `inotify` crate: the loop arms watches, a thread of
/// its own (`holdfast-inotify`) reads events, keeps only writes, creations,
/// removals and moves, and sends each read's paths to the loop over a
/// bounded channel; when the channel is full, or inotify's queue
/// overflowed, the `overflow` flag asks the loop for a full pass instead.
pub struct InotifyWatcher {
    watches: Watches,
    /// Watched path → (device, inode) and its watch; a changed inode means
    /// the file was replaced and needs a new watch.
    armed: HashMap<PathBuf, ((u64, u64), WatchDescriptor)>,
    /// What each watch is on, for the reader thread to name paths.
    targets: Arc<Mutex<HashMap<i32, PathBuf>>>,
    /// Paths removed since the last arming: inotify dropped their watches
    /// (and a new file there may reuse the inode number).
    gone: Arc<Mutex<Vec<PathBuf>>>,
    /// `fs.inotify.max_user_watches` under the host root, read to explain
    /// ENOSPC.
    limit_file: PathBuf,
}

/// One read(2) of inotify's events buffer: 64 events with short names.
const EVENT_BUFFER: usize = 4096;

impl InotifyWatcher {
    /// `limit_file` is `fs.inotify.max_user_watches` under the host root,
    /// read to explain a watch the kernel refuses for want of watches.
    pub fn start(
        events: mpsc::Sender<WatchEvent>,
        overflow: Arc<AtomicBool>,
        limit_file: PathBuf,
    ) -> std::io::Result<InotifyWatcher> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let targets: Arc<Mutex<HashMap<i32, PathBuf>>> = Arc::default();
        let gone: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let (targets_r, gone_r) = (Arc::clone(&targets), Arc::clone(&gone));
        std::thread::Builder::new()
            .name("holdfast-inotify".into())
            .spawn(move || {
                let mut buffer = [0u8; EVENT_BUFFER];
                loop {
                    let read = match inotify.read_events_blocking(&mut buffer) {
                        Ok(read) => read,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!("inotify: {e}; only the rescan sees changes now");
                            overflow.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    // One message per read and kind, each path once: a write
                    // fires IN_MODIFY and IN_CLOSE_WRITE together.
                    let mut changed: Vec<PathBuf> = Vec::new();
                    let mut removed: Vec<PathBuf> = Vec::new();
                    {
                        let targets = lock(&targets_r);
                        for event in read {
                            if event.mask.contains(EventMask::Q_OVERFLOW) {
                                overflow.store(true, Ordering::SeqCst);
                                continue;
                            }
                            let Some(gone) = relevant(event.mask) else {
                                continue;
                            };
                            let Some(base) = targets.get(&event.wd.get_watch_descriptor_id())
                            else {
                                continue;
                            };
                            let path = match event.name {
                                Some(name) => base.join(name),
                                None => base.clone(),
                            };
                            let list = if gone { &mut removed } else { &mut changed };
                            if !list.contains(&path) {
                                list.push(path);
                            }
                        }
                    }
                    lock(&gone_r).extend(removed.iter().cloned());
                    for (paths, removed) in [(changed, false), (removed, true)] {
                        if paths.is_empty() {
                            continue;
                        }
                        match events.try_send(WatchEvent { paths, removed }) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                overflow.store(true, Ordering::SeqCst);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                }
            })?;
        Ok(InotifyWatcher {
            watches,
            armed: HashMap::new(),
            targets,
            gone,
            limit_file,
        })
    }

    fn unwatch(&mut self, path: &Path) {
        if let Some((_, wd)) = self.armed.remove(path) {
            lock(&self.targets).remove(&wd.get_watch_descriptor_id());
            // The watch may already be gone with its file.
            let _ = self.watches.remove(wd);
        }
    }
}

/// The lists behind these locks stay valid whatever a panicking holder did.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Arm for InotifyWatcher {
    fn arm(&mut self, specs: &[WatchSpec]) -> ArmReport {
        let mut report = ArmReport::default();
        for path in std::mem::take(&mut *lock(&self.gone)) {
            if let Some((_, wd)) = self.armed.remove(&path) {
                lock(&self.targets).remove(&wd.get_watch_descriptor_id());
            }
        }
        // In the specs' order, which puts the policy's sources first: when
        // the kernel runs out of watches, what goes without is the tail.
        let mut wanted: Vec<(PathBuf, bool)> = Vec::new();
        let mut seen: HashSet<PathBuf> = HashSet::new();
        for spec in specs {
            match watch_target(spec) {
                Some(target) => {
                    if target != spec.path {
                        report.missing += 1;
                    }
                    let policy = spec.concern == Concern::Policy;
                    if seen.insert(target.clone()) {
                        wanted.push((target, policy));
                    } else if policy && let Some(w) = wanted.iter_mut().find(|(p, _)| *p == target)
                    {
                        w.1 = true;
                    }
                }
                None => report.missing += 1,
            }
        }
        let stale: Vec<PathBuf> = self
            .armed
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for path in stale {
            self.unwatch(&path);
        }
        let mut limit_explained = false;
        for (path, policy) in wanted {
            let Ok(meta) = std::fs::metadata(&path) else {
                report.missing += 1;
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if self.armed.get(&path).is_some_and(|(armed, _)| *armed == id) {
                report.watched += 1;
                continue;
            }
            self.unwatch(&path);
            let mask = if meta.is_dir() { DIR_MASK } else { FILE_MASK };
            match self.watches.add(&path, mask) {
                Ok(wd) => {
                    lock(&self.targets).insert(wd.get_watch_descriptor_id(), path.clone());
                    self.armed.insert(path, (id, wd));
                    report.watched += 1;
                }
                Err(e) => {
                    report.policy_unwatched |= policy;
                    let refusal = if e.raw_os_error() == Some(libc::ENOSPC) {
                        Refusal::NoWatchLeft(read_limit(&self.limit_file))
                    } else {
                        Refusal::Other
                    };
                    report
                        .errors
                        .push(watch_error(&path, &e, refusal, &mut limit_explained));
                }
            }
        }
        report
    }
}

/// Why the kernel refused a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// ENOSPC: no watch left under `fs.inotify.max_user_watches` (the limit,
    /// when it could be read).
    NoWatchLeft(Option<u64>),
    Other,
}

/// The kernel's watch limit, when it can be read.
fn read_limit(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// A watch the kernel refused, said so that the operator knows what to do.
/// ENOSPC is inotify's "no watch left" (`fs.inotify.max_user_watches`,
/// counted over every program of the same user), not a full disk: the first
/// such error names the limit and how to raise it, the others point to it.
fn watch_error(path: &Path, e: &std::io::Error, refusal: Refusal, explained: &mut bool) -> String {
    let path = path.display();
    match refusal {
        Refusal::Other => format!("watch {path}: {e}; changes there are seen only by the rescan"),
        Refusal::NoWatchLeft(_) if *explained => format!(
            "watch {path}: no inotify watch left (see the first such error); changes there are seen only by the rescan"
        ),
        Refusal::NoWatchLeft(limit) => {
            *explained = true;
            let now =
                limit.map_or_else(|| "its limit".to_string(), |n| format!("its limit of {n}"));
            let raise = limit.map_or(524_288, |n| (n * 2).max(524_288));
            format!(
                "watch {path}: no inotify watch left: this user's programs hold {now} (fs.inotify.max_user_watches); \
                 raise it, e.g. `sysctl -w fs.inotify.max_user_watches={raise}` and the same line in a file of /etc/sysctl.d; \
                 until then changes there are seen only by the rescan"
            )
        }
    }
}

/// No inotify (it could not be initialised): the rescan does all the work.
#[derive(Debug, Default)]
pub struct NoWatcher;

impl Arm for NoWatcher {
    fn arm(&mut self, specs: &[WatchSpec]) -> ArmReport {
        ArmReport {
            watched: 0,
            missing: 0,
            errors: vec![format!(
                "inotify is not available: {} paths are checked only by the periodic rescan",
                specs.len()
            )],
            policy_unwatched: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_refused_for_want_of_watches_names_the_limit_once() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let mut explained = false;
        let first = watch_error(
            Path::new("/etc/holdfast/policy.d"),
            &enospc,
            Refusal::NoWatchLeft(Some(8192)),
            &mut explained,
        );
        assert!(first.contains("no inotify watch left"), "{first}");
        assert!(
            first.contains("its limit of 8192 (fs.inotify.max_user_watches)"),
            "{first}"
        );
        assert!(
            first.contains("sysctl -w fs.inotify.max_user_watches=524288"),
            "{first}"
        );
        assert!(!first.contains("No space left on device"), "{first}");
        let next = watch_error(
            Path::new("/proc/sys/net/core/somaxconn"),
            &enospc,
            Refusal::NoWatchLeft(Some(8192)),
            &mut explained,
        );
        assert!(
            next.contains("/proc/sys/net/core/somaxconn: no inotify watch left (see the first"),
            "{next}"
        );
        // A large limit is doubled; an unreadable one is not invented.
        let mut fresh = false;
        let big = watch_error(
            Path::new("/x"),
            &enospc,
            Refusal::NoWatchLeft(Some(1_000_000)),
            &mut fresh,
        );
        assert!(big.contains("max_user_watches=2000000"), "{big}");
        let mut fresh = false;
        let unknown = watch_error(
            Path::new("/x"),
            &enospc,
            Refusal::NoWatchLeft(None),
            &mut fresh,
        );
        assert!(unknown.contains("hold its limit (fs.inotify"), "{unknown}");
        let other = watch_error(
            Path::new("/x"),
            &std::io::Error::from_raw_os_error(libc::EACCES),
            Refusal::Other,
            &mut fresh,
        );
        assert!(other.starts_with("watch /x: Permission denied"), "{other}");
    }
    use crate::sysctl::SysctlKey;

    fn policy(text: &str) -> Policy {
        Policy::from_files([("p.yaml", text)]).unwrap()
    }

    #[test]
    fn plan_watches_keys_boot_config_limits_and_the_policy_dir() {
        let host = HostRoot::new("/r");
        let p = policy(
            "version: 1\nsysctl:\n  net.core.somaxconn: 4096\nlimits:\n  - {domain: \"*\", item: nofile, soft: 1024, hard: 1024}\n",
        );
        let sources = PolicySource::classify(&host, &[]);
        let specs = plan(&host, Some(&p), &sources);
        let paths: Vec<String> = specs.iter().map(|s| s.path.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/r/etc/holdfast/policy.d",
                "/r/proc/sys/net/core/somaxconn",
                "/r/etc/sysctl.d",
                "/r/run/sysctl.d",
                "/r/usr/local/lib/sysctl.d",
                "/r/usr/lib/sysctl.d",
                "/r/lib/sysctl.d",
                "/r/etc/sysctl.conf",
                "/r/etc/security/limits.conf",
                "/r/etc/security/limits.d",
            ]
        );
        // No policy in force: only the policy sources.
        assert_eq!(plan(&host, None, &sources).len(), 1);
    }

    #[test]
    fn unit_files_and_holdfasts_own_cgroup_files_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let p = policy(
            "version: 1\nservices:\n  a.service: {limit_nofile: 1024}\nservice_defaults: {limit_nofile: 1024}\ncgroup:\n  slices:\n    batch: {pids.max: 10}\n",
        );
        let specs = plan(&host, Some(&p), &[]);
        let rel = |s: &WatchSpec| {
            s.path
                .strip_prefix(dir.path())
                .unwrap()
                .display()
                .to_string()
        };
        let with = |concern: Concern| -> Vec<String> {
            specs
                .iter()
                .filter(|s| s.concern == concern)
                .map(rel)
                .collect()
        };
        assert_eq!(
            with(Concern::Files),
            [
                "etc/systemd/system.conf.d",
                "sys/fs/cgroup/holdfast.slice/batch/memory.high",
                "sys/fs/cgroup/holdfast.slice/batch/memory.max",
                "sys/fs/cgroup/holdfast.slice/batch/cpu.max",
                "sys/fs/cgroup/holdfast.slice/batch/pids.max",
            ]
        );
        // A unit's own files concern that unit: a pass over it alone.
        assert_eq!(
            with(Concern::Unit("a.service".into())),
            ["etc/systemd/system/a.service.d"]
        );
        assert_eq!(
            with(Concern::Unit("batch.slice".into())),
            [
                "etc/systemd/system",
                "run/systemd/system.control/batch.slice.d"
            ]
        );
        let map = WatchMap::new(specs);
        let c = |p: &str| map.concerns(&dir.path().join(p));
        assert_eq!(
            c("etc/systemd/system/batch.slice"),
            [Concern::Unit("batch.slice".into())]
        );
        assert!(c("etc/systemd/system/other.slice").is_empty());
        assert_eq!(
            c("run/systemd/system.control/batch.slice.d/50-MemoryMax.conf"),
            [Concern::Unit("batch.slice".into())]
        );
        assert_eq!(
            c("etc/systemd/system/a.service.d/99-site.conf"),
            [Concern::Unit("a.service".into())]
        );
    }

    /// Under systemd, a raw write to a policy slice's limit file in the
    /// kernel is a pass over that slice (systemd 257's daemon-reload no
    /// longer writes the file back, so nothing else would notice it).
    #[test]
    fn under_systemd_a_slices_kernel_files_concern_the_slice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
        let host = HostRoot::new(dir.path());
        let p = policy("version: 1\ncgroup:\n  slices:\n    go-app: {memory.max: 1G}\n");
        let map = WatchMap::new(plan(&host, Some(&p), &[]));
        let c = |p: &str| map.concerns(&dir.path().join(p));
        let slice = [Concern::Unit("go-app.slice".into())];
        assert_eq!(c("sys/fs/cgroup/go.slice/go-app.slice/memory.max"), slice);
        assert_eq!(c("sys/fs/cgroup/go.slice/go-app.slice/pids.max"), slice);
        // holdfast's own subtree is not where systemd puts the slice.
        assert!(c("sys/fs/cgroup/holdfast.slice/go-app/memory.max").is_empty());
        assert!(map.specs().iter().all(|s| s.concern != Concern::Files
            || !s.path.starts_with(dir.path().join("sys/fs/cgroup"))));
    }

    #[test]
    fn events_map_to_what_they_concern() {
        let host = HostRoot::new("/r");
        let p = policy("version: 1\nsysctl:\n  net.core.somaxconn: 4096\n");
        let sources = [
            PolicySource::Default(host.policy_dir()),
            PolicySource::File(PathBuf::from("/cm/extra.yaml")),
        ];
        let map = WatchMap::new(plan(&host, Some(&p), &sources));
        let c = |p: &str| map.concerns(Path::new(p));
        assert_eq!(
            c("/r/proc/sys/net/core/somaxconn"),
            [Concern::Sysctl(
                SysctlKey::parse("net.core.somaxconn").unwrap()
            )]
        );
        assert_eq!(c("/r/etc/sysctl.d/10-k8s.conf"), [Concern::Files]);
        assert_eq!(c("/r/etc/sysctl.conf"), [Concern::Files]);
        assert!(c("/r/etc/sysctl.d/.99-zz-holdfast.conf.holdfast-tmp").is_empty());
        assert!(c("/r/etc/sysctl.d/README").is_empty());
        assert_eq!(
            c("/r/etc/holdfast/policy.d/10-base.yaml"),
            [Concern::Policy]
        );
        assert_eq!(c("/r/etc/holdfast/policy.d"), [Concern::Policy]);
        // The policy directory does not exist yet: its ancestors' events count.
        assert_eq!(c("/r/etc/holdfast"), [Concern::Policy]);
        assert!(c("/r/etc/passwd").is_empty());
        assert_eq!(c("/cm/extra.yaml"), [Concern::Policy]);
        assert!(c("/cm/other.yaml").is_empty());
    }

    #[test]
    fn only_changes_are_relevant_not_opens_or_reads() {
        assert_eq!(relevant(EventMask::OPEN), None);
        assert_eq!(relevant(EventMask::ACCESS), None);
        assert_eq!(relevant(EventMask::CLOSE_NOWRITE), None);
        assert_eq!(relevant(EventMask::ATTRIB), None);
        assert_eq!(relevant(EventMask::CLOSE_WRITE), Some(false));
        assert_eq!(relevant(EventMask::MODIFY), Some(false));
        assert_eq!(relevant(EventMask::CREATE), Some(false));
        assert_eq!(relevant(EventMask::MOVED_TO), Some(false));
        assert_eq!(relevant(EventMask::DELETE), Some(true));
        assert_eq!(relevant(EventMask::MOVED_FROM), Some(true));
        assert_eq!(relevant(EventMask::DELETE_SELF), Some(true));
        assert_eq!(relevant(EventMask::IGNORED), Some(true));
        // The kernel is never asked for opens or reads.
        for mask in [FILE_MASK, DIR_MASK] {
            assert!(
                !mask.intersects(WatchMask::OPEN | WatchMask::ACCESS | WatchMask::CLOSE_NOWRITE)
            );
        }
    }

    async fn next_change(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
        loop {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("an inotify event within 5 s")
                .expect("channel open");
            if !ev.removed {
                return ev;
            }
        }
    }

    #[tokio::test]
    async fn notify_watcher_sees_writes_and_rearms_replaced_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("somaxconn");
        std::fs::write(&file, "128\n").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let overflow = Arc::new(AtomicBool::new(false));
        let mut w =
            InotifyWatcher::start(tx, overflow, dir.path().join("max_user_watches")).unwrap();
        let specs = vec![
            WatchSpec {
                path: file.clone(),
                scope: Scope::File,
                concern: Concern::Files,
                follow_creation: false,
            },
            WatchSpec {
                path: dir.path().join("missing"),
                scope: Scope::File,
                concern: Concern::Files,
                follow_creation: false,
            },
        ];
        let r = w.arm(&specs);
        assert_eq!((r.watched, r.missing), (1, 1), "{r:?}");
        // Reading is not an event the loop sees: nothing arrives.
        for _ in 0..100 {
            let _ = std::fs::read_to_string(&file).unwrap();
        }
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), rx.recv()).await;
        assert!(quiet.is_err(), "reads woke the watcher: {quiet:?}");
        std::fs::write(&file, "4096\n").unwrap();
        let ev = next_change(&mut rx).await;
        assert_eq!(ev.paths, std::slice::from_ref(&file));

        // Replaced by a new file: the next arming watches the new file.
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        std::fs::write(&file, "1\n").unwrap();
        let r = w.arm(&specs);
        assert_eq!(r.watched, 1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        std::fs::write(&file, "2\n").unwrap();
        let ev = next_change(&mut rx).await;
        assert_eq!(ev.paths, [file]);
    }
}
