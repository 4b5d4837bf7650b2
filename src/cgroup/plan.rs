//! Judge and plan cgroup slices. Pure.
//!
//! Two backends behind this one planner:
//! - **systemd** (PID 1 is systemd): a slice unit `/etc/systemd/system/NAME.slice`
//!   holds the limits; a running slice is changed with
//!   `SetUnitProperties(runtime=true)`. holdfast never writes an attribute of
//!   a cgroup systemd created: systemd would undo it on the next reload.
//! - **cgroupfs** (no systemd): holdfast creates and owns `holdfast.slice/NAME`
//!   under the cgroup root, enables controllers top-down, and writes the
//!   limits itself, never outside that subtree (but for adding controllers
//!   to the root's `cgroup.subtree_control`, which the subtree needs).
//!
//! # Guarantees
//! - On hybrid and v1 hosts every cgroup item is `unsupported` with the
//!   reason, and no action is planned.
//! - Lowering `memory.max` below the cgroup's `memory.current` is refused
//!   (it would reclaim synchronously and then OOM-kill); `memory.high`, which
//!   only throttles, is still applied.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::CgroupMode;
use super::knob::{Knob, KnobKind};
use super::{Bytes, Count};
use crate::item::{Action, Item, ItemKey, State, unit_file_item};
use crate::policy::{Mode, Policy, SliceRule};
use crate::systemd::UnitInfo;

/// The subtree holdfast owns on hosts without systemd.
pub use super::HOLDFAST_SUBTREE;

/// One cgroup on the path to a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ancestor {
    /// Relative to the cgroup root; empty for the root itself.
    pub path: String,
    /// `cgroup.controllers`: what this cgroup may use.
    pub controllers: Vec<String>,
    /// `cgroup.subtree_control`: what it gives its children.
    pub subtree_control: Vec<String>,
    /// Whether processes live directly in it (`cgroup.procs` non-empty).
    pub has_processes: bool,
    pub exists: bool,
}

/// What was observed of one policy slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceObs {
    /// systemd backend: the slice unit holdfast owns and its content.
    pub unit_file: Option<(PathBuf, Option<String>)>,
    /// systemd backend: systemd's view; `None` when it was not asked.
    pub info: Option<Result<UnitInfo, String>>,
    /// The slice's cgroup relative to the cgroup root (systemd: from the
    /// unit's `ControlGroup`, never derived from the name).
    pub cgroup_path: Option<String>,
    /// The slice's cgroup exists.
    pub exists: bool,
    /// The knob files that exist, with their content.
    pub kernel: BTreeMap<KnobKind, String>,
    pub memory_current: Option<u64>,
    pub pids_current: Option<u64>,
    /// Effects worth showing (`memory.events` max/oom_kill, `pids.events` max).
    pub events: Vec<String>,
    /// From the cgroup root down to the slice's parent.
    pub ancestors: Vec<Ancestor>,
}

/// What was read from the host for the cgroup part of a pass.
#[derive(Debug, Clone)]
pub struct CgroupHost {
    pub mode: CgroupMode,
    pub systemd: bool,
    /// Why systemd was not asked, when it was not.
    pub not_queried: Option<String>,
    /// The cgroup root on this host (`/sys/fs/cgroup` under the host root).
    pub root: PathBuf,
    pub slices: BTreeMap<String, SliceObs>,
}

/// The knobs a slice rule sets, memory.high before memory.max (lower the
/// throttle before the kill limit).
pub fn knobs(rule: &SliceRule) -> Vec<Knob> {
    let mut out = Vec::new();
    if let Some(v) = &rule.memory_high {
        out.push(Knob::MemoryHigh(v.value));
    }
    if let Some(v) = &rule.memory_max {
        out.push(Knob::MemoryMax(v.value));
    }
    if let Some(v) = &rule.cpu_max {
        out.push(Knob::CpuMax(v.value));
    }
    if let Some(v) = &rule.pids_max {
        out.push(Knob::PidsMax(v.value));
    }
    out
}

