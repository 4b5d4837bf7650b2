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

use crate::area::{Area, Focus, Observation};
use crate::host::{self, HostRoot, IoError};
use crate::item::{Action, Item, ItemKey, Kind, State};
use crate::journal as journal_model;
use crate::journal::store::{self as journal, Change, Recorder};
use crate::policy::{Mode, Policy};
use crate::sysctl::plan::{self as sysctl_plan, PersistPlan, SysctlHost};
use crate::sysctl::{Observed, SysctlKey};
use crate::sysctl::{converge as sysctl_converge, observe as sysctl_observe};

pub use crate::area::Context;

/// The result of a pass.
#[derive(Debug, Clone)]
pub struct Pass {
    pub items: Vec<Item>,
    /// Problems reading files that are not items themselves (an unreadable
    /// sysctl.d file, say); reported, never fatal.
    pub warnings: Vec<String>,
    pub duration: std::time::Duration,
    /// What the pass last read of the sysctls, for a caller that keeps it
    /// (the daemon re-reads only the keys an event names).
    pub sysctl: Option<SysctlHost>,
    /// What the pass last read of the other areas, for a caller that keeps
    /// it (the daemon re-reads only the units an event names).
    pub observed: Vec<Observation>,
}

/// What `apply` may do beyond correcting drift.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Restart services whose running processes still have old limits.
    /// Never done without this explicit request.
    pub restart_services: bool,
}

/// Which items must not be changed in this pass: the daemon holds items that
/// are in backoff (contested, or failing) this way. Every area honours it: a
/// held item keeps its planned action, unexecuted, and its drifted state.
pub type Hold<'a> = &'a dyn Fn(&Item) -> bool;

/// Observes the host and plans the changes apply would make. Writes nothing.
pub fn plan(host: &HostRoot, policy: &Policy) -> Pass {
    plan_in(&Context::for_host(host), policy)
}

/// One reconcile pass with the default options.
pub fn apply(host: &HostRoot, policy: &Policy) -> Pass {
    apply_in(&Context::for_host(host), policy, ApplyOptions::default())
}

pub fn plan_in(ctx: &Context<'_>, policy: &Policy) -> Pass {
    let started = Instant::now();
    let (observations, warnings) = observe_all(ctx, policy);
    let items = observations
        .iter()
        .flat_map(|o| o.plan(policy, Focus::All))
        .collect();
    finish(items, &warnings, started, observations)
}

pub fn apply_in(ctx: &Context<'_>, policy: &Policy, options: ApplyOptions) -> Pass {
    apply_in_holding(ctx, policy, options, &|_| false)
}

/// [`apply_in`], except that the items `hold` selects are left as they are.
pub fn apply_in_holding(
    ctx: &Context<'_>,
    policy: &Policy,
    options: ApplyOptions,
    hold: Hold<'_>,
) -> Pass {
    let started = Instant::now();
    let (observations, mut warnings) = observe_all(ctx, policy);
    let (items, observations, w) = run(ctx, policy, options, hold, observations, Focus::All);
    warnings.extend(w);
    finish(items, &warnings, started, observations)
}

/// A unit pass: the systemd areas (services and slices) over observations
/// the caller keeps (`observed`, from its last full pass), reading again
/// only what concerns `units` — before acting, and after if the pass acted
/// — so that an announcement about one unit costs that unit's reads. With
/// `units` `None` (systemd reloaded: any unit may have changed), the
/// systemd areas are observed afresh, and the other areas not at all.
///
/// Items of other units are held (never acted on from remembered state) and
/// left out of the result, which holds only the named units' items (every
/// item of the systemd areas when `units` is `None`). `observed` is updated
/// with everything read.
pub fn apply_units_observed(
    ctx: &Context<'_>,
    policy: &Policy,
    observed: &mut Vec<Observation>,
    units: Option<&BTreeSet<String>>,
    hold: Hold<'_>,
) -> (Vec<Item>, Vec<String>) {
    const SYSTEMD_AREAS: [Area; 2] = [Area::Services, Area::Cgroup];
    let mut warnings = Vec::new();
    let mut mine: Vec<Observation> = Vec::new();
    let mut others: Vec<Observation> = Vec::new();
    for obs in std::mem::take(observed) {
        if SYSTEMD_AREAS.contains(&obs.area()) {
            mine.push(obs);
        } else {
            others.push(obs);
        }
    }
    let concerned = |item: &Item| match units {
        None => true,
        Some(units) => item.key.unit().is_some_and(|u| units.contains(u)),
    };
    match units {
        None => {
            mine.clear();
            for area in SYSTEMD_AREAS {
                if area.has_settings(policy) {
                    let (o, w) = area.observe(ctx, policy);
                    warnings.extend(w);
                    mine.push(o);
                }
            }
        }
        Some(units) => {
            for obs in mine.iter_mut() {
                warnings.extend(obs.observe_units(ctx, policy, units));
            }
        }
    }
    let hold_others = |item: &Item| !concerned(item) || hold(item);
    let focus = units.map_or(Focus::All, Focus::Units);
    let (items, mine, w) = run(
        ctx,
        policy,
        ApplyOptions::default(),
        &hold_others,
        mine,
        focus,
    );
    warnings.extend(w);
    others.extend(mine);
    *observed = others;
    let items = items.into_iter().filter(|i| concerned(i)).collect();
    (items, warnings.iter().map(IoError::to_string).collect())
}

