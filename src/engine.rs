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

use crate::cgroup::{observe as cgroup_observe, plan as cgroup_plan};
use crate::host::{HostRoot, IoError};
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
    let (units, w) = plan_units(ctx, policy);
    warnings.extend(w);
    items.extend(units);
    Pass {
        items,
        warnings: collect_warnings(&warnings),
        duration: started.elapsed(),
    }
}

fn has_service_settings(policy: &Policy) -> bool {
    !services::managed_units(policy).is_empty() || policy.service_defaults.limit_nofile.is_some()
}

fn has_cgroup_settings(policy: &Policy) -> bool {
    policy.cgroup.controllers.is_some() || !policy.cgroup.slices.is_empty()
}

/// Observes and plans what goes through systemd or cgroupfs: services and
/// cgroup slices.
fn plan_units(ctx: &Context<'_>, policy: &Policy) -> (Vec<Item>, Vec<IoError>) {
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    if has_service_settings(policy) {
        let (services_host, w) = services_observe::observe(ctx.host, ctx.systemd, policy);
        warnings.extend(w);
        items.extend(services::plan(policy, &services_host));
    }
    if has_cgroup_settings(policy) {
        let (cgroup_host, w) = cgroup_observe::observe(ctx.host, ctx.systemd, policy);
        warnings.extend(w);
        items.extend(cgroup_plan::plan(policy, &cgroup_host));
    }
    (items, warnings)
}

/// Which items must not be changed in this pass: the daemon holds items that
/// are in backoff (contested, or failing) this way. Every kind of setting
/// honours it: a held item keeps its planned action, unexecuted, and its
/// drifted state.
pub type Hold<'a> = &'a dyn Fn(&Item) -> bool;

pub fn apply_in(ctx: &Context<'_>, policy: &Policy, options: ApplyOptions) -> Pass {
    apply_in_holding(ctx, policy, options, &|_| false)
}

/// [`apply`] on the production context, except that the items `hold`
/// selects are left as they are.
pub fn apply_holding(host: &HostRoot, policy: &Policy, hold: Hold<'_>) -> Pass {
    apply_in_holding(
        &Context::for_host(host),
        policy,
        ApplyOptions::default(),
        hold,
    )
}

/// [`apply_in`], except that the items `hold` selects are left as they are.
pub fn apply_in_holding(
    ctx: &Context<'_>,
    policy: &Policy,
    options: ApplyOptions,
    hold: Hold<'_>,
) -> Pass {
    let started = Instant::now();
    let host = ctx.host;
    let (sysctl_host, mut warnings) = sysctl_observe::observe(host, policy);
    let mut items = apply_sysctls_observed(host, policy, &sysctl_host, hold);
    if !policy.limits.is_empty() {
        let (limits_host, w) = limits_observe::observe(host);
        warnings.extend(w);
        items.extend(apply_limits(host, policy, &limits_host, hold));
    }
    if has_service_settings(policy) || has_cgroup_settings(policy) {
        let (units, w) = apply_units(ctx, policy, options, hold);
        warnings.extend(w);
        items.extend(units);
    }
    Pass {
        items,
        warnings: collect_warnings(&warnings),
        duration: started.elapsed(),
    }
}

