//! Benchmark: what the size of a policy costs. A fake root with N
//! per-interface sysctls (`net.ipv4.conf.ethI.{rp_filter, accept_redirects,
//! send_redirects, accept_source_route, log_martians}`), every one off its
//! value, converged by `holdfast apply` (so the originals journal holds N
//! entries and holdfast's own sysctl.d file N lines). Then, for each N:
//!
//! - `holdfast check` as a whole process, and a full pass (`apply` on the
//!   converged root, which reads everything and writes nothing), each with
//!   its time per key; beside them the floor: this process reading the N
//!   files once.
//! - `holdfast serve --contested-after 0` on the root: one managed key at a
//!   time written off its value (a different key each time, spread over the
//!   policy) and the time to its correction, seen through inotify; the
//!   daemon's CPU per event (utime + stime from /proc/PID/stat over the
//!   run, divided by the events); its RSS; and how long a SIGTERM sent right
//!   after a drift takes to end it.
//!
//! Run: cargo bench --bench scale
//! `HOLDFAST_BENCH_SIZES=100,1000,5000` (the serve sizes; check and the full
//! pass also run at 20,000 unless the list is given), and
//! `HOLDFAST_BENCH_WRITES=N` (events per size, default 200).
//!
//! Needs no root: everything is a regular file under a temp dir.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::trials;

/// The five hardening keys of one interface, with a value off the policy's
/// and the policy's.
const PER_INTERFACE: [(&str, &str, &str); 5] = [
    ("rp_filter", "0", "1"),
    ("accept_redirects", "1", "0"),
    ("send_redirects", "1", "0"),
    ("accept_source_route", "1", "0"),
    ("log_martians", "0", "1"),
];

struct Key {
    path: PathBuf,
    drift: &'static str,
    want: &'static str,
}

/// Builds the fake root (`root/`) and the policy (`policy.yaml`) for `n`
/// keys under `dir`; returns the keys.
fn build(dir: &Path, n: usize) -> Vec<Key> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc/sysctl.d")).expect("etc");
    let mut policy = String::from("version: 1\nmode: enforce\nsysctl:\n");
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let (name, drift, want) = PER_INTERFACE[i % 5];
        let iface = format!("eth{}", i / 5);
        let conf = root.join(format!("proc/sys/net/ipv4/conf/{iface}"));
        if i % 5 == 0 {
            std::fs::create_dir_all(&conf).expect("conf dir");
        }
        let path = conf.join(name);
        std::fs::write(&path, format!("{drift}\n")).expect("key");
        policy.push_str(&format!("  net.ipv4.conf.{iface}.{name}: {want}\n"));
        keys.push(Key { path, drift, want });
    }
    std::fs::write(dir.join("policy.yaml"), policy).expect("policy");
    keys
}