fn knob_source(rule: &SliceRule, kind: KnobKind) -> Option<crate::policy::Source> {
    match kind {
        KnobKind::MemoryHigh => rule.memory_high.as_ref().map(|s| s.source.clone()),
        KnobKind::MemoryMax => rule.memory_max.as_ref().map(|s| s.source.clone()),
        KnobKind::CpuMax => rule.cpu_max.as_ref().map(|s| s.source.clone()),
        KnobKind::PidsMax => rule.pids_max.as_ref().map(|s| s.source.clone()),
    }
}

/// The controllers the policy needs: those it lists and those its knobs use.
pub fn needed_controllers(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = policy
        .cgroup
        .controllers
        .as_ref()
        .map(|c| c.value.clone())
        .unwrap_or_default();
    for rule in policy.cgroup.slices.values() {
        for k in knobs(rule) {
            let c = k.kind().controller().to_string();
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The systemd unit name of a policy slice.
pub fn slice_unit(name: &str) -> String {
    format!("{name}.slice")
}

/// Where systemd puts the cgroup of the policy slice `name`, relative to
/// the cgroup root: a dash nests a slice inside the one its prefix names,
/// so `go-app` is `go.slice/go-app.slice` (systemd.slice(5)). What holdfast
/// reads stays systemd's own `ControlGroup`; this says only what to watch.
pub fn systemd_slice_cgroup(name: &str) -> String {
    let mut path = String::new();
    for (end, _) in name.match_indices('-').chain([(name.len(), "")]) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&name[..end]);
        path.push_str(".slice");
    }
    path
}

/// The setting that makes systemd enable a controller on the path to a
/// slice. For cpu, accounting alone is not enough on cgroup v2 (cpu.stat
/// exists without the controller), so the slice gets the default weight,
/// which changes nothing but needs the controller.
fn accounting_directive(controller: &str) -> Option<&'static str> {
    match controller {
        "cpu" => Some("CPUWeight=100"),
        "memory" => Some("MemoryAccounting=yes"),
        "pids" => Some("TasksAccounting=yes"),
        "io" => Some("IOAccounting=yes"),
        _ => None,
    }
}

/// Renders holdfast's slice unit.
pub fn render_slice_unit(name: &str, knobs: &[Knob], controllers: &[String]) -> String {
    let mut out = format!(
        "# Managed by holdfast: do not edit; holdfast rewrites this file.\n\
         [Unit]\nDescription=holdfast slice {name}\n\n[Slice]\n"
    );
    for c in controllers {
        if let Some(d) = accounting_directive(c) {
            out.push_str(d);
            out.push('\n');
        }
    }
    for k in knobs {
        for d in k.systemd_directives() {
            out.push_str(&d);
            out.push('\n');
        }
    }
    out
}

fn unsupported_items(policy: &Policy, why: &str) -> Vec<Item> {
    let mut items = Vec::new();
    for c in policy
        .cgroup
        .controllers
        .iter()
        .flat_map(|c| c.value.iter())
    {
        let mut item = Item::new(
            ItemKey::Controller {
                name: c.clone(),
                at_root: false,
            },
            "enabled",
            policy.default_mode(),
        );
        item.source = policy.cgroup.controllers.as_ref().map(|c| c.source.clone());
        item.state = State::Unsupported;
        item.detail.push(why.to_string());
        items.push(item);
    }
    for rule in policy.cgroup.slices.values() {
        let mode = policy.mode_of(rule.mode.as_ref().map(|m| m.value));
        for k in knobs(rule) {
            let mut item = Item::new(
                ItemKey::SliceKnob {
                    unit: slice_unit(&rule.name),
                    knob: k.kind(),
                },
                k.to_string(),
                mode,
            );
            item.source = knob_source(rule, k.kind());
            item.state = State::Unsupported;
            item.detail.push(why.to_string());
            items.push(item);
        }
    }
    items
}

