//! systemd services: holdfast's drop-in per managed unit and its
//! `system.conf.d` defaults, checked in three layers — the file holdfast
//! owns, what systemd believes (its unit properties), and what the running
//! processes really got (`/proc/PID/limits`). Pure; `observe` reads.
//!
//! Design notes this follows: services never read limits.d; `LimitNOFILE=`
//! applies only when a service (re)starts, so a right configuration with an
//! old running limit is `restart-required`, and restarting is a decision
//! holdfast never takes implicitly.

pub mod observe;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::gobuild::maxprocs;
use crate::item::{Conflict, Item, ItemKey, PostureField, ServiceSetting, State, unit_file_item};
use crate::limits::LimitValue;
use crate::policy::{GoMaxProcs, LimitPair, Policy, ServiceRule};
use crate::posture::{ProcStatus, caps, evidence, gomaxprocs_for};
use crate::systemd::UnitInfo;

/// The name of holdfast's drop-in in a unit's `.d` directory and in
/// `system.conf.d`.
pub const DROP_IN_NAME: &str = "90-holdfast.conf";

/// One process of a unit, as /proc/PID/{limits,status,environ} say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcLimits {
    pub pid: u32,
    /// `None` when the process could not be read (it may have exited).
    pub nofile: Option<(LimitValue, LimitValue)>,
    pub status: Option<ProcStatus>,
    pub environ: Option<BTreeMap<String, String>>,
}

/// What was observed of one managed unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitObservation {
    /// What systemd says; an error string when it could not be asked.
    pub info: Result<UnitInfo, String>,
    /// The unit's processes (MainPID and the PIDs of its cgroup).
    pub processes: Vec<ProcLimits>,
}

/// What was read from the host for the services part of a pass.
#[derive(Debug, Clone, Default)]
pub struct ServicesHost {
    /// systemd is PID 1 on this host.
    pub systemd: bool,
    /// Why systemd was not asked about units, when it was not (e.g. a host
    /// root other than `/`).
    pub not_queried: Option<String>,
    pub units: BTreeMap<String, UnitObservation>,
    /// Each managed unit's drop-in: path and current content.
    pub drop_ins: BTreeMap<String, (PathBuf, Option<String>)>,
    /// holdfast's `system.conf.d` file: path and current content.
    pub manager_conf: (PathBuf, Option<String>),
    /// systemd's `DefaultLimitNOFILESoft`/`DefaultLimitNOFILE`, if known.
    pub manager_default_nofile: Option<(LimitValue, LimitValue)>,
    /// Online CPUs (for `gomaxprocs: auto` without a CPU quota).
    pub cpus: u32,
}

/// The units the services part manages.
pub fn managed_units(policy: &Policy) -> Vec<&ServiceRule> {
    policy
        .services
        .values()
        .filter(|s| s.limit_nofile.is_some() || s.slice.is_some() || !s.posture.is_empty())
        .collect()
}

/// Parses the `Max open files` line of /proc/PID/limits.
pub fn parse_proc_nofile(text: &str) -> Option<(LimitValue, LimitValue)> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |f: Option<&str>| match f? {
        "unlimited" => Some(LimitValue::Unlimited),
        n => n.parse().ok().map(LimitValue::Value),
    };
    Some((parse(fields.next())?, parse(fields.next())?))
}

fn systemd_value(v: LimitValue) -> String {
    match v {
        LimitValue::Unlimited => "infinity".into(),
        LimitValue::Value(n) => n.to_string(),
    }
}

/// `LimitNOFILE=SOFT:HARD` as systemd writes it.
fn limit_directive(name: &str, pair: LimitPair) -> String {
    format!(
        "{name}={}:{}\n",
        systemd_value(pair.soft),
        systemd_value(pair.hard)
    )
}

/// GOMAXPROCS for a service: `auto` follows the tightest cpu.max the
/// policy sets on its slice's path — the slice and every slice it nests in
/// (`a-b` is inside `a`) — since the kernel enforces all of them and the Go
/// runtime reads at most its own cgroup's (`gobuild::maxprocs`).
pub fn gomaxprocs(policy: &Policy, rule: &ServiceRule, cpus: u32, setting: GoMaxProcs) -> u32 {
    let quota = rule.slice.as_ref().and_then(|s| {
        maxprocs::tightest(
            maxprocs::slice_path(&s.value)
                .iter()
                .filter_map(|name| policy.cgroup.slices.get(name))
                .filter_map(|slice| slice.cpu_max.as_ref().map(|c| c.value)),
        )
    });
    let auto = gomaxprocs_for(quota, cpus);
    match setting {
        GoMaxProcs::Auto => auto,
        // Validation refuses a number above the slice's quota; above the
        // host's CPUs (no quota) it is capped: more Ps than CPUs only adds
        // scheduling overhead.
        GoMaxProcs::Fixed(n) => n.min(auto),
    }
}

