//! sysctl.d configuration files: parsing and boot-time precedence. Pure; the
//! caller reads the files.
//!
//! Precedence follows systemd-sysctl (and `sysctl --system`): `*.conf` files
//! from /etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d,
//! /usr/lib/sysctl.d and /lib/sysctl.d; a file masks files of the same name in
//! later directories; the survivors are applied sorted by file name, and a
//! later assignment of a key wins. `sysctl --system` also reads
//! /etc/sysctl.conf last.
//!
//! Globs and exclusions follow systemd-sysctl too ([`at_boot`]): a line
//! naming a key sets it whatever order it comes in, so a glob sets only the
//! keys no line names; a `-KEY` line without `=` names a key without setting
//! it, which keeps every glob off it (and drops an earlier line's value).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::SysctlValue;

/// One `key = value` line of a sysctl configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub file: PathBuf,
    pub line: u32,
    /// The key in dotted form; may hold `*`, `?` and `[…]` globs, which
    /// systemd-sysctl expands.
    pub key: String,
    /// The value set; `None` for an exclusion, a `-KEY` line without `=`:
    /// it sets nothing and keeps globs off the key.
    pub value: Option<SysctlValue>,
    /// The line started with `-`: failures to apply it are ignored at boot.
    pub ignore_failure: bool,
}

impl Assignment {
    /// Whether the key is a pattern that boot expands.
    pub fn is_glob(&self) -> bool {
        is_glob(&self.key)
    }
}

/// What boot does with one key, as systemd-sysctl decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtBoot<'a> {
    /// A line naming the key sets it (the last such line read).
    Set(&'a Assignment),
    /// No line names the key; this glob sets it (of the globs that match,
    /// the one boot applies last).
    Glob(&'a Assignment),
    /// The key's last line is an exclusion (`-KEY`): boot leaves it as the
    /// kernel has it, and no glob sets it.
    Excluded(&'a Assignment),
    /// No line sets it.
    Untouched,
}

impl<'a> AtBoot<'a> {
    /// The line that decides the key at boot, if any.
    pub fn line(self) -> Option<&'a Assignment> {
        match self {
            AtBoot::Set(a) | AtBoot::Glob(a) | AtBoot::Excluded(a) => Some(a),
            AtBoot::Untouched => None,
        }
    }
}

/// Orders configuration files as boot applies them. `candidates` lists the
/// files found, each with the index of its directory in
/// [`crate::host::SYSCTL_CONF_DIRS`] (lower = higher priority).
pub fn boot_order(mut candidates: Vec<(usize, PathBuf)>) -> Vec<PathBuf> {
    candidates.sort_by(|(da, a), (db, b)| a.file_name().cmp(&b.file_name()).then(da.cmp(db)));
    let mut out: Vec<PathBuf> = Vec::new();
    for (_, path) in candidates {
        let masked = out
            .last()
            .is_some_and(|prev| prev.file_name() == path.file_name());
        if !masked {
            out.push(path);
        }
    }
    out
}

/// Parses one file. Lines that cannot be parsed are skipped, as the boot-time
/// appliers skip them.
pub fn parse(file: &Path, text: &str) -> Vec<Assignment> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (dash, line) = match line.strip_prefix('-') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        // Without `=`, a `-` line is an exclusion; any other line is not an
        // assignment and boot skips it.
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key, Some(SysctlValue::from_kernel(value))),
            None if dash => (line, None),
            None => continue,
        };
        let key = normalize_key(key.trim());
        if key.is_empty() {
            continue;
        }
        out.push(Assignment {
            file: file.to_path_buf(),
            line: u32::try_from(idx + 1).unwrap_or(u32::MAX),
            key,
            ignore_failure: dash && value.is_some(),
            value,
        });
    }
    out
}

/// Brings a key to holdfast's dotted form: a key with `/` separators has its
/// dots taken literally (`net/ipv4/conf/eth0.100/rp_filter` is
/// `net.ipv4.conf.eth0/100.rp_filter`).
pub fn normalize_key(key: &str) -> String {
    let key = key.trim_start_matches('/');
    if key.contains('/') && !key.contains('.') {
        return key.replace('/', ".");
    }
    let first_sep = key.find(['.', '/']);
    if first_sep.is_some_and(|i| key.as_bytes()[i] == b'/') {
        key.split('/')
            .map(|c| c.replace('.', "/"))
            .collect::<Vec<_>>()
            .join(".")
    } else {
        key.to_string()
    }
}

