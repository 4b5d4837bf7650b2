//! Where the status API listens: address parsing, the loopback rule,
//! binding TCP and Unix sockets, and sockets passed by systemd (socket
//! activation, `LISTEN_FDS`).
//!
//! # Guarantees
//! - A non-loopback TCP address is refused unless `--allow-remote` is given:
//!   the API is unauthenticated.
//! - A Unix socket is created `0600` in a directory created `0700`, so only
//!   root can connect; a stale socket left by a crash is replaced, a live one
//!   (another daemon answers on it) is not.
//! - Binding is per address: one that fails is reported and the others
//!   still serve.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::state::{ListenerOrigin, ListenerStatus};
use crate::host::HostRoot;

/// The default Unix socket, under the host root.
pub const DEFAULT_SOCKET: &str = "run/holdfast/holdfast.sock";
/// The default TCP port: `curl localhost/status`.
pub const DEFAULT_PORT: u16 = 80;

/// A `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error(
        "invalid address `{0}`: expected IP:PORT (127.0.0.1:8080, [::1]:80, localhost:8080) or a Unix socket path (/run/holdfast/holdfast.sock, unix:PATH)"
    )]
    Invalid(String),
    #[error(
        "refusing to listen on {0}: not a loopback address, and the status API has no authentication; pass --allow-remote to allow it"
    )]
    NotLoopback(String),
}

impl ListenAddr {
    /// `127.0.0.1:8080`, `[::1]:80`, `localhost:8080` (IPv4 loopback), a path
    /// (absolute or starting with `.`), or `unix:PATH`.
    pub fn parse(s: &str) -> Result<ListenAddr, ListenError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::Invalid(s.to_string()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            let port = port
                .parse::<u16>()
                .map_err(|_| ListenError::Invalid(s.to_string()))?;
            return Ok(ListenAddr::Tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            )));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| ListenError::Invalid(s.to_string()))
    }

    /// Refuses non-loopback TCP addresses unless `allow_remote`.
    pub fn check_loopback(&self, allow_remote: bool) -> Result<(), ListenError> {
        match self {
            ListenAddr::Tcp(a) if !allow_remote && !a.ip().is_loopback() => {
                Err(ListenError::NotLoopback(a.to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// The default addresses: loopback port 80 over IPv4 and IPv6 (curl tries
/// `localhost` as ::1 first), and the Unix socket under the host root.
pub fn default_addrs(host: &HostRoot) -> Vec<ListenAddr> {
    vec![
        ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            DEFAULT_PORT,
        )),
        ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            DEFAULT_PORT,
        )),
        ListenAddr::Unix(host.path(DEFAULT_SOCKET)),
    ]
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix {
        listener: tokio::net::UnixListener,
        /// The socket file holdfast created (removed on exit); none for a
        /// socket systemd passed.
        owned_path: Option<PathBuf>,
    },
}

impl Listener {
    /// The address as status shows it (the real port when 0 was asked).
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp (unknown address)".into(), |a| a.to_string()),
            Listener::Unix { listener, .. } => listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "unix (unnamed)".into()),
        }
    }

    pub fn owned_path(&self) -> Option<&Path> {
        match self {
            Listener::Unix { owned_path, .. } => owned_path.as_deref(),
            Listener::Tcp(_) => None,
        }
    }
}

fn err(op: &str, what: impl fmt::Display, e: &io::Error) -> String {
    format!("{op} {what}: {e}")
}

/// Binds one address. Must run inside a tokio runtime.
pub fn bind(addr: &ListenAddr) -> Result<Listener, String> {
    match addr {
        ListenAddr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(|e| {
                if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                    // holdfast.service allows only AF_UNIX sockets: its TCP
                    // ports are bound by holdfast.socket.
                    format!(
                        "{}; the service may not open Internet sockets itself: add the address to holdfast.socket (ListenStream=)",
                        err("bind", a, &e)
                    )
                } else {
                    err("bind", a, &e)
                }
            })?;
            l.set_nonblocking(true)
                .map_err(|e| err("configure", a, &e))?;
            let l = tokio::net::TcpListener::from_std(l).map_err(|e| err("register", a, &e))?;
            Ok(Listener::Tcp(l))
        }
        ListenAddr::Unix(path) => bind_unix(path),
    }
}

