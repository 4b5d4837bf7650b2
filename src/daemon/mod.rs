//! `holdfast serve`: the reconcile loop and its status API.
//!
//! Two threads, two runtimes, so that neither waits on the other:
//! - **the loop** (`holdfast-loop`, a current-thread tokio runtime) owns the
//!   policy and every write to the host. It waits on inotify events, the
//!   policy debounce, the rescan and backoff timers, and the signals; after
//!   each pass it publishes an immutable snapshot over a `watch` channel and
//!   talks to systemd (readiness, status, watchdog).
//! - **the API** (the main thread, a current-thread runtime) serves
//!   `/status`, `/healthz` and `/metrics` from the latest snapshot.
//!
//! The loop never waits on an HTTP client; a slow or hostile client can
//! delay only other clients, within the server's limits (see [`api`]).

pub mod api;
pub mod ask;
pub mod client;
pub mod diff;
pub mod keeper;
pub mod listen;
pub mod metrics;
pub mod process;
pub mod reconcile;
pub mod schedule;
pub mod sdnotify;
pub mod state;
pub mod status;
pub mod uevent;
pub mod view;
pub mod watch;
pub mod writers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch as channel};

use crate::host::HostRoot;
use listen::{ListenAddr, ListenError};
use metrics::{Metrics, MetricsConfig};
use reconcile::{Control, LoopConfig, Reconciler};
use schedule::TrackerConfig;
use state::{ListenerOrigin, Snapshot};
use watch::{Arm, InotifyWatcher, NoWatcher};

/// Everything `holdfast serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: HostRoot,
    pub policy_paths: Vec<PathBuf>,
    /// `--listen`; empty means the defaults (or systemd's sockets).
    pub listen: Vec<ListenAddr>,
    pub allow_remote: bool,
    pub rescan: Duration,
    pub debounce: Duration,
    pub trackers: TrackerConfig,
    /// Install the seccomp allow-list once the sockets are bound
    /// (no_new_privs and the capability drop happen regardless).
    pub seccomp: bool,
    /// `--api-host`: names, besides localhost and the listeners' own
    /// addresses, that a request's `Host` may carry.
    pub api_hosts: Vec<String>,
    /// `--metrics-per-setting`: every setting's state in `/metrics`, not
    /// only the settings that drift.
    pub metrics_per_setting: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot start: {0}")]
    Start(String),
    #[error("the reconcile loop failed: {0}")]
    Loop(String),
}

/// The events channel's capacity; when it is full the loop is told to do a
/// full pass instead (nothing is lost but the detail of which key).
const EVENT_QUEUE: usize = 1024;

