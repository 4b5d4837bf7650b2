//! A fake host in a temp dir: /proc/sys files, /proc/meminfo, /etc files.
//! Tests write a host, run holdfast against it with `--root`, and read the
//! files back.

#![allow(
    dead_code,
    reason = "each test crate uses its own share of these helpers"
)]

pub mod fake_systemd;

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub struct FakeHost {
    pub dir: tempfile::TempDir,
}

/// A meminfo with plenty of headroom: 16 GB RAM, 1 GB committed.
pub const ROOMY_MEMINFO: &str = "MemTotal:       16000000 kB\nSwapTotal:             0 kB\nHugetlb:               0 kB\nCommitLimit:     8000000 kB\nCommitted_AS:    1000000 kB\n";
/// A meminfo where strict overcommit at 80% would leave no room: 14 GB of
/// 16 GB already committed.
pub const TIGHT_MEMINFO: &str = "MemTotal:       16000000 kB\nSwapTotal:             0 kB\nHugetlb:               0 kB\nCommitLimit:     8000000 kB\nCommitted_AS:   14000000 kB\n";

impl FakeHost {
    pub fn new() -> FakeHost {
        let host = FakeHost {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        host.write("proc/meminfo", ROOMY_MEMINFO);
        fs::create_dir_all(host.path("etc/sysctl.d")).expect("mkdir");
        host
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Creates /proc/sys/<key> with the value as the kernel prints it.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.write(
            &format!("proc/sys/{}", key.replace('.', "/")),
            &format!("{value}\n"),
        );
    }

    pub fn get_sysctl(&self, key: &str) -> String {
        self.read(&format!("proc/sys/{}", key.replace('.', "/")))
            .trim_end()
            .to_string()
    }

    /// Writes a policy file outside the host root and returns its path.
    pub fn policy(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(&format!("policies/{name}"));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, text).expect("write policy");
        p
    }

    /// `holdfast --root <fake> ARGS...`
    pub fn holdfast(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("holdfast").expect("binary");
        cmd.arg("--root").arg(self.root()).args(args);
        cmd
    }

    /// Runs holdfast with `--format json` and returns (exit code, report).
    pub fn json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let out = self
            .holdfast(args)
            .arg("--format")
            .arg("json")
            .output()
            .expect("run holdfast");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }
}

/// The item for `key` in a JSON report.
pub fn item<'a>(report: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    report["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["key"] == key)
        .unwrap_or_else(|| panic!("no item {key} in {report:#}"))
}

pub fn state<'a>(report: &'a serde_json::Value, key: &str) -> &'a str {
    item(report, key)["state"].as_str().expect("state")
}

/// Stops a test whose prerequisite is missing. Tests that need root, network
/// namespaces or an outside tool are `#[ignore]`d, so a plain `cargo test`
/// lists them as ignored instead of passing them silently; `cargo test --
/// --include-ignored` (what CI runs, as root) runs them, and there a missing
/// prerequisite is a failure, never a skip.
pub fn require(available: bool, what: &str) {
    assert!(
        available,
        "this test needs {what}; it is #[ignore]d by default and runs with `cargo test -- --include-ignored` where that is available (CI is)"
    );
}

/// The reason real-kernel tests are ignored by default.
pub const NEEDS_ROOT: &str = "needs root and network namespaces: cargo test -- --include-ignored";

/// Whether this process may create network and mount namespaces (root, with
/// unshare(1)): the real-kernel tests need them.
pub fn can_unshare() -> bool {
    std::process::Command::new("unshare")
        .args(["--net", "--mount", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The item whose key reads `key` in reports, or a panic listing them all.
pub fn find_item<'a>(items: &'a [holdfast::item::Item], key: &str) -> &'a holdfast::item::Item {
    items
        .iter()
        .find(|i| i.key.to_string() == key)
        .unwrap_or_else(|| panic!("no item {key}: {items:#?}"))
}

/// Runs a shell script as given in a new network and private mount
/// namespace (`unshare --net --mount`), with `$HF` the holdfast binary and
/// `$P` the policy; the exit code and everything it printed. holdfast's
/// state directories (the originals journal, the writer lock) are tmpfs
/// there, so an `apply --root /` in the script leaves no journal or lock on
/// the machine running the tests.
pub fn run_in_netns(policy: &Path, script: &str) -> (i32, String) {
    run_in_netns_with(policy, script, &[])
}

/// What every namespace script starts with: see [`run_in_netns`].
pub const PRIVATE_STATE: &str = "for d in /var/lib/holdfast /run/holdfast; do
    mkdir -p \"$d\" && mount -t tmpfs holdfast-test \"$d\" || exit 97
done
";

/// [`run_in_netns`] with more environment variables for the script.
pub fn run_in_netns_with(policy: &Path, script: &str, env: &[(&str, &Path)]) -> (i32, String) {
    let script = format!("{PRIVATE_STATE}{script}");
    let out = std::process::Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .env("HF", env!("CARGO_BIN_EXE_holdfast"))
        .env("P", policy)
        .envs(env.iter().copied())
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
