//! Every saved fuzz input, run through its harness: the seeds each target
//! starts from and every input that once crashed one (fuzz/regressions),
//! so a bug the fuzzer found stays fixed. The harnesses are the fuzz crate's
//! own code (fuzz/src/lib.rs), built here without libFuzzer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

/// A harness: the whole check of one input.
type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("policy", harness::policy),
    ("sysctl_conf", harness::sysctl_conf),
    ("limits_conf", harness::limits_conf),
    ("kernel_text", harness::kernel_text),
    ("gobuild", harness::gobuild),
    ("http_response", harness::http_response),
];

/// The files of `fuzz/KIND/TARGET`, sorted (none when it does not exist).
fn inputs(kind: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    files.sort();
    files
}

fn run_all(kind: &str) -> usize {
    let mut count = 0;
    for (target, harness) in TARGETS {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // Named before the call, so a failure says which input it was.
            println!("{target}: {}", path.display());
            harness(&data);
            count += 1;
        }
    }
    count
}

/// The seeds, then every input that once crashed a target (kept in
/// fuzz/regressions/TARGET, named after the defect).
#[test]
fn every_saved_input_passes_its_harness() {
    let seeds = run_all("seeds");
    assert!(
        seeds >= TARGETS.len(),
        "each target has seeds; found {seeds} files"
    );
    run_all("regressions");
}

#[test]
fn the_shipped_policies_pass_the_policy_harness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            harness::policy(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0);
}

/// The synthetic ELF seeds are what they claim to be, so the fuzzer starts
/// from a Go binary's build information and not from a rejected header.
#[test]
fn the_gobuild_seeds_parse_as_go_and_not_go() {
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/gobuild")
            .join(name);
        let data = std::fs::read(&path).unwrap();
        holdfast::gobuild::parse(&mut data.as_slice()).unwrap()
    };
    let go = seed("go-pie");
    let holdfast::gobuild::Go::Build(info) = &go.go else {
        panic!("go-pie: {:?}", go.go);
    };
    assert_eq!(info.version, "go1.22.6");
    assert_eq!(info.setting("-trimpath"), Some("true"), "{info:?}");
    let c = seed("not-go-exec");
    assert_eq!(c.go, holdfast::gobuild::Go::NotGo);
    assert!(c.has_symtab());
}
