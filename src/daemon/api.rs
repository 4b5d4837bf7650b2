//! The status API (axum over hyper): `GET /status`, `GET /healthz`,
//! `GET /metrics`; and, on the Unix socket only, for root only (the peer's
//! `SO_PEERCRED`), `POST /v1/apply` and `POST /v1/rollback`, which
//! `holdfast apply` and `holdfast rollback` send when a daemon runs.
//!
//! # Guarantees
//! - Handlers read the latest snapshot (an `Arc` clone) and never block the
//!   reconcile loop, which runs on its own thread.
//! - Over TCP the API is read-only: the write routes do not exist there.
//! - Hardened like a production server: only GET and HEAD (405 otherwise,
//!   but for the write routes on the Unix socket);
//!   request headers bounded (8 KiB) and read within 10 s, which is also the
//!   idle limit of a kept-alive connection; request bodies above 1 KiB are
//!   refused (413); a response write that stalls 10 s closes the
//!   connection; handlers time out after 5 s.
//! - Connection budgets per listener, taken after `accept`: 256 per TCP
//!   listener and 32 per peer address on it, 64 on a Unix socket. A
//!   connection over budget is closed at once, so TCP clients can never
//!   starve the root-only Unix socket `holdfast status` uses.
//! - DNS rebinding: over TCP the `Host` header (and an absolute-form target)
//!   must name the listener itself — `localhost`, a loopback IP, the
//!   listener's own address, or a name given with `--api-host`; anything
//!   else is a 421. Requests over the Unix socket may omit `Host`.
//! - Responses are gzipped when the request's `Accept-Encoding` allows it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::ask::{self, Answer, Asked, ReportFormat};
use super::listen::Listener;
use super::metrics::{self, Metrics};
use super::reconcile::Control;
use super::state::Snapshot;
use super::status::{self, Query};

/// Open connections at most, per TCP listener.
pub const TCP_CONNECTIONS: usize = 256;
/// Open connections at most from one peer address on a TCP listener.
pub const TCP_CONNECTIONS_PER_PEER: usize = 32;
/// Open connections at most on a Unix socket (root only).
pub const UNIX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const HANDLER_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADER_BYTES: usize = 8 * 1024;
const MAX_BODY_BYTES: usize = 1024;
/// How long open connections get to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// False once the reconcile loop has stopped.
    pub alive: Arc<AtomicBool>,
    /// `/healthz` fails when the last pass is older than this.
    pub stale_after: Duration,
    /// The loop, for root's requests over the Unix socket.
    pub control: Option<mpsc::UnboundedSender<Control>>,
}

/// Who is on the other end of a connection: its IP address (TCP) or its
/// uid (a Unix socket, from `SO_PEERCRED`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub ip: Option<std::net::IpAddr>,
    pub uid: Option<u32>,
}

/// How long a client's request may wait for the loop (its turn, then the
/// pass: restarts included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl ApiState {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshots.borrow())
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        // gzip when the client accepts it (Prometheus does; curl asks with
        // --compressed), else identity.
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .no_br()
                .no_deflate()
                .no_zstd(),
        )
        .layer(middleware::from_fn(only_get_and_head))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            HANDLER_TIMEOUT,
        ))
        .with_state(state)
}

async fn only_get_and_head(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        let mut res = next.run(req).await;
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        return res;
    }
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(ALLOW, "GET, HEAD")],
        "the holdfast API is read-only: GET and HEAD only\n",
    )
        .into_response()
}

/// The write routes, served on the Unix socket only: each is a request to
/// the loop, answered with the report the CLI prints and its exit code
/// (`x-holdfast-exit`). Only root may ask (`SO_PEERCRED`); anyone else gets
/// 403 and nothing changes.
pub fn write_router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/rollback", post(rollback))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state)
}

/// The query of a write request: `format=text|json`, flags as `NAME=1`,
/// `select=` repeated.
struct WriteQuery {
    format: ReportFormat,
    restart_services: bool,
    dry_run: bool,
    selectors: Vec<String>,
}

