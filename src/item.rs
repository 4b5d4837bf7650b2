//! The unit of every report: one managed setting, what the policy wants, what
//! the host has, and its state. Every kind of setting (sysctls now; limits,
//! services and cgroups as they arrive) reports through this type, so the
//! CLI, the daemon's status API and the metrics share one vocabulary.

use std::fmt;
use std::path::PathBuf;

use crate::policy::{Mode, Source};
use crate::sysctl::{SysctlKey, SysctlValue};

/// What kind of setting an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A value in /proc/sys.
    Sysctl,
    /// holdfast's sysctl.d file, which makes enforced values hold across boots.
    SysctlPersist,
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
}

impl Kind {
    /// Every kind, for filters and metrics. A test fails to compile when a
    /// kind is added to the enum and not here.
    pub const ALL: [Kind; 9] = [
        Kind::Sysctl,
        Kind::SysctlPersist,
        Kind::Limit,
        Kind::LimitsFile,
        Kind::ServiceLimit,
        Kind::ServicePosture,
        Kind::UnitFile,
        Kind::CgroupLimit,
        Kind::CgroupController,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sysctl => "sysctl",
            Kind::SysctlPersist => "sysctl-persist",
            Kind::Limit => "limit",
            Kind::LimitsFile => "limits-file",
            Kind::ServiceLimit => "service-limit",
            Kind::ServicePosture => "service-posture",
            Kind::UnitFile => "unit-file",
            Kind::CgroupLimit => "cgroup",
            Kind::CgroupController => "cgroup-controller",
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
    pub kind: Kind,
    pub key: String,
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
    pub fn new(kind: Kind, key: impl Into<String>, desired: impl Into<String>, mode: Mode) -> Item {
        Item {
            kind,
            key: key.into(),
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
}

/// One of holdfast's own files (its sysctl.d file, its limits.d file) as an
/// item: `desired` is the content it should have, or `None` when it should
/// not exist; `current` is what is there. In enforce mode the item carries
/// the write or removal; in audit mode a file left by an earlier enforced
/// policy is reported with `stale_note`.
pub struct OwnFile<'a> {
    pub kind: Kind,
    pub path: &'a std::path::Path,
    pub current: Option<&'a str>,
    pub desired: Option<String>,
    pub mode: Mode,
    /// How reports describe the desired and actual content.
    pub desired_label: String,
    pub actual_label: String,
    pub stale_note: &'a str,
}

/// A systemd unit file or drop-in holdfast owns, which must have `content`.
pub fn unit_file_item(
    path: &std::path::Path,
    current: Option<&str>,
    content: String,
    mode: Mode,
    label: String,
) -> Item {
    own_file_item(OwnFile {
        kind: Kind::UnitFile,
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
    let mut item = Item::new(
        f.kind,
        f.path.display().to_string(),
        f.desired_label,
        f.mode,
    );
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
            } else {
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
            Kind::Limit => 2,
            Kind::LimitsFile => 3,
            Kind::ServiceLimit => 4,
            Kind::ServicePosture => 5,
            Kind::UnitFile => 6,
            Kind::CgroupLimit => 7,
            Kind::CgroupController => 8,
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
