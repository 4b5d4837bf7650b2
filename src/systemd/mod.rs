//! Talking to systemd: is it PID 1 here, what does it believe about a unit,
//! the few requests holdfast makes (daemon-reload, start, runtime
//! properties, restart on explicit request), and the changes it announces.
//! A trait only here, where the backend is not files, so tests use a double
//! (as youki does for its D-Bus client).
//!
//! The production client ([`dbus::DbusSystemd`]) talks D-Bus: no process is
//! spawned. This module holds what it needs that is pure: unit object paths,
//! typed property values, and the unit properties holdfast reads, built from
//! what `GetAll` returns.

pub mod dbus;

use crate::cgroup::knob::{cpu_max_from_systemd, parse_timespan_us};
use crate::cgroup::{Bytes, Count, CpuMax};
use crate::host::HostRoot;
use crate::limits::LimitValue;

/// Why systemd is not asked about a host root other than `/` even when
/// systemd runs there: the running systemd is this machine's, not the
/// root's. The observers put it on their items.
pub fn foreign_root_note(host: &HostRoot) -> String {
    format!(
        "the host root is {}, not /, so the running systemd is not this host's",
        host.root().display()
    )
}

/// Whether systemd is the init system of the host under `root` (what
/// sd_booted(3) checks: /run/systemd/system exists).
pub fn is_pid1(host: &HostRoot) -> bool {
    host.path("run/systemd/system").is_dir()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("systemd {request}: {message}")]
pub struct SystemdError {
    /// What was asked, e.g. `StartUnit go-app.slice`.
    pub request: String,
    pub message: String,
}

impl SystemdError {
    pub fn new(request: impl Into<String>, message: impl Into<String>) -> SystemdError {
        SystemdError {
            request: request.into(),
            message: message.into(),
        }
    }
}

/// What systemd says about a unit (a subset of its D-Bus properties).
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
    /// When the main process was forked (`ExecMainStartTimestampMonotonic`)
    /// and, on systemd 256 and later, when it exec'd the unit's program
    /// (`ExecMainHandoffTimestampMonotonic`), in CLOCK_MONOTONIC µs; `None`
    /// where systemd has no such property.
    pub exec_main_start_us: Option<u64>,
    pub exec_main_handoff_us: Option<u64>,
}

impl UnitInfo {
    /// Whether systemd says the main process has not exec'd the unit's
    /// program yet: on 256 and later the handoff is older than the fork
    /// (or none at all). `false` where systemd does not say (252 and
    /// before), where the process's name has to tell.
    pub fn awaits_handoff(&self) -> bool {
        match (self.exec_main_handoff_us, self.exec_main_start_us) {
            (Some(0), _) => true,
            (Some(handoff), Some(start)) => handoff < start,
            _ => false,
        }
    }
}

/// systemd's "infinity" for 64-bit properties (`UINT64_MAX`).
pub const INFINITY: u64 = u64::MAX;

/// One property value as D-Bus carries it, for the few types holdfast reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Str(String),
    U64(u64),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
}

/// The D-Bus interface of a unit's type, which holds its cgroup and
/// resource properties: `org.freedesktop.systemd1.Service` for
/// `x.service`, `....Slice` for `x.slice`; none for other types holdfast
/// never manages.
pub fn type_interface(unit: &str) -> Option<&'static str> {
    let suffix = unit.rsplit_once('.')?.1;
    Some(match suffix {
        "service" => "org.freedesktop.systemd1.Service",
        "slice" => "org.freedesktop.systemd1.Slice",
        "scope" => "org.freedesktop.systemd1.Scope",
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        "swap" => "org.freedesktop.systemd1.Swap",
        _ => return None,
    })
}

