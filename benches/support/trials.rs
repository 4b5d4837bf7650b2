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

/// How many services (and so drop-ins) the trial policies manage, all in
/// one slice: with `run/systemd/system` in the fake root holdfast writes
/// their unit files under it (the real systemd is never asked: the root is
/// not `/`).
pub const UNITS: usize = 20;

/// An enforced policy: `keys` sysctls `fake.keyN` at `value + N`, a nofile
/// limit `value:2×value` for `users` users, and [`UNITS`] services with
/// `LimitNOFILE=value` in a slice whose `memory.max` depends on `value`.
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
    p.push_str("services:\n");
    for u in 0..UNITS {
        p.push_str(&format!(
            "  trial{u}.service: {{slice: trial-app, limit_nofile: {value}}}\n"
        ));
    }
    p.push_str(&format!(
        "cgroup:\n  slices:\n    trial-app: {{memory.max: {}M}}\n",
        value / 10
    ));
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
    // A host with systemd: unit files are written (never applied).
    std::fs::create_dir_all(dir.join("run/systemd/system")).expect("run");
    // cgroup v2, so the slice is managed (its unit file written).
    std::fs::create_dir_all(dir.join("sys/fs/cgroup")).expect("cgroup");
    std::fs::write(
        dir.join("sys/fs/cgroup/cgroup.controllers"),
        "cpu io memory pids\n",
    )
    .expect("controllers");
    std::fs::write(
        dir.join("sys/fs/cgroup/cgroup.subtree_control"),
        "cpu io memory pids\n",
    )
    .expect("subtree_control");
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

/// The regular files under a fake root's `etc`, each with its content.
pub type Files = std::collections::BTreeMap<PathBuf, String>;

/// Every regular file under the fake root's `etc`, with its content: what
/// holdfast may have written (and nothing else may appear there).
pub fn etc_files(root: &Path) -> Files {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.join("etc")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                    out.insert(rel, std::fs::read_to_string(&path).unwrap_or_default());
                }
                _ => {}
            }
        }
    }
    out
}

/// Temp files holdfast's atomic writes leave when killed, under `etc`.
pub fn temp_files(root: &Path) -> usize {
    etc_files(root)
        .keys()
        .filter(|p| p.to_string_lossy().contains(".holdfast-tmp"))
        .count()
}

/// Whether every file under `etc` is one a clean run of some policy wrote,
/// with exactly that run's content for that path (each file whole; files
/// may come from different policies, as each is replaced on its own).
/// Temp files are counted apart ([`temp_files`]).
pub fn whole(root: &Path, renderings: &[Files]) -> Result<(), String> {
    for (path, text) in etc_files(root) {
        if path.to_string_lossy().contains(".holdfast-tmp") {
            continue;
        }
        let known: Vec<&String> = renderings.iter().filter_map(|r| r.get(&path)).collect();
        if known.is_empty() {
            return Err(format!("{} is not a file holdfast writes", path.display()));
        }
        if !known.contains(&&text) {
            return Err(format!(
                "{} is torn (no policy's rendering)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// [`whole`] as a yes or no, saying on stderr what failed it.
pub fn is_whole(root: &Path, renderings: &[Files]) -> bool {
    match whole(root, renderings) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("{}: {why}", root.display());
            false
        }
    }
}
