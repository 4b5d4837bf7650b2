//! Benchmark: one full check pass (observe + compare + plan) over 10 and
//! 1000 sysctl keys of the real /proc/sys, read-only, beside a plain loop
//! that only reads the same files. Prints medians and the ratio.
//!
//! Run: cargo bench --bench check_pass

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use holdfast::engine;
use holdfast::host::HostRoot;
use holdfast::policy::Policy;

/// Readable, single-line sysctl files under /proc/sys, as (key, path, value).
fn real_keys(limit: usize) -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/proc/sys")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries.into_iter().rev() {
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(value) = fs::read_to_string(&path) else {
                continue;
            };
            let value = value.trim_end();
            if value.is_empty() || value.contains('\n') || value.contains('"') {
                continue;
            }
            let Ok(rel) = path.strip_prefix("/proc/sys") else {
                continue;
            };
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().replace('.', "/"))
                .collect::<Vec<_>>()
                .join(".");
            if !key.contains('.') {
                continue;
            }
            out.push((key, path, value.to_string()));
        }
    }
    out.truncate(limit);
    out
}

fn policy_for(keys: &[(String, PathBuf, String)]) -> Policy {
    let mut text = String::from("version: 1\nmode: audit\nsysctl:\n");
    for (key, _, value) in keys {
        text.push_str(&format!(
            "  {key}: \"{}\"\n",
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    Policy::from_files([("bench.yaml", text.as_str())]).expect("bench policy is valid")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(rounds: usize, mut f: F) -> Duration {
    for _ in 0..=(rounds / 10) {
        f();
    }
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn plain_loop(paths: &[&Path]) -> usize {
    let mut total = 0;
    for p in paths {
        if let Ok(s) = fs::read_to_string(p) {
            total += s.len();
        }
    }
    total
}

fn main() {
    let host = HostRoot::new("/");
    println!("holdfast check-pass benchmark (real /proc/sys, read-only; medians)");
    println!(
        "{:>6}  {:>14}  {:>14}  {:>6}  {:>14}",
        "keys", "check pass", "plain reads", "ratio", "policy parse"
    );
    for (n, rounds) in [(10usize, 2000usize), (1000, 200)] {
        let keys = real_keys(n);
        if keys.len() < n {
            println!(
                "{n:>6}  only {} readable keys on this host; skipped",
                keys.len()
            );
            continue;
        }
        let parse = time(rounds.min(200), || {
            std::hint::black_box(policy_for(&keys));
        });
        let policy = policy_for(&keys);
        let paths: Vec<&Path> = keys.iter().map(|(_, p, _)| p.as_path()).collect();
        let pass = time(rounds, || {
            let result = engine::plan(&host, &policy);
            std::hint::black_box(result.items.len());
        });
        let plain = time(rounds, || {
            std::hint::black_box(plain_loop(&paths));
        });
        println!(
            "{n:>6}  {:>11.1} µs  {:>11.1} µs  {:>5.2}x  {:>11.1} µs",
            pass.as_secs_f64() * 1e6,
            plain.as_secs_f64() * 1e6,
            pass.as_secs_f64() / plain.as_secs_f64(),
            parse.as_secs_f64() * 1e6,
        );
    }
}