impl WriteQuery {
    fn parse(query: Option<&str>) -> Result<WriteQuery, String> {
        let mut q = WriteQuery {
            format: ReportFormat::Text,
            restart_services: false,
            dry_run: false,
            selectors: Vec::new(),
        };
        let flag = |v: &str| match v {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(format!("`{v}` is not a flag value (1 or 0)")),
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "format" => {
                    q.format = ReportFormat::parse(&v)
                        .ok_or_else(|| format!("format `{v}`: text or json"))?;
                }
                "restart_services" => q.restart_services = flag(&v)?,
                "dry_run" => q.dry_run = flag(&v)?,
                "select" => q.selectors.push(v.into_owned()),
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        Ok(q)
    }
}

impl WriteQuery {
    /// The request `command` (`apply` or `rollback`) asks for.
    fn request(&self, command: &str) -> Result<ask::Request, String> {
        match command {
            "apply" if self.selectors.is_empty() && !self.dry_run => Ok(ask::Request::Apply {
                restart_services: self.restart_services,
            }),
            "apply" => Err("apply takes restart_services and format only".into()),
            _ => Ok(ask::Request::Rollback(crate::rollback::RollbackOptions {
                dry_run: self.dry_run,
                restart_services: self.restart_services,
                selectors: self
                    .selectors
                    .iter()
                    .map(|s| crate::journal::Selector::parse(s))
                    .collect(),
                overcommit_headroom_percent: crate::policy::DEFAULT_OVERCOMMIT_HEADROOM_PERCENT,
            })),
        }
    }
}

async fn apply(
    State(st): State<ApiState>,
    axum::Extension(peer): axum::Extension<Peer>,
    RawQuery(query): RawQuery,
) -> Response {
    ask_for(&st, peer, query.as_deref(), "apply").await
}

async fn rollback(
    State(st): State<ApiState>,
    axum::Extension(peer): axum::Extension<Peer>,
    RawQuery(query): RawQuery,
) -> Response {
    ask_for(&st, peer, query.as_deref(), "rollback").await
}

/// A write request from its query: refused (400) before the loop hears of
/// it when the query is not one the command takes.
async fn ask_for(st: &ApiState, peer: Peer, query: Option<&str>, command: &str) -> Response {
    let parsed = WriteQuery::parse(query).and_then(|q| Ok((q.request(command)?, q.format)));
    match parsed {
        Ok((request, format)) => ask_loop(st, peer, request, format).await,
        Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    }
}

/// Hands `request` to the loop and waits for its answer.
async fn ask_loop(
    st: &ApiState,
    peer: Peer,
    request: ask::Request,
    format: ReportFormat,
) -> Response {
    if peer.uid != Some(0) {
        let who = peer.uid.map_or_else(
            || "a peer of unknown uid".to_string(),
            |u| format!("uid {u}"),
        );
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "holdfast {}: only root may ask the daemon to write (you are {who}); nothing was changed\n",
                request.command()
            ),
        );
    }
    let Some(control) = &st.control else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon takes no requests\n".into(),
        );
    };
    let (reply, answer) = oneshot::channel();
    let asked = Asked {
        request,
        format,
        reply,
    };
    if control.send(Control::Ask(asked)).is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconcile loop has stopped; nothing was changed\n".into(),
        );
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answered(&answer),
        Ok(Err(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon stopped before it answered\n".into(),
        ),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer from the loop in time; the request may still run\n".into(),
        ),
    }
}

