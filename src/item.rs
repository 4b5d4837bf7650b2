//! The unit of every report: one managed setting, what the policy wants, what
//! the host has, and its state. Every kind of setting (sysctls now; limits,
//! services and cgroups as they arrive) reports through this type, so the
//! CLI, the daemon's status API and the metrics share one vocabulary.

use std::fmt;
use std::path::PathBuf;

use crate::cgroup::HOLDFAST_SUBTREE;
use crate::cgroup::knob::KnobKind;
use crate::gobuild::Expectation;
use crate::limits::{Domain, LimitItem, LimitType};
use crate::modules::ModuleName;
use crate::policy::{Mode, Source};
use crate::sysctl::{SysctlKey, SysctlValue};

/// What kind of setting an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A value in /proc/sys.
    Sysctl,
    /// holdfast's sysctl.d file, which makes enforced values hold across boots.
    SysctlPersist,
    /// holdfast's copy of a vendor sysctl.d file in `/etc/sysctl.d`, with
    /// the lines that conflict with the policy commented out
    /// (`sysctl_conflicts: override`).
    SysctlOverride,
    /// A session limit (pam_limits) for a domain: one soft or hard value.
    Limit,
    /// holdfast's limits.d file.
    LimitsFile,
    /// A systemd service's limit (or the services' default).
    ServiceLimit,
    /// One posture field of a service (no_new_privileges, seccomp, ...),
    /// verified on its running processes.
    ServicePosture,
    /// A unit drop-in, slice unit or `system.conf.d` file holdfast owns.
    UnitFile,
    /// One setting of a slice (`memory.max`, `cpu.max`, ...).
    CgroupLimit,
    /// A cgroup controller enabled on the path to the managed slices.
    CgroupController,
    /// How a service's running binary was built (`go_build`): checked,
    /// never acted on.
    GoBuild,
    /// A kernel module the policy disables.
    KernelModule,
    /// holdfast's modprobe.d file.
    ModprobeFile,
}

impl Kind {
    /// Every kind, for filters and metrics. A test fails to compile when a
    /// kind is added to the enum and not here.
    pub const ALL: [Kind; 13] = [
        Kind::Sysctl,
        Kind::SysctlPersist,
        Kind::SysctlOverride,
        Kind::Limit,
        Kind::LimitsFile,
        Kind::ServiceLimit,
        Kind::ServicePosture,
        Kind::UnitFile,
        Kind::CgroupLimit,
        Kind::CgroupController,
        Kind::GoBuild,
        Kind::KernelModule,
        Kind::ModprobeFile,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sysctl => "sysctl",
            Kind::SysctlPersist => "sysctl-persist",
            Kind::SysctlOverride => "sysctl-override",
            Kind::Limit => "limit",
            Kind::LimitsFile => "limits-file",
            Kind::ServiceLimit => "service-limit",
            Kind::ServicePosture => "service-posture",
            Kind::UnitFile => "unit-file",
            Kind::CgroupLimit => "cgroup",
            Kind::CgroupController => "cgroup-controller",
            Kind::GoBuild => "go-build",
            Kind::KernelModule => "kernel-module",
            Kind::ModprobeFile => "modprobe-file",
        }
    }

    /// Whether the setting takes effect when the service's processes start
    /// (a service's limit or posture field): stale on a running process
    /// until it restarts, and what `--restart-services` restarts it for.
    pub fn applies_at_start(self) -> bool {
        match self {
            Kind::ServiceLimit | Kind::ServicePosture => true,
            Kind::Sysctl
            | Kind::SysctlPersist
            | Kind::SysctlOverride
            | Kind::Limit
            | Kind::LimitsFile
            | Kind::UnitFile
            | Kind::CgroupLimit
            | Kind::CgroupController
            | Kind::GoBuild
            | Kind::KernelModule
            | Kind::ModprobeFile => false,
        }
    }

    /// Whether systemd reads this file only at a daemon-reload (a unit file
    /// or drop-in holdfast owns): a pass that changed one reloads once.
    pub fn needs_daemon_reload(self) -> bool {
        match self {
            Kind::UnitFile => true,
            Kind::Sysctl
            | Kind::SysctlPersist
            | Kind::SysctlOverride
            | Kind::Limit
            | Kind::LimitsFile
            | Kind::ServiceLimit
            | Kind::ServicePosture
            | Kind::CgroupLimit
            | Kind::CgroupController
            | Kind::GoBuild
            | Kind::KernelModule
            | Kind::ModprobeFile => false,
        }
    }
}

