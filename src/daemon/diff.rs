//! What a policy reload changes, setting by setting. Pure. The daemon logs
//! it, shows it in status, and forgets the backoff history of the settings
//! it names (a new desired value starts with a clean slate). The reload
//! itself never rolls anything back: the pass that follows writes only what
//! now differs from the new policy.

use std::collections::BTreeMap;

use super::state::PolicyChange;
use crate::policy::Policy;

/// Each setting of a policy as `name → what it asks for`, effective mode
/// included (a policy-wide `mode:` change changes every inheriting item).
fn settings(p: &Policy) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in p.sysctls.values() {
        out.insert(
            format!("sysctl {}", r.key),
            format!("{} ({})", r.expect, p.mode_of(r.mode)),
        );
    }
    for r in &p.limits {
        out.insert(
            format!("limit {} {}", r.domain, r.item),
            format!("{:?} {:?} ({})", r.soft, r.hard, p.mode_of(r.mode)),
        );
    }
    for (unit, r) in &p.services {
        out.insert(
            format!("service {unit}"),
            format!(
                "{:?} {:?} {:?}",
                r.slice.as_ref().map(|s| &s.value),
                r.limit_nofile.as_ref().map(|s| s.value),
                p.mode_of(r.mode.as_ref().map(|m| m.value))
            ),
        );
    }
    for (name, r) in &p.cgroup.slices {
        out.insert(
            format!("slice {name}"),
            format!(
                "{:?} {:?} {:?} {:?} {:?}",
                r.memory_max.as_ref().map(|s| &s.value),
                r.memory_high.as_ref().map(|s| &s.value),
                r.cpu_max.as_ref().map(|s| &s.value),
                r.pids_max.as_ref().map(|s| &s.value),
                p.mode_of(r.mode.as_ref().map(|m| m.value))
            ),
        );
    }
    if let Some(c) = &p.cgroup.controllers {
        out.insert("cgroup controllers".into(), format!("{:?}", c.value));
    }
    if let Some(h) = &p.safety.overcommit_headroom_percent {
        out.insert(
            "safety overcommit_headroom_percent".into(),
            h.value.to_string(),
        );
    }
    out
}

/// The settings added, changed (value or effective mode) and removed.
/// Moving a setting to another line or file is not a change.
pub fn policy_change(old: Option<&Policy>, new: &Policy) -> PolicyChange {
    let before = old.map(settings).unwrap_or_default();
    let after = settings(new);
    let mut change = PolicyChange::default();
    for (name, want) in &after {
        match before.get(name) {
            None => change.added.push(name.clone()),
            Some(had) if had != want => change.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    change.removed = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(files: &[(&str, &str)]) -> Policy {
        Policy::from_files(files.iter().copied()).unwrap()
    }

    #[test]
    fn names_added_changed_and_removed_settings() {
        let old = p(&[(
            "a.yaml",
            "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n  vm.swappiness: 10\n  kernel.pid_max: {min: 4194304, mode: audit}\n",
        )]);
        let new = p(&[(
            "a.yaml",
            "version: 1\nmode: enforce\n# a comment moves every line\nsysctl:\n  net.core.somaxconn: 8192\n  kernel.pid_max: {min: 4194304, mode: audit}\n  fs.suid_dumpable: 0\n",
        )]);
        let c = policy_change(Some(&old), &new);
        assert_eq!(c.added, ["sysctl fs.suid_dumpable"]);
        assert_eq!(c.changed, ["sysctl net.core.somaxconn"]);
        assert_eq!(c.removed, ["sysctl vm.swappiness"]);
        assert!(policy_change(Some(&new), &new).is_empty());
    }

    #[test]
    fn a_policy_wide_mode_change_changes_inheriting_items_only() {
        let old = p(&[(
            "a.yaml",
            "version: 1\nsysctl:\n  net.core.somaxconn: 4096\n  vm.swappiness: {value: 10, mode: enforce}\n",
        )]);
        let new = p(&[
            (
                "a.yaml",
                "version: 1\nsysctl:\n  net.core.somaxconn: 4096\n  vm.swappiness: {value: 10, mode: enforce}\n",
            ),
            ("b.yaml", "version: 1\nmode: enforce\n"),
        ]);
        let c = policy_change(Some(&old), &new);
        assert_eq!(c.changed, ["sysctl net.core.somaxconn"]);
        assert!(c.added.is_empty() && c.removed.is_empty());
        // The first load adds everything.
        assert_eq!(policy_change(None, &old).added.len(), 2);
    }
}
