//! The originals journal on the host: `var/lib/holdfast/originals.json`
//! under the root, read and replaced through [`HostRoot`].
//!
//! # Why one file replaced atomically
//! The journal changes rarely: once per setting in the host's life (the
//! first change; later passes find the entry and write nothing), and when
//! a rollback takes entries out. A pass records every new original of a
//! stage in one replace ([`HostRoot::write_atomic`]: temp file, fsync,
//! rename, fsync of the directory) before the stage's first write, so a
//! first apply of a few hundred keys costs a handful of replaces, not one
//! per key. Readers see the old or the new journal, never a torn one, and
//! rollback's removal of entries is the same operation; an append-only log
//! would need record checksums, torn-tail recovery and compaction to get
//! the same. The whole file still carries a checksum (see [`super`]).
//!
//! # Guarantees
//! - An original is durable (fsynced) before the write it precedes: a
//!   writer killed at any moment leaves every changed setting with its
//!   original in the journal.
//! - When an original cannot be read or the journal cannot be written, the
//!   change is not made: the caller gets the reason for that item.
//!
//! # Assumptions
//! The caller holds the writer lock (as for every write).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Entry, Journal, Original, ParseError, Target, target_of};
use crate::cgroup::knob::KnobKind;
use crate::cgroup::plan::{CgroupHost, slice_unit};
use crate::host::{HostRoot, IoError};
use crate::item::{Action, ItemKey};
use crate::sysctl::Observed;

/// The journal holds copies of configuration files: root only.
const JOURNAL_MODE: u32 = 0o600;

/// Why the journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// Reads the journal; a host without one has an empty journal.
pub fn load(host: &HostRoot) -> Result<Journal, LoadError> {
    let path = host.journal_file();
    match crate::host::read_optional(&path)? {
        None => Ok(Journal::default()),
        Some(text) => Journal::parse(&text).map_err(|source| LoadError::Parse { path, source }),
    }
}

/// Replaces the journal (removes it once empty: nothing is left to undo).
pub fn save(host: &HostRoot, journal: &Journal) -> Result<(), IoError> {
    let mut generation = lock_generation();
    save_locked(host, journal, &mut generation)
}

/// [`save`] with the process's journal lock held: every replace made by
/// this process is a new generation.
fn save_locked(host: &HostRoot, journal: &Journal, generation: &mut u64) -> Result<(), IoError> {
    *generation += 1;
    let path = host.journal_file();
    if journal.is_empty() {
        return host.remove_file(&path);
    }
    host.write_atomic(&path, &journal.render(), JOURNAL_MODE)
}

/// How many times this process replaced the journal, behind the lock that
/// serializes its read-modify-replace cycles: the daemon's lanes (a key
/// pass while a unit pass waits on systemd) each record originals, and
/// neither may replace the journal with a copy that lacks the other's.
/// Other processes are kept out by the writer lock.
static GENERATION: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

fn lock_generation() -> std::sync::MutexGuard<'static, u64> {
    GENERATION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A sysctl's original, from what the pass read before writing.
pub fn sysctl_original(observed: &Observed) -> Original {
    match observed {
        Observed::Value(v) => Original::Value(v.canonical()),
        Observed::Absent => Original::Absent,
        Observed::Unreadable(why) | Observed::Failed(why) => Original::Unreadable(why.clone()),
    }
}

/// A slice knob's original, from the cgroup area's reading before the pass
/// (the knob's file in the slice's cgroup, as systemd realized it).
pub fn slice_knob_original(cgroup: &CgroupHost, unit: &str, knob: KnobKind) -> Original {
    cgroup
        .slices
        .iter()
        .find(|(name, _)| slice_unit(name) == unit)
        .and_then(|(_, obs)| obs.kernel.get(&knob))
        .map_or_else(
            || Original::Unreadable(format!("{} was not read before the change", knob.file())),
            |text| Original::Value(text.trim().to_string()),
        )
}

/// A file's content and mode, or its absence. A file that is not UTF-8 or
/// not a regular file cannot be journaled, so it is not replaced.
pub fn file_original(path: &Path) -> Result<Original, IoError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Original::Absent),
        Err(e) => return Err(IoError::new("stat", path, e)),
    };
    if !meta.file_type().is_file() {
        return Err(IoError::new(
            "journal the original of",
            path,
            io::Error::other("not a regular file (a link or directory is in its place)"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| IoError::new("read", path, e))?;
    let content = String::from_utf8(bytes).map_err(|_| {
        IoError::new(
            "journal the original of",
            path,
            io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"),
        )
    })?;
    Ok(Original::File {
        content,
        mode: meta.permissions().mode() & 0o7777,
    })
}

/// A kernel file's value (a cgroupfs limit), or its absence.
fn kernel_file_original(path: &Path) -> Result<Original, IoError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Original::Value(text.trim_end().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Original::Absent),
        Err(e) => Err(IoError::new("read", path, e)),
    }
}

