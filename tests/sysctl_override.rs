//! `sysctl_conflicts: override` on a fake host root: holdfast's copy of a
//! vendor sysctl.d file in /etc/sysctl.d (conflicting lines commented out,
//! the vendor file's hash in its header), refreshed when the vendor file
//! changes, removed when no longer asked for, removed by rollback; files in
//! /etc that are not holdfast's are never edited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::time::Duration;

use common::{FakeHost, item, state};
use holdfast::host::HostRoot;
use holdfast::policy::sha256_hex;

const VENDOR: &str = "usr/lib/sysctl.d/50-default.conf";
const COPY: &str = "etc/sysctl.d/50-default.conf";
const JOURNAL: &str = "var/lib/holdfast/originals.json";

/// Upstream systemd's 50-default.conf, shortened: an exact line the CIS
/// policy disagrees with, a glob, a glob exclusion, and lines it does not
/// manage.
const VENDOR_TEXT: &str = "# See sysctl.d(5)\n\
kernel.sysrq = 16\n\
net.ipv4.conf.default.rp_filter = 2\n\
net.ipv4.conf.*.rp_filter = 2\n\
-net.ipv4.conf.all.rp_filter\n\
fs.protected_regular = 1\n";

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.sysctl("net.ipv4.conf.default.rp_filter", "2");
    h.sysctl("net.ipv4.conf.all.rp_filter", "2");
    h.sysctl("kernel.sysrq", "16");
    h.write(VENDOR, VENDOR_TEXT);
    h
}

fn policy(conflicts: &str) -> String {
    format!(
        "version: 1\nmode: enforce\nsysctl_conflicts: {conflicts}\nsysctl:\n  net.ipv4.conf.default.rp_filter: 1\n  net.ipv4.conf.all.rp_filter: 1\n"
    )
}