/// The `Environment=` assignments of the Go runtime baseline.
fn go_environment(policy: &Policy, rule: &ServiceRule, cpus: u32) -> Vec<(String, String)> {
    let Some(go) = &rule.posture.go_runtime else {
        return Vec::new();
    };
    let mut env = vec![(
        "GOMAXPROCS".to_string(),
        gomaxprocs(policy, rule, cpus, go.value.gomaxprocs).to_string(),
    )];
    if let Some(d) = &go.value.godebug {
        env.push(("GODEBUG".into(), d.clone()));
    }
    if let Some(t) = &go.value.gotraceback {
        env.push(("GOTRACEBACK".into(), t.clone()));
    }
    env
}

/// Renders a unit's drop-in.
pub fn render_drop_in(policy: &Policy, rule: &ServiceRule, cpus: u32) -> String {
    let mut out = String::from(
        "# Managed by holdfast: do not edit; holdfast rewrites this file.\n\
         # Everything here applies when the service (re)starts.\n[Service]\n",
    );
    if let Some(slice) = &rule.slice {
        out.push_str(&format!("Slice={}.slice\n", slice.value));
    }
    if let Some(l) = &rule.limit_nofile {
        out.push_str(&limit_directive("LimitNOFILE", l.value));
    }
    let p = &rule.posture;
    if let Some(n) = &p.no_new_privileges {
        out.push_str(&format!(
            "NoNewPrivileges={}\n",
            if n.value { "yes" } else { "no" }
        ));
    }
    if let Some(f) = &p.seccomp {
        out.push_str(&format!("SystemCallFilter={}\n", f.value.join(" ")));
    }
    if let Some(c) = &p.capabilities {
        out.push_str(&format!("CapabilityBoundingSet={}\n", c.value.join(" ")));
        // A non-root service gets its capabilities only as ambient ones.
        if p.user.is_some() && !c.value.is_empty() {
            out.push_str(&format!("AmbientCapabilities={}\n", c.value.join(" ")));
        }
    }
    if let Some(u) = &p.user {
        out.push_str(&format!("User={}\n", u.value));
    }
    let env = go_environment(policy, rule, cpus);
    if !env.is_empty() {
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("Environment={}\n", pairs.join(" ")));
    }
    out
}

/// Renders holdfast's `system.conf.d` file.
pub fn render_manager_conf(limit: LimitPair) -> String {
    let mut out = String::from(
        "# Managed by holdfast: defaults for every systemd service; do not edit.\n\
         # Applies to services (re)started after a daemon-reload.\n[Manager]\n",
    );
    out.push_str(&limit_directive("DefaultLimitNOFILE", limit));
    out
}

fn pair_text(soft: LimitValue, hard: LimitValue) -> String {
    LimitPair { soft, hard }.to_string()
}

pub fn plan(policy: &Policy, host: &ServicesHost) -> Vec<Item> {
    let mut items = Vec::new();
    for rule in managed_units(policy) {
        items.extend(plan_unit(policy, rule, host));
    }
    items.extend(plan_default(policy, host));
    items
}

fn no_systemd_item(mut item: Item) -> Item {
    item.state = State::Unsupported;
    item.detail.push(
        "systemd is not PID 1 on this host: services get their limits from their init system, so holdfast writes no unit files"
            .into(),
    );
    item
}

