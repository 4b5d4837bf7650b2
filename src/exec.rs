//! Carrying out actions: what every area's executor shares. A file action
//! is read back after it is made; an error is explained with what it means
//! on a real host. The engine runs the stages of a pass with these; an area
//! with an executor of its own (the sysctl area's converge loop) reports
//! through the same [`Executed`].

use std::collections::HashMap;

use crate::host::{self, HostRoot, IoError};
use crate::item::{Action, Hold, Item, ItemKey};
use crate::journal::Original;
use crate::journal::store::{Change, Recorder};
use crate::policy::Policy;

/// What every executor of a pass works with: the host, the policy, the
/// items it must leave alone, and the journal every change's original goes
/// to before the change.
pub struct Run<'p, 'h> {
    pub host: &'p HostRoot,
    pub policy: &'p Policy,
    pub hold: Hold<'p>,
    pub originals: &'p mut Recorder<'h>,
}

/// What became of one executed action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done, and (for files) read back with the content written.
    Done,
    /// Not done, or done but not as asked; the explanation says which.
    Failed(String),
}

/// What an area's own executor did in a pass.
#[derive(Debug, Default)]
pub struct Executed {
    /// The outcome of each action it carried out (or refused), by item.
    pub outcomes: HashMap<ItemKey, Outcome>,
    /// Whether it changed the host (or may have): the area is read again.
    pub acted: bool,
    /// Problems reading auxiliary files on the way; never fatal.
    pub warnings: Vec<IoError>,
}

/// Writes or removes one of holdfast's files, then reads it back: `Done`
/// only when the file has exactly the content written (or is gone).
pub fn file_action(host: &HostRoot, action: &Action) -> Outcome {
    match action {
        Action::WriteFile { path, content } => {
            if let Err(e) = host.write_atomic(path, content, 0o644) {
                return Outcome::Failed(e.to_string());
            }
            match host::read_optional(path) {
                Ok(Some(now)) if now == *content => Outcome::Done,
                Ok(Some(_)) => Outcome::Failed(format!(
                    "wrote {}, but it reads back with other content (another writer?)",
                    path.display()
                )),
                Ok(None) => Outcome::Failed(format!(
                    "wrote {}, but it is gone when read back (another writer?)",
                    path.display()
                )),
                Err(e) => Outcome::Failed(format!("wrote it, then could not read it back: {e}")),
            }
        }
        Action::RemoveFile { path } => match host.remove_file(path) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e.to_string()),
        },
        _ => Outcome::Failed(format!("not a file action: {action}")),
    }
}

/// Whether the path of a file action is still free or holdfast's file: a
/// file holdfast did not write (or a link) that appeared since the pass read
/// the directory is never replaced or removed.
pub fn still_ours(action: &Action) -> Result<(), String> {
    let (Action::WriteFile { path, .. } | Action::RemoveFile { path }) = action else {
        return Err(format!("not a file action: {action}"));
    };
    let refused = |what: &str| {
        Err(format!(
            "not changed: {} is now {what}, and holdfast never replaces a file it did not write",
            path.display()
        ))
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new("stat", path, e).to_string()),
        Ok(m) if !m.file_type().is_file() => refused("a link or not a regular file"),
        Ok(_) => match host::read_optional(path) {
            Ok(Some(text)) if !text.starts_with(crate::item::OWN_UNIT_FILE_MARK) => {
                refused("a file holdfast did not write")
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// The journal hook of a stage: records the originals of the stage's
/// changes (those not journaled yet) in one durable write, before any of
/// them is made. `known` supplies an original the pass already read.
pub fn journal_before(
    originals: &mut Recorder<'_>,
    changes: &[(&Item, &Action)],
    known: impl Fn(&ItemKey, &Action) -> Option<Original>,
) -> Vec<Result<(), String>> {
    if changes.is_empty() {
        return Vec::new();
    }
    let changes: Vec<Change<'_>> = changes
        .iter()
        .map(|(item, action)| Change {
            key: &item.key,
            action,
            known: known(&item.key, action),
        })
        .collect();
    originals.before(&changes)
}

/// cgroupfs errors, with what they mean for holdfast (design notes, §3).
pub fn explain_cgroup_error(e: &IoError) -> String {
    let why = match e.errno() {
        Some(16) => {
            "EBUSY: the no-internal-processes rule (a cgroup with processes cannot give its children domain controllers), or a controller still in use below"
        }
        Some(22) => "EINVAL: the kernel rejected the value or the controller name",
        Some(2) => {
            "ENOENT: the controller is not enabled in the parent, or the file does not exist here: cannot manage this here"
        }
        Some(1 | 13) => "permission denied (nsdelegate, or not root): cannot manage this here",
        Some(30) => "EROFS: cgroupfs is mounted read-only here: cannot manage this here",
        _ => "cgroupfs write failed",
    };
    format!("{why}: {e}")
}

/// Turns a failed sysctl write into an explanation a person can act on.
pub fn explain_write_error(e: &IoError) -> String {
    let why = match e.errno() {
        Some(22) => "the kernel rejected the value (EINVAL)",
        // EACCES is the file's mode: a read-only key, or not root.
        Some(13) if nix::unistd::geteuid().is_root() => {
            "permission denied by the file's mode (EACCES): this key is read-only here"
        }
        Some(13) => "permission denied (EACCES): writing sysctls needs root",
        // EPERM is a capability check in the kernel's handler.
        Some(1) => {
            "operation not permitted (EPERM): a capability is missing (net.* needs CAP_NET_ADMIN over its network namespace, kernel.dmesg_restrict and kptr_restrict CAP_SYS_ADMIN, vm.mmap_min_addr CAP_SYS_RAWIO), or a container forbids it"
        }
        Some(2) => "the key disappeared",
        Some(30) => "/proc/sys is read-only here (a container?)",
        _ => "write failed",
    };
    format!("{why}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_error_names_its_real_cause() {
        let path = std::path::Path::new("/proc/sys/net/core/somaxconn");
        let why = |errno| {
            explain_write_error(&IoError::new(
                "open",
                path,
                std::io::Error::from_raw_os_error(errno),
            ))
        };
        // EPERM is a missing capability; EACCES the file's mode (as root)
        // or not being root.
        assert!(why(1).contains("capability"), "{}", why(1));
        assert!(!why(13).contains("capability"), "{}", why(13));
        if nix::unistd::geteuid().is_root() {
            assert!(why(13).contains("read-only"), "{}", why(13));
        } else {
            assert!(why(13).contains("needs root"), "{}", why(13));
        }
        assert!(why(22).contains("EINVAL"));
    }
}
