//! limits.conf / limits.d parsing and pam_limits' precedence. Pure.
//!
//! pam_limits reads /etc/security/limits.conf, then limits.d/*.conf sorted by
//! name. For a session, a line for the user beats a line for one of its
//! groups, which beats `*`, whatever the order; among lines of the same
//! domain, the later one wins. `-` sets both soft and hard.

use std::path::{Path, PathBuf};

pub use super::LimitType;
use super::{Domain, LimitItem, LimitValue};

/// One parsed line; a `-` line yields a soft and a hard line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitLine {
    pub file: PathBuf,
    pub line: u32,
    pub domain: Domain,
    pub kind: LimitType,
    pub item: LimitItem,
    pub value: LimitValue,
}

/// A line pam_limits would complain about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub file: PathBuf,
    pub line: u32,
    pub message: String,
}

/// Parses one file. Malformed lines are returned beside the good ones, with
/// their location: pam_limits skips them and logs, so holdfast reports them.
pub fn parse(file: &Path, text: &str) -> (Vec<LimitLine>, Vec<Malformed>) {
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let n = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let malformed = |message: String| Malformed {
            file: file.to_path_buf(),
            line: n,
            message,
        };
        let [domain, kind, item, value] = fields.as_slice() else {
            bad.push(malformed(format!(
                "expected `<domain> <type> <item> <value>`, found {} field(s)",
                fields.len()
            )));
            continue;
        };
        let domain = match Domain::parse(domain) {
            Ok(d) => d,
            Err(why) => {
                bad.push(malformed(format!("domain {domain:?} {why}")));
                continue;
            }
        };
        let kinds: &[LimitType] = match *kind {
            "soft" => &[LimitType::Soft],
            "hard" => &[LimitType::Hard],
            "-" => &[LimitType::Soft, LimitType::Hard],
            other => {
                bad.push(malformed(format!(
                    "unknown type {other:?} (soft, hard or -)"
                )));
                continue;
            }
        };
        let Some(item) = LimitItem::parse(item) else {
            bad.push(malformed(format!("unknown item {item:?}")));
            continue;
        };
        let value = match *value {
            "unlimited" | "infinity" | "-1" => LimitValue::Unlimited,
            v => match v.parse::<i64>() {
                Ok(n) if n >= 0 || item.allows_negative() => LimitValue::Value(n),
                _ => {
                    bad.push(malformed(format!(
                        "value {v:?} is not a number or unlimited"
                    )));
                    continue;
                }
            },
        };
        for k in kinds {
            lines.push(LimitLine {
                file: file.to_path_buf(),
                line: n,
                domain: domain.clone(),
                kind: *k,
                item,
                value,
            });
        }
    }
    (lines, bad)
}

/// The line that decides `domain`'s `kind` `item` limit among `lines` (given
/// in pam_limits' reading order): the last line for exactly that domain.
/// Lines for other domains do not compete: a user's own line applies only
/// to that user, and a `*` line never overrides a more specific one.
pub fn effective<'a>(
    lines: &'a [LimitLine],
    domain: &Domain,
    kind: LimitType,
    item: LimitItem,
) -> Option<&'a LimitLine> {
    lines
        .iter()
        .rfind(|l| &l.domain == domain && l.kind == kind && l.item == item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(files: &[(&str, &str)]) -> (Vec<LimitLine>, Vec<Malformed>) {
        let mut all = Vec::new();
        let mut bad = Vec::new();
        for (name, text) in files {
            let (l, b) = parse(Path::new(name), text);
            all.extend(l);
            bad.extend(b);
        }
        (all, bad)
    }

    fn eff(
        all: &[LimitLine],
        domain: &str,
        kind: LimitType,
        item: LimitItem,
    ) -> Option<(String, u32, String)> {
        effective(all, &Domain::parse(domain).unwrap(), kind, item)
            .map(|l| (l.file.display().to_string(), l.line, l.value.to_string()))
    }

    #[test]
    fn dash_sets_both_and_comments_are_ignored() {
        let (all, bad) = lines(&[(
            "limits.conf",
            "# header\n*  -  nofile  4096  # trailing\n\n@app hard nproc unlimited\n",
        )]);
        assert!(bad.is_empty());
        assert_eq!(
            eff(&all, "*", LimitType::Soft, LimitItem::Nofile),
            Some(("limits.conf".into(), 2, "4096".into()))
        );
        assert_eq!(
            eff(&all, "*", LimitType::Hard, LimitItem::Nofile),
            Some(("limits.conf".into(), 2, "4096".into()))
        );
        assert_eq!(
            eff(&all, "@app", LimitType::Hard, LimitItem::Nproc),
            Some(("limits.conf".into(), 4, "unlimited".into()))
        );
        assert_eq!(eff(&all, "@app", LimitType::Soft, LimitItem::Nproc), None);
    }

    #[test]
    fn later_line_of_the_same_domain_wins_across_files() {
        let (all, _) = lines(&[
            ("limits.conf", "* soft nofile 1024\n"),
            ("limits.d/90-holdfast.conf", "* soft nofile 65536\n"),
            ("limits.d/99-other.conf", "* soft nofile 2048\n"),
        ]);
        assert_eq!(
            eff(&all, "*", LimitType::Soft, LimitItem::Nofile),
            Some(("limits.d/99-other.conf".into(), 1, "2048".into()))
        );
    }

    #[test]
    fn other_domains_do_not_compete() {
        let (all, _) = lines(&[
            (
                "limits.d/10-a.conf",
                "alice soft nofile 10\n@app soft nofile 20\n",
            ),
            ("limits.d/90-holdfast.conf", "* soft nofile 65536\n"),
            ("limits.d/99-b.conf", "bob soft nofile 30\n"),
        ]);
        assert_eq!(
            eff(&all, "*", LimitType::Soft, LimitItem::Nofile)
                .unwrap()
                .2,
            "65536"
        );
        assert_eq!(
            eff(&all, "alice", LimitType::Soft, LimitItem::Nofile)
                .unwrap()
                .2,
            "10"
        );
    }

    #[test]
    fn malformed_lines_are_reported_with_file_and_line() {
        let (all, bad) = lines(&[(
            "limits.d/x.conf",
            "* soft nofile\n* medium nofile 1\n* soft nofiles 1\n* soft nofile lots\nx:y soft nofile 1\n@g soft nice -5\n",
        )]);
        let got: Vec<(u32, &str)> = bad.iter().map(|m| (m.line, m.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    "expected `<domain> <type> <item> <value>`, found 3 field(s)"
                ),
                (2, "unknown type \"medium\" (soft, hard or -)"),
                (3, "unknown item \"nofiles\""),
                (4, "value \"lots\" is not a number or unlimited"),
                (
                    5,
                    "domain \"x:y\" has a range end \"x\" that is not a number"
                ),
            ]
        );
        assert_eq!(all.len(), 1, "negative nice is valid");
        assert_eq!(all[0].value, LimitValue::Value(-5));
    }
}
