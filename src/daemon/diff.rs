//! What a policy reload changes, setting by setting. Pure. The daemon logs
//! it, shows it in status, and forgets the backoff history of the settings
//! it names (a new desired value starts with a clean slate). The reload
//! itself never rolls anything back: the pass that follows writes only what
//! now differs from the new policy.

use std::collections::BTreeMap;
use std::fmt;

use std::time::SystemTime;

use crate::cgroup::plan::slice_unit;
use crate::item::ItemKey;
use crate::limits::{Domain, LimitItem};
use crate::modules::ModuleName;
use crate::policy::{Mode, Policy};
use crate::safety::OvercommitKey;
use crate::sysctl::SysctlKey;

/// What a policy reload changed, per setting (`sysctl net.core.somaxconn`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyChange {
    pub at: Option<SystemTime>,
    pub added: Vec<SettingId>,
    pub changed: Vec<SettingId>,
    pub removed: Vec<SettingId>,
}

impl PolicyChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// One setting of a policy, as a push adds, changes or removes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SettingId {
    Sysctl(SysctlKey),
    Limit {
        domain: Domain,
        item: LimitItem,
    },
    /// Everything the policy asks of one service (limits, slice, posture).
    Service(String),
    /// `service_defaults`.
    ServiceDefaults,
    /// One slice (its limits).
    Slice(String),
    Controllers,
    OvercommitHeadroom,
    /// `sysctl_conflicts`.
    SysctlConflicts,
    /// A kernel module the policy disables.
    Module(ModuleName),
}

impl SettingId {
    /// Whether an item reports on (part of) this setting: a push that
    /// changes the setting resets exactly these items' backoff history.
    pub fn covers(&self, key: &ItemKey) -> bool {
        // One arm per item key, with no fallback: a new key (a new area's)
        // does not compile until it says which settings it reports on.
        let slice_of =
            |unit: &str| matches!(self, SettingId::Slice(name) if slice_unit(name) == unit);
        match key {
            ItemKey::Sysctl(k) => {
                matches!(self, SettingId::Sysctl(s) if s == k)
                    || (matches!(self, SettingId::OvercommitHeadroom)
                        && OvercommitKey::from_sysctl(k.as_str()).is_some())
            }
            // The persisted file holds every enforced key; a copy of a
            // vendor file comments out the lines of enforced keys, as
            // `sysctl_conflicts` says.
            ItemKey::SysctlFile(_) => matches!(self, SettingId::Sysctl(_)),
            ItemKey::SysctlOverride(_) => {
                matches!(self, SettingId::Sysctl(_) | SettingId::SysctlConflicts)
            }
            ItemKey::Limit {
                domain: d, item: i, ..
            } => matches!(self, SettingId::Limit { domain, item } if domain == d && item == i),
            ItemKey::LimitsFile(_) => matches!(self, SettingId::Limit { .. }),
            // A line pam_limits skips, in any file: no setting asks for it.
            ItemKey::LimitsLine { .. } => false,
            ItemKey::Service { unit, .. }
            | ItemKey::Posture { unit, .. }
            | ItemKey::GoBuild { unit, .. } => matches!(self, SettingId::Service(u) if u == unit),
            ItemKey::DefaultLimitNofile | ItemKey::UnitFile { unit: None, .. } => {
                matches!(self, SettingId::ServiceDefaults)
            }
            ItemKey::UnitFile {
                unit: Some(unit), ..
            } => matches!(self, SettingId::Service(u) if u == unit) || slice_of(unit),
            ItemKey::Slice { unit } | ItemKey::SliceKnob { unit, .. } => slice_of(unit),
            ItemKey::OwnCgroup { slice: Some(s) } | ItemKey::OwnCgroupKnob { slice: s, .. } => {
                matches!(self, SettingId::Slice(name) if name == s)
            }
            // holdfast's own subtree itself: no one slice's.
            ItemKey::OwnCgroup { slice: None } => false,
            ItemKey::Controller { .. } => matches!(self, SettingId::Controllers),
            ItemKey::Module(m) => matches!(self, SettingId::Module(n) if n == m),
            // holdfast's modprobe.d file lists every disabled module.
            ItemKey::ModprobeFile(_) => matches!(self, SettingId::Module(_)),
        }
    }
}

