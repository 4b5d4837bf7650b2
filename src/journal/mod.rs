//! The originals journal, pure: what a setting was before holdfast first
//! changed it, so that `holdfast rollback` can put it back.
//!
//! An entry names the host object a write touches ([`Target`], derived from
//! the item's typed [`ItemKey`] and its [`Action`] by [`target_of`]), the
//! item it was written for, and what was there ([`Original`]): a value, a
//! file's content and mode, or nothing. **The first change wins**:
//! [`Journal::record`] never replaces an entry, so a later pass with other
//! values (a new policy) keeps the value the host had before holdfast.
//!
//! The journal file's format is rendered and parsed here ([`Journal::render`],
//! [`Journal::parse`]); reading and writing it crash-safely is
//! [`store`]'s job.
//!
//! # Format
//! One JSON document (`format`, `version`, `entries`) followed by a last
//! line `# sha256 HEX`, the SHA-256 of everything before that line. The file
//! is only ever replaced atomically, so a torn file cannot be seen; the
//! checksum catches what atomic replacement cannot (a disk that lies, an
//! edit by hand).

pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::knob::KnobKind;
use crate::item::{Action, ItemKey, Kind};
use crate::policy::sha256_hex;
use crate::sysctl::SysctlKey;

/// The journal's format version; a file of another version is refused.
pub const VERSION: u32 = 1;
const FORMAT: &str = "holdfast-originals";
const CHECKSUM_PREFIX: &str = "# sha256 ";

/// The host object a change touches. Paths are relative to the host root,
/// so the journal reads the same whichever root it is opened under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A runtime value in /proc/sys.
    Sysctl(SysctlKey),
    /// A file holdfast creates, replaces or removes (its sysctl.d and
    /// limits.d files, drop-ins, slice units, `system.conf.d`).
    File(PathBuf),
    /// A unit property set at runtime (`SetUnitProperties(runtime=true)`):
    /// one slice knob.
    UnitProperty { unit: String, knob: KnobKind },
    /// A unit holdfast started (a slice).
    UnitActive { unit: String },
    /// A cgroup directory holdfast created (no systemd).
    CgroupDir(PathBuf),
    /// A cgroupfs file holdfast wrote (no systemd).
    CgroupFile(PathBuf),
    /// A controller holdfast enabled in a `cgroup.subtree_control`.
    Controller {
        subtree_control: PathBuf,
        controller: String,
    },
}

impl Target {
    /// The kind word selectors and reports use for this object.
    pub fn as_str(&self) -> &'static str {
        match self {
            Target::Sysctl(_) => "sysctl",
            Target::File(_) => "file",
            Target::UnitProperty { .. } => "unit-property",
            Target::UnitActive { .. } => "unit-active",
            Target::CgroupDir(_) => "cgroup-dir",
            Target::CgroupFile(_) => "cgroup-file",
            Target::Controller { .. } => "controller",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Sysctl(k) => write!(f, "{k}"),
            Target::File(p) | Target::CgroupDir(p) | Target::CgroupFile(p) => {
                write!(f, "/{}", p.display())
            }
            Target::UnitProperty { unit, knob } => write!(f, "{unit} {} (runtime)", knob.file()),
            Target::UnitActive { unit } => write!(f, "{unit} active"),
            Target::Controller {
                subtree_control,
                controller,
            } => write!(f, "+{controller} in /{}", subtree_control.display()),
        }
    }
}

/// What was there before holdfast first changed a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Original {
    /// Nothing: no file, no cgroup, a unit not active, a controller not
    /// enabled.
    Absent,
    /// A value: a sysctl as the kernel printed it (canonical form), a
    /// cgroupfs file's content, a slice knob as its cgroup file read,
    /// `enabled` for a controller.
    Value(String),
    /// A file's content and permission bits.
    File { content: String, mode: u32 },
    /// It could not be read (a write-only sysctl such as
    /// `vm.drop_caches`); rollback cannot restore it and says so.
    Unreadable(String),
}

