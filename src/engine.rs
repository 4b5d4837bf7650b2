//! One reconcile pass: observe the host, plan against the policy, and (for
//! `apply`) carry out the plan and verify it. The CLI runs one pass; the
//! daemon runs them in a loop.
//!
//! # Guarantees
//! - `check` and `plan` never write to the host.
//! - `apply` is idempotent: a second pass over a converged host writes
//!   nothing (it re-reads, finds every value compliant, and stops there).
//! - Every write is verified by reading the value back; an item is
//!   `corrected` only when the kernel reports the policy's value.

use std::time::Instant;

use crate::host::{self, HostRoot, IoError};
use crate::item::{Action, Item, Kind, State};
use crate::limits::{observe as limits_observe, plan as limits_plan};
use crate::policy::Policy;
use crate::sysctl::Comparison;
use crate::sysctl::observe::{self as sysctl_observe, Observed};
use crate::sysctl::plan::{self as sysctl_plan, SysctlHost};

/// The result of a pass.
#[derive(Debug, Clone)]
pub struct Pass {
    pub items: Vec<Item>,
    /// Problems reading files that are not items themselves (an unreadable
    /// sysctl.d file, say); reported, never fatal.
    pub warnings: Vec<String>,
    pub duration: std::time::Duration,
}

/// Observes the host and plans the changes apply would make. Writes nothing.
pub fn plan(host: &HostRoot, policy: &Policy) -> Pass {
    let started = Instant::now();
    let (sysctl_host, mut warnings) = sysctl_observe::observe(host, policy);
    let mut items = sysctl_plan::plan(policy, &sysctl_host);
    if !policy.limits.is_empty() {
        let (limits_host, w) = limits_observe::observe(host);
        warnings.extend(w);
        items.extend(limits_plan::plan(policy, &limits_host));
    }
    Pass {
        items,
        warnings: collect_warnings(policy, &warnings),
        duration: started.elapsed(),
    }
}

/// Read problems, plus the policy sections this version validates but does
/// not manage yet, so a report never implies they were checked.
fn collect_warnings(policy: &Policy, io: &[IoError]) -> Vec<String> {
    let mut out: Vec<String> = io.iter().map(IoError::to_string).collect();
    let mut unmanaged = Vec::new();
    if !policy.services.is_empty() {
        unmanaged.push("services");
    }
    if policy.cgroup.controllers.is_some() || !policy.cgroup.slices.is_empty() {
        unmanaged.push("cgroup");
    }
    if !unmanaged.is_empty() {
        out.push(format!(
            "policy sections validated but not checked by this version: {}",
            unmanaged.join(", ")
        ));
    }
    out
}

/// One reconcile pass: plan, then carry out the plan.
pub fn apply(host: &HostRoot, policy: &Policy) -> Pass {
    apply_holding(host, policy, &|_| false)
}

/// Which items must not be changed in this pass: the daemon holds items that
/// are in backoff (contested, or failing) this way. Every kind of setting
/// honours it: a held item keeps its planned action, unexecuted, and its
/// drifted state.
pub type Hold<'a> = &'a dyn Fn(&Item) -> bool;

/// [`apply`], except that the items `hold` selects are left as they are.
pub fn apply_holding(host: &HostRoot, policy: &Policy, hold: Hold<'_>) -> Pass {
    let started = Instant::now();
    let (sysctl_host, mut warnings) = sysctl_observe::observe(host, policy);
    let mut items = apply_sysctls_observed(host, policy, &sysctl_host, hold);
    if !policy.limits.is_empty() {
        let (limits_host, w) = limits_observe::observe(host);
        warnings.extend(w);
        items.extend(apply_limits(host, policy, &limits_host, hold));
    }
    Pass {
        items,
        warnings: collect_warnings(policy, &warnings),
        duration: started.elapsed(),
    }
}

/// Writes the planned sysctls (overcommit limit before mode), then reads each
/// back to verify.
fn execute_sysctl_writes(host: &HostRoot, policy: &Policy, items: &mut [Item]) {
    let mut order: Vec<usize> = (0..items.len())
        .filter(|&i| matches!(items[i].action, Some(Action::WriteSysctl { .. })))
        .collect();
    order.sort_by_key(|&i| sysctl_plan::write_order(&items[i].key));
    for i in order {
        let item = &mut items[i];
        let Some(Action::WriteSysctl { key, value }) = item.action.take() else {
            continue;
        };
        if let Err(e) = sysctl_observe::write_key(host, &key, &value) {
            item.state = State::Failed;
            item.detail.push(explain_write_error(&e));
            continue;
        }
        let Some(rule) = policy.sysctls.get(&key) else {
            continue;
        };
        match sysctl_observe::read_key(host, &key) {
            Observed::Value(now) => {
                item.actual = now.canonical();
                if rule.expect.compare(&now) == Comparison::Compliant {
                    item.state = State::Corrected;
                } else {
                    item.state = State::Failed;
                    item.detail
                        .push(format!("wrote {value}, but the kernel reads back {now}"));
                }
            }
            other => {
                item.state = State::Failed;
                item.detail.push(format!(
                    "wrote {value}, then could not read it back: {other:?}"
                ));
            }
        }
    }
}

