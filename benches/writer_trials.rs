//! Crash-safety of holdfast's writes on a fake root: concurrent `apply`
//! runs with different policies, `apply` killed with SIGKILL at random
//! moments, and `apply` beside a running `serve`. After each trial the
//! managed files must be whole (exactly one policy's rendering, or absent
//! before the first write), and after the next complete run no temp file
//! may be left. Prints the counts; any violation makes it exit 1.
//!
//! `cargo bench --bench writer_trials`; HOLDFAST_BENCH_TRIALS (default 200)
//! concurrent pairs and HOLDFAST_BENCH_KILLS (default 500) kills.

mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::trials::{self, Rng};

const LIMITS: &str = "etc/security/limits.d/90-holdfast.conf";
const PERSIST: &str = "etc/sysctl.d/99-zz-holdfast.conf";
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

fn temp_files(root: &Path) -> usize {
    [LIMITS, PERSIST]
        .iter()
        .filter_map(|f| root.join(f).parent().map(Path::to_path_buf))
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".holdfast-tmp"))
        .count()
}

/// Whether each managed file is absent or exactly one of the renderings.
fn whole(root: &Path, renderings: &[(String, String)]) -> bool {
    let read = |f: &str| std::fs::read_to_string(root.join(f)).ok();
    let ok = |f: &str, pick: fn(&(String, String)) -> &String| match read(f) {
        None => true,
        Some(text) => renderings.iter().any(|r| *pick(r) == text),
    };
    ok(LIMITS, |r| &r.0) && ok(PERSIST, |r| &r.1)
}

fn main() {
    let pairs = trials::count_from_env("HOLDFAST_BENCH_TRIALS", 200);
    let kills = trials::count_from_env("HOLDFAST_BENCH_KILLS", 500);
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = trials::write_policies(dir.path(), &[1000, 5000], policy);
    // Each policy's rendering, from a clean run of it alone; the slower
    // run sets the window kills are spread over.
    let mut one_run = Duration::ZERO;
    let renderings: Vec<(String, String)> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let root = dir.path().join(format!("ref{i}"));
            fake_root(&root);
            let t = Instant::now();
            apply(&root, p).status().expect("apply");
            one_run = one_run.max(t.elapsed());
            let read = |f: &str| std::fs::read_to_string(root.join(f)).expect("rendering");
            (read(LIMITS), read(PERSIST))
        })
        .collect();
    let mut violations = 0;

    // Concurrent writers with different policies.
    let root = dir.path().join("concurrent");
    fake_root(&root);
    let started = Instant::now();
    for _ in 0..pairs {
        let mut a = apply(&root, &policies[0]).spawn().expect("spawn");
        let mut b = apply(&root, &policies[1]).spawn().expect("spawn");
        let _ = (a.wait(), b.wait());
        if !whole(&root, &renderings) || temp_files(&root) != 0 {
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
        if !whole(&root, &renderings) {
            torn += 1;
        }
        let n = temp_files(&root);
        if n > 0 {
            left_behind += 1;
            max_left = max_left.max(n);
        }
    }
    apply(&root, &policies[0]).status().expect("apply");
    let after = temp_files(&root);
    println!(
        "SIGKILLs: {kills} spread over {} ms (one apply run) in {:.1}s, torn: {torn}, kills that left a temp file: {left_behind} (at most {max_left} at once), temp files after the next run: {after}",
        one_run.as_millis(),
        started.elapsed().as_secs_f64()
    );
    violations += torn + after;

    // `apply` beside a running daemon: refused, never interleaved.
    let root = dir.path().join("served");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.join(LIMITS).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut refused = 0;
    for _ in 0..20 {
        let out = trials::apply(&root, &policies[1], "1ms")
            .output()
            .expect("apply");
        if out.status.code() == Some(1) {
            refused += 1;
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let untouched =
        std::fs::read_to_string(root.join(LIMITS)).ok() == Some(renderings[0].0.clone());
    println!("apply beside serve: {refused} of 20 refused, daemon's file untouched: {untouched}");
    if refused != 20 || !untouched {
        violations += 1;
    }
    if violations > 0 {
        eprintln!("VIOLATIONS: {violations}");
        std::process::exit(1);
    }
}
