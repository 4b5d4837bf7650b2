//! The host root: every path holdfast touches on the host is built here, from
//! one injected root directory (`/` in production, a temp dir in tests).
//!
//! This module also holds the small file-I/O helpers whose errors always name
//! the path they failed on.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

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

/// The originals journal (what each setting was before holdfast first
/// changed it), relative to the root: systemd's `StateDirectory=holdfast`.
pub const JOURNAL_FILE: &str = "var/lib/holdfast/originals.json";

/// What a rollback through the daemon paused, kept across restarts of the
/// daemon (for the same policy).
pub const PAUSE_FILE: &str = "var/lib/holdfast/paused.json";

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

/// holdfast's modprobe.d file. `00-` sorts it first: modprobe runs a
/// module's first `install` line.
pub const MODPROBE_OWN_FILE: &str = "etc/modprobe.d/00-holdfast.conf";

/// The modprobe.d directories kmod reads, highest priority first (as
/// [`SYSCTL_CONF_DIRS`]: a file masks files of its name in later ones).
pub const MODPROBE_CONF_DIRS: &[&str] = &[
    "etc/modprobe.d",
    "run/modprobe.d",
    "usr/local/lib/modprobe.d",
    "usr/lib/modprobe.d",
    "lib/modprobe.d",
];

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the root is `/`: this machine itself, whose running kernel
    /// and systemd are the root's (any other root is a fake or a foreign
    /// tree, and nothing is asked of this machine's kernel or systemd for
    /// it).
    pub fn is_this_machine(&self) -> bool {
        self.root() == Path::new("/")
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
            p.push(&*component);
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

    pub fn journal_file(&self) -> PathBuf {
        self.path(JOURNAL_FILE)
    }

    pub fn pause_file(&self) -> PathBuf {
        self.path(PAUSE_FILE)
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.path("etc/holdfast/policy.d")
    }
}

pub fn read_to_string(path: &Path) -> Result<String, IoError> {
    fs::read_to_string(path).map_err(|e| IoError::new("read", path, e))
}

/// Reads a procfs or cgroupfs file whole: open, read until end of file,
/// close. `fs::read_to_string` first asks for the file's size (a `statx`),
/// which these files answer with 0; a sysctl pass reads hundreds of them, so
/// that is one system call per key for nothing. The error on text that is
/// not UTF-8 is `fs::read_to_string`'s.
pub fn read_kernel_file(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut data = Vec::new();
    // Most values fit in one chunk: then the read after it sees the end.
    let mut chunk = [0u8; 512];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(data).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
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
/// resolved beneath `/` without following any symbolic link (see
/// [`HostRoot::write_kernel_file`], which callers with a host root use).
pub fn write_kernel_file(path: &Path, data: &str) -> Result<(), IoError> {
    HostRoot::new("/").write_kernel_file(path, data)
}

/// Replaces a regular file atomically, with the guarantees of
/// [`HostRoot::write_atomic`] taken beneath `/` (callers with a host root use
/// that method).
pub fn write_atomic(path: &Path, data: &str, mode: u32) -> Result<(), IoError> {
    HostRoot::new("/").write_atomic(path, data, mode)
}

/// The suffix of holdfast's temporary files. Writers are serialised by the
/// writer lock ([`HostRoot::lock_writers`]), so a temp file found beside a
/// file being written is a leftover of a killed writer and is removed.
const TEMP_SUFFIX: &str = ".holdfast-tmp";

/// Makes temp names unique within the process (with the PID, across
/// processes): two writers never share a temp file.
static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Directories holdfast creates on the way to a file it writes.
const DIR_MODE: u32 = 0o755;

/// How the parent directory of a file holdfast creates is resolved: inside
/// the root as if it were `/` (a symlinked `/etc/sysctl.d` is followed, an
/// absolute or `..` target cannot leave the root), never through /proc's
/// magic links.
fn resolve_in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// How kernel files, cgroup directories and names inside an already-opened
/// directory are resolved: beneath the starting directory, no symbolic link
/// at all.
fn resolve_strict() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

/// An `io::Error` from an errno, with plain words for the two refusals of
/// safe resolution.
fn errno_error(e: Errno) -> io::Error {
    match e {
        Errno::ELOOP => io::Error::other(
            "a symbolic link is in the way (holdfast does not follow links here; see ARCHITECTURE.md)",
        ),
        Errno::EXDEV => io::Error::other("the path resolves outside the host root"),
        e => io::Error::from_raw_os_error(e as i32),
    }
}

fn openat2_in(
    dir: impl AsFd,
    rel: &Path,
    flags: OFlag,
    mode: u32,
    resolve: ResolveFlag,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(resolve);
    if OPENAT2_REFUSED.load(Ordering::Relaxed) {
        return walk(dir.as_fd(), rel, flags, mode, resolve);
    }
    loop {
        match openat2(dir.as_fd(), rel, how) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            // No openat2 here: a kernel before 5.6, or a seccomp filter that
            // does not know the call (systemd 252's @system-service answers
            // ENOSYS). Resolve the same way, one component at a time.
            Err(Errno::ENOSYS) => {
                OPENAT2_REFUSED.store(true, Ordering::Relaxed);
                return walk(dir.as_fd(), rel, flags, mode, resolve);
            }
            // EPERM is either this open's own answer (an immutable file
            // opened for writing, say) or a seccomp filter refusing openat2
            // whatever its arguments: systemd 247's RestrictSUIDSGID= does,
            // since it cannot read the flags inside `struct open_how`. An
            // open of the directory itself as O_PATH is never refused by
            // the kernel, so its EPERM can only be the filter's.
            Err(Errno::EPERM) if openat2_filtered(dir.as_fd()) => {
                OPENAT2_REFUSED.store(true, Ordering::Relaxed);
                return walk(dir.as_fd(), rel, flags, mode, resolve);
            }
            other => return other,
        }
    }
}

