//! The binary reader on real binaries: the Go test service (tests/e2e/go)
//! built twice by tests/e2e/go/build.sh — hardened (`CGO_ENABLED=0
//! -buildmode=pie -trimpath -ldflags='-s -w'`) and with the toolchain's
//! defaults and cgo — a C binary, and truncated and corrupted copies; the
//! build settings are compared with what `go version -m` prints. Then the
//! `go_build` area and the audit's Go checks on a fake host whose
//! /proc/PID/exe points at those builds, and a running process whose binary
//! was deleted.
//!
//! These tests need the Go toolchain (CI installs Debian's golang-1.22-go;
//! `GO=/path/to/go` picks another), so they are #[ignore]d by default like
//! the other tests that need something from the machine; CI runs them, and
//! a missing toolchain fails them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::FakeHost;
use common::fake_systemd::FakeSystemd;
use holdfast::engine::{self, Context};
use holdfast::gobuild::{self, ElfType, Go, ParseError};
use holdfast::host::HostRoot;
use holdfast::item::{Kind, State};
use holdfast::policy::Policy;
use holdfast::systemd::UnitInfo;

fn go() -> PathBuf {
    if let Some(go) = std::env::var_os("GO") {
        return go.into();
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("go");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("/usr/lib/go-1.22/bin/go")
}

/// The two builds, made once per test run (the Go build cache lives in
/// cargo's target directory, so later runs are quick).
fn builds() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-service");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/go/build.sh");
        let status = Command::new(&script)
            .arg(&out)
            .env("GO", go())
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            status.success(),
            "building the Go test service failed: is the Go toolchain installed? ({})",
            go().display()
        );
        out
    })
}

fn parse_file(path: &Path) -> Result<gobuild::Binary, String> {
    gobuild::observe::read_binary(path)
}

/// The `build` lines `go version -m` prints, as (key, value).
fn go_version_m(path: &Path) -> (String, Vec<(String, String)>) {
    let out = Command::new(go())
        .arg("version")
        .arg("-m")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let version = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let settings = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("build\t"))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    (version, settings)
}

#[test]
#[ignore = "needs the Go toolchain (CI installs golang-1.22-go)"]
fn the_hardened_build_is_pie_stripped_trimmed_and_without_cgo() {
    let path = builds().join("hardened");
    let b = parse_file(&path).unwrap();
    assert_eq!(b.elf_type, ElfType::Dyn);
    assert!(b.interpreter && b.is_pie());
    assert!(b.is_stripped(), "sections: {:?}", b.sections);
    assert!(b.sections.iter().any(|s| s == ".go.buildinfo"));
    let info = b.build().expect("Go build information");
    assert_eq!(info.buildmode(), Some("pie"));
    assert_eq!(info.trimpath(), Some(true));
    assert_eq!(info.cgo(), Some(false));
    assert_eq!(info.path.as_deref(), Some("holdfast.test/goservice"));
    let (version, settings) = go_version_m(&path);
    assert_eq!(info.version, version);
    assert_eq!(
        info.settings, settings,
        "the same settings as go version -m"
    );
}

#[test]
#[ignore = "needs the Go toolchain (CI installs golang-1.22-go)"]
fn the_default_build_is_exec_with_symbols_cgo_and_no_trimpath() {
    let path = builds().join("default");
    let b = parse_file(&path).unwrap();
    assert_eq!(b.elf_type, ElfType::Exec);
    assert!(!b.is_pie());
    assert!(b.has_symtab() && !b.debug_sections().is_empty());
    let info = b.build().unwrap();
    assert_eq!(info.buildmode(), Some("exe"));
    assert_eq!(info.trimpath(), Some(false));
    assert_eq!(info.cgo(), Some(true));
    assert!(
        info.summary()
            .starts_with(&format!("{}, CGO_ENABLED=1, -buildmode=exe", info.version))
    );
    let (version, settings) = go_version_m(&path);
    assert_eq!(info.version, version);
    assert_eq!(info.settings, settings);
}