impl UnitInfo {
    /// Builds the view from the properties `GetAll` returned for the unit's
    /// `Unit` interface and for its type's interface (either order; unknown
    /// names are ignored). Pure.
    pub fn from_properties<K: AsRef<str>>(
        props: impl IntoIterator<Item = (K, PropValue)>,
    ) -> UnitInfo {
        let mut info = UnitInfo::default();
        let mut quota_per_sec: Option<u64> = None;
        let mut period: Option<u64> = None;
        let mut has_quota = false;
        let string = |v: PropValue| match v {
            PropValue::Str(s) if !s.is_empty() => Some(s),
            _ => None,
        };
        let number = |v: &PropValue| match v {
            PropValue::U64(n) => Some(*n),
            PropValue::U32(n) => Some(u64::from(*n)),
            _ => None,
        };
        for (name, value) in props {
            match name.as_ref() {
                "LoadState" => info.load_state = string(value).unwrap_or_default(),
                "ActiveState" => info.active_state = string(value).unwrap_or_default(),
                "MainPID" => {
                    info.main_pid = number(&value)
                        .filter(|p| *p > 0)
                        .and_then(|p| u32::try_from(p).ok());
                }
                "ControlGroup" => info.control_group = string(value),
                "ExecMainStartTimestampMonotonic" => info.exec_main_start_us = number(&value),
                "ExecMainHandoffTimestampMonotonic" => {
                    info.exec_main_handoff_us = number(&value);
                }
                "LimitNOFILE" => info.limit_nofile_hard = number(&value).map(rlimit),
                "LimitNOFILESoft" => info.limit_nofile_soft = number(&value).map(rlimit),
                "DropInPaths" => {
                    if let PropValue::Strs(paths) = value {
                        info.drop_in_paths = paths;
                    }
                }
                "NeedDaemonReload" => info.need_daemon_reload = value == PropValue::Bool(true),
                "MemoryMax" => info.memory_max = number(&value).map(bytes),
                "MemoryHigh" => info.memory_high = number(&value).map(bytes),
                "CPUQuotaPerSecUSec" => {
                    has_quota = true;
                    quota_per_sec = number(&value).filter(|n| *n != INFINITY);
                }
                "CPUQuotaPeriodUSec" => period = number(&value).filter(|n| *n != INFINITY),
                "TasksMax" => {
                    info.tasks_max = number(&value).map(|n| {
                        if n == INFINITY {
                            Count::Max
                        } else {
                            Count::Value(n)
                        }
                    });
                }
                "FragmentPath" => info.fragment_path = string(value),
                "Slice" => info.slice = string(value),
                _ => {}
            }
        }
        if has_quota {
            info.cpu_max = Some(cpu_max_from_systemd(quota_per_sec, period));
        }
        info
    }
}

fn bytes(n: u64) -> Bytes {
    if n == INFINITY {
        Bytes::Max
    } else {
        Bytes::Value(n)
    }
}

fn rlimit(n: u64) -> LimitValue {
    // RLIM_INFINITY is UINT64_MAX; anything beyond i64 is unlimited too.
    i64::try_from(n).map_or(LimitValue::Unlimited, LimitValue::Value)
}

/// The manager's `DefaultLimitNOFILESoft`/`DefaultLimitNOFILE`.
pub fn default_limit_nofile(soft: u64, hard: u64) -> (LimitValue, LimitValue) {
    (rlimit(soft), rlimit(hard))
}

