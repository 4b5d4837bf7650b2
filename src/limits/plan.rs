//! Compare session limits (pam_limits) with the policy and plan holdfast's
//! limits.d file. Pure.
//!
//! # Guarantees
//! - The effective value of each policy entry is computed with pam_limits'
//!   rules over every file, so a later file that shadows holdfast's line is
//!   drift, reported with its path and line, not "compliant".
//! - A nofile limit above `fs.nr_open` is refused and never written: pam's
//!   setrlimit would fail with EPERM at every login.

use std::path::PathBuf;

use super::conf::{self, LimitLine, LimitType, Malformed};
use super::{LimitItem, LimitValue};
use crate::item::{Conflict, Item, ItemKey, OwnFile, State, own_file_item, presence};
use crate::policy::{LimitRule, Mode, Policy};

/// What was read from the host for the limits part of a pass.
#[derive(Debug, Clone, Default)]
pub struct LimitsHost {
    /// Every line of limits.conf and limits.d/*.conf in pam_limits' order.
    pub lines: Vec<LimitLine>,
    pub malformed: Vec<Malformed>,
    pub managed_path: PathBuf,
    /// holdfast's file as it is now.
    pub managed: Option<String>,
    /// `fs.nr_open`, the ceiling of a nofile limit.
    pub nr_open: Option<u64>,
}

/// One soft or hard value the policy asks for.
struct Wanted<'a> {
    rule: &'a LimitRule,
    kind: LimitType,
    value: LimitValue,
    mode: Mode,
}

fn wanted(policy: &Policy) -> Vec<Wanted<'_>> {
    let mut out = Vec::new();
    for rule in &policy.limits {
        let mode = policy.mode_of(rule.mode);
        for (kind, value) in [(LimitType::Soft, rule.soft), (LimitType::Hard, rule.hard)] {
            if let Some(value) = value {
                out.push(Wanted {
                    rule,
                    kind,
                    value,
                    mode,
                });
            }
        }
    }
    out
}

/// Why a value may not be written, if it may not.
fn refusal(w: &Wanted<'_>, nr_open: Option<u64>) -> Option<String> {
    if w.rule.item != LimitItem::Nofile {
        return None;
    }
    let (LimitValue::Value(v), Some(ceiling)) = (w.value, nr_open) else {
        return None;
    };
    (u64::try_from(v).unwrap_or(0) > ceiling).then(|| {
        format!(
            "{} nofile {v} is above fs.nr_open {ceiling}: setrlimit would fail with EPERM and sessions would not get it; raise fs.nr_open first",
            w.kind.as_str()
        )
    })
}

/// Renders holdfast's limits.d file from the entries it may write.
pub fn render_managed_file(
    policy: &Policy,
    entries: &[(&LimitRule, LimitType, LimitValue)],
) -> String {
    let mut sources: Vec<&str> = entries
        .iter()
        .map(|(r, _, _)| r.source.file.as_ref())
        .collect();
    sources.dedup();
    let mut out = String::from(
        "# Managed by holdfast: session limits (pam_limits) from its policy.\n\
         # Do not edit: holdfast rewrites this file. systemd services do not read\n\
         # limits.d; their limits come from LimitNOFILE= and DefaultLimitNOFILE=.\n",
    );
    if sources.is_empty() {
        sources = policy.files.iter().map(String::as_str).collect();
    }
    out.push_str(&format!("# Policy: {}\n", sources.join(", ")));
    for (rule, kind, value) in entries {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            rule.domain,
            kind.as_str(),
            rule.item,
            value
        ));
    }
    out
}