/// Set once openat2 is known to be missing or refused in this process;
/// from then on every resolution walks (a filter does not go away).
static OPENAT2_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether a seccomp filter refuses openat2 outright: the harmless open
/// of `dir` itself, as a path descriptor, fails with EPERM too.
fn openat2_filtered(dir: std::os::fd::BorrowedFd<'_>) -> bool {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    matches!(openat2(dir, ".", how), Err(Errno::EPERM))
}

/// How many symbolic links one resolution may follow (the kernel's limit).
const MAX_LINKS: u32 = 40;

/// [`openat2_in`] without openat2: walks `rel` from `dir` one component at
/// a time, every step an `openat` with `O_NOFOLLOW` relative to the
/// directory opened before it, so the kernel never follows a link on
/// holdfast's behalf. With `RESOLVE_NO_SYMLINKS` a link anywhere is
/// `ELOOP`; otherwise (`RESOLVE_IN_ROOT`) holdfast reads the link and
/// resolves its target itself against `dir` as the root: an absolute
/// target starts again at `dir`, and `..` never climbs above it.
fn walk(
    dir: std::os::fd::BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    mode: u32,
    resolve: ResolveFlag,
) -> Result<OwnedFd, Errno> {
    use std::collections::VecDeque;
    let follow = !resolve.contains(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let names = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_os_string()),
                std::path::Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let mut todo = names(rel);
    // The directories opened so far, the root first; `..` pops one.
    let mut stack: Vec<OwnedFd> = vec![nix::fcntl::openat(dir, ".", dir_flags, Mode::empty())?];
    let mut links = 0;
    loop {
        let Some(name) = todo.pop_front() else {
            // Everything resolved: open the directory reached.
            let last = stack.last().ok_or(Errno::EINVAL)?;
            return nix::fcntl::openat(
                last,
                ".",
                flags | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            );
        };
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let here = stack.last().ok_or(Errno::EINVAL)?;
        let is_last = todo.is_empty();
        let link = nix::fcntl::readlinkat(here, name.as_os_str());
        match link {
            Ok(target) => {
                if !follow {
                    return Err(Errno::ELOOP);
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::ELOOP);
                }
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.truncate(1);
                }
                let mut next = names(&target);
                next.extend(todo.drain(..));
                todo = next;
            }
            // Not a link (EINVAL) or not there (ENOENT): open it as it is.
            Err(Errno::EINVAL | Errno::ENOENT) if is_last => {
                return nix::fcntl::openat(
                    here,
                    name.as_os_str(),
                    flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(mode),
                );
            }
            Err(Errno::EINVAL) => {
                let next = nix::fcntl::openat(here, name.as_os_str(), dir_flags, Mode::empty())?;
                stack.push(next);
            }
            Err(e) => return Err(e),
        }
    }
}