impl Original {
    /// A one-line summary for reports: a value as it is, a file by size,
    /// mode and hash.
    pub fn summary(&self) -> String {
        match self {
            Original::Absent => "absent".to_string(),
            Original::Value(v) => v.clone(),
            Original::File { content, mode } => format!(
                "file of {} bytes, mode {mode:04o}, sha256 {}",
                content.len(),
                sha256_hex(content)
            ),
            Original::Unreadable(why) => format!("unreadable ({why})"),
        }
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    /// The kind of the item the change was made for.
    pub kind: Kind,
    /// The item's key as reports show it (`ItemKey`'s `Display`): how
    /// reports and selectors find the entry; never parsed back.
    pub item: String,
    pub original: Original,
}

/// Why a journal file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the last line is not `# sha256 HEX`: the file is truncated or not a journal")]
    NoChecksum,
    #[error("the checksum does not match the content: the file is corrupt")]
    BadChecksum,
    #[error("not a journal of this format: {0}")]
    Json(String),
    #[error("version {0}; this holdfast reads version {VERSION}")]
    Version(u32),
    #[error("entry {index}: {why}")]
    Entry { index: usize, why: String },
}

/// The journal: one entry per target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    entries: BTreeMap<Target, Entry>,
    /// Each item's first target (in target order), so that a report of N
    /// items finds their originals in N lookups, not N scans.
    by_item: HashMap<String, Target>,
}

impl Journal {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn get(&self, target: &Target) -> Option<&Entry> {
        self.entries.get(target)
    }

    pub fn contains(&self, target: &Target) -> bool {
        self.entries.contains_key(target)
    }

    /// Records an original unless the target already has one: the first
    /// change wins. Returns whether the entry was added.
    pub fn record(&mut self, entry: Entry) -> bool {
        if self.entries.contains_key(&entry.target) {
            return false;
        }
        match self.by_item.get_mut(&entry.item) {
            Some(first) if *first <= entry.target => {}
            Some(first) => first.clone_from(&entry.target),
            None => {
                self.by_item
                    .insert(entry.item.clone(), entry.target.clone());
            }
        }
        self.entries.insert(entry.target.clone(), entry);
        true
    }

    /// Takes an entry out (it was rolled back).
    pub fn remove(&mut self, target: &Target) -> Option<Entry> {
        let removed = self.entries.remove(target)?;
        if self.by_item.get(&removed.item) == Some(target) {
            // The item's next target, if it has another (rare: rollback).
            match self.entries.values().find(|e| e.item == removed.item) {
                Some(next) => {
                    self.by_item
                        .insert(removed.item.clone(), next.target.clone());
                }
                None => {
                    self.by_item.remove(&removed.item);
                }
            }
        }
        Some(removed)
    }

    /// The original recorded for an item, by its key (its first target's,
    /// when it has several).
    pub fn original_of(&self, key: &ItemKey) -> Option<&Entry> {
        self.entries.get(self.by_item.get(&key.to_string())?)
    }

    /// The entries a rollback selects: all with no selector, else those any
    /// selector matches.
    pub fn select(&self, selectors: &[Selector]) -> Vec<&Entry> {
        self.entries
            .values()
            .filter(|e| selectors.is_empty() || selectors.iter().any(|s| s.matches(e)))
            .collect()
    }

    pub fn render(&self) -> String {
        let doc = FileJson {
            format: FORMAT.to_string(),
            version: VERSION,
            entries: self.entries.values().map(EntryJson::from).collect(),
        };
        // Serializing plain strings, numbers and maps cannot fail.
        let mut body = serde_json::to_string_pretty(&doc).unwrap_or_default();
        body.push('\n');
        let sum = sha256_hex(&body);
        format!("{body}{CHECKSUM_PREFIX}{sum}\n")
    }

