//! Talking to systemd: is it PID 1 here, what does it believe about a unit,
//! and the few requests holdfast makes (daemon-reload, restart on explicit
//! request). A trait only here, where the backend is not files, so tests use
//! a double (as youki does for its D-Bus client).
//!
//! The production client runs `systemctl`: it is present wherever systemd is
//! PID 1, holdfast asks rarely (once per pass per managed unit, one reload
//! per pass at most), and its `show` output is a stable key=value format.

pub mod systemctl;

use crate::cgroup::knob::{cpu_max_from_systemd, parse_timespan_us};
use crate::cgroup::{Bytes, Count, CpuMax};
use crate::host::HostRoot;
use crate::limits::LimitValue;

/// Whether systemd is the init system of the host under `root` (what
/// sd_booted(3) checks: /run/systemd/system exists).
pub fn is_pid1(host: &HostRoot) -> bool {
    host.path("run/systemd/system").is_dir()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("systemctl {args}: {message}")]
pub struct SystemdError {
    pub args: String,
    pub message: String,
}

/// What systemd says about a unit (a subset of `systemctl show`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitInfo {
    /// `loaded`, `not-found`, `masked`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, ...
    pub active_state: String,
    /// The main process, when the unit runs one.
    pub main_pid: Option<u32>,
    /// The unit's cgroup path relative to the cgroup root, e.g.
    /// `/system.slice/myapp.service` (never derived from the name).
    pub control_group: Option<String>,
    /// `LimitNOFILESoft=` and `LimitNOFILE=` (hard) as systemd will apply
    /// them at the next start.
    pub limit_nofile_soft: Option<LimitValue>,
    pub limit_nofile_hard: Option<LimitValue>,
    /// Drop-ins systemd has loaded for the unit, in order (a later one
    /// overrides an earlier one).
    pub drop_in_paths: Vec<String>,
    /// systemd's unit files changed on disk since the last daemon-reload.
    pub need_daemon_reload: bool,
    /// Resource-control properties, as systemd will apply them.
    pub memory_max: Option<Bytes>,
    pub memory_high: Option<Bytes>,
    pub cpu_max: Option<CpuMax>,
    pub tasks_max: Option<Count>,
    /// The unit file systemd loaded.
    pub fragment_path: Option<String>,
    /// The slice systemd puts the unit in (`Slice=`).
    pub slice: Option<String>,
}

/// The properties `unit` asks for.
pub const SHOW_PROPERTIES: &[&str] = &[
    "LoadState",
    "ActiveState",
    "MainPID",
    "ControlGroup",
    "LimitNOFILE",
    "LimitNOFILESoft",
    "DropInPaths",
    "NeedDaemonReload",
    "MemoryMax",
    "MemoryHigh",
    "CPUQuotaPerSecUSec",
    "CPUQuotaPeriodUSec",
    "TasksMax",
    "FragmentPath",
    "Slice",
];

/// Parses `systemctl show -p ...` output. Pure.
pub fn parse_show(text: &str) -> UnitInfo {
    let mut info = UnitInfo::default();
    let mut quota_per_sec: Option<Option<u64>> = None;
    let mut period: Option<Option<u64>> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "LoadState" => info.load_state = v.to_string(),
            "ActiveState" => info.active_state = v.to_string(),
            "MainPID" => info.main_pid = v.parse().ok().filter(|p| *p > 0),
            "ControlGroup" => info.control_group = (!v.is_empty()).then(|| v.to_string()),
            "LimitNOFILE" => info.limit_nofile_hard = parse_rlimit(v),
            "LimitNOFILESoft" => info.limit_nofile_soft = parse_rlimit(v),
            "DropInPaths" => {
                info.drop_in_paths = v.split_whitespace().map(str::to_string).collect()
            }
            "NeedDaemonReload" => info.need_daemon_reload = v == "yes",
            "MemoryMax" => info.memory_max = parse_bytes(v),
            "MemoryHigh" => info.memory_high = parse_bytes(v),
            "CPUQuotaPerSecUSec" => quota_per_sec = parse_timespan_us(v),
            "CPUQuotaPeriodUSec" => period = parse_timespan_us(v),
            "TasksMax" => {
                info.tasks_max = match v {
                    "infinity" => Some(Count::Max),
                    n => n.parse().ok().map(Count::Value),
                }
            }
            "FragmentPath" => info.fragment_path = (!v.is_empty()).then(|| v.to_string()),
            "Slice" => info.slice = (!v.is_empty()).then(|| v.to_string()),
            _ => {}
        }
    }
    if let Some(q) = quota_per_sec {
        info.cpu_max = Some(cpu_max_from_systemd(q, period.flatten()));
    }
    info
}

fn parse_bytes(v: &str) -> Option<Bytes> {
    match v {
        "infinity" => Some(Bytes::Max),
        n => n.parse().ok().map(Bytes::Value),
    }
}