impl fmt::Display for SettingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingId::Sysctl(k) => write!(f, "sysctl {k}"),
            SettingId::Limit { domain, item } => write!(f, "limit {domain} {item}"),
            SettingId::Service(unit) => write!(f, "service {unit}"),
            SettingId::ServiceDefaults => f.write_str("service_defaults"),
            SettingId::Slice(name) => write!(f, "slice {name}"),
            SettingId::Controllers => f.write_str("cgroup controllers"),
            SettingId::OvercommitHeadroom => f.write_str("safety overcommit_headroom_percent"),
            SettingId::SysctlConflicts => f.write_str("sysctl_conflicts"),
            SettingId::Module(name) => write!(f, "kernel module {name}"),
        }
    }
}

/// What a rule asks for: every field of its typed value (through `Debug`,
/// so a field added to a rule is compared without anyone listing it here),
/// with the places it was written left out, plus its effective mode.
fn fingerprint(rule: &impl fmt::Debug, mode: Mode) -> String {
    format!("{} ({mode})", without_sources(&format!("{rule:?}")))
}

/// Removes every `source: Source { .. }` from a `Debug` rendering: where a
/// setting was written is not what it asks for.
fn without_sources(debug: &str) -> String {
    const START: &str = "source: Source {";
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(at) = rest.find(START) {
        out.push_str(&rest[..at]);
        rest = &rest[at + START.len()..];
        // Skip to the closing brace, stepping over the quoted file name
        // (which may itself contain braces or escaped quotes).
        let mut in_string = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => in_string = false,
                (false, _, '"') => in_string = true,
                (false, _, '}') => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Each setting of a policy with what it asks for, effective mode included
/// (a policy-wide `mode:` change changes every inheriting setting).
fn settings(p: &Policy) -> BTreeMap<SettingId, String> {
    let mut out = BTreeMap::new();
    for r in p.sysctls.values() {
        out.insert(
            SettingId::Sysctl(r.key.clone()),
            fingerprint(r, p.mode_of(r.mode)),
        );
    }
    for r in &p.limits {
        out.insert(
            SettingId::Limit {
                domain: r.domain.clone(),
                item: r.item,
            },
            fingerprint(r, p.mode_of(r.mode)),
        );
    }
    for (unit, r) in &p.services {
        let mode = p.mode_of(r.mode.as_ref().map(|m| m.value));
        out.insert(SettingId::Service(unit.clone()), fingerprint(r, mode));
    }
    let d = &p.service_defaults;
    if d.limit_nofile.is_some() {
        let mode = p.mode_of(d.mode.as_ref().map(|m| m.value));
        out.insert(SettingId::ServiceDefaults, fingerprint(d, mode));
    }
    for (name, r) in &p.cgroup.slices {
        let mode = p.mode_of(r.mode.as_ref().map(|m| m.value));
        out.insert(SettingId::Slice(name.clone()), fingerprint(r, mode));
    }
    if let Some(c) = &p.cgroup.controllers {
        out.insert(SettingId::Controllers, fingerprint(c, p.default_mode()));
    }
    if let Some(h) = &p.safety.overcommit_headroom_percent {
        out.insert(
            SettingId::OvercommitHeadroom,
            fingerprint(h, p.default_mode()),
        );
    }
    if let Some(c) = &p.sysctl_conflicts {
        out.insert(SettingId::SysctlConflicts, fingerprint(c, p.default_mode()));
    }
    for (name, r) in &p.kernel_modules {
        out.insert(
            SettingId::Module(name.clone()),
            fingerprint(r, p.mode_of(r.mode)),
        );
    }
    out
}

/// The settings added, changed (any field, or the effective mode) and
/// removed. Moving a setting to another line or file is not a change.
pub fn policy_change(old: Option<&Policy>, new: &Policy) -> PolicyChange {
    let before = old.map(settings).unwrap_or_default();
    let after = settings(new);
    let mut change = PolicyChange::default();
    for (id, want) in &after {
        match before.get(id) {
            None => change.added.push(id.clone()),
            Some(had) if had != want => change.changed.push(id.clone()),
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

    fn names(ids: &[SettingId]) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn posture_and_service_defaults_changes_are_changes() {
        let svc = |nnp: &str, nofile: u32| {
            p(&[(
                "a.yaml",
                &format!(
                    "version: 1\nmode: enforce\nservices:\n  myapp.service:\n    no_new_privileges: {nnp}\nservice_defaults:\n  limit_nofile: {nofile}\n"
                ),
            )])
        };
        let c = policy_change(Some(&svc("true", 65536)), &svc("false", 65536));
        assert_eq!(names(&c.changed), ["service myapp.service"]);
        let c = policy_change(Some(&svc("true", 65536)), &svc("true", 131072));
        assert_eq!(names(&c.changed), ["service_defaults"]);
        let posture = ItemKey::Posture {
            unit: "myapp.service".into(),
            field: crate::item::PostureField::NoNewPrivileges,
        };
        assert!(SettingId::Service("myapp.service".into()).covers(&posture));
        assert!(!SettingId::Service("other.service".into()).covers(&posture));
        assert!(SettingId::ServiceDefaults.covers(&ItemKey::DefaultLimitNofile));
        let go_build = ItemKey::GoBuild {
            unit: "myapp.service".into(),
            check: crate::gobuild::Expectation::Trimpath,
        };
        assert!(SettingId::Service("myapp.service".into()).covers(&go_build));
        assert!(!SettingId::Service("other.service".into()).covers(&go_build));
    }

    #[test]
    fn a_slice_covers_its_knobs_and_unit_file() {
        let slice = SettingId::Slice("go-app".into());
        let knob = ItemKey::SliceKnob {
            unit: "go-app.slice".into(),
            knob: crate::cgroup::knob::KnobKind::MemoryMax,
        };
        let file = ItemKey::UnitFile {
            path: "/etc/systemd/system/go-app.slice".into(),
            unit: Some("go-app.slice".into()),
        };
        assert!(slice.covers(&knob) && slice.covers(&file));
        assert!(!SettingId::Slice("go".into()).covers(&knob));
    }

    #[test]
    fn a_module_covers_its_item_and_holdfasts_modprobe_file() {
        let name = |n: &str| ModuleName::parse(n).unwrap();
        let hfs = SettingId::Module(name("hfs"));
        let file = ItemKey::ModprobeFile("/etc/modprobe.d/00-holdfast.conf".into());
        assert!(hfs.covers(&ItemKey::Module(name("hfs"))) && hfs.covers(&file));
        assert!(!hfs.covers(&ItemKey::Module(name("udf"))));
        assert!(!SettingId::SysctlConflicts.covers(&file));
        let persisted = ItemKey::SysctlFile("/etc/sysctl.d/99-zz-holdfast.conf".into());
        let copy = ItemKey::SysctlOverride("/etc/sysctl.d/50-vendor.conf".into());
        assert!(SettingId::SysctlConflicts.covers(&copy));
        assert!(!SettingId::SysctlConflicts.covers(&persisted));
    }

    #[test]
    fn sources_are_left_out_of_what_a_setting_asks_for() {
        let a = "Rule { value: 1, source: Source { file: \"a}\\\".yaml\", line: 3, column: 5 }, mode: None }";
        assert_eq!(without_sources(a), "Rule { value: 1, , mode: None }");
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
        assert_eq!(names(&c.added), ["sysctl fs.suid_dumpable"]);
        assert_eq!(names(&c.changed), ["sysctl net.core.somaxconn"]);
        assert_eq!(names(&c.removed), ["sysctl vm.swappiness"]);
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
        assert_eq!(names(&c.changed), ["sysctl net.core.somaxconn"]);
        assert!(c.added.is_empty() && c.removed.is_empty());
        // The first load adds everything.
        assert_eq!(policy_change(None, &old).added.len(), 2);
    }
}