/// The lines that concern `key` (naming it, excluding it, or a glob that
/// matches it), in boot order.
pub fn assignments_for<'a>(
    all: impl IntoIterator<Item = &'a Assignment>,
    key: &str,
) -> Vec<&'a Assignment> {
    all.into_iter()
        .filter(|a| key_matches(&a.key, key))
        .collect()
}

/// The lines of the sysctl.d files in boot order, indexed once per read of
/// the directories: the lines naming each key string, and the globs apart
/// (a host has few), so that the lines concerning one key are found
/// without reading every line.
#[derive(Debug, Clone, Default)]
pub struct BootLines {
    lines: Vec<Assignment>,
    by_key: HashMap<String, Vec<usize>>,
    globs: Vec<usize>,
}

impl BootLines {
    pub fn new(lines: Vec<Assignment>) -> BootLines {
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        let mut globs = Vec::new();
        for (i, a) in lines.iter().enumerate() {
            if a.is_glob() {
                globs.push(i);
            } else {
                by_key.entry(a.key.clone()).or_default().push(i);
            }
        }
        BootLines {
            lines,
            by_key,
            globs,
        }
    }

    /// Every line, in boot order.
    pub fn all(&self) -> &[Assignment] {
        &self.lines
    }

    /// The lines that concern `key` (naming it, excluding it, or a glob
    /// that matches it), in boot order: what [`assignments_for`] finds over
    /// every line.
    pub fn concerning(&self, key: &str) -> Vec<&Assignment> {
        let named = self.by_key.get(key).map_or(&[][..], Vec::as_slice);
        let mut at: Vec<usize> = self
            .globs
            .iter()
            .copied()
            .filter(|&i| key_matches(&self.lines[i].key, key))
            .collect();
        if at.is_empty() {
            return named.iter().map(|&i| &self.lines[i]).collect();
        }
        at.extend_from_slice(named);
        at.sort_unstable();
        at.into_iter().map(|i| &self.lines[i]).collect()
    }
}

impl FromIterator<Assignment> for BootLines {
    fn from_iter<I: IntoIterator<Item = Assignment>>(iter: I) -> BootLines {
        BootLines::new(iter.into_iter().collect())
    }
}

/// What boot does with `key`, given every line read in boot order (or
/// those of [`assignments_for`] the key). systemd-sysctl keeps one entry
/// per key string, in the order read: a later line of the same key string
/// replaces the entry and moves it to the end, unless it has the same
/// value. It then applies the entries in that order; a glob entry sets each
/// matching key that has no entry of its own, and an exclusion entry sets
/// nothing.
pub fn at_boot<'a>(all: impl IntoIterator<Item = &'a Assignment>, key: &str) -> AtBoot<'a> {
    // The entries in the order boot applies them (a slot emptied when its
    // key string was read again with another value), and each key string's
    // slot.
    let mut entries: Vec<Option<&Assignment>> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for a in all.into_iter().filter(|a| key_matches(&a.key, key)) {
        match slot.get(a.key.as_str()).copied() {
            // Same value: the entry keeps its place; the later line is
            // reported, as removing the earlier one alone changes nothing.
            Some(i) if entries[i].is_some_and(|e| e.value == a.value) => entries[i] = Some(a),
            Some(i) => {
                entries[i] = None;
                slot.insert(&a.key, entries.len());
                entries.push(Some(a));
            }
            None => {
                slot.insert(&a.key, entries.len());
                entries.push(Some(a));
            }
        }
    }
    if let Some(own) = slot.get(key).and_then(|i| entries[*i]) {
        return match own.value {
            Some(_) => AtBoot::Set(own),
            None => AtBoot::Excluded(own),
        };
    }
    entries
        .iter()
        .rev()
        .flatten()
        .find(|e| e.value.is_some())
        .map_or(AtBoot::Untouched, |e| AtBoot::Glob(e))
}

/// Whether a key holds glob characters (systemd's `string_is_glob`).
fn is_glob(key: &str) -> bool {
    key.contains(['*', '?', '['])
}