/// Which items must not be changed in a pass: the daemon holds items that
/// are in backoff (contested, or failing) this way, and a focused pass the
/// items outside its focus. Every executor honours it: a held item keeps
/// its planned action, unexecuted, and its drifted state.
pub type Hold<'a> = &'a dyn Fn(&Item) -> bool;

/// A service setting that lives in holdfast's drop-in and applies on the
/// service's next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceSetting {
    LimitNofile,
    Slice,
}

impl ServiceSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceSetting::LimitNofile => "LimitNOFILE",
            ServiceSetting::Slice => "Slice",
        }
    }
}

/// One field of a service's security posture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PostureField {
    NoNewPrivileges,
    Seccomp,
    Capabilities,
    User,
    GoRuntime,
}

impl PostureField {
    pub fn as_str(self) -> &'static str {
        match self {
            PostureField::NoNewPrivileges => "no_new_privileges",
            PostureField::Seccomp => "seccomp",
            PostureField::Capabilities => "capabilities",
            PostureField::User => "user",
            PostureField::GoRuntime => "go_runtime",
        }
    }
}

/// The identity of one managed setting. Reports print it with `Display`
/// (the text the CLI, the status API and the metrics show); code matches
/// on its fields and never parses the text back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemKey {
    /// A value in /proc/sys.
    Sysctl(SysctlKey),
    /// holdfast's sysctl.d file.
    SysctlFile(PathBuf),
    /// holdfast's copy of a vendor sysctl.d file: its path in
    /// `/etc/sysctl.d`.
    SysctlOverride(PathBuf),
    /// One pam_limits value of a domain.
    Limit {
        domain: Domain,
        kind: LimitType,
        item: LimitItem,
    },
    /// holdfast's limits.d file.
    LimitsFile(PathBuf),
    /// A line pam_limits skips (malformed), in any limits file.
    LimitsLine { file: PathBuf, line: u32 },
    /// A setting in a service's drop-in.
    Service {
        unit: String,
        setting: ServiceSetting,
    },
    /// `DefaultLimitNOFILE=` of the service manager.
    DefaultLimitNofile,
    /// One posture field of a service, verified on its processes.
    Posture { unit: String, field: PostureField },
    /// A drop-in, slice unit or `system.conf.d` file holdfast owns, with
    /// the unit it configures (none for the manager's defaults).
    UnitFile { path: PathBuf, unit: Option<String> },
    /// A systemd slice being active (its cgroup exists).
    Slice { unit: String },
    /// One limit of a systemd slice.
    SliceKnob { unit: String, knob: KnobKind },
    /// holdfast's own cgroup subtree (no systemd): `/holdfast.slice`
    /// itself, or one policy slice in it.
    OwnCgroup { slice: Option<String> },
    /// One limit of a policy slice in holdfast's own subtree.
    OwnCgroupKnob { slice: String, knob: KnobKind },
    /// A controller enabled on the path to the managed slices; `at_root`
    /// for the root cgroup's own `cgroup.subtree_control` (no systemd).
    Controller { name: String, at_root: bool },
    /// One `go_build` expectation of a service's running binary.
    GoBuild { unit: String, check: Expectation },
    /// A kernel module the policy disables.
    Module(ModuleName),
    /// holdfast's modprobe.d file.
    ModprobeFile(PathBuf),
}

impl ItemKey {
    /// The kind of setting this key names.
    pub fn kind(&self) -> Kind {
        match self {
            ItemKey::Sysctl(_) => Kind::Sysctl,
            ItemKey::SysctlFile(_) => Kind::SysctlPersist,
            ItemKey::SysctlOverride(_) => Kind::SysctlOverride,
            ItemKey::Limit { .. } => Kind::Limit,
            ItemKey::LimitsFile(_) | ItemKey::LimitsLine { .. } => Kind::LimitsFile,
            ItemKey::Service { .. } | ItemKey::DefaultLimitNofile => Kind::ServiceLimit,
            ItemKey::Posture { .. } => Kind::ServicePosture,
            ItemKey::UnitFile { .. } => Kind::UnitFile,
            ItemKey::Slice { .. }
            | ItemKey::SliceKnob { .. }
            | ItemKey::OwnCgroup { .. }
            | ItemKey::OwnCgroupKnob { .. } => Kind::CgroupLimit,
            ItemKey::Controller { .. } => Kind::CgroupController,
            ItemKey::GoBuild { .. } => Kind::GoBuild,
            ItemKey::Module(_) => Kind::KernelModule,
            ItemKey::ModprobeFile(_) => Kind::ModprobeFile,
        }
    }

