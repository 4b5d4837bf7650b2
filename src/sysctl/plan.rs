//! Compare sysctls with the policy and plan the corrections. Pure: it works on
//! what `observe` read and returns items with actions; `apply` carries them
//! out.
//!
//! # Guarantees
//! - Only keys in `enforce` mode get an action; `audit` keys are reported.
//! - The overcommit gate has the last word on `vm.overcommit_*` changes.
//! - The persisted file holds exactly the enforced keys with the values the
//!   kernel has (or will have) after the pass, so boot agrees with runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::conf::{self, Assignment, AtBoot, BootLines};
use super::vendor::{self, SameName};
use super::{Comparison, Expect, Observed, SysctlKey, SysctlValue};
use crate::host::SYSCTL_PERSIST_FILE;
use crate::item::{Action, Conflict, Item, ItemKey, OwnFile, State, own_file_item};
use crate::policy::{Mode, Policy, SysctlRule};
use crate::safety::{self, GateFigures, MemInfo, Overcommit, OvercommitKey, Verdict};

/// What was read from the host for the sysctl part of a pass.
#[derive(Debug, Clone, Default)]
pub struct SysctlHost {
    /// Every policy key, plus the overcommit keys when the policy has any.
    pub values: BTreeMap<SysctlKey, Observed>,
    /// The sysctl.d assignments in boot order, indexed by key: those of
    /// every file but holdfast's own, which is `persisted` and never counts
    /// as a competitor of its keys.
    pub boot: BootLines,
    pub meminfo: Option<MemInfo>,
    /// The persisted file as it is now, if it exists.
    pub persisted: Option<String>,
    /// holdfast's file as the last pass over every key (or a key pass
    /// since) planned it; a key pass replaces only its keys' lines.
    pub persist_plan: Option<PersistPlan>,
    /// The persisted file's path on this host (for reports and actions).
    pub persist_path: PathBuf,
    /// Every vendor sysctl.d file (outside `/etc`) with what
    /// `/etc/sysctl.d` has of its name, and holdfast's copies whose vendor
    /// file is gone (`sysctl_conflicts: override`).
    pub vendor: Vec<SameName>,
}

impl SysctlHost {
    /// holdfast's file as the pass left it, when `path` is that file (see
    /// `area::Observation::own_file`).
    pub fn own_file(&self, path: &Path) -> Option<Option<&str>> {
        (self.persist_path == path).then_some(self.persisted.as_deref())
    }
}

/// The keys `observe` must read for this policy.
pub fn keys_to_read(policy: &Policy) -> Vec<SysctlKey> {
    let mut keys: Vec<SysctlKey> = policy.sysctls.keys().cloned().collect();
    if needs_meminfo(policy) {
        for k in [
            "vm.overcommit_memory",
            "vm.overcommit_ratio",
            "vm.overcommit_kbytes",
        ] {
            if let Ok(k) = SysctlKey::parse(k)
                && !keys.contains(&k)
            {
                keys.push(k);
            }
        }
    }
    keys
}

/// Whether the policy has overcommit keys, so the gate needs /proc/meminfo.
pub fn needs_meminfo(policy: &Policy) -> bool {
    policy
        .sysctls
        .keys()
        .any(|k| OvercommitKey::from_sysctl(k.as_str()).is_some())
}

/// Plans the sysctl items: one per policy key, holdfast's copies of vendor
/// files (`sysctl_conflicts: override`), then holdfast's persisted file.
pub fn plan(policy: &Policy, host: &SysctlHost) -> Vec<Item> {
    let mut items = compare_all(policy, policy.sysctls.values(), host);
    items.extend(vendor::plan(policy, &host.vendor));
    let persist = persist_item(policy, &items, host);
    items.extend(persist);
    items
}

/// [`plan_keys`] when `keys` names some, else [`plan`].
pub fn plan_focused(
    policy: &Policy,
    host: &SysctlHost,
    keys: Option<&BTreeSet<SysctlKey>>,
) -> Vec<Item> {
    match keys {
        Some(keys) => plan_keys(policy, host, keys),
        None => plan(policy, host),
    }
}

