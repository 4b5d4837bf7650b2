//! The areas holdfast manages, behind one interface. An area is a domain of
//! settings with its own way of reading the host and its own planner:
//! sysctls, session limits, systemd services, cgroup slices. The engine and
//! the daemon never name an area's modules; they loop over [`Area::ALL`] and
//! go through the functions here, each an exhaustive `match`, so the
//! compiler lists everything a new area must supply.
//!
//! How to add an area (ARCHITECTURE.md has the long form):
//! 1. its module: value types in the module root, a pure `plan(policy,
//!    &Host) -> Vec<Item>`, an `observe(host, ...)`;
//! 2. a variant here, in [`Area`], [`Area::ALL`] and [`Observation`], and an
//!    arm in every `match` the compiler then points at;
//! 3. its item keys in `item::ItemKey` and its settings in
//!    `daemon::diff::SettingId`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;

use crate::cgroup::HOLDFAST_SUBTREE;
use crate::cgroup::knob::KnobKind;
use crate::cgroup::plan::CgroupHost;
use crate::cgroup::{observe as cgroup_observe, plan as cgroup_plan};
use crate::exec::{Executed, Outcome, Run};
use crate::gobuild::GoBuildHost;
use crate::gobuild::observe as gobuild_observe;
use crate::gobuild::plan as gobuild_plan;
use crate::host::{HostRoot, IoError, MODPROBE_CONF_DIRS, SYSCTL_CONF_DIRS};
use crate::item::{Action, Item, ItemKey};
use crate::journal::Original;
use crate::journal::store as journal_store;
use crate::limits::plan::LimitsHost;
use crate::limits::{observe as limits_observe, plan as limits_plan};
use crate::modules::observe as modules_observe;
use crate::modules::plan::{self as modules_plan, ModulesHost};
use crate::policy::Policy;
use crate::services::{self, ServicesHost, observe as services_observe};
use crate::sysctl::SysctlKey;
use crate::sysctl::apply as sysctl_apply;
use crate::sysctl::observe as sysctl_observe;
use crate::sysctl::plan::{self as sysctl_plan, SysctlHost};
use crate::systemd::dbus::DbusSystemd;
use crate::systemd::{self, SystemdClient};

/// What a pass works with: the host root and, when holdfast can talk to the
/// host's systemd, a client for it.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub host: &'a HostRoot,
    pub systemd: Option<&'a dyn SystemdClient>,
    /// Called between the steps of a pass (each area read, each stage,
    /// each restart). The daemon pings systemd's watchdog from it: a long
    /// pass that makes progress is not a stuck loop, while one step that
    /// hangs still is.
    pub heartbeat: Option<&'a dyn Fn()>,
}

/// The CLI's client for the running systemd: one connection for the
/// process, made at its first request.
static SYSTEMD: std::sync::OnceLock<DbusSystemd> = std::sync::OnceLock::new();

impl<'a> Context<'a> {
    /// The production context: systemd's client when the root is `/` and
    /// systemd is PID 1; no client otherwise (a fake or foreign root must
    /// never reach the running systemd).
    pub fn for_host(host: &'a HostRoot) -> Context<'a> {
        Context {
            host,
            systemd: production_client(host),
            heartbeat: None,
        }
    }

    /// A step of the pass is done (see [`Context::heartbeat`]).
    pub fn beat(&self) {
        if let Some(beat) = self.heartbeat {
            beat();
        }
    }
}

/// The client for the running systemd, when `host` is this machine and
/// systemd is its PID 1.
pub fn production_client(host: &HostRoot) -> Option<&'static dyn SystemdClient> {
    serves_this_host(host)
        .then(|| SYSTEMD.get_or_init(|| DbusSystemd::new(host)) as &dyn SystemdClient)
}

/// [`production_client`] as a handle of its own, for the daemon's loop.
pub fn production_client_arc(host: &HostRoot) -> Option<std::sync::Arc<dyn SystemdClient>> {
    serves_this_host(host)
        .then(|| std::sync::Arc::new(DbusSystemd::new(host)) as std::sync::Arc<dyn SystemdClient>)
}

/// Whether the running systemd is this host root's: the root is `/` and
/// systemd is PID 1 there.
fn serves_this_host(host: &HostRoot) -> bool {
    host.is_this_machine() && systemd::is_pid1(host)
}

/// A domain of settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    Sysctl,
    Limits,
    Services,
    Cgroup,
    GoBuild,
    Modules,
}