/// The answer as a response: the body is what the CLI prints on stdout,
/// then what it prints on stderr (`x-holdfast-stdout-bytes` says where the
/// first ends); `x-holdfast-exit` is its exit code.
fn answered(answer: &Answer) -> Response {
    let mut body = answer.stdout.clone();
    body.push_str(&answer.stderr);
    let mut res = (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response();
    let headers = res.headers_mut();
    headers.insert("x-holdfast-exit", HeaderValue::from(u16::from(answer.exit)));
    headers.insert(
        "x-holdfast-stdout-bytes",
        HeaderValue::from(answer.stdout.len()),
    );
    res
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found; try /status, /healthz or /metrics\n",
    )
        .into_response()
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn status(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match Query::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(msg) => return text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
    };
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let snap = st.snapshot();
    let doc = status::to_json(&snap, &query.filter);
    match status::Format::negotiate(query.format, accept) {
        status::Format::Text => text(StatusCode::OK, status::to_text(&doc)),
        status::Format::Json => match serde_json::to_vec_pretty(&doc) {
            Ok(mut body) => {
                body.push(b'\n');
                (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialize the status: {e}\n"),
            ),
        },
    }
}

/// 200 while the loop runs and has passed within `stale_after`; 503
/// otherwise (starting, stuck, or stopped), and when not one of the paths
/// the daemon wants is watched (every change would wait for the rescan).
async fn healthz(State(st): State<ApiState>) -> Response {
    if !st.alive.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the reconcile loop has stopped\n".into(),
        );
    }
    let snap = st.snapshot();
    match &snap.last_pass {
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: no pass yet\n".into(),
        ),
        Some(p) => {
            let age = p.at_monotonic.elapsed();
            if age > st.stale_after {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "unhealthy: the last pass was {} s ago (limit {} s)\n",
                        age.as_secs(),
                        st.stale_after.as_secs()
                    ),
                )
            } else if let Some(why) = blind(&snap.watches) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("unhealthy: {why}\n"),
                )
            } else {
                text(
                    StatusCode::OK,
                    format!("ok: pass #{} {} ms ago\n", p.number, age.as_millis()),
                )
            }
        }
    }
}

/// Why the daemon sees no change at all, when it wanted to watch paths and
/// could watch none of them.
fn blind(w: &crate::daemon::state::WatchStatus) -> Option<String> {
    (w.watched == 0 && !w.errors.is_empty()).then(|| {
        format!(
            "none of the paths the daemon wants is watched ({} error(s); first: {})",
            w.errors.len(),
            w.errors[0]
        )
    })
}

async fn metrics_handler(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let format = metrics::Format::negotiate(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    match st.metrics.encode(format) {
        Ok(body) => (
            StatusCode::OK,
            [(CONTENT_TYPE, format.content_type())],
            body,
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

/// Which `Host` a listener answers to (DNS rebinding protection).
#[derive(Debug, Clone)]
pub enum HostRule {
    /// A Unix socket: no browser reaches it; `Host` may be absent. An
    /// absolute-form target must still name the local host.
    Unix { names: Arc<Vec<String>> },
    /// A TCP listener at `local`.
    Tcp {
        local: std::net::SocketAddr,
        names: Arc<Vec<String>>,
    },
}

/// Whether a request may be served under `rule`: `host` is the `Host`
/// header, `authority` the authority of an absolute-form target. `Err` says
/// why not, for the 421's body.
pub fn check_host(
    rule: &HostRule,
    host: Option<&str>,
    authority: Option<&str>,
) -> Result<(), String> {
    let (names, local) = match rule {
        HostRule::Unix { names } => (names, None),
        HostRule::Tcp { local, names } => (names, Some(*local)),
    };
    let allowed = |value: &str| host_names_listener(value, local, names);
    if let Some(a) = authority
        && !allowed(a)
    {
        return Err(format!(
            "this is holdfast's API, not {}: refusing a request for another host",
            crate::host::escape_control(a)
        ));
    }
    match host {
        Some(h) if allowed(h) => Ok(()),
        Some(h) => Err(format!(
            "Host {} is not this server: holdfast answers only requests for localhost, \
             a loopback address, its own address, or a name given with --api-host",
            crate::host::escape_control(h)
        )),
        None if local.is_none() => Ok(()),
        None => Err("a Host header is required".into()),
    }
}

/// Does a `Host` value (`name`, `name:port`, `[v6]:port`) name this
/// listener? The port, when given, must be the listener's.
fn host_names_listener(value: &str, local: Option<std::net::SocketAddr>, names: &[String]) -> bool {
    use std::net::IpAddr;
    let value = value.trim();
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, "")) => (ip, None),
            Some((ip, p)) => match p.strip_prefix(':') {
                Some(p) => (ip, Some(p)),
                None => return false,
            },
            None => return false,
        }
    } else {
        match value.rsplit_once(':') {
            // More than one colon without brackets is not a valid Host.
            Some((n, _)) if n.contains(':') => return false,
            Some((n, p)) => (n, Some(p)),
            None => (value, None),
        }
    };
    if let Some(p) = port {
        let Ok(p) = p.parse::<u16>() else {
            return false;
        };
        if local.is_some_and(|l| l.port() != p) {
            return false;
        }
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return false;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip.is_loopback()
            || ip.to_canonical().is_loopback()
            || local.is_some_and(|l| l.ip() == ip || l.ip().to_canonical() == ip.to_canonical());
    }
    name.eq_ignore_ascii_case("localhost")
        || names
            .iter()
            .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))
}

