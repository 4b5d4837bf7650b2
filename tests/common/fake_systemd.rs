//! A systemd double for fake-root tests. It behaves like systemd where
//! holdfast can see it: `daemon-reload` reads holdfast's drop-ins and slice
//! units into unit properties (and re-applies an active slice's cgroup
//! files, undoing raw writes, as systemd does); runtime properties survive
//! reloads; `start` creates a slice's cgroup (dashes nest: `go-app.slice`
//! lives at `go.slice/go-app.slice`) with controllers enabled on its path;
//! `restart` gives a service's processes the configured limits and moves
//! them into its slice. It announces changes as systemd does on D-Bus
//! (`subscribe`): a reload as `Reloading(true)`, each unit it touched, then
//! `Reloading(false)`; a start, a restart or runtime properties as the
//! unit's change; tests announce others' changes with `emit`.

#![allow(
    dead_code,
    reason = "each test crate uses its own share of these helpers"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use holdfast::cgroup::knob::cpu_max_from_systemd;
use holdfast::cgroup::{Bytes, Count, CpuMax};
use holdfast::limits::LimitValue;
use holdfast::systemd::{EventSink, SystemdClient, SystemdError, UnitEvent, UnitInfo};

use super::FakeHost;

/// A `RefCell`-like cell that is `Sync`, so the double can be shared with
/// the daemon's loop thread.
pub struct RefCell<T>(Mutex<T>);

impl<T> RefCell<T> {
    pub fn new(value: T) -> Self {
        RefCell(Mutex::new(value))
    }
    pub fn borrow(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
    pub fn borrow_mut(&self) -> MutexGuard<'_, T> {
        self.borrow()
    }
}

/// The fake host's root, as the double needs it (it outlives no test dir:
/// the test keeps its `FakeHost`).
pub struct Root(PathBuf);

impl Root {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
}

pub struct FakeSystemd {
    pub host: Root,
    pub units: RefCell<BTreeMap<String, UnitInfo>>,
    /// Every request, in order: `reload`, `start X`, `restart X`, `set X a b`.
    pub calls: RefCell<Vec<String>>,
    /// Every unit whose properties were asked for, in order (`unit()`).
    pub queries: RefCell<Vec<String>>,
    /// Every request of any kind (properties, manager defaults, the unit
    /// list, actions): D-Bus round trips.
    pub round_trips: RefCell<usize>,
    /// `set-property --runtime` assignments per unit (they survive reloads).
    runtime: RefCell<BTreeMap<String, Vec<String>>>,
    /// Who listens to announcements.
    sinks: RefCell<Vec<EventSink>>,
    /// Closed: every request for a unit's properties waits until it opens,
    /// as systemd answers nothing while it reloads.
    gate: (Mutex<bool>, Condvar),
}

pub fn proc_limits(soft: i64, hard: i64) -> String {
    format!(
        "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            {soft:<20} {hard:<20} files     \n"
    )
}

/// The cgroup path systemd gives a slice: every dash-separated prefix nests.
pub fn slice_cgroup(unit: &str) -> String {
    let stem = unit.trim_end_matches(".slice");
    let parts: Vec<&str> = stem.split('-').collect();
    let mut path = String::new();
    for i in 1..=parts.len() {
        path.push_str(&format!("/{}.slice", parts[..i].join("-")));
    }
    path
}