/// The unit names of `systemctl list-units --no-legend --plain` (first
/// column; a leading `●` marks failed units in some versions).
pub fn parse_unit_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| *w != "●" && *w != "*")
                .map(str::to_string)
        })
        .collect()
}

/// Parses the manager's `DefaultLimitNOFILESoft=`/`DefaultLimitNOFILE=`.
pub fn parse_default_limit_nofile(text: &str) -> Option<(LimitValue, LimitValue)> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(parse_rlimit)
    };
    Some((get("DefaultLimitNOFILESoft")?, get("DefaultLimitNOFILE")?))
}

fn parse_rlimit(v: &str) -> Option<LimitValue> {
    match v {
        "infinity" => Some(LimitValue::Unlimited),
        // RLIM_INFINITY printed as a number by older systemd versions.
        "18446744073709551615" => Some(LimitValue::Unlimited),
        n => n.parse().ok().map(LimitValue::Value),
    }
}

/// The requests holdfast makes of systemd. `Send + Sync`: the daemon's loop
/// thread owns one.
pub trait SystemdClient: Send + Sync {
    fn unit(&self, unit: &str) -> Result<UnitInfo, SystemdError>;
    /// The manager's `DefaultLimitNOFILESoft` and `DefaultLimitNOFILE`.
    fn default_limit_nofile(&self) -> Result<Option<(LimitValue, LimitValue)>, SystemdError>;
    fn daemon_reload(&self) -> Result<(), SystemdError>;
    /// Starts a unit (holdfast starts its slices so their cgroups exist).
    fn start(&self, unit: &str) -> Result<(), SystemdError>;
    /// Changes properties of a running unit for this boot only
    /// (`SetUnitProperties(runtime=true)`, what `systemctl set-property
    /// --runtime` does): the sanctioned way to change a cgroup systemd owns.
    fn set_properties_runtime(
        &self,
        unit: &str,
        assignments: &[String],
    ) -> Result<(), SystemdError>;
    /// The service units that are running now.
    fn running_services(&self) -> Result<Vec<String>, SystemdError>;
    /// Restarts a unit. Only ever called on an explicit request
    /// (`apply --restart-services`).
    fn restart(&self, unit: &str) -> Result<(), SystemdError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show() {
        let info = parse_show(
            "LoadState=loaded\nActiveState=active\nMainPID=4242\nControlGroup=/go.slice/go-app.slice/myapp.service\nLimitNOFILE=524288\nLimitNOFILESoft=1024\nDropInPaths=/etc/systemd/system/myapp.service.d/90-holdfast.conf /run/systemd/system.control/myapp.service.d/50-x.conf\nNeedDaemonReload=no\n",
        );
        assert_eq!(info.load_state, "loaded");
        assert_eq!(info.main_pid, Some(4242));
        assert_eq!(
            info.control_group.as_deref(),
            Some("/go.slice/go-app.slice/myapp.service")
        );
        assert_eq!(info.limit_nofile_hard, Some(LimitValue::Value(524288)));
        assert_eq!(info.limit_nofile_soft, Some(LimitValue::Value(1024)));
        assert_eq!(info.drop_in_paths.len(), 2);
        assert!(!info.need_daemon_reload);
        let slice = parse_show(
            "MemoryMax=104857600\nMemoryHigh=infinity\nCPUQuotaPerSecUSec=100ms\nCPUQuotaPeriodUSec=1s\nTasksMax=512\n",
        );
        assert_eq!(slice.memory_max, Some(Bytes::Value(104_857_600)));
        assert_eq!(slice.memory_high, Some(Bytes::Max));
        assert_eq!(
            slice.cpu_max,
            Some(CpuMax {
                quota_us: Some(100_000),
                period_us: 1_000_000
            })
        );
        assert_eq!(slice.tasks_max, Some(Count::Value(512)));
        let unlimited = parse_show("CPUQuotaPerSecUSec=infinity\nCPUQuotaPeriodUSec=infinity\n");
        assert_eq!(
            unlimited.cpu_max,
            Some(CpuMax {
                quota_us: None,
                period_us: 100_000
            })
        );
        let stopped = parse_show("MainPID=0\nControlGroup=\nLimitNOFILE=infinity\n");
        assert_eq!(stopped.main_pid, None);
        assert_eq!(stopped.control_group, None);
        assert_eq!(stopped.limit_nofile_hard, Some(LimitValue::Unlimited));
        assert_eq!(
            parse_unit_list(
                "cron.service loaded active running Regular background program processing daemon\n● x.service loaded active running X\n"
            ),
            ["cron.service", "x.service"]
        );
        assert_eq!(
            parse_default_limit_nofile("DefaultLimitNOFILESoft=1024\nDefaultLimitNOFILE=524288\n"),
            Some((LimitValue::Value(1024), LimitValue::Value(524288)))
        );
    }
}
