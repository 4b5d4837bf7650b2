//! One reconcile pass: observe the host, plan against the policy, and (for
//! `apply`) carry out the plan and verify it. The CLI runs one pass; the
//! daemon runs them in a loop.
//!
//! # Guarantees
//! - `check` and `plan` never write to the host.
//! - `apply` is idempotent: a second pass over a converged host writes
//!   nothing (it re-reads, finds every value compliant, and stops there).
//! - Every write is verified by reading the value back; an item is
//!   `corrected` only when the kernel (or systemd, or pam_limits' reading of
//!   the files) reports the policy's value.
//! - systemd: at most one daemon-reload per pass, only when a unit file
//!   holdfast owns changed; a service is restarted only on explicit request.

use std::time::Instant;

use crate::host::{self, HostRoot, IoError};
use crate::item::{Action, Item, Kind, State};
use crate::limits::{observe as limits_observe, plan as limits_plan};
use crate::policy::Policy;
use crate::services::{self, observe as services_observe};
use crate::sysctl::Comparison;
use crate::sysctl::observe::{self as sysctl_observe, Observed};
use crate::sysctl::plan::{self as sysctl_plan, SysctlHost};
use crate::systemd::{self, Systemctl, SystemdClient};

/// The result of a pass.
#[derive(Debug, Clone)]
pub struct Pass {
    pub items: Vec<Item>,
    /// Problems reading files that are not items themselves (an unreadable
    /// sysctl.d file, say); reported, never fatal.
    pub warnings: Vec<String>,
    pub duration: std::time::Duration,
}

/// What a pass works with: the host root and, when holdfast can talk to the
/// host's systemd, a client for it.
pub struct Context<'a> {
    pub host: &'a HostRoot,
    pub systemd: Option<&'a dyn SystemdClient>,
}

static SYSTEMCTL: Systemctl = Systemctl;

impl<'a> Context<'a> {
    /// The production context: `systemctl` when the root is `/` and systemd
    /// is PID 1; no client otherwise (a fake or foreign root must never
    /// reach the running systemd).
    pub fn for_host(host: &'a HostRoot) -> Context<'a> {
        let own_root = host.root() == std::path::Path::new("/");
        let systemd: Option<&dyn SystemdClient> =
            (own_root && systemd::is_pid1(host)).then_some(&SYSTEMCTL as &dyn SystemdClient);
        Context { host, systemd }
    }
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

pub fn plan_in(ctx: &Context<'_>, policy: &Policy) -> Pass {
    let started = Instant::now();
    let host = ctx.host;
    let (sysctl_host, mut warnings) = sysctl_observe::observe(host, policy);
    let mut items = sysctl_plan::plan(policy, &sysctl_host);
    if !policy.limits.is_empty() {
        let (limits_host, w) = limits_observe::observe(host);
        warnings.extend(w);
        items.extend(limits_plan::plan(policy, &limits_host));
    }
    if has_service_settings(policy) {
        let (services_host, w) = services_observe::observe(host, ctx.systemd, policy);
        warnings.extend(w);
        items.extend(services::plan(policy, &services_host));
    }
    Pass {
        items,
        warnings: collect_warnings(policy, &warnings),
        duration: started.elapsed(),
    }
}

fn has_service_settings(policy: &Policy) -> bool {
    !services::managed_units(policy).is_empty() || policy.service_defaults.limit_nofile.is_some()
}

/// One reconcile pass: plan, then carry out the plan.
pub fn apply_in(ctx: &Context<'_>, policy: &Policy, options: ApplyOptions) -> Pass {
    let started = Instant::now();
    let host = ctx.host;
    let (sysctl_host, mut warnings) = sysctl_observe::observe(host, policy);
    let mut items = sysctl_plan::plan(policy, &sysctl_host);
    execute_sysctl_writes(host, policy, &mut items);
    refresh_persist_item(policy, &sysctl_host, &mut items);
    execute_file_actions(&mut items);
    if !policy.limits.is_empty() {
        let (limits_host, w) = limits_observe::observe(host);
        warnings.extend(w);
        items.extend(apply_limits(host, policy, &limits_host));
    }
    if has_service_settings(policy) {
        let (services, w) = apply_services(ctx, policy, options);
        warnings.extend(w);
        items.extend(services);
    }
    Pass {
        items,
        warnings: collect_warnings(policy, &warnings),
        duration: started.elapsed(),
    }
}

/// Writes holdfast's unit drop-ins, then one daemon-reload for the whole
/// pass if any file changed, then (only when asked) restarts the services
/// whose processes still run with old limits; then observes again so every
/// state reflects what systemd and the processes now really have.
fn apply_services(
    ctx: &Context<'_>,
    policy: &Policy,
    options: ApplyOptions,
) -> (Vec<Item>, Vec<IoError>) {
    let (before_host, mut warnings) = services_observe::observe(ctx.host, ctx.systemd, policy);
    let mut planned = services::plan(policy, &before_host);
    let wrote_unit_files = planned
        .iter()
        .any(|i| i.kind == Kind::UnitFile && i.action.is_some());
    execute_file_actions(&mut planned);
    let mut notes: Vec<(String, String)> = Vec::new();
    if wrote_unit_files && let Some(client) = ctx.systemd {
        if let Err(e) = client.daemon_reload() {
            notes.push((String::new(), format!("daemon-reload failed: {e}")));
        }
    }
    let mut restarted = Vec::new();
    if options.restart_services
        && let Some(client) = ctx.systemd
    {
        let (mid_host, _) = services_observe::observe(ctx.host, ctx.systemd, policy);
        for item in services::plan(policy, &mid_host) {
            if item.state != State::RestartRequired {
                continue;
            }
            let Some(unit) = item.key.strip_suffix(" LimitNOFILE") else {
                continue;
            };
            match client.restart(unit) {
                Ok(()) => restarted.push(item.key.clone()),
                Err(e) => notes.push((item.key.clone(), format!("restart failed: {e}"))),
            }
        }
    }
    let (after_host, w) = services_observe::observe(ctx.host, ctx.systemd, policy);
    warnings.extend(w);
    let mut after = services::plan(policy, &after_host);
    for item in after.iter_mut() {
        let prev = planned
            .iter()
            .find(|p| p.kind == item.kind && p.key == item.key);
        if let Some(prev) = prev
            && item.kind == Kind::UnitFile
            && matches!(prev.state, State::Corrected | State::Failed)
        {
            item.state = prev.state;
            item.detail = prev.detail.clone();
        } else if item.state == State::Compliant
            && (prev.is_some_and(|p| p.state != State::Compliant) || restarted.contains(&item.key))
        {
            item.state = State::Corrected;
        }
        if restarted.contains(&item.key) {
            item.detail
                .push("restarted by holdfast (--restart-services)".into());
        }
        for (key, note) in &notes {
            if key.is_empty() || *key == item.key {
                item.detail.push(note.clone());
            }
        }
    }
    (after, warnings)
}

/// Read problems, plus the policy sections this version validates but does
/// not manage yet, so a report never implies they were checked.
fn collect_warnings(policy: &Policy, io: &[IoError]) -> Vec<String> {
    let mut out: Vec<String> = io.iter().map(IoError::to_string).collect();
    let mut unmanaged = Vec::new();
    if policy.services.values().any(|s| s.slice.is_some()) {
        unmanaged.push("services (slice)");
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
fn apply_limits(host: &HostRoot, policy: &Policy, before: &limits_plan::LimitsHost) -> Vec<Item> {
    let mut planned = limits_plan::plan(policy, before);
    if !planned.iter().any(|i| i.action.is_some()) {
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
