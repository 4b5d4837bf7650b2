//! Raw policy → typed policy. Every check that can fail produces a
//! [`PolicyError`] at the location of the offending value, with a hint where
//! one helps; checking goes on after an error so a user sees all problems at
//! once.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_saphyr::{Location, MessageFormatter, Spanned};

use super::raw::{
    Entries, RawCgroup, RawDoc, RawGoBuild, RawLimit, RawModule, RawSafety, RawService, RawSlice,
    RawSysctl, Scalar,
};
use super::{
    CgroupPolicy, FORMAT_VERSION, GoBuild, GoMaxProcs, GoRuntime, LimitPair, LimitRule, Mode,
    ModuleRule, Policy, PolicyError, Posture, Safety, ServiceDefaults, ServiceRule, SliceRule,
    Source, Sourced, SysctlConflicts, SysctlRule,
};
use crate::cgroup::{Bytes, CONTROLLERS, Count, CpuMax};
use crate::gobuild::{GoVersion, maxprocs};
use crate::limits::{Domain, LimitItem, LimitValue};
use crate::modules::ModuleName;
use crate::sysctl::{Expect, KeyError, SysctlKey, SysctlValue};

/// systemd's system-call sets (`systemd-analyze syscall-filter`).
const SYSCALL_SETS: &[&str] = &[
    "aio",
    "basic-io",
    "chown",
    "clock",
    "cpu-emulation",
    "debug",
    "default",
    "file-system",
    "io-event",
    "ipc",
    "keyring",
    "known",
    "memlock",
    "module",
    "mount",
    "network-io",
    "obsolete",
    "pkey",
    "privileged",
    "process",
    "raw-io",
    "reboot",
    "resources",
    "sandbox",
    "setuid",
    "signal",
    "swap",
    "sync",
    "system-service",
    "timer",
];

/// Parses and validates one file into a policy fragment.
pub fn file(name: &str, text: &str) -> Result<Policy, Vec<PolicyError>> {
    let (file, bad_name) = super::scan::file_name(name);
    let mut refused = super::scan::text(&file, text);
    refused.splice(0..0, bad_name);
    if !refused.is_empty() {
        return Err(refused);
    }
    let options = serde_saphyr::options! { with_snippet: false };
    let raw: RawDoc = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        let message = serde_saphyr::DefaultMessageFormatter.format_message(&e);
        vec![syntax_error(at(&file, &loc), &message)]
    })?;
    let mut v = Validator {
        file,
        errors: Vec::new(),
    };
    let policy = v.doc(raw);
    // In file order, whatever order the checks ran in.
    v.errors.sort_by_key(|e| (e.source.line, e.source.column));
    if v.errors.is_empty() {
        Ok(policy)
    } else {
        Err(v.errors)
    }
}

/// Checks that need the merged policy (fields of one slice may come from
/// different files).
pub fn merged(policy: &Policy) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    for svc in policy.services.values() {
        let (Some(go), Some(slice)) = (&svc.posture.go_runtime, &svc.slice) else {
            continue;
        };
        let GoMaxProcs::Fixed(n) = go.value.gomaxprocs else {
            continue;
        };
        // The tightest quota on the slice's path (a dash nests a slice),
        // and the slice that sets it.
        let on_path: Vec<(&str, CpuMax)> = maxprocs::slice_path(&slice.value)
            .into_iter()
            .filter_map(|name| policy.cgroup.slices.get(&name))
            .filter_map(|s| s.cpu_max.as_ref().map(|c| (s.name.as_str(), c.value)))
            .collect();
        let tightest = maxprocs::tightest(on_path.iter().map(|(_, c)| *c));
        let quota = on_path
            .iter()
            .find(|(_, c)| Some(*c) == tightest)
            .and_then(|(name, c)| c.quota_us.map(|q| (*name, q, c.period_us)));
        if let Some((name, q, p)) = quota {
            // The one GOMAXPROCS formula (`posture::gomaxprocs_for`); with a
            // quota the CPU count does not enter it.
            let allowed = crate::posture::gomaxprocs_for(tightest, u32::MAX);
            if n > allowed {
                let within = if name == slice.value {
                    String::new()
                } else {
                    format!(", which encloses {}", slice.value)
                };
                errors.push(
                    PolicyError::new(
                        go.source.clone(),
                        format!(
                            "{}: gomaxprocs {n} exceeds the CPU quota of slice {name}{within} (ceil({q} / {p}) = {allowed})",
                            svc.unit
                        ),
                    )
                    .with_hint("use `gomaxprocs: auto`, or a number at most the quota"),
                );
            }
        }
    }
    for slice in policy.cgroup.slices.values() {
        if let (Some(high), Some(max)) = (&slice.memory_high, &slice.memory_max)
            && let (Bytes::Value(h), Bytes::Value(m)) = (high.value, max.value)
            && h > m
        {
            errors.push(
                PolicyError::new(
                    high.source.clone(),
                    format!(
                        "slice {}: memory.high {h} is above memory.max {m} (set at {})",
                        slice.name, max.source
                    ),
                )
                .with_hint(
                    "memory.high throttles before memory.max kills; keep it at or below memory.max",
                ),
            );
        }
    }
    errors
}