/// Whether a controller was enabled in a `cgroup.subtree_control`.
fn controller_original(path: &Path, controller: &str) -> Result<Original, IoError> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::new("read", path, e))?;
    Ok(if text.split_whitespace().any(|c| c == controller) {
        Original::Value("enabled".to_string())
    } else {
        Original::Absent
    })
}

/// One change a stage is about to make.
pub struct Change<'a> {
    pub key: &'a ItemKey,
    pub action: &'a Action,
    /// The original when the pass already read it (sysctls, slice knobs);
    /// otherwise it is read here, from the host.
    pub known: Option<Original>,
}

/// The journal file's identity and version: inode, size and modification
/// time (`None`: no file). Every replace is a new inode.
type Stamp = Option<(u64, u64, i64, i64)>;

/// A copy of the journal is current when the file is the one it was read
/// from (or written as) and this process has not replaced it since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    stamp: Stamp,
    generation: u64,
}

fn stamp_of(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The journal a pass of this process left, with its file's path and
/// stamp. The next pass takes it when the file is still that one, so that
/// a daemon's key pass does not parse a journal of thousands of entries to
/// learn that its key already has one.
struct Kept {
    path: PathBuf,
    version: Version,
    journal: Journal,
}

static KEPT: std::sync::Mutex<Option<Kept>> = std::sync::Mutex::new(None);

/// The journal, from what the last pass kept when its file has not changed
/// since, else read; with the version it is. The caller holds the
/// journal lock (`generation`).
fn take_or_load(host: &HostRoot, generation: u64) -> Result<(Journal, Version), LoadError> {
    let path = host.journal_file();
    let version = Version {
        stamp: stamp_of(&path),
        generation,
    };
    let kept = KEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match kept {
        Some(k) if k.path == path && k.version == version => Ok((k.journal, version)),
        _ => Ok((load(host)?, version)),
    }
}

/// The journal of one pass: read on first use (or taken from the last
/// pass, see [`Kept`]), replaced once per batch of new originals, and kept
/// for the next pass when it is as the file has it.
pub struct Recorder<'a> {
    host: &'a HostRoot,
    /// The journal as of the version it was read or written as.
    journal: Option<(Journal, Version)>,
    /// A replace failed: what the file holds is not known.
    unsure: bool,
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        let Some((journal, version)) = self.journal.take() else {
            return;
        };
        if self.unsure {
            return;
        }
        *KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Kept {
            path: self.host.journal_file(),
            version,
            journal,
        });
    }
}

