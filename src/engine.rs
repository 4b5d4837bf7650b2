//! One reconcile pass, the same for every area: observe, plan (pure), carry
//! out the plan's actions through their backends, re-observe only the areas
//! that acted, and merge what was planned, what was done and what is now
//! there by one rule. The CLI runs one pass; the daemon runs them in a loop.
//!
//! # Guarantees
//! - `check` and `plan` never write to the host.
//! - `apply` is idempotent: a second pass over a converged host writes
//!   nothing (it reads, finds every value compliant, and stops there).
//! - Every write is verified by reading it back: a file by its content, a
//!   sysctl, limit, unit or cgroup setting by observing its area again after
//!   the pass acted. An item is `corrected` only when that read shows the
//!   policy's value.
//! - Each area is observed at most twice per pass (before and after acting),
//!   and only once when nothing was done to it.
//! - systemd: at most one daemon-reload per pass, only when a unit file
//!   holdfast owns changed; a service is restarted only on explicit request.
//! - A held item (the daemon's backoff) keeps its planned action, unexecuted,
//!   and its drifted state.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::area::Observation;
use crate::exec::{self, Outcome, Run};
use crate::host::{HostRoot, IoError};
use crate::item::{Action, Item, ItemKey, State};
use crate::journal::store::Recorder;
use crate::policy::Policy;
use crate::sysctl::SysctlKey;

pub use crate::area::{Area, Context, Focus};
pub use crate::item::Hold;

/// The result of a pass.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The items of the pass's focus (every item, in a full pass).
    pub items: Vec<Item>,
    /// Problems reading files that are not items themselves (an unreadable
    /// sysctl.d file, say); reported, never fatal.
    pub warnings: Vec<String>,
    pub duration: std::time::Duration,
    /// What each corrected item was found to be before the pass acted (its
    /// `actual` as planned), for the log's `from=`.
    pub found: HashMap<ItemKey, String>,
}

/// What `apply` may do beyond correcting drift.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Restart services whose running processes still have old limits.
    /// Never done without this explicit request.
    pub restart_services: bool,
}

/// Observes the host and plans the changes apply would make. Writes nothing.
pub fn plan(host: &HostRoot, policy: &Policy) -> Pass {
    plan_in(&Context::for_host(host), policy)
}

/// One reconcile pass with the default options.
pub fn apply(host: &HostRoot, policy: &Policy) -> Pass {
    apply_in(&Context::for_host(host), policy, ApplyOptions::default())
}

/// [`plan`] with the caller's context (a test's systemd double, say).
pub fn plan_in(ctx: &Context<'_>, policy: &Policy) -> Pass {
    let started = Instant::now();
    let (observations, warnings) = observe_all(ctx, policy);
    let items = observations
        .iter()
        .flat_map(|o| o.plan(policy, Focus::All))
        .collect();
    Pass {
        items,
        warnings: warnings.iter().map(IoError::to_string).collect(),
        duration: started.elapsed(),
        found: HashMap::new(),
    }
}

/// A full pass over a host read afresh: what the CLI's `apply` runs.
pub fn apply_in(ctx: &Context<'_>, policy: &Policy, options: ApplyOptions) -> Pass {
    let mut observed = Vec::new();
    pass(ctx, policy, &mut observed, Focus::All, options, &|_| false)
}