fn at(file: &Arc<str>, loc: &Location) -> Source {
    Source {
        file: file.clone(),
        line: loc.line().max(1),
        column: loc.column().max(1),
    }
}

/// GODEBUG as holdfast writes it into `Environment=GODEBUG=...`: pairs of
/// characters that mean nothing to systemd's unit-file syntax (no quoting,
/// no escapes, no `%` specifiers, no white space), so the line systemd reads
/// is exactly the value the policy gave.
fn godebug_ok(value: &str) -> Result<(), String> {
    let safe =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | ':' | '/' | '-');
    if value.is_empty() {
        return Err("is empty".into());
    }
    for pair in value.split(',') {
        let Some((key, val)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        if key.is_empty() || !key.chars().all(safe) || !val.chars().all(safe) {
            let bad = pair.chars().find(|c| *c != '=' && !safe(*c));
            return Err(match bad {
                Some(c) => format!("{c:?} is not allowed"),
                None => format!("{pair:?} has an empty key"),
            });
        }
    }
    Ok(())
}

/// A hint for the common serde errors, so a user learns what would be right.
fn syntax_error(source: Source, message: &str) -> PolicyError {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest);
        return PolicyError::new(source, format!("`{key}` is given twice in this mapping"))
            .with_hint("within one file each key appears once; a later file may override it");
    }
    let err = PolicyError::new(source, message.to_string());
    if message.contains("unknown field") {
        err.with_hint("check the spelling; the fields this place accepts are listed above")
    } else if message.contains("missing field `version`") {
        err.with_hint("every policy file starts with `version: 1`")
    } else if message.contains("expected mapping") {
        err.with_hint(
            "this section is a mapping of `name: value` lines; see the policy format (README, and the book's docs/src/policy.md)",
        )
    } else {
        err
    }
}

struct Validator {
    file: Arc<str>,
    errors: Vec<PolicyError>,
}