fn bind_unix(path: &Path) -> Result<Listener, String> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err("create directory", dir.display(), &e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "bind {shown}: another process is listening on it (is holdfast serve already running?)"
                ));
            }
            // A stale socket from a daemon that did not exit cleanly.
            std::fs::remove_file(path).map_err(|e| err("remove stale socket", &shown, &e))?;
        }
        Ok(_) => {
            return Err(format!(
                "bind {shown}: the path exists and is not a socket; not replacing it"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("stat", &shown, &e)),
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| err("bind", &shown, &e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("chmod 0600", &shown, &e))?;
    l.set_nonblocking(true)
        .map_err(|e| err("configure", &shown, &e))?;
    let listener =
        tokio::net::UnixListener::from_std(l).map_err(|e| err("register", &shown, &e))?;
    Ok(Listener::Unix {
        listener,
        owned_path: Some(path.to_path_buf()),
    })
}

/// The listeners bound so far and a status line per address tried.
#[derive(Debug, Default)]
pub struct Bound {
    pub listeners: Vec<Listener>,
    pub statuses: Vec<ListenerStatus>,
}

impl Bound {
    fn record(&mut self, result: Result<Listener, String>, tried: String, origin: ListenerOrigin) {
        match result {
            Ok(l) => {
                self.statuses.push(ListenerStatus {
                    address: l.describe(),
                    origin,
                    error: None,
                });
                self.listeners.push(l);
            }
            Err(e) => self.statuses.push(ListenerStatus {
                address: tried,
                origin,
                error: Some(e),
            }),
        }
    }
}

/// Binds every address; one that fails is recorded with its error.
pub fn bind_all(addrs: &[ListenAddr], origin: ListenerOrigin, into: &mut Bound) {
    for addr in addrs {
        into.record(bind(addr), addr.to_string(), origin);
    }
}

/// A socket systemd passed, adopted but not yet registered with tokio.
#[derive(Debug)]
pub enum Passed {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The sockets systemd passed (`LISTEN_FDS`/`LISTEN_PID`), TCP or Unix.
/// Call it first, before anything else opens a descriptor: the passed
/// descriptors are 3, 4, ... and must be taken before they could be
/// confused with others. A descriptor that is not a socket is reported and
/// left alone. The loopback rule applies to these sockets too.
pub fn take_activated(allow_remote: bool) -> (Vec<Passed>, Vec<ListenerStatus>) {
    let origin = ListenerOrigin::SocketActivation;
    let fds: Vec<RawFd> = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect(),
        Err(e) => {
            return (
                Vec::new(),
                vec![ListenerStatus {
                    address: "LISTEN_FDS".into(),
                    origin,
                    error: Some(format!("invalid socket activation environment: {e}")),
                }],
            );
        }
    };
    let mut passed = Vec::new();
    let mut statuses = Vec::new();
    for fd in fds {
        match adopt(fd, allow_remote) {
            Ok(p) => passed.push(p),
            Err(e) => statuses.push(ListenerStatus {
                address: format!("fd {fd}"),
                origin,
                error: Some(e),
            }),
        }
    }
    (passed, statuses)
}

fn adopt(fd: RawFd, allow_remote: bool) -> Result<Passed, String> {
    // SAFETY: `ManuallyDrop` never closes the descriptor; fstat only looks.
    let probe = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let is_socket = probe.metadata().is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(format!(
            "fd {fd} is not a socket, though LISTEN_FDS says it is; leaving it alone"
        ));
    }
    // SAFETY: systemd passed this socket to this process (LISTEN_PID
    // matched) and nothing else in it owns it; it is adopted exactly once,
    // and dropping the listener closes it.
    let tcp = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    if let Ok(addr) = tcp.local_addr() {
        ListenAddr::Tcp(addr)
            .check_loopback(allow_remote)
            .map_err(|e| e.to_string())?;
        Ok(Passed::Tcp(tcp))
    } else {
        // Not an IP socket: a Unix one.
        // SAFETY: the descriptor moves from the TcpListener wrapper,
        // which gives up ownership, to the UnixListener.
        let unix = unsafe { std::os::unix::net::UnixListener::from_raw_fd(tcp.into_raw_fd()) };
        unix.local_addr()
            .map_err(|e| err("inspect", format!("fd {fd}"), &e))?;
        Ok(Passed::Unix(unix))
    }
}