fn plan_unit(policy: &Policy, rule: &ServiceRule, host: &ServicesHost) -> Vec<Item> {
    let mode = policy.mode_of(rule.mode.as_ref().map(|m| m.value));
    let limit_item = rule.limit_nofile.as_ref().map(|limit| {
        let mut item = Item::new(
            ItemKey::Service {
                unit: rule.unit.clone(),
                setting: ServiceSetting::LimitNofile,
            },
            limit.value.to_string(),
            mode,
        );
        item.source = Some(limit.source.clone());
        item
    });
    let slice_item = rule.slice.as_ref().map(|slice| {
        let mut item = Item::new(
            ItemKey::Service {
                unit: rule.unit.clone(),
                setting: ServiceSetting::Slice,
            },
            format!("{}.slice", slice.value),
            mode,
        );
        item.source = Some(slice.source.clone());
        item
    });
    if !host.systemd {
        return limit_item
            .into_iter()
            .chain(slice_item)
            .map(no_systemd_item)
            .collect();
    }
    let (path, current) = host
        .drop_ins
        .get(&rule.unit)
        .cloned()
        .unwrap_or_else(|| (PathBuf::from(DROP_IN_NAME), None));
    let content = render_drop_in(policy, rule, host.cpus);
    let file_right = current.as_deref() == Some(content.as_str());
    let file_item = unit_file_item(
        Some(&rule.unit),
        &path,
        current.as_deref(),
        content,
        mode,
        format!("drop-in for {}", rule.unit),
    );
    let mut items = Vec::new();
    if let (Some(item), Some(limit)) = (limit_item, &rule.limit_nofile) {
        items.push(judge_limit(
            item,
            rule,
            limit.value,
            host,
            &path,
            file_right,
        ));
    }
    if let (Some(item), Some(slice)) = (slice_item, &rule.slice) {
        items.push(judge_slice(item, rule, &slice.value, host, file_right));
    }
    items.extend(posture_items(policy, rule, host, file_right, mode));
    items.push(file_item);
    items
}

type Evidence = Box<dyn Fn(&ProcLimits) -> Option<String>>;

/// One item per posture field, each judged on every process of the unit.
#[expect(
    clippy::too_many_lines,
    reason = "one item per posture field, in the order of the policy reference"
)]
fn posture_items(
    policy: &Policy,
    rule: &ServiceRule,
    host: &ServicesHost,
    file_right: bool,
    mode: crate::policy::Mode,
) -> Vec<Item> {
    let p = &rule.posture;
    let mut checks: Vec<(PostureField, String, crate::policy::Source, Evidence)> = Vec::new();
    if let Some(n) = p.no_new_privileges.as_ref().filter(|n| n.value) {
        checks.push((
            PostureField::NoNewPrivileges,
            "yes".into(),
            n.source.clone(),
            Box::new(|pr: &ProcLimits| {
                let e = evidence::may_gain_privileges(pr.status.as_ref()?)?;
                Some(format!("PID {}: {e}", pr.pid))
            }),
        ));
    }
    if let Some(f) = &p.seccomp {
        checks.push((
            PostureField::Seccomp,
            f.value.join(" "),
            f.source.clone(),
            Box::new(|pr: &ProcLimits| {
                let e = evidence::no_seccomp_filter(pr.status.as_ref()?)?;
                Some(format!("PID {}: {e} (2 = filter)", pr.pid))
            }),
        ));
    }
    if let Some(c) = &p.capabilities {
        let allowed = caps::mask(&c.value).unwrap_or(0);
        let desired = if c.value.is_empty() {
            "none".to_string()
        } else {
            c.value.join(" ")
        };
        checks.push((
            PostureField::Capabilities,
            desired,
            c.source.clone(),
            Box::new(move |pr: &ProcLimits| {
                let e = evidence::capabilities_beyond(pr.status.as_ref()?, allowed)?;
                Some(format!("PID {}: {e}", pr.pid))
            }),
        ));
    }
    if let Some(u) = &p.user {
        checks.push((
            PostureField::User,
            u.value.clone(),
            u.source.clone(),
            Box::new(|pr: &ProcLimits| {
                let s = pr.status.as_ref()?;
                evidence::runs_as_root(s, true)?;
                Some(format!(
                    "PID {}: runs as UID {} (effective {})",
                    pr.pid, s.uid[0], s.uid[1]
                ))
            }),
        ));
    }
    if let Some(g) = &p.go_runtime {
        let env = go_environment(policy, rule, host.cpus);
        let desired = env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        checks.push((
            PostureField::GoRuntime,
            desired,
            g.source.clone(),
            Box::new(move |pr: &ProcLimits| {
                let have = pr.environ.as_ref()?;
                let wrong: Vec<String> = env
                    .iter()
                    .filter(|(k, v)| have.get(k) != Some(v))
                    .map(|(k, v)| match have.get(k) {
                        Some(h) => format!("{k}={h} (want {v})"),
                        None => format!("{k} unset (want {v})"),
                    })
                    .collect();
                (!wrong.is_empty()).then(|| format!("PID {}: {}", pr.pid, wrong.join(", ")))
            }),
        ));
    }
    let mut items = Vec::new();
    for (field, desired, source, evidence) in checks {
        let mut item = Item::new(
            ItemKey::Posture {
                unit: rule.unit.clone(),
                field,
            },
            desired,
            mode,
        );
        item.source = Some(source);
        item.state = if file_right {
            State::Compliant
        } else {
            State::Drifted
        };
        if !file_right {
            item.detail
                .push("holdfast's drop-in does not have it yet".into());
        }
        if let Ok((_, processes)) = unit_view(host, &rule.unit, &mut item) {
            let found: Vec<String> = processes.iter().filter_map(&evidence).collect();
            let read = processes.iter().filter(|pr| pr.status.is_some()).count();
            item.actual = if found.is_empty() {
                if read > 0 {
                    format!("ok in {read} process(es)")
                } else {
                    "not running".into()
                }
            } else {
                format!("{} of {read} process(es) differ", found.len())
            };
            if !found.is_empty() {
                item.detail.extend(found);
                if file_right {
                    item.state = State::RestartRequired;
                    item.detail.push(format!(
                        "the configuration is right; the running processes get it when {} restarts (holdfast apply --restart-services)",
                        rule.unit
                    ));
                }
            }
        }
        items.push(item);
    }
    items
}