/// What an area read of the host: the input of its planner.
#[derive(Debug, Clone)]
pub enum Observation {
    Sysctl(SysctlHost),
    Limits(LimitsHost),
    Services(ServicesHost),
    Cgroup(CgroupHost),
    GoBuild(GoBuildHost),
    Modules(ModulesHost),
}

impl Area {
    /// Every area, in the order a pass visits them: kernel values first,
    /// then the files sessions read, then systemd (services before the
    /// slices they are moved into), and last the running binaries, which
    /// nothing in a pass changes; the kernel's modules, whose file no other
    /// area's step depends on, after them.
    pub const ALL: [Area; 6] = [
        Area::Sysctl,
        Area::Limits,
        Area::Services,
        Area::Cgroup,
        Area::GoBuild,
        Area::Modules,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Sysctl => "sysctl",
            Area::Limits => "limits",
            Area::Services => "services",
            Area::Cgroup => "cgroup",
            Area::GoBuild => "go-build",
            Area::Modules => "kernel-modules",
        }
    }

    /// Whether the policy asks anything of this area. An area with nothing
    /// to manage is not observed at all (no file read, no systemd request).
    /// The sysctl area always is: its persisted file may be left from an
    /// earlier enforced policy.
    pub fn has_settings(self, policy: &Policy) -> bool {
        match self {
            Area::Sysctl => true,
            Area::Limits => !policy.limits.is_empty(),
            Area::Services => {
                !services::managed_units(policy).is_empty()
                    || policy.service_defaults.limit_nofile.is_some()
            }
            Area::Cgroup => policy.cgroup.controllers.is_some() || !policy.cgroup.slices.is_empty(),
            Area::GoBuild => !gobuild_plan::managed(policy).is_empty(),
            // Always observed, like sysctls: holdfast's file may be left
            // from an earlier enforced policy.
            Area::Modules => true,
        }
    }

    /// Whether this area's settings belong to systemd units: what systemd
    /// announces about a unit, or a daemon-reload, is read again here.
    pub fn has_units(self) -> bool {
        match self {
            Area::Services | Area::Cgroup => true,
            // A Go binary is read when its service is found running; the
            // rescan reads it again after a redeploy.
            Area::Sysctl | Area::Limits | Area::GoBuild | Area::Modules => false,
        }
    }

    /// Whether a pass with this focus reads, plans and acts on this area.
    pub fn in_focus(self, focus: Focus<'_>) -> bool {
        match focus {
            Focus::All => true,
            Focus::AllUnits | Focus::Units(_) => self.has_units(),
            Focus::Keys(_) => match self {
                Area::Sysctl => true,
                Area::Limits | Area::Services | Area::Cgroup | Area::GoBuild | Area::Modules => {
                    false
                }
            },
        }
    }

    /// Reads what this area's planner needs. Unreadable auxiliary files are
    /// warnings; they never stop the pass.
    pub fn observe(self, ctx: &Context<'_>, policy: &Policy) -> (Observation, Vec<IoError>) {
        match self {
            Area::Sysctl => {
                let (o, w) = sysctl_observe::observe(ctx.host, policy);
                (Observation::Sysctl(o), w)
            }
            Area::Limits => {
                let (o, w) = limits_observe::observe(ctx.host);
                (Observation::Limits(o), w)
            }
            Area::Services => {
                let (o, w) = services_observe::observe(ctx.host, ctx.systemd, policy);
                (Observation::Services(o), w)
            }
            Area::Cgroup => {
                let (o, w) = cgroup_observe::observe(ctx.host, ctx.systemd, policy);
                (Observation::Cgroup(o), w)
            }
            Area::GoBuild => {
                let (o, w) = gobuild_observe::observe(ctx.host, ctx.systemd, policy);
                (Observation::GoBuild(o), w)
            }
            Area::Modules => {
                let (o, w) = modules_observe::observe(ctx.host, policy);
                (Observation::Modules(o), w)
            }
        }
    }
}

impl Observation {
    pub fn area(&self) -> Area {
        match self {
            Observation::Sysctl(_) => Area::Sysctl,
            Observation::Limits(_) => Area::Limits,
            Observation::Services(_) => Area::Services,
            Observation::Cgroup(_) => Area::Cgroup,
            Observation::GoBuild(_) => Area::GoBuild,
            Observation::Modules(_) => Area::Modules,
        }
    }

