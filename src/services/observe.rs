//! Reading the services' side of the host: holdfast's drop-ins, systemd's
//! view of each managed unit, and /proc/PID/limits of its processes.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    DROP_IN_NAME, ProcLimits, ServicesHost, UnitObservation, managed_units, parse_proc_nofile,
};
use crate::host::{self, HostRoot, IoError};
use crate::policy::Policy;
use crate::posture::{ProcStatus, parse_environ};
use crate::systemd::{self, SystemdClient, SystemdError, UnitInfo};

pub fn observe(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    policy: &Policy,
) -> (ServicesHost, Vec<IoError>) {
    let mut warnings = Vec::new();
    let systemd = systemd::is_pid1(host);
    let mut out = ServicesHost {
        systemd,
        not_queried: None,
        cpus: online_cpus(host),
        manager_conf: {
            let path = host.path(&format!("etc/systemd/system.conf.d/{DROP_IN_NAME}"));
            let current = host::read_optional_or_warn(&path, &mut warnings);
            (path, current)
        },
        ..ServicesHost::default()
    };
    if !systemd {
        return (out, warnings);
    }
    if client.is_none() {
        out.not_queried = Some(systemd::foreign_root_note(host));
    }
    out.units = BTreeMap::new();
    let units: Vec<&str> = managed_units(policy)
        .iter()
        .map(|r| r.unit.as_str())
        .collect();
    read_units(host, client, &units, &mut out, &mut warnings);
    if let Some(client) = client
        && policy.service_defaults.limit_nofile.is_some()
    {
        out.manager_default_nofile = client.default_limit_nofile().ok().flatten();
    }
    (out, warnings)
}

/// Reads again only the managed units among `units` (their drop-ins,
/// systemd's view, their processes) into an earlier observation: what an
/// event about those units calls for. Nothing else is read, the manager's
/// defaults included.
pub fn observe_units(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    policy: &Policy,
    units: &BTreeSet<String>,
    out: &mut ServicesHost,
) -> Vec<IoError> {
    let mut warnings = Vec::new();
    if !out.systemd {
        return warnings;
    }
    let managed: Vec<&str> = managed_units(policy)
        .iter()
        .map(|r| r.unit.as_str())
        .filter(|u| units.contains(*u))
        .collect();
    read_units(host, client, &managed, out, &mut warnings);
    warnings
}

/// Managed units: holdfast's drop-ins, and what systemd (asked for all of
/// them at once) and the units' processes say.
fn read_units(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    units: &[&str],
    out: &mut ServicesHost,
    warnings: &mut Vec<IoError>,
) {
    for unit in units {
        let path = host.path(&format!("etc/systemd/system/{unit}.d/{DROP_IN_NAME}"));
        let current = host::read_optional_or_warn(&path, warnings);
        out.drop_ins.insert((*unit).to_string(), (path, current));
    }
    if let Some(client) = client {
        for (unit, info) in units.iter().zip(client.units(units)) {
            out.units
                .insert((*unit).to_string(), observe_unit(host, info));
        }
    }
}

/// The number of online CPUs, from `/sys/devices/system/cpu/online`
/// (`0-3,6`); at least 1.
pub fn online_cpus(host: &HostRoot) -> u32 {
    let text =
        std::fs::read_to_string(host.path("sys/devices/system/cpu/online")).unwrap_or_default();
    let count: u32 = text
        .trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => {
                b.parse::<u32>()
                    .unwrap_or(0)
                    .saturating_sub(a.parse().unwrap_or(0))
                    + 1
            }
            None => 1,
        })
        .sum();
    count.max(1)
}

fn observe_unit(host: &HostRoot, info: Result<UnitInfo, SystemdError>) -> UnitObservation {
    match info {
        Ok(info) => {
            let processes = unit_pids(host, &info)
                .into_iter()
                .map(|pid| ProcLimits {
                    pid,
                    nofile: std::fs::read_to_string(host.path(&format!("proc/{pid}/limits")))
                        .ok()
                        .as_deref()
                        .and_then(parse_proc_nofile),
                    status: std::fs::read_to_string(host.path(&format!("proc/{pid}/status")))
                        .ok()
                        .as_deref()
                        .and_then(ProcStatus::parse),
                    environ: std::fs::read(host.path(&format!("proc/{pid}/environ")))
                        .ok()
                        .map(|b| parse_environ(&b)),
                })
                .collect();
            UnitObservation {
                info: Ok(info),
                processes,
            }
        }
        Err(e) => UnitObservation {
            info: Err(e.to_string()),
            processes: Vec::new(),
        },
    }
}

/// MainPID and every PID in the unit's cgroup (from its `ControlGroup`
/// property; on a hybrid host, in the `systemd` named hierarchy).
pub fn unit_pids(host: &HostRoot, info: &UnitInfo) -> Vec<u32> {
    let mut pids: Vec<u32> = info.main_pid.into_iter().collect();
    if let Some(cg) = &info.control_group {
        let rel = cg.trim_start_matches('/');
        for base in [
            "sys/fs/cgroup",
            "sys/fs/cgroup/unified",
            "sys/fs/cgroup/systemd",
        ] {
            let procs = host.path(&format!("{base}/{rel}/cgroup.procs"));
            if let Ok(text) = std::fs::read_to_string(&procs) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                break;
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}
