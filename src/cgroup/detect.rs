//! Which cgroup hierarchy a host has, and who owns the tree.
//!
//! On a real host the filesystem magic of `/sys/fs/cgroup` decides
//! (`statfs`): cgroup2 means unified; tmpfs means v1, or hybrid when a
//! cgroup2 filesystem is mounted at `/sys/fs/cgroup/unified`. Under a fake
//! root (a plain directory), the files a cgroup2 root would have decide:
//! `cgroup.controllers` at the top means unified, under `unified/` hybrid.

use std::path::Path;

use crate::host::HostRoot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Pure cgroup v2: holdfast manages cgroups.
    Unified,
    /// v1 controllers with a v2 hierarchy beside them: report only.
    Hybrid,
    /// Legacy v1 only: report only.
    Legacy,
    /// No cgroup filesystem at all.
    Missing,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Unified => "unified cgroup v2",
            CgroupMode::Hybrid => "hybrid cgroup v1/v2",
            CgroupMode::Legacy => "legacy cgroup v1",
            CgroupMode::Missing => "no cgroup filesystem",
        }
    }
}

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, FsType, TMPFS_MAGIC};

fn magic(path: &Path) -> Option<FsType> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type())
}

/// Detects the cgroup mode of the host under `host`.
pub fn mode(host: &HostRoot) -> CgroupMode {
    let top = host.path("sys/fs/cgroup");
    let unified = top.join("unified");
    match magic(&top) {
        None => CgroupMode::Missing,
        Some(CGROUP2_SUPER_MAGIC) => CgroupMode::Unified,
        Some(TMPFS_MAGIC) if magic(&unified) == Some(CGROUP2_SUPER_MAGIC) => CgroupMode::Hybrid,
        Some(TMPFS_MAGIC) => CgroupMode::Legacy,
        // A plain directory: a fake host root. Judge by the files.
        Some(_) if top.join("cgroup.controllers").is_file() => CgroupMode::Unified,
        Some(_) if unified.join("cgroup.controllers").is_file() => CgroupMode::Hybrid,
        Some(_) if top.is_dir() => CgroupMode::Legacy,
        Some(_) => CgroupMode::Missing,
    }
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
    fn this_machine_has_a_mode() {
        // Whatever the machine running the tests has, detection answers
        // without error (hybrid on the development machines).
        let m = mode(&HostRoot::new("/"));
        assert_ne!(m.as_str(), "");
    }
}