/// Whether a configuration key (possibly a glob) names `key`. Globs match
/// within one component, as glob(3) on the /proc/sys path does.
fn key_matches(pattern: &str, key: &str) -> bool {
    if !is_glob(pattern) {
        return pattern == key;
    }
    let mut pat = pattern.split('.');
    let mut parts = key.split('.');
    loop {
        match (pat.next(), parts.next()) {
            (None, None) => return true,
            (Some(p), Some(k)) if glob_component(p.as_bytes(), k.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// fnmatch(3) of one path component: `*`, `?`, and `[…]` sets (`!` or `^`
/// negates, `a-z` ranges); a `[` without its `]` is itself. Linear in the
/// pattern times the name: on a mismatch only the last `*` takes one more
/// byte (what a later `*` could match, an earlier one could too), so no
/// pattern makes it backtrack exponentially.
fn glob_component(pattern: &[u8], s: &[u8]) -> bool {
    let tokens = tokens(pattern);
    let (mut t, mut i) = (0, 0);
    // The token after the last `*` seen, and where in `s` that `*` stopped.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                t += 1;
                star = Some((t, i));
            }
            Some(one) if one.matches(s[i]) => {
                t += 1;
                i += 1;
            }
            _ => match star {
                Some((after, at)) => {
                    t = after;
                    i = at + 1;
                    star = Some((after, at + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|tok| matches!(tok, Token::Star))
}

/// One element of a glob pattern.
enum Token<'a> {
    Star,
    Any,
    Set(&'a [u8]),
    Byte(u8),
}

impl Token<'_> {
    /// Whether this token (not `*`) matches one byte.
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Star => false,
            Token::Any => true,
            Token::Set(set) => set_matches(set, c),
            Token::Byte(b) => *b == c,
        }
    }
}

fn tokens(mut p: &[u8]) -> Vec<Token<'_>> {
    let mut out = Vec::with_capacity(p.len());
    while let Some((&c, rest)) = p.split_first() {
        p = rest;
        out.push(match c {
            b'*' => Token::Star,
            b'?' => Token::Any,
            b'[' => match bracket(rest) {
                Some((set, after)) => {
                    p = after;
                    Token::Set(set)
                }
                None => Token::Byte(b'['),
            },
            c => Token::Byte(c),
        });
    }
    out
}

/// The set of a bracket expression (the bytes after `[`) and what follows
/// its `]`; `None` when it has no `]`. A `]` right after `[`, `[!` or `[^`
/// belongs to the set.
fn bracket(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let skip = match p {
        [b'!' | b'^', b']', ..] => 2,
        [b'!' | b'^' | b']', ..] => 1,
        _ => 0,
    };
    let close = skip + p.get(skip..)?.iter().position(|b| *b == b']')?;
    Some((&p[..close], &p[close + 1..]))
}

fn set_matches(set: &[u8], c: u8) -> bool {
    let (negated, mut set) = match set.split_first() {
        Some((b'!' | b'^', rest)) => (true, rest),
        _ => (false, set),
    };
    let mut hit = false;
    while let Some((&first, rest)) = set.split_first() {
        if let [b'-', last, tail @ ..] = rest {
            hit |= (first..=*last).contains(&c);
            set = tail;
        } else {
            hit |= first == c;
            set = rest;
        }
    }
    hit != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_comments_and_dash() {
        let text = "# comment\n; other\n\nvm.swappiness = 10\n-net.ipv4.ip_local_port_range=1024\t65000\nbogus line\nnet/ipv4/conf/eth0.100/rp_filter = 2\n- net.ipv4.conf.all.rp_filter \n";
        let got = parse(Path::new("/etc/sysctl.d/10-a.conf"), text);
        let summary: Vec<_> = got
            .iter()
            .map(|a| {
                (
                    a.line,
                    a.key.as_str(),
                    a.value.as_ref().map(SysctlValue::canonical),
                    a.ignore_failure,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (4, "vm.swappiness", Some("10".to_string()), false),
                (
                    5,
                    "net.ipv4.ip_local_port_range",
                    Some("1024 65000".to_string()),
                    true
                ),
                (
                    7,
                    "net.ipv4.conf.eth0/100.rp_filter",
                    Some("2".to_string()),
                    false
                ),
                // An exclusion: no value, nothing to ignore.
                (8, "net.ipv4.conf.all.rp_filter", None, false),
            ]
        );
    }

    #[test]
    fn earlier_directory_masks_same_name_and_names_sort() {
        let order = boot_order(vec![
            (3, PathBuf::from("/usr/lib/sysctl.d/50-default.conf")),
            (0, PathBuf::from("/etc/sysctl.d/50-default.conf")),
            (3, PathBuf::from("/usr/lib/sysctl.d/10-a.conf")),
            (0, PathBuf::from("/etc/sysctl.d/99-zz-holdfast.conf")),
            (1, PathBuf::from("/run/sysctl.d/60-b.conf")),
        ]);
        assert_eq!(
            order,
            vec![
                PathBuf::from("/usr/lib/sysctl.d/10-a.conf"),
                PathBuf::from("/etc/sysctl.d/50-default.conf"),
                PathBuf::from("/run/sysctl.d/60-b.conf"),
                PathBuf::from("/etc/sysctl.d/99-zz-holdfast.conf"),
            ]
        );
    }

    #[test]
    fn globs_match_one_component() {
        assert!(key_matches(
            "net.ipv4.conf.*.rp_filter",
            "net.ipv4.conf.all.rp_filter"
        ));
        assert!(!key_matches(
            "net.ipv4.conf.*.rp_filter",
            "net.ipv4.conf.rp_filter"
        ));
        assert!(key_matches("vm.swappines?", "vm.swappiness"));
        assert!(!key_matches("vm.swappiness", "vm.swappines"));
        assert!(key_matches(
            "net.ipv4.conf.eth[0-9].rp_filter",
            "net.ipv4.conf.eth3.rp_filter"
        ));
        assert!(!key_matches(
            "net.ipv4.conf.eth[!0-9].rp_filter",
            "net.ipv4.conf.eth3.rp_filter"
        ));
        assert!(key_matches(
            "net.ipv4.conf.[]x].rp_filter",
            "net.ipv4.conf.].rp_filter"
        ));
        assert!(key_matches(
            "net.ipv4.conf.[^a].rp_filter",
            "net.ipv4.conf.b.rp_filter"
        ));
        // A `[` without `]` is itself.
        assert!(key_matches("net.ipv4.conf.a[b.x", "net.ipv4.conf.a[b.x"));
        assert!(!key_matches("net.ipv4.conf.a[b.x", "net.ipv4.conf.ab.x"));
        assert!(!key_matches("net.*", "net.core.somaxconn"));
    }

    /// fnmatch by plain recursion: obviously right, exponential on many
    /// `*`s.
    fn naive(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| naive(rest, &s[i..])),
            Some((b'?', rest)) => !s.is_empty() && naive(rest, &s[1..]),
            Some((b'[', rest)) => match (bracket(rest), s.split_first()) {
                (Some((set, after)), Some((c, tail))) => set_matches(set, *c) && naive(after, tail),
                (Some(_), None) => false,
                (None, _) => s.first() == Some(&b'[') && naive(rest, &s[1..]),
            },
            Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn globs_match_as_plain_recursion_does(
            p in "([ab*?]|\\[!?a?\\]?|\\[a-b\\]){0,8}",
            s in "[ab\\[\\]!]{0,8}",
        ) {
            proptest::prop_assert_eq!(
                glob_component(p.as_bytes(), s.as_bytes()),
                naive(p.as_bytes(), s.as_bytes())
            );
        }
    }

    #[test]
    fn many_stars_take_no_time() {
        // Found by fuzzing: the recursive matcher took minutes on this.
        let stars = format!("{}net%m", "*".repeat(56));
        let name = "a".repeat(60);
        assert!(!glob_component(stars.as_bytes(), name.as_bytes()));
        assert!(glob_component(
            stars.as_bytes(),
            format!("{name}net%m").as_bytes()
        ));
        let text = String::from_utf8_lossy(include_bytes!(
            "../../fuzz/regressions/sysctl_conf/many-stars-backtracked-exponentially"
        ));
        let all = parse(Path::new("f"), &text);
        assert!(!all.is_empty());
        for a in &all {
            let _ = at_boot(&all, &a.key);
        }
    }

    fn lines(files: &[(&str, &str)]) -> Vec<Assignment> {
        files
            .iter()
            .flat_map(|(name, text)| parse(Path::new(name), text))
            .collect()
    }

    fn decided(all: &[Assignment], key: &str) -> String {
        match at_boot(all, key) {
            AtBoot::Set(a) => format!(
                "set {} by {}:{}",
                a.value.as_ref().unwrap().canonical(),
                a.file.display(),
                a.line
            ),
            AtBoot::Glob(a) => format!(
                "glob {} by {}:{}",
                a.value.as_ref().unwrap().canonical(),
                a.file.display(),
                a.line
            ),
            AtBoot::Excluded(a) => format!("excluded by {}:{}", a.file.display(), a.line),
            AtBoot::Untouched => "untouched".into(),
        }
    }

    #[test]
    fn a_line_naming_the_key_beats_every_glob_whatever_the_order() {
        // systemd's sysctl.d(5) example: every interface 2, `all` left
        // alone, hub0 1.
        let all = lines(&[
            (
                "20-rp.conf",
                "net.ipv4.conf.default.rp_filter = 2\nnet.ipv4.conf.*.rp_filter = 2\n-net.ipv4.conf.all.rp_filter\nnet.ipv4.conf.hub0.rp_filter = 1\n",
            ),
            ("90-late.conf", "net.ipv4.conf.*.rp_filter = 0\n"),
        ]);
        assert_eq!(
            decided(&all, "net.ipv4.conf.hub0.rp_filter"),
            "set 1 by 20-rp.conf:4"
        );
        assert_eq!(
            decided(&all, "net.ipv4.conf.default.rp_filter"),
            "set 2 by 20-rp.conf:1"
        );
        assert_eq!(
            decided(&all, "net.ipv4.conf.all.rp_filter"),
            "excluded by 20-rp.conf:3"
        );
        // Two globs match eth0: the one applied last is the later one.
        assert_eq!(
            decided(&all, "net.ipv4.conf.eth0.rp_filter"),
            "glob 0 by 90-late.conf:1"
        );
        assert_eq!(decided(&all, "vm.swappiness"), "untouched");
    }

    #[test]
    fn later_lines_of_one_key_replace_or_keep_its_place() {
        // The same glob again with the same value keeps its place (before
        // eth*), so eth* is applied after it and wins for eth0.
        let all = lines(&[
            (
                "10-a.conf",
                "net.ipv4.conf.*.rp_filter = 2\nnet.ipv4.conf.eth*.rp_filter = 1\n",
            ),
            ("20-b.conf", "net.ipv4.conf.*.rp_filter = 2\n"),
        ]);
        assert_eq!(
            decided(&all, "net.ipv4.conf.eth0.rp_filter"),
            "glob 1 by 10-a.conf:2"
        );
        // Another value moves it to the end: applied last, it wins.
        let all = lines(&[
            (
                "10-a.conf",
                "net.ipv4.conf.*.rp_filter = 2\nnet.ipv4.conf.eth*.rp_filter = 1\n",
            ),
            ("20-b.conf", "net.ipv4.conf.*.rp_filter = 0\n"),
        ]);
        assert_eq!(
            decided(&all, "net.ipv4.conf.eth0.rp_filter"),
            "glob 0 by 20-b.conf:1"
        );
        // An exclusion after a value drops the value; a value after an
        // exclusion sets the key again. An exclusion of a pattern keeps no
        // key off anything.
        let all = lines(&[
            (
                "10-a.conf",
                "vm.swappiness = 10\n-net.ipv4.conf.eth0.rp_filter\n-net.*.*.lo.rp_filter\n",
            ),
            (
                "20-b.conf",
                "-vm.swappiness\nnet.ipv4.conf.*.rp_filter = 2\nnet.ipv4.conf.eth0.rp_filter = 1\n",
            ),
        ]);
        assert_eq!(decided(&all, "vm.swappiness"), "excluded by 20-b.conf:1");
        assert_eq!(
            decided(&all, "net.ipv4.conf.eth0.rp_filter"),
            "set 1 by 20-b.conf:3"
        );
        assert_eq!(
            decided(&all, "net.ipv4.conf.lo.rp_filter"),
            "glob 2 by 20-b.conf:2"
        );
        // The same value twice: the later line is the one reported.
        let all = lines(&[
            ("10-a.conf", "vm.swappiness = 10\n"),
            ("20-b.conf", "vm.swappiness=10\n"),
        ]);
        assert_eq!(decided(&all, "vm.swappiness"), "set 10 by 20-b.conf:1");
    }
}
