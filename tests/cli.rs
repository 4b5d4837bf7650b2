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
    // One page per subcommand, each citing the others that exist.
    let dir = tempfile::tempdir().unwrap();
    let out = holdfast(&["generate", "man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for sub in [
        "apply", "audit", "check", "plan", "rollback", "serve", "status", "validate",
    ] {
        assert!(pages.contains(&format!("holdfast-{sub}.1")), "{pages:?}");
    }
    assert!(pages.contains(&"holdfast.1".to_string()), "{pages:?}");
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("generate") || p.contains("help")),
        "{pages:?}"
    );
    let main = std::fs::read_to_string(dir.path().join("holdfast.1")).unwrap();
    for cited in main.split("holdfast\\-").skip(1) {
        let name: String = cited
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        assert!(
            pages.contains(&format!("holdfast-{name}.1")),
            "{name}: {pages:?}"
        );
    }
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
