//! The loop's view of every managed setting: its last state, its backoff
//! history, and who else likely writes it. Pure: [`ItemView::absorb`] takes
//! a pass's items and the time, and returns what happened as [`Event`]s;
//! the loop logs them, counts them in the metrics and tells systemd. No
//! I/O, no logging, no clock of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::diff::SettingId;
use super::schedule::{Retries, Tracker, TrackerConfig, Transition};
use super::state::{ItemStatus, human_duration};
use super::writers;
use crate::item::{Item, ItemKey, Kind, State};
use crate::policy::Mode;

/// One setting as the loop keeps it.
#[derive(Debug, Clone)]
struct Entry {
    /// Shared with the snapshots published since it last changed: a pass
    /// that leaves a setting alone copies no part of it.
    status: Arc<ItemStatus>,
    /// The state the last pass found, before the daemon's view (contested,
    /// sticky corrected) was put on it.
    found: State,
    /// Who else likely writes it, found when it became contested.
    suspects: Vec<String>,
    /// The backoff line the view added to the item's detail, so that the
    /// next pass can tell it from the item's own explanations.
    backoff_note: Option<String>,
}

/// What happened to a setting in a pass, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Corrected, from the value found (when known) to the policy's.
    Corrected {
        kind: Kind,
        key: ItemKey,
        from: Option<String>,
        to: String,
    },
    Failed {
        kind: Kind,
    },
    /// Another writer keeps reverting it: backing off.
    Contested {
        kind: Kind,
        key: ItemKey,
        corrections: usize,
        hold: Duration,
        suspects: Vec<String>,
    },
    StillContested {
        kind: Kind,
        key: ItemKey,
        hold: Duration,
    },
    Uncontested {
        kind: Kind,
        key: ItemKey,
    },
    /// A write or read failed; retried after `retry_in`.
    Failing {
        kind: Kind,
        key: ItemKey,
        attempt: u32,
        retry_in: Duration,
        detail: String,
    },
    Recovered {
        kind: Kind,
        key: ItemKey,
    },
}

/// Every managed setting's status and backoff history.
#[derive(Debug, Default)]
pub struct ItemView {
    cfg: TrackerConfig,
    entries: Vec<Entry>,
    /// Each entry's place in `entries`.
    index: HashMap<ItemKey, usize>,
    trackers: HashMap<ItemKey, Tracker>,
}

impl ItemView {
    pub fn new(cfg: TrackerConfig) -> ItemView {
        ItemView {
            cfg,
            entries: Vec::new(),
            index: HashMap::new(),
            trackers: HashMap::new(),
        }
    }

    /// The statuses, in the order the passes reported them.
    pub fn statuses(&self) -> impl Iterator<Item = &Arc<ItemStatus>> {
        self.entries.iter().map(|e| &e.status)
    }

    /// Whether holdfast must leave an item alone now: it is in backoff.
    pub fn is_held(&self, item: &Item, now: Instant) -> bool {
        item.mode == Mode::Enforce
            && self
                .trackers
                .get(&item.key)
                .is_some_and(|t| !t.may_write(now))
    }

    /// The settings in backoff at `now`, for a pass that runs away from the
    /// view (the unit lane): [`ItemView::is_held`] is then
    /// `item.mode == Enforce && held.contains(&item.key)`.
    pub fn held_keys(&self, now: Instant) -> HashSet<ItemKey> {
        self.trackers
            .iter()
            .filter(|(_, t)| !t.may_write(now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A setting that a push added, changed or removed starts with a clean
    /// backoff history: exactly the items it covers forget theirs.
    pub fn forget<'a>(&mut self, settings: impl IntoIterator<Item = &'a SettingId>) {
        let ids: Vec<&SettingId> = settings.into_iter().collect();
        self.trackers
            .retain(|key, _| !ids.iter().any(|id| id.covers(key)));
    }

    /// Items waiting for their backoff to end: drifted with a write held
    /// back (contested), or enforced and failed (a write or read to retry).
    fn held_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| match e.found {
            State::Drifted => e.status.item.action.is_some(),
            State::Failed => e.status.item.mode == Mode::Enforce,
            _ => false,
        })
    }

    /// Held items whose backoff ran out: sysctls by key (a key pass), any
    /// other kind as a full pass.
    pub fn due_retries(&self, now: Instant) -> Retries {
        let mut retries = Retries::default();
        for e in self.held_entries() {
            let Some(t) = self.trackers.get(&e.status.item.key) else {
                continue;
            };
            if t.hold_until().is_some_and(|h| h <= now) {
                let key = &e.status.item.key;
                if let Some(k) = key.sysctl() {
                    retries.keys.insert(k.clone());
                } else if let Some(unit) = key.unit() {
                    retries.units.insert(unit.to_string());
                } else {
                    retries.other = true;
                }
            }
        }
        retries
    }