pub fn plan(policy: &Policy, host: &CgroupHost) -> Vec<Item> {
    if policy.cgroup.controllers.is_none() && policy.cgroup.slices.is_empty() {
        return Vec::new();
    }
    if host.mode != CgroupMode::Unified {
        let why = format!(
            "this host has a {}: holdfast manages cgroup v2 only, so cgroup settings are report-only here",
            host.mode.as_str()
        );
        return unsupported_items(policy, &why);
    }
    if host.systemd {
        plan_systemd(policy, host)
    } else {
        plan_cgroupfs(policy, host)
    }
}

/// Whether lowering `memory.max` to `want` would cut below what the cgroup
/// uses now: the kernel would reclaim and then OOM-kill inside it.
fn memory_refusal(want: &Knob, obs: &SliceObs) -> Option<String> {
    let (Knob::MemoryMax(Bytes::Value(limit)), Some(current)) = (want, obs.memory_current) else {
        return None;
    };
    (current > *limit).then(|| {
        format!(
            "refused: memory.max {limit} is below memory.current {current}; the kernel would reclaim and then OOM-kill in the slice. Lower memory.high first (it throttles, never kills) or free memory, then apply again"
        )
    })
}

fn pids_warning(want: &Knob, obs: &SliceObs) -> Option<String> {
    let (Knob::PidsMax(Count::Value(limit)), Some(current)) = (want, obs.pids_current) else {
        return None;
    };
    (current > *limit).then(|| {
        format!("warning: pids.max {limit} is below pids.current {current}: nothing is killed, but fork will fail in the slice")
    })
}

