//! Benchmark: what a process that only *reads* a watched key costs the
//! daemon. Inside a private network and mount namespace, `holdfast serve`
//! enforces a ten-key `net.*` policy; a reader thread of this benchmark
//! reads the watched `net.core.somaxconn` in a tight loop (open, read,
//! close) for 10 s. holdfast asks inotify for writes only, so the reads
//! should not wake it at all. Prints the daemon's CPU time over the storm
//! (summed over its threads from /proc/PID/task/*/schedstat, in ns, so far
//! below the 10 ms clock tick), then the same with no storm, then the
//! drift-to-correction latency of 100 external writes made during a second
//! storm.
//!
//! Run (root): cargo bench --bench reader_storm
//! `HOLDFAST_BENCH_STORM_SECS=N` changes the length of each storm.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "/proc/sys/net/core/somaxconn";

/// CPU time of every thread of `pid` so far, in ns (schedstat's first
/// field: time spent on the CPU).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Reads `path` in a tight loop until `stop`; returns the number of reads.
fn storm(path: &'static str, stop: Arc<AtomicBool>, reads: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let _ = std::fs::read(path);
            n += 1;
        }
        reads.store(n, Ordering::SeqCst);
    });
}

/// Daemon CPU over `secs` seconds, with or without a reader storm; returns
/// (CPU ns, reads).
fn window(pid: u32, secs: u64, with_storm: bool) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let before = cpu_ns(pid);
    if with_storm {
        storm(KEY, Arc::clone(&stop), Arc::clone(&reads));
    }
    std::thread::sleep(Duration::from_secs(secs));
    let after = cpu_ns(pid);
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    (after - before, reads.load(Ordering::SeqCst))
}

fn main() {
    if !support::enter_namespaces() {
        return;
    }
    let secs: u64 = std::env::var("HOLDFAST_BENCH_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, support::NET_POLICY).expect("policy");
    let daemon = support::serve(
        dir.path(),
        &["--policy", policy.to_str().expect("utf-8 path")],
        &["--contested-after", "0", "--rescan", "1h"],
    );
    let pid = daemon.child.id();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "holdfast serve under a reader storm (network namespace, real /proc/sys, {KEY} watched)"
    );
    let (storm_ns, reads) = window(pid, secs, true);
    println!(
        "  storm: {reads} reads in {secs} s ({:.0}/s); daemon CPU {:.3} ms",
        reads as f64 / secs as f64,
        storm_ns as f64 / 1e6
    );
    let (quiet_ns, _) = window(pid, secs, false);
    println!(
        "  no storm: daemon CPU over {secs} s {:.3} ms",
        quiet_ns as f64 / 1e6
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    storm(KEY, Arc::clone(&stop), Arc::clone(&reads));
    let started = Instant::now();
    let samples = support::drift_to_correction(
        Path::new(KEY),
        "128",
        "8191",
        100,
        Duration::from_millis(50),
    );
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    let spent = started.elapsed().as_secs_f64();
    println!(
        "  drift-to-correction during a storm ({} reads in {spent:.1} s): {}",
        reads.load(Ordering::SeqCst),
        support::summary(&samples)
    );
}