/// The one pass, for every caller and every focus. `observed` holds what
/// the areas read of the host (the caller keeps it between passes: the
/// daemon does); the pass first reads what its focus concerns into it —
/// every area afresh (`All`), the areas with units (`AllUnits`), the named
/// units (`Units`), the named sysctl keys (`Keys`) — then plans the areas
/// in focus, carries out their actions, reads again what it acted on, and
/// merges. `observed` stays true: everything read or written is recorded
/// in it.
///
/// Items outside the focus are held (never acted on from remembered state)
/// and left out of the result; `hold` holds more (the daemon's backoff).
/// What a focused pass costs grows with its focus, not with the policy.
pub fn pass(
    ctx: &Context<'_>,
    policy: &Policy,
    observed: &mut Vec<Observation>,
    focus: Focus<'_>,
    options: ApplyOptions,
    hold: Hold<'_>,
) -> Pass {
    let started = Instant::now();
    let mut warnings = Vec::new();
    let refreshed: BTreeSet<SysctlKey>;
    let focus = match focus {
        Focus::All => {
            let (fresh, w) = observe_all(ctx, policy);
            *observed = fresh;
            warnings.extend(w);
            Focus::All
        }
        Focus::AllUnits => {
            for area in Area::ALL {
                if !area.in_focus(focus) || !area.has_settings(policy) {
                    continue;
                }
                let (fresh, w) = area.observe(ctx, policy);
                warnings.extend(w);
                ctx.beat();
                match observed.iter_mut().find(|o| o.area() == area) {
                    Some(slot) => *slot = fresh,
                    None => observed.push(fresh),
                }
            }
            // The order of a pass is the order of `Area::ALL`.
            observed.sort_by_key(Observation::area);
            Focus::AllUnits
        }
        Focus::Units(units) => {
            for obs in observed.iter_mut().filter(|o| o.area().in_focus(focus)) {
                warnings.extend(obs.observe_units(ctx, policy, units));
            }
            focus
        }
        Focus::Keys(keys) => {
            refreshed = observed
                .iter_mut()
                .filter(|o| o.area().in_focus(focus))
                .flat_map(|o| o.observe_keys(ctx, policy, keys))
                .collect();
            Focus::Keys(&refreshed)
        }
    };
    if focus.keys().is_some_and(BTreeSet::is_empty) {
        return Pass {
            items: Vec::new(),
            warnings: Vec::new(),
            duration: started.elapsed(),
            found: HashMap::new(),
        };
    }
    let held = |item: &Item| !focus.concerns(item) || hold(item);
    let (mut items, found, w) = run(ctx, policy, options, &held, observed, focus);
    warnings.extend(w);
    items.retain(|i| focus.concerns(i));
    Pass {
        items,
        warnings: warnings.iter().map(IoError::to_string).collect(),
        duration: started.elapsed(),
        found,
    }
}

fn observe_all(ctx: &Context<'_>, policy: &Policy) -> (Vec<Observation>, Vec<IoError>) {
    let mut warnings = Vec::new();
    let mut observations = Vec::new();
    for area in Area::ALL {
        if area.has_settings(policy) {
            let (o, w) = area.observe(ctx, policy);
            warnings.extend(w);
            observations.push(o);
            ctx.beat();
        }
    }
    (observations, warnings)
}

/// Everything the pass did, keyed by item.
#[derive(Default)]
struct Record {
    outcomes: HashMap<ItemKey, Outcome>,
    /// Areas whose host state the pass changed (or may have: a reload).
    acted: BTreeSet<Area>,
    /// Units restarted on request.
    restarted: Vec<String>,
    /// Notes for every item of an area (a failed daemon-reload).
    area_notes: Vec<(Area, String)>,
    /// Notes for every item of a unit (a failed restart).
    unit_notes: Vec<(String, String)>,
    /// What each corrected item was found to be before the pass.
    found: HashMap<ItemKey, String>,
}