fn run(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let status = cmd.status().expect("run holdfast");
    let took = t.elapsed();
    // check exits 0 (compliant); apply 0. Anything else is a broken bench.
    assert!(status.success(), "{cmd:?} exited {status}");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_key(d: Duration, n: usize) -> String {
    format!("{:.2} µs/key", d.as_secs_f64() * 1e6 / n as f64)
}

/// The whole-process figures of one size: apply from drifted, then check
/// and a full pass on the converged root, and the read floor.
fn passes(dir: &Path, keys: &[Key]) {
    let n = keys.len();
    let root = dir.join("root");
    let policy = dir.join("policy.yaml");
    let policy = policy.to_str().expect("utf-8 path");
    let first = run(&mut trials::holdfast(&root, &["apply", "--policy", policy]));
    let rounds = if n >= 20_000 { 3 } else { 7 };
    let check = median(
        (0..rounds)
            .map(|_| run(&mut trials::holdfast(&root, &["check", "--policy", policy])))
            .collect(),
    );
    let full = median(
        (0..rounds)
            .map(|_| run(&mut trials::holdfast(&root, &["apply", "--policy", policy])))
            .collect(),
    );
    let floor = median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for k in keys {
                    let _ = std::hint::black_box(std::fs::read(&k.path));
                }
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "  {n:>6} keys  apply from drifted {:>9}   check {:>9} ({})   full pass {:>9} ({})   read floor {:>9}",
        support::ms(first),
        support::ms(check),
        per_key(check, n),
        support::ms(full),
        per_key(full, n),
        support::ms(floor),
    );
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; fields start after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': state is field 0, utime 11, stime 12.
    field(11) + field(12)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects; it returns -1 on error.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

/// The daemon figures of one size; returns the p50 of its corrections and
/// its RSS in KiB.
fn daemon(dir: &Path, keys: &[Key], writes: usize) -> (Duration, u64) {
    let n = keys.len();
    let root = dir.join("root");
    let policy = dir.join("policy.yaml");
    let mut d = support::serve(
        dir,
        &[
            "--root",
            root.to_str().expect("utf-8 path"),
            "--policy",
            policy.to_str().expect("utf-8 path"),
        ],
        &["--contested-after", "0"],
    );
    let pid = d.child.id();
    // Let the start-up pass's own aftermath settle.
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(pid);
    // A different key for each event, spread over the whole policy.
    let step = (n / writes.max(1)).max(1);
    let targets: Vec<(&Path, &str, &str)> = (0..writes)
        .map(|i| &keys[(i * step + i / 5) % n])
        .map(|k| (k.path.as_path(), k.drift, k.want))
        .collect();
    let cpu_before = cpu_ticks(pid);
    let samples = support::drift_to_correction_of(&targets, Duration::from_millis(20));
    let cpu = cpu_ticks(pid) - cpu_before;
    let cpu_per_event =
        Duration::from_secs_f64(cpu as f64 / clock_ticks() as f64 / samples.len().max(1) as f64);
    let mut sorted = samples.clone();
    sorted.sort();
    let p50 = support::percentile(&sorted, 50.0);
    // SIGTERM right after a drift, so that a pass is in flight.
    let k = &keys[n / 2];
    std::fs::write(&k.path, format!("{}\n", k.drift)).expect("drift");
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = d.child.wait();
    let stop = t.elapsed();
    // Reaped: nothing is left for Daemon's drop to stop.
    std::mem::forget(d);
    println!(
        "  {n:>6} keys  correction {}   CPU per event {}   RSS {} KiB   SIGTERM to exit {}",
        support::summary(&samples),
        support::ms(cpu_per_event),
        rss,
        support::ms(stop),
    );
    (p50, rss)
}

fn main() {
    let writes = trials::count_from_env("HOLDFAST_BENCH_WRITES", 200);
    let given = std::env::var("HOLDFAST_BENCH_SIZES").ok();
    let sizes: Vec<usize> = given
        .as_deref()
        .unwrap_or("100,1000,5000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut pass_sizes = sizes.clone();
    if given.is_none() {
        pass_sizes.push(20_000);
    }

    println!("holdfast at scale: N per-interface sysctls on a fake root, converged by apply");
    println!("check and a full pass (whole process, holdfast's own sysctl.d file present):");
    for &n in &pass_sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = build(dir.path(), n);
        passes(dir.path(), &keys);
    }

    println!("the daemon ({writes} drift events per size, 20 ms apart, a different key each):");
    let mut figures = Vec::new();
    for &n in &sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = build(dir.path(), n);
        let root = dir.path().join("root");
        let policy = dir.path().join("policy.yaml");
        run(&mut trials::holdfast(
            &root,
            &["apply", "--policy", policy.to_str().expect("utf-8 path")],
        ));
        figures.push((n, daemon(dir.path(), &keys, writes)));
    }
    if let (Some((n0, (p0, r0))), Some((n1, (p1, r1)))) = (figures.first(), figures.last())
        && n1 > n0
    {
        let goal = (*p0 * 2).max(Duration::from_millis(5));
        println!(
            "  p50 at {n1}: {} (goal: at most max(2 × p50 at {n0}, 5 ms) = {})",
            support::ms(*p1),
            support::ms(goal),
        );
        println!(
            "  RSS growth: {:.2} KiB per key from {n0} to {n1} keys",
            (*r1 as f64 - *r0 as f64) / (*n1 - *n0) as f64
        );
    }
}