async fn host_guard(State(rule): State<HostRule>, req: Request, next: Next) -> Response {
    let host = match req.headers().get(axum::http::header::HOST) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(v) => Some(v),
            Err(_) => {
                return text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "the Host header is not text\n".into(),
                );
            }
        },
    };
    let authority = req
        .uri()
        .authority()
        .map(axum::http::uri::Authority::as_str);
    match check_host(&rule, host, authority) {
        Ok(()) => next.run(req).await,
        Err(why) => text(StatusCode::MISDIRECTED_REQUEST, format!("{why}\n")),
    }
}

/// Serves every listener until `shutdown` turns true (or its sender goes),
/// then gives open connections [`SHUTDOWN_GRACE`] to finish. `writes` are
/// the routes served on Unix sockets only ([`write_router`]). `api_hosts`
/// are the extra names a `Host` header may carry (`--api-host`).
pub async fn serve(
    listeners: Vec<Listener>,
    router: Router,
    writes: Router,
    shutdown: watch::Receiver<bool>,
    api_hosts: Vec<String>,
) {
    let names = Arc::new(api_hosts);
    let mut loops = JoinSet::new();
    for l in listeners {
        let shutdown = shutdown.clone();
        match l {
            Listener::Tcp(l) => {
                let rule = match l.local_addr() {
                    Ok(local) => HostRule::Tcp {
                        local,
                        names: Arc::clone(&names),
                    },
                    Err(e) => {
                        tracing::error!("a TCP listener without an address ({e}): not serving it");
                        continue;
                    }
                };
                let router = router
                    .clone()
                    .layer(middleware::from_fn_with_state(rule, host_guard));
                let budget = Budget::new(TCP_CONNECTIONS, Some(TCP_CONNECTIONS_PER_PEER));
                loops.spawn(accept_loop(l, router, shutdown, budget))
            }
            Listener::Unix { listener, .. } => {
                let rule = HostRule::Unix {
                    names: Arc::clone(&names),
                };
                let router = writes
                    .clone()
                    .merge(router.clone())
                    .layer(middleware::from_fn_with_state(rule, host_guard));
                let budget = Budget::new(UNIX_CONNECTIONS, None);
                loops.spawn(accept_loop(listener, router, shutdown, budget))
            }
        };
    }
    let mut stop = shutdown;
    stopped(&mut stop).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(50), async {
        while loops.join_next().await.is_some() {}
    })
    .await;
}

/// Open connections per peer address on one listener.
type PeerCounts = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// A listener's connection budget: a total and, on TCP, a cap per peer
/// address.
struct Budget {
    total: Arc<Semaphore>,
    per_peer: Option<(usize, PeerCounts)>,
}

/// A connection's share of its listener's budget, given back on drop.
struct Slot {
    _total: tokio::sync::OwnedSemaphorePermit,
    peer: Option<(std::net::IpAddr, PeerCounts)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, counts)) = &self.peer {
            let mut counts = counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

impl Budget {
    fn new(total: usize, per_peer: Option<usize>) -> Self {
        Budget {
            total: Arc::new(Semaphore::new(total)),
            per_peer: per_peer.map(|n| (n, Arc::default())),
        }
    }

    /// A slot for a connection from `peer`, or why there is none.
    fn take(&self, peer: Option<std::net::IpAddr>) -> Result<Slot, &'static str> {
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| "the listener's connection budget is used up")?;
        let peer = match (&self.per_peer, peer) {
            (Some((cap, counts)), Some(ip)) => {
                let mut map = counts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = map.entry(ip).or_insert(0);
                if *n >= *cap {
                    return Err("this peer address has too many connections open");
                }
                *n += 1;
                Some((ip, Arc::clone(counts)))
            }
            _ => None,
        };
        Ok(Slot {
            _total: total,
            peer,
        })
    }
}

