//! A real PAM session: a throwaway user, a policy for that user only, and
//! `su -l USER -c 'ulimit -Sn'` must show the policy's values. Runs in a
//! mount namespace with a tmpfs over /etc/security/limits.d, so holdfast's
//! file never reaches this host; the user is removed afterwards. Needs root
//! (CI is root); elsewhere the test says it was skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::process::Command;

struct ThrowawayUser(String);

impl ThrowawayUser {
    fn create() -> Option<ThrowawayUser> {
        let name = format!("hfpam{}", std::process::id());
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(ThrowawayUser(name))
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let tools = ["useradd", "userdel", "su", "unshare"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    root && tools
}

#[test]
#[ignore = "needs root, useradd, su and a mount namespace: cargo test -- --include-ignored"]
fn su_login_session_gets_the_policy_limits() {
    common::require(available(), "root, useradd, su and unshare");
    let user = ThrowawayUser::create();
    common::require(user.is_some(), "useradd to succeed");
    let Some(user) = user else { return };
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("pam.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nmode: enforce\nlimits:\n  - {{domain: {}, item: nofile, soft: 4321, hard: 8765}}\n",
            user.0
        ),
    )
    .unwrap();
    let script = common::PRIVATE_STATE.to_string()
        + r#"set -u
mount -t tmpfs holdfast-test /etc/security/limits.d
"$HF" apply --policy "$P" >/dev/null; echo "apply=$?"
echo "soft=$(su -l "$U" -c 'ulimit -Sn' 2>/dev/null)"
echo "hard=$(su -l "$U" -c 'ulimit -Hn' 2>/dev/null)"
"$HF" check --policy "$P" >/dev/null; echo "check=$?"
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("HF", env!("CARGO_BIN_EXE_holdfast"))
        .env("P", &policy)
        .env("U", &user.0)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("apply=0"), "{text}");
    assert!(text.contains("soft=4321"), "{text}");
    assert!(text.contains("hard=8765"), "{text}");
    assert!(text.contains("check=0"), "{text}");
    assert!(
        !std::path::Path::new("/etc/security/limits.d/90-holdfast.conf").exists()
            || std::fs::read_to_string("/etc/security/limits.d/90-holdfast.conf")
                .map_or(true, |c| !c.contains(&user.0)),
        "holdfast's file must not reach the host"
    );
}
