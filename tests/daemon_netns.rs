//! `holdfast serve` against the real kernel: inside a fresh network and
//! mount namespace (`unshare --net --mount`, a tmpfs over /etc/sysctl.d), an
//! external `sysctl -w net.core.somaxconn=…` is seen through inotify on
//! /proc/sys and corrected by the daemon. Only the namespace's `net.*`
//! keys change; the host's settings and files are checked to be untouched.
//! The daemon runs hardened (no_new_privs, its seccomp allow-list) while it
//! corrects.
//! Needs root (CI is root); elsewhere the test says it was skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs root and network namespaces: cargo test -- --include-ignored"]
fn serve_corrects_an_external_sysctl_write_on_the_real_kernel() {
    common::require(
        common::can_unshare(),
        "root and unshare(2) for a network namespace",
    );
    common::require(
        Command::new("sysctl")
            .arg("-n")
            .arg("kernel.ostype")
            .output()
            .is_ok(),
        "sysctl(8) from procps",
    );
    let host_somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    let host_persist_exists = Path::new("/etc/sysctl.d/99-zz-holdfast.conf").exists();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("netns.yaml");
    std::fs::write(
        &policy,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 8191\n",
    )
    .unwrap();
    let script = r#"
set -u
mount -t tmpfs holdfast-test /etc/sysctl.d
"$HF" serve --policy "$P" --listen "$D/hf.sock" 2>"$D/log" &
PID=$!
rc=1
for i in $(seq 200); do
    "$HF" status --connect "$D/hf.sock" >/dev/null 2>&1; rc=$?
    [ "$rc" -ne 1 ] && break
    sleep 0.05
done
echo "ready=$rc"
grep -E '^(NoNewPrivs|Seccomp):' /proc/$PID/status
echo "initial=$(cat /proc/sys/net/core/somaxconn)"
sysctl -w net.core.somaxconn=128 >/dev/null
v=
for i in $(seq 250); do
    v=$(cat /proc/sys/net/core/somaxconn)
    [ "$v" = 8191 ] && break
    sleep 0.02
done
echo "after=$v"
"$HF" --format json status --connect "$D/hf.sock" > "$D/status.json"; echo "status=$?"
kill -TERM "$PID"; wait "$PID"; echo "exit=$?"
echo "persisted:"; cat /etc/sysctl.d/99-zz-holdfast.conf
"#;
    let (code, text) = common::run_in_netns_with(&policy, script, &[("D", dir.path())]);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert_eq!(code, 0, "{text}\n{log}");
    // exit 0 (compliant) from `holdfast status` once ready.
    assert!(text.contains("ready=0"), "{text}\n{log}");
    assert!(text.contains("initial=8191"), "{text}\n{log}");
    // It hardened itself, and still reconciles below.
    assert!(text.contains("NoNewPrivs:\t1"), "{text}\n{log}");
    #[cfg(target_arch = "x86_64")]
    assert!(text.contains("Seccomp:\t2"), "{text}\n{log}");
    assert!(
        text.contains("after=8191"),
        "the daemon restored the value: {text}\n{log}"
    );
    assert!(text.contains("status=0"), "{text}\n{log}");
    assert!(text.contains("exit=0"), "{text}\n{log}");
    assert!(text.contains("\nnet.core.somaxconn = 8191\n"), "{text}");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("status.json")).unwrap())
            .unwrap();
    let item = status["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "net.core.somaxconn")
        .unwrap();
    assert_eq!(item["state"], "corrected");
    // Once at start, once after the external write.
    assert_eq!(item["corrections"], 2, "{item:#}");
    assert!(log.contains("from=128 to=8191"), "{log}");

    // Nothing leaked to this host.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap(),
        host_somaxconn
    );
    assert_eq!(
        Path::new("/etc/sysctl.d/99-zz-holdfast.conf").exists(),
        host_persist_exists
    );
}
