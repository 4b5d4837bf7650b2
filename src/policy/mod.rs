//! The desired state: policy format v1, validated and merged. Pure: this
//! module takes file names and texts and never touches the host (the
//! `sources` module reads the files).
//!
//! Two stages, as ripgrep does with its flags: `raw` holds what was written,
//! with locations; `validate` builds the typed [`Policy`] below, whose
//! invariants hold by construction (keys are valid, bounds are ordered, sizes
//! are parsed). A policy with any error is rejected whole.

mod error;
mod raw;
pub mod scan;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use error::{PolicyError, PolicyErrors};

use crate::cgroup::{Bytes, Count, CpuMax};
use crate::gobuild::GoVersion;
use crate::limits::{Domain, LimitItem, LimitValue};
use crate::modules::ModuleName;
use crate::sysctl::{Expect, SysctlKey};

/// The policy format version this build reads.
pub const FORMAT_VERSION: u64 = 1;

/// The default headroom kept below CommitLimit when switching to strict
/// overcommit, in percent of the projected limit.
pub const DEFAULT_OVERCOMMIT_HEADROOM_PERCENT: u8 = 10;

/// Where a setting was written: file, line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub file: Arc<str>,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// Whether holdfast corrects drift or only reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What holdfast does about a vendor sysctl.d file (one outside `/etc`:
/// `/run`, `/usr/local/lib`, `/usr/lib`, `/lib`) that sets a managed key
/// to a value the policy does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SysctlConflicts {
    /// List the conflict on the key's item (the default).
    #[default]
    Report,
    /// Replace the vendor file with a copy of the same name in
    /// `/etc/sysctl.d` (which masks it, sysctl.d(5)) whose conflicting
    /// lines are commented out, for the keys holdfast enforces.
    Override,
}

impl SysctlConflicts {
    pub fn as_str(self) -> &'static str {
        match self {
            SysctlConflicts::Report => "report",
            SysctlConflicts::Override => "override",
        }
    }
}

/// A validated, merged policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// The files this policy was built from, in merge order.
    pub files: Vec<String>,
    /// The SHA-256 of each file's content (hex), by file name as in `files`:
    /// what config management compares with what it pushed.
    pub sha256: BTreeMap<String, String>,
    /// The policy-wide mode; `audit` when no file sets it.
    pub mode: Option<Sourced<Mode>>,
    /// `sysctl_conflicts`; `report` when no file sets it.
    pub sysctl_conflicts: Option<Sourced<SysctlConflicts>>,
    pub sysctls: BTreeMap<SysctlKey, SysctlRule>,
    /// At most one rule per (domain, item), in the order first written.
    pub limits: Vec<LimitRule>,
    pub services: BTreeMap<String, ServiceRule>,
    pub service_defaults: ServiceDefaults,
    pub cgroup: CgroupPolicy,
    /// Kernel modules kept out of the kernel (`kernel_modules`).
    pub kernel_modules: BTreeMap<ModuleName, ModuleRule>,
    pub safety: Safety,
}

/// A module the policy disables (`NAME: disabled`, or `NAME: {state:
/// disabled, unload: true, mode: audit}`). A later file's entry for the
/// module replaces the earlier one whole, as a sysctl's does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRule {
    pub name: ModuleName,
    /// Take the module out of the running kernel when it is loaded and
    /// nothing uses it (enforce mode only).
    pub unload: bool,
    /// The module's own mode; the policy's when `None`.
    pub mode: Option<Mode>,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlRule {
    pub key: SysctlKey,
    pub expect: Expect,
    pub mode: Option<Mode>,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    pub domain: Domain,
    pub item: LimitItem,
    pub soft: Option<LimitValue>,
    pub hard: Option<LimitValue>,
    pub mode: Option<Mode>,
    pub source: Source,
}

/// A soft and a hard limit (`LimitNOFILE=SOFT:HARD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPair {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

