//! Benchmark: what an idle `holdfast serve` costs. The daemon runs with the
//! bundled baseline policy (audit mode: it reads, never writes) against the
//! real /proc/sys, inside a private network and mount namespace with a
//! tmpfs over /etc/sysctl.d, listening on a Unix socket only. After 2 s to
//! settle, it is left alone for 60 s; the benchmark reports RSS, CPU time
//! and context switches per thread from /proc (each context switch of a
//! sleeping thread is a wake-up).
//!
//! Run (root): cargo bench --bench idle_cost
//! `HOLDFAST_BENCH_IDLE_SECS=N` changes the idle period;
//! `HOLDFAST_BENCH_RESCAN=1h` passes `--rescan 1h` (no rescan in the
//! window: what is left is every wake-up between rescans).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

/// Clock ticks per second for utime/stime in /proc/PID/stat (USER_HZ, 100
/// on Linux).
const TICKS: f64 = 100.0;

#[derive(Debug, Clone, Default)]
struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
    /// thread name (and id) → voluntary + involuntary context switches
    switches: BTreeMap<String, u64>,
}

fn field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may contain spaces): utime is
    // field 14, stime 15 (1-based), i.e. 11 and 12 after ") ".
    let after = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu_ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    let mut switches = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let tid = t.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n = field(&st, "voluntary_ctxt_switches:") + field(&st, "nonvoluntary_ctxt_switches:");
        switches.insert(format!("{} ({tid})", comm.trim()), n);
    }
    Sample {
        rss_kib: field(&status, "VmRSS:"),
        hwm_kib: field(&status, "VmHWM:"),
        cpu_ticks,
        switches,
    }
}

fn main() {
    if !support::enter_namespaces() {
        return;
    }
    let secs: u64 = std::env::var("HOLDFAST_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().expect("temp dir");
    let policy_dir = dir.path().join("policy.d");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    std::fs::write(
        policy_dir.join("00-baseline.yaml"),
        holdfast::sources::BUNDLED_BASELINE,
    )
    .expect("policy");
    let rescan = std::env::var("HOLDFAST_BENCH_RESCAN").unwrap_or_else(|_| "60s".into());
    let daemon = support::serve(
        dir.path(),
        &["--policy", policy_dir.to_str().expect("utf-8 path")],
        &["--rescan", &rescan],
    );
    let pid = daemon.child.id();
    std::thread::sleep(Duration::from_secs(2));
    let before = sample(pid);
    println!(
        "holdfast serve idle cost (baseline policy, audit mode, real /proc/sys, --rescan {rescan})"
    );
    println!("  idle for {secs} s ...");
    std::thread::sleep(Duration::from_secs(secs));
    let after = sample(pid);
    let cpu_ms = (after.cpu_ticks - before.cpu_ticks) as f64 / TICKS * 1e3;
    println!(
        "  RSS {:.1} MiB (peak {:.1} MiB), threads {}",
        after.rss_kib as f64 / 1024.0,
        after.hwm_kib as f64 / 1024.0,
        after.switches.len()
    );
    println!(
        "  CPU time over {secs} s: {cpu_ms:.0} ms ({:.3}% of one core; clock-tick resolution 10 ms)",
        cpu_ms / (secs as f64 * 10.0)
    );
    let total: u64 = after
        .switches
        .iter()
        .map(|(t, n)| n - before.switches.get(t).copied().unwrap_or(0))
        .sum();
    println!(
        "  context switches over {secs} s: {total} ({:.1} per minute)",
        total as f64 * 60.0 / secs as f64
    );
    for (thread, n) in &after.switches {
        println!(
            "    {thread:<32} {}",
            n - before.switches.get(thread).copied().unwrap_or(0)
        );
    }
}
