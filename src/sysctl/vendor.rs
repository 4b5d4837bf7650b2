//! `sysctl_conflicts: override`: holdfast's copies of vendor sysctl.d files.
//! Pure: `observe` reads the files, the engine writes what is planned here.
//!
//! A vendor file — one outside `/etc`: `/run/sysctl.d`,
//! `/usr/local/lib/sysctl.d`, `/usr/lib/sysctl.d`, `/lib/sysctl.d` — that
//! sets a key holdfast enforces to another value loses at boot (holdfast's
//! own file sorts after it), but boot still applies the line first, and
//! anything that reads the effective configuration sees two values.
//! systemd's documented way to replace such a file (sysctl.d(5)) is a file
//! of the same name in `/etc/sysctl.d`, which masks it. With `override`,
//! holdfast writes that file: a copy of the vendor file with the conflicting
//! lines commented out, saying which policy line wanted otherwise, and
//! recording the vendor file's SHA-256.
//!
//! A scanner that reads the vendor directories itself, without systemd's
//! masking, still sees the vendor file: OpenSCAP with ComplianceAsCode
//! 0.1.65 (Debian 12's `ssg-debderived`) fails a key that any
//! `/usr/lib/sysctl.d/*.conf` sets to another value, copy or not (measured
//! in a network namespace; docs/src/sysctl.md, "Vendor files and `sysctl_conflicts`").
//!
//! # Guarantees
//! - Only lines that name an enforced key exactly (no glob) and set a value
//!   the policy does not accept are commented out; every other line is
//!   copied as it is.
//! - A file in `/etc/sysctl.d` that holdfast did not write (no
//!   [`OWN_UNIT_FILE_MARK`] first line; a link, such as a mask to
//!   `/dev/null`) is never planned over: its conflicts stay reported, with a
//!   hint.
//! - The copy is planned from the vendor file as it is now, so a package
//!   upgrade that changes the vendor file changes the copy holdfast wants,
//!   and the copy is rewritten. A copy that is no longer needed (the policy
//!   no longer asks for `override`, no enforced key conflicts any more, the
//!   vendor file is gone) is removed, so that the vendor file applies again.

use std::path::{Path, PathBuf};

use super::conf::{self, Assignment};
use super::{Comparison, SysctlKey};
use crate::item::{Item, ItemKey, OWN_UNIT_FILE_MARK, OwnFile, State, own_file_item};
use crate::policy::{Mode, Policy, SysctlConflicts, SysctlRule, sha256_hex};

/// The header line of a copy that records the vendor file's SHA-256.
pub const HASH_PREFIX: &str = "# vendor-sha256: ";

/// What `/etc/sysctl.d` has under a vendor file's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcEntry {
    Absent,
    /// holdfast's copy (its first line is holdfast's mark), with its content.
    Ours(String),
    /// Someone else's file or link (a link to `/dev/null` masks the vendor
    /// file); what it is, for reports.
    Foreign(String),
}

/// The vendor file of one name: the one boot would apply if `/etc/sysctl.d`
/// had no file of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorFile {
    /// Its path on this host (under the host root).
    pub path: PathBuf,
    /// Its path as the host itself names it (`/usr/lib/sysctl.d/50-default.conf`),
    /// for the copy's header.
    pub shown: String,
    /// Its content; `None` when it was not read (a foreign file masks it)
    /// or could not be read (the pass's warnings say why).
    pub text: Option<String>,
}

/// A vendor file's name, with what `/etc/sysctl.d` has of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameName {
    /// `/etc/sysctl.d/NAME` on this host.
    pub etc_path: PathBuf,
    pub etc: EtcEntry,
    /// `None` when no file of this name exists outside `/etc` (any more).
    pub vendor: Option<VendorFile>,
}

/// A line of a vendor file that a copy comments out, and the rule it
/// conflicts with.
#[derive(Debug, Clone, Copy)]
pub struct Commented<'a> {
    pub line: u32,
    pub rule: &'a SysctlRule,
}

