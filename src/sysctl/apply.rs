//! The sysctl area's executor and its after-merge step: what the engine
//! calls through `area` for this area, as it calls the generic file and
//! runtime stages for the others.
//!
//! - [`execute`] carries out the area's actions before any other area's:
//!   the kernel values through the converge loop (`converge::settle`:
//!   written in an order that converges, read back after every write of the
//!   pass, written again when another write disturbed them), then
//!   holdfast's copies of vendor sysctl.d files, after which the sysctl.d
//!   files are read again (the copies change what boot applies).
//! - [`after_merge`] plans holdfast's sysctl.d file from the merged,
//!   verified values and writes it, so that boot gets what the kernel
//!   accepted.
//!
//! # Guarantees
//! - Every write's original is journaled before the write; a key whose
//!   original cannot be journaled is not written.
//! - A held key keeps its planned write (unexecuted), so the persisted file
//!   still holds the policy's value for it: backing off at runtime does not
//!   change what boot applies.

use std::collections::{BTreeSet, HashMap};

use super::SysctlKey;
use super::converge;
use super::observe::{self, Observed};
use super::plan::{self, PersistPlan, SysctlHost};
use crate::exec::{self, Executed, Outcome, Run};
use crate::host::{self, HostRoot};
use crate::item::{Action, Hold, Item, ItemKey, Kind, State};
use crate::journal::store::{self as journal, Change, Recorder};
use crate::policy::{Mode, Policy};

/// Carries out the area's planned actions (except held ones): the kernel
/// values, then the copies of vendor files. What it reads is recorded in
/// `observed`, so re-planning needs no further read.
pub fn execute(run: &mut Run<'_, '_>, planned: &[Item], observed: &mut SysctlHost) -> Executed {
    let mut done = Executed::default();
    let hold = run.hold;
    settle(
        run.host,
        run.policy,
        planned.iter().filter(|i| !hold(i)),
        observed,
        &mut done,
        run.originals,
    );
    if write_copies(run.host, planned, hold, &mut done, run.originals) {
        done.warnings
            .extend(observe::reread_conf(run.host, observed));
    }
    done
}

/// After the merge: the copies this pass removed stay in its report, and
/// holdfast's sysctl.d file is planned from the merged items and written.
///
/// A key pass (`keys`) updates only its keys' lines of the entries the last
/// pass left (`SysctlHost::persist_plan`); a full pass plans every line.
#[expect(clippy::implicit_hasher, reason = "the engine's one map type")]
pub fn after_merge(
    run: &mut Run<'_, '_>,
    observed: &mut SysctlHost,
    planned: &[Item],
    merged: &mut Vec<Item>,
    outcomes: &HashMap<ItemKey, Outcome>,
    keys: Option<&BTreeSet<SysctlKey>>,
) {
    let removed = removed_copies(planned, merged, outcomes);
    merged.extend(removed);
    persist(run, observed, merged, keys);
}