/// Registers the passed sockets with tokio. Must run inside a runtime.
pub fn register_passed(passed: Vec<Passed>, into: &mut Bound) {
    for p in passed {
        let result = match p {
            Passed::Tcp(l) => l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
                .map(Listener::Tcp),
            Passed::Unix(l) => l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(l))
                .map(|listener| Listener::Unix {
                    listener,
                    owned_path: None,
                }),
        };
        into.record(
            result.map_err(|e| format!("register: {e}")),
            "a passed socket".into(),
            ListenerOrigin::SocketActivation,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_unix_and_localhost_addresses() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080"),
            Ok(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:80"),
            Ok(ListenAddr::Tcp("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("localhost:9"),
            Ok(ListenAddr::Tcp("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("/run/holdfast/holdfast.sock"),
            Ok(ListenAddr::Unix("/run/holdfast/holdfast.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:rel.sock"),
            Ok(ListenAddr::Unix("rel.sock".into()))
        );
        assert!(matches!(
            ListenAddr::parse("80"),
            Err(ListenError::Invalid(_))
        ));
        assert!(matches!(
            ListenAddr::parse("example:80"),
            Err(ListenError::Invalid(_))
        ));
        assert!(matches!(
            ListenAddr::parse("unix:"),
            Err(ListenError::Invalid(_))
        ));
    }

    #[test]
    fn non_loopback_needs_allow_remote() {
        let any = ListenAddr::parse("0.0.0.0:80").unwrap();
        assert_eq!(
            any.check_loopback(false),
            Err(ListenError::NotLoopback("0.0.0.0:80".into()))
        );
        assert_eq!(any.check_loopback(true), Ok(()));
        assert_eq!(
            ListenAddr::parse("[::1]:80").unwrap().check_loopback(false),
            Ok(())
        );
        assert_eq!(
            ListenAddr::parse("127.0.0.53:80")
                .unwrap()
                .check_loopback(false),
            Ok(())
        );
        assert_eq!(
            ListenAddr::parse("/x.sock").unwrap().check_loopback(false),
            Ok(())
        );
    }

    #[tokio::test]
    async fn unix_socket_is_root_only_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/holdfast/holdfast.sock");
        let first = bind(&ListenAddr::Unix(path.clone())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // A live socket is not taken over.
        let e = bind(&ListenAddr::Unix(path.clone())).unwrap_err();
        assert!(e.contains("another process is listening"), "{e}");
        // A stale one (its listener gone) is.
        drop(first);
        bind(&ListenAddr::Unix(path.clone())).unwrap();
        // A regular file is never replaced.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "x").unwrap();
        let e = bind(&ListenAddr::Unix(file.clone())).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "x");
    }

    #[tokio::test]
    async fn a_busy_port_is_reported_and_the_others_still_bind() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_addr = busy.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut bound = Bound::default();
        bind_all(
            &[
                ListenAddr::Tcp(busy_addr),
                ListenAddr::Unix(dir.path().join("s.sock")),
            ],
            ListenerOrigin::Configured,
            &mut bound,
        );
        let statuses = bound.statuses;
        assert_eq!(bound.listeners.len(), 1);
        assert!(
            statuses[0].error.as_deref().unwrap().contains("in use"),
            "{statuses:?}"
        );
        assert_eq!(statuses[1].error, None);
    }
}
