//! Judge each disabled module and plan holdfast's modprobe.d file. Pure: it
//! works on what `observe` read.
//!
//! # Guarantees
//! - A module is compliant only when modprobe would refuse it (its first
//!   `install` line runs `false` or `true`) and it is blacklisted, and the
//!   running kernel does not have it loaded.
//! - A loaded module is reported (`restart-required`): the configuration
//!   stops the next load, not this one. It is unloaded only when its rule
//!   says `unload: true`, its mode is enforce and nothing uses it (no
//!   reference, no module that depends on it); one in use stays reported.
//! - holdfast's file holds exactly the enforced modules; it is the only file
//!   holdfast writes for this area. A competing file is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::ModuleName;
use super::conf::{self, Command, Line};
use crate::item::{Action, Conflict, Item, ItemKey, OwnFile, State, own_file_item};
use crate::policy::{Mode, ModuleRule, Policy};

/// A module the running kernel has loaded (a line of /proc/modules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// How many references hold it (the third field).
    pub refcount: u64,
    /// The modules that use it, as /proc/modules lists them.
    pub used_by: Vec<String>,
}

/// What was read from the host for the kernel modules of a pass.
#[derive(Debug, Clone)]
pub struct ModulesHost {
    /// Every `install` and `blacklist` line of modprobe.d, in the order
    /// modprobe reads them (holdfast's own file included: it is what
    /// modprobe reads too).
    pub lines: Vec<Line>,
    /// holdfast's file and what it holds now.
    pub own_path: PathBuf,
    pub own: Option<String>,
    /// The loaded modules, by kernel name; `Err` says why /proc/modules
    /// could not be read.
    pub loaded: Result<BTreeMap<String, Loaded>, String>,
    /// The policy's modules that are built into the kernel (listed in
    /// modules.builtin, or a directory in /sys/module with no line in
    /// /proc/modules and no `initstate`).
    pub builtin: Vec<String>,
    /// The running kernel's module index; `Err` says why it could not be
    /// read (then no module is said to be missing from the kernel).
    pub kernel: Result<KernelIndex, String>,
}

/// What the running kernel has of modules, from its module directory.
#[derive(Debug, Clone, Default)]
pub struct KernelIndex {
    /// `kernel.osrelease`: the directory's name under /lib/modules.
    pub release: String,
    /// The policy's modules that are loadable (in modules.dep), by kernel
    /// name.
    pub modules: BTreeSet<String>,
    /// The policy's modules that are built in (in modules.builtin).
    pub builtin: BTreeSet<String>,
}

impl ModulesHost {
    /// Whether the running kernel has no such module at all: neither a file
    /// modprobe could load nor a part of the kernel, and not loaded. False
    /// when the module index could not be read.
    fn missing(&self, name: &str) -> bool {
        let loaded = self.loaded.as_ref().is_ok_and(|l| l.contains_key(name));
        self.kernel
            .as_ref()
            .is_ok_and(|k| !loaded && !k.modules.contains(name) && !k.builtin.contains(name))
    }
}

impl ModulesHost {
    /// holdfast's file as the pass left it, when `path` is that file (see
    /// `area::Observation::own_file`).
    pub fn own_file(&self, path: &std::path::Path) -> Option<Option<&str>> {
        (self.own_path == path).then_some(self.own.as_deref())
    }
}

/// The items: one per policy module, then holdfast's file.
pub fn plan(policy: &Policy, host: &ModulesHost) -> Vec<Item> {
    let mut items: Vec<Item> = policy
        .kernel_modules
        .values()
        .map(|rule| judge(policy, rule, host))
        .collect();
    let enforced: Vec<&ModuleName> = policy
        .kernel_modules
        .values()
        .filter(|r| policy.mode_of(r.mode) == Mode::Enforce)
        .map(|r| &r.name)
        .collect();
    // The file is holdfast's to write while any module is enforced; with
    // none, a file left from an earlier policy is removed in the policy's
    // mode. A policy with modules always has the file's item, so that the
    // pass that removes it still reports it (read again, it is absent).
    let file_mode = if enforced.is_empty() {
        policy.mode_of(None)
    } else {
        Mode::Enforce
    };
    if !policy.kernel_modules.is_empty() || host.own.is_some() {
        items.push(file_item(host, &enforced, file_mode));
    }
    items
}