/// Plans only the items of `keys` (a key pass: an event named them), and
/// of the overcommit keys, which the gate judges together: no vendor copy
/// and no persisted file, which [`persist_item_updated`] plans from these
/// items and the file's entries as the last pass left them. What it costs
/// grows with `keys`, not with the policy.
pub fn plan_keys(policy: &Policy, host: &SysctlHost, keys: &BTreeSet<SysctlKey>) -> Vec<Item> {
    let overcommit = OvercommitKey::ALL
        .iter()
        .filter_map(|k| SysctlKey::parse(k.as_sysctl()).ok());
    let wanted: BTreeSet<SysctlKey> = keys.iter().cloned().chain(overcommit).collect();
    let rules = wanted.iter().filter_map(|k| policy.sysctls.get(k));
    compare_all(policy, rules, host)
}

/// Compares each rule and applies the overcommit gate to the writes.
fn compare_all<'a>(
    policy: &Policy,
    rules: impl Iterator<Item = &'a SysctlRule>,
    host: &SysctlHost,
) -> Vec<Item> {
    let (mut items, targets): (Vec<Item>, Vec<Option<SysctlValue>>) =
        rules.map(|rule| compare(policy, rule, host)).unzip();
    gate_overcommit(policy, host, &mut items, &targets);
    items
}

/// Compares one key; returns its item and, when drifted, the value that would
/// correct it (whether or not the mode lets holdfast write it).
fn compare(policy: &Policy, rule: &SysctlRule, host: &SysctlHost) -> (Item, Option<SysctlValue>) {
    let mode = policy.mode_of(rule.mode);
    let mut target = None;
    let mut item = Item::new(
        ItemKey::Sysctl(rule.key.clone()),
        rule.expect.to_string(),
        mode,
    );
    item.source = Some(rule.source.clone());
    match host.values.get(&rule.key) {
        Some(Observed::Value(actual)) => {
            item.actual = actual.canonical();
            match rule.expect.compare(actual) {
                Comparison::Compliant => item.state = State::Compliant,
                Comparison::Drifted { target: value } => {
                    item.state = State::Drifted;
                    if mode == Mode::Enforce {
                        item.action = Some(Action::WriteSysctl {
                            key: rule.key.clone(),
                            value: value.clone(),
                        });
                    }
                    target = Some(value);
                }
                Comparison::Incomparable(why) => {
                    item.state = State::Failed;
                    item.detail.push(why);
                }
            }
        }
        Some(Observed::Absent) | None => {
            item.state = State::Unsupported;
            item.detail.push(if rule.key.is_per_netns() {
                "no such key in this network namespace (the interface or module may be missing); applied when it appears".into()
            } else {
                "no such key on this kernel (a module may not be loaded); applied when it appears".into()
            });
        }
        Some(Observed::Unreadable(why)) => {
            item.state = State::Unsupported;
            item.detail.push(format!(
                "cannot be read (write-only key, or not permitted): {why}"
            ));
        }
        Some(Observed::Failed(why)) => {
            item.state = State::Failed;
            item.detail.push(why.clone());
        }
    }
    let others = host.boot.concerning(rule.key.as_str());
    let conflicting = conflicting(&rule.expect, &others);
    item.conflicts = conflicts(&rule.key, mode, &item.desired, &others, &conflicting);
    for c in item.conflicts.iter().filter(|c| c.wins_at_boot) {
        let exclusion = others
            .iter()
            .any(|a| a.value.is_none() && a.file == c.file && a.line == c.line);
        item.detail.push(if exclusion {
            format!(
                "{}:{} excludes the key (`-{}`) after holdfast's file: boot drops holdfast's line and leaves the kernel's value",
                c.file.display(),
                c.line,
                rule.key
            )
        } else {
            format!(
                "{}:{} sets {} and wins at boot",
                c.file.display(),
                c.line,
                c.value
            )
        });
    }
    item.detail
        .extend(vendor::notes(policy, rule, &conflicting, &host.vendor));
    (item, target)
}

