//! What a policy file must be before its YAML is interpreted: text with no
//! control characters (in the text or in any scalar after escapes are
//! processed), no YAML tags, and a name that can be shown safely. Checked on
//! the parser's events, so every error has its line and column. Pure.

use std::sync::Arc;

use granit_parser::{Event, Parser};

use super::{PolicyError, Source};
use crate::host::escape_control;

/// The name a file is shown under, and whether it is one holdfast accepts:
/// a name with control characters (a newline would forge lines in the files
/// holdfast writes, an ESC would drive a terminal) is shown escaped and
/// refused.
pub fn file_name(name: &str) -> (Arc<str>, Option<PolicyError>) {
    let shown: Arc<str> = Arc::from(escape_control(name));
    let error = name.chars().any(char::is_control).then(|| {
        PolicyError::new(
            Source {
                file: shown.clone(),
                line: 1,
                column: 1,
            },
            "the file name contains control characters (shown escaped)",
        )
        .with_hint(
            "rename the file: policy file names are printed and written into holdfast's files",
        )
    });
    (shown, error)
}

/// The errors of one file's text (empty when it may be interpreted).
pub fn text(file: &Arc<str>, text: &str) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let at = |line: usize, column: usize| Source {
        file: file.clone(),
        line: line.max(1) as u64,
        column: column.max(1) as u64,
    };
    // Raw control characters anywhere (comments included); tab and line
    // ends (LF, or CRLF) are YAML's own. A lone CR is refused too: YAML
    // counts it as a line break where editors do not, so every location
    // after it would name the wrong line.
    for (i, line) in text.split('\n').enumerate() {
        if let Some((col, c)) = line
            .strip_suffix('\r')
            .unwrap_or(line)
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && *c != '\t')
        {
            errors.push(
                PolicyError::new(
                    at(i + 1, col + 1),
                    format!("control character {}", escape_control(&c.to_string())),
                )
                .with_hint("policies are plain text; remove it"),
            );
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    // Tags and escaped control characters, from the parser's events. A
    // syntax error stops this scan; serde reports it with its location.
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let here = at(span.start.line(), span.start.col() + 1);
        let tag = match &event {
            Event::Scalar(_, _, _, tag)
            | Event::SequenceStart(_, _, tag)
            | Event::MappingStart(_, _, tag) => tag.is_some(),
            _ => false,
        };
        if tag {
            errors.push(
                PolicyError::new(here.clone(), "YAML tags (`!!binary`, `!!str`, `!custom`) are not allowed")
                    .with_hint("write the value itself; holdfast reads plain YAML scalars, sequences and mappings"),
            );
        }
        if let Event::Scalar(value, ..) = &event
            && value.chars().any(char::is_control)
        {
            errors.push(
                PolicyError::new(
                    here,
                    format!("the value {:?} contains a control character", escape_control(value)),
                )
                .with_hint("no policy value needs a tab, a line break or an escape (\\e, \\0, \\x1b); remove it"),
            );
        }
    }
    errors.sort_by_key(|e| (e.source.line, e.source.column));
    errors.dedup();
    errors
}

/// A file's bytes as text, or an error at the line and column of the first
/// byte that is not UTF-8.
pub fn utf8<'a>(file: &Arc<str>, bytes: &'a [u8]) -> Result<&'a str, PolicyError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        // Columns count characters, as the other errors' do.
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        PolicyError::new(
            Source {
                file: file.clone(),
                line: line as u64,
                column: column as u64,
            },
            format!("not UTF-8: byte 0x{:02x}", bytes[e.valid_up_to()]),
        )
        .with_hint("policies are UTF-8 text; re-save the file as UTF-8")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(t: &str) -> Vec<String> {
        text(&Arc::from("p.yaml"), t)
            .iter()
            .map(std::string::ToString::to_string)
            .collect()
    }

    #[test]
    fn tags_and_control_characters_are_refused_with_their_location() {
        assert!(errs("version: 1\nlimits:\n  - {domain: '*', item: nofile, soft: 1}\n").is_empty());
        let e = errs("version: 1\nmode: !!binary ZW5mb3JjZQ==\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("p.yaml:2:16: YAML tags"), "{e:?}");
        let e = errs("version: 1\nlimits:\n  - {domain: \"a\\eb\", item: nofile, soft: 1}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.yaml:3:") && e[0].contains("\"a\\\\u{1b}b\""),
            "{e:?}"
        );
        let e = errs("version: 1\nlimits:\n  - {domain: \"a\\0b\", item: nofile, soft: 1}\n");
        assert!(e[0].contains("control character"), "{e:?}");
        // A raw ESC, even in a comment.
        let e = errs("version: 1 # \u{1b}[2J\n");
        assert!(
            e[0].starts_with("p.yaml:1:14: control character \\u{1b}"),
            "{e:?}"
        );
        // A literal block brings a line break into a value.
        let e = errs("version: 1\nmode: |\n  enforce\n  x\n");
        assert!(
            e.iter().any(|e| e.contains("contains a control character")),
            "{e:?}"
        );
    }

    #[test]
    fn file_names_with_control_characters_are_shown_escaped_and_refused() {
        let (shown, err) = file_name("10-x\n* hard maxlogins 0\n#.yaml");
        assert_eq!(&*shown, "10-x\\n* hard maxlogins 0\\n#.yaml");
        assert!(
            err.unwrap()
                .to_string()
                .starts_with("10-x\\n* hard maxlogins 0\\n#.yaml:1:1: the file name")
        );
        let (shown, err) = file_name("/etc/holdfast/policy.d/10-base.yaml");
        assert_eq!(&*shown, "/etc/holdfast/policy.d/10-base.yaml");
        assert!(err.is_none());
    }

    #[test]
    fn non_utf8_is_located_at_its_first_bad_byte() {
        let f: Arc<str> = Arc::from("p.yaml");
        let err = utf8(&f, b"version: 1\nmode: \xc3\xa9t\xff\n").unwrap_err();
        assert_eq!(
            err.to_string().lines().next().unwrap(),
            "p.yaml:2:9: not UTF-8: byte 0xff"
        );
        assert_eq!(utf8(&f, "mode: é".as_bytes()).unwrap(), "mode: é");
    }
}
