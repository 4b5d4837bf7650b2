//! Crash-safety of the originals journal: `holdfast apply` killed with
//! SIGKILL at random moments on a fake root with a few hundred sysctls and
//! limits (and a file of holdfast's name that was there before), then the
//! journal read and `holdfast rollback` run. After each trial:
//! - every managed file is absent, the original, or one policy's complete
//!   rendering (never torn);
//! - the journal is absent (then the host is untouched) or readable, and
//!   every entry holds the true original;
//! - a rollback exits 0 and the fake root (files, modes and /proc/sys
//!   values; temp files a killed writer left included) equals its state
//!   before the first apply.
//!
//! Half the trials kill the first apply; the other half complete a first
//! apply with one policy, then kill an apply of another (the journal must
//! still hold the values from before the first). Prints the counts; any
//! violation makes it exit 1.
//!
//! `cargo bench --bench journal_trials`; HOLDFAST_BENCH_TRIALS (default 200).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod support;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use holdfast::host::HostRoot;
use holdfast::journal::store as journal_store;
use holdfast::journal::{Original, Target};
use support::trials::{self, Rng};

const KEYS: usize = 300;
const USERS: usize = 100;
const LIMITS: &str = "etc/security/limits.d/90-holdfast.conf";
const PERSIST: &str = "etc/sysctl.d/99-zz-holdfast.conf";
const LIMITS_BEFORE: &str = "# left here by hand before holdfast\n@ops hard nofile 4096\n";

fn policy(value: u32) -> String {
    trials::policy(value, KEYS, USERS)
}

/// The original value of key `k` (each key its own, so a journal that
/// mixed keys up would show).
fn original(k: usize) -> String {
    format!("{}", 7 * k + 3)
}

fn fake_root(dir: &Path) {
    trials::fake_proc(dir, KEYS, original);
    std::fs::create_dir_all(dir.join("etc/security/limits.d")).expect("etc");
    std::fs::create_dir_all(dir.join("proc/sys/fs")).expect("fs");
    std::fs::write(dir.join("proc/sys/fs/nr_open"), "1048576\n").expect("nr_open");
    let limits = dir.join(LIMITS);
    std::fs::write(&limits, LIMITS_BEFORE).expect("limits");
    std::fs::set_permissions(&limits, std::fs::Permissions::from_mode(0o640)).expect("mode");
}

/// Every file under the root with its mode and content, the lock aside.
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let p = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if rel.starts_with("run/holdfast") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let content = std::fs::read(&p).expect("read");
                out.insert(
                    rel,
                    format!(
                        "{:o} {}",
                        meta.permissions().mode() & 0o7777,
                        String::from_utf8_lossy(&content)
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn apply(root: &Path, policy: &Path) -> Command {
    trials::apply(root, policy, "30s")
}

/// Whether every journal entry holds the true original.
fn true_originals(root: &Path) -> Result<usize, String> {
    let journal = journal_store::load(&HostRoot::new(root)).map_err(|e| e.to_string())?;
    for e in journal.entries() {
        let ok = match (&e.target, &e.original) {
            (Target::Sysctl(k), Original::Value(v)) => k
                .as_str()
                .strip_prefix("fake.key")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| *v == original(n)),
            (Target::File(p), Original::File { content, mode }) => {
                p == Path::new(LIMITS) && content == LIMITS_BEFORE && *mode == 0o640
            }
            // holdfast's sysctl.d file and the unit files (drop-ins, the
            // slice) were not there before it.
            (Target::File(p), Original::Absent) => {
                p == Path::new(PERSIST) || p.starts_with("etc/systemd/system")
            }
            _ => false,
        };
        if !ok {
            return Err(format!("{e:?}"));
        }
    }
    Ok(journal.len())
}

/// Names the files that differ, for a violation's report.
fn report_diff(
    trial: usize,
    what: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        if before.get(k) != after.get(k) {
            eprintln!(
                "trial {trial}: {what}: {k}: {:?} -> {:?}",
                before
                    .get(k)
                    .map(|s| s.chars().take(60).collect::<String>()),
                after.get(k).map(|s| s.chars().take(60).collect::<String>())
            );
        }
    }
}