/// The systemd property that corresponds to a knob, as a knob value.
fn systemd_value(info: &UnitInfo, kind: KnobKind) -> Option<Knob> {
    match kind {
        KnobKind::MemoryMax => info.memory_max.map(Knob::MemoryMax),
        KnobKind::MemoryHigh => info.memory_high.map(Knob::MemoryHigh),
        KnobKind::CpuMax => info.cpu_max.map(Knob::CpuMax),
        KnobKind::PidsMax => info.tasks_max.map(Knob::PidsMax),
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one straight walk over the controllers and each slice's knobs, as the report lists them"
)]
fn plan_systemd(policy: &Policy, host: &CgroupHost) -> Vec<Item> {
    let controllers = needed_controllers(policy);
    let mut items = Vec::new();
    for rule in policy.cgroup.slices.values() {
        let mode = policy.mode_of(rule.mode.as_ref().map(|m| m.value));
        let unit = slice_unit(&rule.name);
        let empty = SliceObs::default();
        let obs = host.slices.get(&rule.name).unwrap_or(&empty);
        let info = match &obs.info {
            Some(Ok(info)) => Some(info),
            _ => None,
        };
        let wanted = knobs(rule);

        // The unit file holds what may be applied: a refused memory.max
        // keeps systemd's current value, so a reload cannot apply it either.
        let mut file_knobs = Vec::new();
        let mut refusals = BTreeMap::new();
        for k in &wanted {
            match memory_refusal(k, obs) {
                Some(why) => {
                    let keep = info
                        .and_then(|i| systemd_value(i, k.kind()))
                        .unwrap_or(Knob::MemoryMax(Bytes::Max));
                    file_knobs.push(keep);
                    refusals.insert(k.kind(), why);
                }
                None => file_knobs.push(*k),
            }
        }
        let content = render_slice_unit(&rule.name, &file_knobs, &controllers);
        let (path, current) = obs
            .unit_file
            .clone()
            .unwrap_or_else(|| (PathBuf::from(&unit), None));
        let file_right = current.as_deref() == Some(content.as_str());
        let file_item = unit_file_item(
            Some(&unit),
            &path,
            current.as_deref(),
            content,
            mode,
            format!("slice unit {unit}"),
        );
        items.push(file_item);

        // The slice itself: active, so its cgroup exists.
        let mut slice_item = Item::new(ItemKey::Slice { unit: unit.clone() }, "active", mode);
        slice_item.source = Some(rule.source.clone());
        match &obs.info {
            None => {
                slice_item.state = if file_right {
                    State::Compliant
                } else {
                    State::Drifted
                };
                if let Some(why) = &host.not_queried {
                    slice_item.detail.push(format!("systemd not asked: {why}"));
                }
            }
            Some(Err(e)) => {
                slice_item.state = State::Failed;
                slice_item.detail.push(format!("cannot ask systemd: {e}"));
            }
            Some(Ok(info)) => {
                slice_item.actual.clone_from(&info.active_state);
                if let Some(cg) = &obs.cgroup_path {
                    slice_item.detail.push(format!("cgroup /{cg}"));
                }
                slice_item.detail.extend(obs.events.iter().cloned());
                if info.active_state == "active" && obs.exists {
                    slice_item.state = State::Compliant;
                } else {
                    slice_item.state = State::Drifted;
                    if mode == Mode::Enforce {
                        slice_item.action = Some(Action::StartUnit { unit: unit.clone() });
                    }
                }
            }
        }
        items.push(slice_item);

        for k in &wanted {
            let kind = k.kind();
            let mut item = Item::new(
                ItemKey::SliceKnob {
                    unit: unit.clone(),
                    knob: kind,
                },
                k.to_string(),
                mode,
            );
            item.source = knob_source(rule, kind);
            let kernel = obs.kernel.get(&kind).and_then(|t| kind.parse_kernel(t));
            item.actual = kernel.map(|v| v.to_string()).unwrap_or_default();
            if let Some(why) = refusals.get(&kind) {
                item.state = State::Refused;
                item.detail.push(why.clone());
                items.push(item);
                continue;
            }
            if let Some(w) = pids_warning(k, obs) {
                item.detail.push(w);
            }
            let property = info.and_then(|i| systemd_value(i, kind));
            if let Some(p) = &property {
                item.detail.push(format!("systemd says {p}"));
            }
            let kernel_right = kernel.is_some_and(|v| k.matches(&v));
            let property_right = property.is_some_and(|p| k.matches(&p));
            item.state = if kernel_right {
                State::Compliant
            } else if info.is_none() || !obs.exists {
                State::Drifted
            } else if property_right {
                item.detail.push(format!(
                    "contested: systemd says {} but the kernel has {}: someone wrote the cgroup file directly; holdfast corrects it through systemd",
                    property.map(|p| p.to_string()).unwrap_or_default(),
                    item.actual
                ));
                State::Contested
            } else {
                if file_right {
                    // Drop-ins (e.g. a foreign `set-property --runtime`)
                    // override holdfast's unit file.
                    let others: Vec<String> =
                        info.map(|i| i.drop_in_paths.clone()).unwrap_or_default();
                    if !others.is_empty() {
                        item.detail
                            .push(format!("overridden by {}", others.join(", ")));
                    }
                }
                State::Drifted
            };
            // With a right unit file, a running slice is corrected at once
            // through systemd; a wrong file is fixed by its rewrite and the
            // pass's reload — unless a runtime override (a `set-property
            // --runtime`, holdfast's own earlier correction included) would
            // still win over the rewritten file: then at once too, after
            // the reload.
            let runtime_override = info.is_some_and(|i| {
                i.drop_in_paths
                    .iter()
                    .any(|p| p.contains("/systemd/system.control/"))
            });
            if item.state != State::Compliant
                && mode == Mode::Enforce
                && (file_right || runtime_override)
                && info.is_some()
                && obs.exists
            {
                item.action = Some(Action::SetUnitProperties {
                    unit: unit.clone(),
                    assignments: k.systemd_properties(),
                });
            }
            items.push(item);
        }
    }
    items.extend(controller_items_systemd(policy, host, &controllers));
    items
}

