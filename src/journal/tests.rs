use super::*;
use crate::sysctl::SysctlValue;

fn sysctl_entry(key: &str, original: &str) -> Entry {
    Entry {
        target: Target::Sysctl(SysctlKey::parse(key).unwrap()),
        kind: Kind::Sysctl,
        item: key.to_string(),
        original: Original::Value(original.to_string()),
    }
}

fn file_entry(rel: &str, original: Original) -> Entry {
    Entry {
        target: Target::File(PathBuf::from(rel)),
        kind: Kind::UnitFile,
        item: format!("/{rel}"),
        original,
    }
}

#[test]
fn the_first_change_wins() {
    let mut j = Journal::default();
    assert!(j.record(sysctl_entry("net.ipv4.ip_forward", "1")));
    // A later pass, with the value holdfast itself wrote, must not replace
    // what the host had before holdfast.
    assert!(!j.record(sysctl_entry("net.ipv4.ip_forward", "0")));
    let t = Target::Sysctl(SysctlKey::parse("net.ipv4.ip_forward").unwrap());
    assert_eq!(j.get(&t).unwrap().original, Original::Value("1".into()));
    assert_eq!(j.len(), 1);
    // Once rolled back, the next change records afresh.
    assert!(j.remove(&t).is_some());
    assert!(j.record(sysctl_entry("net.ipv4.ip_forward", "0")));
    assert_eq!(j.get(&t).unwrap().original, Original::Value("0".into()));
}

#[test]
fn render_then_parse_is_the_same_journal() {
    let mut j = Journal::default();
    j.record(sysctl_entry("kernel.randomize_va_space", "2"));
    j.record(file_entry(
        "etc/security/limits.d/90-holdfast.conf",
        Original::File {
            content: "# théirs, with \"quotes\"\n* soft nofile 1024\n\ttab\n".into(),
            mode: 0o640,
        },
    ));
    j.record(file_entry(
        "etc/systemd/system/myapp.service.d/90-holdfast.conf",
        Original::Absent,
    ));
    j.record(Entry {
        target: Target::UnitProperty {
            unit: "work.slice".into(),
            knob: KnobKind::MemoryMax,
        },
        kind: Kind::CgroupLimit,
        item: "work.slice memory.max".into(),
        original: Original::Value("max".into()),
    });
    j.record(Entry {
        target: Target::Controller {
            subtree_control: PathBuf::from("sys/fs/cgroup/cgroup.subtree_control"),
            controller: "cpu".into(),
        },
        kind: Kind::CgroupController,
        item: "controller cpu in /".into(),
        original: Original::Absent,
    });
    j.record(Entry {
        target: Target::Sysctl(SysctlKey::parse("vm.drop_caches").unwrap()),
        kind: Kind::Sysctl,
        item: "vm.drop_caches".into(),
        original: Original::Unreadable("EACCES".into()),
    });
    let text = j.render();
    assert!(text.ends_with('\n'));
    assert!(text.lines().last().unwrap().starts_with("# sha256 "));
    assert_eq!(Journal::parse(&text).unwrap(), j);
    // Rendering is deterministic: a second render is byte-identical.
    assert_eq!(Journal::parse(&text).unwrap().render(), text);
}

#[test]
fn an_empty_journal_round_trips() {
    let j = Journal::default();
    assert_eq!(Journal::parse(&j.render()).unwrap(), j);
}

#[test]
fn a_damaged_file_is_refused_never_half_read() {
    let mut j = Journal::default();
    j.record(sysctl_entry("net.ipv4.ip_forward", "1"));
    let text = j.render();
    // Truncated anywhere: no checksum line, or a checksum that no longer
    // matches.
    for cut in [0, 1, text.len() / 2, text.len() - 2] {
        assert!(Journal::parse(&text[..cut]).is_err(), "cut at {cut}");
    }
    // One changed byte in the body.
    let flipped = text.replacen("\"1\"", "\"0\"", 1);
    assert_eq!(Journal::parse(&flipped), Err(ParseError::BadChecksum));
}

