//! Reading cgroups under the host root: the mode, systemd's view of each
//! policy slice, its cgroupfs files, and the controllers on its path. Reads
//! only; never writes a cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::detect::{self, CgroupMode};
use super::knob::KnobKind;
use super::plan::{Ancestor, CgroupHost, HOLDFAST_SUBTREE, SliceObs, slice_unit};
use crate::host::{self, HostRoot, IoError};
use crate::policy::Policy;
use crate::systemd::{self, SystemdClient};

pub fn observe(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    policy: &Policy,
) -> (CgroupHost, Vec<IoError>) {
    let mut warnings = Vec::new();
    let mode = detect::mode(host);
    let systemd = systemd::is_pid1(host);
    let root = host.path("sys/fs/cgroup");
    let mut out = CgroupHost {
        mode,
        systemd,
        not_queried: None,
        root: root.clone(),
        slices: BTreeMap::new(),
    };
    if mode != CgroupMode::Unified {
        return (out, warnings);
    }
    if systemd && client.is_none() {
        out.not_queried = Some(systemd::foreign_root_note(host));
    }
    for rule in policy.cgroup.slices.values() {
        let obs = observe_slice(host, client, &rule.name, systemd, &mut warnings);
        out.slices.insert(rule.name.clone(), obs);
    }
    if !systemd && out.slices.is_empty() {
        // Controllers only: still look at the root and holdfast's subtree.
        out.slices.insert(
            String::new(),
            SliceObs {
                ancestors: ancestors(&root, &format!("{HOLDFAST_SUBTREE}/x")),
                ..SliceObs::default()
            },
        );
    }
    (out, warnings)
}

/// Reads again only the policy's slices whose units are among `units`
/// into an earlier observation: what an event about those units calls for.
pub fn observe_units(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    policy: &Policy,
    units: &BTreeSet<String>,
    out: &mut CgroupHost,
) -> Vec<IoError> {
    let mut warnings = Vec::new();
    if out.mode != CgroupMode::Unified {
        return warnings;
    }
    for rule in policy.cgroup.slices.values() {
        if units.contains(&slice_unit(&rule.name)) {
            let obs = observe_slice(host, client, &rule.name, out.systemd, &mut warnings);
            out.slices.insert(rule.name.clone(), obs);
        }
    }
    warnings
}

/// One slice of the policy: its unit file and systemd's view (systemd
/// backend), and its cgroup's files.
fn observe_slice(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    name: &str,
    systemd: bool,
    warnings: &mut Vec<IoError>,
) -> SliceObs {
    let root = host.path("sys/fs/cgroup");
    let mut obs = SliceObs::default();
    if systemd {
        let unit = slice_unit(name);
        let path = host.path(&format!("etc/systemd/system/{unit}"));
        let current = host::read_optional_or_warn(&path, warnings);
        obs.unit_file = Some((path, current));
        if let Some(client) = client {
            let info = client.unit(&unit).map_err(|e| e.to_string());
            if let Ok(i) = &info {
                obs.cgroup_path = i
                    .control_group
                    .as_ref()
                    .map(|cg| cg.trim_start_matches('/').to_string());
            }
            obs.info = Some(info);
        }
    } else {
        obs.cgroup_path = Some(format!("{HOLDFAST_SUBTREE}/{name}"));
    }
    if let Some(cg) = obs.cgroup_path.clone() {
        read_cgroup(&root, &cg, &mut obs);
    } else if !systemd {
        obs.ancestors = ancestors(&root, &format!("{HOLDFAST_SUBTREE}/x"));
    }
    obs
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn words(path: &Path) -> Vec<String> {
    read_trimmed(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The cgroups from the root down to the parent of `rel`.
fn ancestors(root: &Path, rel: &str) -> Vec<Ancestor> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut out = Vec::new();
    for depth in 0..parts.len() {
        let path = parts[..depth].join("/");
        let dir = if path.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&path)
        };
        out.push(Ancestor {
            controllers: words(&dir.join("cgroup.controllers")),
            subtree_control: words(&dir.join("cgroup.subtree_control")),
            has_processes: !path.is_empty()
                && read_trimmed(&dir.join("cgroup.procs")).is_some_and(|p| !p.is_empty()),
            exists: dir.is_dir(),
            path,
        });
    }
    out
}

fn read_cgroup(root: &Path, rel: &str, obs: &mut SliceObs) {
    let dir = root.join(rel);
    obs.ancestors = ancestors(root, rel);
    obs.exists = dir.is_dir();
    if !obs.exists {
        return;
    }
    for kind in KnobKind::ALL {
        if let Some(text) = read_trimmed(&dir.join(kind.file())) {
            obs.kernel.insert(kind, text);
        }
    }
    obs.memory_current = read_trimmed(&dir.join("memory.current")).and_then(|s| s.parse().ok());
    obs.pids_current = read_trimmed(&dir.join("pids.current")).and_then(|s| s.parse().ok());
    for (file, keys) in [
        ("memory.events", &["max", "oom_kill"][..]),
        ("pids.events", &["max"][..]),
    ] {
        let Some(text) = read_trimmed(&dir.join(file)) else {
            continue;
        };
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(' ')
                && keys.contains(&k)
                && v.trim() != "0"
            {
                obs.events.push(format!("{file}: {k} {}", v.trim()));
            }
        }
    }
}