impl FakeSystemd {
    /// A host with systemd as PID 1, cgroup v2, and `myapp.service` running
    /// as PIDs 4242 and 4243 with nofile 1024:524288 in system.slice.
    pub fn new(host: &FakeHost) -> Self {
        std::fs::create_dir_all(host.path("run/systemd/system")).unwrap();
        host.write(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        host.write("sys/fs/cgroup/cgroup.subtree_control", "memory pids\n");
        host.write("proc/4242/limits", &proc_limits(1024, 524288));
        host.write("proc/4243/limits", &proc_limits(1024, 524288));
        host.write(
            "sys/fs/cgroup/system.slice/myapp.service/cgroup.procs",
            "4242\n4243\n",
        );
        let mut units = BTreeMap::new();
        units.insert(
            "myapp.service".to_string(),
            UnitInfo {
                load_state: "loaded".into(),
                active_state: "active".into(),
                main_pid: Some(4242),
                control_group: Some("/system.slice/myapp.service".into()),
                limit_nofile_soft: Some(LimitValue::Value(1024)),
                limit_nofile_hard: Some(LimitValue::Value(524288)),
                slice: Some("system.slice".into()),
                ..UnitInfo::default()
            },
        );
        FakeSystemd {
            host: Root(host.root().to_path_buf()),
            units: RefCell::new(units),
            calls: RefCell::new(Vec::new()),
            queries: RefCell::new(Vec::new()),
            round_trips: RefCell::new(0),
            runtime: RefCell::new(BTreeMap::new()),
            sinks: RefCell::new(Vec::new()),
            gate: (Mutex::new(true), Condvar::new()),
        }
    }

    /// From now on, requests for a unit's properties wait until
    /// [`FakeSystemd::answer`] (systemd busy reloading).
    pub fn stall(&self) {
        *self.gate.0.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Answers the requests that wait, and those that come.
    pub fn answer(&self) {
        *self.gate.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.gate.1.notify_all();
    }

    fn wait_for_gate(&self) {
        let mut open = self.gate.0.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = self
                .gate
                .1
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Announces `event` to every subscriber, as systemd's signals do.
    pub fn emit(&self, event: UnitEvent) {
        self.sinks.borrow_mut().retain(|sink| sink(event.clone()));
    }

    fn round_trip(&self) {
        *self.round_trips.borrow_mut() += 1;
    }

    /// How often `unit()` was asked about `unit`.
    pub fn queries_of(&self, unit: &str) -> usize {
        self.queries.borrow().iter().filter(|u| *u == unit).count()
    }

    /// A pass's context on `root` with this double as the host's systemd.
    pub fn context<'a>(
        &'a self,
        root: &'a holdfast::host::HostRoot,
    ) -> holdfast::engine::Context<'a> {
        holdfast::engine::Context {
            host: root,
            systemd: Some(self),
            heartbeat: None,
        }
    }

    pub fn calls_matching(&self, prefix: &str) -> usize {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    fn apply_assignment(info: &mut UnitInfo, assignment: &str) {
        let Some((k, v)) = assignment.split_once('=') else {
            return;
        };
        let bytes = |v: &str| {
            if v == "infinity" {
                Some(Bytes::Max)
            } else {
                v.parse().ok().map(Bytes::Value)
            }
        };
        match k {
            "LimitNOFILE" => {
                let (s, h) = v.split_once(':').unwrap_or((v, v));
                info.limit_nofile_soft = s.parse().ok().map(LimitValue::Value);
                info.limit_nofile_hard = h.parse().ok().map(LimitValue::Value);
            }
            "Slice" => info.slice = Some(v.to_string()),
            "MemoryMax" => info.memory_max = bytes(v),
            "MemoryHigh" => info.memory_high = bytes(v),
            "TasksMax" => {
                info.tasks_max = if v == "infinity" {
                    Some(Count::Max)
                } else {
                    v.parse().ok().map(Count::Value)
                }
            }
            "CPUQuota" => {
                let period = info.cpu_max.map(|c| c.period_us);
                let per_sec = v
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<f64>().ok())
                    .map(|p| (p * 10_000.0).round() as u64);
                info.cpu_max = Some(cpu_max_from_systemd(per_sec, period));
            }
            "CPUQuotaPeriodSec" => {
                let period: Option<u64> = v.strip_suffix("us").and_then(|p| p.parse().ok());
                let old = info.cpu_max.unwrap_or(CpuMax {
                    quota_us: None,
                    period_us: 100_000,
                });
                let per_sec = old.quota_us.map(|q| q * 1_000_000 / old.period_us);
                info.cpu_max = Some(cpu_max_from_systemd(per_sec, period));
            }
            _ => {}
        }
    }

    /// Writes an active slice's cgroup files from its properties, as systemd
    /// realizes a cgroup.
    fn realize(&self, info: &UnitInfo) {
        let Some(cg) = &info.control_group else {
            return;
        };
        let dir = format!("sys/fs/cgroup{cg}");
        let bytes = |b: Option<Bytes>| b.map_or("max".to_string(), |b| b.to_string());
        self.host.write(
            &format!("{dir}/memory.max"),
            &format!("{}\n", bytes(info.memory_max)),
        );
        self.host.write(
            &format!("{dir}/memory.high"),
            &format!("{}\n", bytes(info.memory_high)),
        );
        let cpu = info.cpu_max.unwrap_or(CpuMax {
            quota_us: None,
            period_us: 100_000,
        });
        self.host
            .write(&format!("{dir}/cpu.max"), &format!("{cpu}\n"));
        let pids = info.tasks_max.map_or("max".to_string(), |c| c.to_string());
        self.host
            .write(&format!("{dir}/pids.max"), &format!("{pids}\n"));
        // Accounting enables the controllers on the path.
        let mut path = String::from("sys/fs/cgroup");
        for part in cg.split('/').filter(|p| !p.is_empty()) {
            self.host.write(
                &format!("{path}/cgroup.subtree_control"),
                "cpu io memory pids\n",
            );
            self.host.write(
                &format!("{path}/cgroup.controllers"),
                "cpu io memory pids\n",
            );
            path.push('/');
            path.push_str(part);
        }
        self.host.write(
            &format!("{path}/cgroup.controllers"),
            "cpu io memory pids\n",
        );
    }
}

impl SystemdClient for FakeSystemd {
    fn unit(&self, unit: &str) -> Result<UnitInfo, SystemdError> {
        self.wait_for_gate();
        self.round_trip();
        self.queries.borrow_mut().push(unit.to_string());
        Ok(self.units.borrow().get(unit).cloned().unwrap_or(UnitInfo {
            load_state: "not-found".into(),
            active_state: "inactive".into(),
            ..UnitInfo::default()
        }))
    }