/// The stages of a pass, in order. Actions of one stage run before any of
/// the next: the areas' own executors first (kernel values), then files,
/// then one daemon-reload, then what systemd or cgroupfs do at runtime,
/// then restarts; last, each area acted on is read again and merged.
fn run(
    ctx: &Context<'_>,
    policy: &Policy,
    options: ApplyOptions,
    hold: Hold<'_>,
    observations: &mut [Observation],
    focus: Focus<'_>,
) -> (Vec<Item>, HashMap<ItemKey, String>, Vec<IoError>) {
    let mut warnings = Vec::new();
    let active: Vec<bool> = observations
        .iter()
        .map(|o| o.area().in_focus(focus))
        .collect();
    let planned: Vec<Vec<Item>> = observations
        .iter()
        .zip(&active)
        .map(|(o, &on)| {
            if on {
                o.plan(policy, focus)
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut record = Record::default();
    // Every change's original goes to the journal before the change.
    let mut originals = Recorder::new(ctx.host);
    let mut step = Run {
        host: ctx.host,
        policy,
        hold,
        originals: &mut originals,
    };

    // 1. The areas with an executor of their own carry out their actions
    //    (the sysctl area: its kernel values in an order that converges,
    //    read back after every write, then its copies of vendor files).
    //    Such an area is merged at once, and its after-merge step run
    //    (holdfast's sysctl.d file, planned from the verified values):
    //    nothing later in the pass changes what it manages, and boot should
    //    agree with the kernel as soon as possible, not after a slow reload.
    let mut merged: Vec<Option<Vec<Item>>> = vec![None; observations.len()];
    for (i, obs) in observations.iter_mut().enumerate() {
        if !active[i] {
            continue;
        }
        let Some(executed) = obs.execute_own(&mut step, &planned[i]) else {
            continue;
        };
        if executed.acted {
            record.acted.insert(obs.area());
        }
        record.outcomes.extend(executed.outcomes);
        warnings.extend(executed.warnings);
        merged[i] = Some(settle_area(
            ctx,
            &mut step,
            obs,
            &planned[i],
            focus,
            &mut record,
            &mut warnings,
        ));
        ctx.beat();
    }

    // Every planned item the engine's stages carry out, with the area that
    // planned it: an action's outcome is merged by that area (a slice's
    // unit file is the cgroup area's, a drop-in the services area's).
    let by_area: Vec<(Area, &Item)> = observations
        .iter()
        .zip(&planned)
        .zip(&merged)
        .filter(|(_, done)| done.is_none())
        .flat_map(|((o, items), _)| items.iter().map(move |i| (o.area(), i)))
        .filter(|(_, i)| !hold(i))
        .collect();

    // 2. Files, then the temp files a killed writer left.
    let unit_files_changed = write_files(ctx, &mut step, &by_area, &mut record);
    sweep_temps(ctx, &planned, hold, &record, &mut warnings);
    ctx.beat();

    // 3. One daemon-reload for the whole pass, only if a unit file changed.
    if unit_files_changed && let Some(client) = ctx.systemd {
        let with_units = Area::ALL.into_iter().filter(|a| a.has_units());
        record.acted.extend(with_units.clone());
        if let Err(e) = client.daemon_reload() {
            for area in with_units {
                record
                    .area_notes
                    .push((area, format!("daemon-reload failed: {e}")));
            }
        }
    }

    // 4. Runtime actions: start slices, SetUnitProperties(runtime), or,
    //    without systemd, holdfast's own cgroups top-down.
    ctx.beat();
    run_runtime_actions(ctx, &mut step, observations, &by_area, &mut record);
    ctx.beat();

    // 5. Restarts, only on request: services whose processes run with old
    //    settings, or whose drop-in this pass rewrote.
    if options.restart_services
        && let Some(client) = ctx.systemd
    {
        for unit in units_to_restart(&planned, &record, hold) {
            ctx.beat();
            match client.restart(&unit) {
                Ok(()) => {
                    record
                        .acted
                        .extend(Area::ALL.into_iter().filter(|a| a.has_units()));
                    record.restarted.push(unit);
                }
                Err(e) => record
                    .unit_notes
                    .push((unit, format!("restart failed: {e}"))),
            }
        }
    }

    // 6. Observe again what was acted on, and merge.
    let mut items = Vec::new();
    for (i, obs) in observations.iter_mut().enumerate() {
        if let Some(done) = merged[i].take() {
            items.extend(done);
            continue;
        }
        if !active[i] {
            continue;
        }
        items.extend(settle_area(
            ctx,
            &mut step,
            obs,
            &planned[i],
            focus,
            &mut record,
            &mut warnings,
        ));
        ctx.beat();
    }
    (items, record.found, warnings)
}

/// Stage 2: the file actions, each journalled first. Says whether a unit
/// file changed (then systemd must reload).
fn write_files(
    ctx: &Context<'_>,
    step: &mut Run<'_, '_>,
    by_area: &[(Area, &Item)],
    record: &mut Record,
) -> bool {
    let mut unit_files_changed = false;
    let (areas, files): (Vec<Area>, Vec<(&Item, &Action)>) = by_area
        .iter()
        .filter_map(|&(area, i)| match &i.action {
            Some(a) if stage_of(a) == Stage::Files => Some((area, (i, a))),
            Some(_) | None => None,
        })
        .unzip();
    let journaled = exec::journal_before(step.originals, &files, |_, _| None);
    for (((item, action), journaled), area) in files.into_iter().zip(journaled).zip(areas) {
        let outcome = match journaled {
            Ok(()) => exec::file_action(ctx.host, action),
            Err(why) => Outcome::Failed(why),
        };
        record.acted.insert(area);
        if item.kind().needs_daemon_reload() && outcome == Outcome::Done {
            unit_files_changed = true;
        }
        record.outcomes.insert(item.key.clone(), outcome);
    }
    unit_files_changed
}

/// Temp files a killed writer left beside holdfast's files go too where
/// this pass did not write or remove the file (writing or removing it
/// already removed them).
fn sweep_temps(
    ctx: &Context<'_>,
    planned: &[Vec<Item>],
    hold: Hold<'_>,
    record: &Record,
    warnings: &mut Vec<IoError>,
) {
    let own_files = planned
        .iter()
        .flatten()
        .filter(|i| !hold(i))
        .filter_map(|i| Some((i, i.key.own_file()?)));
    for (item, path) in own_files {
        if matches!(record.outcomes.get(&item.key), Some(Outcome::Done)) {
            continue;
        }
        if let Err(e) = ctx.host.remove_stale_temps_of(path) {
            warnings.push(e);
        }
    }
}

/// Stage 4: what systemd or cgroupfs do at runtime, each journalled first
/// (an area may know the original without reading it).
fn run_runtime_actions(
    ctx: &Context<'_>,
    step: &mut Run<'_, '_>,
    observations: &[Observation],
    by_area: &[(Area, &Item)],
    record: &mut Record,
) {
    let (areas, runtime): (Vec<Area>, Vec<(&Item, &Action)>) = by_area
        .iter()
        .filter_map(|&(area, i)| i.action.as_ref().map(|a| (area, (i, a))))
        .filter(|(_, (_, a))| is_runtime_action(a))
        .unzip();
    let journaled = exec::journal_before(step.originals, &runtime, |key, action| {
        observations
            .iter()
            .find_map(|o| o.known_original(key, action))
    });
    for (((item, action), journaled), area) in runtime.into_iter().zip(journaled).zip(areas) {
        let result = match journaled {
            Ok(()) => execute_runtime_action(ctx, action),
            Err(why) => Some(Err(why)),
        };
        if let Some(result) = result {
            record.acted.insert(area);
            let outcome = match result {
                Ok(()) => Outcome::Done,
                Err(why) => Outcome::Failed(why),
            };
            record.outcomes.insert(item.key.clone(), outcome);
        }
    }
}

/// The end of an area's part of the pass: read again when the pass acted
/// on it, merge what was planned, done and now read, then the area's
/// after-merge step.
fn settle_area(
    ctx: &Context<'_>,
    step: &mut Run<'_, '_>,
    obs: &mut Observation,
    planned: &[Item],
    focus: Focus<'_>,
    record: &mut Record,
    warnings: &mut Vec<IoError>,
) -> Vec<Item> {
    let area = obs.area();
    let mut merged = if record.acted.contains(&area) {
        warnings.extend(obs.refresh(ctx, step.policy, focus));
        merge(
            area,
            planned,
            obs.plan(step.policy, focus),
            record,
            step.hold,
        )
    } else {
        planned.to_vec()
    };
    obs.after_merge(step, planned, &mut merged, &record.outcomes, focus);
    merged
}

/// The units `--restart-services` restarts: those with an item that is
/// `restart-required`, or drifted with the unit's drop-in rewritten in this
/// pass (its new settings apply only at the next start).
fn units_to_restart(planned: &[Vec<Item>], record: &Record, hold: Hold<'_>) -> Vec<String> {
    let rewritten: BTreeSet<&str> = planned
        .iter()
        .flatten()
        .filter(|i| i.kind().needs_daemon_reload())
        .filter(|i| matches!(record.outcomes.get(&i.key), Some(Outcome::Done)))
        .filter_map(|i| i.key.unit())
        .collect();
    let mut units: BTreeSet<String> = BTreeSet::new();
    for item in planned.iter().flatten() {
        if !item.kind().applies_at_start() || hold(item) {
            continue;
        }
        let Some(unit) = item.key.unit() else {
            continue;
        };
        let stale = item.state == State::RestartRequired
            || (item.state == State::Drifted && rewritten.contains(unit));
        if stale {
            units.insert(unit.to_string());
        }
    }
    units.into_iter().collect()
}

/// The one merge rule. `after` is the area's plan over what it reads now;
/// `before` is what the pass planned from its first reading.
/// - A held item stays as planned now (drifted, its action unexecuted).
/// - An action that failed makes its item `failed`, with the reason, unless
///   the host now has the policy's value anyway.
/// - A sysctl written but read back different is `failed` with both values.
/// - An item whose action ran keeps the plan's explanations (the safety
///   figures that allowed it) before what the new reading adds.
/// - An item compliant now that was not before, or whose action ran, or
///   whose unit was restarted, is `corrected`; what it was found to be
///   before, when that differs, is recorded for the log.
fn merge(
    area: Area,
    before: &[Item],
    after: Vec<Item>,
    record: &mut Record,
    hold: Hold<'_>,
) -> Vec<Item> {
    let prev: HashMap<&ItemKey, &Item> = before.iter().map(|i| (&i.key, i)).collect();
    let mut found = Vec::new();
    let mut out = after;
    for item in &mut out {
        for (a, note) in &record.area_notes {
            if *a == area {
                item.detail.push(note.clone());
            }
        }
        let unit = item.key.unit().map(str::to_string);
        let restarted = unit.as_ref().is_some_and(|u| record.restarted.contains(u))
            && item.kind().applies_at_start();
        if hold(item) {
            continue;
        }
        let was = prev.get(&item.key).copied();
        let outcome = record.outcomes.get(&item.key);
        // What the plan said when it decided to act (a safety check's
        // figures, say) still explains the action.
        if let (Some(_), Some(was)) = (outcome, was) {
            let mut detail: Vec<String> = was
                .detail
                .iter()
                .filter(|d| !item.detail.contains(d))
                .cloned()
                .collect();
            detail.append(&mut item.detail);
            item.detail = detail;
        }
        match outcome {
            Some(Outcome::Failed(why)) => {
                item.detail.push(why.clone());
                if item.state != State::Compliant {
                    item.state = State::Failed;
                    item.action = None;
                }
            }
            Some(Outcome::Done) => {
                if item.state == State::Compliant {
                    item.state = State::Corrected;
                } else if let Some(Action::WriteSysctl { value, .. }) =
                    was.and_then(|w| w.action.as_ref())
                {
                    let now = if item.actual.is_empty() {
                        "nothing".to_string()
                    } else {
                        item.actual.clone()
                    };
                    item.detail
                        .push(format!("wrote {value}, but the kernel reads back {now}"));
                    item.state = State::Failed;
                    item.action = None;
                }
            }
            None => {
                if item.state == State::Compliant
                    && (restarted || was.is_some_and(|w| w.state != State::Compliant))
                {
                    item.state = State::Corrected;
                }
            }
        }
        if item.state == State::Corrected
            && let Some(was) = was
            && !was.actual.is_empty()
            && was.actual != item.actual
        {
            found.push((item.key.clone(), was.actual.clone()));
        }
        if restarted {
            item.detail
                .push("restarted by holdfast (--restart-services)".into());
        }
        for (u, note) in &record.unit_notes {
            if unit.as_ref() == Some(u) {
                item.detail.push(note.clone());
                if item.state != State::Compliant {
                    item.state = State::Failed;
                }
            }
        }
    }
    record.found.extend(found);
    out
}

/// Which of the engine's stages carries an action out. One exhaustive
/// match: a new action must say where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The sysctl area's own executor (its converge loop).
    Sysctls,
    /// The file stage: holdfast's own files, journalled, atomically.
    Files,
    /// Stage 4: systemd, cgroupfs and the kernel's modules.
    Runtime,
}

fn stage_of(action: &Action) -> Stage {
    match action {
        Action::WriteSysctl { .. } => Stage::Sysctls,
        Action::WriteFile { .. } | Action::RemoveFile { .. } => Stage::Files,
        Action::SetUnitProperties { .. }
        | Action::StartUnit { .. }
        | Action::CreateCgroup { .. }
        | Action::EnableController { .. }
        | Action::WriteCgroupFile { .. }
        | Action::UnloadModule { .. } => Stage::Runtime,
    }
}

/// Whether stage 4 carries this action out (systemd, cgroupfs, modules).
fn is_runtime_action(action: &Action) -> bool {
    stage_of(action) == Stage::Runtime
}

/// Carries out one runtime action (systemd or cgroupfs); `None` when the
/// action is not one of those.
fn execute_runtime_action(ctx: &Context<'_>, action: &Action) -> Option<Result<(), String>> {
    let client = || {
        ctx.systemd
            .ok_or_else(|| "systemd not asked: the host root is not /".to_string())
    };
    let result = match action {
        Action::StartUnit { unit } => {
            client().and_then(|c| c.start(unit).map_err(|e| e.to_string()))
        }
        Action::SetUnitProperties { unit, assignments } => client().and_then(|c| {
            c.set_properties_runtime(unit, assignments)
                .map_err(|e| e.to_string())
        }),
        Action::CreateCgroup { path } => ctx
            .host
            .create_kernel_dir(path)
            .map_err(|e| exec::explain_cgroup_error(&e)),
        Action::EnableController {
            subtree_control,
            controller,
        } => ctx
            .host
            .write_kernel_file(subtree_control, &format!("+{controller}"))
            .map_err(|e| exec::explain_cgroup_error(&e)),
        Action::WriteCgroupFile { path, value } => ctx
            .host
            .write_kernel_file(path, value)
            .map_err(|e| exec::explain_cgroup_error(&e)),
        Action::UnloadModule { name } => ctx.host.unload_module(name),
        Action::WriteSysctl { .. } | Action::WriteFile { .. } | Action::RemoveFile { .. } => {
            return None;
        }
    };
    Some(result)
}
