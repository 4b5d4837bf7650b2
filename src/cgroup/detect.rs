//! Which cgroup hierarchy a host has, and who owns the tree.
//!
//! On a real host the filesystem magic of `/sys/fs/cgroup` decides
//! (`statfs`): cgroup2 means unified; tmpfs means v1, or hybrid when a
//! cgroup2 filesystem is mounted at `/sys/fs/cgroup/unified`. Under a fake
//! root (a plain directory), the files a cgroup2 root would have decide:
//! `cgroup.controllers` at the top means unified, under `unified/` hybrid.

use std::path::Path;

pub use super::CgroupMode;
use crate::host::HostRoot;

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, FsType, TMPFS_MAGIC};

fn magic(path: &Path) -> Option<FsType> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type())
}

/// What detection looks at under a root.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The filesystem type of `sys/fs/cgroup`, if it exists.
    top: Option<FsType>,
    /// Whether `sys/fs/cgroup` is a mount point (a device of its own).
    top_mounted: bool,
    unified: Option<FsType>,
    /// Marker files, for a fake root (a plain directory tree).
    top_controllers: bool,
    unified_controllers: bool,
    top_is_dir: bool,
}

/// The decision, pure. A real host mounts cgroup2 or a tmpfs at
/// `/sys/fs/cgroup`; anything else — including a plain directory that lives
/// on a tmpfs, as a fake root under `/tmp` does on many distributions — is
/// a fake root, judged by its files.
fn classify(p: Probe) -> CgroupMode {
    match p.top {
        None => CgroupMode::Missing,
        Some(CGROUP2_SUPER_MAGIC) => CgroupMode::Unified,
        Some(TMPFS_MAGIC) if p.top_mounted && p.unified == Some(CGROUP2_SUPER_MAGIC) => {
            CgroupMode::Hybrid
        }
        Some(TMPFS_MAGIC) if p.top_mounted => CgroupMode::Legacy,
        Some(_) if p.top_controllers => CgroupMode::Unified,
        Some(_) if p.unified_controllers => CgroupMode::Hybrid,
        Some(_) if p.top_is_dir => CgroupMode::Legacy,
        Some(_) => CgroupMode::Missing,
    }
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Detects the cgroup mode of the host under `host`.
pub fn mode(host: &HostRoot) -> CgroupMode {
    let top = host.path("sys/fs/cgroup");
    let unified = top.join("unified");
    classify(Probe {
        top: magic(&top),
        top_mounted: is_mount_point(&top),
        unified: magic(&unified),
        top_controllers: top.join("cgroup.controllers").is_file(),
        unified_controllers: unified.join("cgroup.controllers").is_file(),
        top_is_dir: top.is_dir(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_roots_are_judged_by_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        assert_eq!(mode(&host), CgroupMode::Missing);
        std::fs::create_dir_all(dir.path().join("sys/fs/cgroup/unified")).unwrap();
        assert_eq!(mode(&host), CgroupMode::Legacy);
        std::fs::write(
            dir.path().join("sys/fs/cgroup/unified/cgroup.controllers"),
            "",
        )
        .unwrap();
        assert_eq!(mode(&host), CgroupMode::Hybrid);
        std::fs::write(
            dir.path().join("sys/fs/cgroup/cgroup.controllers"),
            "cpu memory\n",
        )
        .unwrap();
        assert_eq!(mode(&host), CgroupMode::Unified);
    }

    #[test]
    fn a_fake_root_on_a_tmpfs_is_judged_by_its_files_too() {
        // /tmp is a tmpfs on Debian 13, Fedora and Arch: the fake root's
        // sys/fs/cgroup reads as TMPFS_MAGIC but is no mount point.
        let fake = Probe {
            top: Some(TMPFS_MAGIC),
            top_mounted: false,
            unified: Some(TMPFS_MAGIC),
            top_controllers: true,
            unified_controllers: false,
            top_is_dir: true,
        };
        assert_eq!(classify(fake), CgroupMode::Unified);
        let hybrid = Probe {
            top_controllers: false,
            unified_controllers: true,
            ..fake
        };
        assert_eq!(classify(hybrid), CgroupMode::Hybrid);
        // A real v1 or hybrid host: a tmpfs mounted there.
        let real = Probe {
            top_mounted: true,
            unified: Some(CGROUP2_SUPER_MAGIC),
            top_controllers: false,
            ..fake
        };
        assert_eq!(classify(real), CgroupMode::Hybrid);
        assert_eq!(
            classify(Probe {
                unified: None,
                ..real
            }),
            CgroupMode::Legacy
        );
    }

    #[test]
    fn a_fake_root_in_a_real_tmpfs_is_judged_by_its_files() {
        // /dev/shm is a tmpfs wherever glibc's POSIX shared memory works,
        // which every Linux machine this suite runs on has.
        assert_eq!(magic(Path::new("/dev/shm")), Some(TMPFS_MAGIC));
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::create_dir_all(dir.path().join("sys/fs/cgroup")).unwrap();
        std::fs::write(dir.path().join("sys/fs/cgroup/cgroup.controllers"), "").unwrap();
        assert_eq!(mode(&HostRoot::new(dir.path())), CgroupMode::Unified);
    }

    #[test]
    fn this_machine_has_a_mode() {
        // Whatever the machine running the tests has, detection answers
        // without error (hybrid on the development machines).
        let m = mode(&HostRoot::new("/"));
        assert_ne!(m.as_str(), "");
    }
}