fn main() {
    let trial_count = trials::count_from_env("HOLDFAST_BENCH_TRIALS", 200);
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = trials::write_policies(dir.path(), &[1000, 5000], policy);
    // Each policy's renderings, and the time of one apply (the window kills
    // are spread over).
    let mut one_run = Duration::ZERO;
    // What may be under etc after a kill: the files as they were before
    // holdfast, or as a clean run of either policy wrote them.
    let mut renderings = Vec::new();
    {
        let root = dir.path().join("ref-before");
        fake_root(&root);
        renderings.push(trials::etc_files(&root));
    }
    for (i, p) in policies.iter().enumerate() {
        let root = dir.path().join(format!("ref{i}"));
        fake_root(&root);
        let t = Instant::now();
        apply(&root, p).status().expect("apply");
        one_run = one_run.max(t.elapsed());
        renderings.push(trials::etc_files(&root));
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut torn, mut unjournaled, mut bad_journal, mut rollback_failed, mut not_back) =
        (0, 0, 0, 0, 0);
    let (mut no_journal, mut entries_total) = (0, 0);
    let mut rollback_time = Duration::ZERO;
    let started = Instant::now();
    for i in 0..trial_count {
        let root = dir.path().join(format!("t{i}"));
        fake_root(&root);
        let before = fingerprint(&root);
        let second = i % 2 == 1;
        if second {
            apply(&root, &policies[0]).status().expect("apply");
        }
        let mut child = apply(&root, &policies[usize::from(second)])
            .spawn()
            .expect("spawn");
        let window = one_run.as_micros() as u64 * 12 / 10;
        std::thread::sleep(Duration::from_micros(rng.below(window.max(1))));
        let _ = child.kill();
        let _ = child.wait();
        if !trials::is_whole(&root, &renderings) {
            torn += 1;
        }
        if !root.join(holdfast::host::JOURNAL_FILE).exists() {
            no_journal += 1;
            // No journal: no setting may have changed (a temp file of the
            // journal's own, not renamed yet, is not a setting).
            let mut now = fingerprint(&root);
            now.retain(|k, _| !k.starts_with("var/lib/holdfast/"));
            if now != before {
                report_diff(i, "changed without a journal", &before, &now);
                unjournaled += 1;
            }
        }
        match true_originals(&root) {
            Ok(n) => entries_total += n,
            Err(e) => {
                eprintln!("trial {i}: journal: {e}");
                bad_journal += 1;
            }
        }
        let t = Instant::now();
        let ok = trials::holdfast(&root, &["rollback", "--lock-wait", "30s"])
            .status()
            .expect("rollback")
            .success();
        rollback_time += t.elapsed();
        if !ok {
            rollback_failed += 1;
        }
        let after = fingerprint(&root);
        if after != before {
            report_diff(i, "not back after rollback", &before, &after);
            not_back += 1;
        }
        std::fs::remove_dir_all(&root).ok();
    }
    println!(
        "journal trials: {trial_count} SIGKILLs of apply ({KEYS} sysctls, {USERS} limits, {} services in a slice; kills spread over {} ms, one apply run) in {:.1}s; \
         kills before the journal existed: {no_journal}; journal entries checked: {entries_total}; \
         torn files: {torn}, changes without a journal: {unjournaled}, unreadable or wrong journals: {bad_journal}, \
         failed rollbacks: {rollback_failed}, roots not back to their checksum: {not_back}; mean rollback {:.1} ms",
        trials::UNITS,
        one_run.as_millis(),
        started.elapsed().as_secs_f64(),
        rollback_time.as_secs_f64() * 1000.0 / trial_count.max(1) as f64
    );
    let violations = torn + unjournaled + bad_journal + rollback_failed + not_back;
    if violations > 0 {
        eprintln!("{violations} violations");
        std::process::exit(1);
    }
}
