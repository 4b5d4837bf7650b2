//! The host root: every path holdfast touches on the host is built here, from
//! one injected root directory (`/` in production, a temp dir in tests).
//!
//! This module also holds the small file-I/O helpers whose errors always name
//! the path they failed on.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::sysctl::SysctlKey;

/// An I/O error that remembers which path and which operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        IoError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The OS error number, when there is one (ENOENT, EACCES, EINVAL, ...).
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// The root of the host holdfast manages. All host paths come from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

/// Where the persisted sysctl file lives, relative to the root. It sorts after
/// every file a distribution ships (`99-sysctl.conf` included), so boot-time
/// appliers end on holdfast's values.
pub const SYSCTL_PERSIST_FILE: &str = "etc/sysctl.d/99-zz-holdfast.conf";

/// holdfast's pam_limits file. `90-` leaves room for files meant to win over
/// it (e.g. a site's `99-` overrides), which holdfast reports as shadowing.
pub const LIMITS_MANAGED_FILE: &str = "etc/security/limits.d/90-holdfast.conf";

/// The daemon's own process, for its `process_*` metrics. The one absolute
/// `/proc` path: it describes holdfast itself, not the host it manages, so
/// it is never taken under the host root.
pub const OWN_PROCESS: &str = "/proc/self";

/// The directories systemd-sysctl and `sysctl --system` read, highest priority
/// first: a file in an earlier directory masks a file of the same name in a
/// later one.
pub const SYSCTL_CONF_DIRS: &[&str] = &[
    "etc/sysctl.d",
    "run/sysctl.d",
    "usr/local/lib/sysctl.d",
    "usr/lib/sysctl.d",
    "lib/sysctl.d",
];

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path under the root. `rel` is relative (no leading slash).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn proc_sys(&self) -> PathBuf {
        self.path("proc/sys")
    }

    /// The /proc/sys file of a sysctl key.
    pub fn sysctl_path(&self, key: &SysctlKey) -> PathBuf {
        let mut p = self.proc_sys();
        for component in key.path_components() {
            p.push(component);
        }
        p
    }

    pub fn meminfo(&self) -> PathBuf {
        self.path("proc/meminfo")
    }

    pub fn sysctl_persist_file(&self) -> PathBuf {
        self.path(SYSCTL_PERSIST_FILE)
    }

    pub fn limits_conf(&self) -> PathBuf {
        self.path("etc/security/limits.conf")
    }

    pub fn limits_d(&self) -> PathBuf {
        self.path("etc/security/limits.d")
    }

    pub fn limits_managed_file(&self) -> PathBuf {
        self.path(LIMITS_MANAGED_FILE)
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.path("etc/holdfast/policy.d")
    }
}

pub fn read_to_string(path: &Path) -> Result<String, IoError> {
    fs::read_to_string(path).map_err(|e| IoError::new("read", path, e))
}

/// Reads a file that may legitimately be absent: `Ok(None)` when it is.
pub fn read_optional(path: &Path) -> Result<Option<String>, IoError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoError::new("read", path, e)),
    }
}

/// Like [`read_optional`], but a read error becomes a warning for the
/// report instead of failing the caller: an unreadable auxiliary file must
/// not stop a pass.
pub fn read_optional_or_warn(path: &Path, warnings: &mut Vec<IoError>) -> Option<String> {
    read_optional(path).unwrap_or_else(|e| {
        warnings.push(e);
        None
    })
}

/// Writes `data` to an existing kernel file (procfs, cgroupfs) in one write(2),
/// without truncating or creating: these files take a value per write.
pub fn write_kernel_file(path: &Path, data: &str) -> Result<(), IoError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| IoError::new("open", path, e))?;
    f.write_all(data.as_bytes())
        .map_err(|e| IoError::new("write", path, e))
}

/// Replaces a regular file atomically: write a temp file beside it, fsync,
/// rename over the target, fsync the directory. Readers see the old or the
/// new content, never a torn one. Creates the parent directory if needed.
pub fn write_atomic(path: &Path, data: &str, mode: u32) -> Result<(), IoError> {
    use std::os::unix::fs::OpenOptionsExt;

    let dir = path
        .parent()
        .ok_or_else(|| IoError::new("write", path, io::Error::other("path has no parent")))?;
    fs::create_dir_all(dir).map_err(|e| IoError::new("create directory", dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.holdfast-tmp"));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| IoError::new("create", &tmp, e))?;
        f.write_all(data.as_bytes())
            .map_err(|e| IoError::new("write", &tmp, e))?;
        f.sync_all().map_err(|e| IoError::new("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| IoError::new("rename into place", path, e))?;
        // The rename is durable only once the directory entry is.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| IoError::new("fsync directory", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Lists the regular files (or links to them) in `dir` whose names end with
/// `suffix`, sorted by name. A missing directory is an empty list.
pub fn list_files(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, IoError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::new("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| IoError::new("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(suffix) {
            continue;
        }
        let path = entry.path();
        // Follow links (distributions link 99-sysctl.conf to ../sysctl.conf),
        // but stat only those: the directory entry already knows the rest.
        let is_file = match entry.file_type() {
            Ok(t) if t.is_symlink() => fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false),
            Ok(t) => t.is_file(),
            Err(_) => false,
        };
        if is_file {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/sysctl.d/x.conf");
        write_atomic(&path, "a = 1\n", 0o644).unwrap();
        write_atomic(&path, "a = 2\n", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a = 2\n");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["x.conf"]);
    }

    #[test]
    fn io_errors_name_their_path() {
        let err = read_to_string(Path::new("/nonexistent/holdfast/file")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("read /nonexistent/holdfast/file: "),
            "{msg}"
        );
        assert_eq!(err.errno(), Some(2));
    }

    #[test]
    fn list_files_sorts_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.conf", "a.conf", ".hidden.conf", "c.txt"] {
            fs::write(dir.path().join(n), "").unwrap();
        }
        let got: Vec<_> = list_files(dir.path(), ".conf")
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, vec!["a.conf", "b.conf"]);
        assert!(
            list_files(&dir.path().join("missing"), ".conf")
                .unwrap()
                .is_empty()
        );
    }
}