/// A unit's D-Bus object path, computed as systemd does (`bus_label_escape`:
/// every byte but letters, and digits after the first, becomes `_XX`), so
/// that no round trip is needed to find it:
/// `go-app.slice` → `/org/freedesktop/systemd1/unit/go_2dapp_2eslice`.
pub fn unit_object_path(unit: &str) -> String {
    let mut out = String::from(UNIT_PATH_PREFIX);
    if unit.is_empty() {
        out.push('_');
        return out;
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// The unit an object path names (the reverse of [`unit_object_path`]), if
/// it is a unit's path.
pub fn unit_from_object_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    if label.is_empty() || label.contains('/') {
        return None;
    }
    if label == "_" {
        return Some(String::new());
    }
    let raw = label.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'_' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A runtime property assignment, typed as `SetUnitProperties` wants it.
/// The planner speaks systemd's directive text (`MemoryMax=104857600`,
/// `CPUQuota=10%`, `CPUQuotaPeriodSec=1000000us`, `TasksMax=infinity`), the
/// same text `systemctl set-property` takes; [`UnitProperty::parse`] is the
/// one place that turns it into D-Bus values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitProperty {
    MemoryMax(u64),
    MemoryHigh(u64),
    /// `CPUQuota=` as CPU time per second of wall time, in µs.
    CpuQuotaPerSecUSec(u64),
    CpuQuotaPeriodUSec(u64),
    TasksMax(u64),
}

impl UnitProperty {
    /// The D-Bus property name.
    pub fn name(self) -> &'static str {
        match self {
            UnitProperty::MemoryMax(_) => "MemoryMax",
            UnitProperty::MemoryHigh(_) => "MemoryHigh",
            UnitProperty::CpuQuotaPerSecUSec(_) => "CPUQuotaPerSecUSec",
            UnitProperty::CpuQuotaPeriodUSec(_) => "CPUQuotaPeriodUSec",
            UnitProperty::TasksMax(_) => "TasksMax",
        }
    }

    /// The value (every one of these is a `t`, `UINT64_MAX` for infinity).
    pub fn value(self) -> u64 {
        match self {
            UnitProperty::MemoryMax(n)
            | UnitProperty::MemoryHigh(n)
            | UnitProperty::CpuQuotaPerSecUSec(n)
            | UnitProperty::CpuQuotaPeriodUSec(n)
            | UnitProperty::TasksMax(n) => n,
        }
    }

    /// Parses one `Name=value` assignment. Pure.
    pub fn parse(assignment: &str) -> Result<UnitProperty, String> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("{assignment:?} is not NAME=VALUE"))?;
        let bad = || format!("{name}: cannot read {value:?}");
        let count = || -> Result<u64, String> {
            match value {
                "infinity" | "" => Ok(INFINITY),
                n => n.parse().map_err(|_| bad()),
            }
        };
        match name {
            "MemoryMax" => count().map(UnitProperty::MemoryMax),
            "MemoryHigh" => count().map(UnitProperty::MemoryHigh),
            "TasksMax" => count().map(UnitProperty::TasksMax),
            "CPUQuota" => {
                if value.is_empty() {
                    return Ok(UnitProperty::CpuQuotaPerSecUSec(INFINITY));
                }
                let percent = value.strip_suffix('%').ok_or_else(bad)?;
                // Hundredths of a percent, in integers: 12.34% is 1234, i.e.
                // 123400 µs of CPU per second.
                let (whole, frac) = percent.split_once('.').unwrap_or((percent, ""));
                if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let whole: u64 = whole.parse().map_err(|_| bad())?;
                let frac: u64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
                let permyriad = whole.checked_mul(100).and_then(|w| w.checked_add(frac));
                permyriad
                    .and_then(|p| p.checked_mul(100))
                    .map(UnitProperty::CpuQuotaPerSecUSec)
                    .ok_or_else(bad)
            }
            "CPUQuotaPeriodSec" => match value {
                "infinity" | "" => Ok(UnitProperty::CpuQuotaPeriodUSec(INFINITY)),
                v => parse_timespan_us(v)
                    .flatten()
                    .map(UnitProperty::CpuQuotaPeriodUSec)
                    .ok_or_else(bad),
            },
            other => Err(format!(
                "{other} is not a property holdfast sets at runtime"
            )),
        }
    }
}

/// Something systemd announced that may change what holdfast reads of
/// units. Events are reasons to re-read, never the truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitEvent {
    /// A unit's properties changed (`PropertiesChanged` on its object, or a
    /// job on it finished).
    Changed(String),
    /// The manager started (`true`) or finished (`false`) a daemon-reload:
    /// any unit may have changed.
    Reloading(bool),
    /// Unit files were enabled, disabled, linked or masked.
    UnitFilesChanged,
    /// Announcements may have been missed (the connection to systemd was
    /// lost and made again): only a full read is sure.
    Lost,
}

/// Where a client delivers [`UnitEvent`]s, from a thread of its own.
/// Returns `false` when nobody listens any more (the client then stops).
pub type EventSink = Box<dyn Fn(UnitEvent) -> bool + Send + Sync>;

/// The requests holdfast makes of systemd. `Send + Sync`: the daemon's loop
/// thread owns one.
pub trait SystemdClient: Send + Sync {
    fn unit(&self, unit: &str) -> Result<UnitInfo, SystemdError>;

