//! A small blocking HTTP/1.1 client for `holdfast status`: one GET over a
//! Unix socket or TCP, `Connection: close`, bounded in time and size. The
//! response parser is pure and handles `Content-Length`, chunked bodies and
//! read-to-close.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::listen::ListenAddr;

/// The largest response accepted (a status of many thousand items fits).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// The largest header section accepted.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {source} (is `holdfast serve` running? see --connect)")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: no complete answer within {}", crate::daemon::state::human_duration(*after))]
    Timeout { address: String, after: Duration },
    #[error("{address}: the answer is larger than {limit} bytes; refusing it")]
    TooLarge { address: String, limit: usize },
    #[error(
        "{address}: the socket is served by uid {uid}, not by root (or by you): refusing its answer; \
         another program may be impersonating holdfast"
    )]
    Untrusted { address: String, uid: u32 },
    #[error("{address}: malformed HTTP response: {why}")]
    Malformed { address: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Who may serve the Unix socket `holdfast status` reads: root (the daemon
/// runs as root), or the client's own user (a daemon a user runs on a fake
/// root for testing; that user could forge their own answers anyway).
pub fn trusted_server(server_uid: u32, client_euid: u32) -> bool {
    server_uid == 0 || server_uid == client_euid
}

/// `GET target` from the daemon at `addr`, all of it (connecting, sending,
/// reading) within `timeout`. Over a Unix socket the server's uid
/// (`SO_PEERCRED`) must pass [`trusted_server`]. Over TCP there is no peer
/// to check: the address is trusted as far as its port is (ports below 1024
/// need root to bind).
pub fn get(
    addr: &ListenAddr,
    target: &str,
    accept: &str,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let me = nix::unistd::geteuid().as_raw();
    request_from(addr, "GET", target, accept, timeout, &|uid| {
        trusted_server(uid, me)
    })
}

/// `POST target` (no body) to the daemon at `addr`, bounded like [`get`]:
/// `holdfast apply` and `rollback` while a daemon runs.
pub fn post(addr: &ListenAddr, target: &str, timeout: Duration) -> Result<Response, ClientError> {
    let me = nix::unistd::geteuid().as_raw();
    request_from(addr, "POST", target, "text/plain", timeout, &|uid| {
        trusted_server(uid, me)
    })
}

fn request_from(
    addr: &ListenAddr,
    method: &str,
    target: &str,
    accept: &str,
    timeout: Duration,
    trusted: &dyn Fn(u32) -> bool,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let address = addr.to_string();
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nUser-Agent: holdfast/{}\r\n{length}Connection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let connect = |source| ClientError::Connect {
        address: address.clone(),
        source,
    };
    let io = |source: std::io::Error| ClientError::Io {
        address: address.clone(),
        source,
    };
    let raw = match addr {
        ListenAddr::Unix(path) => {
            let s = UnixStream::connect(path).map_err(connect)?;
            let uid = peer_uid(&s).map_err(io)?;
            if !trusted(uid) {
                return Err(ClientError::Untrusted { address, uid });
            }
            exchange(s, &request, deadline)
        }
        ListenAddr::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, timeout).map_err(connect)?;
            exchange(s, &request, deadline)
        }
    };
    let raw = raw.map_err(|e| match e {
        Exchange::Timeout => ClientError::Timeout {
            address: address.clone(),
            after: timeout,
        },
        Exchange::TooLarge => ClientError::TooLarge {
            address: address.clone(),
            limit: MAX_RESPONSE,
        },
        Exchange::Io(e) => io(e),
    })?;
    parse_response(&raw).map_err(|why| ClientError::Malformed { address, why })
}

/// The uid of the process that created the socket's server end
/// (`SO_PEERCRED`, recorded by the kernel at `listen`/`connect`).
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    #[expect(clippy::cast_possible_truncation, reason = "a ucred is 12 bytes")]
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly
    // sized and aligned ucred, on a descriptor `s` owns.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(std::io::Error::other("SO_PEERCRED returned a short answer"));
    }
    Ok(cred.uid)
}