    /// The path of one of holdfast's own files (replaced whole, through a
    /// temp file beside it), when this key names one.
    pub fn own_file(&self) -> Option<&std::path::Path> {
        match self {
            ItemKey::SysctlFile(path)
            | ItemKey::SysctlOverride(path)
            | ItemKey::LimitsFile(path)
            | ItemKey::ModprobeFile(path)
            | ItemKey::UnitFile { path, .. } => Some(path),
            ItemKey::Sysctl(_)
            | ItemKey::Limit { .. }
            | ItemKey::LimitsLine { .. }
            | ItemKey::Service { .. }
            | ItemKey::DefaultLimitNofile
            | ItemKey::Posture { .. }
            | ItemKey::Slice { .. }
            | ItemKey::SliceKnob { .. }
            | ItemKey::OwnCgroup { .. }
            | ItemKey::OwnCgroupKnob { .. }
            | ItemKey::Controller { .. }
            | ItemKey::GoBuild { .. }
            | ItemKey::Module(_) => None,
        }
    }

    /// The systemd unit this setting belongs to, if any.
    pub fn unit(&self) -> Option<&str> {
        match self {
            ItemKey::Service { unit, .. }
            | ItemKey::Posture { unit, .. }
            | ItemKey::GoBuild { unit, .. }
            | ItemKey::Slice { unit }
            | ItemKey::SliceKnob { unit, .. } => Some(unit),
            ItemKey::UnitFile { unit, .. } => unit.as_deref(),
            ItemKey::Sysctl(_)
            | ItemKey::SysctlFile(_)
            | ItemKey::SysctlOverride(_)
            | ItemKey::Limit { .. }
            | ItemKey::LimitsFile(_)
            | ItemKey::LimitsLine { .. }
            | ItemKey::DefaultLimitNofile
            | ItemKey::OwnCgroup { .. }
            | ItemKey::OwnCgroupKnob { .. }
            | ItemKey::Controller { .. }
            | ItemKey::Module(_)
            | ItemKey::ModprobeFile(_) => None,
        }
    }

    /// The sysctl this key names, if it is one.
    pub fn sysctl(&self) -> Option<&SysctlKey> {
        match self {
            ItemKey::Sysctl(k) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemKey::Sysctl(k) => write!(f, "{k}"),
            ItemKey::SysctlFile(p)
            | ItemKey::SysctlOverride(p)
            | ItemKey::LimitsFile(p)
            | ItemKey::ModprobeFile(p)
            | ItemKey::UnitFile { path: p, .. } => {
                write!(f, "{}", p.display())
            }
            ItemKey::Limit { domain, kind, item } => {
                write!(f, "{domain} {} {item}", kind.as_str())
            }
            ItemKey::LimitsLine { file, line } => write!(f, "{}:{line}", file.display()),
            ItemKey::Service { unit, setting } => write!(f, "{unit} {}", setting.as_str()),
            ItemKey::DefaultLimitNofile => f.write_str("DefaultLimitNOFILE"),
            ItemKey::Posture { unit, field } => write!(f, "{unit} {}", field.as_str()),
            ItemKey::Slice { unit } => f.write_str(unit),
            ItemKey::SliceKnob { unit, knob } => write!(f, "{unit} {}", knob.file()),
            ItemKey::OwnCgroup { slice: None } => write!(f, "/{HOLDFAST_SUBTREE}"),
            ItemKey::OwnCgroup { slice: Some(s) } => write!(f, "/{HOLDFAST_SUBTREE}/{s}"),
            ItemKey::OwnCgroupKnob { slice, knob } => {
                write!(f, "/{HOLDFAST_SUBTREE}/{slice} {}", knob.file())
            }
            ItemKey::Controller {
                name,
                at_root: false,
            } => write!(f, "controller {name}"),
            ItemKey::Controller {
                name,
                at_root: true,
            } => write!(f, "controller {name} in /"),
            ItemKey::GoBuild { unit, check } => write!(f, "{unit} go_build.{}", check.as_str()),
            ItemKey::Module(name) => write!(f, "kernel module {name}"),
        }
    }
}

