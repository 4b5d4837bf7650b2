//! The production [`SystemdClient`]: systemd's D-Bus API, through zbus.
//! Used only when the host root is `/` and systemd is PID 1. No process is
//! spawned: each request is one method call.
//!
//! - The connection is the system bus; as root, systemd's private socket
//!   (`/run/systemd/private`, peer-to-peer, what `systemctl` uses as root)
//!   when the bus cannot be reached (see [`connect`] for why not first).
//! - A unit's properties are one `GetAll` per interface (`Unit`, and the
//!   type's `Service` or `Slice`) on the unit's object path, which is
//!   computed, not asked for.
//! - `StartUnit`/`RestartUnit` return a job; completion is the `JobRemoved`
//!   signal, listened for *before* the call (a job may end before the reply
//!   is read) and waited for with a deadline.
//! - Signals (`PropertiesChanged` on units, `Reloading`, `UnitFilesChanged`,
//!   `JobRemoved`, `UnitNew`) reach [`SystemdClient::subscribe`]'s sink from
//!   a thread with its own connection, which reconnects when systemd goes
//!   away (a daemon-reexec, say) and then reports [`UnitEvent::Lost`].
//!
//! # Caveats
//! - A broken connection is dropped and made again at the next request; the
//!   request that saw it fails (its item fails, and is retried with backoff).

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{MatchRule, Message};

use super::{
    EventSink, PropValue, SystemdClient, SystemdError, UnitEvent, UnitInfo, UnitProperty,
    default_limit_nofile, type_interface, unit_from_object_path, unit_object_path,
};
use crate::host::HostRoot;
use crate::limits::LimitValue;

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// How long one method call may take. Below the daemon's watchdog (30 s),
/// so that a systemd that hangs fails a request instead of the daemon.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a start or restart job may run before holdfast stops waiting.
const JOB_DEADLINE: Duration = Duration::from_secs(20);
/// How long a restarted service's new process may take to exec.
const EXEC_DEADLINE: Duration = Duration::from_secs(10);
/// How many units' properties a pass asks for at once (two `GetAll` calls
/// each).
const UNIT_WINDOW: usize = 4;
/// Signals queued for the event thread before zbus makes the socket wait.
const SIGNAL_QUEUE: usize = 1024;

/// One entry of the manager's `ListUnits` reply, as D-Bus types it
/// (`a(ssssssouso)`): name, description, load state, active state, sub
/// state, followed unit, object path, job id, job type, job path.
pub type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// systemd over D-Bus. Connects on first use, and again after a broken
/// connection.
#[derive(Debug)]
pub struct DbusSystemd {
    route: Route,
    conn: Mutex<Option<Connection>>,
}

/// Where the client finds systemd.
#[derive(Debug, Clone)]
struct Route {
    /// The system bus first (the host's own systemd, root `/`).
    bus_first: bool,
    /// systemd's private socket: the fallback when the bus is down (early
    /// boot, a host without dbus-daemon), or the only way for a double of
    /// systemd under another root (the tests).
    private_socket: PathBuf,
}

impl DbusSystemd {
    /// A client for the systemd of `host`. On the real root it talks over
    /// the system bus, and over systemd's private socket only when the bus
    /// cannot be reached; under any other root (a double of systemd in the
    /// tests) only over that root's private socket.
    pub fn new(host: &HostRoot) -> DbusSystemd {
        DbusSystemd {
            route: Route {
                bus_first: host.is_this_machine(),
                private_socket: host.path("run/systemd/private"),
            },
            conn: Mutex::new(None),
        }
    }

