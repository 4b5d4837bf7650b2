//! sysctl.d configuration files: parsing and boot-time precedence. Pure; the
//! caller reads the files.
//!
//! Precedence follows systemd-sysctl (and `sysctl --system`): `*.conf` files
//! from /etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d,
//! /usr/lib/sysctl.d and /lib/sysctl.d; a file masks files of the same name in
//! later directories; the survivors are applied sorted by file name, and a
//! later assignment of a key wins. `sysctl --system` also reads
//! /etc/sysctl.conf last.

use std::path::{Path, PathBuf};

use super::{SysctlKey, SysctlValue};

/// One `key = value` line of a sysctl configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub file: PathBuf,
    pub line: u32,
    /// The key in dotted form; may hold `*`/`?` globs, which systemd-sysctl
    /// expands.
    pub key: String,
    pub value: SysctlValue,
    /// The line started with `-`: failures to apply it are ignored at boot.
    pub ignore_failure: bool,
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
        let (ignore_failure, line) = match line.strip_prefix('-') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = normalize_key(key.trim());
        if key.is_empty() {
            continue;
        }
        out.push(Assignment {
            file: file.to_path_buf(),
            line: u32::try_from(idx + 1).unwrap_or(u32::MAX),
            key,
            value: SysctlValue::from_kernel(value),
            ignore_failure,
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

/// The assignments of `key` in boot order (the last one wins at boot).
pub fn assignments_for<'a>(all: &'a [Assignment], key: &SysctlKey) -> Vec<&'a Assignment> {
    all.iter()
        .filter(|a| key_matches(&a.key, key.as_str()))
        .collect()
}

/// Whether a configuration key (possibly a glob) names `key`. Globs match
/// within one component, as fnmatch with a `.`-separated path would.
fn key_matches(pattern: &str, key: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == key;
    }
    let pat: Vec<&str> = pattern.split('.').collect();
    let parts: Vec<&str> = key.split('.').collect();
    pat.len() == parts.len()
        && pat
            .iter()
            .zip(parts.iter())
            .all(|(p, k)| glob_component(p.as_bytes(), k.as_bytes()))
}

fn glob_component(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob_component(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob_component(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob_component(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_comments_and_dash() {
        let text = "# comment\n; other\n\nvm.swappiness = 10\n-net.ipv4.ip_local_port_range=1024\t65000\nbogus line\nnet/ipv4/conf/eth0.100/rp_filter = 2\n";
        let got = parse(Path::new("/etc/sysctl.d/10-a.conf"), text);
        let summary: Vec<_> = got
            .iter()
            .map(|a| {
                (
                    a.line,
                    a.key.as_str(),
                    a.value.canonical(),
                    a.ignore_failure,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (4, "vm.swappiness", "10".to_string(), false),
                (
                    5,
                    "net.ipv4.ip_local_port_range",
                    "1024 65000".to_string(),
                    true
                ),
                (
                    7,
                    "net.ipv4.conf.eth0/100.rp_filter",
                    "2".to_string(),
                    false
                ),
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
    }
}