/// The lines of `others` (the lines of other files that concern the key)
/// that set a value the policy does not accept, in boot order.
fn conflicting<'a>(expect: &Expect, others: &[&'a Assignment]) -> Vec<&'a Assignment> {
    others
        .iter()
        .copied()
        .filter(|a| {
            a.value
                .as_ref()
                .is_some_and(|v| expect.compare(v) != Comparison::Compliant)
        })
        .collect()
}

/// The conflicts of `key`: its `conflicting` lines, and, once enforced, an
/// exclusion (`-KEY`) read after holdfast's file, each with whether it is
/// what boot applies (see [`conf::at_boot`]). holdfast's file, once
/// enforced, sorts after every distribution file: only a file named to sort
/// after it (or /etc/sysctl.conf, which `sysctl --system` reads last) comes
/// later, and a glob never beats its line.
fn conflicts(
    key: &SysctlKey,
    mode: Mode,
    desired: &str,
    others: &[&Assignment],
    conflicting: &[&Assignment],
) -> Vec<Conflict> {
    let enforced = mode == Mode::Enforce;
    let ours;
    let mut read = others.to_vec();
    if enforced {
        // holdfast's line as boot will read it. Its value does not matter
        // here: a line naming the key is applied whatever its value.
        ours = Assignment {
            file: PathBuf::from("/").join(SYSCTL_PERSIST_FILE),
            line: 1,
            key: key.as_str().to_string(),
            value: Some(SysctlValue::from_kernel(desired)),
            ignore_failure: false,
        };
        let at = read
            .iter()
            .position(|a| sorts_after_persist_file(&a.file))
            .unwrap_or(read.len());
        read.insert(at, &ours);
    }
    let decided = conf::at_boot(read, key.as_str());
    let decides = |a: &Assignment| decided.line().is_some_and(|d| std::ptr::eq(d, a));
    others
        .iter()
        .copied()
        .filter(|a| {
            conflicting.iter().any(|c| std::ptr::eq(*c, *a))
                || (enforced && matches!(decided, AtBoot::Excluded(_)) && decides(a))
        })
        .map(|a| Conflict {
            file: a.file.clone(),
            line: a.line,
            value: a
                .value
                .as_ref()
                .map_or_else(|| EXCLUDED.to_string(), SysctlValue::canonical),
            wins_at_boot: decides(a),
        })
        .collect()
}

/// The value a conflict shows for an exclusion line.
const EXCLUDED: &str = "nothing (an exclusion, `-KEY`)";

fn sorts_after_persist_file(path: &Path) -> bool {
    if path.ends_with("etc/sysctl.conf") {
        return true;
    }
    let ours = Path::new(SYSCTL_PERSIST_FILE).file_name();
    path.file_name() > ours
}

/// Applies the overcommit gate to the planned writes of vm.overcommit_*.
/// Keys in audit mode are judged too, as if enforced, so that a plan shows
/// whether switching to enforce would be safe.
fn gate_overcommit(
    policy: &Policy,
    host: &SysctlHost,
    items: &mut [Item],
    targets: &[Option<SysctlValue>],
) {
    let current_of = |name: &str| -> Option<u64> {
        let key = SysctlKey::parse(name).ok()?;
        match host.values.get(&key)? {
            Observed::Value(v) => v.as_single_int().and_then(|n| u64::try_from(n).ok()),
            _ => None,
        }
    };
    let (Some(memory), Some(ratio), kbytes) = (
        current_of("vm.overcommit_memory"),
        current_of("vm.overcommit_ratio"),
        current_of("vm.overcommit_kbytes").unwrap_or(0),
    ) else {
        return;
    };
    let current = Overcommit {
        memory,
        ratio,
        kbytes,
    };
    let mut planned = current;
    for (item, target) in items.iter().zip(targets) {
        if let Some(value) = target
            && let Some(which) = item
                .key
                .sysctl()
                .and_then(|k| OvercommitKey::from_sysctl(k.as_str()))
            && let Some(n) = value.as_single_int().and_then(|n| u64::try_from(n).ok())
        {
            match which {
                OvercommitKey::Memory => planned.memory = n,
                // The kernel zeroes one of ratio and kbytes when the other is written.
                OvercommitKey::Ratio => {
                    planned.ratio = n;
                    planned.kbytes = 0;
                }
                OvercommitKey::Kbytes => planned.kbytes = n,
            }
        }
    }
    let headroom = policy.safety.overcommit_headroom_percent();
    let (mode_verdict, limit_verdict) =
        safety::overcommit_gate(host.meminfo.as_ref(), current, planned, headroom);
    for (item, target) in items.iter_mut().zip(targets) {
        let Some(which) = item
            .key
            .sysctl()
            .and_then(|k| OvercommitKey::from_sysctl(k.as_str()))
        else {
            continue;
        };
        if target.is_none() {
            continue;
        }
        let verdict = match which {
            OvercommitKey::Memory => &mode_verdict,
            OvercommitKey::Ratio | OvercommitKey::Kbytes => &limit_verdict,
        };
        let enforced = item.mode == Mode::Enforce;
        let prefix = if enforced {
            "overcommit gate"
        } else {
            "overcommit gate, if enforced"
        };
        match verdict {
            Verdict::NotApplicable => {}
            Verdict::Allowed(f) => item.detail.push(format!("{prefix}: allowed ({f})")),
            Verdict::Refused(f) if enforced => refuse(item, refusal_text(prefix, f)),
            Verdict::Unknown(why) if enforced => refuse(item, format!("{prefix}: refused: {why}")),
            Verdict::Refused(f) => item.detail.push(refusal_text(prefix, f)),
            Verdict::Unknown(why) => item.detail.push(format!("{prefix}: refused: {why}")),
        }
    }
}