    fn connection(&self, request: &str) -> Result<Connection, SystemdError> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.route).map_err(|e| SystemdError::new(request, e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets a connection that failed below D-Bus (the socket), so that
    /// the next request makes a new one.
    fn drop_connection(&self) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// One method call on systemd; `request` names it in errors.
    fn call<B, R>(
        &self,
        request: &str,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> Result<R, SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let conn = self.connection(request)?;
        let reply = conn
            .call_method(Some(DESTINATION), path, Some(interface), method, body)
            .map_err(|e| {
                if !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(_)) {
                    self.drop_connection();
                }
                SystemdError::new(request, describe(&e))
            })?;
        reply
            .body()
            .deserialize::<R>()
            .map_err(|e| SystemdError::new(request, format!("unexpected reply: {e}")))
    }

    fn get_all(
        &self,
        unit: &str,
        path: &str,
        interface: &str,
    ) -> Result<Vec<(String, PropValue)>, SystemdError> {
        let short = interface.rsplit('.').next().unwrap_or(interface);
        let props: HashMap<String, OwnedValue> = self.call(
            &format!("GetAll {short} {unit}"),
            path,
            PROPERTIES,
            "GetAll",
            &(interface,),
        )?;
        Ok(props
            .into_iter()
            .filter_map(|(k, v)| prop_value(&v).map(|v| (k, v)))
            .collect())
    }

    /// [`SystemdClient::unit`] of each unit, [`UNIT_WINDOW`] units at a
    /// time: every `GetAll` of a window is sent before any reply is
    /// awaited, so systemd answers them back to back instead of waiting on
    /// a round trip each (one batched client, as `systemctl show UNIT...`
    /// is, without its wait between units). A unit's replies become its
    /// `UnitInfo` as soon as both are in: a service's properties are some
    /// 250 values, which a pass should not hold for every unit at once.
    fn units_windowed(&self, units: &[&str]) -> Vec<Result<UnitInfo, SystemdError>> {
        let conn = match self.connection("GetAll") {
            Ok(c) => c,
            Err(e) => return units.iter().map(|_| Err(e.clone())).collect(),
        };
        let conn = conn.inner();
        let broken = std::cell::Cell::new(false);
        let mut out = Vec::with_capacity(units.len());
        for window in units.chunks(UNIT_WINDOW) {
            let infos = window.iter().map(|&unit| {
                let broken = &broken;
                async move {
                    let more = async {
                        match type_interface(unit) {
                            Some(interface) => {
                                Some(get_all_async(conn, unit, interface, broken).await)
                            }
                            None => None,
                        }
                    };
                    let props = get_all_async(conn, unit, UNIT, broken);
                    let (props, more) = futures_lite::future::zip(props, more).await;
                    unit_info(props?, more)
                }
            });
            out.extend(join_all(infos.collect()));
        }
        if broken.get() {
            self.drop_connection();
        }
        out
    }

    fn manager_u64(&self, name: &str) -> Result<u64, SystemdError> {
        let request = format!("Get {name}");
        let v: OwnedValue =
            self.call(&request, MANAGER_PATH, PROPERTIES, "Get", &(MANAGER, name))?;
        u64::try_from(&*v).map_err(|e| SystemdError::new(request, format!("not a number: {e}")))
    }

    /// Runs `StartUnit` or `RestartUnit` and waits for its job to end.
    fn run_job(&self, method: &str, unit: &str) -> Result<(), SystemdError> {
        let request = format!("{method} {unit}");
        let conn = self.connection(&request)?;
        let fail = |e: zbus::Error| SystemdError::new(&request, describe(&e));
        // Listen before asking: a job can end before its reply is read.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .path(MANAGER_PATH)
            .map_err(fail)?
            .interface(MANAGER)
            .map_err(fail)?
            .member("JobRemoved")
            .map_err(fail)?
            .build();
        let mut removed = async_io::block_on(zbus::MessageStream::for_match_rule(
            rule,
            conn.inner(),
            Some(SIGNAL_QUEUE),
        ))
        .map_err(fail)?;
        if conn.is_bus() {
            // On the bus the manager sends job signals only to subscribers
            // (on its private socket, to everyone). Already subscribed is
            // fine.
            let _: Result<(), _> = self.call(&request, MANAGER_PATH, MANAGER, "Subscribe", &());
        }
        let job: OwnedObjectPath =
            self.call(&request, MANAGER_PATH, MANAGER, method, &(unit, "replace"))?;
        let wait = async {
            while let Some(msg) = removed.next().await {
                let Ok(msg) = msg else { continue };
                let Ok((_, path, _, result)) = msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Ok(result);
                }
            }
            Err("the connection to systemd closed".to_string())
        };
        let deadline = async {
            async_io::Timer::after(JOB_DEADLINE).await;
            Err(format!(
                "its job {} did not finish within {} s",
                job.as_str(),
                JOB_DEADLINE.as_secs()
            ))
        };
        match async_io::block_on(futures_lite::future::or(wait, deadline)) {
            Ok(result) if result == "done" => Ok(()),
            Ok(result) => Err(SystemdError::new(request, format!("job {result}"))),
            Err(why) => Err(SystemdError::new(request, why)),
        }
    }

    /// After a restart, waits (at most `limit`) until the unit's main
    /// process has exec'd its program and settled. The job of a simple
    /// service ends once systemd has forked; until the exec the child is
    /// still systemd's ([`still_systemds`]), with systemd's environment and
    /// capabilities, and for a moment after it the kernel is still laying
    /// out the new environment (/proc/PID/environ reads empty or short).
    /// Verifying then would report transient drift, so the wait ends when
    /// the name is the program's and two reads of its environment 100 ms
    /// apart agree. This client only ever serves the host it runs on, so
    /// /proc is the real one.
    fn wait_for_exec(&self, unit: &str, limit: Duration) {
        let host = HostRoot::new("/");
        let deadline = Instant::now() + limit;
        let pause = Duration::from_millis(100);
        while Instant::now() < deadline {
            let Ok(info) = self.unit(unit) else {
                return;
            };
            let Some(pid) = info.main_pid else {
                tracing::debug!(unit, "after the restart: no main process");
                return;
            };
            if info.awaits_handoff() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let read = |file: &str| std::fs::read(host.path(&format!("proc/{pid}/{file}"))).ok();
            let Some(comm) = read("comm") else {
                tracing::debug!(unit, pid, "after the restart: the main process is gone");
                return;
            };
            tracing::debug!(unit, pid, comm = %String::from_utf8_lossy(&comm).trim_end(), "after the restart");
            if !still_systemds(&comm) {
                let first = read("environ");
                std::thread::sleep(pause);
                if first.as_ref().is_some_and(|e| !e.is_empty()) && read("environ") == first {
                    return;
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a unit's main process, by its `/proc/PID/comm`, is still
/// systemd's and not yet the unit's program: the forked manager (`systemd`
/// until it renames itself, then `(prog)` until it execs) or, since systemd
/// 256, the executor it execs first (`/usr/lib/systemd/systemd-executor`,
/// whose name the kernel cuts to 15 bytes), which sets up the sandbox and
/// then execs the program. Judging any of them would judge systemd: no
/// seccomp filter, uid 0, every capability. (A unit whose program is
/// systemd itself, `user@.service`, is judged once the wait runs out.)
fn still_systemds(comm: &[u8]) -> bool {
    let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
    comm.starts_with(b"(") || comm == b"systemd" || comm == b"systemd-executo"
}

/// A connection to systemd ([`Route`]): the system bus, else (as root)
/// the private socket.
///
/// The bus comes first because it is the path that holds up: in the VM
/// suite (systemd 252 under TCG), four runs in six of the posture and
/// rollback scenarios had a method call on a fresh private-socket
/// connection go unanswered until its 20 s timeout (systemd idle, nothing
/// queued on either side of the socket); over the bus, none in every run
/// since. The private socket stays for when there is no bus, with a
/// warm-up ping ([`warm_up`]), after which 15 runs had no stall either
/// (why it helps is not known).
fn connect(route: &Route) -> Result<Connection, String> {
    let bus_error = if route.bus_first {
        match connect_bus() {
            Ok(c) => return Ok(c),
            Err(e) => format!("the system bus: {e}"),
        }
    } else {
        String::new()
    };
    let private_socket = &route.private_socket;
    if nix::unistd::geteuid().is_root() && private_socket.exists() {
        let stream = UnixStream::connect(private_socket)
            .map_err(|e| format!("systemd's private socket {}: {e}", private_socket.display()))?;
        return connect_private(stream)
            .map_err(|e| format!("systemd's private socket {}: {e}", private_socket.display()));
    }
    if route.bus_first {
        Err(bus_error)
    } else {
        Err(format!(
            "systemd's private socket {} is not there (or holdfast is not root)",
            private_socket.display()
        ))
    }
}

/// The system bus's socket when its address is a plain path (the default,
/// or `unix:path=` in `DBUS_SYSTEM_BUS_ADDRESS`); `None` for any other
/// address, which zbus resolves itself.
fn system_bus_path() -> Option<PathBuf> {
    match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
        Err(_) => Some(PathBuf::from("/run/dbus/system_bus_socket")),
        Ok(address) => address
            .strip_prefix("unix:path=")
            .filter(|p| !p.contains([',', ';', '%']))
            .map(PathBuf::from),
    }
}

/// The system bus. The socket is connected here and handed to zbus, which
/// authenticates and says `Hello`: zbus's own connect step runs on a thread
/// pool (the `blocking` crate) whose idle thread then wakes twice a second
/// for the daemon's whole life, which an idle daemon must not do.
fn connect_bus() -> Result<Connection, String> {
    let Some(path) = system_bus_path() else {
        return zbus::blocking::connection::Builder::system()
            .and_then(|b| b.method_timeout(CALL_TIMEOUT).build())
            .map_err(|e| describe(&e));
    };
    let stream = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    zbus::blocking::connection::Builder::unix_stream(stream)
        .method_timeout(CALL_TIMEOUT)
        .build()
        .map_err(|e| describe(&e))
}

/// systemd's private socket, peer-to-peer. Two things differ from zbus's
/// own peer-to-peer client, both because of one fact: systemd marks every
/// message it sends there with the sender `org.freedesktop.systemd1`, a
/// well-known name where D-Bus allows only a unique one (`:1.42`), and zbus
/// (5.13) accepts such a message and then panics reading its sender. So the
/// SASL handshake (EXTERNAL, as root) is done here, and the authenticated
/// socket's reader ([`PrivateRead`]) hands zbus each message with that
/// sender rewritten, in place and at the same length, as the unique name
/// `:rg.freedesktop.systemd1`. Nothing holdfast reads depends on the
/// sender.
fn connect_private(mut stream: UnixStream) -> Result<Connection, String> {
    let guid = authenticate(&mut stream).map_err(|e| format!("authentication: {e}"))?;
    let stream =
        Arc::new(async_io::Async::new(stream).map_err(|e| format!("non-blocking socket: {e}"))?);
    let split = zbus::connection::socket::BoxedSplit::new(
        Box::new(PrivateRead {
            inner: Arc::clone(&stream),
            pending: Vec::new(),
            ready: Vec::new(),
        }),
        Box::new(stream),
    );
    let conn = zbus::blocking::connection::Builder::authenticated_socket(split, guid.as_str())
        .map(|b| b.p2p().method_timeout(CALL_TIMEOUT))
        .and_then(zbus::blocking::connection::Builder::build)
        .map_err(|e| describe(&e))?;
    warm_up(&conn)?;
    Ok(conn)
}

/// How long the first ping on a new private connection may go unanswered
/// before it is sent again.
const PING_PATIENCE: Duration = Duration::from_millis(500);

/// Pings systemd until it answers (a few tries), so that the connection
/// is known to be served before the first real call. In the VM suite a
/// fresh private connection's first call sometimes went unanswered (see
/// [`connect`]); with this ping first it did not happen in 15 runs, and no
/// ping needed a second try, so the cause is still open: if a first ping
/// goes unanswered, the next one is sent and its bytes wake the peer.
fn warm_up(conn: &Connection) -> Result<(), String> {
    for attempt in 1..=4 {
        // The ping's answer, or `None` once the patience is used up.
        let ping = async {
            let answer = conn
                .inner()
                .call_method(
                    Some(DESTINATION),
                    MANAGER_PATH,
                    Some("org.freedesktop.DBus.Peer"),
                    "Ping",
                    &(),
                )
                .await;
            Some(answer.map(|_| ()).map_err(|e| describe(&e)))
        };
        let patience = async {
            async_io::Timer::after(PING_PATIENCE).await;
            None
        };
        match async_io::block_on(futures_lite::future::or(ping, patience)) {
            Some(Ok(())) => {
                if attempt > 1 {
                    tracing::info!(
                        "systemd's private socket answered only ping {attempt} of a new connection"
                    );
                }
                return Ok(());
            }
            Some(Err(why)) => return Err(format!("ping: {why}")),
            None => {}
        }
    }
    Err(format!(
        "ping: no answer within {} ms, four times",
        PING_PATIENCE.as_millis() * 4
    ))
}

/// The client's side of the D-Bus SASL handshake with `EXTERNAL` (the
/// kernel tells the server who we are): returns the server's GUID. No unix
/// descriptors are negotiated; holdfast passes none.
fn authenticate(stream: &mut UnixStream) -> std::io::Result<String> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    let uid = nix::unistd::geteuid().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    stream.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
    // The server says nothing more until BEGIN: reading the line byte by
    // byte cannot take a message's bytes.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if stream.read(&mut byte)? == 0 || line.len() > 512 {
            return Err(std::io::Error::other("the server closed the handshake"));
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    let guid = line
        .trim_end()
        .strip_prefix("OK ")
        .ok_or_else(|| std::io::Error::other(format!("refused: {}", line.trim_end())))?
        .to_string();
    stream.write_all(b"BEGIN\r\n")?;
    stream.set_read_timeout(None)?;
    Ok(guid)
}

/// The reading half of systemd's private socket: whole messages, each with
/// a sender that is not a unique name rewritten ([`unique_sender`]).
#[derive(Debug)]
struct PrivateRead {
    inner: Arc<async_io::Async<UnixStream>>,
    /// Bytes read that do not make a whole message yet.
    pending: Vec<u8>,
    /// Whole, rewritten messages not yet handed to zbus.
    ready: Vec<u8>,
}

#[async_trait::async_trait]
impl zbus::connection::socket::ReadHalf for PrivateRead {
    async fn recvmsg(
        &mut self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
        while self.ready.is_empty() {
            if let Some(len) = message_len(&self.pending)?
                && self.pending.len() >= len
            {
                let mut message: Vec<u8> = self.pending.drain(..len).collect();
                unique_sender(&mut message);
                self.ready = message;
                break;
            }
            let mut chunk = [0u8; 8192];
            let (n, _fds) =
                zbus::connection::socket::ReadHalf::recvmsg(&mut self.inner, &mut chunk).await?;
            if n == 0 {
                return Ok((0, Vec::new()));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
        let n = buf.len().min(self.ready.len());
        buf[..n].copy_from_slice(&self.ready[..n]);
        self.ready.drain(..n);
        Ok((n, Vec::new()))
    }
}

/// The whole length of the message `bytes` starts with, once its fixed
/// header (16 bytes) is there. Pure.
fn message_len(bytes: &[u8]) -> std::io::Result<Option<usize>> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let little = match bytes[0] {
        b'l' => true,
        b'B' => false,
        other => {
            return Err(std::io::Error::other(format!(
                "not a D-Bus message (endianness {other:#x})"
            )));
        }
    };
    let u32_at = |at: usize| {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let body = u32_at(4) as usize;
    let fields = u32_at(12) as usize;
    let header = (16 + fields).next_multiple_of(8);
    Ok(Some(header + body))
}

/// Rewrites, in place, a sender header field that is not a unique name
/// (systemd's `org.freedesktop.systemd1`) into one of the same length
/// (`:rg.freedesktop.systemd1`), so that the message's layout is unchanged.
/// A message it cannot walk is left as it is. Pure.
fn unique_sender(message: &mut [u8]) {
    const SENDER: u8 = 7;
    let Ok(Some(_)) = message_len(message) else {
        return;
    };
    let little = message[0] == b'l';
    let u32_at = |m: &[u8], at: usize| -> Option<usize> {
        let b: [u8; 4] = m.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        } as usize)
    };
    let Some(fields_len) = u32_at(message, 12) else {
        return;
    };
    let end = (16 + fields_len).min(message.len());
    let mut pos = 16;
    while pos < end {
        pos = pos.next_multiple_of(8);
        let (Some(&code), Some(&sig_len)) = (message.get(pos), message.get(pos + 1)) else {
            return;
        };
        let sig_start = pos + 2;
        let Some(sig) = message.get(sig_start..sig_start + usize::from(sig_len)) else {
            return;
        };
        let sig = sig.to_vec();
        pos = sig_start + usize::from(sig_len) + 1;
        match sig.as_slice() {
            b"s" | b"o" => {
                pos = pos.next_multiple_of(4);
                let Some(len) = u32_at(message, pos) else {
                    return;
                };
                let start = pos + 4;
                if code == SENDER
                    && sig == b"s"
                    && let Some(name) = message.get_mut(start..start + len)
                    && name.first().is_some_and(|b| *b != b':')
                {
                    name[0] = b':';
                }
                pos = start + len + 1;
            }
            b"g" => {
                let Some(&len) = message.get(pos) else {
                    return;
                };
                pos += 1 + usize::from(len) + 1;
            }
            b"u" => pos = pos.next_multiple_of(4) + 4,
            _ => return,
        }
    }
}

/// A zbus error as a sentence: a D-Bus error's own message when it has one.
fn describe(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(text), _) => format!("{text} ({})", name.as_str()),
        zbus::Error::MethodError(name, None, _) => name.as_str().to_string(),
        other => other.to_string(),
    }
}