/// What systemd said about a unit, with the reason noted on `item` when it
/// could not be asked or answer.
fn unit_view<'a>(
    host: &'a ServicesHost,
    unit: &str,
    item: &mut Item,
) -> Result<(&'a UnitInfo, &'a [ProcLimits]), Unknown> {
    match host.units.get(unit) {
        None => {
            if let Some(why) = &host.not_queried {
                item.detail.push(format!("systemd not asked: {why}"));
            }
            Err(Unknown::NotAsked)
        }
        Some(UnitObservation { info: Err(e), .. }) => {
            item.detail.push(format!("cannot ask systemd: {e}"));
            Err(Unknown::Failed)
        }
        Some(UnitObservation {
            info: Ok(info),
            processes,
        }) => Ok((info, processes)),
    }
}

/// Why [`unit_view`] has nothing to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unknown {
    NotAsked,
    Failed,
}

/// Where the unit's processes are, and whether systemd and the running
/// processes agree with `Slice=`. `Slice=` applies on restart, like limits.
fn judge_slice(
    mut item: Item,
    rule: &ServiceRule,
    slice: &str,
    host: &ServicesHost,
    file_right: bool,
) -> Item {
    let want = format!("{slice}.slice");
    item.state = if file_right {
        State::Compliant
    } else {
        State::Drifted
    };
    if let Ok((info, _)) = unit_view(host, &rule.unit, &mut item) {
        item.actual = info.slice.clone().unwrap_or_default();
        let systemd_right = info.slice.as_deref() == Some(want.as_str());
        let in_slice = info
            .control_group
            .as_deref()
            .is_some_and(|cg| cg.split('/').any(|part| part == want));
        if file_right && !systemd_right {
            item.state = State::Drifted;
            item.detail.push(if info.need_daemon_reload {
                "systemd has not reloaded the drop-in yet (daemon-reload pending)".to_string()
            } else {
                format!("systemd puts {} in {}", rule.unit, item.actual)
            });
        } else if file_right && info.active_state == "active" && !in_slice {
            item.state = State::RestartRequired;
            item.detail.push(format!(
                "the running processes are still in {}; they move to {want} when {} restarts (holdfast apply --restart-services)",
                info.control_group.as_deref().unwrap_or("another cgroup"),
                rule.unit
            ));
        } else if let Some(cg) = &info.control_group {
            item.detail.push(format!("cgroup {cg}"));
        }
    }
    item
}

