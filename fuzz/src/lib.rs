//! The fuzz harnesses: one function per parser that takes outside input,
//! each checking what must hold for any input (beyond "no panic"). The
//! libFuzzer targets in fuzz_targets/ call them; the test suite runs them on
//! every saved input (tests/fuzz_inputs.rs includes this file), so a crash
//! the fuzzer found stays a regression test with its input.

use holdfast::cgroup::knob::{KnobKind, parse_timespan_us};
use holdfast::limits::LimitType;
use holdfast::limits::plan::render_managed_file;
use holdfast::policy::PolicyErrors;
use holdfast::sources::PolicyFiles;
use holdfast::sysctl::Expect;
use holdfast::sysctl::conf::{self, AtBoot};
use holdfast::sysctl::plan::{PersistEntry, render_persist_file};
use std::path::Path;
use std::time::Duration;

/// The policy: file name, bytes → text, YAML, validation, the merge of
/// several files. Input: up to four parts separated by 0x1E; with two or
/// more, the first part is the first file's name (names are outside input
/// too: they are printed and written into holdfast's files).
///
/// Oracles beyond "no panic": every error has a location inside its file;
/// and a policy that validates renders holdfast's sysctl.d and limits.d
/// files so that the host's own parsers read back exactly the rules, no
/// more (a value or name that forged a line would show up here).
pub fn policy(data: &[u8]) {
    let parts: Vec<&[u8]> = data.split(|b| *b == 0x1e).take(4).collect();
    let (first_name, bodies) = match parts.split_first() {
        Some((name, rest)) if !rest.is_empty() => {
            (String::from_utf8_lossy(name).into_owned(), rest)
        }
        _ => ("10-fuzz.yaml".to_string(), &parts[..]),
    };
    let mut files = PolicyFiles::default();
    // (name as reports show it, lines in the file), to bound locations.
    let mut shown_lines: Vec<(String, u64)> = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let name = if i == 0 {
            first_name.clone()
        } else {
            format!("{}0-more.yaml", i + 1)
        };
        shown_lines.push((
            holdfast::policy::scan::file_name(&name).0.to_string(),
            body.split(|b| *b == b'\n').count() as u64,
        ));
        match String::from_utf8(body.to_vec()) {
            Ok(text) => files.files.push((name, text)),
            Err(e) => {
                let (shown, _) = holdfast::policy::scan::file_name(&name);
                match holdfast::policy::scan::utf8(&shown, e.as_bytes()) {
                    Err(located) => files.refused.push(located),
                    Ok(_) => panic!("scan::utf8 accepted bytes that are not UTF-8"),
                }
            }
        }
    }
    match files.parse() {
        Err(PolicyErrors(errors)) => {
            assert!(
                !errors.is_empty(),
                "a rejected policy names at least one error"
            );
            for e in &errors {
                let text = e.to_string();
                assert!(!text.is_empty());
                assert!(e.source.line >= 1 && e.source.column >= 1, "{text}");
                // Two files may share a name (the first one's is fuzzed).
                let mut same = shown_lines
                    .iter()
                    .filter(|(n, _)| n.as_str() == e.source.file.as_ref());
                if let (Some((_, lines)), None) = (same.next(), same.next()) {
                    assert!(
                        e.source.line <= lines + 1,
                        "line {} of {lines}: {text}",
                        e.source.line
                    );
                }
            }
        }
        Ok(policy) => {
            // sysctl.d: one line per exact-valued rule, read back as written.
            let entries: Vec<PersistEntry> = policy
                .sysctls
                .values()
                .filter_map(|r| match &r.expect {
                    Expect::Exact(v) => Some(PersistEntry {
                        key: r.key.clone(),
                        value: v.clone(),
                        present: true,
                    }),
                    Expect::Range { .. } => None,
                })
                .collect();
            let text = render_persist_file(&entries);
            let back = holdfast::sysctl::conf::parse(Path::new("90-holdfast.conf"), &text);
            assert_eq!(back.len(), entries.len(), "{text}");
            for (a, e) in back.iter().zip(&entries) {
                assert_eq!(a.key, e.key.to_string(), "{text}");
                assert_eq!(
                    a.value
                        .as_ref()
                        .map(holdfast::sysctl::SysctlValue::canonical),
                    Some(e.value.canonical()),
                    "{text}"
                );
                // A key boot would read as a pattern sets other keys.
                assert!(!a.is_glob(), "{text}");
            }

            // limits.d: every line holdfast writes is one pam_limits reads.
            let rows: Vec<_> = policy
                .limits
                .iter()
                .flat_map(|r| {
                    [(LimitType::Soft, r.soft), (LimitType::Hard, r.hard)]
                        .into_iter()
                        .filter_map(move |(k, v)| v.map(|v| (r, k, v)))
                })
                .collect();
            let text = render_managed_file(&policy, &rows);
            let (lines, bad) = holdfast::limits::conf::parse(Path::new("90-holdfast.conf"), &text);
            assert!(bad.is_empty(), "{bad:?}\n{text}");
            assert_eq!(lines.len(), rows.len(), "{text}");
            for (l, (r, k, v)) in lines.iter().zip(&rows) {
                assert_eq!(
                    (&l.domain, l.kind, l.item, l.value),
                    (&r.domain, *k, r.item, *v),
                    "{text}"
                );
            }
        }
    }
}

