//! The status document: JSON DTOs (the daemon's only serializable types,
//! converted from a [`Snapshot`]), the `?state=`/`?kind=` filters, and the
//! plain-text view. The DTOs also deserialize, so `holdfast status` renders
//! the text view from the JSON it fetched with the same code the server
//! uses. Pure. The schema is documented in docs/src/status-api.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{Snapshot, human_duration, rfc3339};
use crate::item::{Kind, State};

/// The status schema version; bump on incompatible changes.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusJson {
    pub schema_version: u32,
    pub compliant: bool,
    /// Items per state, over all items (filters do not change it).
    pub summary: BTreeMap<String, usize>,
    pub policy: PolicyJson,
    pub last_pass: Option<PassJson>,
    pub daemon: DaemonJson,
    pub items: Vec<StatusItemJson>,
    pub warnings: Vec<String>,
    /// Set while a rollback through the daemon pauses enforcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedJson>,
}

/// Enforcement a rollback through the daemon paused: the settings `scope`
/// names (empty: every setting) are read and reported, never written,
/// until the policy changes or `holdfast apply` asks for enforcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PausedJson {
    pub since: String,
    pub scope: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyJson {
    /// Whether a policy is in force (false only when the first one was rejected).
    pub in_force: bool,
    pub files: Vec<String>,
    /// The SHA-256 of each file in force (hex), by file: config management
    /// compares it with what it pushed to know the push is loaded.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    pub mode: Option<String>,
    pub loaded_at: Option<String>,
    /// The newest push, when it was rejected; the policy above stays in force.
    pub last_error: Option<RejectionJson>,
    pub last_change: Option<ChangeJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectionJson {
    pub at: String,
    /// `file:line:col: message`, one per problem.
    pub message: String,
    pub errors: Vec<PolicyErrorJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeJson {
    pub at: Option<String>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassJson {
    pub number: u64,
    pub at: String,
    pub duration_ms: f64,
    pub trigger: String,
    /// `full` (everything re-read), `keys` (only the sysctls an event
    /// named), `units` (only the systemd units an announcement or a unit's
    /// files named) or `units+keys`.
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonJson {
    pub version: String,
    pub pid: u32,
    pub started_at: String,
    pub rescan_interval_s: u64,
    pub watches: WatchesJson,
    pub listeners: Vec<ListenerJson>,
    /// Since when a pass over units has been waiting on systemd, when one
    /// is out (a daemon-reload in progress, say); sysctls are corrected
    /// meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_pass_since: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchesJson {
    pub watched: usize,
    pub missing: usize,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerJson {
    pub address: String,
    pub origin: String,
    /// `listening` or `failed`.
    pub state: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusItemJson {
    pub kind: String,
    pub key: String,
    pub desired: String,
    pub actual: Option<String>,
    pub state: String,
    pub mode: String,
    pub source: Option<SourceJson>,
    pub last_change: String,
    /// Corrections within the contested-detection window.
    pub corrections: usize,
    /// While holdfast backs off: when it will write the item again.
    pub next_attempt: Option<String>,
    /// The write holdfast will make when the backoff ends (held items).
    pub pending_action: Option<String>,
    pub detail: Vec<String>,
    pub conflicts: Vec<ConflictJson>,
    /// What the host had before holdfast first changed this item (the
    /// originals journal); absent when holdfast has not changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<OriginalJson>,
}

/// The same source, conflict and original shapes as the CLI's JSON report.
pub use crate::report::{ConflictJson, ErrorJson as PolicyErrorJson, OriginalJson, SourceJson};
use crate::report::{cell, table};

/// Which items a status request wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these states (empty: all).
    pub states: Vec<State>,
    /// Any of these kinds (empty: all).
    pub kinds: Vec<Kind>,
}

/// The response format a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// A parsed `/status` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    pub format: Option<Format>,
}

impl Query {
    /// `state=drifted,failed&state=contested&kind=sysctl&format=text`.
    /// Unknown parameters or values are errors (a typo must not silently
    /// return everything).
    pub fn parse(query: &str) -> Result<Query, String> {
        let mut q = Query::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "state" => {
                    for v in value.split(',').filter(|v| !v.is_empty()) {
                        let s = State::parse(v).ok_or_else(|| {
                            format!(
                                "unknown state `{v}`; expected one of {}",
                                State::ALL.map(State::as_str).join(", ")
                            )
                        })?;
                        q.filter.states.push(s);
                    }
                }
                "kind" => {
                    for v in value.split(',').filter(|v| !v.is_empty()) {
                        let k = Kind::parse(v).ok_or_else(|| {
                            format!(
                                "unknown kind `{v}`; expected one of {}",
                                Kind::ALL.map(Kind::as_str).join(", ")
                            )
                        })?;
                        q.filter.kinds.push(k);
                    }
                }
                "format" => {
                    q.format = Some(match value.as_ref() {
                        "json" => Format::Json,
                        "text" => Format::Text,
                        other => {
                            return Err(format!("unknown format `{other}`; expected json or text"));
                        }
                    });
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`; expected state, kind or format"
                    ));
                }
            }
        }
        Ok(q)
    }
}

impl Format {
    /// `?format=` wins; else text when the client prefers `text/plain`
    /// (curl sends `*/*` and gets JSON).
    pub fn negotiate(explicit: Option<Format>, accept: Option<&str>) -> Format {
        if let Some(f) = explicit {
            return f;
        }
        let wants_text = accept.is_some_and(|a| {
            a.split(',')
                .map(|p| p.split(';').next().unwrap_or("").trim())
                .find(|m| *m == "text/plain" || *m == "application/json")
                == Some("text/plain")
        });
        if wants_text {
            Format::Text
        } else {
            Format::Json
        }
    }
}

pub fn to_json(snap: &Snapshot, filter: &Filter) -> StatusJson {
    let summary = State::ALL
        .into_iter()
        .map(|s| (s.as_str().to_string(), snap.count(s)))
        .collect();
    let p = &snap.policy;
    StatusJson {
        schema_version: STATUS_SCHEMA_VERSION,
        compliant: snap.compliant(),
        summary,
        policy: PolicyJson {
            in_force: p.in_force.is_some(),
            files: p.files(),
            sha256: p
                .in_force
                .as_ref()
                .map(|p| p.sha256.clone())
                .unwrap_or_default(),
            mode: p.mode().map(|m| m.as_str().to_string()),
            loaded_at: p.loaded_at.map(rfc3339),
            last_error: p.rejected.as_ref().map(|r| RejectionJson {
                at: rfc3339(r.at),
                message: match &r.message {
                    Some(m) => m.clone(),
                    None => r
                        .errors
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                },
                errors: r.errors.iter().map(PolicyErrorJson::from).collect(),
            }),
            last_change: p.last_change.as_ref().map(|c| ChangeJson {
                at: c.at.map(rfc3339),
                added: c.added.iter().map(ToString::to_string).collect(),
                changed: c.changed.iter().map(ToString::to_string).collect(),
                removed: c.removed.iter().map(ToString::to_string).collect(),
            }),
        },
        last_pass: snap.last_pass.as_ref().map(|l| PassJson {
            number: l.number,
            at: rfc3339(l.at),
            duration_ms: (l.duration.as_secs_f64() * 1e6).round() / 1e3,
            trigger: l.trigger.as_str().to_string(),
            scope: match (l.full, l.units, l.keys) {
                (true, _, _) => "full",
                (false, true, true) => "units+keys",
                (false, true, false) => "units",
                (false, false, _) => "keys",
            }
            .to_string(),
        }),
        daemon: DaemonJson {
            version: snap.version.to_string(),
            pid: snap.pid,
            started_at: rfc3339(snap.started_at),
            rescan_interval_s: snap.rescan_interval.as_secs(),
            unit_pass_since: snap.unit_pass_since.map(rfc3339),
            watches: WatchesJson {
                watched: snap.watches.watched,
                missing: snap.watches.missing,
                errors: snap.watches.errors.clone(),
            },
            listeners: snap
                .listeners
                .iter()
                .map(|l| ListenerJson {
                    address: l.address.clone(),
                    origin: l.origin.as_str().to_string(),
                    state: if l.error.is_none() {
                        "listening"
                    } else {
                        "failed"
                    }
                    .to_string(),
                    error: l.error.clone(),
                })
                .collect(),
        },
        items: snap
            .items
            .iter()
            .filter(|i| {
                (filter.states.is_empty() || filter.states.contains(&i.item.state))
                    && (filter.kinds.is_empty() || filter.kinds.contains(&i.item.kind()))
            })
            .map(|s| {
                let i = &s.item;
                StatusItemJson {
                    kind: i.kind().as_str().to_string(),
                    key: i.key.to_string(),
                    desired: i.desired.clone(),
                    actual: (!i.actual.is_empty()).then(|| i.actual.clone()),
                    state: i.state.as_str().to_string(),
                    mode: i.mode.as_str().to_string(),
                    source: i.source.as_ref().map(SourceJson::from),
                    last_change: rfc3339(s.last_change),
                    corrections: s.corrections,
                    next_attempt: s.next_attempt.map(rfc3339),
                    pending_action: i.action.as_ref().map(std::string::ToString::to_string),
                    detail: i.detail.clone(),
                    conflicts: i.conflicts.iter().map(ConflictJson::from).collect(),
                    original: snap.originals.original_of(&i.key).map(OriginalJson::from),
                }
            })
            .collect(),
        warnings: snap.warnings.clone(),
        paused: snap.paused.as_ref().map(|(since, scope)| PausedJson {
            since: rfc3339(*since),
            scope: scope.clone(),
        }),
    }
}

/// The text view's lines about the daemon: listeners, policy, passes,
/// watches.
fn daemon_lines(s: &StatusJson, out: &mut String) {
    let d = &s.daemon;
    let p = &s.policy;
    out.push_str(&format!(
        "holdfast {} (pid {}), up since {}\n",
        d.version, d.pid, d.started_at
    ));
    let listening: Vec<&str> = d
        .listeners
        .iter()
        .filter(|l| l.error.is_none())
        .map(|l| l.address.as_str())
        .collect();
    out.push_str(&format!(
        "listening: {}\n",
        if listening.is_empty() {
            "nowhere".to_string()
        } else {
            listening.join(", ")
        }
    ));
    for l in d.listeners.iter().filter(|l| l.error.is_some()) {
        out.push_str(&format!(
            "NOT listening on {}: {}\n",
            l.address,
            l.error.as_deref().unwrap_or("")
        ));
    }
    if p.in_force {
        out.push_str(&format!(
            "policy: {} (mode {}), loaded {}\n",
            p.files.join(", "),
            p.mode.as_deref().unwrap_or("audit"),
            p.loaded_at.as_deref().unwrap_or("-")
        ));
    } else {
        out.push_str("policy: none in force\n");
    }
    if let Some(l) = &s.last_pass {
        out.push_str(&format!(
            "last pass: #{} at {} ({}, {}), {:.2} ms; rescan every {}\n",
            l.number,
            l.at,
            l.trigger,
            l.scope,
            l.duration_ms,
            human_duration(std::time::Duration::from_secs(d.rescan_interval_s))
        ));
    } else {
        out.push_str("last pass: none yet\n");
    }
    if let Some(p) = &s.paused {
        out.push_str(&format!(
            "enforcement PAUSED since {} by a rollback ({}): reported, not corrected, until the policy changes or `holdfast apply`\n",
            p.since,
            if p.scope.is_empty() {
                "everything".to_string()
            } else {
                p.scope.join(", ")
            }
        ));
    }
    if let Some(since) = &d.unit_pass_since {
        out.push_str(&format!(
            "a pass over units is waiting on systemd since {since}\n"
        ));
    }
    for e in &d.watches.errors {
        out.push_str(&format!("watch: {e}\n"));
    }
}

/// The plain-text view: a header about the daemon and the policy, one row
/// per item with its notes below it, and a verdict.
pub fn to_text(s: &StatusJson) -> String {
    let mut out = String::new();
    let p = &s.policy;
    // A rejected push comes first: config management that pushed it, and
    // whoever reads the output, must not miss it.
    if let Some(e) = &p.last_error {
        out.push_str(&format!(
            "policy push REJECTED at {}; {}:\n",
            e.at,
            if p.in_force {
                "the previous policy stays in force"
            } else {
                "nothing is enforced"
            }
        ));
        for line in e.message.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    daemon_lines(s, &mut out);
    out.push('\n');

    let header = [
        "SETTING", "DESIRED", "ACTUAL", "STATE", "MODE", "CHANGED", "SOURCE",
    ];
    let rows: Vec<([String; 7], Vec<String>)> = s
        .items
        .iter()
        .map(|i| {
            let row = [
                cell(&i.key.clone()),
                cell(&i.desired),
                cell(i.actual.as_deref().unwrap_or("-")),
                i.state.clone(),
                i.mode.clone(),
                // The time of day is enough in a terminal; JSON has the date.
                i.last_change
                    .get(11..19)
                    .unwrap_or(&i.last_change)
                    .to_string(),
                i.source
                    .as_ref()
                    .map_or_else(|| "holdfast".into(), |s| format!("{}:{}", s.file, s.line)),
            ];
            let mut notes = i.detail.clone();
            notes.extend(i.pending_action.iter().map(|a| format!("pending: {a}")));
            (row, notes)
        })
        .collect();
    out.push_str(&table(header, &rows));
    for w in &s.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let counts: Vec<String> = s
        .summary
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    out.push_str(&format!(
        "\n{}: {}\n",
        if s.compliant {
            "compliant"
        } else {
            "NOT compliant"
        },
        if counts.is_empty() {
            "no settings".to_string()
        } else {
            counts.join(", ")
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::daemon::schedule::Trigger;
    use crate::daemon::state::{
        ItemStatus, ListenerOrigin, ListenerStatus, PassInfo, PolicyState, Rejection,
    };
    use crate::item::Item;
    use crate::policy::{Mode, Policy, PolicyError, Source};

    fn snapshot() -> Snapshot {
        let policy = Policy::from_files([(
            "/etc/holdfast/policy.d/10-base.yaml",
            "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n  vm.swappiness: 10\n",
        )])
        .unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_746_102_896);
        let item = |key: &str, state: State, actual: &str| {
            let mut i = Item::new(
                crate::item::ItemKey::Sysctl(crate::sysctl::SysctlKey::parse(key).unwrap()),
                "4096",
                Mode::Enforce,
            );
            i.state = state;
            i.actual = actual.into();
            i.source = Some(Source {
                file: Arc::from("/etc/holdfast/policy.d/10-base.yaml"),
                line: 4,
                column: 3,
            });
            ItemStatus {
                item: i,
                last_change: at,
                corrections: 0,
                next_attempt: None,
            }
        };
        let mut snap = Snapshot::starting(
            Arc::new(vec![
                ListenerStatus {
                    address: "/run/holdfast/holdfast.sock".into(),
                    origin: ListenerOrigin::Default,
                    error: None,
                },
                ListenerStatus {
                    address: "127.0.0.1:80".into(),
                    origin: ListenerOrigin::Default,
                    error: Some("bind: Address already in use (os error 98)".into()),
                },
            ]),
            Duration::from_secs(60),
        );
        snap.pid = 42;
        snap.version = "9.9.9";
        snap.started_at = at;
        snap.policy = PolicyState {
            in_force: Some(Arc::new(policy)),
            loaded_at: Some(at),
            rejected: Some(Rejection {
                at,
                errors: vec![PolicyError::new(
                    Source {
                        file: Arc::from("/etc/holdfast/policy.d/20-bad.yaml"),
                        line: 3,
                        column: 24,
                    },
                    "unknown field `mni`",
                )],
                message: None,
            }),
            last_change: None,
        };
        snap.last_pass = Some(PassInfo {
            number: 7,
            at,
            at_monotonic: std::time::Instant::now(),
            duration: Duration::from_micros(312),
            trigger: Trigger::Event,
            full: false,
            units: false,
            keys: true,
        });
        snap.items = vec![
            Arc::new(item("net.core.somaxconn", State::Corrected, "4096")),
            Arc::new(item("vm.swappiness", State::Drifted, "60")),
        ];
        snap
    }

    #[test]
    fn an_item_holdfast_changed_shows_its_original_and_round_trips() {
        use crate::journal::{Entry, Journal, Original, Target};
        let mut snap = snapshot();
        let mut journal = Journal::default();
        journal.record(Entry {
            target: Target::Sysctl(crate::sysctl::SysctlKey::parse("net.core.somaxconn").unwrap()),
            kind: Kind::Sysctl,
            item: "net.core.somaxconn".into(),
            original: Original::Value("128".into()),
        });
        snap.originals = Arc::new(journal);
        let doc = to_json(&snap, &Filter::default());
        let original = doc.items[0].original.as_ref().expect("an original");
        assert_eq!(original.state, "value");
        assert_eq!(original.value.as_deref(), Some("128"));
        // An item holdfast has not changed has none, and the field is left
        // out of the JSON, so existing consumers see what they saw.
        assert!(doc.items[1].original.is_none());
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(text.matches("\"original\"").count(), 1);
        // `holdfast status` reads it back.
        let back: StatusJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back.items[0].original.as_ref(), Some(original));
    }

    #[test]
    fn json_has_summary_policy_error_and_filtered_items() {
        let snap = snapshot();
        let all = to_json(&snap, &Filter::default());
        assert!(!all.compliant);
        assert_eq!(all.summary["corrected"], 1);
        assert_eq!(all.summary["drifted"], 1);
        assert_eq!(all.items.len(), 2);
        let err = all.policy.last_error.as_ref().unwrap();
        assert_eq!(
            err.message,
            "/etc/holdfast/policy.d/20-bad.yaml:3:24: unknown field `mni`"
        );
        assert_eq!(err.errors[0].line, 3);
        assert!((all.last_pass.as_ref().unwrap().duration_ms - 0.312).abs() < 1e-9);
        assert_eq!(all.daemon.listeners[1].state, "failed");

        let q = Query::parse("state=drifted").unwrap();
        let drifted = to_json(&snap, &q.filter);
        assert_eq!(drifted.items.len(), 1);
        assert_eq!(drifted.items[0].key, "vm.swappiness");
        assert_eq!(drifted.summary, all.summary, "the summary is not filtered");

        // It round-trips: `holdfast status` deserializes what the server sends.
        let text = serde_json::to_string(&all).unwrap();
        assert_eq!(serde_json::from_str::<StatusJson>(&text).unwrap(), all);
    }

    #[test]
    fn query_parsing_accepts_lists_and_rejects_typos() {
        let q =
            Query::parse("state=drifted,failed&state=contested&kind=sysctl&format=text").unwrap();
        assert_eq!(
            q.filter.states,
            [State::Drifted, State::Failed, State::Contested]
        );
        assert_eq!(q.filter.kinds, [Kind::Sysctl]);
        assert_eq!(q.format, Some(Format::Text));
        assert_eq!(Query::parse("").unwrap(), Query::default());
        assert!(
            Query::parse("state=drifed")
                .unwrap_err()
                .contains("unknown state `drifed`")
        );
        assert!(Query::parse("kind=cgroups").is_err());
        assert!(Query::parse("format=xml").is_err());
        assert!(
            Query::parse("sate=drifted")
                .unwrap_err()
                .contains("unknown parameter")
        );
    }

    #[test]
    fn format_negotiation() {
        assert_eq!(Format::negotiate(None, None), Format::Json);
        assert_eq!(Format::negotiate(None, Some("*/*")), Format::Json);
        assert_eq!(Format::negotiate(None, Some("text/plain")), Format::Text);
        assert_eq!(
            Format::negotiate(None, Some("application/json, text/plain;q=0.5")),
            Format::Json
        );
        assert_eq!(
            Format::negotiate(Some(Format::Json), Some("text/plain")),
            Format::Json
        );
    }

    #[test]
    fn text_view_shows_daemon_policy_error_and_table() {
        let text = to_text(&to_json(&snapshot(), &Filter::default()));
        insta::assert_snapshot!(text);
    }
}