fn refusal_text(prefix: &str, f: &GateFigures) -> String {
    format!(
        "{prefix}: refused: {f}; Committed_AS plus {}% headroom exceeds the projected CommitLimit, so strict overcommit would make allocations and fork fail",
        f.headroom_percent
    )
}

fn refuse(item: &mut Item, why: String) {
    item.action = None;
    item.state = State::Refused;
    item.detail.push(why);
}

/// The value an enforced key will have once the pass is done, if it should
/// be persisted: what the kernel has when compliant (or was just corrected
/// to), the planned write when one is pending (held back by the daemon's
/// backoff too), the policy's value when the key is absent (boot may load
/// the module) or when this pass's write failed — the same value a held
/// retry of it persists, so a failing key does not make the daemon's key
/// and full passes rewrite the file back and forth. Refused keys are not
/// persisted: boot must not do what a safety check refused.
fn persist_value(rule: &SysctlRule, item: &Item) -> Option<SysctlValue> {
    match (&item.action, item.state) {
        (Some(Action::WriteSysctl { value, .. }), _) => Some(value.clone()),
        (None, State::Compliant | State::Corrected) => Some(SysctlValue::from_kernel(&item.actual)),
        (None, State::Unsupported) if item.actual.is_empty() => Some(rule.expect.default_target()),
        (None, State::Failed) => Some(rule.expect.default_target()),
        _ => None,
    }
}

/// One line of holdfast's sysctl.d file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistEntry {
    pub key: SysctlKey,
    pub value: SysctlValue,
    /// The kernel had the key when the file was planned. Only an absent key
    /// (a module not loaded, an interface not up yet) gets the `-` prefix.
    pub present: bool,
}

/// Renders holdfast's sysctl.d file, one `KEY = VALUE` line per key in the
/// order of [`write_order`].
///
/// A key the kernel has is written as a plain `KEY = VALUE` line: that is the
/// form compliance scanners look for (ComplianceAsCode's checks, which
/// OpenSCAP runs for the CIS and STIG profiles, match `^\s*KEY\s*=\s*VALUE`;
/// CIS-CAT, Lynis and Ansible read sysctl.d the same way), and a line they do
/// not recognise fails the rule even when the running value is right. Only a
/// key absent when the file is written gets systemd-sysctl's `-` prefix, so
/// that boot skips it quietly on a kernel or at a moment without it.
pub fn render_persist_file<'a>(entries: impl IntoIterator<Item = &'a PersistEntry>) -> String {
    let mut out = String::from(
        "# Managed by holdfast: the enforced sysctls of its policy, so that boot\n\
         # agrees with the running values. Do not edit: holdfast rewrites this file.\n\
         # Keys that change others when written come first. A leading '-' marks a\n\
         # key this kernel did not have when the file was written; boot skips it\n\
         # if it is still missing.\n",
    );
    for entry in entries {
        let dash = if entry.present { "" } else { "-" };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{dash}{} = {}", entry.key, entry.value.canonical());
    }
    out
}