/// Runs the daemon until SIGTERM/SIGINT. Returns once the pass in flight
/// has finished and the API has closed.
pub fn serve(opts: &ServeOptions) -> Result<(), ServeError> {
    for addr in &opts.listen {
        addr.check_loopback(opts.allow_remote)?;
    }
    // Before anything opens a descriptor: systemd's sockets are fds 3, ...
    let (passed, passed_errors) = listen::take_activated(opts.allow_remote);
    let activated = !passed.is_empty() || !passed_errors.is_empty();
    let api_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Start(format!("tokio runtime: {e}")))?;
    let listen::Bound {
        listeners,
        mut statuses,
    } = {
        let _in_runtime = api_runtime.enter();
        let mut bound = listen::Bound::default();
        listen::register_passed(passed, &mut bound);
        let (addrs, origin) = if !opts.listen.is_empty() {
            (opts.listen.clone(), ListenerOrigin::Configured)
        } else if activated {
            (Vec::new(), ListenerOrigin::Configured)
        } else {
            (listen::default_addrs(&opts.host), ListenerOrigin::Default)
        };
        listen::bind_all(&addrs, origin, &mut bound);
        bound
    };
    statuses.extend(passed_errors);
    for s in &statuses {
        match &s.error {
            None => {
                tracing::info!(address = %s.address, origin = s.origin.as_str(), "status API listening");
            }
            Some(e) => tracing::error!(
                address = %s.address,
                "status API NOT listening: {e}; reconciling goes on"
            ),
        }
    }
    let owned_sockets: Vec<PathBuf> = listeners
        .iter()
        .filter_map(|l| l.owned_path().map(std::path::Path::to_path_buf))
        .collect();
    let statuses = Arc::new(statuses);
    // The sockets are bound: from here on holdfast needs no more privilege
    // than its job, and says so.
    match crate::harden::lock_down(opts.seccomp) {
        Ok(h) => tracing::info!(
            capabilities = %h.capabilities_kept.join(","),
            seccomp_syscalls = h.seccomp_syscalls.unwrap_or(0),
            "hardened: no_new_privs set, capabilities dropped, seccomp allow-list installed"
        ),
        Err(e) => tracing::error!("could not harden the daemon: {e}; reconciling goes on"),
    }

    let (publish, snapshots) = channel::channel(Arc::new(Snapshot::starting(
        Arc::clone(&statuses),
        opts.rescan,
    )));
    let metrics = Arc::new(Metrics::with_config(
        snapshots.clone(),
        MetricsConfig {
            per_setting: opts.metrics_per_setting,
        },
    ));
    let (stop_tx, stop_rx) = channel::channel(false);
    // The loop's control channel: signals, and root's requests from the API.
    let (control, control_rx) = mpsc::unbounded_channel();
    let alive = Arc::new(AtomicBool::new(true));

    let mut cfg = LoopConfig::new(opts.host.clone(), opts.policy_paths.clone());
    cfg.rescan = opts.rescan;
    cfg.debounce = opts.debounce;
    cfg.trackers = opts.trackers;
    cfg.watchdog = sd_notify::watchdog_enabled();
    cfg.uevents = opts.host.is_this_machine();
    let loop_thread = {
        let (metrics, alive, statuses, signals) = (
            Arc::clone(&metrics),
            Arc::clone(&alive),
            Arc::clone(&statuses),
            control.clone(),
        );
        std::thread::Builder::new()
            .name("holdfast-loop".into())
            .spawn(move || {
                let _stop = StopOnExit {
                    stop: stop_tx,
                    alive,
                };
                run_loop(cfg, statuses, metrics, publish, signals, control_rx)
            })
            .map_err(|e| ServeError::Start(format!("spawn the loop thread: {e}")))?
    };

    let state = api::ApiState {
        snapshots,
        metrics,
        alive,
        // Two missed rescans, plus room for a slow pass.
        stale_after: opts.rescan * 2 + Duration::from_secs(10),
        control: Some(control),
    };
    api_runtime.block_on(api::serve(
        listeners,
        api::router(state.clone()),
        api::write_router(state),
        stop_rx,
        opts.api_hosts.clone(),
    ));
    drop(api_runtime);
    for path in owned_sockets {
        let _ = std::fs::remove_file(&path);
    }
    match loop_thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Loop(e)),
        Err(_) => Err(ServeError::Loop("the loop thread panicked".into())),
    }
}

/// Whatever way the loop thread ends, the API learns it: `/healthz` fails
/// and the server shuts down.
struct StopOnExit {
    stop: channel::Sender<bool>,
    alive: Arc<AtomicBool>,
}

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        self.stop.send_replace(true);
    }
}

fn run_loop(
    cfg: LoopConfig,
    listeners: Arc<Vec<state::ListenerStatus>>,
    metrics: Arc<Metrics>,
    publish: channel::Sender<Arc<Snapshot>>,
    control: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let ended = runtime.block_on(async move {
        forward_signals(control).map_err(|e| format!("install signal handlers: {e}"))?;
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let limit_file = cfg.host.path("proc/sys/fs/inotify/max_user_watches");
        let started = InotifyWatcher::start(events, Arc::clone(&overflow), limit_file);
        let mut watcher: Box<dyn Arm> = match started {
            Ok(w) => Box::new(w),
            Err(e) => {
                tracing::error!(
                    "inotify unavailable ({e}); only the periodic rescan will see changes"
                );
                Box::new(NoWatcher)
            }
        };
        Reconciler::new(cfg, listeners, metrics, publish)
            .run(events_rx, control_rx, watcher.as_mut(), overflow)
            .await;
        Ok(())
    });
    // A pass over units still out (systemd slow to answer) gets a moment to
    // end; past it, the process exits under it. Every write it makes is
    // journalled first and atomic, and the next start's full pass reads
    // everything again, as after a SIGKILL.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    ended
}

/// How long a stop waits for a pass over units still in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// SIGHUP reloads; SIGTERM and SIGINT stop after the pass in flight.
fn forward_signals(control: mpsc::UnboundedSender<Control>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
                _ = hup.recv() => Control::Reload,
            };
            if matches!(msg, Control::Reload) {
                tracing::info!("SIGHUP: reloading the policy");
            }
            if control.send(msg).is_err() {
                return;
            }
        }
    });
    Ok(())
}
