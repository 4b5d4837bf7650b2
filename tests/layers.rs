//! The module graph stays layered: a module may use modules of its own
//! layer or below, never above, and modules of one layer never form a cycle.
//! The layers are the ones ARCHITECTURE.md lists under "Layers"; this test
//! reads every `crate::` and `super::` path in `src/` (test code excluded)
//! and fails on an edge that goes up, naming the file and the path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. An entry names a module and everything under it unless a
/// longer entry names a submodule.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "values",
        &[
            "sysctl",
            "limits",
            "cgroup",
            "cgroup::knob",
            "posture::caps",
            "safety",
            "gobuild",
            "gobuild::maxprocs",
            "gobuild::releases",
            "modules",
        ],
    ),
    (
        "host",
        &[
            "host",
            "sysctl::conf",
            "limits::conf",
            "cgroup::detect",
            "modules::conf",
            "systemd",
        ],
    ),
    ("policy", &["policy", "posture"]),
    ("item", &["item"]),
    (
        "plan",
        &[
            "sysctl::plan",
            "sysctl::converge",
            "sysctl::vendor",
            "limits::plan",
            "cgroup::plan",
            "services",
            "gobuild::plan",
            "gobuild::findings",
            "modules::plan",
            "journal",
        ],
    ),
    (
        "observe",
        &[
            "sysctl::observe",
            "limits::observe",
            "cgroup::observe",
            "services::observe",
            "gobuild::observe",
            "modules::observe",
            "systemd::dbus",
            "sources",
            "journal::store",
            "exec",
            "sysctl::apply",
        ],
    ),
    ("area", &["area"]),
    ("engine", &["engine", "audit", "rollback"]),
    ("report", &["report"]),
    ("daemon", &["daemon::", "harden"]),
    ("entry", &["daemon", "lib", "main"]),
];

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, usize, &str)> = None;
    for (i, (name, entries)) in LAYERS.iter().enumerate() {
        for e in *entries {
            let hit = if let Some(prefix) = e.strip_suffix("::") {
                module.starts_with(&format!("{prefix}::"))
            } else {
                module == *e || module.starts_with(&format!("{e}::"))
            };
            if hit && best.is_none_or(|(len, _, _)| e.len() > len) {
                best = Some((e.len(), i, name));
            }
        }
    }
    best.map(|(_, i, name)| (i, name))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/sysctl/observe.rs` → `sysctl::observe`; `src/cgroup/mod.rs` →
/// `cgroup`; `src/lib.rs` → `lib`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.len() > 1 && parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn ident(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// The module paths a file's code names: `crate::a::b`, `super::c`, and
/// each item of `crate::{a, b::c}`.
fn paths_named(code: &str, module: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (anchor, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            let mut b: Vec<String> = module.split("::").map(str::to_string).collect();
            b.pop();
            b
        }),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let heads: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(str::trim).collect()
            } else {
                vec![rest]
            };
            for head in heads {
                let mut path = base.clone();
                let mut h = head;
                loop {
                    let n = ident(h);
                    if n == 0 {
                        break;
                    }
                    path.push(h[..n].to_string());
                    match h[n..].strip_prefix("::") {
                        Some(more) => h = more,
                        None => break,
                    }
                }
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn no_module_uses_a_module_of_a_higher_layer_and_no_layer_has_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let Some((layer, name)) = layer_of(module) else {
            unplaced.push(module.clone());
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for path in paths_named(code, module) {
            // The longest prefix that is a module of the crate.
            let Some(target) = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains_key(m))
            else {
                continue;
            };
            let own = target == *module
                || module.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{module}::"));
            if own {
                continue;
            }
            let (t_layer, t_name) = layer_of(&target).unwrap_or((usize::MAX, "unplaced"));
            if t_layer > layer {
                upward.push(format!(
                    "{} ({name}) uses {target} ({t_name}): {}",
                    file.display(),
                    path.join("::")
                ));
            } else if t_layer == layer {
                edges.entry(module.as_str()).or_default().insert(target);
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules missing from the layer table (tests/layers.rs and ARCHITECTURE.md): {unplaced:?}"
    );
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "edges going up the layers:\n{}",
        upward.join("\n")
    );
    // Within a layer: no cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<&'a str, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(i) = stack.iter().position(|s| *s == m) {
            panic!("cycle: {} -> {m}", stack[i..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        stack.push(m);
        for t in edges.get(m).into_iter().flatten() {
            visit(t.as_str(), edges, stack, done);
        }
        stack.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn paths_are_read_like_the_compiler_reads_them() {
    let named = paths_named(
        "use crate::{host::HostRoot, item};\nuse super::plan::X;\nlet x = my_crate::y;",
        "sysctl::observe",
    );
    assert_eq!(
        named,
        [
            vec!["host".to_string(), "HostRoot".into()],
            vec!["item".into()],
            vec!["sysctl".into(), "plan".into(), "X".into()],
        ]
    );
    assert_eq!(layer_of("daemon::reconcile").unwrap().1, "daemon");
    assert_eq!(layer_of("daemon").unwrap().1, "entry");
    assert_eq!(layer_of("sysctl::observe").unwrap().1, "observe");
    assert_eq!(layer_of("sysctl").unwrap().1, "values");
}
