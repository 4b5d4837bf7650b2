//! Reports: a readable table for terminals and stable JSON for machines.
//! The JSON types here are the only serializable types: the core does not
//! derive `Serialize`, and this layer converts (the schema is in docs/src/reports.md).

use serde::{Deserialize, Serialize};

use crate::engine::Pass;
use crate::item::{self, Conflict, Item, State};
use crate::journal::{Entry, Journal, Original};
use crate::policy::{Policy, PolicyError, Source};
use crate::rollback::{Report as RollbackReport, Step, UnitStep};

/// Exit codes, as terraform's `-detailed-exitcode`: config management can
/// act on them. The same with or without a daemon.
pub const EXIT_COMPLIANT: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_DRIFT: u8 = 2;
/// `holdfast status`: the newest policy push is rejected (whatever the
/// host's state under the previous policy).
pub const EXIT_REJECTED: u8 = 3;

/// The JSON report schema version; bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct ReportJson<'a> {
    pub schema_version: u32,
    pub command: &'a str,
    pub root: String,
    pub compliant: bool,
    pub summary: serde_json::Map<String, serde_json::Value>,
    pub policy: PolicyJson,
    pub items: Vec<ItemJson>,
    pub warnings: &'a [String],
    pub duration_ms: f64,
}

#[derive(Serialize)]
pub struct PolicyJson {
    pub files: Vec<String>,
    pub mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceJson {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl From<&Source> for SourceJson {
    fn from(s: &Source) -> Self {
        SourceJson {
            file: s.file.to_string(),
            line: s.line,
            column: s.column,
        }
    }
}

#[derive(Serialize)]
pub struct ItemJson {
    pub kind: &'static str,
    pub key: String,
    pub desired: String,
    pub actual: Option<String>,
    pub state: &'static str,
    pub mode: &'static str,
    pub source: Option<SourceJson>,
    pub action: Option<String>,
    pub detail: Vec<String>,
    pub conflicts: Vec<ConflictJson>,
    /// What the host had before holdfast first changed this item (the
    /// originals journal); absent when holdfast has not changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<OriginalJson>,
}

/// An item's original, from the journal. A file is shown by size, mode and
/// hash, not by content (the journal has the content).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginalJson {
    /// What was changed: the sysctl, the file, the unit property.
    pub target: String,
    /// `value`, `file`, `absent` or `unreadable`.
    pub state: String,
    /// The value (`value`), or why it could not be read (`unreadable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Permission bits in octal (`file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl From<&Entry> for OriginalJson {
    fn from(e: &Entry) -> Self {
        let mut out = OriginalJson {
            target: e.target.to_string(),
            state: String::new(),
            value: None,
            mode: None,
            bytes: None,
            sha256: None,
        };
        match &e.original {
            Original::Absent => out.state = "absent".into(),
            Original::Value(v) => {
                out.state = "value".into();
                out.value = Some(v.clone());
            }
            Original::File { content, mode } => {
                out.state = "file".into();
                out.mode = Some(format!("{mode:04o}"));
                out.bytes = Some(content.len());
                out.sha256 = Some(crate::policy::sha256_hex(content));
            }
            Original::Unreadable(why) => {
                out.state = "unreadable".into();
                out.value = Some(why.clone());
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictJson {
    pub file: String,
    pub line: u32,
    pub value: String,
    pub wins_at_boot: bool,
}

impl From<&Conflict> for ConflictJson {
    fn from(c: &Conflict) -> Self {
        ConflictJson {
            file: c.file.display().to_string(),
            line: c.line,
            value: c.value.clone(),
            wins_at_boot: c.wins_at_boot,
        }
    }
}

#[derive(Serialize)]
pub struct ValidationJson {
    pub valid: bool,
    pub files: Vec<String>,
    pub errors: Vec<ErrorJson>,
}

/// One policy error, as `validate --format json` and the status API's
/// rejected push show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl From<&PolicyError> for ErrorJson {
    fn from(e: &PolicyError) -> Self {
        ErrorJson {
            file: e.source.file.to_string(),
            line: e.source.line,
            column: e.source.column,
            message: e.message.clone(),
            hint: e.hint.clone(),
        }
    }
}

pub fn item_json(i: &Item, originals: &Journal) -> ItemJson {
    ItemJson {
        kind: i.kind().as_str(),
        key: i.key.to_string(),
        desired: i.desired.clone(),
        actual: (!i.actual.is_empty()).then(|| i.actual.clone()),
        state: i.state.as_str(),
        mode: i.mode.as_str(),
        source: i.source.as_ref().map(SourceJson::from),
        action: i.action.as_ref().map(std::string::ToString::to_string),
        detail: i.detail.clone(),
        conflicts: i.conflicts.iter().map(ConflictJson::from).collect(),
        original: originals.original_of(&i.key).map(OriginalJson::from),
    }
}

pub fn summary_json(items: &[Item]) -> serde_json::Map<String, serde_json::Value> {
    item::summary(items)
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), serde_json::Value::from(n)))
        .collect()
}

/// The CLI's JSON report; `originals` is the journal, for each item's
/// original.
pub fn to_json(
    command: &str,
    root: &str,
    policy: &Policy,
    pass: &Pass,
    originals: &Journal,
) -> String {
    let report = ReportJson {
        schema_version: SCHEMA_VERSION,
        command,
        root: root.to_string(),
        compliant: item::all_compliant(&pass.items),
        summary: summary_json(&pass.items),
        policy: PolicyJson {
            files: policy.files.clone(),
            mode: policy.default_mode().as_str(),
        },
        items: pass.items.iter().map(|i| item_json(i, originals)).collect(),
        warnings: &pass.warnings,
        duration_ms: pass.duration.as_secs_f64() * 1000.0,
    };
    // Serializing these plain structs cannot fail.
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

pub fn validation_json(files: Vec<String>, errors: &[PolicyError]) -> String {
    let report = ValidationJson {
        valid: errors.is_empty(),
        files,
        errors: errors.iter().map(ErrorJson::from).collect(),
    };
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

#[derive(Serialize)]
struct RollbackJson<'a> {
    schema_version: u32,
    command: &'static str,
    root: &'a str,
    dry_run: bool,
    /// Every selected entry restored and every affected service restarted.
    complete: bool,
    items: Vec<RollbackItemJson>,
    units: Vec<RollbackUnitJson>,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct RollbackItemJson {
    kind: &'static str,
    key: String,
    target: String,
    original: OriginalJson,
    action: String,
    /// `restored`, `would-restore`, `failed`, `refused` or `left`.
    result: &'static str,
    detail: Option<String>,
}

#[derive(Serialize)]
struct RollbackUnitJson {
    unit: String,
    /// `restart-required`, `restarted` or `failed`.
    state: &'static str,
    detail: Option<String>,
}

/// `holdfast rollback --format json`.
pub fn rollback_json(root: &str, r: &RollbackReport) -> String {
    let doc = RollbackJson {
        schema_version: SCHEMA_VERSION,
        command: "rollback",
        root,
        dry_run: r.dry_run,
        complete: r.complete(),
        items: r
            .items
            .iter()
            .map(|i| RollbackItemJson {
                kind: i.entry.kind.as_str(),
                key: i.entry.item.clone(),
                target: i.entry.target.to_string(),
                original: OriginalJson::from(&i.entry),
                action: i.restore.to_string(),
                result: i.step.as_str(),
                detail: i.step.detail().map(str::to_string),
            })
            .collect(),
        units: r
            .units
            .iter()
            .map(|(unit, step)| RollbackUnitJson {
                unit: unit.clone(),
                state: step.as_str(),
                detail: match step {
                    UnitStep::RestartRequired => Some(
                        "its processes still run with holdfast's settings until it restarts (--restart-services)"
                            .to_string(),
                    ),
                    UnitStep::Failed(why) => Some(why.clone()),
                    UnitStep::Restarted => None,
                },
            })
            .collect(),
        warnings: &r.warnings,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `holdfast rollback`'s table.
pub fn rollback_text(r: &RollbackReport) -> String {
    let header = ["TARGET", "KIND", "ORIGINAL", "RESULT"];
    let rows: Vec<([String; 4], Vec<String>)> = r
        .items
        .iter()
        .map(|i| {
            let row = [
                cell(&i.entry.target.to_string()),
                i.entry.kind.as_str().to_string(),
                cell(&i.entry.original.summary()),
                i.step.as_str().to_string(),
            ];
            let mut notes = vec![format!("-> {}", i.restore)];
            notes.extend(i.step.detail().map(str::to_string));
            (row, notes)
        })
        .collect();
    let mut out = if rows.is_empty() {
        "the originals journal has nothing to roll back\n".to_string()
    } else {
        table(header, &rows)
    };
    for (unit, step) in &r.units {
        out.push_str(&match step {
            UnitStep::RestartRequired => format!(
                "restart-required: {unit} still runs with holdfast's settings; restart it (or rerun with --restart-services)\n"
            ),
            UnitStep::Restarted => format!("restarted: {unit}\n"),
            UnitStep::Failed(why) => format!("failed: {unit}: {why}\n"),
        });
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let done = r.items.iter().filter(|i| i.step == Step::Restored).count();
    let left = r.items.len() - done;
    out.push_str(&if r.dry_run {
        format!(
            "dry run: {} entries would be rolled back; nothing was written\n",
            r.items.len()
        )
    } else if r.complete() {
        format!("rolled back: {done} restored\n")
    } else {
        format!("rollback incomplete: {done} restored, {left} left in the journal\n")
    });
    out
}

/// How the text report presents actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextStyle {
    /// `check`: states only.
    Check,
    /// `plan`: also what apply would do.
    Plan,
    /// `apply`: what was done.
    Apply,
}

const MAX_CELL: usize = 48;

/// A table cell: at most 48 characters, longer text cut with `…`.
pub fn cell(s: &str) -> String {
    if s.chars().count() <= MAX_CELL {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_CELL - 1).collect();
    t.push('…');
    t
}

/// The table both text views print (the CLI report and `holdfast status`):
/// a header, then each row with its notes indented below it. Columns are
/// padded to the widest cell; the last is not.
pub fn table<const N: usize>(header: [&str; N], rows: &[([String; N], Vec<String>)]) -> String {
    let mut widths = header.map(str::len);
    for (row, _) in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Each line is written straight into the table, padded, and its
    // trailing blanks cut there: no string per line or per padding.
    let line_len: usize = widths.iter().map(|w| w + 2).sum();
    let notes_len: usize = rows
        .iter()
        .flat_map(|(_, notes)| notes)
        .map(|n| n.len() + 5)
        .sum();
    let mut out = String::with_capacity(line_len * (rows.len() + 1) + notes_len);
    let render = |cells: &[&str], out: &mut String| {
        let last = cells.len() - 1;
        let start = out.len();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(c);
            if i < last {
                out.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
            }
        }
        let kept = out[start..].trim_end().len();
        out.truncate(start + kept);
        out.push('\n');
    };
    render(&header, &mut out);
    for (row, notes) in rows {
        render(&row.each_ref().map(String::as_str), &mut out);
        for n in notes {
            out.push_str("    ");
            out.push_str(n);
            out.push('\n');
        }
    }
    out
}

/// The table: one row per item, notes indented below it, a summary last.
pub fn to_text(policy: &Policy, pass: &Pass, style: TextStyle) -> String {
    let header = ["SETTING", "DESIRED", "ACTUAL", "STATE", "MODE", "SOURCE"];
    let rows: Vec<([String; 6], Vec<String>)> = pass
        .items
        .iter()
        .map(|i| {
            let row = [
                cell(&i.key.to_string()),
                cell(&i.desired),
                cell(if i.actual.is_empty() { "-" } else { &i.actual }),
                i.state.as_str().to_string(),
                i.mode.as_str().to_string(),
                i.source
                    .as_ref()
                    .map_or_else(|| "holdfast".into(), std::string::ToString::to_string),
            ];
            let mut notes = Vec::new();
            if style == TextStyle::Plan {
                match (&i.action, i.state) {
                    (Some(a), _) => notes.push(format!("-> {a}")),
                    (None, State::Drifted) if i.mode == crate::policy::Mode::Audit => {
                        notes.push("-> not changed (audit mode)".to_string());
                    }
                    _ => {}
                }
            }
            notes.extend(i.detail.iter().cloned());
            // Which line boot applies instead: holdfast's, once enforced,
            // unless a conflict wins (its detail says so) or nothing does.
            let instead = if i.mode == crate::policy::Mode::Enforce
                && !i.conflicts.iter().any(|c| c.wins_at_boot)
            {
                "holdfast's value wins at boot"
            } else {
                "not what boot applies to this key"
            };
            notes.extend(i.conflicts.iter().filter(|c| !c.wins_at_boot).map(|c| {
                format!(
                    "also set to {} by {}:{} ({instead})",
                    c.value,
                    c.file.display(),
                    c.line
                )
            }));
            (row, notes)
        })
        .collect();
    let mut out = table(header, &rows);
    for w in &pass.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let counts: Vec<String> = item::summary(&pass.items)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let verdict = if item::all_compliant(&pass.items) {
        "compliant"
    } else {
        "NOT compliant"
    };
    out.push_str(&format!(
        "\n{verdict}: {} (policy mode {}; {})\n",
        if counts.is_empty() {
            "no settings".to_string()
        } else {
            counts.join(", ")
        },
        policy.default_mode(),
        policy.files.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell_and_trims_line_ends() {
        let row = |cells: [&str; 3], notes: &[&str]| {
            (
                cells.map(String::from),
                notes
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        let rows = [
            // Columns count characters, not bytes.
            row(["vm.é", "1", "compliant"], &[]),
            // Empty trailing cells leave no blanks at the line's end, and
            // neither does a cell that ends with one.
            row(["kernel.x", "", ""], &["a note", "another"]),
            row(["a", "22 ", ""], &[]),
        ];
        assert_eq!(
            table(["KEY", "VALUE", "STATE"], &rows),
            "KEY       VALUE  STATE\n\
             vm.é      1      compliant\n\
             kernel.x\n    a note\n    another\n\
             a         22\n"
        );
        assert_eq!(table(["A", "B"], &[]), "A  B\n");
    }
}