fn details(report: &serde_json::Value, key: &str) -> Vec<String> {
    item(report, key)["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

fn conflict_files(report: &serde_json::Value, key: &str) -> Vec<String> {
    item(report, key)["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{}:{}", c["file"].as_str().unwrap(), c["line"]))
        .collect()
}

#[test]
fn apply_writes_a_copy_that_comments_out_the_conflicting_line_and_resolves_the_conflict() {
    let h = host();
    let p = h.policy("cis.yaml", &policy("override"));
    let p = p.to_str().unwrap();
    let copy_key = h.path(COPY).display().to_string();
    let vendor_line = format!("{}:3", h.path(VENDOR).display());

    // check: the copy is wanted and missing, so the host drifts.
    let (code, before) = h.json(&["check", "--policy", p]);
    assert_eq!(code, 2, "{before:#}");
    assert_eq!(item(&before, &copy_key)["kind"], "sysctl-override");
    assert_eq!(state(&before, &copy_key), "drifted");
    assert_eq!(
        item(&before, &copy_key)["desired"],
        "copy of /usr/lib/sysctl.d/50-default.conf, 1 line commented out"
    );
    assert_eq!(
        conflict_files(&before, "net.ipv4.conf.default.rp_filter")[0],
        vendor_line
    );
    assert!(!h.path(COPY).exists(), "check never writes");

    let (code, applied) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{applied:#}");
    assert_eq!(state(&applied, &copy_key), "corrected");
    assert_eq!(item(&applied, &copy_key)["original"]["state"], "absent");

    // The copy: holdfast's mark, the vendor file's hash, the conflicting
    // line commented out under a note naming the policy line, every other
    // line as the vendor file has it.
    let copy = h.read(COPY);
    let lines: Vec<&str> = copy.lines().collect();
    assert!(lines[0].starts_with("# Managed by holdfast"), "{copy}");
    assert!(
        copy.contains(&format!("# vendor-sha256: {}\n", sha256_hex(VENDOR_TEXT))),
        "{copy}"
    );
    let body: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("# vendor-sha256: "))
        .skip(1)
        .copied()
        .collect();
    assert_eq!(
        body,
        [
            "# See sysctl.d(5)",
            "kernel.sysrq = 16",
            &format!(
                "# holdfast: commented out, the policy wants net.ipv4.conf.default.rp_filter = 1 ({p}:5)"
            ),
            "#net.ipv4.conf.default.rp_filter = 2",
            "net.ipv4.conf.*.rp_filter = 2",
            "-net.ipv4.conf.all.rp_filter",
            "fs.protected_regular = 1",
        ]
    );
    assert_eq!(h.read(VENDOR), VENDOR_TEXT, "the vendor file is untouched");

    // The key's conflict is resolved: the vendor file no longer applies at
    // boot. Its item says so, and that the copy no longer follows package
    // updates; the glob line stays a (reported) conflict, from the copy.
    let key = "net.ipv4.conf.default.rp_filter";
    assert_eq!(
        conflict_files(&applied, key),
        [format!("{}:11", h.path(COPY).display())]
    );
    let notes = details(&applied, key);
    assert!(
        notes.iter().any(|d| d.starts_with(&format!(
            "/usr/lib/sysctl.d/50-default.conf:3 sets 2, but holdfast's copy {copy_key} overrides that file"
        )) && d.contains("no longer follows package updates")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|d| d.contains("is a glob (net.ipv4.conf.*.rp_filter)")),
        "{notes:?}"
    );
    assert!(
        details(&applied, &copy_key)
            .iter()
            .any(|d| d.contains("no longer follows package updates")),
    );

    // Converged: a second apply writes nothing, check is clean, and the
    // text report carries the note.
    let (code, again) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{again:#}");
    assert_eq!(state(&again, &copy_key), "compliant");
    assert_eq!(h.read(COPY), copy);
    let out = h.holdfast(&["check", "--policy", p]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&copy_key), "{text}");
    assert!(text.contains("overrides that file"), "{text}");
}

#[test]
fn a_package_upgrade_of_the_vendor_file_refreshes_the_copy() {
    let h = host();
    let p = h.policy("cis.yaml", &policy("override"));
    let p = p.to_str().unwrap();
    let copy_key = h.path(COPY).display().to_string();
    let (code, _) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0);

    // The upgrade brings a new line for another managed key, and drops one.
    let upgraded =
        VENDOR_TEXT.replace("fs.protected_regular = 1\n", "") + "net.ipv4.conf.all.rp_filter = 0\n";
    h.write(VENDOR, &upgraded);
    let (code, check) = h.json(&["check", "--policy", p]);
    assert_eq!(code, 2, "the copy is stale: {check:#}");
    assert_eq!(state(&check, &copy_key), "drifted");
    assert!(
        details(&check, &copy_key)
            .iter()
            .any(|d| d.contains("changed since holdfast copied it")),
        "{check:#}"
    );

    let (code, applied) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{applied:#}");
    assert_eq!(state(&applied, &copy_key), "corrected");
    let copy = h.read(COPY);
    assert!(copy.contains(&format!("# vendor-sha256: {}\n", sha256_hex(&upgraded))));
    assert!(
        copy.contains("\n#net.ipv4.conf.all.rp_filter = 0\n"),
        "{copy}"
    );
    assert!(copy.contains("\n#net.ipv4.conf.default.rp_filter = 2\n"));
    assert!(!copy.contains("protected_regular"), "{copy}");
    // The first original stays: the copy was absent before holdfast.
    assert_eq!(item(&applied, &copy_key)["original"]["state"], "absent");
}

#[test]
fn a_file_in_etc_that_is_not_holdfasts_is_never_edited_and_stays_reported_with_a_hint() {
    let h = host();
    let site = "# the site's own\nnet.ipv4.conf.default.rp_filter = 0\n";
    h.write(COPY, site);
    let p = h.policy("cis.yaml", &policy("override"));
    let p = p.to_str().unwrap();
    let (code, report) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(h.read(COPY), site, "never edited");
    let key = "net.ipv4.conf.default.rp_filter";
    let at = format!("{}:2", h.path(COPY).display());
    assert_eq!(conflict_files(&report, key), std::slice::from_ref(&at));
    assert!(
        details(&report, key).iter().any(|d| d
            == &format!("{at} is not holdfast's file, and holdfast never edits it (sysctl_conflicts: override replaces only files outside /etc): change or remove the line there")),
        "{report:#}"
    );
    assert!(
        !report["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "sysctl-override"),
        "no copy planned: {report:#}"
    );

    // A mask (a link to /dev/null) is someone else's too: left as it is,
    // and the vendor file it masks is no conflict.
    std::fs::remove_file(h.path(COPY)).unwrap();
    std::os::unix::fs::symlink("/dev/null", h.path(COPY)).unwrap();
    let (code, report) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        std::fs::read_link(h.path(COPY)).unwrap(),
        std::path::Path::new("/dev/null")
    );
    assert!(conflict_files(&report, key).is_empty(), "{report:#}");
}

#[test]
fn the_copy_is_removed_when_the_policy_no_longer_asks_for_it() {
    let h = host();
    let p = h.policy("cis.yaml", &policy("override"));
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(h.path(COPY).exists());
    let copy_key = h.path(COPY).display().to_string();

    // Back to `report` (the default): the copy goes, the vendor file
    // applies again, and its line is a conflict again.
    let p = h.policy(
        "report.yaml",
        "version: 1\nmode: enforce\nsysctl:\n  net.ipv4.conf.default.rp_filter: 1\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    assert!(!h.path(COPY).exists());
    assert_eq!(state(&report, &copy_key), "corrected");
    assert_eq!(item(&report, &copy_key)["actual"], "absent");
    let key = "net.ipv4.conf.default.rp_filter";
    assert_eq!(
        conflict_files(&report, key)[0],
        format!("{}:3", h.path(VENDOR).display())
    );
    assert!(
        details(&report, key).iter().any(|d| d.contains(
            "`sysctl_conflicts: override` would replace /usr/lib/sysctl.d/50-default.conf"
        )),
        "{report:#}"
    );

    // Override again, then the key leaves the policy: removed too.
    let p = h.policy("cis.yaml", &policy("override"));
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(h.path(COPY).exists());
    let p = h.policy(
        "other.yaml",
        "version: 1\nmode: enforce\nsysctl_conflicts: override\nsysctl:\n  kernel.sysrq: 16\n",
    );
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    assert!(!h.path(COPY).exists());
}

#[test]
fn rollback_removes_the_copy_and_apply_is_refused_while_another_writer_holds_the_lock() {
    let h = host();
    let p = h.policy("cis.yaml", &policy("override"));
    let p = p.to_str().unwrap();

    // Another writer (the daemon) holds the lock: nothing is written.
    let held = HostRoot::new(h.root())
        .lock_writers("serve", Duration::ZERO)
        .unwrap();
    let out = h
        .holdfast(&["apply", "--policy", p, "--lock-wait", "100ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!h.path(COPY).exists());
    drop(held);

    let (code, _) = h.json(&["apply", "--policy", p]);
    assert_eq!(code, 0);
    assert!(h.path(COPY).exists());
    let journal = h.read(JOURNAL);
    assert!(
        journal.contains("etc/sysctl.d/50-default.conf"),
        "{journal}"
    );

    let (code, rollback) = h.json(&["rollback", "sysctl-override"]);
    assert_eq!(code, 0, "{rollback:#}");
    let items = rollback["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{rollback:#}");
    assert_eq!(items[0]["result"], "restored");
    assert!(!h.path(COPY).exists());
    assert_eq!(h.read(VENDOR), VENDOR_TEXT);
}