    fn default_limit_nofile(&self) -> Result<Option<(LimitValue, LimitValue)>, SystemdError> {
        self.round_trip();
        Ok(Some((LimitValue::Value(1024), LimitValue::Value(524288))))
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.round_trip();
        self.calls.borrow_mut().push("reload".into());
        self.emit(UnitEvent::Reloading(true));
        let touched = self.reload_units();
        for unit in touched {
            self.emit(UnitEvent::Changed(unit));
        }
        self.emit(UnitEvent::Reloading(false));
        Ok(())
    }

    fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.round_trip();
        self.calls.borrow_mut().push(format!("start {unit}"));
        self.start_unit(unit)?;
        self.emit(UnitEvent::Changed(unit.to_string()));
        Ok(())
    }

    fn set_properties_runtime(
        &self,
        unit: &str,
        assignments: &[String],
    ) -> Result<(), SystemdError> {
        self.round_trip();
        self.set_runtime(unit, assignments);
        self.emit(UnitEvent::Changed(unit.to_string()));
        Ok(())
    }

    fn running_services(&self) -> Result<Vec<String>, SystemdError> {
        self.round_trip();
        Ok(self
            .units
            .borrow()
            .iter()
            .filter(|(name, info)| name.ends_with(".service") && info.active_state == "active")
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.round_trip();
        self.calls.borrow_mut().push(format!("stop {unit}"));
        self.stop_unit(unit)?;
        self.emit(UnitEvent::Changed(unit.to_string()));
        Ok(())
    }

    fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.round_trip();
        self.restart_unit(unit);
        self.emit(UnitEvent::Changed(unit.to_string()));
        Ok(())
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), SystemdError> {
        self.sinks.borrow_mut().push(sink);
        Ok(())
    }
}

impl FakeSystemd {
    /// What a daemon-reload does to the units; returns the units it read.
    fn reload_units(&self) -> Vec<String> {
        let mut touched = Vec::new();
        let mut units = self.units.borrow_mut();
        // A drop-in that is gone no longer applies: the service is back in
        // its vendor slice (system.slice) at its next start.
        for (name, info) in units.iter_mut() {
            let before = info.drop_in_paths.len();
            info.drop_in_paths
                .retain(|p| !p.ends_with("/90-holdfast.conf") || Path::new(p).exists());
            if info.drop_in_paths.len() != before && name.ends_with(".service") {
                info.slice = Some("system.slice".into());
                touched.push(name.clone());
            }
        }
        self.write_populated(&units);
        let etc = self.host.path("etc/systemd/system");
        let Ok(entries) = std::fs::read_dir(&etc) else {
            return touched;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (unit, file) = if let Some(unit) = name.strip_suffix(".d") {
                (unit.to_string(), entry.path().join("90-holdfast.conf"))
            } else if name.ends_with(".slice") {
                (name.clone(), entry.path())
            } else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let info = units.entry(unit.clone()).or_insert_with(|| UnitInfo {
                load_state: "loaded".into(),
                active_state: "inactive".into(),
                ..UnitInfo::default()
            });
            info.load_state = "loaded".into();
            let overridden = info
                .drop_in_paths
                .iter()
                .any(|p| p.ends_with("99-override.conf"));
            if !overridden {
                for line in text.lines() {
                    Self::apply_assignment(info, line);
                }
            }
            let p = file.display().to_string();
            if name.ends_with(".d") && !info.drop_in_paths.contains(&p) {
                info.drop_in_paths.insert(0, p);
            }
            for a in self.runtime.borrow().get(&unit).into_iter().flatten() {
                Self::apply_assignment(info, a);
            }
            if unit.ends_with(".slice") && info.active_state == "active" {
                self.realize(info);
            }
            touched.push(unit);
        }
        touched
    }