    /// When the next held item's backoff ends.
    pub fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.held_entries()
            .filter_map(|e| self.trackers.get(&e.status.item.key)?.hold_until())
            .filter(|&h| h > now)
            .min()
    }

    /// Takes a pass's items into the view: updates each item's backoff
    /// history and puts the daemon's state (contested, failed while backing
    /// off, recently corrected) on it. A full pass replaces the view; a key
    /// pass updates the items it re-read. `before` holds what the pass found
    /// corrected items to be before it acted; `running` lists the host's process
    /// names (asked only when a setting becomes contested).
    pub fn absorb(
        &mut self,
        fresh: Vec<Item>,
        at: (Instant, SystemTime),
        full: bool,
        before: &HashMap<ItemKey, String>,
        running: &mut dyn FnMut() -> Vec<String>,
    ) -> Vec<Event> {
        let (now, wall) = at;
        let cfg = self.cfg;
        let window = cfg.contest.window;
        let mut names: Option<Vec<String>> = None;
        let mut events = Vec::new();
        let mut updated = Vec::with_capacity(fresh.len());
        for mut item in fresh {
            let prev = self.index.get(&item.key).map(|&i| &self.entries[i]);
            let found = item.state;
            let kind = item.kind();
            // The value found: read just now by a key pass, else the last
            // one known. A "correction" to the value that was already there
            // (a setting found again after systemd came back) is no `from`,
            // and no one reverted it: it does not count toward contested.
            // It is still a correction, logged and counted: for a file the
            // value shown is only that it is there, and a drop-in restored
            // after someone edited it shows the same before and after.
            let from = before
                .get(&item.key)
                .cloned()
                .or_else(|| prev.map(|p| p.status.item.actual.clone()));
            let unchanged = from.as_deref() == Some(item.actual.as_str());
            let tracker = self.trackers.entry(item.key.clone()).or_default();
            let transition = match found {
                State::Corrected if unchanged => tracker.compliant(now, &cfg),
                State::Corrected => tracker.corrected(now, &cfg),
                State::Failed => tracker.failed(now, &cfg),
                State::Compliant => tracker.compliant(now, &cfg),
                _ => Transition::Nothing,
            };
            let shown = tracker.shown_state(found, now, window);
            let corrections = tracker.corrections_within(now, window);
            let hold_until = tracker.hold_until().filter(|&h| h > now);
            let failures = tracker.failures();
            let contested = tracker.is_contested();

            match found {
                State::Corrected => events.push(Event::Corrected {
                    kind,
                    key: item.key.clone(),
                    from: from.filter(|v| !v.is_empty() && !unchanged),
                    to: item.actual.clone(),
                }),
                State::Failed => events.push(Event::Failed { kind }),
                _ => {}
            }
            let mut suspects = prev.map(|p| p.suspects.clone()).unwrap_or_default();
            if let Transition::Contested { .. } = transition {
                let names = names.get_or_insert_with(&mut *running);
                suspects = writers::likely_writers(&item.key, &item.conflicts, names);
            }
            if let Transition::Uncontested = transition {
                suspects.clear();
            }
            events.extend(transition_event(transition, &item, &suspects));

            let next_attempt = hold_until.map(|h| wall + (h - now));
            if contested {
                contested_detail(&mut item, corrections, window, &suspects);
            }
            let backoff_note = hold_until
                .filter(|_| contested || failures > 0)
                .map(|h| backoff_note(contested, h - now, failures));
            if let Some(note) = &backoff_note {
                item.detail.push(note.clone());
            }
            if shown == State::Failed && found == State::Drifted {
                // Held after a failure: the reason is the last failure's
                // (not its backoff note, which this pass wrote anew).
                if let Some(p) = prev {
                    for d in &p.status.item.detail {
                        if Some(d) != p.backoff_note.as_ref()
                            && backoff_note.as_ref() != Some(d)
                            && !item.detail.contains(d)
                        {
                            item.detail.push(d.clone());
                        }
                    }
                }
            }
            item.state = shown;
            let last_change = match prev {
                Some(p)
                    if p.status.item.state == item.state && p.status.item.actual == item.actual =>
                {
                    p.status.last_change
                }
                _ => wall,
            };
            updated.push(Entry {
                status: Arc::new(ItemStatus {
                    item,
                    last_change,
                    corrections,
                    next_attempt,
                }),
                found,
                suspects,
                backoff_note,
            });
        }
        self.store(updated, full);
        events
    }

    /// A full pass's entries replace the view; a key pass's update theirs.
    fn store(&mut self, updated: Vec<Entry>, full: bool) {
        if full {
            self.index = updated
                .iter()
                .enumerate()
                .map(|(i, e)| (e.status.item.key.clone(), i))
                .collect();
            self.trackers.retain(|id, _| self.index.contains_key(id));
            self.entries = updated;
        } else {
            for e in updated {
                if let Some(&i) = self.index.get(&e.status.item.key) {
                    self.entries[i] = e;
                } else {
                    self.index
                        .insert(e.status.item.key.clone(), self.entries.len());
                    self.entries.push(e);
                }
            }
        }
    }
}