/// One `GetAll` on `conn`, the properties kept as they arrive; `broken` is
/// set when the connection itself failed (not systemd's answer).
async fn get_all_async(
    conn: &zbus::Connection,
    unit: &str,
    interface: &str,
    broken: &std::cell::Cell<bool>,
) -> Result<Vec<(String, PropValue)>, SystemdError> {
    let short = interface.rsplit('.').next().unwrap_or(interface);
    let request = || format!("GetAll {short} {unit}");
    let path = unit_object_path(unit);
    let reply = conn
        .call_method(
            Some(DESTINATION),
            path.as_str(),
            Some(PROPERTIES),
            "GetAll",
            &(interface,),
        )
        .await
        .map_err(|e| {
            if !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(_)) {
                broken.set(true);
            }
            SystemdError::new(request(), describe(&e))
        })?;
    let props: HashMap<String, OwnedValue> = reply
        .body()
        .deserialize()
        .map_err(|e| SystemdError::new(request(), format!("unexpected reply: {e}")))?;
    Ok(props
        .into_iter()
        .filter_map(|(k, v)| prop_value(&v).map(|v| (k, v)))
        .collect())
}

/// A unit's view from its `Unit` properties and, for a type with an
/// interface of its own, that interface's.
fn unit_info(
    mut props: Vec<(String, PropValue)>,
    more: Option<Result<Vec<(String, PropValue)>, SystemdError>>,
) -> Result<UnitInfo, SystemdError> {
    match more {
        Some(Ok(more)) => props.extend(more),
        // A unit that is not installed has no type properties to speak
        // of; its LoadState says why.
        Some(Err(_))
            if props
                .iter()
                .any(|(k, v)| k == "LoadState" && *v != PropValue::Str("loaded".into())) => {}
        Some(Err(e)) => return Err(e),
        None => {}
    }
    Ok(UnitInfo::from_properties(props))
}

