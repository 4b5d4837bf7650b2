//! The read-only status API (axum over hyper): `GET /status`,
//! `GET /healthz`, `GET /metrics`.
//!
//! # Guarantees
//! - Handlers read the latest snapshot (an `Arc` clone) and never block the
//!   reconcile loop, which runs on its own thread.
//! - Hardened like a production server: only GET and HEAD (405 otherwise);
//!   request headers bounded (8 KiB) and read within 10 s, which is also the
//!   idle limit of a kept-alive connection; request bodies above 1 KiB are
//!   refused (413); a response write that stalls 10 s closes the
//!   connection; handlers time out after 5 s; at most 256 connections at
//!   once (accepting waits for a free slot).
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
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::listen::Listener;
use super::metrics::{self, Metrics};
use super::state::Snapshot;
use super::status::{self, Query};

pub const MAX_CONNECTIONS: usize = 256;
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
}

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
/// otherwise (starting, stuck, or stopped).
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
            } else {
                text(
                    StatusCode::OK,
                    format!("ok: pass #{} {} ms ago\n", p.number, age.as_millis()),
                )
            }
        }
    }
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

/// Serves every listener until `shutdown` turns true (or its sender goes),
/// then gives open connections [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(listeners: Vec<Listener>, router: Router, shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut loops = JoinSet::new();
    for l in listeners {
        let (router, shutdown, slots) = (router.clone(), shutdown.clone(), Arc::clone(&slots));
        match l {
            Listener::Tcp(l) => loops.spawn(accept_loop(l, router, shutdown, slots)),
            Listener::Unix { listener, .. } => {
                loops.spawn(accept_loop(listener, router, shutdown, slots))
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

/// Resolves once shutdown has begun (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

/// A listener of either family.
trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

async fn accept_loop<L: Accept>(
    listener: L,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            () = stopped(&mut shutdown) => return,
        };
        let stream = tokio::select! {
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
        let (router, builder, mut shutdown) =
            (router.clone(), Arc::clone(&builder), shutdown.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(WriteDeadline::new(stream, WRITE_TIMEOUT));
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
}