#[test]
fn entries_with_bad_fields_are_refused() {
    let body = |entries: &str| {
        let body = format!(
            "{{\"format\":\"holdfast-originals\",\"version\":1,\"entries\":[{entries}]}}\n"
        );
        format!("{body}# sha256 {}\n", sha256_hex(&body))
    };
    let ok = r#"{"target":{"sysctl":"net.core.somaxconn"},"kind":"sysctl","item":"net.core.somaxconn","original":{"value":"4096"}}"#;
    assert_eq!(Journal::parse(&body(ok)).unwrap().len(), 1);
    let climbing =
        r#"{"target":{"file":"../etc/passwd"},"kind":"unit-file","item":"x","original":"absent"}"#;
    assert!(matches!(
        Journal::parse(&body(climbing)),
        Err(ParseError::Entry { index: 0, .. })
    ));
    let absolute =
        r#"{"target":{"file":"/etc/passwd"},"kind":"unit-file","item":"x","original":"absent"}"#;
    assert!(Journal::parse(&body(absolute)).is_err());
    let bad_mode = r#"{"target":{"file":"etc/x"},"kind":"unit-file","item":"x","original":{"file":{"content":"","mode":"99"}}}"#;
    assert!(Journal::parse(&body(bad_mode)).is_err());
    let twice = format!("{ok},{ok}");
    assert!(matches!(
        Journal::parse(&body(&twice)),
        Err(ParseError::Entry { index: 1, .. })
    ));
    let v2 = "{\"format\":\"holdfast-originals\",\"version\":2,\"entries\":[]}\n";
    let v2 = format!("{v2}# sha256 {}\n", sha256_hex(v2));
    assert_eq!(Journal::parse(&v2), Err(ParseError::Version(2)));
}

#[test]
fn targets_follow_from_the_item_and_its_action() {
    let root = Path::new("/fake");
    let key = SysctlKey::parse("net.ipv4.ip_forward").unwrap();
    let write = Action::WriteSysctl {
        key: key.clone(),
        value: SysctlValue::from_int(0),
    };
    assert_eq!(
        target_of(&ItemKey::Sysctl(key.clone()), &write, root),
        Some(Target::Sysctl(key))
    );
    let path = PathBuf::from("/fake/etc/systemd/system/a.service.d/90-holdfast.conf");
    let item = ItemKey::UnitFile {
        path: path.clone(),
        unit: Some("a.service".into()),
    };
    let target = Target::File(PathBuf::from(
        "etc/systemd/system/a.service.d/90-holdfast.conf",
    ));
    for action in [
        Action::WriteFile {
            path: path.clone(),
            content: String::new(),
        },
        Action::RemoveFile { path: path.clone() },
    ] {
        assert_eq!(target_of(&item, &action, root), Some(target.clone()));
    }
    assert_eq!(
        target.to_string(),
        "/etc/systemd/system/a.service.d/90-holdfast.conf"
    );
    // Outside the root: no target (and no write either).
    let outside = Action::RemoveFile {
        path: PathBuf::from("/elsewhere/x"),
    };
    assert_eq!(target_of(&item, &outside, root), None);
    let knob = ItemKey::SliceKnob {
        unit: "work.slice".into(),
        knob: KnobKind::CpuMax,
    };
    let set = Action::SetUnitProperties {
        unit: "work.slice".into(),
        assignments: vec!["CPUQuota=50%".into()],
    };
    assert_eq!(
        target_of(&knob, &set, root),
        Some(Target::UnitProperty {
            unit: "work.slice".into(),
            knob: KnobKind::CpuMax
        })
    );
}

#[test]
fn selectors_pick_by_kind_or_key() {
    let mut j = Journal::default();
    j.record(sysctl_entry("net.ipv4.ip_forward", "1"));
    j.record(sysctl_entry("kernel.kptr_restrict", "0"));
    j.record(file_entry(
        "etc/systemd/system/a.service.d/90-holdfast.conf",
        Original::Absent,
    ));
    let items = |sel: &[&str]| -> Vec<String> {
        let sel: Vec<Selector> = sel.iter().map(|s| Selector::parse(s)).collect();
        j.select(&sel).into_iter().map(|e| e.item.clone()).collect()
    };
    assert_eq!(items(&[]).len(), 3);
    assert_eq!(
        items(&["sysctl"]),
        ["kernel.kptr_restrict", "net.ipv4.ip_forward"]
    );
    assert_eq!(items(&["net.ipv4.ip_forward"]), ["net.ipv4.ip_forward"]);
    assert_eq!(
        items(&["/etc/systemd/system/a.service.d/90-holdfast.conf"]).len(),
        1
    );
    assert!(items(&["net.ipv6.nothing"]).is_empty());
}