/// Whether a line of a vendor file is one a copy comments out: it names a
/// key the policy enforces exactly (a glob sets keys holdfast does not
/// manage too, and scanners look for the literal key) and sets a value the
/// policy does not accept. An exclusion (`-KEY`) is kept: read before
/// holdfast's file, as vendor files are, it changes nothing.
fn commented_rule<'a>(policy: &'a Policy, a: &Assignment) -> Option<&'a SysctlRule> {
    let value = a.value.as_ref()?;
    if a.is_glob() {
        return None;
    }
    let key = SysctlKey::parse(&a.key).ok()?;
    let rule = policy.sysctls.get(&key)?;
    (policy.mode_of(rule.mode) == Mode::Enforce
        && rule.expect.compare(value) != Comparison::Compliant)
        .then_some(rule)
}

/// The lines of a vendor file a copy comments out, in file order.
pub fn commented_lines<'a>(policy: &'a Policy, path: &Path, text: &str) -> Vec<Commented<'a>> {
    conf::parse(path, text)
        .iter()
        .filter_map(|a| commented_rule(policy, a).map(|rule| Commented { line: a.line, rule }))
        .collect()
}

/// The copy of a vendor file: holdfast's header (its mark, what it replaces
/// and why, the vendor file's SHA-256), then the vendor file line by line,
/// each line in `commented` turned into a comment under a note naming the
/// policy line that wants another value.
pub fn render_copy(vendor: &str, text: &str, commented: &[Commented<'_>]) -> String {
    let mut out = format!(
        "{OWN_UNIT_FILE_MARK}: a copy of {vendor}, which it replaces (a file of\n\
         # the same name in /etc/sysctl.d masks it), with the lines that conflict with\n\
         # holdfast's policy commented out (sysctl_conflicts: override). It no longer\n\
         # follows package updates of {vendor}: holdfast rewrites it when that file\n\
         # changes, and removes it when the policy no longer needs it. Do not edit.\n\
         {HASH_PREFIX}{}\n",
        sha256_hex(text)
    );
    for (idx, line) in text.lines().enumerate() {
        let number = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        if let Some(c) = commented.iter().find(|c| c.line == number) {
            out.push_str(&format!(
                "# holdfast: commented out, the policy wants {} = {} ({})\n#{line}\n",
                c.rule.key, c.rule.expect, c.rule.source
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The vendor file's SHA-256 a copy recorded, if it is holdfast's copy.
pub fn recorded_hash(copy: &str) -> Option<&str> {
    copy.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(HASH_PREFIX))
}

/// Whether holdfast's copies of vendor files are enforced: the policy is in
/// `enforce` mode or enforces a sysctl. A copy is only needed for enforced
/// keys, and a copy left by an earlier enforced policy is only reported
/// under an audit one, as the persisted file is.
fn copies_enforced(policy: &Policy) -> bool {
    policy.default_mode() == Mode::Enforce
        || policy
            .sysctls
            .values()
            .any(|r| policy.mode_of(r.mode) == Mode::Enforce)
}

/// The items of holdfast's copies: one for each vendor file a copy should
/// replace, and one for each copy of holdfast's that should go.
pub fn plan(policy: &Policy, same: &[SameName]) -> Vec<Item> {
    let overriding = policy.sysctl_conflicts() == SysctlConflicts::Override;
    let mode = if copies_enforced(policy) {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    let mut items = Vec::new();
    for s in same {
        let current = match &s.etc {
            // Never planned over; its conflicts are reported on the keys.
            EtcEntry::Foreign(_) => continue,
            EtcEntry::Absent => None,
            EtcEntry::Ours(text) => Some(text.as_str()),
        };
        let key = ItemKey::SysctlOverride(s.etc_path.clone());
        let vendor = s.vendor.as_ref();
        let Some(text) = vendor.and_then(|v| v.text.as_deref()) else {
            match (current, vendor) {
                (None, _) => {}
                // Gone: nothing left to replace.
                (Some(c), None) => {
                    let mut item = copy_item(key, &s.etc_path, Some(c), None, mode, "absent");
                    if mode == Mode::Enforce {
                        item.detail.push(
                            "no file of this name is left outside /etc (the package was removed?): holdfast's copy is removed".into(),
                        );
                    }
                    items.push(item);
                }
                // Unreadable: the copy is left as it is.
                (Some(_), Some(v)) => {
                    let mut item = Item::new(key, format!("copy of {}", v.shown), mode);
                    item.actual = "holdfast's copy".into();
                    item.state = State::Failed;
                    item.detail.push(format!(
                        "{} could not be read (see the warnings): holdfast's copy is left as it is",
                        v.shown
                    ));
                    items.push(item);
                }
            }
            continue;
        };
        let Some(v) = vendor else { continue };
        let commented = if overriding && mode == Mode::Enforce {
            commented_lines(policy, &v.path, text)
        } else {
            Vec::new()
        };
        if commented.is_empty() && current.is_none() {
            continue;
        }
        let desired = (!commented.is_empty()).then(|| render_copy(&v.shown, text, &commented));
        let label = if commented.is_empty() {
            "absent".to_string()
        } else {
            format!(
                "copy of {}, {} line{} commented out",
                v.shown,
                commented.len(),
                if commented.len() == 1 { "" } else { "s" }
            )
        };
        let mut item = copy_item(key, &s.etc_path, current, desired, mode, &label);
        let hash = sha256_hex(text);
        if !commented.is_empty() {
            item.detail.push(format!(
                "overrides {} (sha256 {hash}): the copy no longer follows package updates of that file; holdfast rewrites it when the file changes",
                v.shown
            ));
        }
        if let Some(c) = current {
            if recorded_hash(c) != Some(hash.as_str()) {
                item.detail.push(format!(
                    "{} changed since holdfast copied it (a package upgrade?)",
                    v.shown
                ));
            }
            if commented.is_empty() && mode == Mode::Enforce {
                item.detail.push(if overriding {
                    format!(
                        "no enforced key conflicts with {} any more: holdfast's copy is removed so that it applies again",
                        v.shown
                    )
                } else {
                    format!(
                        "the policy does not ask for `sysctl_conflicts: override`: holdfast's copy is removed so that {} applies again",
                        v.shown
                    )
                });
            }
        }
        items.push(item);
    }
    items
}

fn copy_item(
    key: ItemKey,
    path: &Path,
    current: Option<&str>,
    desired: Option<String>,
    mode: Mode,
    label: &str,
) -> Item {
    own_file_item(OwnFile {
        key,
        path,
        current,
        desired,
        mode,
        desired_label: label.to_string(),
        actual_label: match current {
            None => "absent".into(),
            Some(_) => "holdfast's copy".into(),
        },
        stale_note: "holdfast's copy of a vendor file, from an earlier enforced policy, is still there: boot applies it instead of the vendor file",
    })
}

/// What a sysctl item says about vendor files and holdfast's copies:
/// a vendor line a copy of holdfast's overrides (the conflict is resolved,
/// but the copy no longer follows package updates), and, for the key's
/// remaining conflicts (`conflicting`, in boot order), why holdfast leaves
/// them.
pub fn notes(
    policy: &Policy,
    rule: &SysctlRule,
    conflicting: &[&Assignment],
    same: &[SameName],
) -> Vec<String> {
    let mut out = Vec::new();
    let enforced = policy.mode_of(rule.mode) == Mode::Enforce;
    for s in same {
        let (EtcEntry::Ours(_), Some(v)) = (&s.etc, &s.vendor) else {
            continue;
        };
        let Some(text) = &v.text else { continue };
        for a in conf::parse(&v.path, text) {
            let Some(value) = a.value.as_ref() else {
                continue;
            };
            if a.key == rule.key.as_str() && rule.expect.compare(value) != Comparison::Compliant {
                out.push(format!(
                    "{}:{} sets {}, but holdfast's copy {} overrides that file (sysctl_conflicts: override); the copy no longer follows package updates of {}",
                    v.shown,
                    a.line,
                    value.canonical(),
                    s.etc_path.display(),
                    v.shown
                ));
            }
        }
    }
    let vendor_of = |file: &Path| {
        same.iter()
            .find_map(|s| s.vendor.as_ref().filter(|v| v.path == file))
    };
    let ours = |file: &Path| {
        same.iter()
            .any(|s| s.etc_path == file && matches!(s.etc, EtcEntry::Ours(_)))
    };
    let overriding = policy.sysctl_conflicts() == SysctlConflicts::Override;
    let mut suggested = false;
    for a in conflicting {
        let at = format!("{}:{}", a.file.display(), a.line);
        let glob = a.is_glob();
        let vendor = vendor_of(&a.file);
        if vendor.is_none() && !ours(&a.file) {
            if overriding {
                out.push(format!(
                    "{at} is not holdfast's file, and holdfast never edits it (sysctl_conflicts: override replaces only files outside /etc): change or remove the line there"
                ));
            }
            continue;
        }
        if glob {
            if overriding {
                out.push(format!(
                    "{at} is a glob ({}) that sets other keys too: holdfast's copy keeps it",
                    a.key
                ));
            }
            continue;
        }
        if !enforced {
            if overriding {
                out.push(format!(
                    "{at} is left in place: holdfast comments out only the lines of keys it enforces"
                ));
            }
            continue;
        }
        if let Some(v) = vendor {
            if overriding {
                let copy = same
                    .iter()
                    .find(|s| s.vendor.as_ref() == Some(v))
                    .map(|s| s.etc_path.display().to_string())
                    .unwrap_or_default();
                out.push(format!(
                    "{at} is replaced by holdfast's copy {copy} when the policy is applied"
                ));
            } else if !suggested {
                suggested = true;
                out.push(format!(
                    "{at} sets another value (boot applies it before holdfast's file): `sysctl_conflicts: override` would replace {} at boot with a copy in /etc/sysctl.d that comments the line out",
                    v.shown
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Action;

    const VENDOR: &str = "# upstream defaults\nnet.ipv4.conf.default.rp_filter = 2\nnet.ipv4.conf.*.rp_filter = 2\n-net.ipv4.conf.all.rp_filter\nkernel.sysrq = 16\nfs.protected_fifos = 1\nnet.ipv4.tcp_syncookies = 1\n";

    fn policy(text: &str) -> Policy {
        Policy::from_files([("/p/cis.yaml", text)]).unwrap()
    }

    fn enforcing(conflicts: &str) -> Policy {
        policy(&format!(
            "version: 1\nmode: enforce\nsysctl_conflicts: {conflicts}\nsysctl:\n  net.ipv4.conf.default.rp_filter: 1\n  kernel.sysrq: {{value: 0, mode: audit}}\n  net.ipv4.tcp_syncookies: 1\n"
        ))
    }

    fn same(etc: EtcEntry, vendor: Option<&str>) -> SameName {
        SameName {
            etc_path: PathBuf::from("/r/etc/sysctl.d/50-default.conf"),
            etc,
            vendor: vendor.map(|text| VendorFile {
                path: PathBuf::from("/r/usr/lib/sysctl.d/50-default.conf"),
                shown: "/usr/lib/sysctl.d/50-default.conf".into(),
                text: Some(text.to_string()),
            }),
        }
    }

    fn copy_of(policy: &Policy, text: &str) -> String {
        let commented = commented_lines(policy, Path::new("/r/v.conf"), text);
        render_copy("/usr/lib/sysctl.d/50-default.conf", text, &commented)
    }

    #[test]
    fn a_copy_comments_out_only_exact_lines_of_enforced_keys_that_conflict() {
        let p = enforcing("override");
        let copy = copy_of(&p, VENDOR);
        assert!(copy.starts_with(OWN_UNIT_FILE_MARK), "{copy}");
        assert_eq!(recorded_hash(&copy), Some(sha256_hex(VENDOR).as_str()));
        let body: Vec<&str> = copy
            .lines()
            .skip_while(|l| !l.starts_with(HASH_PREFIX))
            .skip(1)
            .collect();
        assert_eq!(
            body,
            [
                "# upstream defaults",
                "# holdfast: commented out, the policy wants net.ipv4.conf.default.rp_filter = 1 (/p/cis.yaml:5)",
                "#net.ipv4.conf.default.rp_filter = 2",
                // A glob sets keys holdfast does not manage: kept.
                "net.ipv4.conf.*.rp_filter = 2",
                "-net.ipv4.conf.all.rp_filter",
                // An audit key's line is kept; a line that agrees is kept.
                "kernel.sysrq = 16",
                "fs.protected_fifos = 1",
                "net.ipv4.tcp_syncookies = 1",
            ]
        );
        // What boot reads of the copy: the conflicting line is gone, the rest
        // is the vendor file's.
        let keys: Vec<String> = conf::parse(Path::new("c"), &copy)
            .into_iter()
            .map(|a| a.key)
            .collect();
        assert_eq!(
            keys,
            [
                "net.ipv4.conf.*.rp_filter",
                // The exclusion, kept.
                "net.ipv4.conf.all.rp_filter",
                "kernel.sysrq",
                "fs.protected_fifos",
                "net.ipv4.tcp_syncookies"
            ]
        );
    }

    #[test]
    fn override_plans_a_copy_where_etc_has_none_and_rewrites_it_when_the_vendor_file_changes() {
        let p = enforcing("override");
        let items = plan(&p, &[same(EtcEntry::Absent, Some(VENDOR))]);
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.kind(), crate::item::Kind::SysctlOverride);
        assert_eq!(item.state, State::Drifted);
        assert_eq!(
            item.desired,
            "copy of /usr/lib/sysctl.d/50-default.conf, 1 line commented out"
        );
        let Some(Action::WriteFile { path, content }) = &item.action else {
            panic!("{item:?}");
        };
        assert_eq!(path, Path::new("/r/etc/sysctl.d/50-default.conf"));
        assert_eq!(*content, copy_of(&p, VENDOR));
        assert!(
            item.detail[0].contains("no longer follows package updates"),
            "{:?}",
            item.detail
        );

        // In place: compliant, nothing to do.
        let items = plan(&p, &[same(EtcEntry::Ours(content.clone()), Some(VENDOR))]);
        assert_eq!(items[0].state, State::Compliant);
        assert_eq!(items[0].action, None);

        // A package upgrade changed the vendor file: the copy is rewritten
        // from the new one.
        let upgraded = format!("{VENDOR}net.ipv4.conf.default.rp_filter = 0\n");
        let items = plan(
            &p,
            &[same(EtcEntry::Ours(content.clone()), Some(&upgraded))],
        );
        assert_eq!(items[0].state, State::Drifted);
        assert_eq!(
            items[0].action,
            Some(Action::WriteFile {
                path: path.clone(),
                content: copy_of(&p, &upgraded)
            })
        );
        assert!(
            items[0]
                .detail
                .iter()
                .any(|d| d.contains("changed since holdfast copied it")),
            "{:?}",
            items[0].detail
        );
    }

    #[test]
    fn a_copy_no_longer_needed_is_removed_and_a_foreign_file_is_never_planned_over() {
        let p = enforcing("override");
        let ours = EtcEntry::Ours(copy_of(&p, VENDOR));
        let remove = Some(Action::RemoveFile {
            path: PathBuf::from("/r/etc/sysctl.d/50-default.conf"),
        });
        // The policy no longer asks for override.
        let items = plan(&enforcing("report"), &[same(ours.clone(), Some(VENDOR))]);
        assert_eq!(items[0].action, remove);
        // The key left the policy: nothing conflicts any more.
        let other = policy(
            "version: 1\nmode: enforce\nsysctl_conflicts: override\nsysctl:\n  vm.swappiness: 10\n",
        );
        let items = plan(&other, &[same(ours.clone(), Some(VENDOR))]);
        assert_eq!(items[0].action, remove);
        // The vendor file is gone.
        let items = plan(&p, &[same(ours.clone(), None)]);
        assert_eq!(items[0].action, remove);
        // Under an audit policy a copy left behind is reported, not removed.
        let audit = policy(
            "version: 1\nsysctl_conflicts: override\nsysctl:\n  net.ipv4.conf.default.rp_filter: 1\n",
        );
        let items = plan(&audit, &[same(ours, Some(VENDOR))]);
        assert_eq!(items[0].state, State::Drifted);
        assert_eq!(items[0].action, None);
        assert!(items[0].detail[0].contains("earlier enforced policy"));
        // Nothing conflicts and nothing is there: no item.
        assert!(plan(&other, &[same(EtcEntry::Absent, Some(VENDOR))]).is_empty());
        // Report (the default) never plans a copy.
        assert!(
            plan(
                &enforcing("report"),
                &[same(EtcEntry::Absent, Some(VENDOR))]
            )
            .is_empty()
        );
        // Someone else's file of that name, or a mask, is never touched.
        for foreign in ["a file holdfast did not write", "a link to /dev/null"] {
            let s = same(EtcEntry::Foreign(foreign.into()), Some(VENDOR));
            assert!(plan(&p, &[s]).is_empty());
        }
    }

    #[test]
    fn notes_say_what_a_copy_resolved_and_why_other_conflicts_stay() {
        let p = enforcing("override");
        let rule = &p.sysctls[&SysctlKey::parse("net.ipv4.conf.default.rp_filter").unwrap()];
        // holdfast's copy is in place: the vendor's line no longer applies.
        let s = same(EtcEntry::Ours(copy_of(&p, VENDOR)), Some(VENDOR));
        let notes = notes(&p, rule, &[], std::slice::from_ref(&s));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("/usr/lib/sysctl.d/50-default.conf:2 sets 2, but holdfast's copy /r/etc/sysctl.d/50-default.conf overrides that file"),
            "{notes:?}"
        );
        assert!(notes[0].contains("no longer follows package updates"));

        // A file in /etc that is not holdfast's: reported with a hint.
        let foreign = Assignment {
            file: PathBuf::from("/r/etc/sysctl.d/60-site.conf"),
            line: 3,
            key: "net.ipv4.conf.default.rp_filter".into(),
            value: Some(crate::sysctl::SysctlValue::from_int(0)),
            ignore_failure: false,
        };
        let s = same(EtcEntry::Absent, Some(VENDOR));
        let got = super::notes(&p, rule, &[&foreign], std::slice::from_ref(&s));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with(
                "/r/etc/sysctl.d/60-site.conf:3 is not holdfast's file, and holdfast never edits it"
            ),
            "{got:?}"
        );
        // Under `report`, a vendor line suggests `override`; a foreign file
        // gets no hint (nothing would change for it).
        let vendor_line = Assignment {
            file: PathBuf::from("/r/usr/lib/sysctl.d/50-default.conf"),
            line: 2,
            ..foreign.clone()
        };
        let report = enforcing("report");
        let rule = &report.sysctls[&SysctlKey::parse("net.ipv4.conf.default.rp_filter").unwrap()];
        let got = super::notes(&report, rule, &[&vendor_line, &foreign], &[s]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(
            "`sysctl_conflicts: override` would replace /usr/lib/sysctl.d/50-default.conf"
        ));
    }
}
