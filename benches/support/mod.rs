//! Shared pieces of the daemon benchmarks: a private network and mount
//! namespace (so the benchmarks change only the namespace's `net.*` keys and
//! a tmpfs over /etc/sysctl.d), a `holdfast serve` child, drift-to-correction
//! measurement through inotify, and percentiles.

#![allow(
    dead_code,
    reason = "each test crate uses its own share of these helpers"
)]

pub mod trials;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast::daemon::client;
use holdfast::daemon::listen::ListenAddr;

const INSIDE: &str = "HOLDFAST_BENCH_IN_NAMESPACE";

/// Ten per-namespace keys, as a hardening policy would have.
pub const NET_POLICY: &str = "version: 1
mode: enforce
sysctl:
  net.core.somaxconn: 8191
  net.ipv4.tcp_syncookies: 1
  net.ipv4.conf.all.rp_filter: 1
  net.ipv4.conf.default.rp_filter: 1
  net.ipv4.conf.all.accept_redirects: 0
  net.ipv4.conf.all.send_redirects: 0
  net.ipv4.icmp_echo_ignore_broadcasts: 1
  net.ipv4.ip_local_port_range: \"20000 60999\"
  net.ipv4.tcp_fin_timeout: 30
  net.ipv6.conf.all.accept_redirects: 0
";

/// Re-runs this benchmark inside `unshare --net --mount` (with loopback up
/// and a tmpfs over /etc/sysctl.d) unless it already runs there. Returns
/// false (after saying why) when that is not possible: it needs root.
pub fn enter_namespaces() -> bool {
    if std::env::var_os(INSIDE).is_some() {
        let run = |args: &[&str]| {
            let ok = Command::new(args[0])
                .args(&args[1..])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{args:?} failed");
        };
        run(&["mount", "-t", "tmpfs", "holdfast-bench", "/etc/sysctl.d"]);
        run(&["ip", "link", "set", "lo", "up"]);
        return true;
    }
    let can = Command::new("unshare")
        .args(["--net", "--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        println!("skipped: needs root and unshare(2) (a private network namespace)");
        return false;
    }
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status()
        .expect("unshare");
    std::process::exit(status.code().unwrap_or(1));
}

/// A `holdfast serve` child process.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `holdfast [global] serve --listen DIR/hf.sock [serve_args]` and
/// waits for its first pass.
pub fn serve(dir: &Path, global: &[&str], serve_args: &[&str]) -> Daemon {
    let socket = dir.join("hf.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(global)
        .arg("serve")
        .arg("--listen")
        .arg(&socket)
        .args(serve_args)
        .env("HOLDFAST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn holdfast serve");
    let d = Daemon { child, socket };
    let addr = ListenAddr::Unix(d.socket.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client::get(&addr, "/healthz", "*/*", Duration::from_secs(1))
            && r.status == 200
        {
            return d;
        }
        assert!(Instant::now() < deadline, "holdfast serve not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `drift` to a watched key `n` times, `spacing` apart, and measures
/// each time from the write to the daemon's restoring write, seen through
/// inotify (`IN_MODIFY` and `IN_CLOSE_WRITE` on the key), so no polling loop
/// competes with the daemon for the CPU: at each event the key is read, and
/// the first event after which it holds `want` again ends the sample (the
/// figure includes the delivery of the event, tens of microseconds). The
/// value is read rather than events counted because the kernel merges an
/// event with an identical one still queued: when the daemon corrects the
/// key between the writer's write and close, the two close-writes can
/// arrive as one.
pub fn drift_to_correction(
    path: &Path,
    drift: &str,
    want: &str,
    n: usize,
    spacing: Duration,
) -> Vec<Duration> {
    drift_to_correction_of(&vec![(path, drift, want); n], spacing)
}

/// [`drift_to_correction`] over several keys: for each `(path, drift,
/// want)` in turn (the same key may come again), one write of `drift`, `spacing` after the last sample,
/// timed to the first event on that key after which it reads `want`. One
/// inotify instance watches every path.
pub fn drift_to_correction_of(targets: &[(&Path, &str, &str)], spacing: Duration) -> Vec<Duration> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut inotify = inotify::Inotify::init().expect("inotify");
    for (path, _, _) in targets {
        inotify
            .watches()
            .add(
                path,
                inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::MODIFY,
            )
            .expect("watch");
    }
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            let Ok(events) = inotify.read_events_blocking(&mut buffer) else {
                return;
            };
            let at = Instant::now();
            if events.count() > 0 && tx.send(at).is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(targets.len());
    let mut lost = 0;
    for (path, drift, want) in targets {
        std::thread::sleep(spacing);
        while rx.try_recv().is_ok() {}
        let started = Instant::now();
        std::fs::write(path, format!("{drift}\n")).expect("write the drift");
        let deadline = started + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(at) = rx.recv_timeout(left) {
                let now = std::fs::read_to_string(path).unwrap_or_default();
                if now.trim() == *want {
                    samples.push(at.saturating_duration_since(started));
                    break;
                }
            } else {
                lost += 1;
                break;
            }
        }
    }
    if lost > 0 {
        println!(
            "  WARNING: {lost} of {} writes were not corrected within 10 s",
            targets.len()
        );
    }
    samples
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `n=200 p50=… p90=… p99=… max=…`
pub fn summary(samples: &[Duration]) -> String {
    let mut s = samples.to_vec();
    s.sort();
    format!(
        "n={} p50={} p90={} p99={} max={}",
        s.len(),
        ms(percentile(&s, 50.0)),
        ms(percentile(&s, 90.0)),
        ms(percentile(&s, 99.0)),
        ms(s.last().copied().unwrap_or_default())
    )
}

const FLOOR: &str = "HOLDFAST_BENCH_FLOOR";

/// The floor a corrector is measured against: the least a program can do to
/// undo a write to one file it watches. One inotify watch (IN_MODIFY |
/// IN_CLOSE_WRITE, as holdfast's), and on each event one read of the file
/// and, when it is not `want`, one write of `want`: no policy, no plan, no
/// journal, no report. A child process of this benchmark's own binary, so
/// that it pays what the daemon pays for being a process of its own.
pub struct Floor {
    child: Child,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Floor {
    /// Starts the floor corrector on `path` and returns once its watch is in
    /// place.
    pub fn start(path: &Path, want: &str) -> Floor {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env(FLOOR, format!("{}\n{want}", path.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the floor corrector");
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("the floor corrector's readiness");
        assert_eq!(ready.trim(), "ready", "the floor corrector did not start");
        Floor { child }
    }
}

/// When this process was started as [`Floor`], runs the floor corrector and
/// never returns. Call first in `main`, before [`enter_namespaces`] (the
/// floor runs in the namespace of the benchmark that started it).
pub fn run_floor_if_asked() {
    let Some(arg) = std::env::var_os(FLOOR) else {
        return;
    };
    let arg = arg.into_string().expect("utf-8 floor argument");
    let (path, want) = arg.split_once('\n').expect("path and value");
    let mut inotify = inotify::Inotify::init().expect("inotify");
    inotify
        .watches()
        .add(
            path,
            inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::MODIFY,
        )
        .expect("watch");
    println!("ready");
    let want_line = format!("{want}\n");
    let mut buffer = [0u8; 4096];
    loop {
        let events = inotify
            .read_events_blocking(&mut buffer)
            .expect("inotify read");
        if events.count() == 0 {
            continue;
        }
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.trim() != want {
            let _ = std::fs::write(path, &want_line);
        }
    }
}