/// sysctl.d files as systemd-sysctl reads them (any file under the sysctl.d
/// directories is outside input). Oracle: every assignment names a line of
/// the file and a non-empty key; what boot does with a key is decided by a
/// line naming it or by a glob that matches it (and takes no exponential
/// time: libFuzzer's timeout judges that).
pub fn sysctl_conf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count() as u32;
    let all = conf::parse(Path::new("/usr/lib/sysctl.d/50-fuzz.conf"), &text);
    // What boot does is asked of the first keys only: each question reads
    // every line, so asking it of all would be quadratic in the input.
    for (n, a) in all.iter().enumerate() {
        assert!(a.line >= 1 && a.line <= lines, "line {} of {lines}", a.line);
        // systemd-sysctl takes everything before `=` as the key, spaces
        // inside included (it then fails to write it); never an empty one.
        assert!(!a.key.is_empty(), "line {}", a.line);
        let _ = a
            .value
            .as_ref()
            .map(holdfast::sysctl::SysctlValue::canonical);
        if n >= 64 {
            continue;
        }
        // What boot does with the key: decided by a line naming it, or by a
        // glob that matches it.
        match conf::at_boot(&all, &a.key) {
            AtBoot::Set(d) => assert!(d.key == a.key && d.value.is_some(), "line {}", a.line),
            AtBoot::Excluded(d) => assert!(d.key == a.key && d.value.is_none(), "line {}", a.line),
            AtBoot::Glob(d) => assert!(d.is_glob() && d.value.is_some(), "line {}", a.line),
            AtBoot::Untouched => assert!(a.is_glob(), "line {} names its key", a.line),
        }
    }
}

/// limits.conf and limits.d files as pam_limits reads them. Oracle: good and
/// malformed lines are distinct lines of the file, each within it.
pub fn limits_conf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let count = text.lines().count() as u32;
    let (lines, bad) = holdfast::limits::conf::parse(Path::new("/etc/security/limits.conf"), &text);
    // A `-` line sets both limits: one line gives at most two entries.
    let mut good: Vec<u32> = lines.iter().map(|l| l.line).collect();
    for n in &good {
        assert!(
            good.iter().filter(|m| *m == n).count() <= 2,
            "line {n} read more than twice"
        );
    }
    good.dedup();
    for b in &bad {
        assert!(
            !good.contains(&b.line),
            "line {} both good and malformed",
            b.line
        );
    }
    assert!(
        good.iter()
            .chain(bad.iter().map(|b| &b.line))
            .all(|n| *n >= 1 && *n <= count)
    );
    for l in &lines {
        let _ = (l.domain.to_string(), l.value.to_string());
    }
}

/// Text the kernel hands to holdfast about processes it does not control:
/// /proc/PID/status, /proc/PID/environ, /proc/PID/limits, cgroup v2 knob
/// files; plus the duration options of the command line. The first byte
/// picks the parser.
pub fn kernel_text(data: &[u8]) {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 8 {
        0 => {
            if let Some(s) = holdfast::posture::ProcStatus::parse(&text) {
                let _ = holdfast::posture::audit_process("fuzz.service", 1, &s, u64::MAX >> 23);
            }
        }
        1 => {
            for (k, _) in holdfast::posture::parse_environ(rest) {
                assert!(!k.contains('\0'));
            }
        }
        2 => {
            let _ = holdfast::services::parse_proc_nofile(&text);
        }
        3 => {
            for kind in [
                KnobKind::MemoryMax,
                KnobKind::MemoryHigh,
                KnobKind::CpuMax,
                KnobKind::PidsMax,
            ] {
                if let Some(knob) = kind.parse_kernel(&text) {
                    let _ = format!("{knob:?}");
                }
            }
        }
        4 => {
            let _ = parse_timespan_us(&text);
        }
        5 => {
            let _ = holdfast::posture::caps::parse_mask(&text);
        }
        6 => {
            // The command line's duration options: what the widest of them
            // (1 ms to a day) accepts lies in range and can be added to now.
            let (min, max) = (Duration::from_millis(1), Duration::from_secs(86_400));
            if let Ok(d) = holdfast::daemon::state::bounded_duration(&text, min, max) {
                assert!(d >= min && d <= max, "{d:?}");
                assert!(std::time::Instant::now().checked_add(d).is_some(), "{d:?}");
            }
        }
        _ => {
            let _ = holdfast::sysctl::SysctlValue::from_kernel(&text).canonical();
        }
    }
}

/// The ELF and Go build information reader: executables of the services it
/// audits are outside input. Oracle: no panic, and no read or allocation
/// beyond what the file holds (the reader only gets the input's bytes).
pub fn gobuild(data: &[u8]) {
    let mut r: &[u8] = data;
    if let Ok(binary) = holdfast::gobuild::parse(&mut r) {
        let _ = format!("{binary:?}");
    }
}

/// The status client's HTTP response reader: what answers on the socket is
/// outside input. Oracle: a parsed body is never larger than the response.
pub fn http_response(data: &[u8]) {
    if let Ok(r) = holdfast::daemon::client::parse_response(data) {
        assert!(r.body.len() <= data.len());
        let _ = r.header("content-type");
    }
}