impl<'a> Recorder<'a> {
    pub fn new(host: &'a HostRoot) -> Recorder<'a> {
        Recorder {
            host,
            journal: None,
            unsure: false,
        }
    }

    /// The journal as the file has it now: the copy held, unless someone
    /// replaced the file since (another pass of this process), then read
    /// again. The caller holds the journal lock (`generation`).
    fn loaded(&mut self, generation: u64) -> Result<&mut Journal, String> {
        let stamp = stamp_of(&self.host.journal_file());
        let current = Version { stamp, generation };
        if self.journal.as_ref().is_some_and(|(_, v)| *v != current) {
            self.journal = None;
        }
        if self.journal.is_none() {
            let j = take_or_load(self.host, generation)
                .map_err(|e| format!("not changed: the originals journal cannot be read ({e})"))?;
            self.journal = Some(j);
        }
        // Set just above when it was not.
        self.journal
            .as_mut()
            .map(|(j, _)| j)
            .ok_or_else(|| "the originals journal is not loaded".to_string())
    }

    /// Records the originals of `changes` that have none yet, in one durable
    /// replace of the journal, before the caller makes them. One result per
    /// change, in order: `Err` means the change must not be made, and says
    /// why.
    pub fn before(&mut self, changes: &[Change<'_>]) -> Vec<Result<(), String>> {
        let root = self.host.root().to_path_buf();
        let host = self.host;
        let mut generation = lock_generation();
        let journal = match self.loaded(*generation) {
            Ok(j) => j,
            Err(why) => return changes.iter().map(|_| Err(why.clone())).collect(),
        };
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(changes.len());
        let mut added: BTreeMap<Target, usize> = BTreeMap::new();
        for (i, c) in changes.iter().enumerate() {
            // A path outside the root: the write itself is refused.
            let Some(target) = target_of(c.key, c.action, &root) else {
                results.push(Ok(()));
                continue;
            };
            if journal.contains(&target) {
                results.push(Ok(()));
                continue;
            }
            let original = match &c.known {
                Some(o) => Ok(o.clone()),
                None => read_original(host, &target),
            };
            match original {
                Ok(original) => {
                    journal.record(Entry {
                        target: target.clone(),
                        kind: c.key.kind(),
                        item: c.key.to_string(),
                        original,
                    });
                    added.insert(target, i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(format!(
                    "not changed: its original could not be journaled: {e}"
                ))),
            }
        }
        if added.is_empty() {
            return results;
        }
        let saved = save_locked(host, journal, &mut generation);
        if let Some((_, version)) = &mut self.journal {
            *version = Version {
                stamp: stamp_of(&host.journal_file()),
                generation: *generation,
            };
        }
        if let Err(e) = saved {
            let why = format!("not changed: the originals journal cannot be written ({e})");
            if let Some((journal, _)) = &mut self.journal {
                for (target, i) in added {
                    journal.remove(&target);
                    results[i] = Err(why.clone());
                }
            }
            self.unsure = true;
        }
        results
    }

    /// [`Recorder::before`] for one change.
    pub fn before_one(&mut self, change: &Change<'_>) -> Result<(), String> {
        self.before(std::slice::from_ref(change))
            .pop()
            .unwrap_or(Ok(()))
    }
}

/// Reads what is there now, for a target the pass has not read itself.
fn read_original(host: &HostRoot, target: &Target) -> Result<Original, IoError> {
    let abs = |p: &Path| host.root().join(p);
    match target {
        Target::File(p) => file_original(&abs(p)),
        Target::CgroupFile(p) => kernel_file_original(&abs(p)),
        Target::CgroupDir(p) => Ok(if abs(p).is_dir() {
            Original::Value("exists".to_string())
        } else {
            Original::Absent
        }),
        Target::Controller {
            subtree_control,
            controller,
        } => controller_original(&abs(subtree_control), controller),
        // A slice holdfast starts was not active (that is why it starts it).
        Target::UnitActive { .. } => Ok(Original::Absent),
        Target::Sysctl(k) => Ok(sysctl_original(&crate::sysctl::observe::read_key(host, k))),
        Target::UnitProperty { knob, .. } => Ok(Original::Unreadable(format!(
            "{} was not read before the change",
            knob.file()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysctl::{SysctlKey, SysctlValue};

    fn change(key: &SysctlKey) -> (ItemKey, Action) {
        (
            ItemKey::Sysctl(key.clone()),
            Action::WriteSysctl {
                key: key.clone(),
                value: SysctlValue::from_int(1),
            },
        )
    }

    #[test]
    fn two_recorders_of_one_process_keep_each_others_originals() {
        // The daemon's key lane and unit lane each hold a recorder, and each
        // read the journal before the other replaced it.
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let keys: Vec<SysctlKey> = [
            "net.ipv4.ip_forward",
            "kernel.kptr_restrict",
            "vm.swappiness",
        ]
        .iter()
        .map(|k| SysctlKey::parse(k).unwrap())
        .collect();
        let changes: Vec<(ItemKey, Action)> = keys.iter().map(change).collect();
        let record = |r: &mut Recorder<'_>, i: usize, original: &str| {
            r.before_one(&Change {
                key: &changes[i].0,
                action: &changes[i].1,
                known: Some(Original::Value(original.to_string())),
            })
        };
        let mut first = Recorder::new(&host);
        let mut second = Recorder::new(&host);
        assert_eq!(record(&mut first, 1, "0"), Ok(()));
        assert_eq!(record(&mut second, 2, "60"), Ok(()));
        // `first` holds a copy without the second's entry: it must not
        // replace the journal with it.
        assert_eq!(record(&mut first, 0, "0"), Ok(()));
        assert_eq!(record(&mut second, 0, "1"), Ok(()), "already journalled");
        drop((first, second));
        let journal = load(&host).unwrap();
        assert_eq!(journal.len(), 3, "{journal:?}");
        assert_eq!(
            journal
                .get(&Target::Sysctl(keys[0].clone()))
                .unwrap()
                .original,
            Original::Value("0".into()),
            "the first original recorded stays"
        );
        assert_eq!(
            journal
                .get(&Target::Sysctl(keys[2].clone()))
                .unwrap()
                .original,
            Original::Value("60".into())
        );
    }
}
