//! The command line itself: help, the man page and completions generated
//! from the same definition, and argument errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

use assert_cmd::Command;

fn holdfast(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("holdfast")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_public_command_and_the_exit_codes() {
    let out = holdfast(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["check", "plan", "apply", "audit", "validate"] {
        assert!(
            text.contains(&format!("  {cmd}")),
            "{cmd} missing from:\n{text}"
        );
    }
    assert!(
        text.contains("Exit codes: 0 = compliant, 1 = error"),
        "{text}"
    );
    assert!(!text.contains("generate"), "packaging helper stays hidden");
}

#[test]
fn man_page_and_completions_are_generated_from_the_cli() {
    let man = holdfast(&["generate", "man"]);
    assert!(man.status.success());
    let roff = String::from_utf8_lossy(&man.stdout);
    assert!(roff.contains(".TH holdfast 1"), "{roff}");
    assert!(roff.contains("apply"));
    for shell in ["bash", "zsh", "fish"] {
        let out = holdfast(&["generate", "completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("holdfast"),
            "{shell}"
        );
    }
}

#[test]
fn bad_arguments_exit_with_an_error_and_sarif_is_only_for_audit() {
    // A usage error is an error (1), never confused with drift (2).
    assert_eq!(
        holdfast(&["check", "--format", "yaml"]).status.code(),
        Some(1)
    );
    assert_eq!(holdfast(&["frobnicate"]).status.code(), Some(1));
    assert_eq!(holdfast(&["--version"]).status.code(), Some(0));
    let out = holdfast(&["check", "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--format sarif is for `holdfast audit`")
    );
}
