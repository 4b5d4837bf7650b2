//! `holdfast rollback`: puts back what the originals journal says the host
//! had before holdfast first changed it, then takes the restored entries
//! out of the journal.
//!
//! The order is apply's: sysctls (in the write order, read back after all
//! writes and written again when another write disturbed them; the
//! overcommit gate judges the restored values as it judges a policy's),
//! then files, then one daemon-reload if a unit file changed, then runtime
//! changes (systemd properties, holdfast's own cgroups: files, then
//! directories deepest first, then controllers), then the services whose
//! drop-in went away: `restart-required` while they run, restarted only on
//! request.
//!
//! # Guarantees
//! - An entry leaves the journal only when its original is back (read back
//!   for sysctls and files) or there was nothing to put back.
//! - Rollback is idempotent: a rollback killed halfway leaves the restored
//!   entries in the journal, and the next rollback writes them again.
//! - `dry_run` writes nothing, the journal included.
//!
//! # Assumptions
//! The caller holds the writer lock (no daemon enforces at the same time).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::area::Context;
use crate::host::{self, HostRoot};
use crate::item::Kind;
use crate::journal::store::{self as journal_store, LoadError};
use crate::journal::{Entry, Restore, Selector, Target, restore_of};
use crate::safety::{self, MemInfo, Overcommit, OvercommitKey, Verdict};
use crate::sysctl::converge::{self, Target as SettleTarget};
use crate::sysctl::observe as sysctl_observe;
use crate::sysctl::{Expect, Observed, SysctlKey, SysctlValue};

/// What `rollback` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Show what would be restored; write nothing.
    pub dry_run: bool,
    /// Restart services whose drop-in was restored or removed and that still
    /// run (never without this).
    pub restart_services: bool,
    /// Which entries (none: all).
    pub selectors: Vec<Selector>,
    /// The overcommit gate's headroom for restored overcommit values.
    pub overcommit_headroom_percent: u8,
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put back (and, for sysctls and files, read back so).
    Restored,
    /// Dry run: this would be done.
    WouldRestore,
    /// Tried, and failed; the entry stays.
    Failed(String),
    /// A safety check refused it; the entry stays.
    Refused(String),
    /// Rollback cannot do it; the entry stays and the text says why.
    Left(String),
}

impl Step {
    pub fn as_str(&self) -> &'static str {
        match self {
            Step::Restored => "restored",
            Step::WouldRestore => "would-restore",
            Step::Failed(_) => "failed",
            Step::Refused(_) => "refused",
            Step::Left(_) => "left",
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            Step::Failed(s) | Step::Refused(s) | Step::Left(s) => Some(s),
            Step::Restored | Step::WouldRestore => None,
        }
    }
}

/// One journal entry and what rollback did with it.
#[derive(Debug, Clone)]
pub struct Restored {
    pub entry: Entry,
    pub restore: Restore,
    pub step: Step,
}

/// A service after rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitStep {
    /// Its running processes were started with holdfast's drop-in; they keep
    /// its settings until restarted.
    RestartRequired,
    Restarted,
    Failed(String),
}

impl UnitStep {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnitStep::RestartRequired => "restart-required",
            UnitStep::Restarted => "restarted",
            UnitStep::Failed(_) => "failed",
        }
    }
}

/// The result of a rollback.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub dry_run: bool,
    pub items: Vec<Restored>,
    pub units: Vec<(String, UnitStep)>,
    pub warnings: Vec<String>,
}

impl Report {
    /// Whether the host is back where the journal says it was (for the
    /// selected entries): nothing failed, refused, left or waiting for a
    /// restart, and (dry run) nothing to do.
    pub fn complete(&self) -> bool {
        self.items.iter().all(|r| r.step == Step::Restored)
            && self.units.iter().all(|(_, s)| *s == UnitStep::Restarted)
    }
}