/// The state of one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// The host has what the policy wants.
    Compliant,
    /// The host differs from the policy (and holdfast has not corrected it).
    Drifted,
    /// The host differed and holdfast corrected it in this pass.
    Corrected,
    /// A correction was refused by a safety check; the detail has the numbers.
    Refused,
    /// Reading or writing failed; the detail has the path and the error.
    Failed,
    /// The setting does not exist or cannot be managed on this host.
    Unsupported,
    /// The configuration is right, but running processes still have the old
    /// value until they restart.
    RestartRequired,
    /// Another writer keeps reverting the setting.
    Contested,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Compliant,
        State::Drifted,
        State::Corrected,
        State::Refused,
        State::Failed,
        State::Unsupported,
        State::RestartRequired,
        State::Contested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Compliant => "compliant",
            State::Drifted => "drifted",
            State::Corrected => "corrected",
            State::Refused => "refused",
            State::Failed => "failed",
            State::Unsupported => "unsupported",
            State::RestartRequired => "restart-required",
            State::Contested => "contested",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether this state leaves the host out of line with the policy. An
    /// unsupported setting is not drift: there is nothing to set.
    pub fn is_drift(self) -> bool {
        matches!(
            self,
            State::Drifted
                | State::Refused
                | State::Failed
                | State::RestartRequired
                | State::Contested
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change holdfast would make to bring an item in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    WriteSysctl {
        key: SysctlKey,
        value: SysctlValue,
    },
    /// Replace a file holdfast owns (atomically).
    WriteFile {
        path: PathBuf,
        content: String,
    },
    /// Remove a file holdfast owns.
    RemoveFile {
        path: PathBuf,
    },
    /// Change properties of a running unit through systemd, this boot only.
    SetUnitProperties {
        unit: String,
        assignments: Vec<String>,
    },
    /// Start a unit (a slice, so that its cgroup exists).
    StartUnit {
        unit: String,
    },
    /// Create a cgroup directory in holdfast's own subtree (no systemd).
    CreateCgroup {
        path: PathBuf,
    },
    /// Enable one controller in a cgroup's `cgroup.subtree_control`.
    EnableController {
        subtree_control: PathBuf,
        controller: String,
    },
    /// Write a limit file of a cgroup in holdfast's own subtree.
    WriteCgroupFile {
        path: PathBuf,
        value: String,
    },
    /// Take an unused module out of the running kernel (delete_module(2),
    /// without waiting: a module in use is left). Not journalled: what
    /// needs the module loads it again.
    UnloadModule {
        name: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::WriteSysctl { key, value } => write!(f, "write {key} = {value}"),
            Action::WriteFile { path, .. } => write!(f, "write {}", path.display()),
            Action::RemoveFile { path } => write!(f, "remove {}", path.display()),
            Action::SetUnitProperties { unit, assignments } => {
                write!(
                    f,
                    "systemctl set-property --runtime {unit} {}",
                    assignments.join(" ")
                )
            }
            Action::StartUnit { unit } => write!(f, "systemctl start {unit}"),
            Action::CreateCgroup { path } => write!(f, "mkdir {}", path.display()),
            Action::EnableController {
                subtree_control,
                controller,
            } => write!(f, "echo +{controller} > {}", subtree_control.display()),
            Action::WriteCgroupFile { path, value } => {
                write!(f, "echo {value} > {}", path.display())
            }
            Action::UnloadModule { name } => write!(f, "rmmod {name}"),
        }
    }
}

/// Another configuration file that sets the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub file: PathBuf,
    pub line: u32,
    pub value: String,
    /// This file's value is the one boot leaves in place.
    pub wins_at_boot: bool,
}

/// One managed setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: ItemKey,
    pub desired: String,
    /// What the host has; empty when it has nothing (an absent key).
    pub actual: String,
    pub state: State,
    pub mode: Mode,
    /// Where the policy asks for this (none for holdfast's own files).
    pub source: Option<Source>,
    /// Human-readable explanations: why refused, what failed, who else sets it.
    pub detail: Vec<String>,
    /// What apply would do (plan), or did (after apply: none left).
    pub action: Option<Action>,
    pub conflicts: Vec<Conflict>,
}

impl Item {
    pub fn new(key: ItemKey, desired: impl Into<String>, mode: Mode) -> Item {
        Item {
            key,
            desired: desired.into(),
            actual: String::new(),
            state: State::Compliant,
            mode,
            source: None,
            detail: Vec::new(),
            action: None,
            conflicts: Vec::new(),
        }
    }

    /// The kind of setting, from its key.
    pub fn kind(&self) -> Kind {
        self.key.kind()
    }
}