    fn start_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let mut units = self.units.borrow_mut();
        let Some(info) = units.get_mut(unit) else {
            return Err(SystemdError::new(
                format!("StartUnit {unit}"),
                "Unit not found.",
            ));
        };
        info.active_state = "active".into();
        info.control_group = Some(slice_cgroup(unit));
        self.realize(info);
        self.write_populated(&units);
        Ok(())
    }

    /// `StopUnit`: a slice stops with everything in it.
    fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let mut units = self.units.borrow_mut();
        let Some(cg) = units.get(unit).and_then(|i| i.control_group.clone()) else {
            return Err(SystemdError::new(
                format!("StopUnit {unit}"),
                "Unit not found.",
            ));
        };
        for info in units.values_mut() {
            let inside = info
                .control_group
                .as_deref()
                .is_some_and(|c| c == cg || c.starts_with(&format!("{cg}/")));
            if inside {
                info.active_state = "inactive".into();
                info.main_pid = None;
            }
        }
        self.write_populated(&units);
        Ok(())
    }

    /// Each active slice's `cgroup.events`, as the kernel keeps it:
    /// `populated 1` while a running unit's cgroup is below it.
    fn write_populated(&self, units: &BTreeMap<String, UnitInfo>) {
        for (name, slice) in units.iter().filter(|(n, _)| n.ends_with(".slice")) {
            let (Some(cg), "active") = (&slice.control_group, slice.active_state.as_str()) else {
                continue;
            };
            let populated = units.iter().any(|(other, u)| {
                other != name
                    && u.main_pid.is_some()
                    && u.active_state == "active"
                    && u.control_group
                        .as_deref()
                        .is_some_and(|c| c.starts_with(&format!("{cg}/")))
            });
            self.host.write(
                &format!("sys/fs/cgroup{cg}/cgroup.events"),
                &format!("populated {}\nfrozen 0\n", u8::from(populated)),
            );
        }
    }

    /// `SetUnitProperties(runtime=true)`, as holdfast or another tool
    /// (`systemctl set-property --runtime`) calls it; announces nothing (the
    /// caller does).
    pub fn set_runtime(&self, unit: &str, assignments: &[String]) {
        self.calls
            .borrow_mut()
            .push(format!("set {unit} {}", assignments.join(" ")));
        self.runtime
            .borrow_mut()
            .entry(unit.to_string())
            .or_default()
            .extend(assignments.iter().cloned());
        let mut units = self.units.borrow_mut();
        let info = units.get_mut(unit).expect("unit");
        for a in assignments {
            Self::apply_assignment(info, a);
        }
        let dir = format!("/run/systemd/system.control/{unit}.d/50-holdfast-runtime.conf");
        if !info.drop_in_paths.contains(&dir) {
            info.drop_in_paths.push(dir);
        }
        if info.active_state == "active" {
            self.realize(info);
        }
    }

    /// A restart: the processes get the configured limits and move into
    /// the configured slice.
    pub fn restart_unit(&self, unit: &str) {
        self.calls.borrow_mut().push(format!("restart {unit}"));
        let mut units = self.units.borrow_mut();
        let info = units.get_mut(unit).expect("unit");
        if let (Some(LimitValue::Value(s)), Some(LimitValue::Value(h))) =
            (info.limit_nofile_soft, info.limit_nofile_hard)
        {
            self.host.write("proc/4242/limits", &proc_limits(s, h));
            self.host.write("proc/4243/limits", &proc_limits(s, h));
        }
        if let Some(slice) = &info.slice {
            info.control_group = Some(format!("{}/{unit}", slice_cgroup(slice)));
            let procs = format!(
                "sys/fs/cgroup{}/cgroup.procs",
                info.control_group.as_deref().unwrap_or("")
            );
            self.host.write(&procs, "4242\n4243\n");
        }
        self.write_populated(&units);
    }
}
