//! What the crash-trial benches (`writer_trials`, `journal_trials`) share:
//! a policy of many enforced sysctls and session limits, the `/proc` of a
//! fake root for it, the holdfast command run against that root, and
//! reproducible random moments to kill it at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A count from the environment (`HOLDFAST_BENCH_*`), else `default`.
pub fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An enforced policy: `keys` sysctls `fake.keyN` at `value + N`, and a
/// nofile limit `value:2×value` for `users` users.
pub fn policy(value: u32, keys: usize, users: usize) -> String {
    let mut p = String::from("version: 1\nmode: enforce\nsysctl:\n");
    for k in 0..keys {
        p.push_str(&format!("  fake.key{k}: {}\n", value + k as u32));
    }
    p.push_str("limits:\n");
    for u in 0..users {
        p.push_str(&format!(
            "  - {{domain: user{u}, item: nofile, soft: {value}, hard: {}}}\n",
            value * 2
        ));
    }
    p
}

/// Writes one policy file per value (`pVALUE.yaml` in `dir`), rendered by
/// `render`; their paths, in the values' order.
pub fn write_policies(dir: &Path, values: &[u32], render: impl Fn(u32) -> String) -> Vec<PathBuf> {
    values
        .iter()
        .map(|&v| {
            let p = dir.join(format!("p{v}.yaml"));
            std::fs::write(&p, render(v)).expect("policy");
            p
        })
        .collect()
}

/// The fake root's `/proc` for [`policy`]: each key's file with
/// `value(N)`, a roomy `/proc/meminfo`, and an empty `/etc/sysctl.d`.
pub fn fake_proc(dir: &Path, keys: usize, value: impl Fn(usize) -> String) {
    std::fs::create_dir_all(dir.join("proc/sys/fake")).expect("proc");
    std::fs::create_dir_all(dir.join("etc/sysctl.d")).expect("etc");
    std::fs::write(
        dir.join("proc/meminfo"),
        "MemTotal: 16000000 kB\nSwapTotal: 0 kB\nHugetlb: 0 kB\nCommitLimit: 8000000 kB\nCommitted_AS: 1000000 kB\n",
    )
    .expect("meminfo");
    for k in 0..keys {
        std::fs::write(
            dir.join(format!("proc/sys/fake/key{k}")),
            format!("{}\n", value(k)),
        )
        .expect("key");
    }
}

/// `holdfast --root ROOT ARGS…`, its output discarded.
pub fn holdfast(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    c.arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// `holdfast apply` of `policy`, waiting at most `lock_wait` for another
/// writer.
pub fn apply(root: &Path, policy: &Path, lock_wait: &str) -> Command {
    let mut c = holdfast(root, &["apply", "--lock-wait", lock_wait, "--policy"]);
    c.arg(policy);
    c
}

/// A small xorshift: reproducible random kill moments without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
