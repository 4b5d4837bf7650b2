//! The policy keeper: which policy is in force, and what became of the
//! newest push. A push is read and validated whole; an invalid one is
//! reported (file:line:col, in status, the log and the metrics) and changes
//! nothing: the last good policy stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::diff::{self, PolicyChange};
use super::state::{PolicyState, Rejection};
use crate::host::HostRoot;
use crate::policy::Policy;
use crate::sources::{self, LoadError};

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reload {
    /// The push was rejected; the policy in force (if any) stays.
    Rejected,
    /// Valid, and the same as the policy in force.
    Unchanged,
    /// A new policy is in force; what it changed, setting by setting.
    Loaded(PolicyChange),
}

#[derive(Debug, Default)]
pub struct PolicyKeeper {
    state: PolicyState,
}

impl PolicyKeeper {
    pub fn state(&self) -> &PolicyState {
        &self.state
    }

    pub fn in_force(&self) -> Option<Arc<Policy>> {
        self.state.in_force.clone()
    }

    /// Reads and validates the policy sources (`--policy` paths, else the
    /// policy directory under the root). A valid policy replaces the one in
    /// force; an invalid one is recorded as the rejection and changes
    /// nothing.
    pub fn reload(&mut self, host: &HostRoot, paths: &[PathBuf]) -> Reload {
        let at = SystemTime::now();
        let loaded =
            sources::read(host, paths).and_then(|files| files.parse().map_err(LoadError::from));
        let new = match loaded {
            Ok(p) => p,
            Err(e) => {
                self.state.rejected = Some(self.reject(e, at));
                return Reload::Rejected;
            }
        };
        if let Some(why) = self.emptied(&new) {
            tracing::error!("policy push rejected: {why}");
            self.state.rejected = Some(Rejection {
                at,
                errors: Vec::new(),
                message: Some(why),
            });
            return Reload::Rejected;
        }
        if self.state.rejected.take().is_some() {
            tracing::info!("policy push accepted; the rejection is cleared");
        }
        if self.state.in_force.as_deref() == Some(&new) {
            tracing::debug!("policy reloaded: unchanged");
            return Reload::Unchanged;
        }
        let mut change = diff::policy_change(self.state.in_force.as_deref(), &new);
        change.at = Some(at);
        tracing::info!(
            files = %new.files.join(", "),
            mode = new.default_mode().as_str(),
            added = change.added.len(),
            changed = change.changed.len(),
            removed = change.removed.len(),
            "policy loaded"
        );
        self.state.in_force = Some(Arc::new(new));
        self.state.loaded_at = Some(at);
        self.state.last_change = Some(change.clone());
        Reload::Loaded(change)
    }

    /// A policy directory that held files and is now empty (or gone) reads
    /// as the bundled baseline, which is audit-only: loading it would quietly
    /// stop enforcement. Config management that deletes and then copies
    /// passes through that state, so it is a rejected push — the last good
    /// policy stays — until files arrive.
    fn emptied(&self, new: &Policy) -> Option<String> {
        let bundled = |p: &Policy| p.files.iter().all(|f| f == sources::BUNDLED_NAME);
        let had_files = self.state.in_force.as_deref().is_some_and(|p| !bundled(p));
        (had_files && bundled(new)).then(|| {
            "the policy directory has no policy files any more (deleted, or a push in progress); the previous policy stays in force until files arrive (to stop enforcing, push a policy with `mode: audit`)".to_string()
        })
    }

    /// Logs a rejected push and says what stays in force.
    fn reject(&self, e: LoadError, at: SystemTime) -> Rejection {
        let keeps = if self.state.in_force.is_some() {
            "the previous policy stays in force"
        } else {
            "no policy is in force"
        };
        match e {
            LoadError::Invalid(errors) => {
                for err in &errors.0 {
                    tracing::error!("policy: {err}");
                }
                tracing::error!(
                    "policy push rejected ({} error(s)); {keeps}",
                    errors.0.len()
                );
                Rejection {
                    at,
                    errors: errors.0,
                    message: None,
                }
            }
            other => {
                tracing::error!("policy push rejected: {other}; {keeps}");
                Rejection {
                    at,
                    errors: Vec::new(),
                    message: Some(other.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_policy_directory_is_a_rejected_push_not_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let policy_dir = dir.path().join("etc/holdfast/policy.d");
        std::fs::create_dir_all(&policy_dir).unwrap();
        let file = policy_dir.join("10-site.yaml");
        std::fs::write(
            &file,
            "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n",
        )
        .unwrap();
        let mut keeper = PolicyKeeper::default();
        assert!(matches!(keeper.reload(&host, &[]), Reload::Loaded(_)));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(keeper.reload(&host, &[]), Reload::Rejected);
        let kept = keeper.in_force().unwrap();
        assert_eq!(kept.files, [file.display().to_string()]);
        let why = keeper.state().rejected.as_ref().unwrap().message.clone();
        assert!(why.unwrap().contains("no policy files"));
        // Files arriving again end the rejection.
        std::fs::write(
            &file,
            "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 8192\n",
        )
        .unwrap();
        assert!(matches!(keeper.reload(&host, &[]), Reload::Loaded(_)));
        assert!(keeper.state().rejected.is_none());
    }

    #[test]
    fn a_host_that_never_had_files_runs_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let mut keeper = PolicyKeeper::default();
        assert!(matches!(keeper.reload(&host, &[]), Reload::Loaded(_)));
        assert_eq!(keeper.in_force().unwrap().files, [sources::BUNDLED_NAME]);
        assert_eq!(keeper.reload(&host, &[]), Reload::Unchanged);
    }
}