impl HostRoot {
    /// `path` relative to the root, refused when it is not under the root
    /// or climbs with `..`.
    fn relative<'a>(&self, path: &'a Path) -> Result<&'a Path, IoError> {
        let outside = || {
            IoError::new(
                "resolve",
                path,
                io::Error::other(format!("not under the host root {}", self.root.display())),
            )
        };
        let rel = path.strip_prefix(&self.root).map_err(|_| outside())?;
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(outside());
        }
        Ok(rel)
    }

    fn open_root(&self) -> Result<OwnedFd, IoError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        nix::fcntl::open(&self.root, flags, Mode::empty())
            .map_err(|e| IoError::new("open host root", &self.root, errno_error(e)))
    }

    /// Opens (creating what is missing, mode 0755) the directory `rel` under
    /// the root for reading: resolved in the root, never outside it.
    fn ensure_dir(&self, root: &OwnedFd, rel: &Path) -> Result<OwnedFd, IoError> {
        self.ensure_dir_mode(root, rel, DIR_MODE)
    }

    /// [`HostRoot::ensure_dir`] creating the last directory with `mode`.
    fn ensure_dir_mode(&self, root: &OwnedFd, rel: &Path, mode: u32) -> Result<OwnedFd, IoError> {
        let shown = self.root.join(rel);
        if rel.as_os_str().is_empty() {
            return openat2_in(
                root,
                Path::new("."),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                0,
                resolve_strict(),
            )
            .map_err(|e| IoError::new("open directory", &shown, errno_error(e)));
        }
        match openat2_in(
            root,
            rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            0,
            resolve_in_root(),
        ) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => {
                let parent = self.ensure_dir(root, rel.parent().unwrap_or(Path::new("")))?;
                let name = rel.file_name().unwrap_or_default();
                match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(mode)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(IoError::new("create directory", &shown, errno_error(e))),
                }
                openat2_in(
                    &parent,
                    Path::new(name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    0,
                    resolve_strict(),
                )
                .map_err(|e| IoError::new("open directory", &shown, errno_error(e)))
            }
            Err(e) => Err(IoError::new("open directory", &shown, errno_error(e))),
        }
    }

    /// Opens the existing parent directory of `rel` (resolved in the root),
    /// or `None` when it does not exist.
    fn open_parent(&self, root: &OwnedFd, rel: &Path) -> Result<Option<OwnedFd>, IoError> {
        let dir = rel.parent().unwrap_or(Path::new(""));
        if dir.as_os_str().is_empty() {
            return self.ensure_dir(root, dir).map(Some);
        }
        match openat2_in(
            root,
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            0,
            resolve_in_root(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(IoError::new(
                "open directory",
                &self.root.join(dir),
                errno_error(e),
            )),
        }
    }

    /// Replaces a regular file under the root atomically: a temp file beside
    /// it, created with `O_EXCL | O_NOFOLLOW` under a unique name, given
    /// `mode` (whatever the umask) and, when holdfast runs as root, owner
    /// root:root; written, fsynced, renamed over the target, and the
    /// directory fsynced. Readers see the old or the new content, never a
    /// torn one.
    ///
    /// # Guarantees
    /// - Nothing outside the root is written: the directory is resolved
    ///   inside the root (symlinked directories are followed as in a chroot),
    ///   the temp file and the rename are relative to that directory, and a
    ///   symbolic link at the target's name is replaced, never written
    ///   through.
    /// - Missing directories on the way are created (mode 0755).
    ///
    /// # Assumptions
    /// The caller holds the writer lock: temp files of this target left by
    /// a killed writer are removed first.
    pub fn write_atomic(&self, path: &Path, data: &str, mode: u32) -> Result<(), IoError> {
        let rel = self.relative(path)?;
        let Some(name) = rel.file_name() else {
            return Err(IoError::new(
                "write",
                path,
                io::Error::other("path has no file name"),
            ));
        };
        let root = self.open_root()?;
        let dir = self.ensure_dir(&root, rel.parent().unwrap_or(Path::new("")))?;
        let dir_path = path.parent().unwrap_or(path);
        let prefix = temp_prefix(name);
        remove_stale_temps(&dir, dir_path, &prefix)?;

        let (tmp_name, file) = create_temp(&dir, dir_path, &prefix, mode)?;
        let tmp = dir_path.join(&tmp_name);
        let result = (|| {
            let mut f = fs::File::from(file);
            f.write_all(data.as_bytes())
                .map_err(|e| IoError::new("write", &tmp, e))?;
            f.sync_all().map_err(|e| IoError::new("fsync", &tmp, e))?;
            nix::fcntl::renameat(&dir, tmp_name.as_os_str(), &dir, name)
                .map_err(|e| IoError::new("rename into place", path, errno_error(e)))?;
            // The rename is durable only once the directory entry is.
            nix::unistd::fsync(&dir)
                .map_err(|e| IoError::new("fsync directory", dir_path, errno_error(e)))
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(
                &dir,
                tmp_name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        result
    }

    /// Writes `data` to an existing kernel file (procfs, cgroupfs) under the
    /// root in one write(2), opened with `O_TRUNC` (a plain file in a fake
    /// root holds exactly the value, as the kernel's do) and resolved beneath
    /// the root without following any symbolic link: /proc/sys and cgroupfs
    /// have none, so one there was planted.
    pub fn write_kernel_file(&self, path: &Path, data: &str) -> Result<(), IoError> {
        let rel = self.relative(path)?;
        let root = self.open_root()?;
        let fd = openat2_in(
            &root,
            rel,
            OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_NOFOLLOW,
            0,
            resolve_strict(),
        )
        .map_err(|e| IoError::new("open", path, errno_error(e)))?;
        fs::File::from(fd)
            .write_all(data.as_bytes())
            .map_err(|e| IoError::new("write", path, e))
    }

    /// Takes an unused module out of the running kernel: delete_module(2)
    /// with `O_NONBLOCK`, so that a module in use is refused at once rather
    /// than waited for. Only for the root `/`: under any other root the
    /// running kernel is not the root's, and nothing is asked of it. A
    /// module already gone is done.
    pub fn unload_module(&self, name: &str) -> Result<(), String> {
        if !self.is_this_machine() {
            return Err(format!(
                "not unloaded: the host root is {}, not this machine's kernel",
                self.root().display()
            ));
        }
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| format!("module name {name:?} has a NUL byte"))?;
        match nix::kmod::delete_module(&c_name, nix::kmod::DeleteModuleFlags::O_NONBLOCK) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(explain_unload_error(name, e)),
        }
    }

    /// Creates a directory in a kernel file system (a cgroup) under the root;
    /// an existing directory is fine. Resolved like
    /// [`HostRoot::write_kernel_file`]: no symbolic link anywhere.
    pub fn create_kernel_dir(&self, path: &Path) -> Result<(), IoError> {
        let rel = self.relative(path)?;
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(IoError::new(
                "create directory",
                path,
                io::Error::other("path has no name"),
            ));
        };
        let root = self.open_root()?;
        let open = |dir: &OwnedFd, p: &Path| {
            openat2_in(
                dir,
                p,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                0,
                resolve_strict(),
            )
            .map_err(|e| IoError::new("open directory", path, errno_error(e)))
        };
        let parent = if parent.as_os_str().is_empty() {
            open(&root, Path::new("."))?
        } else {
            open(&root, parent)?
        };
        match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) => Ok(()),
            // Whatever is there must be a real directory, not a link.
            Err(Errno::EEXIST) => open(&parent, Path::new(name)).map(drop),
            Err(e) => Err(IoError::new("create directory", path, errno_error(e))),
        }
    }

    /// Removes an empty cgroup directory holdfast created, if it is there;
    /// resolved like [`HostRoot::write_kernel_file`] (no symbolic link
    /// anywhere). The kernel refuses (EBUSY) while processes or child
    /// cgroups are in it.
    pub fn remove_kernel_dir(&self, path: &Path) -> Result<(), IoError> {
        let rel = self.relative(path)?;
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(IoError::new(
                "remove directory",
                path,
                io::Error::other("path has no name"),
            ));
        };
        let root = self.open_root()?;
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = match openat2_in(
            &root,
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            0,
            resolve_strict(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(IoError::new("open directory", path, errno_error(e))),
        };
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(IoError::new("remove directory", path, errno_error(e))),
        }
    }

    /// Removes the temp files a killed writer left beside `path` (a file
    /// holdfast owns), without touching the file: a pass that finds the
    /// file right writes nothing, and would otherwise leave them. Resolved
    /// like [`HostRoot::write_atomic`]'s directory; the caller holds the
    /// writer lock, so no temp file there belongs to a live writer.
    pub fn remove_stale_temps_of(&self, path: &Path) -> Result<(), IoError> {
        let rel = self.relative(path)?;
        let Some(name) = rel.file_name() else {
            return Ok(());
        };
        self.parent_without_stale_temps(path, rel, name).map(drop)
    }

    /// The directory of `path` (`rel` under the root, named `name`),
    /// resolved like [`HostRoot::write_atomic`]'s, once the temp files a
    /// killed writer left of `name` are removed from it; `None` when the
    /// directory is not there.
    fn parent_without_stale_temps(
        &self,
        path: &Path,
        rel: &Path,
        name: &OsStr,
    ) -> Result<Option<OwnedFd>, IoError> {
        let root = self.open_root()?;
        let Some(dir) = self.open_parent(&root, rel)? else {
            return Ok(None);
        };
        remove_stale_temps(&dir, path.parent().unwrap_or(path), &temp_prefix(name))?;
        Ok(Some(dir))
    }

    /// Removes a file holdfast owns, if it is there; resolved like the
    /// directory of [`HostRoot::write_atomic`], and the name itself is
    /// unlinked (a link there is removed, its target untouched). Temp files
    /// of this name left by a killed writer go with it (the caller holds the
    /// writer lock, as for [`HostRoot::write_atomic`]).
    pub fn remove_file(&self, path: &Path) -> Result<(), IoError> {
        let rel = self.relative(path)?;
        let Some(name) = rel.file_name() else {
            return Err(IoError::new(
                "remove",
                path,
                io::Error::other("path has no file name"),
            ));
        };
        let Some(dir) = self.parent_without_stale_temps(path, rel, name)? else {
            return Ok(());
        };
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(IoError::new("remove", path, errno_error(e))),
        }
    }
}