/// Why rollback could not start.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("cannot read the originals journal: {0}")]
    Journal(#[from] LoadError),
    #[error("cannot update the originals journal: {0}")]
    Save(#[from] host::IoError),
}

/// Runs a rollback. See the module's guarantees.
pub fn run(ctx: &Context<'_>, options: &RollbackOptions) -> Result<Report, RollbackError> {
    let host = ctx.host;
    let mut journal = journal_store::load(host)?;
    let selected: Vec<Entry> = journal
        .select(&options.selectors)
        .into_iter()
        .cloned()
        .collect();
    let mut items: Vec<Restored> = selected
        .into_iter()
        .map(|entry| Restored {
            restore: restore_of(&entry),
            entry,
            step: Step::WouldRestore,
        })
        .collect();
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    // What cannot be done is said even in a dry run.
    for r in &mut items {
        match &r.restore {
            Restore::Manual(why) => r.step = Step::Left(why.clone()),
            Restore::Nothing if !options.dry_run => r.step = Step::Restored,
            _ => {}
        }
    }
    gate_overcommit(host, &mut items, options.overcommit_headroom_percent);
    if options.dry_run {
        report.items = items;
        return Ok(report);
    }

    // 1. Sysctls, converging as apply's writes do.
    restore_sysctls(host, &mut items);

    // 2. Files; a unit file among them calls for a reload.
    let mut unit_files = false;
    let mut units_with_drop_in: BTreeSet<String> = BTreeSet::new();
    for r in items.iter_mut().filter(|r| r.step == Step::WouldRestore) {
        let result = match &r.restore {
            Restore::WriteFile {
                path,
                content,
                mode,
            } => restore_file(host, path, content, *mode),
            Restore::RemoveFile(path) => {
                let abs = host.root().join(path);
                host.remove_file(&abs).map_err(|e| e.to_string())
            }
            // Restored before (sysctls) or after (runtime state) the files.
            Restore::WriteSysctl { .. }
            | Restore::SetProperties { .. }
            | Restore::WriteKernelFile { .. }
            | Restore::RemoveCgroup(_)
            | Restore::DisableController { .. }
            | Restore::StopUnit(_)
            | Restore::Nothing
            | Restore::Manual(_) => continue,
        };
        r.step = match result {
            Ok(()) => {
                if r.entry.kind == Kind::UnitFile {
                    unit_files = true;
                    if let Target::File(p) = &r.entry.target
                        && let Some(unit) = drop_in_service(p)
                    {
                        units_with_drop_in.insert(unit);
                    }
                }
                Step::Restored
            }
            Err(why) => Step::Failed(why),
        };
    }

    // 3. One daemon-reload, when a unit file changed.
    if unit_files {
        match ctx.systemd {
            Some(client) => {
                if let Err(e) = client.daemon_reload() {
                    report.warnings.push(format!(
                        "daemon-reload failed: {e}; run `systemctl daemon-reload`"
                    ));
                }
            }
            None => report.warnings.push(
                "unit files changed, and systemd was not asked (the host root is not /, or systemd is not PID 1)"
                    .to_string(),
            ),
        }
    }

    // 4. Runtime: systemd properties, cgroupfs files, cgroups (deepest
    //    first), controllers.
    restore_runtime(ctx, &mut items);

    // 5. Services still running with what holdfast's drop-in gave them.
    if let Some(client) = ctx.systemd {
        for unit in units_with_drop_in {
            match client.unit(&unit) {
                Ok(info) if info.active_state == "active" => {
                    let step = if options.restart_services {
                        match client.restart(&unit) {
                            Ok(()) => UnitStep::Restarted,
                            Err(e) => UnitStep::Failed(format!("restart failed: {e}")),
                        }
                    } else {
                        UnitStep::RestartRequired
                    };
                    report.units.push((unit, step));
                }
                Ok(_) => {}
                Err(e) => report
                    .units
                    .push((unit, UnitStep::Failed(format!("cannot ask systemd: {e}")))),
            }
        }
    }

    // 6. Slices holdfast started, now that the services are restarted.
    for r in items.iter_mut().filter(|r| r.step == Step::WouldRestore) {
        if let Restore::StopUnit(unit) = &r.restore {
            r.step = stop_if_empty(ctx, unit);
        }
    }

    // The restored entries leave the journal.
    for r in &items {
        if r.step == Step::Restored {
            journal.remove(&r.entry.target);
        }
    }
    journal_store::save(host, &journal)?;
    report.items = items;
    Ok(report)
}

/// Stops a unit holdfast started if nothing runs in it: stopping a slice
/// stops every unit inside, so a slice with processes (a service not yet
/// restarted out of it, or one someone else put there) is left, with what
/// to do. The kernel says whether anything runs below the unit's cgroup
/// (`populated` in `cgroup.events`).
fn stop_if_empty(ctx: &Context<'_>, unit: &str) -> Step {
    let Some(client) = ctx.systemd else {
        return Step::Left(format!(
            "systemd not asked (the host root is not /): stop {unit} by hand once nothing runs in it"
        ));
    };
    let info = match client.unit(unit) {
        Ok(info) => info,
        Err(e) => return Step::Failed(format!("cannot ask systemd: {e}")),
    };
    if info.active_state != "active" {
        return Step::Restored;
    }
    let Some(cg) = info.control_group.filter(|cg| cg.starts_with('/')) else {
        return Step::Left(format!(
            "systemd names no cgroup for {unit}; stop it by hand"
        ));
    };
    let events = ctx
        .host
        .root()
        .join("sys/fs/cgroup")
        .join(cg.trim_start_matches('/'))
        .join("cgroup.events");
    match host::read_optional(&events) {
        Ok(Some(text)) if populated(&text) == Some(false) => match client.stop(unit) {
            Ok(()) => Step::Restored,
            Err(e) => Step::Failed(format!("stop failed: {e}")),
        },
        Ok(Some(text)) if populated(&text) == Some(true) => Step::Left(format!(
            "processes still run in {unit} (a service not restarted out of it, or one placed there since): restart them (`--restart-services`) or move them, then `systemctl stop {unit}`"
        )),
        Ok(_) => Step::Left(format!(
            "cannot tell whether anything runs in {unit} ({} unreadable); stop it by hand once nothing does",
            events.display()
        )),
        Err(e) => Step::Left(format!("{e}; stop {unit} by hand once nothing runs in it")),
    }
}

/// The `populated` field of a cgroup's `cgroup.events`.
fn populated(events: &str) -> Option<bool> {
    events.lines().find_map(|l| match l.split_once(' ')? {
        ("populated", "0") => Some(false),
        ("populated", "1") => Some(true),
        _ => None,
    })
}

/// The service a drop-in path configures (`etc/systemd/system/X.service.d/..`).
fn drop_in_service(rel: &Path) -> Option<String> {
    let dir = rel.parent()?.file_name()?.to_str()?;
    let unit = dir.strip_suffix(".d")?;
    unit.ends_with(".service").then(|| unit.to_string())
}

fn restore_file(host: &HostRoot, rel: &Path, content: &str, mode: u32) -> Result<(), String> {
    let abs = host.root().join(rel);
    host.write_atomic(&abs, content, mode)
        .map_err(|e| e.to_string())?;
    match host::read_optional(&abs) {
        Ok(Some(now)) if now == content => Ok(()),
        Ok(_) => Err(format!(
            "restored {}, but it reads back different (another writer?)",
            abs.display()
        )),
        Err(e) => Err(format!("restored it, then could not read it back: {e}")),
    }
}

/// The overcommit gate over the restored values: switching back to strict
/// overcommit (mode 2), or lowering its limit, needs the same headroom a
/// policy's change needs.
fn gate_overcommit(host: &HostRoot, items: &mut [Restored], headroom: u8) {
    let restored = |which: &str| {
        items.iter().find_map(|r| match &r.restore {
            Restore::WriteSysctl { key, value }
                if key.as_str() == which && r.step == Step::WouldRestore =>
            {
                SysctlValue::from_kernel(value).as_single_int()
            }
            _ => None,
        })
    };
    let mode = restored("vm.overcommit_memory");
    let ratio = restored("vm.overcommit_ratio");
    let kbytes = restored("vm.overcommit_kbytes");
    if mode.is_none() && ratio.is_none() && kbytes.is_none() {
        return;
    }
    let now = |k: &str| -> u64 {
        SysctlKey::parse(k)
            .ok()
            .and_then(|k| match sysctl_observe::read_key(host, &k) {
                Observed::Value(v) => v.as_single_int(),
                _ => None,
            })
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    let current = Overcommit {
        memory: now("vm.overcommit_memory"),
        ratio: now("vm.overcommit_ratio"),
        kbytes: now("vm.overcommit_kbytes"),
    };
    let pick = |v: Option<i128>, cur: u64| v.and_then(|n| u64::try_from(n).ok()).unwrap_or(cur);
    let planned = Overcommit {
        memory: pick(mode, current.memory),
        ratio: pick(ratio, current.ratio),
        kbytes: pick(kbytes, current.kbytes),
    };
    let meminfo = std::fs::read_to_string(host.meminfo())
        .ok()
        .and_then(|t| MemInfo::parse(&t));
    let (mode_verdict, limit_verdict) =
        safety::overcommit_gate(meminfo.as_ref(), current, planned, headroom);
    for r in items.iter_mut() {
        let Restore::WriteSysctl { key, .. } = &r.restore else {
            continue;
        };
        let verdict = match OvercommitKey::from_sysctl(key.as_str()) {
            Some(OvercommitKey::Memory) => &mode_verdict,
            Some(OvercommitKey::Ratio | OvercommitKey::Kbytes) => &limit_verdict,
            None => continue,
        };
        match verdict {
            Verdict::Refused(f) => {
                r.step = Step::Refused(format!(
                    "overcommit gate: refused: strict overcommit with the original values would leave too little room ({f})"
                ));
            }
            Verdict::Unknown(why) => {
                r.step = Step::Refused(format!("overcommit gate: refused: {why}"));
            }
            Verdict::NotApplicable | Verdict::Allowed(_) => {}
        }
    }
}

/// Writes the sysctls back through [`converge::settle`]: in the write order,
/// read back after all writes, rewritten when another write disturbed them.
fn restore_sysctls(host: &HostRoot, items: &mut [Restored]) {
    let mut targets = Vec::new();
    let mut index = Vec::new();
    for (i, r) in items.iter().enumerate() {
        if r.step != Step::WouldRestore {
            continue;
        }
        if let Restore::WriteSysctl { key, value } = &r.restore {
            let value = SysctlValue::from_kernel(value);
            targets.push(SettleTarget {
                key: key.clone(),
                expect: Expect::Exact(value.clone()),
                write: Some(value),
            });
            index.push(i);
        }
    }
    if targets.is_empty() {
        return;
    }
    let outcomes = converge::settle(
        &targets,
        &mut |key, value| sysctl_observe::write_key(host, key, value).map_err(|e| e.to_string()),
        &mut |key| sysctl_observe::read_key(host, key),
    );
    for (i, outcome) in index.into_iter().zip(outcomes) {
        items[i].step = match outcome {
            converge::Outcome::Corrected { .. } | converge::Outcome::Unchanged => Step::Restored,
            converge::Outcome::WriteFailed(why) => Step::Failed(why),
            converge::Outcome::NotHeld { now, .. } => Step::Failed(format!(
                "written, but the kernel reads back {now:?} after every write of the rollback"
            )),
        };
    }
}

/// Systemd properties and holdfast's own cgroups.
fn restore_runtime(ctx: &Context<'_>, items: &mut [Restored]) {
    let abs = |p: &PathBuf| ctx.host.root().join(p);
    // cgroupfs files first, then directories deepest first, then
    // controllers (a controller in use below cannot be disabled).
    let rank = |r: &Restored| match &r.restore {
        Restore::SetProperties { .. } | Restore::WriteKernelFile { .. } => (0, 0),
        Restore::RemoveCgroup(p) => (1, usize::MAX - p.components().count()),
        Restore::DisableController {
            subtree_control, ..
        } => (2, usize::MAX - subtree_control.components().count()),
        Restore::WriteSysctl { .. }
        | Restore::WriteFile { .. }
        | Restore::RemoveFile(_)
        | Restore::StopUnit(_)
        | Restore::Nothing
        | Restore::Manual(_) => (3, 0),
    };
    let mut order: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].step == Step::WouldRestore)
        .collect();
    order.sort_by_key(|&i| rank(&items[i]));
    for i in order {
        let result = match &items[i].restore {
            Restore::SetProperties { unit, assignments } => match ctx.systemd {
                Some(c) => c
                    .set_properties_runtime(unit, assignments)
                    .map_err(|e| e.to_string()),
                None => Err("systemd not asked: the host root is not /".to_string()),
            },
            Restore::WriteKernelFile { path, value } => ctx
                .host
                .write_kernel_file(&abs(path), value)
                .map_err(|e| e.to_string()),
            Restore::RemoveCgroup(path) => ctx
                .host
                .remove_kernel_dir(&abs(path))
                .map_err(|e| e.to_string()),
            Restore::DisableController {
                subtree_control,
                controller,
            } => ctx
                .host
                .write_kernel_file(&abs(subtree_control), &format!("-{controller}"))
                .map_err(|e| e.to_string()),
            // Sysctls and files were restored before; units are stopped
            // after.
            Restore::WriteSysctl { .. }
            | Restore::WriteFile { .. }
            | Restore::RemoveFile(_)
            | Restore::StopUnit(_)
            | Restore::Nothing
            | Restore::Manual(_) => continue,
        };
        items[i].step = match result {
            Ok(()) => Step::Restored,
            Err(why) => Step::Failed(why),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert_eq!(populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(populated("frozen 0\n"), None);
    }

    #[test]
    fn a_drop_in_names_its_service_and_nothing_else_does() {
        let p = |s: &str| drop_in_service(Path::new(s));
        assert_eq!(
            p("etc/systemd/system/myapp.service.d/90-holdfast.conf").as_deref(),
            Some("myapp.service")
        );
        assert_eq!(p("etc/systemd/system/work.slice"), None);
        assert_eq!(p("etc/systemd/system.conf.d/90-holdfast.conf"), None);
        assert_eq!(p("etc/systemd/system/work.slice.d/90-holdfast.conf"), None);
    }
}