    pub fn parse(text: &str) -> Result<Journal, ParseError> {
        let trimmed = text.strip_suffix('\n').ok_or(ParseError::NoChecksum)?;
        let cut = trimmed.rfind('\n').map_or(0, |i| i + 1);
        let (body, last) = trimmed.split_at(cut);
        let sum = last
            .strip_prefix(CHECKSUM_PREFIX)
            .ok_or(ParseError::NoChecksum)?;
        if sha256_hex(body) != sum {
            return Err(ParseError::BadChecksum);
        }
        let doc: FileJson =
            serde_json::from_str(body).map_err(|e| ParseError::Json(e.to_string()))?;
        if doc.format != FORMAT {
            return Err(ParseError::Json(format!("format `{}`", doc.format)));
        }
        if doc.version != VERSION {
            return Err(ParseError::Version(doc.version));
        }
        let mut journal = Journal::default();
        for (index, e) in doc.entries.into_iter().enumerate() {
            let entry = e
                .into_entry()
                .map_err(|why| ParseError::Entry { index, why })?;
            if !journal.record(entry) {
                return Err(ParseError::Entry {
                    index,
                    why: "a second entry for the same target".to_string(),
                });
            }
        }
        Ok(journal)
    }
}

/// The host object a write touches, from the item it is written for and
/// the action; `root` is the host root, which paths are taken relative to.
/// `None` for a path outside the root (no write goes there either), and for
/// an unloaded module, which rollback does not load again (whatever needs
/// it does: modprobe, a device, a mount).
pub fn target_of(key: &ItemKey, action: &Action, root: &Path) -> Option<Target> {
    let rel = |p: &Path| p.strip_prefix(root).ok().map(Path::to_path_buf);
    Some(match action {
        Action::WriteSysctl { key, .. } => Target::Sysctl(key.clone()),
        Action::WriteFile { path, .. } | Action::RemoveFile { path } => Target::File(rel(path)?),
        Action::SetUnitProperties { unit, .. } => match key {
            ItemKey::SliceKnob { knob, .. } => Target::UnitProperty {
                unit: unit.clone(),
                knob: *knob,
            },
            // Only slice knobs are set at runtime today; anything else
            // would need its own original.
            _ => return None,
        },
        Action::StartUnit { unit } => Target::UnitActive { unit: unit.clone() },
        Action::CreateCgroup { path } => Target::CgroupDir(rel(path)?),
        Action::WriteCgroupFile { path, .. } => Target::CgroupFile(rel(path)?),
        Action::UnloadModule { .. } => return None,
        Action::EnableController {
            subtree_control,
            controller,
        } => Target::Controller {
            subtree_control: rel(subtree_control)?,
            controller: controller.clone(),
        },
    })
}

/// How rollback puts one entry's original back. Pure: [`restore_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Write the sysctl's original value back (canonical form).
    WriteSysctl { key: SysctlKey, value: String },
    /// Put the file back, content and mode.
    WriteFile {
        path: PathBuf,
        content: String,
        mode: u32,
    },
    /// The file was not there: remove holdfast's.
    RemoveFile(PathBuf),
    /// Set the unit's runtime properties back.
    SetProperties {
        unit: String,
        assignments: Vec<String>,
    },
    /// Write a cgroupfs file's original value back.
    WriteKernelFile { path: PathBuf, value: String },
    /// Remove a cgroup holdfast created.
    RemoveCgroup(PathBuf),
    /// Disable a controller holdfast enabled.
    DisableController {
        subtree_control: PathBuf,
        controller: String,
    },
    /// Stop a unit holdfast started (a slice), once nothing runs in it.
    StopUnit(String),
    /// Nothing on the host to put back (holdfast could not have changed
    /// it: a key the kernel lacked, a controller already enabled); the
    /// entry just leaves the journal.
    Nothing,
    /// Rollback cannot put it back; the entry stays, and the text says
    /// what to do by hand.
    Manual(String),
}