/// The sysctl area of a pass over host state the caller has already read:
/// plan, write the keys (except held ones), re-read what was written, then
/// plan and write the persisted file from the verified values. `observed`
/// is updated with every read and write, so the caller's copy stays true.
/// The daemon passes its cache, refreshed only for the keys an event
/// concerns, so that a change to one key costs one read and one write.
///
/// A held key keeps its planned write (unexecuted), so the persisted file
/// still holds the policy's value for it: backing off at runtime does not
/// change what boot applies.
///
/// Only `keys` (and the overcommit keys, judged together) are planned and
/// returned, with the persisted file: the other keys' lines stay as the
/// last pass planned them (`SysctlHost::persist_plan`), so the pass
/// costs what its keys cost, not what the policy holds.
pub fn apply_sysctls_observed(
    host: &HostRoot,
    policy: &Policy,
    observed: &mut SysctlHost,
    keys: &BTreeSet<SysctlKey>,
    hold: Hold<'_>,
) -> Vec<Item> {
    let ctx = Context {
        host,
        systemd: None,
    };
    let obs = vec![Observation::Sysctl(std::mem::take(observed))];
    let (items, mut observations, _) = run(
        &ctx,
        policy,
        ApplyOptions::default(),
        hold,
        obs,
        Focus::Keys(keys),
    );
    if let Some(Observation::Sysctl(h)) = observations.pop() {
        *observed = h;
    }
    items
}

fn observe_all(ctx: &Context<'_>, policy: &Policy) -> (Vec<Observation>, Vec<IoError>) {
    let mut warnings = Vec::new();
    let mut observations = Vec::new();
    for area in Area::ALL {
        if area.has_settings(policy) {
            let (o, w) = area.observe(ctx, policy);
            warnings.extend(w);
            observations.push(o);
        }
    }
    (observations, warnings)
}

fn finish(
    items: Vec<Item>,
    warnings: &[IoError],
    started: Instant,
    observations: Vec<Observation>,
) -> Pass {
    let mut sysctl = None;
    let mut observed = Vec::new();
    for o in observations {
        match o {
            Observation::Sysctl(h) => sysctl = Some(h),
            other => observed.push(other),
        }
    }
    Pass {
        items,
        warnings: warnings.iter().map(IoError::to_string).collect(),
        duration: started.elapsed(),
        sysctl,
        observed,
    }
}

/// What became of one executed action.
#[derive(Debug, Clone)]
enum Outcome {
    /// Done, and (for files) read back with the content written.
    Done,
    /// Not done, or done but not as asked; the explanation says which.
    Failed(String),
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
}