    /// The area's plan over what was read. Pure. A key pass plans only its
    /// keys (see [`sysctl_plan::plan_keys`]).
    pub fn plan(&self, policy: &Policy, focus: Focus<'_>) -> Vec<Item> {
        match self {
            Observation::Sysctl(h) => sysctl_plan::plan_focused(policy, h, focus.keys()),
            Observation::Limits(h) => limits_plan::plan(policy, h),
            Observation::Services(h) => services::plan(policy, h),
            Observation::Cgroup(h) => cgroup_plan::plan(policy, h),
            Observation::GoBuild(h) => gobuild_plan::plan(policy, h),
            Observation::Modules(h) => modules_plan::plan(policy, h),
        }
    }

    /// Reads again after the pass acted on this area. Sysctls read nothing
    /// more: the pass read back every key it wrote (and every key a write
    /// may have disturbed) into this observation as it went, and a key pass
    /// must stay one write and one read. The other areas read everything
    /// again, since one file or reload changes many settings — except in a
    /// unit pass, which reads again only its units.
    pub fn refresh(
        &mut self,
        ctx: &Context<'_>,
        policy: &Policy,
        focus: Focus<'_>,
    ) -> Vec<IoError> {
        match (self, focus) {
            (Observation::Sysctl(_), _) => Vec::new(),
            (obs, Focus::Units(units)) => obs.observe_units(ctx, policy, units),
            (obs, Focus::All | Focus::AllUnits | Focus::Keys(_)) => {
                let (fresh, warnings) = obs.area().observe(ctx, policy);
                *obs = fresh;
                warnings
            }
        }
    }

    /// Reads again what a key pass names into this observation (see
    /// [`sysctl_observe::observe_keys`]); returns the keys read, which the
    /// pass plans and may write. Areas without keys read nothing.
    pub fn observe_keys(
        &mut self,
        ctx: &Context<'_>,
        policy: &Policy,
        keys: &BTreeSet<SysctlKey>,
    ) -> BTreeSet<SysctlKey> {
        match self {
            Observation::Sysctl(h) => sysctl_observe::observe_keys(ctx.host, policy, h, keys),
            Observation::Limits(_)
            | Observation::Services(_)
            | Observation::Cgroup(_)
            | Observation::GoBuild(_)
            | Observation::Modules(_) => BTreeSet::new(),
        }
    }

    /// The area's own executor, when it has one: it carries out every
    /// action the area planned, before any other area's (kernel values
    /// first: the sysctl area's converge loop, then its copies of vendor
    /// files), and the engine's file and runtime stages leave its items
    /// alone. `None`: the engine's stages carry out this area's actions.
    pub fn execute_own(&mut self, run: &mut Run<'_, '_>, planned: &[Item]) -> Option<Executed> {
        match self {
            Observation::Sysctl(h) => Some(sysctl_apply::execute(run, planned, h)),
            Observation::Limits(_)
            | Observation::Services(_)
            | Observation::Cgroup(_)
            | Observation::GoBuild(_)
            | Observation::Modules(_) => None,
        }
    }

    /// The area's step after its items are merged: holdfast's sysctl.d
    /// file is planned from the verified sysctl values and written (boot
    /// gets what the kernel accepted). Other areas have none.
    pub fn after_merge(
        &mut self,
        run: &mut Run<'_, '_>,
        planned: &[Item],
        merged: &mut Vec<Item>,
        outcomes: &HashMap<ItemKey, Outcome>,
        focus: Focus<'_>,
    ) {
        match self {
            Observation::Sysctl(h) => {
                sysctl_apply::after_merge(run, h, planned, merged, outcomes, focus.keys());
            }
            Observation::Limits(_)
            | Observation::Services(_)
            | Observation::Cgroup(_)
            | Observation::GoBuild(_)
            | Observation::Modules(_) => {}
        }
    }

    /// An original the area has already read for a change it is about to
    /// make (so the journal need not read it again): a slice setting's
    /// value before `SetUnitProperties`.
    pub fn known_original(&self, key: &ItemKey, action: &Action) -> Option<Original> {
        match self {
            Observation::Cgroup(h) => match (key, action) {
                (ItemKey::SliceKnob { knob, .. }, Action::SetUnitProperties { unit, .. }) => {
                    Some(journal_store::slice_knob_original(h, unit, *knob))
                }
                _ => None,
            },
            Observation::Sysctl(_)
            | Observation::Limits(_)
            | Observation::Services(_)
            | Observation::GoBuild(_)
            | Observation::Modules(_) => None,
        }
    }