pub fn plan(policy: &Policy, host: &LimitsHost) -> Vec<Item> {
    let wanted = wanted(policy);
    let mut items = Vec::new();
    let mut writable: Vec<(&LimitRule, LimitType, LimitValue)> = Vec::new();
    let mut refused = Vec::new();
    for w in &wanted {
        let why = refusal(w, host.nr_open);
        if w.mode == Mode::Enforce && why.is_none() {
            writable.push((w.rule, w.kind, w.value));
        }
        refused.push(why);
    }
    let any_enforced = wanted.iter().any(|w| w.mode == Mode::Enforce);
    let content = any_enforced.then(|| render_managed_file(policy, &writable));

    // The lines as they will be once holdfast's file has the new content.
    let mut projected: Vec<LimitLine> = Vec::new();
    if let Some(content) = &content {
        let (ours, _) = conf::parse(&host.managed_path, content);
        let mut inserted = false;
        for line in &host.lines {
            if line.file == host.managed_path {
                if !inserted {
                    projected.extend(ours.iter().cloned());
                    inserted = true;
                }
                continue;
            }
            // holdfast's file sorts by name among the limits.d files.
            if !inserted && is_limits_d(line, host) && line.file > host.managed_path {
                projected.extend(ours.iter().cloned());
                inserted = true;
            }
            projected.push(line.clone());
        }
        if !inserted {
            projected.extend(ours);
        }
    }

    for (w, why) in wanted.iter().zip(refused) {
        let key = ItemKey::Limit {
            domain: w.rule.domain.clone(),
            kind: w.kind,
            item: w.rule.item,
        };
        let mut item = Item::new(key, w.value.to_string(), w.mode);
        item.source = Some(w.rule.source.clone());
        let current = conf::effective(&host.lines, &w.rule.domain, w.kind, w.rule.item);
        item.actual = current.map(|l| l.value.to_string()).unwrap_or_default();
        if let Some(l) = current {
            item.detail.push(format!(
                "effective for sessions from {}:{}",
                l.file.display(),
                l.line
            ));
        } else {
            item.detail
                .push("no line sets it: sessions inherit the default".into());
        }
        let compliant_now = current.is_some_and(|l| l.value == w.value);
        if let Some(why) = why {
            item.state = State::Refused;
            item.detail.push(why);
            items.push(item);
            continue;
        }
        item.state = if compliant_now {
            State::Compliant
        } else {
            State::Drifted
        };
        // Who decides once holdfast's file is in place: if not holdfast,
        // the entry is shadowed and writing cannot fix it.
        let lines_after = if content.is_some() {
            &projected
        } else {
            &host.lines
        };
        if let Some(winner) = conf::effective(lines_after, &w.rule.domain, w.kind, w.rule.item)
            && winner.file != host.managed_path
            && winner.value != w.value
        {
            item.conflicts.push(Conflict {
                file: winner.file.clone(),
                line: winner.line,
                value: winner.value.to_string(),
                wins_at_boot: true,
            });
            item.detail.push(format!(
                "shadowed by {}:{} ({} {} {} {}), which pam_limits reads later",
                winner.file.display(),
                winner.line,
                winner.domain,
                w.kind.as_str(),
                winner.item,
                winner.value
            ));
        }
        items.push(item);
    }

    for m in &host.malformed {
        let mut item = Item::new(
            ItemKey::LimitsLine {
                file: m.file.clone(),
                line: m.line,
            },
            "a valid line",
            Mode::Audit,
        );
        item.state = State::Failed;
        item.detail
            .push(format!("pam_limits skips this line: {}", m.message));
        items.push(item);
    }

    if content.is_some() || host.managed.is_some() {
        items.push(file_item(host, content, any_enforced));
    }
    items
}

fn is_limits_d(line: &LimitLine, host: &LimitsHost) -> bool {
    line.file.parent() == host.managed_path.parent()
}

fn file_item(host: &LimitsHost, content: Option<String>, any_enforced: bool) -> Item {
    let desired_label = if content.is_some() {
        "holdfast's limits"
    } else {
        "absent (no enforced limits)"
    };
    let mut item = own_file_item(OwnFile {
        key: ItemKey::LimitsFile(host.managed_path.clone()),
        path: &host.managed_path,
        current: host.managed.as_deref(),
        desired: content,
        mode: if any_enforced {
            Mode::Enforce
        } else {
            Mode::Audit
        },
        desired_label: desired_label.to_string(),
        actual_label: presence(host.managed.as_deref()),
        stale_note: "holdfast's file from an earlier enforced policy is still there; sessions get its limits",
    });
    if item.state == State::Compliant {
        item.actual = item.desired.clone();
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// holdfast's own file parses back, with pam_limits' rules, to
        /// exactly the values it was rendered from.
        #[test]
        fn managed_file_round_trips(soft in 0i64..10_000_000, extra in 0i64..10_000_000, user in "[a-z][a-z0-9_]{0,8}") {
            let hard = soft + extra;
            let text = format!("version: 1\nlimits:\n  - {{domain: \"{user}\", item: nofile, soft: {soft}, hard: {hard}}}\n");
            let policy = Policy::from_files([("p.yaml", text.as_str())]).unwrap();
            let rule = &policy.limits[0];
            let entries = [(rule, LimitType::Soft, LimitValue::Value(soft)), (rule, LimitType::Hard, LimitValue::Value(hard))];
            let rendered = render_managed_file(&policy, &entries);
            let (lines, bad) = conf::parse(std::path::Path::new("f"), &rendered);
            prop_assert!(bad.is_empty());
            let got = |k| conf::effective(&lines, &rule.domain, k, LimitItem::Nofile).map(|l| l.value);
            prop_assert_eq!(got(LimitType::Soft), Some(LimitValue::Value(soft)));
            prop_assert_eq!(got(LimitType::Hard), Some(LimitValue::Value(hard)));
        }
    }
}