/// Controllers on systemd hosts: the slices' accounting settings make
/// systemd enable them; holdfast verifies they appear in every
/// `cgroup.subtree_control` on the path to each slice.
fn controller_items_systemd(
    policy: &Policy,
    host: &CgroupHost,
    controllers: &[String],
) -> Vec<Item> {
    let Some(listed) = &policy.cgroup.controllers else {
        return Vec::new();
    };
    let mut items = Vec::new();
    for c in controllers.iter().filter(|c| listed.value.contains(c)) {
        let mut item = Item::new(
            ItemKey::Controller {
                name: c.clone(),
                at_root: false,
            },
            "enabled",
            policy.default_mode(),
        );
        item.source = Some(listed.source.clone());
        if accounting_directive(c).is_none() {
            item.state = State::Unsupported;
            item.detail.push(format!(
                "systemd enables {c} only through settings holdfast does not manage"
            ));
            items.push(item);
            continue;
        }
        let mut missing = Vec::new();
        let mut checked = false;
        for (name, obs) in &host.slices {
            if obs.ancestors.is_empty() {
                continue;
            }
            checked = true;
            if let Some(root) = obs.ancestors.first()
                && !root.controllers.contains(c)
            {
                item.state = State::Unsupported;
                item.detail.push(format!(
                    "the kernel offers no {c} controller (not in the root's cgroup.controllers)"
                ));
                break;
            }
            for a in &obs.ancestors {
                if !a.subtree_control.contains(c) {
                    missing.push(format!("/{} (on the path to {name}.slice)", a.path));
                }
            }
        }
        if item.state != State::Unsupported {
            if !checked {
                item.state = State::Drifted;
                item.detail.push("no managed slice has a cgroup yet".into());
            } else if missing.is_empty() {
                item.state = State::Compliant;
                item.actual = "enabled".into();
            } else {
                item.state = State::Drifted;
                item.actual = "missing".into();
                item.detail.push(format!(
                    "not in cgroup.subtree_control of {}",
                    missing.join(", ")
                ));
            }
        }
        items.push(item);
    }
    items
}