/// Runs futures side by side on this thread until all are done; their
/// outputs in their order.
fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    async_io::block_on(std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }));
    done.into_iter().flatten().collect()
}

/// The property types holdfast reads; anything else is skipped.
fn prop_value(v: &Value<'_>) -> Option<PropValue> {
    Some(match v {
        Value::Str(s) => PropValue::Str(s.to_string()),
        Value::ObjectPath(p) => PropValue::Str(p.to_string()),
        Value::U64(n) => PropValue::U64(*n),
        Value::U32(n) => PropValue::U32(*n),
        Value::Bool(b) => PropValue::Bool(*b),
        Value::Array(a) => PropValue::Strs(
            a.iter()
                .filter_map(|x| match x {
                    Value::Str(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
        ),
        _ => return None,
    })
}

impl SystemdClient for DbusSystemd {
    fn unit(&self, unit: &str) -> Result<UnitInfo, SystemdError> {
        let path = unit_object_path(unit);
        let props = self.get_all(unit, &path, UNIT)?;
        let more = type_interface(unit).map(|interface| self.get_all(unit, &path, interface));
        unit_info(props, more)
    }

    fn units(&self, units: &[&str]) -> Vec<Result<UnitInfo, SystemdError>> {
        self.units_windowed(units)
    }

    fn default_limit_nofile(&self) -> Result<Option<(LimitValue, LimitValue)>, SystemdError> {
        let soft = self.manager_u64("DefaultLimitNOFILESoft")?;
        let hard = self.manager_u64("DefaultLimitNOFILE")?;
        Ok(Some(default_limit_nofile(soft, hard)))
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        // The reply comes when the reload is done.
        self.call("Reload", MANAGER_PATH, MANAGER, "Reload", &())
    }

    fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.run_job("StartUnit", unit)
    }

    fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.run_job("StopUnit", unit)
    }

    fn set_properties_runtime(
        &self,
        unit: &str,
        assignments: &[String],
    ) -> Result<(), SystemdError> {
        let request = format!("SetUnitProperties {unit} {}", assignments.join(" "));
        let props = assignments
            .iter()
            .map(|a| UnitProperty::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SystemdError::new(&request, e))?;
        let body: Vec<(&str, Value<'_>)> = props
            .iter()
            .map(|p| (p.name(), Value::U64(p.value())))
            .collect();
        self.call(
            &request,
            MANAGER_PATH,
            MANAGER,
            "SetUnitProperties",
            &(unit, true, body),
        )
    }

    fn running_services(&self) -> Result<Vec<String>, SystemdError> {
        let units: Vec<ListedUnit> =
            self.call("ListUnits", MANAGER_PATH, MANAGER, "ListUnits", &())?;
        Ok(units
            .into_iter()
            .filter(|u| u.0.ends_with(".service") && u.4 == "running")
            .map(|u| u.0)
            .collect())
    }

    fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.run_job("RestartUnit", unit)?;
        self.wait_for_exec(unit, EXEC_DEADLINE);
        Ok(())
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), SystemdError> {
        let route = self.route.clone();
        std::thread::Builder::new()
            .name("holdfast-systemd".into())
            .spawn(move || listen_forever(&route, &sink))
            .map(|_| ())
            .map_err(|e| SystemdError::new("Subscribe", format!("cannot start a thread: {e}")))
    }
}

/// The event thread: a connection of its own, `Subscribe()`, and every
/// signal of the manager and its units turned into [`UnitEvent`]s. When the
/// connection breaks it tries again (1 s, doubling to a minute) and, once
/// connected, reports that announcements may have been missed.
fn listen_forever(route: &Route, sink: &EventSink) {
    let mut pause = None;
    let mut lost = false;
    loop {
        match listen(route, sink, lost) {
            Ok(()) => return,
            Err(e) => {
                let wait = next_pause(pause, e.subscribed);
                tracing::warn!(
                    "systemd's signals: {}; trying again in {} s (the rescan covers meanwhile)",
                    e.why,
                    wait.as_secs()
                );
                pause = Some(wait);
                lost = true;
            }
        }
        if let Some(wait) = pause {
            std::thread::sleep(wait);
        }
    }
}

/// The first pause before connecting again, and the longest.
const LISTEN_PAUSE_FIRST: Duration = Duration::from_secs(1);
const LISTEN_PAUSE_MAX: Duration = Duration::from_secs(60);

/// How long to wait before connecting again: 1 s after a connection that
/// worked (subscribed, signals flowing: each outage starts afresh), else
/// twice the last pause, up to 60 s (systemd or the bus stays away).
fn next_pause(last: Option<Duration>, subscribed: bool) -> Duration {
    match last {
        Some(last) if !subscribed => (last * 2).min(LISTEN_PAUSE_MAX),
        _ => LISTEN_PAUSE_FIRST,
    }
}

/// Why the signals stopped, and whether that connection had worked.
struct ListenError {
    why: String,
    subscribed: bool,
}

/// One connection's worth of signals. `Ok` when the sink wants no more.
fn listen(route: &Route, sink: &EventSink, lost: bool) -> Result<(), ListenError> {
    let not_yet = |why: String| ListenError {
        why,
        subscribed: false,
    };
    let conn = connect(route).map_err(not_yet)?;
    let mut rule = MatchRule::builder().msg_type(MessageType::Signal);
    rule = rule
        .path_namespace(MANAGER_PATH)
        .map_err(|e| not_yet(describe(&e)))?;
    if conn.is_bus() {
        rule = rule
            .sender(DESTINATION)
            .map_err(|e| not_yet(describe(&e)))?;
    }
    let signals = MessageIterator::for_match_rule(rule.build(), &conn, Some(SIGNAL_QUEUE))
        .map_err(|e| not_yet(describe(&e)))?;
    // Without Subscribe() the manager sends no unit signals on the bus; on
    // the private socket it sends them anyway, and the call is harmless.
    conn.call_method(
        Some(DESTINATION),
        MANAGER_PATH,
        Some(MANAGER),
        "Subscribe",
        &(),
    )
    .map_err(|e| not_yet(format!("Subscribe: {}", describe(&e))))?;
    if lost && !sink(UnitEvent::Lost) {
        return Ok(());
    }
    let gone = |why: String| ListenError {
        why,
        subscribed: true,
    };
    for msg in signals {
        let msg = msg.map_err(|e| gone(describe(&e)))?;
        if let Some(event) = unit_event(&msg)
            && !sink(event)
        {
            return Ok(());
        }
    }
    Err(gone("the connection to systemd closed".into()))
}

/// What a signal from systemd says about units, if anything.
fn unit_event(msg: &Message) -> Option<UnitEvent> {
    let header = msg.header();
    let member = header.member()?.as_str();
    let body = msg.body();
    match member {
        "PropertiesChanged" => {
            unit_from_object_path(header.path()?.as_str()).map(UnitEvent::Changed)
        }
        "Reloading" => body.deserialize::<bool>().ok().map(UnitEvent::Reloading),
        "UnitFilesChanged" => Some(UnitEvent::UnitFilesChanged),
        "JobRemoved" => body
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
            .ok()
            .map(|(_, _, unit, _)| UnitEvent::Changed(unit)),
        "UnitNew" | "UnitRemoved" => body
            .deserialize::<(String, OwnedObjectPath)>()
            .ok()
            .map(|(unit, _)| UnitEvent::Changed(unit)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_pause_doubles_while_systemd_stays_away_and_starts_again_after_a_working_connection()
     {
        let s = Duration::from_secs;
        // Five outages, each a connection that worked and then closed: 1 s
        // before each reconnect, never 16 s by the fifth.
        let mut pause = None;
        for _ in 0..5 {
            pause = Some(next_pause(pause, true));
            assert_eq!(pause, Some(s(1)));
        }
        // One long outage: connecting fails again and again.
        let waits: Vec<Duration> = (0..8)
            .scan(None, |p, _| {
                *p = Some(next_pause(*p, false));
                *p
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60].map(s));
        // Back after a long outage: the next one starts at 1 s again.
        assert_eq!(next_pause(Some(s(60)), true), s(1));
    }

    /// Between systemd's fork and the unit's program there are systemd's
    /// own: the forked manager, before and after it renames itself, and, on
    /// 256 and later, the executor (seen on Debian 13's 257 as
    /// `systemd-executo`; under TCG the fork kept PID 1's name long enough
    /// to be judged).
    #[test]
    fn a_main_process_is_the_programs_only_once_systemd_has_execd_it() {
        assert!(still_systemds(b"systemd\n"));
        assert!(still_systemds(b"(sleep)\n"));
        assert!(still_systemds(b"systemd-executo\n"));
        assert!(still_systemds(b"systemd-executo"));
        assert!(!still_systemds(b"sleep\n"));
        assert!(!still_systemds(b"go-service\n"));
        // systemd's other programs, run as units, are units' programs.
        assert!(!still_systemds(b"systemd-resolve\n"));
    }

    #[test]
    fn property_values_keep_what_holdfast_reads() {
        assert_eq!(
            prop_value(&Value::from("active")),
            Some(PropValue::Str("active".into()))
        );
        assert_eq!(prop_value(&Value::U64(7)), Some(PropValue::U64(7)));
        assert_eq!(prop_value(&Value::U32(7)), Some(PropValue::U32(7)));
        assert_eq!(prop_value(&Value::Bool(true)), Some(PropValue::Bool(true)));
        let paths = Value::from(vec!["/a.conf", "/b.conf"]);
        assert_eq!(
            prop_value(&paths),
            Some(PropValue::Strs(vec!["/a.conf".into(), "/b.conf".into()]))
        );
        assert_eq!(prop_value(&Value::I32(-1)), None);
    }

    #[test]
    fn systemds_well_known_sender_becomes_a_unique_name_of_the_same_length() {
        // A signal as systemd sends it on its private socket: built with a
        // unique sender, then given systemd's well-known one.
        let built = zbus::message::Message::signal(MANAGER_PATH, MANAGER, "Reloading")
            .unwrap()
            .sender(":rg.freedesktop.systemd1")
            .unwrap()
            .build(&(false,))
            .unwrap();
        let mut bytes = built.data().to_vec();
        let at = bytes
            .windows(24)
            .position(|w| w == b":rg.freedesktop.systemd1")
            .unwrap();
        bytes[at] = b'o';
        assert_eq!(message_len(&bytes).unwrap(), Some(bytes.len()));
        assert_eq!(message_len(&bytes[..15]).unwrap(), None);
        let before = bytes.len();
        unique_sender(&mut bytes);
        assert_eq!(bytes.len(), before);
        assert_eq!(&bytes[at..at + 24], b":rg.freedesktop.systemd1");
        // A message with a unique sender, or none, is left alone.
        let mut again = bytes.clone();
        unique_sender(&mut again);
        assert_eq!(again, bytes);
        let plain = zbus::message::Message::signal(MANAGER_PATH, MANAGER, "UnitFilesChanged")
            .unwrap()
            .build(&())
            .unwrap();
        let mut plain_bytes = plain.data().to_vec();
        unique_sender(&mut plain_bytes);
        assert_eq!(plain_bytes, plain.data().to_vec());
        assert!(message_len(b"xxxxxxxxxxxxxxxxxx").is_err());
    }

    #[test]
    fn signals_become_unit_events() {
        fn signal(
            path: &'static str,
            iface: &'static str,
            member: &'static str,
        ) -> zbus::message::Builder<'static> {
            zbus::message::Message::signal(path, iface, member).unwrap()
        }
        let changed = signal(
            "/org/freedesktop/systemd1/unit/go_2dapp_2eslice",
            PROPERTIES,
            "PropertiesChanged",
        )
        .build(&(
            "org.freedesktop.systemd1.Slice",
            HashMap::<&str, Value<'_>>::new(),
            Vec::<&str>::new(),
        ))
        .unwrap();
        assert_eq!(
            unit_event(&changed),
            Some(UnitEvent::Changed("go-app.slice".into()))
        );
        let reloading = signal(MANAGER_PATH, MANAGER, "Reloading")
            .build(&(false,))
            .unwrap();
        assert_eq!(unit_event(&reloading), Some(UnitEvent::Reloading(false)));
        let files = signal(MANAGER_PATH, MANAGER, "UnitFilesChanged")
            .build(&())
            .unwrap();
        assert_eq!(unit_event(&files), Some(UnitEvent::UnitFilesChanged));
        let job = signal(MANAGER_PATH, MANAGER, "JobRemoved")
            .build(&(
                7u32,
                zbus::zvariant::ObjectPath::try_from("/org/freedesktop/systemd1/job/7").unwrap(),
                "myapp.service",
                "done",
            ))
            .unwrap();
        assert_eq!(
            unit_event(&job),
            Some(UnitEvent::Changed("myapp.service".into()))
        );
        let manager_props = signal(MANAGER_PATH, PROPERTIES, "PropertiesChanged")
            .build(&(
                MANAGER,
                HashMap::<&str, Value<'_>>::new(),
                Vec::<&str>::new(),
            ))
            .unwrap();
        assert_eq!(unit_event(&manager_props), None);
    }
}
