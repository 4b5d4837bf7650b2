//! Crash-safety of holdfast's writes on a fake root: concurrent `apply`
//! runs with different policies, `apply` killed with SIGKILL at random
//! moments, and `apply` beside a running `serve`. After each trial the
//! managed files must be whole (exactly one policy's rendering, or absent
//! before the first write), and after the next complete run no temp file
//! may be left. Prints the counts; any violation makes it exit 1.
//!
//! `cargo bench --bench writer_trials`; HOLDFAST_BENCH_TRIALS (default 200)
//! concurrent pairs and HOLDFAST_BENCH_KILLS (default 500) kills.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::trials::{self, Rng};

const LIMITS: &str = "etc/security/limits.d/90-holdfast.conf";
const KEYS: usize = 200;

fn policy(value: u32) -> String {
    trials::policy(value, KEYS, KEYS)
}

fn fake_root(dir: &Path) {
    trials::fake_proc(dir, KEYS, |_| "0".to_string());
}

fn apply(root: &Path, policy: &Path) -> Command {
    trials::apply(root, policy, "30s")
}

fn main() {
    let pairs = trials::count_from_env("HOLDFAST_BENCH_TRIALS", 200);
    let kills = trials::count_from_env("HOLDFAST_BENCH_KILLS", 500);
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = trials::write_policies(dir.path(), &[1000, 5000], policy);
    // Each policy's rendering, from a clean run of it alone; the slower
    // run sets the window kills are spread over.
    let mut one_run = Duration::ZERO;
    let renderings: Vec<trials::Files> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let root = dir.path().join(format!("ref{i}"));
            fake_root(&root);
            let t = Instant::now();
            apply(&root, p).status().expect("apply");
            one_run = one_run.max(t.elapsed());
            trials::etc_files(&root)
        })
        .collect();
    let unit_files = renderings[0]
        .keys()
        .filter(|p| p.starts_with("etc/systemd"))
        .count();
    println!(
        "each policy: {KEYS} sysctls, {KEYS} session limits, {} services in a slice ({} files under etc, {unit_files} of them unit files)",
        trials::UNITS,
        renderings[0].len()
    );
    let mut violations = 0;

    // Concurrent writers with different policies.
    let root = dir.path().join("concurrent");
    fake_root(&root);
    let started = Instant::now();
    for _ in 0..pairs {
        let mut a = apply(&root, &policies[0]).spawn().expect("spawn");
        let mut b = apply(&root, &policies[1]).spawn().expect("spawn");
        let _ = (a.wait(), b.wait());
        if !trials::is_whole(&root, &renderings) || trials::temp_files(&root) != 0 {
            violations += 1;
        }
    }
    println!(
        "concurrent apply pairs: {pairs} in {:.1}s, torn or temp files left: {violations}",
        started.elapsed().as_secs_f64()
    );

    // SIGKILL at random moments.
    let root = dir.path().join("killed");
    fake_root(&root);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut torn, mut left_behind, mut max_left) = (0, 0, 0);
    let started = Instant::now();
    for i in 0..kills {
        let mut child = apply(&root, &policies[i % 2]).spawn().expect("spawn");
        let window = one_run.as_micros() as u64 * 12 / 10;
        std::thread::sleep(Duration::from_micros(rng.below(window.max(1))));
        let _ = child.kill();
        let _ = child.wait();
        if !trials::is_whole(&root, &renderings) {
            torn += 1;
        }
        let n = trials::temp_files(&root);
        if n > 0 {
            left_behind += 1;
            max_left = max_left.max(n);
        }
    }
    apply(&root, &policies[0]).status().expect("apply");
    let after = trials::temp_files(&root);
    println!(
        "SIGKILLs: {kills} spread over {} ms (one apply run) in {:.1}s, torn: {torn}, kills that left a temp file: {left_behind} (at most {max_left} at once), temp files after the next run: {after}",
        one_run.as_millis(),
        started.elapsed().as_secs_f64()
    );
    violations += torn + after;

    // `serve` and `apply` started at once with different policies, each
    // trial on a fresh root: one of them holds the writer lock, the other
    // waits 1 ms and is refused (apply) or waits its turn (serve); never
    // an interleaving, never a file outside holdfast's.
    let serve_trials = trials::count_from_env("HOLDFAST_BENCH_SERVE_TRIALS", 200);
    let (mut apply_won, mut serve_won, mut serve_bad) = (0, 0, 0);
    let started = Instant::now();
    for i in 0..serve_trials {
        let root = dir.path().join(format!("served{i}"));
        fake_root(&root);
        let socket = root.join("hf.sock");
        let mut serve = Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .arg("--root")
            .arg(&root)
            .arg("--policy")
            .arg(&policies[0])
            .args(["serve", "--no-seccomp", "--listen"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve");
        let applied = trials::apply(&root, &policies[1], "1ms")
            .status()
            .expect("apply");
        // 0 or 2: apply held the lock and wrote (2: the unit items cannot
        // be verified on a fake root, whose systemd is never asked); 1: it
        // was refused.
        match applied.code() {
            Some(0 | 2) => apply_won += 1,
            Some(1) => {}
            _ => eprintln!("trial {i}: apply beside serve exited {applied}"),
        }
        // The daemon's first pass: its limits file, once it has the lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(root.join(LIMITS)).ok().as_ref()
            != renderings[0].get(Path::new(LIMITS))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if applied.code() == Some(1) {
            serve_won += 1;
        }
        let _ = serve.kill();
        let _ = serve.wait();
        if !trials::is_whole(&root, &renderings) {
            serve_bad += 1;
        }
        apply(&root, &policies[0]).status().expect("apply");
        if trials::temp_files(&root) != 0 || !trials::is_whole(&root, &renderings) {
            serve_bad += 1;
        }
        std::fs::remove_dir_all(&root).ok();
    }
    println!(
        "serve and apply at once: {serve_trials} trials in {:.1}s, apply wrote first: {apply_won}, serve held the lock: {serve_won}, torn or foreign or temp files: {serve_bad}",
        started.elapsed().as_secs_f64()
    );
    if serve_bad != 0 || apply_won + serve_won != serve_trials {
        violations += 1;
    }
    if violations > 0 {
        eprintln!("VIOLATIONS: {violations}");
        std::process::exit(1);
    }
}