    /// [`SystemdClient::unit`] for several units, in their order. A client
    /// may ask for them all at once instead of one after another.
    fn units(&self, units: &[&str]) -> Vec<Result<UnitInfo, SystemdError>> {
        units.iter().map(|u| self.unit(u)).collect()
    }
    /// The manager's `DefaultLimitNOFILESoft` and `DefaultLimitNOFILE`.
    fn default_limit_nofile(&self) -> Result<Option<(LimitValue, LimitValue)>, SystemdError>;
    /// Reloads the manager's configuration; returns when the reload is done.
    fn daemon_reload(&self) -> Result<(), SystemdError>;
    /// Starts a unit (holdfast starts its slices so their cgroups exist);
    /// returns when its job is done.
    fn start(&self, unit: &str) -> Result<(), SystemdError>;
    /// Stops a unit; returns when its job is done. Only rollback calls it,
    /// on a slice holdfast started, once nothing runs in it.
    fn stop(&self, unit: &str) -> Result<(), SystemdError>;
    /// Changes properties of a running unit for this boot only
    /// (`SetUnitProperties(runtime=true)`, what `systemctl set-property
    /// --runtime` does): the sanctioned way to change a cgroup systemd owns.
    /// `assignments` are directives, `MemoryMax=104857600`
    /// ([`UnitProperty::parse`]).
    fn set_properties_runtime(
        &self,
        unit: &str,
        assignments: &[String],
    ) -> Result<(), SystemdError>;
    /// The service units that are running now.
    fn running_services(&self) -> Result<Vec<String>, SystemdError>;
    /// Restarts a unit. Only ever called on an explicit request
    /// (`apply --restart-services`); returns when the new main process runs
    /// its program (with a deadline).
    fn restart(&self, unit: &str) -> Result<(), SystemdError>;
    /// Delivers systemd's announcements about units to `sink` from now on,
    /// from a thread of the client's, until `sink` returns `false`. After a
    /// lost connection the client reconnects and delivers
    /// [`UnitEvent::Lost`] first.
    fn subscribe(&self, sink: EventSink) -> Result<(), SystemdError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> PropValue {
        PropValue::Str(v.into())
    }

    #[test]
    fn unit_info_from_dbus_properties() {
        let info = UnitInfo::from_properties([
            ("LoadState", s("loaded")),
            ("ActiveState", s("active")),
            ("MainPID", PropValue::U32(4242)),
            ("ControlGroup", s("/go.slice/go-app.slice/myapp.service")),
            ("LimitNOFILE", PropValue::U64(524288)),
            ("LimitNOFILESoft", PropValue::U64(1024)),
            (
                "DropInPaths",
                PropValue::Strs(vec![
                    "/etc/systemd/system/myapp.service.d/90-holdfast.conf".into(),
                    "/run/systemd/system.control/myapp.service.d/50-x.conf".into(),
                ]),
            ),
            ("NeedDaemonReload", PropValue::Bool(false)),
            ("Unknown", PropValue::Bool(true)),
        ]);
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
        assert_eq!(info.cpu_max, None, "no quota property, no cpu.max view");

        let slice = UnitInfo::from_properties([
            ("MemoryMax", PropValue::U64(104_857_600)),
            ("MemoryHigh", PropValue::U64(INFINITY)),
            ("CPUQuotaPerSecUSec", PropValue::U64(100_000)),
            ("CPUQuotaPeriodUSec", PropValue::U64(1_000_000)),
            ("TasksMax", PropValue::U64(512)),
        ]);
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
        let unlimited = UnitInfo::from_properties([
            ("CPUQuotaPerSecUSec", PropValue::U64(INFINITY)),
            ("CPUQuotaPeriodUSec", PropValue::U64(INFINITY)),
            ("TasksMax", PropValue::U64(INFINITY)),
        ]);
        assert_eq!(
            unlimited.cpu_max,
            Some(CpuMax {
                quota_us: None,
                period_us: 100_000
            })
        );
        assert_eq!(unlimited.tasks_max, Some(Count::Max));
        let stopped = UnitInfo::from_properties([
            ("MainPID", PropValue::U32(0)),
            ("ControlGroup", s("")),
            ("LimitNOFILE", PropValue::U64(INFINITY)),
        ]);
        assert_eq!(stopped.main_pid, None);
        assert_eq!(stopped.control_group, None);
        assert_eq!(stopped.limit_nofile_hard, Some(LimitValue::Unlimited));
    }