/// Resolves once shutdown has begun (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

/// A listener of either family.
trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and who is on its other end.
    fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Stream, Peer)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<(Self::Stream, Peer)> {
        self.accept().await.map(|(s, a)| {
            let peer = Peer {
                ip: Some(a.ip().to_canonical()),
                uid: None,
            };
            (s, peer)
        })
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<(Self::Stream, Peer)> {
        let (s, _) = self.accept().await?;
        // The kernel's record of the client (`SO_PEERCRED`); unknown when
        // it cannot be read, which the write routes refuse.
        let uid = s.peer_cred().ok().map(|c| c.uid());
        Ok((s, Peer { ip: None, uid }))
    }
}

async fn accept_loop<L: Accept>(
    listener: L,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    budget: Budget,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut refused_logged = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept_one() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: say so, and do not spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return,
        };
        // Over budget: close at once, so the backlog keeps moving and other
        // clients (and other listeners) are not kept waiting.
        let slot = match budget.take(peer.ip) {
            Ok(slot) => slot,
            Err(why) => {
                if refused_logged.elapsed() >= Duration::from_secs(10) {
                    refused_logged = tokio::time::Instant::now();
                    tracing::warn!(peer = ?peer, "connection refused: {why}");
                }
                drop(stream);
                continue;
            }
        };
        let (router, builder, mut shutdown) =
            (router.clone(), Arc::clone(&builder), shutdown.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(WriteDeadline::new(stream, WRITE_TIMEOUT));
            let router = router.layer(axum::Extension(peer));
            let conn = builder.serve_connection(io, TowerToHyperService::new(router));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection: {e}");
                    }
                }
                () = stopped(&mut shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
                }
            }
            drop(slot);
        });
    }
}