/// The lines of holdfast's sysctl.d file, in the file's order (see
/// [`write_order`]).
type PersistEntries = BTreeMap<(u8, SysctlKey), PersistEntry>;

/// holdfast's sysctl.d file as a pass planned it: its lines by key, and the
/// text they render to. A key pass replaces its keys' lines and renders the
/// file again only when one of them changed.
#[derive(Debug, Clone, Default)]
pub struct PersistPlan {
    entries: PersistEntries,
    text: String,
}

impl PersistPlan {
    /// The file for the enforced keys among `items`.
    pub fn of(policy: &Policy, items: &[Item], host: &SysctlHost) -> PersistPlan {
        let mut plan = PersistPlan::default();
        plan.update_entries(policy, items, host);
        plan.text = render_persist_file(plan.entries.values());
        plan
    }

    /// Replaces the lines of the keys of `items` with what those items now
    /// say.
    pub fn update(&mut self, policy: &Policy, items: &[Item], host: &SysctlHost) {
        if self.update_entries(policy, items, host) {
            self.text = render_persist_file(self.entries.values());
        }
    }

    /// Whether a line changed.
    fn update_entries(&mut self, policy: &Policy, items: &[Item], host: &SysctlHost) -> bool {
        let mut changed = false;
        for item in items {
            let Some(rule) = item.key.sysctl().and_then(|k| policy.sysctls.get(k)) else {
                continue;
            };
            let slot = (write_order(rule.key.as_str()), rule.key.clone());
            let entry = (policy.mode_of(rule.mode) == Mode::Enforce)
                .then(|| persist_value(rule, item))
                .flatten()
                .map(|value| PersistEntry {
                    key: rule.key.clone(),
                    value,
                    present: !matches!(host.values.get(&rule.key), Some(Observed::Absent) | None),
                });
            let line_changed = match entry {
                Some(entry) => {
                    let same = self.entries.get(&slot) == Some(&entry);
                    if !same {
                        self.entries.insert(slot, entry);
                    }
                    !same
                }
                None => self.entries.remove(&slot).is_some(),
            };
            changed |= line_changed;
        }
        changed
    }
}

/// Plans holdfast's persisted file from the items' final values. Called by
/// `plan` (with pending writes) and again by `apply` (with verified values).
pub fn persist_item(policy: &Policy, items: &[Item], host: &SysctlHost) -> Option<Item> {
    persist_file_item(policy, &PersistPlan::of(policy, items, host), host)
}