impl fmt::Display for Restore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restore::WriteSysctl { key, value } => write!(f, "write {key} = {value}"),
            Restore::WriteFile { path, mode, .. } => {
                write!(f, "restore /{} (mode {mode:04o})", path.display())
            }
            Restore::RemoveFile(p) => write!(f, "remove /{}", p.display()),
            Restore::SetProperties { unit, assignments } => write!(
                f,
                "systemctl set-property --runtime {unit} {}",
                assignments.join(" ")
            ),
            Restore::WriteKernelFile { path, value } => {
                write!(f, "echo {value} > /{}", path.display())
            }
            Restore::RemoveCgroup(p) => write!(f, "rmdir /{}", p.display()),
            Restore::DisableController {
                subtree_control,
                controller,
            } => write!(f, "echo -{controller} > /{}", subtree_control.display()),
            Restore::StopUnit(unit) => write!(f, "systemctl stop {unit} (once nothing runs in it)"),
            Restore::Nothing => f.write_str("nothing to put back"),
            Restore::Manual(why) => write!(f, "by hand: {why}"),
        }
    }
}

/// How rollback restores an entry.
pub fn restore_of(entry: &Entry) -> Restore {
    match (&entry.target, &entry.original) {
        (_, Original::Unreadable(why)) => Restore::Manual(format!(
            "the original could not be read when holdfast changed it ({why})"
        )),
        (Target::Sysctl(key), Original::Value(v)) => Restore::WriteSysctl {
            key: key.clone(),
            value: v.clone(),
        },
        (Target::Sysctl(_), _) => Restore::Nothing,
        (Target::File(p), Original::File { content, mode }) => Restore::WriteFile {
            path: p.clone(),
            content: content.clone(),
            mode: *mode,
        },
        (Target::File(p), _) => Restore::RemoveFile(p.clone()),
        (Target::UnitProperty { unit, knob }, Original::Value(v)) => match knob.parse_kernel(v) {
            Some(k) => Restore::SetProperties {
                unit: unit.clone(),
                assignments: k.systemd_properties(),
            },
            None => Restore::Manual(format!("`{v}` is not a {} value", knob.file())),
        },
        (Target::UnitProperty { .. }, _) => Restore::Nothing,
        (Target::UnitActive { unit }, Original::Absent) => Restore::StopUnit(unit.clone()),
        (Target::UnitActive { .. }, _) => Restore::Nothing,
        (Target::CgroupFile(p), Original::Value(v)) => Restore::WriteKernelFile {
            path: p.clone(),
            value: v.clone(),
        },
        (Target::CgroupFile(_), _) => Restore::Nothing,
        (Target::CgroupDir(p), Original::Absent) => Restore::RemoveCgroup(p.clone()),
        (Target::CgroupDir(_), _) => Restore::Nothing,
        (
            Target::Controller {
                subtree_control,
                controller,
            },
            Original::Absent,
        ) => Restore::DisableController {
            subtree_control: subtree_control.clone(),
            controller: controller.clone(),
        },
        (Target::Controller { .. }, _) => Restore::Nothing,
    }
}

/// What `holdfast rollback SELECTOR` picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every entry of an item kind (`sysctl`, `unit-file`, ...).
    Kind(Kind),
    /// An entry by its item's key or its target (`net.ipv4.ip_forward`,
    /// `/etc/sysctl.d/99-zz-holdfast.conf`).
    Key(String),
}

impl Selector {
    /// A kind name is a kind; anything else is a key.
    pub fn parse(s: &str) -> Selector {
        match Kind::parse(s) {
            Some(k) => Selector::Kind(k),
            None => Selector::Key(s.to_string()),
        }
    }

    pub fn matches(&self, e: &Entry) -> bool {
        match self {
            Selector::Kind(k) => e.kind == *k,
            Selector::Key(s) => e.item == *s || e.target.to_string() == *s,
        }
    }
}

// The file's shape. Private: the journal's types never derive Serialize.

