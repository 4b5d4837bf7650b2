//! Benchmark: drift-to-correction latency of `holdfast serve` on the real
//! kernel. Inside a private network namespace, 1,000 external writes to the
//! watched `net.core.somaxconn`; each is timed from the write to the
//! daemon's restoring write. Prints p50/p90/p99/max, and beside them the
//! same figures for the floor: a minimal inotify loop in a process of its
//! own that only reads the key and writes it back, timed the same way in
//! the same run.
//!
//! Run (root): cargo bench --bench drift_latency
//! `HOLDFAST_BENCH_WRITES=N` changes the number of writes. 1,000 by default:
//! the p99 of 200 samples is their second worst, which one scheduling hiccup
//! of this machine decides.

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

fn main() {
    support::run_floor_if_asked();
    if !support::enter_namespaces() {
        return;
    }
    let n: usize = std::env::var("HOLDFAST_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let key = Path::new("/proc/sys/net/core/somaxconn");
    let spacing = Duration::from_millis(20);
    println!(
        "holdfast drift-to-correction latency (network namespace, real /proc/sys, {n} writes 20 ms apart)"
    );
    // The floor first, on the same key, in the same run: a minimal inotify
    // loop that only reads the file and writes the value back.
    std::fs::write(key, "8191\n").expect("set the key");
    let floor = {
        let _floor = support::Floor::start(key, "8191");
        support::drift_to_correction(key, "128", "8191", n, spacing)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, support::NET_POLICY).expect("policy");
    // Contested detection off: a thousand corrections in a row are the point here,
    // not a competing writer to back off from.
    let _daemon = support::serve(
        dir.path(),
        &["--policy", policy.to_str().expect("utf-8 path")],
        &["--contested-after", "0"],
    );
    let samples = support::drift_to_correction(key, "128", "8191", n, spacing);
    println!(
        "  net.core.somaxconn  holdfast      {}",
        support::summary(&samples)
    );
    println!(
        "  net.core.somaxconn  inotify floor {}",
        support::summary(&floor)
    );
}