/// Where the host-wide writer lock lives, relative to the root.
pub const WRITER_LOCK: &str = "run/holdfast/writer.lock";

/// The writer lock, held while alive: only one holdfast process writes to a
/// host at a time (`apply` for its pass, `serve` for its life). Dropping it
/// (or the process ending, even by SIGKILL) releases it.
#[derive(Debug)]
pub struct WriterLock {
    // Closing the descriptor releases the lock: no unlock call, which the
    // hardened daemon's seccomp list would not allow at exit anyway.
    _file: fs::File,
}

/// Why the writer lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another holdfast is writing to this host ({holder}; lock {}), still after {waited:?}: \
         wait for it to finish, or push the policy to the running daemon instead",
        path.display()
    )]
    Busy {
        path: PathBuf,
        holder: String,
        waited: std::time::Duration,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// How often a waiting writer tries the lock again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl HostRoot {
    pub fn writer_lock_path(&self) -> PathBuf {
        self.path(WRITER_LOCK)
    }

    /// Takes the host-wide writer lock (`flock` on `run/holdfast/writer.lock`
    /// under the root, created 0600 without following links), waiting at
    /// most `wait`. `command` is recorded in the lock file with the PID, so
    /// a writer that has to give up can say who holds it.
    pub fn lock_writers(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<WriterLock, LockError> {
        let path = self.writer_lock_path();
        let rel = self.relative(&path)?;
        let root = self.open_root()?;
        // The directory is root-only, like the Unix socket beside it.
        let dir = self.ensure_dir_mode(&root, rel.parent().unwrap_or(Path::new("")), 0o700)?;
        let name = rel.file_name().unwrap_or_default();
        let fd = openat2_in(
            &dir,
            Path::new(name),
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW,
            0o600,
            resolve_strict(),
        )
        .map_err(|e| IoError::new("open", &path, errno_error(e)))?;
        let mut file = fs::File::from(fd);
        let deadline = std::time::Instant::now() + wait;
        loop {
            use std::os::fd::AsRawFd;
            // SAFETY: flock(2) on a descriptor owned by `file`; no memory is
            // passed to the kernel.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            match Errno::result(rc) {
                Ok(_) => {
                    let note = format!("pid {} (holdfast {command})\n", std::process::id());
                    // The holder's note is a courtesy for the loser's message:
                    // failing to write it does not make the lock less held.
                    let _ = file.set_len(0).and_then(|()| {
                        use std::io::Seek;
                        file.seek(io::SeekFrom::Start(0))?;
                        file.write_all(note.as_bytes())
                    });
                    return Ok(WriterLock { _file: file });
                }
                Err(Errno::EWOULDBLOCK | Errno::EINTR) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        let holder = fs::read_to_string(&path)
                            .ok()
                            .map(|s| escape_control(s.trim()))
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "holder unknown".to_string());
                        return Err(LockError::Busy {
                            path,
                            holder,
                            waited: wait,
                        });
                    }
                    std::thread::sleep(LOCK_POLL.min(deadline - now));
                }
                Err(e) => return Err(IoError::new("lock", &path, errno_error(e)).into()),
            }
        }
    }
}