fn judge_limit(
    mut item: Item,
    rule: &ServiceRule,
    want: LimitPair,
    host: &ServicesHost,
    path: &Path,
    file_right: bool,
) -> Item {
    let mut state = if file_right {
        State::Compliant
    } else {
        State::Drifted
    };
    if !file_right {
        item.detail.push(format!(
            "{} does not say LimitNOFILE={}:{} yet",
            path.display(),
            systemd_value(want.soft),
            systemd_value(want.hard)
        ));
    }
    let view = unit_view(host, &rule.unit, &mut item);
    if view == Err(Unknown::Failed) && file_right {
        state = State::Failed;
    }
    if let Ok((info, processes)) = view {
        let configured = (info.limit_nofile_soft, info.limit_nofile_hard);
        if let (Some(s), Some(h)) = configured {
            item.detail
                .push(format!("systemd will start it with {}", pair_text(s, h)));
        }
        if info.load_state == "not-found" {
            item.detail.push(format!(
                "{} is not installed; the drop-in waits for it",
                rule.unit
            ));
        }
        let systemd_right = configured == (Some(want.soft), Some(want.hard));
        if file_right && !systemd_right {
            state = State::Drifted;
            if info.need_daemon_reload {
                item.detail.push(
                    "systemd has not reloaded the drop-in yet (daemon-reload pending)".into(),
                );
            } else if let Some(later) = later_drop_in(&info.drop_in_paths, path) {
                item.detail.push(format!(
                    "overridden by {later}, which systemd reads after holdfast's drop-in"
                ));
                item.conflicts.push(Conflict {
                    file: PathBuf::from(later),
                    line: 0,
                    value: configured.1.map(|h| h.to_string()).unwrap_or_default(),
                    wins_at_boot: true,
                });
            }
        }
        let running: Vec<String> = processes
            .iter()
            .filter_map(|p| p.nofile.map(|(s, h)| (p.pid, s, h)))
            .filter(|(_, s, h)| (*s, *h) != (want.soft, want.hard))
            .map(|(pid, s, h)| format!("PID {pid} runs with {}", pair_text(s, h)))
            .collect();
        if let Some(first) = processes.iter().find_map(|p| p.nofile) {
            item.actual = pair_text(first.0, first.1);
        } else if let (Some(s), Some(h)) = configured {
            item.actual = pair_text(s, h);
        }
        if !running.is_empty() {
            item.detail.extend(running);
            if state == State::Compliant || (state == State::Drifted && file_right && systemd_right)
            {
                state = State::RestartRequired;
                item.detail.push(format!(
                    "the configuration is right; the running processes get it when {} restarts (holdfast apply --restart-services)",
                    rule.unit
                ));
            }
        }
    }
    if item.actual.is_empty() && file_right {
        item.actual = want.to_string();
    }
    item.state = state;
    item
}

/// The first drop-in systemd reads after `ours`, if any. systemd reads
/// drop-ins in name order across its directories; a later one wins.
fn later_drop_in(paths: &[String], ours: &Path) -> Option<String> {
    let ours_name = ours.file_name()?.to_str()?;
    paths
        .iter()
        .filter(|p| Path::new(p) != ours)
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n > ours_name)
        })
        .cloned()
}

fn plan_default(policy: &Policy, host: &ServicesHost) -> Vec<Item> {
    let defaults = &policy.service_defaults;
    let Some(limit) = &defaults.limit_nofile else {
        return Vec::new();
    };
    let mode = policy.mode_of(defaults.mode.as_ref().map(|m| m.value));
    let mut item = Item::new(ItemKey::DefaultLimitNofile, limit.value.to_string(), mode);
    item.source = Some(limit.source.clone());
    if !host.systemd {
        return vec![no_systemd_item(item)];
    }
    let (path, current) = &host.manager_conf;
    let content = render_manager_conf(limit.value);
    let file_right = current.as_deref() == Some(content.as_str());
    if let Some((s, h)) = host.manager_default_nofile {
        item.actual = pair_text(s, h);
    }
    item.state = match (file_right, host.manager_default_nofile) {
        (false, _) => State::Drifted,
        (true, Some((s, h))) if (s, h) != (limit.value.soft, limit.value.hard) => {
            item.detail
                .push("systemd has not reloaded the default yet (daemon-reload pending)".into());
            State::Drifted
        }
        _ => State::Compliant,
    };
    item.detail.push("applies to services started after the daemon-reload; running services keep their limits until they restart".into());
    let file_item = unit_file_item(
        None,
        path,
        current.as_deref(),
        content,
        mode,
        "systemd service defaults".into(),
    );
    vec![item, file_item]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \nMax locked memory         8388608              8388608              bytes     \n";
        assert_eq!(
            parse_proc_nofile(text),
            Some((LimitValue::Value(1024), LimitValue::Value(524288)))
        );
        assert_eq!(
            parse_proc_nofile("Max open files unlimited unlimited files\n"),
            Some((LimitValue::Unlimited, LimitValue::Unlimited))
        );
        assert_eq!(parse_proc_nofile("nothing\n"), None);
    }

    #[test]
    fn later_drop_ins_are_found_by_name() {
        let ours = Path::new("/etc/systemd/system/a.service.d/90-holdfast.conf");
        let paths = vec![
            "/etc/systemd/system/a.service.d/10-site.conf".to_string(),
            ours.display().to_string(),
            "/run/systemd/system.control/a.service.d/50-LimitNOFILE.conf".to_string(),
            "/etc/systemd/system/a.service.d/99-override.conf".to_string(),
        ];
        assert_eq!(
            later_drop_in(&paths, ours).as_deref(),
            Some("/etc/systemd/system/a.service.d/99-override.conf")
        );
        assert_eq!(later_drop_in(&paths[..2], ours), None);
    }
}