impl Validator {
    fn src<T>(&self, s: &Spanned<T>) -> Source {
        at(&self.file, &s.referenced)
    }

    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) -> PolicyError {
        PolicyError::new(self.src(at), message)
    }

    fn push(&mut self, e: PolicyError) {
        self.errors.push(e);
    }

    /// A `true`/`false` field; anything else is an error naming `what`
    /// (with `hint`, when given).
    fn flag(
        &mut self,
        v: &Spanned<Scalar>,
        what: &str,
        hint: Option<&str>,
    ) -> Option<Sourced<bool>> {
        match v.value {
            Scalar::Bool(b) => Some(Sourced {
                value: b,
                source: self.src(v),
            }),
            ref other => {
                let mut e = self.error(v, format!("{what} must be true or false, not {other}"));
                if let Some(hint) = hint {
                    e = e.with_hint(hint);
                }
                self.push(e);
                None
            }
        }
    }

    fn doc(&mut self, raw: RawDoc) -> Policy {
        match &raw.version.value {
            Scalar::Int(n) if *n == i128::from(FORMAT_VERSION) => {}
            Scalar::Int(n) => {
                let e = self
                    .error(&raw.version, format!("unsupported policy version {n}"))
                    .with_hint("this holdfast reads `version: 1`");
                self.push(e);
            }
            other => {
                let e = self
                    .error(
                        &raw.version,
                        format!("version must be the integer 1, not {other}"),
                    )
                    .with_hint("write `version: 1`, unquoted");
                self.push(e);
            }
        }
        let mode = self.opt_mode(raw.mode.as_ref());
        let sysctl_conflicts = raw
            .sysctl_conflicts
            .as_ref()
            .and_then(|c| self.sysctl_conflicts(c));
        let sysctls = raw.sysctl.map(|e| self.sysctls(e)).unwrap_or_default();
        let limits = raw.limits.map(|l| self.limits(l)).unwrap_or_default();
        let services = raw.services.map(|s| self.services(s)).unwrap_or_default();
        let service_defaults = raw
            .service_defaults
            .map(|d| ServiceDefaults {
                limit_nofile: d.limit_nofile.as_ref().and_then(|v| {
                    let pair = self.limit_pair(v)?;
                    Some(Sourced {
                        value: pair,
                        source: self.src(v),
                    })
                }),
                mode: self.opt_mode(d.mode.as_ref()),
            })
            .unwrap_or_default();
        let cgroup = raw.cgroup.map(|c| self.cgroup(c)).unwrap_or_default();
        let kernel_modules = raw
            .kernel_modules
            .map(|m| self.kernel_modules(m))
            .unwrap_or_default();
        let safety = raw
            .safety
            .as_ref()
            .map(|s| self.safety(s))
            .unwrap_or_default();
        Policy {
            files: vec![self.file.to_string()],
            // `Policy::from_files` records the digest of the file's text.
            sha256: BTreeMap::default(),
            mode,
            sysctl_conflicts,
            sysctls,
            limits,
            services,
            service_defaults,
            cgroup,
            kernel_modules,
            safety,
        }
    }

    fn kernel_modules(&mut self, entries: Entries<RawModule>) -> BTreeMap<ModuleName, ModuleRule> {
        let mut out = BTreeMap::new();
        for (name, value) in entries.0 {
            let parsed = match ModuleName::parse(&name.value) {
                Ok(n) => Some(n),
                Err(why) => {
                    let e = self
                        .error(&name, format!("kernel module name {:?} {why}", name.value))
                        .with_hint(
                            "write the module's name as modprobe takes it, e.g. usb-storage",
                        );
                    self.push(e);
                    None
                }
            };
            let Some(fields) = self.module_fields(&name.value, &value) else {
                continue;
            };
            if let Some(parsed) = parsed {
                let source = self.src(&name);
                if let Some(earlier) = out
                    .get(&parsed)
                    .map(|r: &ModuleRule| r.name.written().to_string())
                {
                    let e = self
                        .error(
                            &name,
                            format!(
                                "kernel module {} is listed twice (as {earlier:?} too)",
                                name.value
                            ),
                        )
                        .with_hint("`-` and `_` are the same in module names");
                    self.push(e);
                    continue;
                }
                let (unload, mode) = fields;
                out.insert(
                    parsed.clone(),
                    ModuleRule {
                        name: parsed,
                        unload,
                        mode,
                        source,
                    },
                );
            }
        }
        out
    }

    /// A module entry's `unload` and `mode`; `None` when a field is wrong
    /// (the errors are pushed).
    fn module_fields(
        &mut self,
        name: &str,
        value: &Spanned<RawModule>,
    ) -> Option<(bool, Option<Mode>)> {
        let (state, unload, mode) = match &value.value {
            RawModule::State(state) => (Some((state.as_str(), self.src(value))), None, None),
            RawModule::Table(t) => (
                t.state.as_ref().map(|s| (s.value.as_str(), self.src(s))),
                t.unload.as_ref(),
                t.mode.as_ref(),
            ),
        };
        let mut ok = true;
        if let Some((state, at)) = state
            && state != "disabled"
        {
            let e = PolicyError::new(at, format!("kernel module {name}: unknown state {state:?}"))
                .with_hint("the one state is `disabled` (modprobe refuses the module); leave a module out to leave it alone");
            self.push(e);
            ok = false;
        }
        let unload = match unload {
            None => false,
            Some(u) => {
                let flag = self.flag(
                    u,
                    &format!("kernel module {name}: unload"),
                    Some("`unload: true` takes the module out of the running kernel once nothing uses it"),
                );
                ok &= flag.is_some();
                flag.is_some_and(|f| f.value)
            }
        };
        let mode = match mode {
            None => None,
            Some(m) => {
                let mode = self.mode(m);
                ok &= mode.is_some();
                mode
            }
        };
        ok.then_some((unload, mode))
    }

    fn mode(&mut self, m: &Spanned<String>) -> Option<Mode> {
        match m.value.as_str() {
            "enforce" => Some(Mode::Enforce),
            "audit" => Some(Mode::Audit),
            other => {
                let e = self
                    .error(m, format!("unknown mode {other:?}"))
                    .with_hint("mode is `enforce` (correct drift) or `audit` (report only)");
                self.push(e);
                None
            }
        }
    }

    fn sysctl_conflicts(&mut self, c: &Spanned<String>) -> Option<Sourced<SysctlConflicts>> {
        let value = match c.value.as_str() {
            "report" => SysctlConflicts::Report,
            "override" => SysctlConflicts::Override,
            other => {
                let e = self
                    .error(c, format!("unknown sysctl_conflicts {other:?}"))
                    .with_hint(
                        "`report` lists other sysctl.d files that set a key to another value (the default); `override` also replaces such a file outside /etc with a copy in /etc/sysctl.d whose conflicting lines are commented out",
                    );
                self.push(e);
                return None;
            }
        };
        Some(Sourced {
            value,
            source: self.src(c),
        })
    }

    fn opt_mode(&mut self, m: Option<&Spanned<String>>) -> Option<Sourced<Mode>> {
        let m = m?;
        let value = self.mode(m)?;
        Some(Sourced {
            value,
            source: self.src(m),
        })
    }

    fn sysctls(&mut self, entries: Entries<RawSysctl>) -> BTreeMap<SysctlKey, SysctlRule> {
        let mut out = BTreeMap::new();
        for (key, value) in entries.0 {
            let parsed_key = match SysctlKey::parse(&key.value) {
                Ok(k) => Some(k),
                Err(why) => {
                    let hint = match why {
                        KeyError::PathForm => format!(
                            "write {:?}",
                            crate::sysctl::conf::normalize_key(&key.value)
                        ),
                        KeyError::BadChar('*') => {
                            "globs are not supported; list each key".to_string()
                        }
                        _ => "sysctl keys are dotted paths under /proc/sys, e.g. vm.overcommit_memory"
                            .to_string(),
                    };
                    let e = self
                        .error(&key, format!("sysctl key {:?} {why}", key.value))
                        .with_hint(hint);
                    self.push(e);
                    None
                }
            };
            let source = self.src(&key);
            let value_source = self.src(&value);
            let (expect, mode) = match value.value {
                RawSysctl::Value(scalar) => {
                    let spanned = Spanned::new(scalar, value.referenced, value.defined);
                    (self.exact(&key.value, &spanned), None)
                }
                RawSysctl::Table(t) => {
                    let mode = self.opt_mode(t.mode.as_ref()).map(|m| m.value);
                    let min = t
                        .min
                        .as_ref()
                        .and_then(|m| self.bound(&key.value, "min", m));
                    let max = t
                        .max
                        .as_ref()
                        .and_then(|m| self.bound(&key.value, "max", m));
                    let expect = match (&t.value, t.min.is_some() || t.max.is_some()) {
                        (Some(v), false) => self.exact(&key.value, v),
                        (Some(v), true) => {
                            let e = self
                                .error(
                                    v,
                                    format!(
                                        "sysctl {}: `value` cannot be combined with `min` or `max`",
                                        key.value
                                    ),
                                )
                                .with_hint(
                                    "use `value` for an exact value, or `min`/`max` for bounds",
                                );
                            self.push(e);
                            None
                        }
                        (None, false) => {
                            let e = PolicyError::new(
                                value_source.clone(),
                                format!(
                                    "sysctl {}: the mapping sets neither `value`, `min` nor `max`",
                                    key.value
                                ),
                            );
                            self.push(e);
                            None
                        }
                        (None, true) => match (min, max, t.min.as_ref()) {
                            (Some(lo), Some(hi), Some(at)) if lo > hi => {
                                let e = self
                                    .error(
                                        at,
                                        format!("sysctl {}: min {lo} is above max {hi}", key.value),
                                    )
                                    .with_hint("no value could satisfy both bounds");
                                self.push(e);
                                None
                            }
                            (lo, hi, _) if lo.is_some() || hi.is_some() => {
                                Some(Expect::Range { min: lo, max: hi })
                            }
                            // A bound that failed to parse has been reported.
                            _ => None,
                        },
                    };
                    (expect, mode)
                }
            };
            if let (Some(key), Some(expect)) = (parsed_key, expect) {
                out.insert(
                    key.clone(),
                    SysctlRule {
                        key,
                        expect,
                        mode,
                        source,
                    },
                );
            }
        }
        out
    }

    fn exact(&mut self, key: &str, v: &Spanned<Scalar>) -> Option<Expect> {
        let parsed = match &v.value {
            Scalar::Int(n) => Ok(SysctlValue::from_int(*n)),
            Scalar::Str(s) if s.split_whitespace().count() > 1 => {
                SysctlValue::from_policy(s).map_err(|e| format!("value {s:?}: {e}"))
            }
            Scalar::Str(s) => SysctlValue::from_policy(s).map_err(|e| format!("value {e}")),
            Scalar::Bool(b) => Err(format!(
                "value {b} is a boolean; the kernel takes numbers (write {})",
                u8::from(*b)
            )),
            Scalar::Float(x) => Err(format!("value {x} is not an integer")),
        };
        match parsed {
            Ok(value) => Some(Expect::Exact(value)),
            Err(msg) => {
                let e = self.error(v, format!("sysctl {key}: {msg}"));
                self.push(e);
                None
            }
        }
    }

    fn bound(&mut self, key: &str, which: &str, v: &Spanned<Scalar>) -> Option<i128> {
        let parsed = match &v.value {
            Scalar::Int(n) => Some(*n),
            Scalar::Str(s) => SysctlValue::from_policy(s)
                .ok()
                .and_then(|v| v.as_single_int()),
            _ => None,
        };
        if parsed.is_none() {
            let e = self
                .error(
                    v,
                    format!(
                        "sysctl {key}: `{which}` must be a single decimal number, not {}",
                        v.value
                    ),
                )
                .with_hint(
                    "bounds apply to single-number keys; use an exact value for multi-value keys",
                );
            self.push(e);
        }
        parsed
    }

    fn limit_value(
        &mut self,
        what: &str,
        item: Option<LimitItem>,
        v: &Spanned<Scalar>,
    ) -> Option<LimitValue> {
        let parsed = match &v.value {
            Scalar::Int(-1) => Ok(LimitValue::Unlimited),
            Scalar::Int(n) => match i64::try_from(*n) {
                Ok(n) if n >= 0 || item.is_some_and(LimitItem::allows_negative) => {
                    Ok(LimitValue::Value(n))
                }
                _ => Err(format!("{what} {n} is out of range")),
            },
            Scalar::Str(s) if s == "unlimited" || s == "infinity" => Ok(LimitValue::Unlimited),
            other => Err(format!(
                "{what} must be a number or `unlimited`, not {other}"
            )),
        };
        match parsed {
            Ok(value) => Some(value),
            Err(msg) => {
                let e = self.error(v, msg);
                self.push(e);
                None
            }
        }
    }

    fn limits(&mut self, raw: Vec<Spanned<RawLimit>>) -> Vec<LimitRule> {
        let mut out: Vec<LimitRule> = Vec::new();
        for entry in raw {
            let l = &entry.value;
            let domain = match Domain::parse(&l.domain.value) {
                Ok(d) => Some(d),
                Err(why) => {
                    let e = self
                        .error(&l.domain, format!("limits domain {:?} {why}", l.domain.value))
                        .with_hint("a domain is `*`, a user, `@group`, `%group`, or a `uid:uid` / `@gid:gid` range");
                    self.push(e);
                    None
                }
            };
            let item = LimitItem::parse(&l.item.value);
            if let (Some(Domain::GroupLogins(_)), Some(i)) = (&domain, item)
                && i != LimitItem::Maxlogins
            {
                let e = self
                    .error(
                        &l.domain,
                        format!(
                            "limits domain {:?} (`%group`) applies only to maxlogins, not {}",
                            l.domain.value, l.item.value
                        ),
                    )
                    .with_hint("pam_limits reads `%group` only for maxlogins; use `@group` for other items");
                self.push(e);
            }
            if item.is_none() {
                let names: Vec<&str> = LimitItem::ALL.iter().map(|(n, _)| *n).collect();
                let e = self
                    .error(&l.item, format!("unknown limits item {:?}", l.item.value))
                    .with_hint(format!("items are: {}", names.join(", ")));
                self.push(e);
            }
            let soft = l
                .soft
                .as_ref()
                .and_then(|v| self.limit_value("soft", item, v));
            let hard = l
                .hard
                .as_ref()
                .and_then(|v| self.limit_value("hard", item, v));
            if l.soft.is_none() && l.hard.is_none() {
                let e = self
                    .error(&entry, "limits entry sets neither `soft` nor `hard`")
                    .with_hint("give `soft`, `hard`, or both");
                self.push(e);
            }
            if let (Some(s), Some(h), Some(at)) = (soft, hard, l.soft.as_ref())
                && !s.le(h)
            {
                let e = self
                    .error(at, format!("soft limit {s} is above hard limit {h}"))
                    .with_hint("setrlimit refuses a soft limit above the hard one");
                self.push(e);
            }
            let mode = self.opt_mode(l.mode.as_ref()).map(|m| m.value);
            let (Some(domain), Some(item)) = (domain, item) else {
                continue;
            };
            if let Some(prev) = out.iter().find(|r| r.domain == domain && r.item == item) {
                let e = self
                    .error(&entry, format!("limits entry for {domain} {item} is given twice in this file (first at {})", prev.source))
                    .with_hint("merge the two entries");
                self.push(e);
                continue;
            }
            out.push(LimitRule {
                domain,
                item,
                soft,
                hard,
                mode,
                source: self.src(&entry),
            });
        }
        out
    }

    fn services(&mut self, entries: Entries<RawService>) -> BTreeMap<String, ServiceRule> {
        let mut out = BTreeMap::new();
        for (unit, svc) in entries.0 {
            let source = self.src(&unit);
            let unit_ok = self.unit_name(&unit);
            let s = svc.value;
            let slice = s.slice.as_ref().and_then(|sl| {
                let name = self.slice_name(sl)?;
                Some(Sourced {
                    value: name,
                    source: self.src(sl),
                })
            });
            let limit_nofile = s.limit_nofile.as_ref().and_then(|v| {
                let pair = self.limit_pair(v)?;
                Some(Sourced {
                    value: pair,
                    source: self.src(v),
                })
            });
            let posture = self.posture(&s);
            let go_build = s.go_build.as_ref().map(|g| self.go_build(g));
            let mode = self.opt_mode(s.mode.as_ref());
            if unit_ok {
                out.insert(
                    unit.value.clone(),
                    ServiceRule {
                        unit: unit.value,
                        slice,
                        limit_nofile,
                        posture,
                        go_build,
                        mode,
                        source,
                    },
                );
            }
        }
        out
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one check per posture field, in the order of the policy reference"
    )]
    fn posture(&mut self, s: &RawService) -> Posture {
        let no_new_privileges = s
            .no_new_privileges
            .as_ref()
            .and_then(|v| self.flag(v, "no_new_privileges", None));
        let seccomp = s.seccomp.as_ref().map(|list| {
            for (i, entry) in list.value.iter().enumerate() {
                let name = entry.value.strip_prefix('~').filter(|_| i == 0).unwrap_or(&entry.value);
                let valid = match name.strip_prefix('@') {
                    Some(set) => SYSCALL_SETS.contains(&set),
                    None => !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                };
                if !valid {
                    let e = self
                        .error(entry, format!("seccomp entry {:?} is not a system call or a systemd set", entry.value))
                        .with_hint("use systemd SystemCallFilter= names: @system-service, @network-io, ... or system call names; `~` negates the first entry");
                    self.push(e);
                }
            }
            Sourced {
                value: list.value.iter().map(|e| e.value.clone()).collect(),
                source: self.src(list),
            }
        });
        let capabilities = s.capabilities.as_ref().map(|list| {
            for entry in &list.value {
                if crate::posture::caps::bit(&entry.value).is_none() {
                    let e = self
                        .error(entry, format!("unknown capability {:?}", entry.value))
                        .with_hint(
                            "capability names are as in capabilities(7), e.g. CAP_NET_BIND_SERVICE",
                        );
                    self.push(e);
                }
            }
            Sourced {
                value: list
                    .value
                    .iter()
                    .map(|e| e.value.to_ascii_uppercase())
                    .collect(),
                source: self.src(list),
            }
        });
        let user = s.user.as_ref().and_then(|u| {
            let name = &u.value;
            if name == "root" || name == "0" {
                let e = self.error(u, "user must not be root").with_hint(
                    "run the service as a dedicated user; give it only the capabilities it needs",
                );
                self.push(e);
                return None;
            }
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
                });
            if !valid {
                let e = self.error(u, format!("user {name:?} is not a valid user name"));
                self.push(e);
                return None;
            }
            Some(Sourced {
                value: name.clone(),
                source: self.src(u),
            })
        });
        let go_runtime = s.go_runtime.as_ref().and_then(|g| {
            let raw = &g.value;
            let mut valid = true;
            let gomaxprocs = match &raw.gomaxprocs {
                None => GoMaxProcs::Auto,
                Some(v) => match &v.value {
                    Scalar::Str(s) if s == "auto" => GoMaxProcs::Auto,
                    Scalar::Int(n) if (1..=4096).contains(n) => {
                        GoMaxProcs::Fixed(u32::try_from(*n).unwrap_or(1))
                    }
                    other => {
                        let e = self
                            .error(v, format!("gomaxprocs must be `auto` or a positive number, not {other}"))
                            .with_hint("`auto` follows the slice's cpu.max quota");
                        self.push(e);
                        valid = false;
                        GoMaxProcs::Auto
                    }
                },
            };
            if let Some(tb) = &raw.gotraceback
                && !["none", "single", "all", "system", "crash"].contains(&tb.value.as_str())
            {
                let e = self
                    .error(tb, format!("gotraceback {:?} is not a Go traceback level", tb.value))
                    .with_hint("none, single, all, system or crash");
                self.push(e);
                valid = false;
            }
            if let Some(d) = &raw.godebug
                && let Err(why) = godebug_ok(&d.value)
            {
                let e = self
                    .error(d, format!("godebug {:?}: {why}", d.value))
                    .with_hint(
                        "comma-separated key=value pairs of letters, digits and `._+:/-`, e.g. \
                         `http2client=0,netdns=go+1`; the value goes into a systemd Environment= line, \
                         where quotes, backslashes, `%` and spaces would change or void it",
                    );
                self.push(e);
                valid = false;
            }
            if !valid {
                return None;
            }
            Some(Sourced {
                value: GoRuntime {
                    gomaxprocs,
                    godebug: raw.godebug.as_ref().map(|d| d.value.clone()),
                    gotraceback: raw.gotraceback.as_ref().map(|t| t.value.clone()),
                },
                source: self.src(g),
            })
        });
        Posture {
            no_new_privileges,
            seccomp,
            capabilities,
            user,
            go_runtime,
        }
    }

    fn go_build(&mut self, g: &Spanned<RawGoBuild>) -> Sourced<GoBuild> {
        let raw = &g.value;
        let flag = |v: &Option<Spanned<Scalar>>, name: &str, me: &mut Self| {
            me.flag(v.as_ref()?, &format!("go_build.{name}"), None)
        };
        let pie = flag(&raw.pie, "pie", self);
        let stripped = flag(&raw.stripped, "stripped", self);
        let trimpath = flag(&raw.trimpath, "trimpath", self);
        let cgo = flag(&raw.cgo, "cgo", self);
        let min_version = raw.min_version.as_ref().and_then(|v| {
            let parsed = match &v.value {
                Scalar::Str(s) => GoVersion::parse(s),
                _ => None,
            };
            if let Some(version) = parsed {
                Some(Sourced {
                    value: version,
                    source: self.src(v),
                })
            } else {
                let hint = if matches!(v.value, Scalar::Float(_) | Scalar::Int(_)) {
                    "quote it: YAML reads 1.20 as the number 1.2; write min_version: \"1.22\""
                } else {
                    "a Go release as \"1.N\" or \"1.N.P\", e.g. \"1.22\""
                };
                let e = self
                    .error(
                        v,
                        format!("go_build.min_version {} is not a Go release", v.value),
                    )
                    .with_hint(hint);
                self.push(e);
                None
            }
        });
        Sourced {
            value: GoBuild {
                pie,
                stripped,
                trimpath,
                cgo,
                min_version,
            },
            source: self.src(g),
        }
    }

    fn unit_name(&mut self, unit: &Spanned<String>) -> bool {
        let name = &unit.value;
        let Some(stem) = name.strip_suffix(".service") else {
            let e = self
                .error(unit, format!("service {name:?} is not a service unit name"))
                .with_hint(format!("write {:?}", format!("{name}.service")));
            self.push(e);
            return false;
        };
        let valid = !stem.is_empty()
            && stem.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '\\' | '@' | '-')
            });
        if !valid {
            let e = self
                .error(unit, format!("service {name:?} is not a valid unit name"))
                .with_hint("unit names use letters, digits and : _ . \\ @ -");
            self.push(e);
        }
        valid
    }

    fn slice_name(&mut self, s: &Spanned<String>) -> Option<String> {
        let name = s.value.strip_suffix(".slice").unwrap_or(&s.value);
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--");
        if valid {
            Some(name.to_string())
        } else {
            let e = self
                .error(s, format!("slice name {:?} is not valid", s.value))
                .with_hint("use letters, digits, `_` and single inner `-` (a dash nests the slice: a-b is inside a)");
            self.push(e);
            None
        }
    }

    fn limit_pair(&mut self, v: &Spanned<Scalar>) -> Option<LimitPair> {
        let parsed: Result<LimitPair, String> = match &v.value {
            Scalar::Int(n) if *n >= 0 => i64::try_from(*n)
                .map(|n| LimitPair {
                    soft: LimitValue::Value(n),
                    hard: LimitValue::Value(n),
                })
                .map_err(|_| format!("{n} is out of range")),
            Scalar::Str(s) => {
                let one = |t: &str| -> Result<LimitValue, String> {
                    match t.trim() {
                        "infinity" | "unlimited" => Ok(LimitValue::Unlimited),
                        t => t
                            .parse::<i64>()
                            .ok()
                            .filter(|n| *n >= 0)
                            .map(LimitValue::Value)
                            .ok_or_else(|| format!("{t:?} is not a number or `infinity`")),
                    }
                };
                match s.split_once(':') {
                    Some((a, b)) => one(a).and_then(|soft| {
                        Ok(LimitPair {
                            soft,
                            hard: one(b)?,
                        })
                    }),
                    None => one(s).map(|v| LimitPair { soft: v, hard: v }),
                }
            }
            other => Err(format!("{other} is not a limit")),
        };
        match parsed {
            Ok(pair) if pair.soft.le(pair.hard) => Some(pair),
            Ok(pair) => {
                let e = self
                    .error(
                        v,
                        format!(
                            "limit_nofile: soft limit {} is above hard limit {}",
                            pair.soft, pair.hard
                        ),
                    )
                    .with_hint("write SOFT:HARD with SOFT <= HARD");
                self.push(e);
                None
            }
            Err(msg) => {
                let e = self
                    .error(v, format!("limit_nofile: {msg}"))
                    .with_hint("write a number (both limits), \"SOFT:HARD\", or \"infinity\"");
                self.push(e);
                None
            }
        }
    }

    fn cgroup(&mut self, raw: RawCgroup) -> CgroupPolicy {
        let controllers = raw.controllers.map(|list| {
            let mut names: Vec<String> = Vec::new();
            let mut first_source = None;
            for c in &list {
                first_source.get_or_insert_with(|| self.src(c));
                if !CONTROLLERS.contains(&c.value.as_str()) {
                    let e = self
                        .error(c, format!("unknown cgroup controller {:?}", c.value))
                        .with_hint(format!("controllers are: {}", CONTROLLERS.join(", ")));
                    self.push(e);
                } else if names.contains(&c.value) {
                    let e = self.error(c, format!("controller {:?} is listed twice", c.value));
                    self.push(e);
                } else {
                    names.push(c.value.clone());
                }
            }
            Sourced {
                value: names,
                source: first_source.unwrap_or_else(|| Source {
                    file: self.file.clone(),
                    line: 1,
                    column: 1,
                }),
            }
        });
        let mut slices = BTreeMap::new();
        for (name, slice) in raw.slices.map(|s| s.0).unwrap_or_default() {
            let source = self.src(&name);
            let valid_name = self.slice_name(&name);
            let rule = self.slice(valid_name.clone().unwrap_or_default(), &slice.value, source);
            if let Some(n) = valid_name {
                slices.insert(n, rule);
            }
        }
        CgroupPolicy {
            controllers,
            slices,
        }
    }

    fn slice(&mut self, name: String, raw: &RawSlice, source: Source) -> SliceRule {
        let bytes = |v: &Option<Spanned<Scalar>>, field: &str, me: &mut Self| {
            let v = v.as_ref()?;
            let parsed = match &v.value {
                Scalar::Int(n) if *n >= 0 => u64::try_from(*n)
                    .map(Bytes::Value)
                    .map_err(|_| "is too large".to_string()),
                Scalar::Str(s) => Bytes::parse(s),
                other => Err(format!("{other} is not a size")),
            };
            match parsed {
                Ok(b) => Some(Sourced {
                    value: b,
                    source: me.src(v),
                }),
                Err(why) => {
                    let e = me
                        .error(v, format!("slice {name}: {field} {why}"))
                        .with_hint(
                            "sizes are bytes, or a number with K, M, G, T (powers of 1024), or max",
                        );
                    me.push(e);
                    None
                }
            }
        };
        let memory_max = bytes(&raw.memory_max, "memory.max", self);
        let memory_high = bytes(&raw.memory_high, "memory.high", self);
        let cpu_max = raw.cpu_max.as_ref().and_then(|v| {
            let parsed = match &v.value {
                Scalar::Str(s) => CpuMax::parse(s),
                Scalar::Int(n) => CpuMax::parse(&n.to_string()),
                other => Err(format!("{other} is not a cpu.max value")),
            };
            match parsed {
                Ok(c) => Some(Sourced { value: c, source: self.src(v) }),
                Err(why) => {
                    let e = self
                        .error(v, format!("slice {name}: cpu.max {why}"))
                        .with_hint("cpu.max is \"QUOTA PERIOD\" in microseconds, e.g. \"100000 1000000\" for 10% of one CPU");
                    self.push(e);
                    None
                }
            }
        });
        let pids_max = raw.pids_max.as_ref().and_then(|v| {
            let parsed = match &v.value {
                Scalar::Int(n) if *n >= 1 => u64::try_from(*n).ok().map(Count::Value),
                Scalar::Str(s) if s == "max" || s == "infinity" => Some(Count::Max),
                _ => None,
            };
            if parsed.is_none() {
                let e = self.error(
                    v,
                    format!(
                        "slice {name}: pids.max {} is not a positive count or max",
                        v.value
                    ),
                );
                self.push(e);
            }
            parsed.map(|c| Sourced {
                value: c,
                source: self.src(v),
            })
        });
        let mode = self.opt_mode(raw.mode.as_ref());
        SliceRule {
            name,
            memory_max,
            memory_high,
            cpu_max,
            pids_max,
            mode,
            source,
        }
    }

    fn safety(&mut self, raw: &RawSafety) -> Safety {
        let overcommit_headroom_percent =
            raw.overcommit_headroom_percent
                .as_ref()
                .and_then(|v| match &v.value {
                    Scalar::Int(n) if (0..=90).contains(n) => Some(Sourced {
                        value: u8::try_from(*n).unwrap_or(u8::MAX),
                        source: self.src(v),
                    }),
                    other => {
                        let e = self.error(
                        v,
                        format!(
                            "overcommit_headroom_percent {other} is not a percentage from 0 to 90"
                        ),
                    );
                        self.push(e);
                        None
                    }
                });
        Safety {
            overcommit_headroom_percent,
        }
    }
}