    /// What holdfast last wrote (or read back) of its own file at `path`,
    /// when `path` is one of this area's own files: `Some(None)` for a file
    /// it knows absent. The daemon ignores an event on such a file that
    /// finds it as holdfast left it: its own write, which needs no pass.
    pub fn own_file(&self, path: &std::path::Path) -> Option<Option<&str>> {
        match self {
            Observation::Sysctl(h) => h.own_file(path),
            Observation::Limits(h) => (h.managed_path == path).then_some(h.managed.as_deref()),
            Observation::Services(h) => {
                let (conf, text) = &h.manager_conf;
                (conf == path).then_some(text.as_deref())
            }
            Observation::Modules(h) => h.own_file(path),
            Observation::Cgroup(_) | Observation::GoBuild(_) => None,
        }
    }

    /// Reads again only what concerns `units` into this observation (a
    /// unit pass: an event named them). Areas without units read nothing.
    pub fn observe_units(
        &mut self,
        ctx: &Context<'_>,
        policy: &Policy,
        units: &BTreeSet<String>,
    ) -> Vec<IoError> {
        match self {
            Observation::Sysctl(_) | Observation::Limits(_) | Observation::Modules(_) => Vec::new(),
            Observation::Services(h) => {
                services_observe::observe_units(ctx.host, ctx.systemd, policy, units, h)
            }
            Observation::Cgroup(h) => {
                cgroup_observe::observe_units(ctx.host, ctx.systemd, policy, units, h)
            }
            // A named service may run a new binary (restarted, redeployed):
            // its few managed binaries are read again.
            Observation::GoBuild(_) => {
                let (fresh, warnings) = Area::GoBuild.observe(ctx, policy);
                *self = fresh;
                warnings
            }
        }
    }
}

/// What a pass is about, and so what it reads, plans and reports:
/// everything; every unit (systemd reloaded: the areas with units are read
/// afresh, the others not at all); the units an event named (what is read
/// again of them); or the sysctl keys an event named (what is read, planned
/// and written). Items outside the focus are held and left out of the
/// pass's result.
#[derive(Debug, Clone, Copy)]
pub enum Focus<'a> {
    All,
    AllUnits,
    Units(&'a BTreeSet<String>),
    Keys(&'a BTreeSet<SysctlKey>),
}

impl<'a> Focus<'a> {
    /// The keys of a key pass.
    pub fn keys(self) -> Option<&'a BTreeSet<SysctlKey>> {
        match self {
            Focus::Keys(keys) => Some(keys),
            Focus::All | Focus::AllUnits | Focus::Units(_) => None,
        }
    }

    /// Whether an item of an area in focus is itself in focus: of a named
    /// unit, or of a named key (holdfast's sysctl.d file, which a key pass
    /// updates, too).
    pub fn concerns(self, item: &crate::item::Item) -> bool {
        match self {
            Focus::All | Focus::AllUnits => true,
            Focus::Units(units) => item.key.unit().is_some_and(|u| units.contains(u)),
            Focus::Keys(keys) => item.key.sysctl().is_none_or(|k| keys.contains(k)),
        }
    }
}

/// The systemd units the policy manages: its services and its slices. An
/// announcement from systemd about any other unit concerns nothing here.
pub fn managed_units(policy: &Policy) -> BTreeSet<String> {
    let mut units: BTreeSet<String> = services::managed_units(policy)
        .into_iter()
        .map(|r| r.unit.clone())
        .collect();
    units.extend(
        policy
            .cgroup
            .slices
            .keys()
            .map(|n| cgroup_plan::slice_unit(n)),
    );
    units
}

// What the daemon watches for each area. Pure: the caller says whether
// systemd is PID 1 under the root.

/// What a watched path is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Concern {
    /// A key's /proc/sys file: re-read that key.
    Sysctl(SysctlKey),
    /// A unit's own files (its drop-in directory, a slice's unit file, its
    /// runtime overrides): re-read that unit.
    Unit(String),
    /// Configuration a full pass re-reads (sysctl.d, limits.d, ...).
    Files,
    /// The policy sources: reload (debounced).
    Policy,
}

/// Which events under a watched path matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The file itself.
    File,
    /// Entries of a directory whose names end with one of these suffixes
    /// (hidden files, such as editors' and holdfast's temp files, excluded).
    Entries(&'static [&'static str]),
    /// One named entry of a directory (a policy file given by path: its
    /// directory is watched so that an atomic replace is seen).
    Entry(PathBuf),
}

/// One path to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub path: PathBuf,
    pub scope: Scope,
    pub concern: Concern,
    /// When the path does not exist, watch its nearest existing ancestor so
    /// that its creation is seen (the policy directory on a fresh host).
    pub follow_creation: bool,
}