impl fmt::Display for LimitPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.soft == self.hard {
            write!(f, "{}", self.soft)
        } else {
            write!(f, "{}:{}", self.soft, self.hard)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    /// The unit name, e.g. `myapp.service`.
    pub unit: String,
    /// The slice's name without `.slice`.
    pub slice: Option<Sourced<String>>,
    pub limit_nofile: Option<Sourced<LimitPair>>,
    pub posture: Posture,
    /// How its main binary must have been built (checked, never enforced:
    /// holdfast cannot rebuild a binary).
    pub go_build: Option<Sourced<GoBuild>>,
    pub mode: Option<Sourced<Mode>>,
    pub source: Source,
}

/// Expectations on how a Go service's running binary was built. Each field
/// says what the binary must be (`cgo: false`: built with
/// `CGO_ENABLED=0`); a field left out is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoBuild {
    /// A position-independent executable (`-buildmode=pie`).
    pub pie: Option<Sourced<bool>>,
    /// No symbol table and no DWARF (`-ldflags='-s -w'`).
    pub stripped: Option<Sourced<bool>>,
    /// Built with `-trimpath`.
    pub trimpath: Option<Sourced<bool>>,
    /// Built with cgo (`CGO_ENABLED=1`).
    pub cgo: Option<Sourced<bool>>,
    /// The oldest Go toolchain allowed.
    pub min_version: Option<Sourced<GoVersion>>,
}

/// A service's security posture: enforced through its drop-in, verified on
/// its running processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Posture {
    pub no_new_privileges: Option<Sourced<bool>>,
    /// systemd `SystemCallFilter=` sets and names.
    pub seccomp: Option<Sourced<Vec<String>>>,
    /// The capability bounding set; nothing else is allowed.
    pub capabilities: Option<Sourced<Vec<String>>>,
    /// The user the service runs as (never root).
    pub user: Option<Sourced<String>>,
    pub go_runtime: Option<Sourced<GoRuntime>>,
}

impl Posture {
    pub fn is_empty(&self) -> bool {
        *self == Posture::default()
    }
}

/// The Go runtime baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRuntime {
    pub gomaxprocs: GoMaxProcs,
    pub godebug: Option<String>,
    pub gotraceback: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoMaxProcs {
    /// ceil(quota / period) of the tightest `cpu.max` the policy sets on the
    /// service's slice path (the slice and the slices it nests in); the CPU
    /// count without a quota.
    Auto,
    Fixed(u32),
}