/// A stream whose writes fail when the peer stops reading for `timeout`
/// (hyper has no write timeout of its own).
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when the inner write is pending: starts or checks the clock.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(v)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_watches_nothing_it_wants_is_not_healthy() {
        use crate::daemon::state::WatchStatus;
        let none = WatchStatus {
            policy_unwatched: false,
            watched: 0,
            missing: 0,
            errors: vec!["watch /proc/sys/net/core/somaxconn: Operation not permitted".into()],
        };
        let why = blind(&none).unwrap();
        assert!(why.contains("Operation not permitted"), "{why}");
        let some = WatchStatus {
            watched: 3,
            ..none.clone()
        };
        assert_eq!(blind(&some), None);
        assert_eq!(blind(&WatchStatus::default()), None);
    }
    use crate::daemon::metrics::Metrics;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_stalls_times_out() {
        // A duplex pipe with a 16-byte buffer that nobody reads.
        let (a, _b) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(a, Duration::from_secs(10));
        w.write_all(&[0u8; 16]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    fn tcp_rule(local: &str, names: &[&str]) -> HostRule {
        HostRule::Tcp {
            local: local.parse().unwrap(),
            names: Arc::new(names.iter().map(std::string::ToString::to_string).collect()),
        }
    }

    #[test]
    fn host_names_the_listener_or_the_request_is_misdirected() {
        let rule = tcp_rule("127.0.0.1:80", &["holdfast.internal"]);
        for ok in [
            "localhost",
            "LOCALHOST:80",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]",
            "[::1]:80",
            "holdfast.internal",
            "Holdfast.Internal:80",
        ] {
            assert_eq!(check_host(&rule, Some(ok), None), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:80",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:8080",
            "10.0.0.5",
            "[::1",
            "::1",
            "",
            ":80",
        ] {
            assert!(check_host(&rule, Some(bad), None).is_err(), "{bad}");
        }
        // Over TCP a Host is required; an absolute-form target must name us too.
        assert!(check_host(&rule, None, None).is_err());
        assert!(check_host(&rule, Some("localhost"), Some("evil.example")).is_err());
        assert_eq!(
            check_host(&rule, Some("localhost"), Some("localhost:80")),
            Ok(())
        );
        // A listener on a non-loopback address (--allow-remote) answers to
        // that address too.
        let remote = tcp_rule("10.0.0.5:8080", &[]);
        assert_eq!(check_host(&remote, Some("10.0.0.5:8080"), None), Ok(()));
        assert!(check_host(&remote, Some("10.0.0.6:8080"), None).is_err());
        // The Unix socket: Host may be absent.
        let unix = HostRule::Unix {
            names: Arc::new(Vec::new()),
        };
        assert_eq!(check_host(&unix, None, None), Ok(()));
        assert_eq!(check_host(&unix, Some("localhost"), None), Ok(()));
        assert!(check_host(&unix, None, Some("evil.example")).is_err());
        // The refusal shows control characters escaped.
        let err = check_host(&rule, Some("a\u{1b}[2Jb"), None).unwrap_err();
        assert!(err.contains("a\\u{1b}[2Jb"), "{err}");
    }

    /// A running API on a loopback TCP port and a Unix socket.
    struct Running {
        _dir: tempfile::TempDir,
        tcp: std::net::SocketAddr,
        unix: std::path::PathBuf,
        _stop: watch::Sender<bool>,
        /// What reached the loop.
        control: mpsc::UnboundedReceiver<Control>,
    }

    async fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let unix = dir.path().join("api.sock");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let listeners = vec![
            Listener::Tcp(tcp),
            Listener::Unix {
                listener: tokio::net::UnixListener::bind(&unix).unwrap(),
                owned_path: None,
            },
        ];
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot::starting(
            Arc::new(Vec::new()),
            Duration::from_secs(60),
        )));
        let (control, control_rx) = mpsc::unbounded_channel();
        let state = ApiState {
            metrics: Arc::new(Metrics::new(snapshots.clone())),
            snapshots,
            alive: Arc::new(AtomicBool::new(true)),
            stale_after: Duration::from_secs(60),
            control: Some(control),
        };
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            let _keep = publish;
            let (read, writes) = (router(state.clone()), write_router(state));
            serve(listeners, read, writes, stop_rx, vec!["hf.test".into()]).await;
        });
        Running {
            _dir: dir,
            tcp: tcp_addr,
            unix,
            _stop: stop,
            control: control_rx,
        }
    }

    /// Sends `request` and reads to the end: the whole response.
    async fn exchange_all<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> String {
        use tokio::io::AsyncReadExt;
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_write_from_anyone_but_root_is_refused_and_reaches_nothing() {
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot::starting(
            Arc::new(Vec::new()),
            Duration::from_secs(60),
        )));
        let (control, mut control_rx) = mpsc::unbounded_channel();
        let state = ApiState {
            metrics: Arc::new(Metrics::new(snapshots.clone())),
            snapshots,
            alive: Arc::new(AtomicBool::new(true)),
            stale_after: Duration::from_secs(60),
            control: Some(control),
        };
        for uid in [Some(1000), None] {
            let peer = Peer { ip: None, uid };
            let request = ask::Request::Apply {
                restart_services: true,
            };
            let res = ask_loop(&state, peer, request, ReportFormat::Text).await;
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
        }
        assert!(control_rx.try_recv().is_err(), "nothing reached the loop");
        drop(publish);
    }

    #[tokio::test]
    async fn writes_are_for_root_on_the_unix_socket_and_do_not_exist_over_tcp() {
        let mut api = start().await;
        let post = |target: &str| {
            format!(
                "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        // Over TCP the API is read-only.
        let tcp = tokio::net::TcpStream::connect(api.tcp).await.unwrap();
        assert_eq!(exchange(tcp, &post("/v1/apply")).await, Some(405));

        let unix = || tokio::net::UnixStream::connect(&api.unix);
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 {
            // Not root: refused, and nothing reaches the loop.
            let answer = exchange_all(unix().await.unwrap(), &post("/v1/apply")).await;
            assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
            assert!(answer.contains("only root may ask"), "{answer}");
            assert!(api.control.try_recv().is_err());
            return;
        }
        // Root: the request reaches the loop, whose answer is the response.
        let client = tokio::spawn({
            let s = unix().await.unwrap();
            let request = post("/v1/rollback?format=json&dry_run=1&select=sysctl");
            async move { exchange_all(s, &request).await }
        });
        let Some(Control::Ask(asked)) = api.control.recv().await else {
            panic!("no request reached the loop");
        };
        assert_eq!(asked.format, ReportFormat::Json);
        let ask::Request::Rollback(options) = &asked.request else {
            panic!("{:?}", asked.request);
        };
        assert!(options.dry_run && !options.restart_services);
        assert_eq!(
            options.selectors,
            [crate::journal::Selector::parse("sysctl")]
        );
        asked
            .reply
            .send(Answer {
                exit: 2,
                stdout: "the report\n".into(),
                stderr: "a warning\n".into(),
            })
            .unwrap();
        let answer = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-holdfast-exit: 2"), "{answer}");
        assert!(answer.contains("x-holdfast-stdout-bytes: 11"), "{answer}");
        assert!(answer.ends_with("the report\na warning\n"), "{answer}");
        // A malformed request is refused before the loop hears of it.
        let bad = exchange(unix().await.unwrap(), &post("/v1/apply?dry_run=1")).await;
        assert_eq!(bad, Some(400));
        let bad = exchange(unix().await.unwrap(), &post("/v1/apply?force=1")).await;
        assert_eq!(bad, Some(400));
        assert!(api.control.try_recv().is_err());
    }

    /// Sends `request` and reads to the end; the status code, or `None` when
    /// the server closed without an answer.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> Option<u16> {
        use tokio::io::AsyncReadExt;
        s.write_all(request.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        text.split(' ').nth(1)?.parse().ok()
    }

    fn get(target: &str, host: Option<&str>) -> String {
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn foreign_hosts_and_absolute_uris_get_421_over_tcp() {
        let api = start().await;
        let tcp = || tokio::net::TcpStream::connect(api.tcp);
        let port = api.tcp.port();
        let ok = exchange(
            tcp().await.unwrap(),
            &get("/status", Some(&format!("localhost:{port}"))),
        )
        .await;
        assert_eq!(ok, Some(200));
        let named = exchange(tcp().await.unwrap(), &get("/status", Some("hf.test"))).await;
        assert_eq!(named, Some(200));
        let rebound = exchange(
            tcp().await.unwrap(),
            &get("/status", Some("attacker.example")),
        )
        .await;
        assert_eq!(rebound, Some(421));
        let absolute = exchange(
            tcp().await.unwrap(),
            &get("http://attacker.example/status", Some("localhost")),
        )
        .await;
        assert_eq!(absolute, Some(421));
        let unix = tokio::net::UnixStream::connect(&api.unix).await.unwrap();
        assert_eq!(
            exchange(unix, "GET /status HTTP/1.0\r\n\r\n").await,
            Some(200)
        );
    }

    #[tokio::test]
    async fn tcp_clients_cannot_starve_the_unix_socket_and_are_capped_per_peer() {
        let api = start().await;
        let host = Some("localhost");
        // Idle connections from one peer up to its cap, then more: those
        // beyond the cap are closed without an answer.
        let mut idle = Vec::new();
        for _ in 0..TCP_CONNECTIONS_PER_PEER {
            idle.push(tokio::net::TcpStream::connect(api.tcp).await.unwrap());
        }
        let over = tokio::net::TcpStream::connect(api.tcp).await.unwrap();
        assert_eq!(exchange(over, &get("/healthz", host)).await, None);
        // Another loopback address is another peer.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let other = other.connect(api.tcp).await.unwrap();
        assert_eq!(exchange(other, &get("/status", host)).await, Some(200));
        // Fill the listener's whole budget from many loopback addresses.
        for i in 0..TCP_CONNECTIONS {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            let ip = std::net::Ipv4Addr::new(
                127,
                1,
                u8::try_from(i / 200).unwrap(),
                u8::try_from(i % 200 + 1).unwrap(),
            );
            s.bind((ip, 0).into()).unwrap();
            idle.push(s.connect(api.tcp).await.unwrap());
        }
        // The Unix socket has its own budget: still served at once.
        let unix = tokio::net::UnixStream::connect(&api.unix).await.unwrap();
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(unix, "GET /status HTTP/1.0\r\n\r\n"),
        )
        .await;
        assert_eq!(answered, Ok(Some(200)));
        drop(idle);
    }
}
