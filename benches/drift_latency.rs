//! Benchmark: drift-to-correction latency of `holdfast serve` on the real
//! kernel. Inside a private network namespace, 200 external writes to the
//! watched `net.core.somaxconn`; each is timed from the write to the
//! daemon's restoring write. Prints p50/p90/p99/max.
//!
//! Run (root): cargo bench --bench drift_latency
//! `HOLDFAST_BENCH_WRITES=N` changes the number of writes.

mod support;

use std::path::Path;
use std::time::Duration;

fn main() {
    if !support::enter_namespaces() {
        return;
    }
    let n: usize = std::env::var("HOLDFAST_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, support::NET_POLICY).expect("policy");
    // Contested detection off: 200 corrections in a row are the point here,
    // not a competing writer to back off from.
    let _daemon = support::serve(
        dir.path(),
        &["--policy", policy.to_str().expect("utf-8 path")],
        &["--contested-after", "0"],
    );
    println!(
        "holdfast drift-to-correction latency (network namespace, real /proc/sys, {n} writes 20 ms apart)"
    );
    let samples = support::drift_to_correction(
        Path::new("/proc/sys/net/core/somaxconn"),
        "128",
        "8191",
        n,
        Duration::from_millis(20),
    );
    println!("  net.core.somaxconn  {}", support::summary(&samples));
}