/// Shows control characters (and backslashes) as escapes, so text from a
/// file or a policy cannot move a terminal's cursor or forge lines.
pub fn escape_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Creates a new temp file in `dir` with a name no other writer uses.
fn create_temp(
    dir: &OwnedFd,
    dir_path: &Path,
    prefix: &OsStr,
    mode: u32,
) -> Result<(OsString, OwnedFd), IoError> {
    let pid = std::process::id();
    let euid_is_root = nix::unistd::geteuid().is_root();
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = prefix.to_os_string();
        name.push(format!("{pid}.{n}{TEMP_SUFFIX}"));
        let shown = dir_path.join(&name);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        match openat2_in(dir, Path::new(&name), flags, mode, resolve_strict()) {
            Ok(fd) => {
                let setup = nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
                    .map_err(|e| IoError::new("chmod", &shown, errno_error(e)))
                    .and_then(|()| {
                        if euid_is_root {
                            let root = (
                                Some(nix::unistd::Uid::from_raw(0)),
                                Some(nix::unistd::Gid::from_raw(0)),
                            );
                            nix::unistd::fchown(&fd, root.0, root.1).map_err(|e| {
                                IoError::new("chown root:root", &shown, errno_error(e))
                            })
                        } else {
                            Ok(())
                        }
                    });
                if let Err(e) = setup {
                    let _ = nix::unistd::unlinkat(
                        dir,
                        name.as_os_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    return Err(e);
                }
                return Ok((name, fd));
            }
            // Someone else's name (a leftover with a reused PID): take the next.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(IoError::new("create", &shown, errno_error(e))),
        }
    }
}

/// What the temp files of a file named `name` start with: `.NAME.`.
fn temp_prefix(name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    prefix
}

/// Removes `PREFIX*.holdfast-tmp` entries of `dir`: leftovers of a writer
/// that was killed between creating its temp file and renaming it.
fn remove_stale_temps(dir: &OwnedFd, dir_path: &Path, prefix: &OsStr) -> Result<(), IoError> {
    use std::os::unix::ffi::OsStrExt;
    let listing = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| IoError::new("list", dir_path, errno_error(e)))?;
    let mut stale = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| IoError::new("list", dir_path, errno_error(e)))?;
        let name = entry.file_name().to_bytes();
        if name.starts_with(prefix.as_bytes()) && name.ends_with(TEMP_SUFFIX.as_bytes()) {
            stale.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in stale {
        match nix::unistd::unlinkat(
            dir,
            name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(IoError::new(
                    "remove stale temp file",
                    &dir_path.join(&name),
                    errno_error(e),
                ));
            }
        }
    }
    Ok(())
}