#[test]
fn a_c_binary_is_not_go_and_not_an_error() {
    let ls = ["/bin/ls", "/usr/bin/ls"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("ls");
    let b = parse_file(ls).unwrap();
    assert_eq!(b.go, Go::NotGo);
    assert!(!b.sections.is_empty());
    // Debian builds its C programs as stripped PIEs.
    assert!(b.is_pie() && b.is_stripped(), "{b:?}");
}

#[test]
#[ignore = "needs the Go toolchain (CI installs golang-1.22-go)"]
fn truncated_and_corrupted_copies_are_clear_errors_never_panics() {
    for name in ["hardened", "default"] {
        let bytes = std::fs::read(builds().join(name)).unwrap();
        // Cut anywhere: an error saying what was cut (the section-name
        // table is near the end of the file).
        let step = (bytes.len() / 97).max(1);
        for cut in (0..bytes.len() - 1)
            .step_by(step)
            .chain([10, 63, bytes.len() - 1])
        {
            match gobuild::parse(&mut &bytes[..cut]) {
                Err(ParseError::Truncated { .. } | ParseError::NotElf) => {}
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
        let e = gobuild::parse(&mut &bytes[..bytes.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("truncated: the section"), "{e}");
        // Corrupted: the version's length points past the section.
        let at = bytes
            .windows(14)
            .position(|w| w == gobuild::BUILDINFO_MAGIC)
            .unwrap();
        let mut bad = bytes.clone();
        bad[at + 32] = 0xff;
        bad[at + 33] = 0xff;
        bad[at + 34] = 0x7f;
        let e = gobuild::parse(&mut bad.as_slice()).unwrap_err().to_string();
        assert!(e.starts_with("corrupt: the Go version is"), "{e}");
        // Every 4099th byte flipped: whatever it says, it says it without
        // panicking.
        let mut noisy = bytes.clone();
        for i in (0..noisy.len()).step_by(4099) {
            noisy[i] ^= 0x5a;
        }
        let _ = gobuild::parse(&mut noisy.as_slice());
    }
}

const EXPECT_ALL: &str =
    "{pie: true, stripped: true, trimpath: true, cgo: false, min_version: \"1.22\"}";

fn go_host() -> (FakeHost, FakeSystemd) {
    let h = FakeHost::new();
    let fake = FakeSystemd::new(&h);
    for (pid, name) in [(7001, "hardened"), (7002, "default")] {
        std::fs::create_dir_all(h.path(&format!("proc/{pid}"))).unwrap();
        std::os::unix::fs::symlink(builds().join(name), h.path(&format!("proc/{pid}/exe")))
            .unwrap();
        h.write(
            &format!("proc/{pid}/status"),
            "Name:\tgoservice\nUid:\t998\t998\t998\t998\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nCpus_allowed_list:\t0-3\n",
        );
        h.write(
            &format!("proc/{pid}/cgroup"),
            &format!("0::/go.slice/go-app.slice/go-{name}.service\n"),
        );
        let env = if name == "hardened" {
            "GOMAXPROCS=1\0"
        } else {
            "PATH=/bin\0"
        };
        h.write(&format!("proc/{pid}/environ"), env);
        h.write(
            &format!("sys/fs/cgroup/go.slice/go-app.slice/go-{name}.service/cpu.max"),
            "max 100000\n",
        );
        fake.units.borrow_mut().insert(
            format!("go-{name}.service"),
            UnitInfo {
                load_state: "loaded".into(),
                active_state: "active".into(),
                main_pid: Some(pid),
                ..UnitInfo::default()
            },
        );
    }
    h.write(
        "sys/fs/cgroup/go.slice/go-app.slice/cpu.max",
        "100000 100000\n",
    );
    (h, fake)
}

#[test]
#[ignore = "needs the Go toolchain (CI installs golang-1.22-go)"]
fn check_passes_the_hardened_build_and_reports_each_expectation_of_the_default_one() {
    let (h, fake) = go_host();
    let policy = Policy::from_files([(
        "go.yaml",
        format!(
            "version: 1\nmode: enforce\nservices:\n  go-hardened.service:\n    go_build: {EXPECT_ALL}\n  go-default.service:\n    go_build: {EXPECT_ALL}\n"
        )
        .as_str(),
    )])
    .unwrap();
    let host = HostRoot::new(h.root());
    let ctx = Context {
        host: &host,
        systemd: Some(&fake),
        heartbeat: None,
    };
    let pass = engine::plan_in(&ctx, &policy);
    let go: Vec<_> = pass
        .items
        .iter()
        .filter(|i| i.kind() == Kind::GoBuild)
        .collect();
    assert_eq!(go.len(), 10);
    for item in &go {
        let unit = item.key.unit().unwrap();
        // The default build meets only min_version (it is Go 1.22 too).
        let met = unit == "go-hardened.service" || item.key.to_string().ends_with("min_version");
        let want = if met {
            State::Compliant
        } else {
            State::Drifted
        };
        assert_eq!(item.state, want, "{}: {:?}", item.key, item.detail);
        assert!(item.action.is_none());
    }
    let trimpath = go
        .iter()
        .find(|i| i.key.to_string() == "go-default.service go_build.trimpath")
        .unwrap();
    assert!(
        trimpath.detail[0].starts_with("built without -trimpath (go1.22.")
            && trimpath.detail[0]
                .ends_with(", CGO_ENABLED=1, -buildmode=exe): rebuild with go build -trimpath"),
        "{:?}",
        trimpath.detail
    );
    // apply changes nothing and still reports the drift.
    let applied = engine::apply_in(&ctx, &policy, engine::ApplyOptions::default());
    assert!(!holdfast::item::all_compliant(&applied.items));
    assert!(fake.calls.borrow().is_empty(), "{:?}", fake.calls.borrow());
}

#[test]
#[ignore = "needs the Go toolchain (CI installs golang-1.22-go)"]
fn audit_finds_the_default_builds_flags_and_its_gomaxprocs() {
    let (h, fake) = go_host();
    let audit = holdfast::audit::run(&HostRoot::new(h.root()), &fake).unwrap();
    let ids = |unit: &str| -> Vec<&str> {
        audit
            .findings
            .iter()
            .filter(|f| f.unit == unit && f.check.id >= "HF006")
            .map(|f| f.check.id)
            .collect()
    };
    // Go 1.22 no longer receives security fixes: both builds say so.
    assert_eq!(
        ids("go-default.service"),
        ["HF006", "HF007", "HF008", "HF009", "HF010", "HF011"]
    );
    assert_eq!(ids("go-hardened.service"), ["HF010"]);
    let gomaxprocs = audit
        .findings
        .iter()
        .find(|f| f.check.id == "HF011")
        .unwrap();
    assert!(
        gomaxprocs.evidence.contains("picks 4")
            && gomaxprocs
                .evidence
                .contains("the CPU limit is 1 (cpu.max 100000 100000 of /go.slice/go-app.slice)"),
        "{}",
        gomaxprocs.evidence
    );
    let sarif = audit.to_sarif();
    let rules = sarif["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    for r in sarif["runs"][0]["results"].as_array().unwrap() {
        let i = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[i]["id"], r["ruleId"]);
    }
    assert!(rules.iter().any(|r| r["id"] == "HF011"));
}

#[test]
#[ignore = "needs the Go toolchain (CI installs golang-1.22-go)"]
fn a_deleted_binary_is_read_through_proc_pid_exe() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("goservice");
    std::fs::copy(builds().join("hardened"), &copy).unwrap();
    let mut child = Command::new(&copy)
        .args(["-listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    // Replace the file on disk while it runs.
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, b"not the running binary").unwrap();
    let (exe, read) = gobuild::observe::read_exe(&HostRoot::new("/"), child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(exe.ends_with(" (deleted)"), "{exe}");
    let b = read.unwrap();
    assert_eq!(b.build().unwrap().buildmode(), Some("pie"));
}