/// Runs the pass's sysctl writes through [`converge::settle`]: the planned
/// writes, plus every enforced key that is compliant (read again when a
/// write may have disturbed it).
fn settle<'a>(
    host: &HostRoot,
    policy: &Policy,
    items: impl Iterator<Item = &'a Item>,
    observed: &mut SysctlHost,
    done: &mut Executed,
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
        targets.push(converge::Target {
            key: key.clone(),
            expect: rule.expect.clone(),
            write,
        });
    }
    if targets.iter().all(|t| t.write.is_none()) {
        return;
    }
    done.acted = true;
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
    let outcomes = converge::settle(
        &targets,
        &mut |key, value| {
            if let Some(why) = refused.get(key) {
                return Err(why.clone());
            }
            originals.before_one(&Change {
                key: &ItemKey::Sysctl(key.clone()),
                action: &Action::WriteSysctl {
                    key: key.clone(),
                    value: value.clone(),
                },
                known: before.get(key).map(journal::sysctl_original),
            })?;
            observe::write_key(host, key, value).map_err(|e| exec::explain_write_error(&e))
        },
        &mut |key| {
            let now = observe::read_key(host, key);
            seen.push((key.clone(), now.clone()));
            now
        },
    );
    observed.values.extend(seen);
    for (target, outcome) in targets.iter().zip(outcomes) {
        let key = ItemKey::Sysctl(target.key.clone());
        let outcome = match outcome {
            converge::Outcome::Unchanged => continue,
            // Compliant when read after every write: the merge calls it
            // corrected; still wrong: the merge says what was read back.
            converge::Outcome::Corrected { .. }
            | converge::Outcome::NotHeld { wrote: Some(_), .. } => Outcome::Done,
            converge::Outcome::NotHeld {
                wrote: None, now, ..
            } => Outcome::Failed(format!(
                "another write of this pass changed it ({now:?}), and the pass ran out of rounds before writing it again"
            )),
            converge::Outcome::WriteFailed(why) => Outcome::Failed(why),
        };
        done.outcomes.insert(key, outcome);
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
    done: &mut Executed,
    originals: &mut Recorder<'_>,
) -> bool {
    let mut files: Vec<(&Item, &Action)> = Vec::new();
    let mut attempted = false;
    for item in planned {
        let Some(action) = &item.action else { continue };
        if item.kind() != Kind::SysctlOverride || hold(item) {
            continue;
        }
        match exec::still_ours(action) {
            Ok(()) => files.push((item, action)),
            Err(why) => {
                attempted = true;
                done.outcomes.insert(item.key.clone(), Outcome::Failed(why));
            }
        }
    }
    attempted |= !files.is_empty();
    let journaled = exec::journal_before(originals, &files, |_, _| None);
    for ((item, action), journaled) in files.into_iter().zip(journaled) {
        let outcome = match journaled {
            Ok(()) => exec::file_action(host, action),
            Err(why) => Outcome::Failed(why),
        };
        done.outcomes.insert(item.key.clone(), outcome);
    }
    done.acted |= attempted;
    attempted
}

/// The copies of vendor files this pass removed: gone from the plan after
/// the pass (there is nothing left to report on), they stay in its report
/// as `corrected`, with what was done.
fn removed_copies(
    planned: &[Item],
    merged: &[Item],
    outcomes: &HashMap<ItemKey, Outcome>,
) -> Vec<Item> {
    planned
        .iter()
        .filter(|i| i.kind() == Kind::SysctlOverride)
        .filter(|i| matches!(i.action, Some(Action::RemoveFile { .. })))
        .filter(|i| matches!(outcomes.get(&i.key), Some(Outcome::Done)))
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

/// holdfast's sysctl.d file must hold the values the kernel really has now,
/// so it is planned from the merged sysctl items and written last.
fn persist(
    run: &mut Run<'_, '_>,
    obs: &mut SysctlHost,
    items: &mut Vec<Item>,
    keys: Option<&BTreeSet<SysctlKey>>,
) {
    let (host, policy, hold) = (run.host, run.policy, run.hold);
    items.retain(|i| i.kind() != Kind::SysctlPersist);
    let plan = match (keys, obs.persist_plan.take()) {
        (Some(_), Some(mut plan)) => {
            plan.update(policy, items, obs);
            plan
        }
        // A key pass with no earlier plan (a caller that observed the
        // area itself): every line from a full plan, then the keys.
        (Some(_), None) => {
            let mut plan = PersistPlan::of(policy, &plan::plan(policy, obs), obs);
            plan.update(policy, items, obs);
            plan
        }
        (None, _) => PersistPlan::of(policy, items, obs),
    };
    let item = plan::persist_file_item(policy, &plan, obs);
    obs.persist_plan = Some(plan);
    let Some(mut item) = item else {
        return;
    };
    if !hold(&item)
        && let Some(action) = item.action.take()
    {
        let journaled = run.originals.before_one(&Change {
            key: &item.key,
            action: &action,
            known: None,
        });
        let outcome = match journaled {
            Ok(()) => exec::file_action(host, &action),
            Err(why) => Outcome::Failed(why),
        };
        match outcome {
            Outcome::Done => {
                item.state = State::Corrected;
                item.actual.clone_from(&item.desired);
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