#[expect(
    clippy::too_many_lines,
    reason = "one straight walk over the controllers and each slice's knobs, as the report lists them"
)]
fn plan_cgroupfs(policy: &Policy, host: &CgroupHost) -> Vec<Item> {
    let controllers = needed_controllers(policy);
    let mut items = Vec::new();
    let subtree_dir = host.root.join(HOLDFAST_SUBTREE);
    let any_enforced = policy.default_mode() == Mode::Enforce
        || policy
            .cgroup
            .slices
            .values()
            .any(|r| policy.mode_of(r.mode.as_ref().map(|m| m.value)) == Mode::Enforce);
    let mode = if any_enforced {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    // The root and holdfast.slice as observed (the first slice's view of its
    // ancestors, or defaults when there are no slices yet).
    let ancestors: Vec<Ancestor> = host
        .slices
        .values()
        .find(|o| !o.ancestors.is_empty())
        .map(|o| o.ancestors.clone())
        .unwrap_or_default();
    let root = ancestors.first().cloned().unwrap_or_default();
    let ours = ancestors.get(1).cloned().unwrap_or_default();

    let mut subtree_item = Item::new(ItemKey::OwnCgroup { slice: None }, "exists", mode);
    subtree_item
        .detail
        .push("holdfast's own cgroup subtree (no systemd on this host)".into());
    if ours.exists {
        subtree_item.state = State::Compliant;
        subtree_item.actual = "exists".into();
    } else {
        subtree_item.state = State::Drifted;
        subtree_item.actual = "absent".into();
        if mode == Mode::Enforce {
            subtree_item.action = Some(Action::CreateCgroup {
                path: subtree_dir.clone(),
            });
        }
    }
    items.push(subtree_item);

    for c in &controllers {
        let mut item = Item::new(
            ItemKey::Controller {
                name: c.clone(),
                at_root: false,
            },
            "enabled",
            mode,
        );
        item.source = policy.cgroup.controllers.as_ref().map(|c| c.source.clone());
        if !root.controllers.contains(c) {
            item.state = State::Unsupported;
            item.detail.push(format!(
                "the kernel offers no {c} controller here (not in the root's cgroup.controllers)"
            ));
            items.push(item);
            continue;
        }
        let in_root = root.subtree_control.contains(c);
        let in_ours = ours.subtree_control.contains(c);
        if in_root && in_ours {
            item.state = State::Compliant;
            item.actual = "enabled".into();
            items.push(item);
            continue;
        }
        item.state = State::Drifted;
        item.actual = "missing".into();
        if ours.has_processes {
            item.state = State::Refused;
            item.detail.push(format!(
                "/{HOLDFAST_SUBTREE} has processes of its own: the no-internal-processes rule forbids giving its children {c} (EBUSY); move them into a child cgroup"
            ));
            items.push(item);
            continue;
        }
        if mode == Mode::Enforce {
            // Top-down: the root first (one controller per write), then
            // holdfast's subtree. Two items keep the order visible.
            if !in_root {
                let mut root_item = item.clone();
                root_item.key = ItemKey::Controller {
                    name: c.clone(),
                    at_root: true,
                };
                root_item.action = Some(Action::EnableController {
                    subtree_control: host.root.join("cgroup.subtree_control"),
                    controller: c.clone(),
                });
                items.push(root_item);
            }
            item.action = Some(Action::EnableController {
                subtree_control: subtree_dir.join("cgroup.subtree_control"),
                controller: c.clone(),
            });
        }
        items.push(item);
    }

    for rule in policy.cgroup.slices.values() {
        let mode = policy.mode_of(rule.mode.as_ref().map(|m| m.value));
        let empty = SliceObs::default();
        let obs = host.slices.get(&rule.name).unwrap_or(&empty);
        let dir = subtree_dir.join(&rule.name);
        let mut slice_item = Item::new(
            ItemKey::OwnCgroup {
                slice: Some(rule.name.clone()),
            },
            "exists",
            mode,
        );
        slice_item.source = Some(rule.source.clone());
        slice_item.detail.extend(obs.events.iter().cloned());
        if obs.exists {
            slice_item.state = State::Compliant;
            slice_item.actual = "exists".into();
        } else {
            slice_item.state = State::Drifted;
            slice_item.actual = "absent".into();
            if mode == Mode::Enforce {
                slice_item.action = Some(Action::CreateCgroup { path: dir.clone() });
            }
        }
        items.push(slice_item);
        for k in knobs(rule) {
            let kind = k.kind();
            let mut item = Item::new(
                ItemKey::OwnCgroupKnob {
                    slice: rule.name.clone(),
                    knob: kind,
                },
                k.to_string(),
                mode,
            );
            item.source = knob_source(rule, kind);
            let kernel = obs.kernel.get(&kind).and_then(|t| kind.parse_kernel(t));
            item.actual = kernel.map(|v| v.to_string()).unwrap_or_default();
            if let Some(why) = memory_refusal(&k, obs) {
                item.state = State::Refused;
                item.detail.push(why);
                items.push(item);
                continue;
            }
            if let Some(w) = pids_warning(&k, obs) {
                item.detail.push(w);
            }
            if kernel.is_some_and(|v| k.matches(&v)) {
                item.state = State::Compliant;
            } else {
                item.state = State::Drifted;
                if mode == Mode::Enforce {
                    item.action = Some(Action::WriteCgroupFile {
                        path: dir.join(kind.file()),
                        value: k.kernel_text(),
                    });
                }
            }
            items.push(item);
        }
    }
    items
}