/// The event a tracker's transition reports, if any.
fn transition_event(transition: Transition, item: &Item, suspects: &[String]) -> Option<Event> {
    let kind = item.kind();
    let key = item.key.clone();
    Some(match transition {
        Transition::Contested { corrections, hold } => Event::Contested {
            kind,
            key,
            corrections,
            hold,
            suspects: suspects.to_vec(),
        },
        Transition::StillContested { hold } => Event::StillContested { kind, key, hold },
        Transition::Uncontested => Event::Uncontested { kind, key },
        Transition::Failing { attempt, retry_in } => Event::Failing {
            kind,
            key,
            attempt,
            retry_in,
            detail: item.detail.join("; "),
        },
        Transition::Recovered => Event::Recovered { kind, key },
        Transition::Nothing => return None,
    })
}

/// A contested item's detail: how often it was corrected, and by whom it
/// likely was reverted.
fn contested_detail(item: &mut Item, corrections: usize, window: Duration, suspects: &[String]) {
    item.detail.push(format!(
        "contested: corrected {corrections} time(s) within {}; another writer keeps reverting it",
        human_duration(window)
    ));
    if suspects.is_empty() {
        item.detail.push(if item.key.sysctl().is_some() {
            "likely writer: not identified (no competing sysctl.d file, no known writer running)"
                .into()
        } else {
            "likely writer: not identified (no competing file, no known writer running)".into()
        });
    }
    for s in suspects {
        item.detail.push(format!("likely writer: {s}"));
    }
}

/// The note on an item held back: when it is written next, and why.
fn backoff_note(contested: bool, wait: Duration, failures: u32) -> String {
    let why = if contested {
        "backing off"
    } else {
        "retrying with backoff"
    };
    let failed = if failures > 0 {
        format!(" (failed {failures} time(s) in a row)")
    } else {
        String::new()
    };
    format!("{why}: next write in {}{failed}", human_duration(wait))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::schedule::{Backoff, ContestRule};
    use crate::sysctl::SysctlKey;

    fn corrected(from: &str, to: &str) -> (Item, HashMap<ItemKey, String>) {
        let key = ItemKey::Sysctl(SysctlKey::parse("vm.max_map_count").unwrap());
        let mut item = Item::new(key.clone(), to, Mode::Enforce);
        item.actual = to.into();
        item.state = State::Corrected;
        (item, HashMap::from([(key, from.to_string())]))
    }

    /// Corrections count toward contested only when the value found was
    /// not the one now there: three corrections of a reverted value make
    /// the setting contested, three "corrections" to the value that was
    /// already there (after a reconnect) do not, and log no `from`.
    #[test]
    fn a_correction_to_the_value_already_there_is_not_a_contest() {
        let cfg = TrackerConfig {
            contest: ContestRule {
                after: 3,
                window: Duration::from_secs(60),
                backoff: Backoff {
                    base: Duration::from_secs(10),
                    max: Duration::from_secs(80),
                },
            },
            ..TrackerConfig::default()
        };
        for (from, contested) in [("65530", true), ("262144", false)] {
            let mut view = ItemView::new(cfg);
            let start = Instant::now();
            let mut events = Vec::new();
            for i in 0..3 {
                let (item, before) = corrected(from, "262144");
                let at = (start + Duration::from_secs(i), SystemTime::now());
                events.extend(view.absorb(vec![item], at, false, &before, &mut Vec::new));
            }
            let shown = view.statuses().next().unwrap();
            let is_contested = events.iter().any(|e| matches!(e, Event::Contested { .. }));
            assert_eq!(is_contested, contested, "from {from}: {events:?}");
            assert_eq!(
                shown.item.state == State::Contested,
                contested,
                "from {from}"
            );
            let froms: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Corrected { from, .. } => Some(from.clone()),
                    _ => None,
                })
                .collect();
            let want = if contested {
                Some(from.to_string())
            } else {
                None
            };
            assert_eq!(froms, vec![want; 3]);
        }
    }
}