fn judge(policy: &Policy, rule: &ModuleRule, host: &ModulesHost) -> Item {
    let mode = policy.mode_of(rule.mode);
    let name = &rule.name;
    let desired = if rule.unload {
        "disabled, not loaded"
    } else {
        "disabled"
    };
    let mut item = Item::new(ItemKey::Module(name.clone()), desired, mode);
    item.source = Some(rule.source.clone());
    let decided = conf::decide(&host.lines, name);
    let refuses = decided.install_refuses();
    if let Some(Line {
        file,
        line,
        command: Command::Install { run, .. },
    }) = decided.install
        && !refuses
        && *file != host.own_path
    {
        item.conflicts.push(Conflict {
            file: file.clone(),
            line: *line,
            value: format!("install {} {run}", name.written()),
            wins_at_boot: true,
        });
        item.detail.push(format!(
            "{}:{line} makes `modprobe {name}` run `{run}`, and modprobe runs a module's first install line: that file sorts before holdfast's",
            file.display(),
        ));
    }
    let disabled = refuses && decided.blacklist.is_some();
    if host.builtin.iter().any(|b| b == name.as_str()) {
        item.state = State::Unsupported;
        item.actual = "built into the kernel".into();
        item.detail.push(
            "built into the running kernel: modprobe.d cannot keep it out (a kernel built without it can)"
                .into(),
        );
        return item;
    }
    let loaded = match &host.loaded {
        Ok(loaded) => loaded.get(name.as_str()),
        Err(why) => {
            item.detail
                .push(format!("cannot tell whether it is loaded: {why}"));
            None
        }
    };
    let missing = host.missing(name.as_str());
    item.actual = match (disabled, loaded.is_some(), missing) {
        (true, false, false) => "disabled",
        (true, false, true) => "disabled (not in this kernel)",
        (true, true, _) => "disabled, but loaded",
        (false, false, false) => "loadable",
        (false, false, true) => "not in this kernel",
        (false, true, _) => "loaded",
    }
    .into();
    if missing && let Ok(k) = &host.kernel {
        item.detail.push(format!(
            "kernel {} has no such module (not in its modules.dep or modules.builtin): nothing can load it now, but another kernel may have it",
            k.release
        ));
    }
    if !disabled {
        item.state = State::Drifted;
        if !refuses {
            item.detail.push(format!(
                "`modprobe {name}` would load it: no `install {name} /bin/false` line decides it"
            ));
        }
        if decided.blacklist.is_none() {
            item.detail.push(format!(
                "not blacklisted: a device that asks for it loads it (`blacklist {name}`)"
            ));
        }
    }
    if let Some(l) = loaded {
        judge_loaded(&mut item, rule, l, disabled);
    }
    item
}

/// A policy module the running kernel has loaded: unloaded when the rule
/// asks and nothing uses it, reported otherwise.
fn judge_loaded(item: &mut Item, rule: &ModuleRule, l: &Loaded, disabled: bool) {
    let name = &rule.name;
    let in_use = l.refcount > 0 || !l.used_by.is_empty();
    if rule.unload && item.mode == Mode::Enforce && !in_use {
        item.state = State::Drifted;
        item.action = Some(Action::UnloadModule {
            name: name.as_str().to_string(),
        });
        item.detail.push(
            "loaded in the running kernel and unused: `unload: true` takes it out (delete_module, as rmmod does)"
                .into(),
        );
        return;
    }
    if disabled {
        item.state = State::RestartRequired;
    }
    let users = if l.used_by.is_empty() {
        format!("{} reference(s)", l.refcount)
    } else {
        format!("used by {}", l.used_by.join(", "))
    };
    item.detail.push(format!(
        "loaded in the running kernel ({users}): the configuration stops the next load, not this one; it stays until it is unloaded (`modprobe -r {name}`, once unused) or the host reboots"
    ));
    if rule.unload {
        item.detail.push(if item.mode == Mode::Enforce {
            format!("`unload: true`: holdfast unloads it once nothing uses it ({users} now)")
        } else {
            "`unload: true` acts in enforce mode only; this module is audited".to_string()
        });
    }
}

fn file_item(host: &ModulesHost, enforced: &[&ModuleName], mode: Mode) -> Item {
    let desired = (!enforced.is_empty()).then(|| conf::render(enforced));
    let desired_label = if enforced.is_empty() {
        "absent (no enforced modules)".to_string()
    } else {
        format!("{} modules disabled", enforced.len())
    };
    own_file_item(OwnFile {
        key: ItemKey::ModprobeFile(host.own_path.clone()),
        path: &host.own_path,
        current: host.own.as_deref(),
        desired,
        mode,
        desired_label,
        actual_label: match &host.own {
            None => "absent".into(),
            Some(text) => format!(
                "{} modules disabled",
                conf::parse(&host.own_path, text)
                    .iter()
                    .filter(|l| matches!(l.command, Command::Install { .. }))
                    .count()
            ),
        },
        stale_note: "holdfast's file from an earlier enforced policy is still there; modprobe still refuses its modules",
    })
}