/// Settings systemd applies to every service (`system.conf.d`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceDefaults {
    /// `DefaultLimitNOFILE=`.
    pub limit_nofile: Option<Sourced<LimitPair>>,
    pub mode: Option<Sourced<Mode>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    pub controllers: Option<Sourced<Vec<String>>>,
    pub slices: BTreeMap<String, SliceRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRule {
    /// The slice's name without `.slice`, e.g. `go-app`.
    pub name: String,
    pub memory_max: Option<Sourced<Bytes>>,
    pub memory_high: Option<Sourced<Bytes>>,
    pub cpu_max: Option<Sourced<CpuMax>>,
    pub pids_max: Option<Sourced<Count>>,
    pub mode: Option<Sourced<Mode>>,
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Safety {
    /// Percent of the projected CommitLimit that must stay free for a switch
    /// to strict overcommit to go ahead.
    pub overcommit_headroom_percent: Option<Sourced<u8>>,
}

impl Safety {
    pub fn overcommit_headroom_percent(&self) -> u8 {
        self.overcommit_headroom_percent
            .as_ref()
            .map_or(DEFAULT_OVERCOMMIT_HEADROOM_PERCENT, |h| h.value)
    }
}

/// The SHA-256 of a file's content, lowercase hex (as `sha256sum` prints it).
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Policy {
    /// Parses, validates and merges policy files given as `(name, text)` in
    /// merge order. All errors of all files are reported together; any error
    /// rejects the whole policy.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Policy, PolicyErrors> {
        let mut merged = Policy::default();
        let mut errors = Vec::new();
        for (name, text) in files {
            match validate::file(name, text) {
                Ok(fragment) => merged.overlay(fragment),
                Err(mut errs) => errors.append(&mut errs),
            }
            merged.sha256.insert(name.to_string(), sha256_hex(text));
        }
        if errors.is_empty() {
            errors = validate::merged(&merged);
        }
        if errors.is_empty() {
            Ok(merged)
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// The policy-wide mode.
    pub fn default_mode(&self) -> Mode {
        self.mode.as_ref().map_or(Mode::Audit, |m| m.value)
    }

    /// What to do about vendor sysctl.d files that conflict with the
    /// policy.
    pub fn sysctl_conflicts(&self) -> SysctlConflicts {
        self.sysctl_conflicts
            .as_ref()
            .map(|c| c.value)
            .unwrap_or_default()
    }

    /// The mode of an item: its own, else the policy's.
    pub fn mode_of(&self, item: Option<Mode>) -> Mode {
        item.unwrap_or_else(|| self.default_mode())
    }

    /// Applies a later file over this policy, key by key: a later sysctl,
    /// limit (per domain and item) or field of a service or slice replaces
    /// the earlier one, and remembers its own source; so do the
    /// policy-wide `mode` and `sysctl_conflicts`.
    pub fn overlay(&mut self, later: Policy) {
        self.files.extend(later.files);
        self.sha256.extend(later.sha256);
        if later.mode.is_some() {
            self.mode = later.mode;
        }
        // Policy-wide like `mode`: the last file that sets it wins.
        overlay_field(&mut self.sysctl_conflicts, later.sysctl_conflicts);
        self.sysctls.extend(later.sysctls);
        self.kernel_modules.extend(later.kernel_modules);
        for rule in later.limits {
            match self
                .limits
                .iter_mut()
                .find(|r| r.domain == rule.domain && r.item == rule.item)
            {
                Some(existing) => *existing = rule,
                None => self.limits.push(rule),
            }
        }
        for (unit, rule) in later.services {
            match self.services.get_mut(&unit) {
                Some(existing) => {
                    overlay_field(&mut existing.slice, rule.slice);
                    overlay_field(&mut existing.limit_nofile, rule.limit_nofile);
                    let (p, later) = (&mut existing.posture, rule.posture);
                    overlay_field(&mut p.no_new_privileges, later.no_new_privileges);
                    overlay_field(&mut p.seccomp, later.seccomp);
                    overlay_field(&mut p.capabilities, later.capabilities);
                    overlay_field(&mut p.user, later.user);
                    overlay_field(&mut p.go_runtime, later.go_runtime);
                    overlay_field(&mut existing.go_build, rule.go_build);
                    overlay_field(&mut existing.mode, rule.mode);
                    existing.source = rule.source;
                }
                None => {
                    self.services.insert(unit, rule);
                }
            }
        }
        overlay_field(
            &mut self.service_defaults.limit_nofile,
            later.service_defaults.limit_nofile,
        );
        overlay_field(&mut self.service_defaults.mode, later.service_defaults.mode);
        if later.cgroup.controllers.is_some() {
            self.cgroup.controllers = later.cgroup.controllers;
        }
        for (name, rule) in later.cgroup.slices {
            match self.cgroup.slices.get_mut(&name) {
                Some(existing) => {
                    overlay_field(&mut existing.memory_max, rule.memory_max);
                    overlay_field(&mut existing.memory_high, rule.memory_high);
                    overlay_field(&mut existing.cpu_max, rule.cpu_max);
                    overlay_field(&mut existing.pids_max, rule.pids_max);
                    overlay_field(&mut existing.mode, rule.mode);
                    existing.source = rule.source;
                }
                None => {
                    self.cgroup.slices.insert(name, rule);
                }
            }
        }
        overlay_field(
            &mut self.safety.overcommit_headroom_percent,
            later.safety.overcommit_headroom_percent,
        );
    }
}

fn overlay_field<T>(earlier: &mut Option<T>, later: Option<T>) {
    if later.is_some() {
        *earlier = later;
    }
}

#[cfg(test)]
mod tests;