/// holdfast's persisted file as an item, given its plan.
pub fn persist_file_item(policy: &Policy, plan: &PersistPlan, host: &SysctlHost) -> Option<Item> {
    let any_enforced = policy
        .sysctls
        .values()
        .any(|rule| policy.mode_of(rule.mode) == Mode::Enforce);
    if !any_enforced && host.persisted.is_none() {
        return None;
    }
    let mode = if any_enforced {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    let (desired, desired_label) = if any_enforced {
        (
            Some(plan.text.clone()),
            format!("{} keys", plan.entries.len()),
        )
    } else {
        (None, "absent (no enforced sysctls)".to_string())
    };
    Some(own_file_item(OwnFile {
        key: ItemKey::SysctlFile(host.persist_path.clone()),
        path: &host.persist_path,
        current: host.persisted.as_deref(),
        desired,
        mode,
        desired_label,
        actual_label: describe_file(host.persisted.as_deref()),
        stale_note: "holdfast's file from an earlier enforced policy is still there; boot applies it",
    }))
}

fn describe_file(content: Option<&str>) -> String {
    match content {
        None => "absent".into(),
        Some(text) => {
            let keys = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
                .count();
            format!("{keys} keys")
        }
    }
}

/// The order in which sysctls are written, in a pass and in the persisted
/// file that boot applies line by line: lower first, then by key. Some
/// writes change other keys as a side effect, so a key that changes others
/// must come before the keys it changes; otherwise the last write of a pass
/// (or of boot) leaves an earlier key changed.
///
/// 0. The overcommit limit (`vm.overcommit_ratio`/`_kbytes`), so the kernel
///    never runs in strict mode with the old, possibly lower, limit.
/// 1. Switches that rewrite other keys (see [`resets_others`]).
/// 2. `net.ipv4.conf.default.*` (and, to keep them together in the file,
///    `net.ipv6.conf.default.*`): IPv4 copies a default to every interface
///    whose own value was never written (`devinet_copy_dflt_conf`).
/// 3. Everything else, per-interface keys included.
/// 4. The switch to strict overcommit (`vm.overcommit_memory`), last.
pub fn write_order(key: &str) -> u8 {
    match OvercommitKey::from_sysctl(key) {
        Some(OvercommitKey::Ratio | OvercommitKey::Kbytes) => 0,
        Some(OvercommitKey::Memory) => 4,
        None if resets_others(key) => 1,
        None if key.starts_with("net.ipv4.conf.default.")
            || key.starts_with("net.ipv6.conf.default.") =>
        {
            2
        }
        None => 3,
    }
}

/// Keys whose write, when it changes the value, also rewrites other keys
/// (Linux net/ipv4/devinet.c and net/ipv6/addrconf.c; each seen on Linux
/// 6.18 in a network namespace):
/// - `net.ipv4.ip_forward` (the same setting as `net.ipv4.conf.all.forwarding`):
///   `inet_forward_change` sets `conf.all.accept_redirects` to the opposite
///   (so switching forwarding off turns accepting redirects on), and
///   `conf.default.forwarding` and every interface's `forwarding` to the new
///   value;
/// - `net.ipv6.conf.all.forwarding`: sets `conf.default.forwarding` and every
///   interface's `forwarding`;
/// - `net.ipv6.conf.all.disable_ipv6` and `net.ipv6.conf.all.addr_gen_mode`:
///   set the same key of `conf.default` and of every interface.
pub fn resets_others(key: &str) -> bool {
    matches!(
        key,
        "net.ipv4.ip_forward"
            | "net.ipv4.conf.all.forwarding"
            | "net.ipv6.conf.all.forwarding"
            | "net.ipv6.conf.all.disable_ipv6"
            | "net.ipv6.conf.all.addr_gen_mode"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: i128, present: bool) -> PersistEntry {
        PersistEntry {
            key: SysctlKey::parse(key).unwrap(),
            value: SysctlValue::from_int(value),
            present,
        }
    }

    /// The conflicts of each policy key as `FILE:LINE VALUE [wins]`, for a
    /// host whose sysctl.d files are `files` (in boot order).
    fn conflicts_of(policy: &str, files: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
        let policy = Policy::from_files([("/p.yaml", policy)]).unwrap();
        let host = SysctlHost {
            values: policy
                .sysctls
                .keys()
                .map(|k| (k.clone(), Observed::Value(SysctlValue::from_int(1))))
                .collect(),
            boot: files
                .iter()
                .flat_map(|(name, text)| conf::parse(Path::new(name), text))
                .collect(),
            ..SysctlHost::default()
        };
        plan(&policy, &host)
            .into_iter()
            .filter_map(|i| {
                let key = i.key.sysctl()?.to_string();
                let c = i
                    .conflicts
                    .iter()
                    .map(|c| {
                        let wins = if c.wins_at_boot { " wins" } else { "" };
                        format!("{}:{} {}{wins}", c.file.display(), c.line, c.value)
                    })
                    .collect();
                Some((key, c))
            })
            .collect()
    }

    #[test]
    fn a_glob_never_beats_a_line_naming_the_key_and_an_exclusion_after_holdfast_drops_it() {
        let files = [
            (
                "/usr/lib/sysctl.d/50-default.conf",
                "net.ipv4.conf.*.rp_filter = 2\n-net.ipv4.conf.all.rp_filter\n",
            ),
            (
                "/etc/sysctl.d/60-site.conf",
                "net.ipv4.conf.eth1.rp_filter = 0\n",
            ),
            (
                "/etc/sysctl.d/99-zzz-late.conf",
                "net.ipv4.conf.*.rp_filter = 0\n-net.ipv4.conf.eth2.rp_filter\n",
            ),
        ];
        let keys = "  net.ipv4.conf.eth0.rp_filter: 1\n  net.ipv4.conf.eth1.rp_filter: 1\n  net.ipv4.conf.eth2.rp_filter: 1\n  net.ipv4.conf.all.rp_filter: 1\n";
        // Audit: holdfast has no line at boot. eth0 gets the later glob;
        // eth1 its own line, though a glob comes after it; `all` is
        // excluded from both globs, and eth2 from the later one.
        let audit = conflicts_of(&format!("version: 1\nmode: audit\nsysctl:\n{keys}"), &files);
        let late = "/etc/sysctl.d/99-zzz-late.conf";
        let vendor = "/usr/lib/sysctl.d/50-default.conf";
        assert_eq!(
            audit,
            [
                (
                    "net.ipv4.conf.all.rp_filter".into(),
                    vec![format!("{vendor}:1 2"), format!("{late}:1 0")]
                ),
                (
                    "net.ipv4.conf.eth0.rp_filter".into(),
                    vec![format!("{vendor}:1 2"), format!("{late}:1 0 wins")]
                ),
                (
                    "net.ipv4.conf.eth1.rp_filter".into(),
                    vec![
                        format!("{vendor}:1 2"),
                        "/etc/sysctl.d/60-site.conf:1 0 wins".into(),
                        format!("{late}:1 0")
                    ]
                ),
                // eth2's exclusion is no conflict before holdfast enforces.
                (
                    "net.ipv4.conf.eth2.rp_filter".into(),
                    vec![format!("{vendor}:1 2"), format!("{late}:1 0")]
                ),
            ]
        );
        // Enforced: holdfast's line beats every glob and the earlier line
        // of eth1; the exclusion of eth2, read after it, drops it.
        let enforce = conflicts_of(
            &format!("version: 1\nmode: enforce\nsysctl:\n{keys}"),
            &files,
        );
        let wins: Vec<(&str, Vec<&String>)> = enforce
            .iter()
            .map(|(k, c)| {
                (
                    k.as_str(),
                    c.iter().filter(|c| c.ends_with(" wins")).collect(),
                )
            })
            .collect();
        let excluded = format!("{late}:2 {EXCLUDED} wins");
        assert_eq!(
            wins,
            [
                ("net.ipv4.conf.all.rp_filter", vec![]),
                ("net.ipv4.conf.eth0.rp_filter", vec![]),
                ("net.ipv4.conf.eth1.rp_filter", vec![]),
                ("net.ipv4.conf.eth2.rp_filter", vec![&excluded]),
            ]
        );
    }

    #[test]
    fn present_keys_are_plain_lines_and_only_absent_keys_get_a_dash() {
        let text = render_persist_file(&[
            entry("net.ipv4.tcp_syncookies", 1, true),
            entry("net.ipv4.conf.eth9.rp_filter", 1, false),
        ]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "net.ipv4.tcp_syncookies = 1",
                "-net.ipv4.conf.eth9.rp_filter = 1"
            ]
        );
    }

    #[test]
    fn keys_that_reset_others_are_written_first_and_the_overcommit_mode_last() {
        let mut keys = vec![
            "net.ipv4.conf.all.accept_redirects",
            "net.ipv4.conf.eth0.forwarding",
            "vm.overcommit_memory",
            "net.ipv4.conf.default.rp_filter",
            "net.ipv6.conf.all.accept_ra",
            "net.ipv4.ip_forward",
            "net.ipv6.conf.all.forwarding",
            "vm.overcommit_ratio",
            "kernel.randomize_va_space",
        ];
        keys.sort_by_key(|k| (write_order(k), *k));
        assert_eq!(
            keys,
            [
                "vm.overcommit_ratio",
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding",
                "net.ipv4.conf.default.rp_filter",
                "kernel.randomize_va_space",
                "net.ipv4.conf.all.accept_redirects",
                "net.ipv4.conf.eth0.forwarding",
                "net.ipv6.conf.all.accept_ra",
                "vm.overcommit_memory",
            ]
        );
    }
}