/// Writes holdfast's limits.d file, then reads every limits file again and
/// recomputes the effective values: an entry is `corrected` only when
/// pam_limits would now give sessions the policy's value.
fn apply_limits(
    host: &HostRoot,
    policy: &Policy,
    before: &limits_plan::LimitsHost,
    hold: Hold<'_>,
) -> Vec<Item> {
    let mut planned = limits_plan::plan(policy, before);
    let parked = park_held(&mut planned, hold);
    if !planned.iter().any(|i| i.action.is_some()) {
        unpark(&mut planned, parked);
        return planned;
    }
    execute_file_actions(&mut planned);
    let (after_host, _) = limits_observe::observe(host);
    let mut after = limits_plan::plan(policy, &after_host);
    for item in after.iter_mut() {
        let Some(prev) = planned
            .iter()
            .find(|p| p.kind == item.kind && p.key == item.key)
        else {
            continue;
        };
        if item.kind == Kind::LimitsFile && prev.action.is_none() && prev.state != State::Drifted {
            // The file item keeps the outcome of the write (corrected/failed).
            item.state = prev.state;
            item.detail = prev.detail.clone();
        } else if item.state == State::Compliant && prev.state == State::Drifted {
            item.state = State::Corrected;
        }
    }
    after
}

/// The sysctl part of a pass over host state the caller has already read:
/// plan, write the keys (except held ones), verify, then plan and write the
/// persisted file from the verified values. `apply` passes what it has just
/// observed; the daemon passes its cache, refreshed only for the keys an
/// event concerns, so that a change to one key costs one read and one write.
///
/// A held key keeps its planned write (unexecuted), so the persisted file
/// still holds the policy's value for it: backing off at runtime does not
/// change what boot applies.
pub fn apply_sysctls_observed(
    host: &HostRoot,
    policy: &Policy,
    observed: &SysctlHost,
    hold: Hold<'_>,
) -> Vec<Item> {
    let mut items = sysctl_plan::plan(policy, observed);
    let parked = park_held(&mut items, hold);
    execute_sysctl_writes(host, policy, &mut items);
    unpark(&mut items, parked);
    refresh_persist_item(policy, observed, &mut items);
    let parked = park_held(&mut items, hold);
    execute_file_actions(&mut items);
    unpark(&mut items, parked);
    items
}

/// Takes the actions of held items out of the list, so the executors skip
/// them; [`unpark`] puts them back.
fn park_held(items: &mut [Item], hold: Hold<'_>) -> Vec<(usize, Action)> {
    let mut parked = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        if item.action.is_some()
            && hold(item)
            && let Some(action) = item.action.take()
        {
            parked.push((i, action));
        }
    }
    parked
}

fn unpark(items: &mut [Item], parked: Vec<(usize, Action)>) {
    for (i, action) in parked {
        if let Some(item) = items.get_mut(i) {
            item.action = Some(action);
        }
    }
}

/// The persisted file must hold the values the kernel really has now, so it
/// is planned again after the writes.
fn refresh_persist_item(policy: &Policy, sysctl_host: &SysctlHost, items: &mut Vec<Item>) {
    items.retain(|i| i.kind != Kind::SysctlPersist);
    items.extend(sysctl_plan::persist_item(policy, items, sysctl_host));
}

fn execute_file_actions(items: &mut [Item]) {
    for item in items.iter_mut() {
        let result = match item.action.take() {
            Some(Action::WriteFile { path, content }) => host::write_atomic(&path, &content, 0o644),
            Some(Action::RemoveFile { path }) => std::fs::remove_file(&path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| IoError::new("remove", &path, e)),
            Some(other) => {
                item.action = Some(other);
                continue;
            }
            None => continue,
        };
        match result {
            Ok(()) => {
                item.state = State::Corrected;
                item.actual = item.desired.clone();
            }
            Err(e) => {
                item.state = State::Failed;
                item.detail.push(e.to_string());
            }
        }
    }
}

/// Turns a failed sysctl write into an explanation a person can act on.
fn explain_write_error(e: &IoError) -> String {
    let why = match e.errno() {
        Some(22) => "the kernel rejected the value (EINVAL)",
        Some(1) | Some(13) => {
            "permission denied: writing sysctls needs root (net.* needs CAP_NET_ADMIN, some kernel.* keys CAP_SYS_ADMIN)"
        }
        Some(2) => "the key disappeared",
        Some(30) => "/proc/sys is read-only here (a container?)",
        _ => "write failed",
    };
    format!("{why}: {e}")
}