#[test]
fn each_original_has_its_way_back() {
    let restore = |target: Target, original: Original| {
        restore_of(&Entry {
            target,
            kind: Kind::Sysctl,
            item: String::new(),
            original,
        })
    };
    let key = SysctlKey::parse("net.ipv4.ip_forward").unwrap();
    assert_eq!(
        restore(Target::Sysctl(key.clone()), Original::Value("1".into())),
        Restore::WriteSysctl {
            key: key.clone(),
            value: "1".into()
        }
    );
    // A key the kernel lacked was never written: nothing to put back.
    assert_eq!(
        restore(Target::Sysctl(key.clone()), Original::Absent),
        Restore::Nothing
    );
    assert!(matches!(
        restore(Target::Sysctl(key), Original::Unreadable("EACCES".into())),
        Restore::Manual(_)
    ));
    let f = PathBuf::from("etc/systemd/system/a.service.d/90-holdfast.conf");
    assert_eq!(
        restore(Target::File(f.clone()), Original::Absent),
        Restore::RemoveFile(f.clone())
    );
    assert_eq!(
        restore(
            Target::File(f.clone()),
            Original::File {
                content: "x\n".into(),
                mode: 0o600
            }
        ),
        Restore::WriteFile {
            path: f,
            content: "x\n".into(),
            mode: 0o600
        }
    );
    // A slice knob goes back through systemd, as the directives systemd
    // takes for the kernel value read before.
    assert_eq!(
        restore(
            Target::UnitProperty {
                unit: "work.slice".into(),
                knob: KnobKind::MemoryMax
            },
            Original::Value("max".into())
        ),
        Restore::SetProperties {
            unit: "work.slice".into(),
            assignments: vec!["MemoryMax=infinity".into()]
        }
    );
    let sc = PathBuf::from("sys/fs/cgroup/cgroup.subtree_control");
    assert_eq!(
        restore(
            Target::Controller {
                subtree_control: sc.clone(),
                controller: "cpu".into()
            },
            Original::Absent
        ),
        Restore::DisableController {
            subtree_control: sc.clone(),
            controller: "cpu".into()
        }
    );
    assert_eq!(
        restore(
            Target::Controller {
                subtree_control: sc,
                controller: "cpu".into()
            },
            Original::Value("enabled".into())
        ),
        Restore::Nothing
    );
}

#[test]
fn an_items_original_is_found_by_its_key_through_every_change() {
    let key = ItemKey::Sysctl(SysctlKey::parse("net.ipv4.ip_forward").unwrap());
    let mut j = Journal::default();
    assert!(j.original_of(&key).is_none());
    j.record(sysctl_entry("vm.swappiness", "60"));
    j.record(sysctl_entry("net.ipv4.ip_forward", "1"));
    assert_eq!(
        j.original_of(&key).unwrap().original,
        Original::Value("1".into())
    );
    // A second target for the same item (a file entry named as the item):
    // the first target in target order stays the one shown, whichever was
    // recorded first.
    let mut second = file_entry("etc/x.conf", Original::Absent);
    second.item = key.to_string();
    j.record(second.clone());
    assert_eq!(
        j.original_of(&key).unwrap().target,
        Target::Sysctl(SysctlKey::parse("net.ipv4.ip_forward").unwrap())
    );
    let mut other_order = Journal::default();
    other_order.record(second.clone());
    other_order.record(sysctl_entry("net.ipv4.ip_forward", "1"));
    assert_eq!(other_order.original_of(&key), j.original_of(&key));
    // Rolled back one by one: the other target, then nothing.
    j.remove(&Target::Sysctl(
        SysctlKey::parse("net.ipv4.ip_forward").unwrap(),
    ));
    assert_eq!(j.original_of(&key).unwrap().target, second.target);
    j.remove(&second.target);
    assert!(j.original_of(&key).is_none());
    // And after a round trip through the file.
    j.record(sysctl_entry("net.ipv4.ip_forward", "1"));
    let again = Journal::parse(&j.render()).unwrap();
    assert_eq!(again, j);
    assert_eq!(
        again.original_of(&key).unwrap().original,
        Original::Value("1".into())
    );
}
