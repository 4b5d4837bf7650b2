//! Hostile input and faults, through the CLI on a fake root: a second
//! writer, out-of-range options, forged policy file names, malformed and
//! oversized policies. Each test is the regression test of a defect found by
//! trying to break holdfast.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

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

const LIMITS_POLICY: &str =
    "version: 1\nmode: enforce\nlimits:\n  - {domain: '*', item: nofile, soft: 1024, hard: 4096}\n";

/// Runs `holdfast ARGS` and returns (exit code, stdout, stderr).
fn run(h: &FakeHost, args: &[&str]) -> (Option<i32>, String, String) {
    let out = h.holdfast(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_policy_file_name_cannot_inject_lines_into_limits_d() {
    let h = FakeHost::new();
    let forged = "etc/holdfast/policy.d/10-x\n* hard maxlogins 0\n#.yaml";
    h.write(forged, LIMITS_POLICY);
    let (code, stdout, stderr) = run(&h, &["apply"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "10-x\\n* hard maxlogins 0\\n#.yaml:1:1: the file name contains control characters"
        ),
        "{stderr}"
    );
    assert!(!h.path(LIMITS_FILE).exists(), "nothing written");
    // The terminal never sees the raw name.
    assert!(!stderr.contains("0\n#.yaml"), "{stderr}");
}

#[test]
fn control_characters_tags_and_quoted_versions_are_refused_with_a_location() {
    let h = FakeHost::new();
    for (text, expect) in [
        (
            "version: 1\nmode: enforce\nlimits:\n  - {domain: \"a\\0b\", item: nofile, soft: 1024}\n",
            "p.yaml:4:",
        ),
        (
            "version: 1\nmode: enforce\nlimits:\n  - {domain: \"\\e[2Jroot\", item: nofile, soft: 1024}\n",
            "contains a control character",
        ),
        ("version: 1\nmode: !!binary ZW5mb3JjZQ==\n", "YAML tags"),
        ("version: \"1\"\n", "version must be the integer 1"),
        (
            "version: 1\nmode: enforce\nlimits:\n  - {domain: '%staff', item: nofile, soft: 1024}\n",
            "applies only to maxlogins",
        ),
    ] {
        let p = h.policy("p.yaml", text);
        let (code, _, stderr) = run(&h, &["apply", "--policy", p.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{text}: {stderr}");
        assert!(stderr.contains(expect), "{text}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "{text}: raw ESC in {stderr:?}");
        assert!(!h.path(LIMITS_FILE).exists(), "{text}: nothing written");
    }
    // `%group` is right for maxlogins.
    let p = h.policy(
        "ok.yaml",
        "version: 1\nlimits:\n  - {domain: '%staff', item: maxlogins, hard: 4}\n",
    );
    let (code, stdout, stderr) = run(&h, &["validate", p.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn a_non_utf8_policy_is_refused_at_its_first_bad_byte() {
    let h = FakeHost::new();
    let p = h.path("policies/latin1.yaml");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, b"version: 1\n# caf\xe9\n").unwrap();
    let (code, _, stderr) = run(&h, &["validate", p.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("latin1.yaml:2:6: not UTF-8: byte 0xe9"),
        "{stderr}"
    );
}

#[test]
fn validate_honours_policy_paths() {
    let h = FakeHost::new();
    let bad = h.policy("bad.yaml", "version: 2\n");
    let good = h.policy("good.yaml", "version: 1\n");
    let (code, _, stderr) = run(&h, &["--policy", bad.to_str().unwrap(), "validate"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:1:"), "{stderr}");
    let (code, stdout, _) = run(&h, &["validate", "--policy", good.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("good.yaml"), "{stdout}");
    // Neither: what `check` would load (here the bundled baseline).
    let (code, stdout, _) = run(&h, &["validate"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("bundled"), "{stdout}");
}

#[test]
fn oversized_policies_are_refused_before_they_are_read_whole() {
    let h = FakeHost::new();
    // One file over the per-file cap (a long comment keeps it valid YAML).
    let big = format!("version: 1\n# {}\n", "x".repeat(2 * 1024 * 1024));
    let p = h.policy("big.yaml", &big);
    let (code, _, stderr) = run(&h, &["validate", p.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("big.yaml:1:1: the file is larger than 1024 KiB"),
        "{stderr}"
    );
    // Files under the per-file cap that together exceed the policy cap.
    let part = format!("version: 1\n# {}\n", "x".repeat(900 * 1024));
    let dir = h.path("policies/many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..5 {
        std::fs::write(dir.join(format!("{i}.yaml")), &part).unwrap();
    }
    let (code, _, stderr) = run(&h, &["validate", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("4.yaml:1:1: the policy is larger than 4096 KiB"),
        "{stderr}"
    );
}

#[test]
fn godebug_values_systemd_would_misread_are_refused() {
    let h = FakeHost::new();
    let policy = |godebug: &str| {
        format!(
            "version: 1\nservices:\n  app.service:\n    go_runtime: {{gomaxprocs: 2, godebug: '{godebug}'}}\n"
        )
    };
    for (bad, why) in [
        ("x=1,y=\"a", "'\"' is not allowed"),
        ("x=50%", "'%' is not allowed"),
        ("x=a\\b", "'\\\\' is not allowed"),
        ("x=1,,y=2", "\"\" is not key=value"),
        ("novalue", "is not key=value"),
    ] {
        let p = h.policy("go.yaml", &policy(bad));
        let (code, _, stderr) = run(&h, &["validate", p.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("go.yaml:4:"), "{bad}: {stderr}");
        assert!(stderr.contains(why), "{bad}: {stderr}");
    }
    let p = h.policy("go.yaml", &policy("http2client=0,netdns=go+1,x509sha1=1"));
    let (code, stdout, stderr) = run(&h, &["validate", p.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// Sets a path's permission bits.
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A policy file given by path in a sticky, world-writable directory owned
/// by its caller (`/tmp`): the file is read, since no one else may replace
/// or remove it there; the directory itself as a policy directory is
/// refused, since anyone may add a file to it; and a world-writable
/// directory without the sticky bit still is refused as the file's holder.
#[test]
fn a_policy_file_in_a_sticky_directory_is_read_but_the_directory_is_no_policy_directory() {
    let h = FakeHost::new();
    h.write("tmp/p.yaml", LIMITS_POLICY);
    chmod(&h.path("tmp"), 0o1777);
    let file = h.path("tmp/p.yaml");
    let (code, stdout, stderr) = run(&h, &["apply", "--policy", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(h.path(LIMITS_FILE).exists(), "{stdout}");

    let dir = h.path("tmp");
    let (code, _, stderr) = run(&h, &["check", "--policy", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the policy directory is not trusted: writable by its group and others (mode 1777)"
        ),
        "{stderr}"
    );

    chmod(&h.path("tmp"), 0o777);
    let (code, _, stderr) = run(&h, &["check", "--policy", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("holding the policy file is not trusted"),
        "{stderr}"
    );
    chmod(&h.path("tmp"), 0o755);
}

#[test]
fn policy_sources_anyone_else_can_write_are_refused() {
    const DIR: &str = "etc/holdfast/policy.d";
    let apply = |h: &FakeHost| run(h, &["apply"]);

    // A world-writable policy file.
    let h = FakeHost::new();
    h.write(&format!("{DIR}/10-p.yaml"), LIMITS_POLICY);
    chmod(&h.path(&format!("{DIR}/10-p.yaml")), 0o666);
    let (code, _, stderr) = apply(&h);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("10-p.yaml:1:1: the policy file is not trusted: writable by its group and others (mode 0666)"),
        "{stderr}"
    );
    assert!(!h.path(LIMITS_FILE).exists());

    // A group-writable policy directory.
    let h = FakeHost::new();
    h.write(&format!("{DIR}/10-p.yaml"), LIMITS_POLICY);
    chmod(&h.path(DIR), 0o775);
    let (code, _, stderr) = apply(&h);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("policy.d:1:1: the policy directory is not trusted: writable by its group"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("not trusted").count(),
        1,
        "reported once: {stderr}"
    );
    assert!(!h.path(LIMITS_FILE).exists());

    // A link in a good directory to a file in a world-writable one.
    let h = FakeHost::new();
    h.write("tmp/shared/p.yaml", LIMITS_POLICY);
    chmod(&h.path("tmp/shared"), 0o777);
    std::fs::create_dir_all(h.path(DIR)).unwrap();
    std::os::unix::fs::symlink(
        h.path("tmp/shared/p.yaml"),
        h.path(&format!("{DIR}/10-p.yaml")),
    )
    .unwrap();
    let (code, _, stderr) = apply(&h);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("tmp/shared holding the policy file is not trusted"),
        "{stderr}"
    );
    assert!(!h.path(LIMITS_FILE).exists());

    // A file owned by another user (needs root to set up).
    if nix::unistd::geteuid().is_root() {
        let h = FakeHost::new();
        h.write(&format!("{DIR}/10-p.yaml"), LIMITS_POLICY);
        std::os::unix::fs::chown(
            h.path(&format!("{DIR}/10-p.yaml")),
            Some(65534),
            Some(65534),
        )
        .unwrap();
        let (code, _, stderr) = apply(&h);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("owned by uid 65534, not by root"),
            "{stderr}"
        );
        assert!(!h.path(LIMITS_FILE).exists());
    }

    // The same files, owned and writable by root alone, are applied.
    let h = FakeHost::new();
    h.write(&format!("{DIR}/10-p.yaml"), LIMITS_POLICY);
    let (code, stdout, stderr) = apply(&h);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(h.path(LIMITS_FILE).exists());
}

/// Found by the crash trials with unit files: a writer killed between
/// creating its temp file and renaming it left the temp file there, and a
/// next run that found the file itself right wrote nothing and left it.
#[test]
fn a_converged_run_removes_the_temp_files_a_killed_writer_left() {
    let h = FakeHost::new();
    std::fs::create_dir_all(h.path("run/systemd/system")).unwrap();
    let p = h.policy(
        "p.yaml",
        &format!("{LIMITS_POLICY}services:\n  myapp.service: {{limit_nofile: 4096}}\n"),
    );
    let p = p.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run(&h, &["apply", "--policy", &p]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let drop_in = "etc/systemd/system/myapp.service.d/90-holdfast.conf";
    assert!(h.path(drop_in).exists(), "{stdout}");
    let left = [
        "etc/security/limits.d/.90-holdfast.conf.4242.7.holdfast-tmp",
        "etc/systemd/system/myapp.service.d/.90-holdfast.conf.4242.8.holdfast-tmp",
    ];
    for t in left {
        h.write(t, "half a fi");
    }
    // Someone else's file with a similar name is not holdfast's to remove.
    h.write("etc/security/limits.d/.other.conf.1.holdfast-tmp", "x");
    let (code, stdout, stderr) = run(&h, &["apply", "--policy", &p]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for t in left {
        assert!(!h.path(t).exists(), "{t} is still there");
    }
    assert!(
        h.path("etc/security/limits.d/.other.conf.1.holdfast-tmp")
            .exists()
    );
    assert!(!stderr.contains("warning"), "{stderr}");
}