#[derive(Serialize, Deserialize)]
struct FileJson {
    format: String,
    version: u32,
    entries: Vec<EntryJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TargetJson {
    Sysctl(String),
    File(PathBuf),
    UnitProperty {
        unit: String,
        knob: String,
    },
    UnitActive(String),
    CgroupDir(PathBuf),
    CgroupFile(PathBuf),
    Controller {
        subtree_control: PathBuf,
        controller: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OriginalJson {
    Absent,
    Value(String),
    File { content: String, mode: String },
    Unreadable(String),
}

#[derive(Serialize, Deserialize)]
struct EntryJson {
    target: TargetJson,
    kind: String,
    item: String,
    original: OriginalJson,
}

impl From<&Entry> for EntryJson {
    fn from(e: &Entry) -> Self {
        let target = match &e.target {
            Target::Sysctl(k) => TargetJson::Sysctl(k.as_str().to_string()),
            Target::File(p) => TargetJson::File(p.clone()),
            Target::UnitProperty { unit, knob } => TargetJson::UnitProperty {
                unit: unit.clone(),
                knob: knob.file().to_string(),
            },
            Target::UnitActive { unit } => TargetJson::UnitActive(unit.clone()),
            Target::CgroupDir(p) => TargetJson::CgroupDir(p.clone()),
            Target::CgroupFile(p) => TargetJson::CgroupFile(p.clone()),
            Target::Controller {
                subtree_control,
                controller,
            } => TargetJson::Controller {
                subtree_control: subtree_control.clone(),
                controller: controller.clone(),
            },
        };
        let original = match &e.original {
            Original::Absent => OriginalJson::Absent,
            Original::Value(v) => OriginalJson::Value(v.clone()),
            Original::File { content, mode } => OriginalJson::File {
                content: content.clone(),
                mode: format!("{mode:04o}"),
            },
            Original::Unreadable(why) => OriginalJson::Unreadable(why.clone()),
        };
        EntryJson {
            target,
            kind: e.kind.as_str().to_string(),
            item: e.item.clone(),
            original,
        }
    }
}

/// A path in the journal: relative, and never climbing out of the root.
fn relative(p: PathBuf) -> Result<PathBuf, String> {
    if p.as_os_str().is_empty()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "path `{}` is not relative to the host root",
            p.display()
        ));
    }
    Ok(p)
}

impl EntryJson {
    fn into_entry(self) -> Result<Entry, String> {
        let target = match self.target {
            TargetJson::Sysctl(k) => {
                Target::Sysctl(SysctlKey::parse(&k).map_err(|e| format!("sysctl `{k}`: {e}"))?)
            }
            TargetJson::File(p) => Target::File(relative(p)?),
            TargetJson::UnitProperty { unit, knob } => Target::UnitProperty {
                unit,
                knob: KnobKind::ALL
                    .into_iter()
                    .find(|k| k.file() == knob)
                    .ok_or_else(|| format!("unknown slice knob `{knob}`"))?,
            },
            TargetJson::UnitActive(unit) => Target::UnitActive { unit },
            TargetJson::CgroupDir(p) => Target::CgroupDir(relative(p)?),
            TargetJson::CgroupFile(p) => Target::CgroupFile(relative(p)?),
            TargetJson::Controller {
                subtree_control,
                controller,
            } => Target::Controller {
                subtree_control: relative(subtree_control)?,
                controller,
            },
        };
        let original = match self.original {
            OriginalJson::Absent => Original::Absent,
            OriginalJson::Value(v) => Original::Value(v),
            OriginalJson::File { content, mode } => Original::File {
                content,
                mode: u32::from_str_radix(&mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("file mode `{mode}` is not octal permission bits"))?,
            },
            OriginalJson::Unreadable(why) => Original::Unreadable(why),
        };
        let kind =
            Kind::parse(&self.kind).ok_or_else(|| format!("unknown kind `{}`", self.kind))?;
        Ok(Entry {
            target,
            kind,
            item: self.item,
            original,
        })
    }
}

#[cfg(test)]
mod tests;