const CONF: &[&str] = &[".conf"];

/// A watch whose events call for a full pass.
fn files(path: PathBuf, scope: Scope) -> WatchSpec {
    WatchSpec {
        path,
        scope,
        concern: Concern::Files,
        follow_creation: false,
    }
}

impl Area {
    /// The paths whose changes this area wants to hear about. An event is
    /// only ever a reason to re-read: a key's own file triggers a pass over
    /// that key, anything else a full pass.
    pub fn watches(self, host: &HostRoot, policy: &Policy, systemd_pid1: bool) -> Vec<WatchSpec> {
        let mut out = Vec::new();
        match self {
            Area::Sysctl => {
                if policy.sysctls.is_empty() {
                    return out;
                }
                for key in policy.sysctls.keys() {
                    out.push(WatchSpec {
                        path: host.sysctl_path(key),
                        scope: Scope::File,
                        concern: Concern::Sysctl(key.clone()),
                        follow_creation: false,
                    });
                }
                for dir in SYSCTL_CONF_DIRS {
                    out.push(files(host.path(dir), Scope::Entries(CONF)));
                }
                out.push(files(host.path("etc/sysctl.conf"), Scope::File));
            }
            Area::Limits => {
                if !policy.limits.is_empty() {
                    out.push(files(host.limits_conf(), Scope::File));
                    out.push(files(host.limits_d(), Scope::Entries(CONF)));
                }
            }
            // Unit files: holdfast's drop-ins, a competing drop-in beside
            // them; a pass over that unit asks systemd what it makes of
            // them.
            Area::Services => {
                for rule in services::managed_units(policy) {
                    out.push(WatchSpec {
                        path: host.path(&format!("etc/systemd/system/{}.d", rule.unit)),
                        scope: Scope::Entries(CONF),
                        concern: Concern::Unit(rule.unit.clone()),
                        follow_creation: false,
                    });
                }
                if policy.service_defaults.limit_nofile.is_some() {
                    out.push(files(
                        host.path("etc/systemd/system.conf.d"),
                        Scope::Entries(CONF),
                    ));
                }
            }
            // modprobe.d: a file that competes with holdfast's, or an edit of
            // holdfast's. (A module that loads is seen by the rescan.)
            Area::Modules => {
                if !policy.kernel_modules.is_empty() {
                    for dir in MODPROBE_CONF_DIRS {
                        out.push(files(host.path(dir), Scope::Entries(CONF)));
                    }
                }
            }
            // A binary is replaced on disk by a deployment, which restarts
            // the service: the services area's events and the rescan re-read
            // it. Nothing of its own to watch.
            Area::GoBuild => {}
            // Slice units and their runtime overrides (`set-property
            // --runtime`), and the slice's limit files in the kernel: a raw
            // write to them is drift that no unit file shows (and since
            // systemd 257 a daemon-reload no longer writes them back).
            // Without systemd they are holdfast's own cgroup's; under
            // systemd the slice's cgroup is where systemd puts a slice of
            // that name (`cgroup_plan::systemd_slice_cgroup`), and a write
            // there is a pass over the slice, which reads the cgroup
            // systemd names in `ControlGroup`.
            Area::Cgroup => {
                for name in policy.cgroup.slices.keys() {
                    let unit = cgroup_plan::slice_unit(name);
                    let unit_file = host.path(&format!("etc/systemd/system/{unit}"));
                    out.push(WatchSpec {
                        path: host.path("etc/systemd/system"),
                        scope: Scope::Entry(unit_file),
                        concern: Concern::Unit(unit.clone()),
                        follow_creation: false,
                    });
                    // Made by the first `set-property --runtime` of the
                    // slice: its creation is seen too.
                    out.push(WatchSpec {
                        path: host.path(&format!("run/systemd/system.control/{unit}.d")),
                        scope: Scope::Entries(CONF),
                        concern: Concern::Unit(unit.clone()),
                        follow_creation: true,
                    });
                    let (cgroup, concern) = if systemd_pid1 {
                        (cgroup_plan::systemd_slice_cgroup(name), Concern::Unit(unit))
                    } else {
                        (format!("{HOLDFAST_SUBTREE}/{name}"), Concern::Files)
                    };
                    for kind in KnobKind::ALL {
                        out.push(WatchSpec {
                            path: host.path(&format!("sys/fs/cgroup/{cgroup}/{}", kind.file())),
                            scope: Scope::File,
                            concern: concern.clone(),
                            follow_creation: false,
                        });
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