/// One of holdfast's own files (its sysctl.d file, its limits.d file) as an
/// item: `desired` is the content it should have, or `None` when it should
/// not exist; `current` is what is there. In enforce mode the item carries
/// the write or removal; in audit mode a file left by an earlier enforced
/// policy is reported with `stale_note`.
pub struct OwnFile<'a> {
    pub key: ItemKey,
    pub path: &'a std::path::Path,
    pub current: Option<&'a str>,
    pub desired: Option<String>,
    pub mode: Mode,
    /// How reports describe the desired and actual content.
    pub desired_label: String,
    pub actual_label: String,
    pub stale_note: &'a str,
}

/// The first line of every unit file and drop-in holdfast writes, and of its
/// sysctl.d files (its persisted file and its copies of vendor files). A
/// file at one of holdfast's paths without it is someone else's, and
/// holdfast never replaces it.
pub const OWN_UNIT_FILE_MARK: &str = "# Managed by holdfast";

/// A systemd unit file or drop-in holdfast owns, which must have `content`;
/// `unit` is the unit it configures (none for the manager's defaults). A
/// file already there that holdfast did not write (no
/// [`OWN_UNIT_FILE_MARK`]) is `refused`, never overwritten.
pub fn unit_file_item(
    unit: Option<&str>,
    path: &std::path::Path,
    current: Option<&str>,
    content: String,
    mode: Mode,
    label: String,
) -> Item {
    debug_assert!(content.starts_with(OWN_UNIT_FILE_MARK));
    if let Some(foreign) = current.filter(|c| !c.starts_with(OWN_UNIT_FILE_MARK)) {
        let key = ItemKey::UnitFile {
            path: path.to_path_buf(),
            unit: unit.map(str::to_string),
        };
        let mut item = Item::new(key, label, mode);
        item.actual = format!("a file holdfast did not write ({} bytes)", foreign.len());
        item.state = State::Refused;
        item.detail.push(format!(
            "{} exists and holdfast did not write it (no \"{OWN_UNIT_FILE_MARK}\" first line): holdfast never replaces a site's own unit file; move its settings into the policy and remove it, or manage this unit outside holdfast",
            path.display()
        ));
        return item;
    }
    own_file_item(OwnFile {
        key: ItemKey::UnitFile {
            path: path.to_path_buf(),
            unit: unit.map(str::to_string),
        },
        path,
        current,
        desired: Some(content),
        mode,
        desired_label: label,
        actual_label: presence(current),
        stale_note: "",
    })
}

/// How reports describe whether a file is there.
pub fn presence(content: Option<&str>) -> String {
    if content.is_some() {
        "present"
    } else {
        "absent"
    }
    .to_string()
}

pub fn own_file_item(f: OwnFile<'_>) -> Item {
    let mut item = Item::new(f.key, f.desired_label, f.mode);
    item.actual = f.actual_label;
    let action = match f.desired {
        Some(content) => (f.current != Some(content.as_str())).then(|| Action::WriteFile {
            path: f.path.to_path_buf(),
            content,
        }),
        None => f.current.is_some().then(|| Action::RemoveFile {
            path: f.path.to_path_buf(),
        }),
    };
    match action {
        None => item.state = State::Compliant,
        Some(action) => {
            item.state = State::Drifted;
            if f.mode == Mode::Enforce {
                item.action = Some(action);
            } else if !f.stale_note.is_empty() {
                item.detail.push(f.stale_note.to_string());
            }
        }
    }
    item
}

/// Counts of items per state.
pub fn summary(items: &[Item]) -> Vec<(State, usize)> {
    State::ALL
        .into_iter()
        .map(|s| (s, items.iter().filter(|i| i.state == s).count()))
        .collect()
}

/// Whether every item is in line with the policy.
pub fn all_compliant(items: &[Item]) -> bool {
    !items.iter().any(|i| i.state.is_drift())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The position of each kind in `Kind::ALL`; the match is exhaustive, so
    /// a new kind must be listed there too.
    fn position(k: Kind) -> usize {
        match k {
            Kind::Sysctl => 0,
            Kind::SysctlPersist => 1,
            Kind::SysctlOverride => 2,
            Kind::Limit => 3,
            Kind::LimitsFile => 4,
            Kind::ServiceLimit => 5,
            Kind::ServicePosture => 6,
            Kind::UnitFile => 7,
            Kind::CgroupLimit => 8,
            Kind::CgroupController => 9,
            Kind::GoBuild => 10,
            Kind::KernelModule => 11,
            Kind::ModprobeFile => 12,
        }
    }

    #[test]
    fn every_kind_is_listed_once_and_parses_back() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(position(k), i);
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("cgroups"), None);
    }
}
