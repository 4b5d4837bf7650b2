//! Hostile input and faults, through the CLI on a fake root: a second
//! writer, out-of-range options, forged policy file names, malformed and
//! oversized policies. Each test is the regression test of a defect found by
//! trying to break holdfast.

mod common;

use std::time::Duration;

use common::FakeHost;
use holdfast::host::HostRoot;

const LIMITS_FILE: &str = "etc/security/limits.d/90-holdfast.conf";

#[test]
fn apply_waits_a_bounded_time_for_another_writer_then_names_it() {
    let h = FakeHost::new();
    let p = h.policy(
        "p.yaml",
        "version: 1\nmode: enforce\nlimits:\n  - {domain: '*', item: nofile, soft: 1024, hard: 4096}\n",
    );
    let p = p.to_str().unwrap();
    let held = HostRoot::new(h.root())
        .lock_writers("serve", Duration::ZERO)
        .unwrap();
    let out = h
        .holdfast(&["apply", "--policy", p, "--lock-wait", "300ms"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {} (holdfast serve)", std::process::id())),
        "{stderr}"
    );
    assert!(stderr.contains("another holdfast is writing"), "{stderr}");
    assert!(!h.path(LIMITS_FILE).exists(), "the loser wrote nothing");

    drop(held);
    let out = h.holdfast(&["apply", "--policy", p]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(h.read(LIMITS_FILE).contains("*\thard\tnofile\t4096"));
}

#[test]
fn duration_options_are_bounded_at_parse_time() {
    let h = FakeHost::new();
    for args in [
        &["serve", "--rescan", "18446744073709551615s"][..],
        &["serve", "--rescan", "25h"],
        &["serve", "--debounce", "2m"],
        &["serve", "--contested-window", "18446744073709551615h"],
        &["serve", "--lock-wait", "2h"],
        &["apply", "--lock-wait", "18446744073709551615ms"],
    ] {
        let out = h.holdfast(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A usage error (exit 1), said before anything starts: no panic.
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("is out of range: between"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