/// A connected stream whose reads and writes can be bounded in time.
trait Stream: Read + Write {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Stream for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

enum Exchange {
    Timeout,
    TooLarge,
    Io(std::io::Error),
}

/// Sends the request and reads until the server closes, all before
/// `deadline` (each read waits only for what is left of it, so a server
/// trickling a byte at a time cannot stretch the wait) and at most
/// `MAX_RESPONSE` bytes.
fn exchange<S: Stream>(mut s: S, request: &str, deadline: Instant) -> Result<Vec<u8>, Exchange> {
    use std::io::ErrorKind;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(Exchange::Timeout)
    };
    let timed_out = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Exchange::Timeout,
        _ => Exchange::Io(e),
    };
    s.set_timeouts(left()?).map_err(Exchange::Io)?;
    s.write_all(request.as_bytes()).map_err(timed_out)?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        s.set_timeouts(left()?).map_err(Exchange::Io)?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                if raw.len() + n > MAX_RESPONSE {
                    return Err(Exchange::TooLarge);
                }
                raw.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
}

/// Parses a complete HTTP/1.1 response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    if end > MAX_HEAD {
        return Err(format!("headers larger than {MAX_HEAD} bytes"));
    }
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not HTTP/1.x: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!("body cut short: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { body, ..response })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        // A chunk cannot be larger than what was read: anything bigger
        // (`ffffffffffffffff` included) is refused before any arithmetic.
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|s| *s <= MAX_RESPONSE)
            .ok_or_else(|| {
                format!(
                    "bad chunk size {:?}",
                    crate::host::escape_control(size_text)
                )
            })?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size || rest.len() - size < 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_chunked_and_close_delimited_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}extra",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(r.header("Content-Type"), Some("application/json"));

        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nholf\r\n5;x=y\r\nast!!\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"holfast!!");

        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nstarting").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"starting"[..]));
    }

    #[test]
    fn rejects_what_is_not_http() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn a_huge_chunk_size_is_an_error_not_a_panic() {
        for size in [
            "ffffffffffffffff",
            "fffffffffffffffe",
            "10000000000000000",
            "4000001",
        ] {
            let raw = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\n{{}}\r\n0\r\n\r\n"
            );
            let err = parse_response(raw.as_bytes()).unwrap_err();
            assert!(err.contains("bad chunk size"), "{size}: {err}");
        }
        let err = parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")
            .unwrap_err();
        assert_eq!(err, "chunk cut short");
    }

    #[test]
    fn oversized_headers_are_refused() {
        let mut raw = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(parse_response(&raw).unwrap_err().contains("headers larger"));
    }

    #[test]
    fn only_root_or_the_client_itself_may_serve_the_socket() {
        assert!(trusted_server(0, 0));
        assert!(trusted_server(0, 1000));
        assert!(trusted_server(1000, 1000));
        assert!(!trusted_server(1000, 0));
        assert!(!trusted_server(65534, 1000));
    }

    /// A fake daemon on a Unix socket: runs `serve` on the first connection.
    fn fake_server(
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, ListenAddr, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s);
        });
        (dir, ListenAddr::Unix(path), handle)
    }

    const FORGED: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"compliant\":true}";

    #[test]
    fn an_answer_from_an_untrusted_uid_is_refused() {
        let (_dir, addr, server) = fake_server(|mut s| {
            let _ = s.write_all(FORGED);
        });
        let me = nix::unistd::geteuid().as_raw();
        // The fake server runs as this test's uid; a client that trusts only
        // another uid must refuse it, naming the uid it saw.
        let err = request_from(
            &addr,
            "GET",
            "/status",
            "application/json",
            Duration::from_secs(5),
            &|uid| uid == me.wrapping_add(1),
        )
        .unwrap_err();
        assert!(
            matches!(err, ClientError::Untrusted { uid, .. } if uid == me),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("served by uid {me}")),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn the_timeout_bounds_the_whole_answer_not_each_read() {
        let (_dir, addr, server) = fake_server(|mut s| {
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            // A byte every 100 ms for 20 s: each read is quick, the answer
            // never completes within the client's 1 s.
            for b in FORGED.iter().cycle().take(200) {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let err = get(&addr, "/status", "application/json", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("no complete answer within 1s"),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn an_endless_answer_is_cut_at_the_size_limit() {
        let (_dir, addr, server) = fake_server(|mut s| {
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            let block = vec![b'x'; 1 << 20];
            while s.write_all(&block).is_ok() {}
        });
        let err = get(
            &addr,
            "/status",
            "application/json",
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_trusted_server_is_read_in_full() {
        let (_dir, addr, server) = fake_server(|mut s| {
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(FORGED);
        });
        let r = get(&addr, "/status", "application/json", Duration::from_secs(5)).unwrap();
        assert_eq!(r.body, b"{\"compliant\":true}");
        server.join().unwrap();
    }
}
