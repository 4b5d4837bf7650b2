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
