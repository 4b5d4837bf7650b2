//! What a root client asks the running daemon to do, over its Unix socket:
//! `holdfast apply` and `holdfast rollback` while `holdfast serve` holds the
//! writer lock. The loop runs the request as its next pass (never beside
//! another one) and answers with the report the CLI would have printed and
//! its exit code, so the command behaves the same with or without a daemon.
//!
//! After a rollback through the daemon, enforcement of what was rolled back
//! is paused ([`Pause`]): the daemon reports it as drift and writes nothing
//! there until the policy changes or an explicit `holdfast apply` asks for
//! enforcement again.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::engine::Pass;
use crate::item::{self, Item};
use crate::journal::{Journal, Selector};
use crate::policy::{Mode, Policy};
use crate::report::{self, EXIT_COMPLIANT, EXIT_DRIFT, TextStyle};
use crate::rollback::{Report as RollbackReport, RollbackOptions};

/// How the answer's report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
}

impl ReportFormat {
    pub fn parse(s: &str) -> Option<ReportFormat> {
        match s {
            "text" => Some(ReportFormat::Text),
            "json" => Some(ReportFormat::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Text => "text",
            ReportFormat::Json => "json",
        }
    }
}

/// What is asked.
#[derive(Debug, Clone)]
pub enum Request {
    /// A full pass now, ignoring the backoff, with these options; it ends a
    /// pause.
    Apply { restart_services: bool },
    /// `holdfast rollback` with these options (the overcommit headroom is
    /// the policy's in force).
    Rollback(RollbackOptions),
}

impl Request {
    pub fn command(&self) -> &'static str {
        match self {
            Request::Apply { .. } => "apply",
            Request::Rollback(_) => "rollback",
        }
    }
}

/// The answer: what the CLI prints on stdout and on stderr, and its exit
/// code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub exit: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    /// Nothing was done, for the reason `why` (exit 1).
    pub fn error(why: &str) -> Answer {
        Answer {
            exit: crate::report::EXIT_ERROR,
            stdout: String::new(),
            stderr: format!("{why}\n"),
        }
    }
}

/// A request with the way back to its client.
#[derive(Debug)]
pub struct Asked {
    pub request: Request,
    pub format: ReportFormat,
    pub reply: oneshot::Sender<Answer>,
}

/// The enforcement a rollback through the daemon paused: every setting
/// (no selectors) or those the selectors name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub since: SystemTime,
    pub selectors: Vec<Selector>,
}

impl Pause {
    /// Whether `item` is left alone: an enforced setting the rollback
    /// covered. The item is still read and reported (as drift).
    pub fn holds(&self, item: &Item) -> bool {
        item.mode == Mode::Enforce
            && (self.selectors.is_empty()
                || self.selectors.iter().any(|s| match s {
                    Selector::Kind(k) => item.kind() == *k,
                    Selector::Key(key) => item.key.to_string() == *key,
                }))
    }

