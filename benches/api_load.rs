//! Benchmark: the status API under load, and the reconcile loop beside it.
//! Inside a private network namespace (loopback only), `holdfast serve`
//! listens on 127.0.0.1:8080 with a ten-key policy (support::NET_POLICY). A Rust load generator
//! (keep-alive HTTP/1.1 connections) then:
//! 1. sends GET /status at a fixed 1,000 req/s for 10 s over 4 connections,
//!    each request timed from its scheduled send time (so a stall counts
//!    for every request it delays; the generator's own wake-up jitter, a
//!    few microseconds, is included), while 200 external sysctl writes are
//!    timed to their correction, as in the drift_latency benchmark;
//! 2. sends as fast as it can over 8 connections for 10 s (throughput);
//! 3. runs `wrk` the same way when it is installed, as a cross-check.
//!
//! Run (root): cargo bench --bench api_load

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod support;

use std::path::Path;
use std::time::Duration;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

const ADDR: &str = "127.0.0.1:8080";
const REQUEST: &[u8] =
    b"GET /status HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n";

/// One keep-alive connection (blocking: the generator's threads sleep to
/// the microsecond, which tokio's millisecond timer would not).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open() -> Conn {
        let stream = TcpStream::connect(ADDR).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Sends the request and reads one whole response; returns its status.
    fn get(&mut self) -> u16 {
        self.stream.write_all(REQUEST).expect("send");
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .expect("status code");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.read_more();
                }
                self.buf.drain(..total);
                return status;
            }
            self.read_more();
        }
    }

    fn read_more(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sleeps until `at`: a sleep to 100 µs before, then a short spin.
fn wait_until(at: Instant) {
    let now = Instant::now();
    if at > now + Duration::from_micros(100) {
        std::thread::sleep(at - now - Duration::from_micros(100));
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

struct Run {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

fn collect(threads: Vec<std::thread::JoinHandle<(Vec<Duration>, usize)>>, start: Instant) -> Run {
    let mut run = Run {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for t in threads {
        let (lat, errors) = t.join().expect("generator thread");
        run.latencies.extend(lat);
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    run
}

/// `rate` requests per second over `conns` connections for `secs`, each
/// timed from its scheduled send time, so a stall counts against every
/// request it delays.
fn fixed_rate(rate: u64, conns: u64, secs: u64) -> Run {
    let per_conn = rate * secs / conns;
    let interval = Duration::from_nanos(1_000_000_000 * conns / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let threads = (0..conns)
        .map(|c| {
            // Stagger the connections across one interval.
            let offset = interval * c as u32 / conns as u32;
            std::thread::spawn(move || {
                let mut conn = Conn::open();
                let mut lat = Vec::with_capacity(per_conn as usize);
                let mut errors = 0;
                for i in 0..per_conn {
                    let at = start + offset + interval * i as u32;
                    wait_until(at);
                    if conn.get() != 200 {
                        errors += 1;
                    }
                    lat.push(at.elapsed());
                }
                (lat, errors)
            })
        })
        .collect();
    collect(threads, start)
}

/// As fast as possible over `conns` connections for `secs`.
fn closed_loop(conns: usize, secs: u64) -> Run {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let threads = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::open();
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    if conn.get() != 200 {
                        errors += 1;
                    }
                    lat.push(t.elapsed());
                }
                (lat, errors)
            })
        })
        .collect();
    collect(threads, start)
}

fn report(name: &str, run: &Run) {
    println!(
        "  {name}: {:.0} req/s, {} errors; latency {}",
        run.latencies.len() as f64 / run.elapsed.as_secs_f64(),
        run.errors,
        support::summary(&run.latencies)
    );
}

fn main() {
    if !support::enter_namespaces() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, support::NET_POLICY).expect("policy");
    let _daemon = support::serve(
        dir.path(),
        &["--policy", policy.to_str().expect("utf-8 path")],
        &["--listen", ADDR, "--contested-after", "0"],
    );
    let body = holdfast::daemon::client::get(
        &holdfast::daemon::listen::ListenAddr::parse(ADDR).expect("addr"),
        "/status",
        "application/json",
        Duration::from_secs(5),
    )
    .expect("GET /status");
    println!(
        "holdfast status API under load (network namespace, loopback; /status is {} bytes of JSON)",
        body.body.len()
    );
    let quiet = support::drift_to_correction(
        Path::new("/proc/sys/net/core/somaxconn"),
        "128",
        "8191",
        200,
        Duration::from_millis(20),
    );
    println!(
        "  drift-to-correction, no load:       {}",
        support::summary(&quiet)
    );

    let drift = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(500));
        support::drift_to_correction(
            Path::new("/proc/sys/net/core/somaxconn"),
            "128",
            "8191",
            200,
            Duration::from_millis(20),
        )
    });
    let fixed = fixed_rate(1000, 4, 10);
    let loaded = drift.join().expect("drift thread");
    report("fixed 1000 req/s, 4 connections, 10 s", &fixed);
    println!(
        "  drift-to-correction, under that load: {}",
        support::summary(&loaded)
    );

    let max = closed_loop(8, 10);
    report("max throughput, 8 connections, 10 s", &max);

    match std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d10s", "--latency"])
        .arg(format!("http://{ADDR}/status"))
        .output()
    {
        Ok(out) => {
            println!("  wrk -t1 -c8 -d10s --latency:");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("    {line}");
            }
        }
        Err(_) => println!("  (wrk not installed: apt-get install wrk for a cross-check)"),
    }
}