    /// systemd 256 and later say when the main process exec'd the unit's
    /// program; until then (and while the handoff is the previous run's)
    /// the process is systemd's. 252 has no such property.
    #[test]
    fn the_handoff_says_whether_the_program_runs_yet() {
        let at = |start: u64, handoff: Option<u64>| {
            let mut props = vec![("ExecMainStartTimestampMonotonic", PropValue::U64(start))];
            if let Some(h) = handoff {
                props.push(("ExecMainHandoffTimestampMonotonic", PropValue::U64(h)));
            }
            UnitInfo::from_properties(props)
        };
        assert!(at(5_000_000, Some(0)).awaits_handoff());
        assert!(at(5_000_000, Some(1_000_000)).awaits_handoff());
        assert!(!at(5_000_000, Some(5_100_000)).awaits_handoff());
        assert!(!at(5_000_000, None).awaits_handoff());
    }

    #[test]
    fn object_paths_escape_as_systemd_does() {
        for (unit, path) in [
            (
                "go-app.slice",
                "/org/freedesktop/systemd1/unit/go_2dapp_2eslice",
            ),
            (
                "systemd-journald.service",
                "/org/freedesktop/systemd1/unit/systemd_2djournald_2eservice",
            ),
            (
                "0day@x1.service",
                "/org/freedesktop/systemd1/unit/_30day_40x1_2eservice",
            ),
            ("", "/org/freedesktop/systemd1/unit/_"),
        ] {
            assert_eq!(unit_object_path(unit), path);
            assert_eq!(unit_from_object_path(path).as_deref(), Some(unit));
        }
        assert_eq!(unit_from_object_path("/org/freedesktop/systemd1"), None);
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/job/42"),
            None
        );
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/unit/a_2"),
            None
        );
    }

    #[test]
    fn assignments_become_typed_values() {
        let p = |a: &str| UnitProperty::parse(a).map(|p| (p.name(), p.value()));
        assert_eq!(p("MemoryMax=104857600"), Ok(("MemoryMax", 104_857_600)));
        assert_eq!(p("MemoryHigh=infinity"), Ok(("MemoryHigh", INFINITY)));
        assert_eq!(p("TasksMax=512"), Ok(("TasksMax", 512)));
        assert_eq!(p("TasksMax=infinity"), Ok(("TasksMax", INFINITY)));
        assert_eq!(p("CPUQuota=10%"), Ok(("CPUQuotaPerSecUSec", 100_000)));
        assert_eq!(p("CPUQuota=12.34%"), Ok(("CPUQuotaPerSecUSec", 123_400)));
        assert_eq!(p("CPUQuota=250%"), Ok(("CPUQuotaPerSecUSec", 2_500_000)));
        assert_eq!(p("CPUQuota="), Ok(("CPUQuotaPerSecUSec", INFINITY)));
        assert_eq!(
            p("CPUQuotaPeriodSec=1000000us"),
            Ok(("CPUQuotaPeriodUSec", 1_000_000))
        );
        assert_eq!(
            p("CPUQuotaPeriodSec=100ms"),
            Ok(("CPUQuotaPeriodUSec", 100_000))
        );
        assert!(p("CPUQuota=10").is_err());
        assert!(p("CPUQuota=1.234%").is_err());
        assert!(p("MemoryMax=lots").is_err());
        assert!(p("Slice=x.slice").is_err());
        assert!(p("MemoryMax").is_err());
        // Every directive the cgroup planner emits parses.
        use crate::cgroup::knob::Knob;
        for knob in [
            Knob::MemoryMax(Bytes::Value(1 << 30)),
            Knob::MemoryHigh(Bytes::Max),
            Knob::PidsMax(Count::Max),
            Knob::PidsMax(Count::Value(7)),
            Knob::CpuMax(CpuMax {
                quota_us: Some(12_345),
                period_us: 100_000,
            }),
            Knob::CpuMax(CpuMax {
                quota_us: None,
                period_us: 100_000,
            }),
        ] {
            for a in knob.systemd_properties() {
                assert!(UnitProperty::parse(&a).is_ok(), "{a}");
            }
        }
    }
}