/// Services and cgroups, in one systemd phase:
/// 1. write the unit files holdfast owns (drop-ins, slice units);
/// 2. one daemon-reload for the whole pass, only if a file changed;
/// 3. observe again and carry out the runtime actions that view calls for:
///    start slices, `SetUnitProperties(runtime)` for settings another writer
///    changed, or, without systemd, create holdfast's cgroups, enable
///    controllers top-down and write its limits;
/// 4. restart services whose processes still run with old settings, only
///    when `--restart-services` asks;
/// 5. observe a last time, so every state is what the host now really has.
fn apply_units(
    ctx: &Context<'_>,
    policy: &Policy,
    options: ApplyOptions,
    hold: Hold<'_>,
) -> (Vec<Item>, Vec<IoError>) {
    let (mut planned, mut warnings) = plan_units(ctx, policy);
    let parked = park_held(&mut planned, hold);
    let wrote_unit_files = planned
        .iter()
        .any(|i| i.kind == Kind::UnitFile && i.action.is_some());
    execute_file_actions(ctx.host, &mut planned);
    unpark(&mut planned, parked);
    let mut notes: Vec<(String, String)> = Vec::new();
    if wrote_unit_files && let Some(client) = ctx.systemd {
        if let Err(e) = client.daemon_reload() {
            notes.push((String::new(), format!("daemon-reload failed: {e}")));
        }
    }
    let (mut mid, _) = plan_units(ctx, policy);
    let mut acted: Vec<String> = Vec::new();
    for item in mid.iter_mut() {
        if hold(item) {
            continue;
        }
        let Some(action) = item.action.take() else {
            continue;
        };
        match execute_runtime_action(ctx, &action) {
            Ok(true) => acted.push(item.key.clone()),
            Ok(false) => {}
            Err(why) => notes.push((item.key.clone(), why)),
        }
    }
    let mut restarted = Vec::new();
    if options.restart_services
        && let Some(client) = ctx.systemd
    {
        let (now, _) = plan_units(ctx, policy);
        let mut units: Vec<&str> = now
            .iter()
            .filter(|i| {
                matches!(i.kind, Kind::ServiceLimit | Kind::ServicePosture)
                    && i.state == State::RestartRequired
            })
            .filter_map(|i| i.key.split_once(' ').map(|(unit, _)| unit))
            .collect();
        units.sort_unstable();
        units.dedup();
        for unit in units {
            match client.restart(unit) {
                Ok(()) => {
                    wait_for_exec(ctx.host, client, unit);
                    restarted.push(unit.to_string());
                }
                Err(e) => notes.push((unit.to_string(), format!("restart failed: {e}"))),
            }
        }
    }
    let (mut after, w) = plan_units(ctx, policy);
    warnings.extend(w);
    for item in after.iter_mut() {
        let unit = item
            .key
            .split_once(' ')
            .map_or(item.key.as_str(), |(u, _)| u);
        let was_restarted = restarted.iter().any(|r| r == unit);
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
            && (prev.is_some_and(|p| p.state != State::Compliant)
                || was_restarted
                || acted.contains(&item.key))
        {
            item.state = State::Corrected;
        }
        if was_restarted && matches!(item.kind, Kind::ServiceLimit | Kind::ServicePosture) {
            item.detail
                .push("restarted by holdfast (--restart-services)".into());
        }
        for (key, note) in &notes {
            if key.is_empty() || *key == item.key || *key == unit {
                item.detail.push(note.clone());
                if !key.is_empty() && item.state != State::Compliant {
                    item.state = State::Failed;
                }
            }
        }
    }
    (after, warnings)
}

/// After a restart, waits (at most 10 s) until the unit's main process has
/// exec'd its program and settled. `systemctl restart` of a simple service
/// returns once systemd has forked; until the exec the child is still
/// systemd's (named `(prog)`), with systemd's environment and capabilities,
/// and for a moment after it the kernel is still laying out the new
/// environment (/proc/PID/environ reads empty or short). Verifying then would
/// report transient drift, so the wait ends when the name is the program's
/// and two reads of its environment 100 ms apart agree.
fn wait_for_exec(host: &HostRoot, client: &dyn SystemdClient, unit: &str) {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let pause = std::time::Duration::from_millis(100);
    while Instant::now() < deadline {
        let Some(pid) = client.unit(unit).ok().and_then(|i| i.main_pid) else {
            return;
        };
        let read = |file: &str| std::fs::read(host.path(&format!("proc/{pid}/{file}"))).ok();
        let Some(comm) = read("comm") else {
            return;
        };
        if !comm.starts_with(b"(") {
            let first = read("environ");
            std::thread::sleep(pause);
            if first.as_ref().is_some_and(|e| !e.is_empty()) && read("environ") == first {
                return;
            }
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Carries out one runtime action of the systemd phase. `Ok(true)` when it
/// acted, `Err` with an explanation when it failed.
fn execute_runtime_action(ctx: &Context<'_>, action: &Action) -> Result<bool, String> {
    let client = || {
        ctx.systemd
            .ok_or_else(|| "systemd not asked: the host root is not /".to_string())
    };
    match action {
        Action::StartUnit { unit } => client()?.start(unit).map_err(|e| e.to_string())?,
        Action::SetUnitProperties { unit, assignments } => client()?
            .set_properties_runtime(unit, assignments)
            .map_err(|e| e.to_string())?,
        Action::CreateCgroup { path } => ctx
            .host
            .create_kernel_dir(path)
            .map_err(|e| explain_cgroup_error(&e))?,
        Action::EnableController {
            subtree_control,
            controller,
        } => ctx
            .host
            .write_kernel_file(subtree_control, &format!("+{controller}"))
            .map_err(|e| explain_cgroup_error(&e))?,
        Action::WriteCgroupFile { path, value } => ctx
            .host
            .write_kernel_file(path, value)
            .map_err(|e| explain_cgroup_error(&e))?,
        Action::WriteSysctl { .. } | Action::WriteFile { .. } | Action::RemoveFile { .. } => {
            return Ok(false);
        }
    }
    Ok(true)
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

/// Problems reading auxiliary files, as report warnings.
fn collect_warnings(io: &[IoError]) -> Vec<String> {
    io.iter().map(IoError::to_string).collect()
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
    execute_file_actions(host, &mut planned);
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
    execute_file_actions(host, &mut items);
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

fn execute_file_actions(host: &HostRoot, items: &mut [Item]) {
    for item in items.iter_mut() {
        let result = match item.action.take() {
            Some(Action::WriteFile { path, content }) => host.write_atomic(&path, &content, 0o644),
            Some(Action::RemoveFile { path }) => host.remove_file(&path),
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