/// The stages of a pass, in order. Actions of one stage run before any of
/// the next: kernel values first, then files, then one daemon-reload, then
/// what systemd or cgroupfs do at runtime, then restarts.
fn run(
    ctx: &Context<'_>,
    policy: &Policy,
    options: ApplyOptions,
    hold: Hold<'_>,
    mut observations: Vec<Observation>,
    focus: Focus<'_>,
) -> (Vec<Item>, Vec<Observation>, Vec<IoError>) {
    let mut warnings = Vec::new();
    let planned: Vec<Vec<Item>> = observations.iter().map(|o| o.plan(policy, focus)).collect();
    let mut record = Record::default();
    // Every change's original goes to the journal before the change.
    let mut originals = Recorder::new(ctx.host);

    // 1. Sysctls: written in an order that converges (the overcommit limit
    //    before the mode, keys that reset others first), read back only
    //    after every write of the pass, and written again when another
    //    write disturbed them (`sysctl::converge`).
    //    Then, at once, their merge and holdfast's sysctl.d file, planned
    //    from the verified values so boot gets what the kernel accepted:
    //    nothing later in the pass changes a sysctl, and boot should agree
    //    with the kernel as soon as possible (not after a slow reload).
    let mut done: Vec<Option<Vec<Item>>> = vec![None; observations.len()];
    for (i, obs) in observations.iter_mut().enumerate() {
        let Observation::Sysctl(h) = obs else {
            continue;
        };
        let sysctl_items = planned[i].iter().filter(|i| !hold(i));
        settle_sysctls(
            ctx.host,
            policy,
            sysctl_items,
            h,
            &mut record,
            &mut originals,
        );
        // holdfast's copies of vendor files change what boot applies, so
        // the sysctl.d files are read again before the merge.
        if write_copies(ctx.host, &planned[i], hold, &mut record, &mut originals) {
            warnings.extend(sysctl_observe::reread_conf(ctx.host, h));
        }
        let mut merged = if record.acted.contains(&Area::Sysctl) {
            let after = sysctl_plan::plan_focused(policy, h, focus.keys());
            let mut merged = merge(Area::Sysctl, &planned[i], after, &record, hold);
            merged.extend(removed_copies(&planned[i], &merged, &record));
            merged
        } else {
            planned[i].clone()
        };
        persist(
            ctx.host,
            policy,
            h,
            &mut merged,
            focus,
            hold,
            &mut originals,
        );
        done[i] = Some(merged);
    }

    // Every planned item with the area that planned it: an action's
    // outcome is merged by that area (a slice's unit file is the cgroup
    // area's, a drop-in the services area's).
    let by_area: Vec<(Area, &Item)> = observations
        .iter()
        .zip(&planned)
        .flat_map(|(o, items)| items.iter().map(move |i| (o.area(), i)))
        .filter(|(_, i)| !hold(i))
        .collect();

    // 2. Files (holdfast's sysctl.d files were written with its sysctls).
    let mut unit_files_changed = false;
    let (areas, files): (Vec<Area>, Vec<(&Item, &Action)>) = by_area
        .iter()
        .filter(|(area, _)| *area != Area::Sysctl)
        .filter_map(|&(area, i)| match &i.action {
            Some(a @ (Action::WriteFile { .. } | Action::RemoveFile { .. })) => {
                Some((area, (i, a)))
            }
            _ => None,
        })
        .unzip();
    let journaled = journal_before(&mut originals, &files, |_, _| None);
    for (((item, action), journaled), area) in files.into_iter().zip(journaled).zip(areas) {
        let outcome = match journaled {
            Ok(()) => execute_file_action(ctx.host, action),
            Err(why) => Outcome::Failed(why),
        };
        record.acted.insert(area);
        if item.kind() == Kind::UnitFile && matches!(outcome, Outcome::Done) {
            unit_files_changed = true;
        }
        record.outcomes.insert(item.key.clone(), outcome);
    }

    // Temp files a killed writer left beside holdfast's files go too where
    // this pass did not write or remove the file (writing or removing it
    // already removed them).
    for (_, item) in &by_area {
        let Some(path) = item.key.own_file() else {
            continue;
        };
        if matches!(record.outcomes.get(&item.key), Some(Outcome::Done)) {
            continue;
        }
        if let Err(e) = ctx.host.remove_stale_temps_of(path) {
            warnings.push(e);
        }
    }

    // 3. One daemon-reload for the whole pass, only if a unit file changed.
    if unit_files_changed && let Some(client) = ctx.systemd {
        record.acted.extend([Area::Services, Area::Cgroup]);
        if let Err(e) = client.daemon_reload() {
            for area in [Area::Services, Area::Cgroup] {
                record
                    .area_notes
                    .push((area, format!("daemon-reload failed: {e}")));
            }
        }
    }

    // 4. Runtime actions: start slices, SetUnitProperties(runtime), or,
    //    without systemd, holdfast's own cgroups top-down.
    let (areas, runtime): (Vec<Area>, Vec<(&Item, &Action)>) = by_area
        .iter()
        .filter_map(|&(area, i)| i.action.as_ref().map(|a| (area, (i, a))))
        .filter(|(_, (_, a))| is_runtime_action(a))
        .unzip();
    let cgroup = observations.iter().find_map(|o| match o {
        Observation::Cgroup(h) => Some(h),
        _ => None,
    });
    let journaled = journal_before(&mut originals, &runtime, |key, action| {
        match (key, action, cgroup) {
            (ItemKey::SliceKnob { knob, .. }, Action::SetUnitProperties { unit, .. }, Some(h)) => {
                Some(journal::slice_knob_original(h, unit, *knob))
            }
            _ => None,
        }
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

    // 5. Restarts, only on request: services whose processes run with old
    //    settings, or whose drop-in this pass rewrote.
    if options.restart_services
        && let Some(client) = ctx.systemd
    {
        for unit in units_to_restart(&planned, &record, hold) {
            match client.restart(&unit) {
                Ok(()) => {
                    record.acted.insert(Area::Services);
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
    for ((obs, before), finished) in observations.iter_mut().zip(planned).zip(done) {
        if let Some(merged) = finished {
            items.extend(merged);
            continue;
        }
        let merged = if record.acted.contains(&obs.area()) {
            warnings.extend(obs.refresh(ctx, policy, focus));
            merge(obs.area(), &before, obs.plan(policy, focus), &record, hold)
        } else {
            before
        };
        items.extend(merged);
    }
    (items, observations, warnings)
}

/// The journal hook of a stage: records the originals of the stage's
/// changes (those not journaled yet) in one durable write, before any of
/// them is made. `known` supplies an original the pass already read.
fn journal_before(
    originals: &mut Recorder<'_>,
    changes: &[(&Item, &Action)],
    known: impl Fn(&ItemKey, &Action) -> Option<journal_model::Original>,
) -> Vec<Result<(), String>> {
    if changes.is_empty() {
        return Vec::new();
    }
    let changes: Vec<Change<'_>> = changes
        .iter()
        .map(|(item, action)| Change {
            key: &item.key,
            action,
            known: known(&item.key, action),
        })
        .collect();
    originals.before(&changes)
}

/// Runs the pass's sysctl writes through [`sysctl_converge::settle`]: the
/// planned writes, plus every enforced key that is compliant (read again
/// when a write may have disturbed it). What it reads is recorded in the
/// area's observation, so re-planning needs no further read.
fn settle_sysctls<'a>(
    host: &HostRoot,
    policy: &Policy,
    items: impl Iterator<Item = &'a Item>,
    observed: &mut SysctlHost,
    record: &mut Record,
    originals: &mut Recorder<'_>,
) {
    let mut targets = Vec::new();
    for item in items {
        let Some(key) = item.key.sysctl() else {
            continue;
        };
        let write = match &item.action {
            Some(Action::WriteSysctl { value, .. }) => Some(value.clone()),
            None if item.state == State::Compliant && item.mode == Mode::Enforce => None,
            _ => continue,
        };
        let Some(rule) = policy.sysctls.get(key) else {
            continue;
        };
        targets.push(sysctl_converge::Target {
            key: key.clone(),
            expect: rule.expect.clone(),
            write,
        });
    }
    if targets.iter().all(|t| t.write.is_none()) {
        return;
    }
    record.acted.insert(Area::Sysctl);
    // What each key was before the pass: its original, journaled right
    // before its first write (a key another write disturbed is rewritten
    // with no write planned, so its original is taken from here too).
    let before: HashMap<SysctlKey, Observed> = targets
        .iter()
        .filter_map(|t| Some((t.key.clone(), observed.values.get(&t.key)?.clone())))
        .collect();
    // The planned writes' originals in one journal replace.
    let planned: Vec<(ItemKey, Action)> = targets
        .iter()
        .filter_map(|t| {
            let value = t.write.clone()?;
            let key = t.key.clone();
            Some((
                ItemKey::Sysctl(key.clone()),
                Action::WriteSysctl { key, value },
            ))
        })
        .collect();
    let changes: Vec<Change<'_>> = planned
        .iter()
        .map(|(key, action)| Change {
            key,
            action,
            known: key
                .sysctl()
                .and_then(|k| before.get(k))
                .map(journal::sysctl_original),
        })
        .collect();
    let mut refused: HashMap<SysctlKey, String> = HashMap::new();
    for ((key, _), result) in planned.iter().zip(originals.before(&changes)) {
        if let (Some(k), Err(why)) = (key.sysctl(), result) {
            refused.insert(k.clone(), why);
        }
    }
    let mut seen = Vec::new();
    let outcomes = sysctl_converge::settle(
        &targets,
        &mut |key, value| {
            if let Some(why) = refused.get(key) {
                return Err(why.clone());
            }
            originals.before_one(Change {
                key: &ItemKey::Sysctl(key.clone()),
                action: &Action::WriteSysctl {
                    key: key.clone(),
                    value: value.clone(),
                },
                known: before.get(key).map(journal::sysctl_original),
            })?;
            sysctl_observe::write_key(host, key, value).map_err(|e| explain_write_error(&e))
        },
        &mut |key| {
            let now = sysctl_observe::read_key(host, key);
            seen.push((key.clone(), now.clone()));
            now
        },
    );
    observed.values.extend(seen);
    for (target, outcome) in targets.iter().zip(outcomes) {
        let key = ItemKey::Sysctl(target.key.clone());
        let outcome = match outcome {
            sysctl_converge::Outcome::Unchanged => continue,
            // Compliant when read after every write: the merge calls it
            // corrected; still wrong: the merge says what was read back.
            sysctl_converge::Outcome::Corrected { .. }
            | sysctl_converge::Outcome::NotHeld { wrote: Some(_), .. } => Outcome::Done,
            sysctl_converge::Outcome::NotHeld {
                wrote: None, now, ..
            } => Outcome::Failed(format!(
                "another write of this pass changed it ({now:?}), and the pass ran out of rounds before writing it again"
            )),
            sysctl_converge::Outcome::WriteFailed(why) => Outcome::Failed(why),
        };
        record.outcomes.insert(key, outcome);
    }
}

/// Writes or removes holdfast's copies of vendor sysctl.d files
/// (`sysctl_conflicts: override`) as file actions: each is refused if a
/// file holdfast did not write has taken the name since the pass read it,
/// journaled before it is made (the original of a new copy is its absence),
/// and read back after the write. Returns whether anything was attempted.
fn write_copies(
    host: &HostRoot,
    planned: &[Item],
    hold: Hold<'_>,
    record: &mut Record,
    originals: &mut Recorder<'_>,
) -> bool {
    let mut files: Vec<(&Item, &Action)> = Vec::new();
    let mut attempted = false;
    for item in planned {
        let Some(action) = &item.action else { continue };
        if item.kind() != Kind::SysctlOverride || hold(item) {
            continue;
        }
        match still_ours(action) {
            Ok(()) => files.push((item, action)),
            Err(why) => {
                attempted = true;
                record
                    .outcomes
                    .insert(item.key.clone(), Outcome::Failed(why));
            }
        }
    }
    attempted |= !files.is_empty();
    let journaled = journal_before(originals, &files, |_, _| None);
    for ((item, action), journaled) in files.into_iter().zip(journaled) {
        let outcome = match journaled {
            Ok(()) => execute_file_action(host, action),
            Err(why) => Outcome::Failed(why),
        };
        record.outcomes.insert(item.key.clone(), outcome);
    }
    if attempted {
        record.acted.insert(Area::Sysctl);
    }
    attempted
}

/// Whether the path of a copy's action is still free or holdfast's copy:
/// a file holdfast did not write (or a link) that appeared since the pass
/// read the directory is never replaced or removed.
fn still_ours(action: &Action) -> Result<(), String> {
    let (Action::WriteFile { path, .. } | Action::RemoveFile { path }) = action else {
        return Err(format!("not a file action: {action}"));
    };
    let refused = |what: &str| {
        Err(format!(
            "not changed: {} is now {what}, and holdfast never replaces a file it did not write",
            path.display()
        ))
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new("stat", path, e).to_string()),
        Ok(m) if !m.file_type().is_file() => refused("a link or not a regular file"),
        Ok(_) => match host::read_optional(path) {
            Ok(Some(text)) if !text.starts_with(crate::item::OWN_UNIT_FILE_MARK) => {
                refused("a file holdfast did not write")
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// The copies of vendor files this pass removed: gone from the plan after
/// the pass (there is nothing left to report on), they stay in its report
/// as `corrected`, with what was done.
fn removed_copies(planned: &[Item], merged: &[Item], record: &Record) -> Vec<Item> {
    planned
        .iter()
        .filter(|i| i.kind() == Kind::SysctlOverride)
        .filter(|i| matches!(i.action, Some(Action::RemoveFile { .. })))
        .filter(|i| matches!(record.outcomes.get(&i.key), Some(Outcome::Done)))
        .filter(|i| !merged.iter().any(|m| m.key == i.key))
        .map(|i| {
            let mut item = i.clone();
            item.action = None;
            item.state = State::Corrected;
            item.actual = "absent".into();
            item
        })
        .collect()
}

/// The units `--restart-services` restarts: those with an item that is
/// `restart-required`, or drifted with the unit's drop-in rewritten in this
/// pass (its new settings apply only at the next start).
fn units_to_restart(planned: &[Vec<Item>], record: &Record, hold: Hold<'_>) -> Vec<String> {
    let rewritten: BTreeSet<&str> = planned
        .iter()
        .flatten()
        .filter(|i| i.kind() == Kind::UnitFile)
        .filter(|i| matches!(record.outcomes.get(&i.key), Some(Outcome::Done)))
        .filter_map(|i| i.key.unit())
        .collect();
    let mut units: BTreeSet<String> = BTreeSet::new();
    for item in planned.iter().flatten() {
        if !matches!(item.kind(), Kind::ServiceLimit | Kind::ServicePosture) || hold(item) {
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
///   whose unit was restarted, is `corrected`.
fn merge(
    area: Area,
    before: &[Item],
    after: Vec<Item>,
    record: &Record,
    hold: Hold<'_>,
) -> Vec<Item> {
    let prev: HashMap<&ItemKey, &Item> = before.iter().map(|i| (&i.key, i)).collect();
    let mut out = after;
    for item in out.iter_mut() {
        for (a, note) in &record.area_notes {
            if *a == area {
                item.detail.push(note.clone());
            }
        }
        let unit = item.key.unit().map(str::to_string);
        let restarted = unit.as_ref().is_some_and(|u| record.restarted.contains(u))
            && matches!(item.kind(), Kind::ServiceLimit | Kind::ServicePosture);
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
    out
}

/// holdfast's sysctl.d file must hold the values the kernel really has now,
/// so it is planned from the merged sysctl items and written last.
///
/// A key pass updates only its keys' lines of the entries the last pass
/// left (`SysctlHost::persist_plan`); the first pass plans every line.
fn persist(
    host: &HostRoot,
    policy: &Policy,
    obs: &mut SysctlHost,
    items: &mut Vec<Item>,
    focus: Focus<'_>,
    hold: Hold<'_>,
    originals: &mut Recorder<'_>,
) {
    items.retain(|i| i.kind() != Kind::SysctlPersist);
    let plan = match (focus, obs.persist_plan.take()) {
        (Focus::Keys(_), Some(mut plan)) => {
            plan.update(policy, items, obs);
            plan
        }
        (Focus::Keys(_), None) => {
            let mut plan = PersistPlan::of(policy, &sysctl_plan::plan(policy, obs), obs);
            plan.update(policy, items, obs);
            plan
        }
        (Focus::All | Focus::Units(_), _) => PersistPlan::of(policy, items, obs),
    };
    let item = sysctl_plan::persist_file_item(policy, &plan, obs);
    obs.persist_plan = Some(plan);
    let Some(mut item) = item else {
        return;
    };
    if !hold(&item)
        && let Some(action) = item.action.take()
    {
        let journaled = originals.before_one(Change {
            key: &item.key,
            action: &action,
            known: None,
        });
        let outcome = match journaled {
            Ok(()) => execute_file_action(host, &action),
            Err(why) => Outcome::Failed(why),
        };
        match outcome {
            Outcome::Done => {
                item.state = State::Corrected;
                item.actual = item.desired.clone();
                obs.persisted = host::read_optional(&obs.persist_path).ok().flatten();
            }
            Outcome::Failed(why) => {
                item.state = State::Failed;
                item.detail.push(why);
            }
        }
    }
    items.push(item);
}

/// Writes or removes one of holdfast's files, then reads it back: `Done`
/// only when the file has exactly the content written (or is gone).
fn execute_file_action(host: &HostRoot, action: &Action) -> Outcome {
    match action {
        Action::WriteFile { path, content } => {
            if let Err(e) = host.write_atomic(path, content, 0o644) {
                return Outcome::Failed(e.to_string());
            }
            match host::read_optional(path) {
                Ok(Some(now)) if now == *content => Outcome::Done,
                Ok(Some(_)) => Outcome::Failed(format!(
                    "wrote {}, but it reads back with other content (another writer?)",
                    path.display()
                )),
                Ok(None) => Outcome::Failed(format!(
                    "wrote {}, but it is gone when read back (another writer?)",
                    path.display()
                )),
                Err(e) => Outcome::Failed(format!("wrote it, then could not read it back: {e}")),
            }
        }
        Action::RemoveFile { path } => match host.remove_file(path) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e.to_string()),
        },
        _ => Outcome::Failed(format!("not a file action: {action}")),
    }
}

/// Whether stage 4 carries this action out (systemd or cgroupfs).
fn is_runtime_action(action: &Action) -> bool {
    !matches!(
        action,
        Action::WriteSysctl { .. } | Action::WriteFile { .. } | Action::RemoveFile { .. }
    )
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
            .map_err(|e| explain_cgroup_error(&e)),
        Action::EnableController {
            subtree_control,
            controller,
        } => ctx
            .host
            .write_kernel_file(subtree_control, &format!("+{controller}"))
            .map_err(|e| explain_cgroup_error(&e)),
        Action::WriteCgroupFile { path, value } => ctx
            .host
            .write_kernel_file(path, value)
            .map_err(|e| explain_cgroup_error(&e)),
        Action::WriteSysctl { .. } | Action::WriteFile { .. } | Action::RemoveFile { .. } => {
            return None;
        }
    };
    Some(result)
}

/// cgroupfs errors, with what they mean for holdfast (design notes, §3).
fn explain_cgroup_error(e: &IoError) -> String {
    let why = match e.errno() {
        Some(16) => {
            "EBUSY: the no-internal-processes rule (a cgroup with processes cannot give its children domain controllers), or a controller still in use below"
        }
        Some(22) => "EINVAL: the kernel rejected the value or the controller name",
        Some(2) => {
            "ENOENT: the controller is not enabled in the parent, or the file does not exist here: cannot manage this here"
        }
        Some(1) | Some(13) => {
            "permission denied (nsdelegate, or not root): cannot manage this here"
        }
        Some(30) => "EROFS: cgroupfs is mounted read-only here: cannot manage this here",
        _ => "cgroupfs write failed",
    };
    format!("{why}: {e}")
}

/// Turns a failed sysctl write into an explanation a person can act on.
fn explain_write_error(e: &IoError) -> String {
    let why = match e.errno() {
        Some(22) => "the kernel rejected the value (EINVAL)",
        // EACCES is the file's mode: a read-only key, or not root.
        Some(13) if nix::unistd::geteuid().is_root() => {
            "permission denied by the file's mode (EACCES): this key is read-only here"
        }
        Some(13) => "permission denied (EACCES): writing sysctls needs root",
        // EPERM is a capability check in the kernel's handler.
        Some(1) => {
            "operation not permitted (EPERM): a capability is missing (net.* needs CAP_NET_ADMIN over its network namespace, kernel.dmesg_restrict and kptr_restrict CAP_SYS_ADMIN, vm.mmap_min_addr CAP_SYS_RAWIO), or a container forbids it"
        }
        Some(2) => "the key disappeared",
        Some(30) => "/proc/sys is read-only here (a container?)",
        _ => "write failed",
    };
    format!("{why}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_error_names_its_real_cause() {
        let path = std::path::Path::new("/proc/sys/net/core/somaxconn");
        let why = |errno| {
            explain_write_error(&IoError::new(
                "open",
                path,
                std::io::Error::from_raw_os_error(errno),
            ))
        };
        // EPERM is a missing capability; EACCES the file's mode (as root)
        // or not being root.
        assert!(why(1).contains("capability"), "{}", why(1));
        assert!(!why(13).contains("capability"), "{}", why(13));
        if nix::unistd::geteuid().is_root() {
            assert!(why(13).contains("read-only"), "{}", why(13));
        } else {
            assert!(why(13).contains("needs root"), "{}", why(13));
        }
        assert!(why(22).contains("EINVAL"));
    }
}