/// Lists the regular files (or links to them) in `dir` whose names end with
/// `suffix`, sorted by name. A missing directory is an empty list.
pub fn list_files(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, IoError> {
    list_matching(dir, suffix, false)
}

/// [`list_files`], and links to `/dev/null` too: systemd reads such a link
/// in a configuration directory (sysctl.d) as masking the files of that
/// name in later directories.
pub fn list_files_and_masks(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, IoError> {
    list_matching(dir, suffix, true)
}

fn list_matching(dir: &Path, suffix: &str, masks: bool) -> Result<Vec<PathBuf>, IoError> {
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
        let keep = match entry.file_type() {
            Ok(t) if t.is_symlink() => {
                fs::metadata(&path).is_ok_and(|m| m.is_file())
                    || (masks && fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null")))
            }
            Ok(t) => t.is_file(),
            Err(_) => false,
        };
        if keep {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// A refused delete_module(2), with what it means here.
fn explain_unload_error(name: &str, e: nix::errno::Errno) -> String {
    let why = match e {
        nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EBUSY => {
            "it is in use (a reference was taken since it was read): it is tried again once nothing uses it"
        }
        nix::errno::Errno::EPERM => {
            "operation not permitted (EPERM): unloading needs CAP_SYS_MODULE and delete_module(2), which the shipped holdfast.service withholds (ProtectKernelModules=yes; the book's \"Kernel modules\" chapter, docs/src/kernel-modules.md, has the drop-in that grants them, and `holdfast apply` as root unloads), or module unloading is off (kernel.modules_disabled)"
        }
        _ => "the kernel refused to unload it",
    };
    format!("rmmod {name}: {why}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sysctl_key_is_its_path_under_proc_sys_with_slashes_read_as_dots() {
        let host = HostRoot::new(Path::new("/fake"));
        let path = |k: &str| host.sysctl_path(&SysctlKey::parse(k).unwrap());
        assert_eq!(
            path("net.ipv4.conf.eth0/100.rp_filter"),
            PathBuf::from("/fake/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert_eq!(
            path("kernel.dmesg_restrict"),
            PathBuf::from("/fake/proc/sys/kernel/dmesg_restrict")
        );
    }

    /// A kernel file is read whole, across chunks, with the errors
    /// `fs::read_to_string` gives.
    #[test]
    fn kernel_files_are_read_whole_with_read_to_strings_errors() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "1\t2\n").unwrap();
        assert_eq!(read_kernel_file(&short).unwrap(), "1\t2\n");
        // Longer than one chunk (a long core_pattern, a cgroup.procs).
        let long_text: String = (0..400).map(|i| format!("{i}\n")).collect();
        let long = dir.path().join("long");
        std::fs::write(&long, &long_text).unwrap();
        assert!(long_text.len() > 1024);
        assert_eq!(read_kernel_file(&long).unwrap(), long_text);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(read_kernel_file(&empty).unwrap(), "");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"1\xff\n").unwrap();
        let (ours, std_err) = (
            read_kernel_file(&bad).unwrap_err(),
            std::fs::read_to_string(&bad).unwrap_err(),
        );
        assert_eq!(ours.kind(), std_err.kind());
        assert_eq!(ours.to_string(), std_err.to_string());
        let missing = dir.path().join("missing");
        assert_eq!(
            read_kernel_file(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        // A directory: the same error as fs::read_to_string.
        assert_eq!(
            read_kernel_file(dir.path()).unwrap_err().raw_os_error(),
            std::fs::read_to_string(dir.path())
                .unwrap_err()
                .raw_os_error()
        );
    }

    /// Under a seccomp filter that refuses openat2 with EPERM whatever its
    /// arguments (systemd 247's `RestrictSUIDSGID=yes`), reads and writes
    /// under the root still work: the refusal is told from a real EPERM and
    /// every later resolution walks. The filter cannot be taken back, so
    /// the test runs itself again in a child process that installs it.
    #[test]
    fn a_filter_refusing_openat2_with_eperm_falls_back_to_the_walk() {
        const CHILD: &str = "HOLDFAST_TEST_OPENAT2_EPERM";
        let name = "host::tests::a_filter_refusing_openat2_with_eperm_falls_back_to_the_walk";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads", "1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("1 passed"), "the child ran no test: {text}");
            return;
        }
        use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
        let filter = SeccompFilter::new(
            [(libc::SYS_openat2, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )
        .unwrap();
        let program: BpfProgram = filter.try_into().unwrap();
        seccompiler::apply_filter(&program).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fd = nix::fcntl::open(dir.path(), OFlag::O_PATH, Mode::empty()).unwrap();
        assert!(openat2_filtered(fd.as_fd()));

        let host = HostRoot::new(dir.path());
        let file = host.path("etc/sysctl.d/99-test.conf");
        host.write_atomic(&file, "vm.swappiness = 10\n", 0o644)
            .unwrap();
        assert!(OPENAT2_REFUSED.load(Ordering::Relaxed));
        assert_eq!(fs::read_to_string(&file).unwrap(), "vm.swappiness = 10\n");
        host.remove_file(&file).unwrap();
        assert!(!file.exists());
    }

    /// The resolution without openat2 (kernels before 5.6, seccomp filters
    /// that answer ENOSYS) keeps the same promises as openat2's.
    #[test]
    fn resolving_without_openat2_stays_in_the_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/real.d")).unwrap();
        std::fs::write(root.join("etc/real.d/x.conf"), "inside\n").unwrap();
        std::fs::create_dir_all(root.join("proc/sys/net")).unwrap();
        // A directory linked the way distributions do, absolutely and
        // relatively, and a link that tries to climb out.
        symlink("/etc/real.d", root.join("etc/abs.d")).unwrap();
        symlink("real.d", root.join("etc/rel.d")).unwrap();
        symlink("../../../../../../etc", root.join("etc/up")).unwrap();
        symlink("/tmp", root.join("proc/sys/net/core")).unwrap();
        let fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let read = |fd: OwnedFd| {
            let mut f = fs::File::from(
                nix::fcntl::openat(&fd, "x.conf", OFlag::O_RDONLY, Mode::empty()).unwrap(),
            );
            let mut text = String::new();
            io::Read::read_to_string(&mut f, &mut text).unwrap();
            text
        };
        for linked in ["etc/abs.d", "etc/rel.d"] {
            let got = walk(
                fd.as_fd(),
                Path::new(linked),
                dir_flags,
                0,
                resolve_in_root(),
            )
            .unwrap();
            assert_eq!(read(got), "inside\n", "{linked}");
        }
        // `..` stops at the root: etc/up is the root's own etc.
        let got = walk(
            fd.as_fd(),
            Path::new("etc/up/real.d"),
            dir_flags,
            0,
            resolve_in_root(),
        )
        .unwrap();
        assert_eq!(read(got), "inside\n");
        // Kernel paths: no link at all.
        assert_eq!(
            walk(
                fd.as_fd(),
                Path::new("proc/sys/net/core/somaxconn"),
                OFlag::O_WRONLY,
                0,
                resolve_strict()
            )
            .unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            walk(
                fd.as_fd(),
                Path::new("etc/rel.d"),
                dir_flags,
                0,
                resolve_strict()
            )
            .unwrap_err(),
            Errno::ELOOP
        );
        assert!(
            walk(
                fd.as_fd(),
                Path::new("etc/real.d"),
                dir_flags,
                0,
                resolve_strict()
            )
            .is_ok()
        );
        // A loop of links ends.
        symlink("loop2", root.join("etc/loop1")).unwrap();
        symlink("loop1", root.join("etc/loop2")).unwrap();
        assert_eq!(
            walk(
                fd.as_fd(),
                Path::new("etc/loop1"),
                dir_flags,
                0,
                resolve_in_root()
            )
            .unwrap_err(),
            Errno::ELOOP
        );
    }

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

    /// The temp name holdfast used before every writer got its own: a link
    /// planted there must never be written through or installed.
    #[test]
    fn a_link_planted_at_a_temp_name_is_neither_written_through_nor_installed() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path().join("root"));
        let outside = dir.path().join("outside");
        fs::write(&outside, "precious\n").unwrap();
        let target = host.path("etc/sysctl.d/99-zz-holdfast.conf");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let planted = host.path("etc/sysctl.d/.99-zz-holdfast.conf.holdfast-tmp");
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        host.write_atomic(&target, "a = 1\n", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "a = 1\n");
    }

    #[test]
    fn a_link_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path().join("root"));
        let outside = dir.path().join("outside");
        fs::write(&outside, "precious\n").unwrap();
        let target = host.path("etc/security/limits.d/90-holdfast.conf");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        host.write_atomic(&target, "* soft nofile 1\n", 0o644)
            .unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
        assert!(fs::symlink_metadata(&target).unwrap().file_type().is_file());
    }

    #[test]
    fn written_files_get_the_given_mode_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let target = host.path("etc/x.conf");
        host.write_atomic(&target, "x\n", 0o640).unwrap();
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            assert_eq!((meta.uid(), meta.gid()), (0, 0));
        }
    }

    #[test]
    fn a_symlinked_directory_is_followed_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let host = HostRoot::new(&root);
        let outside = dir.path().join("outside-sysctl.d");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/lib/sysctl.d")).unwrap();
        // A relative link inside the root works as on the real host.
        std::os::unix::fs::symlink("../usr/lib/sysctl.d", root.join("etc/sysctl.d")).unwrap();
        host.write_atomic(&host.path("etc/sysctl.d/a.conf"), "a = 1\n", 0o644)
            .unwrap();
        assert_eq!(
            fs::read_to_string(root.join("usr/lib/sysctl.d/a.conf")).unwrap(),
            "a = 1\n"
        );
        // An absolute link is taken relative to the root, as in a chroot.
        std::os::unix::fs::symlink(&outside, root.join("etc/limits.d")).unwrap();
        // Dangling inside the root: refused, not resolved on the real host.
        let err = host
            .write_atomic(&host.path("etc/limits.d/b.conf"), "b\n", 0o644)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        host.write_atomic(&host.path("etc/limits.d/b.conf"), "b\n", 0o644)
            .unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(
            fs::read_to_string(root.join(outside.strip_prefix("/").unwrap()).join("b.conf"))
                .unwrap(),
            "b\n"
        );
    }

    #[test]
    fn kernel_file_links_out_of_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let host = HostRoot::new(&root);
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("value"), "precious\n").unwrap();
        fs::write(outside.join("memory.max"), "precious\n").unwrap();
        // A planted /proc/sys/KEY link.
        fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::os::unix::fs::symlink(outside.join("value"), root.join("proc/sys/kernel/x")).unwrap();
        let err = host
            .write_kernel_file(&root.join("proc/sys/kernel/x"), "1\n")
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A planted holdfast.slice directory link.
        fs::create_dir_all(root.join("sys/fs/cgroup")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sys/fs/cgroup/holdfast.slice")).unwrap();
        let slice = root.join("sys/fs/cgroup/holdfast.slice");
        assert!(
            host.write_kernel_file(&slice.join("memory.max"), "1\n")
                .is_err()
        );
        assert!(host.create_kernel_dir(&slice).is_err());
        assert!(host.create_kernel_dir(&slice.join("x.slice")).is_err());
        assert_eq!(
            fs::read_to_string(outside.join("value")).unwrap(),
            "precious\n"
        );
        assert_eq!(
            fs::read_to_string(outside.join("memory.max")).unwrap(),
            "precious\n"
        );
        assert!(!outside.join("x.slice").exists());
        // And no path outside the root is accepted at all.
        assert!(
            host.write_kernel_file(&outside.join("value"), "1\n")
                .is_err()
        );
        assert!(
            host.write_atomic(&outside.join("new"), "1\n", 0o644)
                .is_err()
        );
        assert!(!outside.join("new").exists());
    }

    #[test]
    fn kernel_file_writes_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let key = host.path("proc/sys/vm/max_map_count");
        fs::create_dir_all(key.parent().unwrap()).unwrap();
        fs::write(&key, "65530\n").unwrap();
        host.write_kernel_file(&key, "1\n").unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "1\n");
    }

    #[test]
    fn writers_behind_the_lock_never_tear_a_file_nor_leave_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let target = host.path("etc/security/limits.d/90-holdfast.conf");
        let a = "* hard nofile 1024\n".repeat(2000);
        let b = "* soft nproc 77\n".repeat(3000);
        std::thread::scope(|s| {
            for (command, content) in [("apply", &a), ("serve", &b)] {
                let (host, target, a, b) = (&host, &target, &a, &b);
                s.spawn(move || {
                    for _ in 0..50 {
                        let _lock = host
                            .lock_writers(command, std::time::Duration::from_secs(30))
                            .unwrap();
                        host.write_atomic(target, content, 0o644).unwrap();
                        let now = fs::read_to_string(target).unwrap();
                        assert!(now == *a || now == *b, "torn: {} bytes", now.len());
                    }
                });
            }
        });
        let names: Vec<_> = fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["90-holdfast.conf"]);
    }

    #[test]
    fn temp_files_left_by_a_killed_writer_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let target = host.path("etc/sysctl.d/99-zz-holdfast.conf");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let left = target
            .parent()
            .unwrap()
            .join(".99-zz-holdfast.conf.4242.0.holdfast-tmp");
        fs::write(&left, "half a fi").unwrap();
        let other = target.parent().unwrap().join("10-other.conf");
        fs::write(&other, "x = 1\n").unwrap();
        host.write_atomic(&target, "a = 1\n", 0o644).unwrap();
        assert!(!left.exists());
        assert!(other.exists());
    }

    #[test]
    fn the_writer_lock_admits_one_writer_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let held = host
            .lock_writers("serve", std::time::Duration::ZERO)
            .unwrap();
        let err = host
            .lock_writers("apply", std::time::Duration::from_millis(120))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Busy { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {} (holdfast serve)", std::process::id())),
            "{msg}"
        );
        drop(held);
        host.lock_writers("apply", std::time::Duration::ZERO)
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&host.writer_lock_path()), 0o600);
        assert_eq!(mode(host.writer_lock_path().parent().unwrap()), 0o700);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("a\nb\x1b[2J\\"), "a\\nb\\u{1b}[2J\\\\");
        assert_eq!(escape_control("plain/path.yaml"), "plain/path.yaml");
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