    /// The pause as its file keeps it: with the SHA-256 of each policy file
    /// in force, so that a restarted daemon keeps it for the same policy
    /// only.
    pub fn render(&self, policy: &Policy) -> String {
        let file = PauseFile {
            since_unix: self
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            scope: self.scope(),
            policy_sha256: policy.sha256.clone(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    /// The pause a file kept, when it was made under `policy` (the same
    /// files with the same content); `None` for another policy or a file
    /// that does not parse.
    pub fn parse(text: &str, policy: &Policy) -> Option<Pause> {
        let file: PauseFile = serde_json::from_str(text).ok()?;
        (file.policy_sha256 == policy.sha256).then(|| Pause {
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(file.since_unix),
            selectors: file.scope.iter().map(|s| Selector::parse(s)).collect(),
        })
    }

    /// What it covers, for the log: `everything`, or the selectors.
    pub fn describe(&self) -> String {
        if self.selectors.is_empty() {
            "everything".to_string()
        } else {
            self.scope().join(",")
        }
    }

    /// The selectors as given (none: everything).
    pub fn scope(&self) -> Vec<String> {
        self.selectors
            .iter()
            .map(|s| match s {
                Selector::Kind(k) => k.as_str().to_string(),
                Selector::Key(key) => key.clone(),
            })
            .collect()
    }
}

/// The shape of the pause file.
#[derive(serde::Serialize, serde::Deserialize)]
struct PauseFile {
    since_unix: u64,
    scope: Vec<String>,
    policy_sha256: BTreeMap<String, String>,
}

/// The answer to an apply: the report of the pass, as `holdfast apply`
/// prints it, and 0 when every item is compliant, else 2.
pub fn apply_answer(
    format: ReportFormat,
    root: &str,
    policy: &Policy,
    pass: &Pass,
    originals: &Journal,
) -> Answer {
    let body = match format {
        ReportFormat::Text => report::to_text(policy, pass, TextStyle::Apply),
        ReportFormat::Json => {
            let mut json = report::to_json("apply", root, policy, pass, originals);
            json.push('\n');
            json
        }
    };
    Answer {
        exit: if item::all_compliant(&pass.items) {
            EXIT_COMPLIANT
        } else {
            EXIT_DRIFT
        },
        stdout: body,
        stderr: String::new(),
    }
}

/// The answer to a rollback, as `holdfast rollback` prints it: 0 when
/// everything selected is back, else 2.
pub fn rollback_answer(format: ReportFormat, root: &str, r: &RollbackReport) -> Answer {
    let body = match format {
        ReportFormat::Text => report::rollback_text(r),
        ReportFormat::Json => {
            let mut json = report::rollback_json(root, r);
            json.push('\n');
            json
        }
    };
    Answer {
        exit: if r.complete() {
            EXIT_COMPLIANT
        } else {
            EXIT_DRIFT
        },
        stdout: body,
        stderr: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{ItemKey, Kind, State};
    use crate::sysctl::SysctlKey;

    fn item(key: &str, mode: Mode) -> Item {
        let mut i = Item::new(ItemKey::Sysctl(SysctlKey::parse(key).unwrap()), "1", mode);
        i.state = State::Drifted;
        i
    }

    #[test]
    fn a_pause_holds_the_enforced_settings_its_selectors_name() {
        let all = Pause {
            since: SystemTime::UNIX_EPOCH,
            selectors: Vec::new(),
        };
        assert!(all.holds(&item("vm.swappiness", Mode::Enforce)));
        assert!(!all.holds(&item("vm.swappiness", Mode::Audit)));
        let some = Pause {
            since: SystemTime::UNIX_EPOCH,
            selectors: vec![Selector::parse("vm.swappiness")],
        };
        assert!(some.holds(&item("vm.swappiness", Mode::Enforce)));
        assert!(!some.holds(&item("kernel.kptr_restrict", Mode::Enforce)));
        let kind = Pause {
            since: SystemTime::UNIX_EPOCH,
            selectors: vec![Selector::Kind(Kind::Sysctl)],
        };
        assert!(kind.holds(&item("kernel.kptr_restrict", Mode::Enforce)));
        assert_eq!(kind.scope(), ["sysctl"]);
    }

    #[test]
    fn a_kept_pause_holds_for_the_same_policy_only() {
        let policy = |text: &str| Policy::from_files([("/p/10.yaml", text)]).unwrap();
        let first = policy("version: 1\nsysctl:\n  vm.swappiness: 10\n");
        let pause = Pause {
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            selectors: vec![Selector::parse("sysctl"), Selector::parse("vm.swappiness")],
        };
        let kept = pause.render(&first);
        assert_eq!(Pause::parse(&kept, &first), Some(pause));
        let second = policy("version: 1\nsysctl:\n  vm.swappiness: 20\n");
        assert_eq!(Pause::parse(&kept, &second), None, "another policy");
        assert_eq!(Pause::parse("{", &first), None);
    }
}
