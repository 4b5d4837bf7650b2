//! `holdfast audit` on a fake host with the systemd double: findings per
//! check with evidence, the exit level, and a SARIF 2.1.0 log checked field
//! by field against the specification's required structure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use common::FakeHost;
use common::fake_systemd::FakeSystemd;
use holdfast::audit;
use holdfast::host::HostRoot;
use holdfast::posture::Severity;
use holdfast::systemd::UnitInfo;

const ROOT_STATUS: &str = "Name:\tsleep\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";
const HARDENED_STATUS: &str = "Name:\tweb\nUid:\t998\t998\t998\t998\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapBnd:\t0000000000000400\nCapAmb:\t0000000000000400\nNoNewPrivs:\t1\nSeccomp:\t2\n";

fn host_with_two_services() -> (FakeHost, Vec<(&'static str, UnitInfo)>) {
    let h = FakeHost::new();
    h.write("proc/4242/status", ROOT_STATUS);
    h.write("proc/4243/status", ROOT_STATUS);
    h.write("proc/5000/status", HARDENED_STATUS);
    let web = UnitInfo {
        load_state: "loaded".into(),
        active_state: "active".into(),
        main_pid: Some(5000),
        ..UnitInfo::default()
    };
    (h, vec![("web.service", web)])
}

#[test]
fn audit_reports_each_failed_check_with_evidence() {
    let (h, extra) = host_with_two_services();
    let fake = FakeSystemd::new(&h);
    for (name, info) in extra {
        fake.units.borrow_mut().insert(name.into(), info);
    }
    let result = audit::run(&HostRoot::new(h.root()), &fake).unwrap();
    assert_eq!(result.units, ["myapp.service", "web.service"]);
    let for_4242: Vec<(&str, &str)> = result
        .findings
        .iter()
        .filter(|f| f.pid == 4242)
        .map(|f| (f.check.id, f.evidence.as_str()))
        .collect();
    assert_eq!(for_4242.len(), 5, "{for_4242:?}");
    assert_eq!(for_4242[0], ("HF001", "NoNewPrivs: 0"));
    assert_eq!(for_4242[1], ("HF002", "Seccomp: 0"));
    assert!(for_4242[2].1.contains("CAP_SYS_ADMIN"));
    assert_eq!(for_4242[3], ("HF004", "Uid: 0 0 0 0"));
    assert!(
        result.findings.iter().all(|f| f.unit != "web.service"),
        "the hardened service has no findings"
    );
    assert!(result.fails(Severity::High));
    let text = result.to_text();
    assert!(
        text.contains("myapp.service  4242  HF004 runs-as-root"),
        "{text}"
    );
    assert!(
        text.contains("10 finding(s) in 2 running service(s); 1 service(s) without findings"),
        "{text}"
    );
}

#[test]
fn sarif_log_has_the_required_structure() {
    let (h, extra) = host_with_two_services();
    let fake = FakeSystemd::new(&h);
    for (name, info) in extra {
        fake.units.borrow_mut().insert(name.into(), info);
    }
    let sarif = audit::run(&HostRoot::new(h.root()), &fake)
        .unwrap()
        .to_sarif();
    // sarifLog: version "2.1.0" and runs (required).
    assert_eq!(sarif["version"], "2.1.0");
    assert!(
        sarif["$schema"]
            .as_str()
            .unwrap()
            .ends_with("sarif-2.1.0.json")
    );
    let runs = sarif["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    // run: tool.driver.name (required).
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "holdfast");
    // reportingDescriptor: id (required); one rule per check.
    let rules = driver["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "HF001", "HF002", "HF003", "HF004", "HF005", "HF006", "HF007", "HF008", "HF009",
            "HF010", "HF011"
        ]
    );
    for r in rules {
        assert!(r["shortDescription"]["text"].is_string());
        let level = r["defaultConfiguration"]["level"].as_str().unwrap();
        assert!(["none", "note", "warning", "error"].contains(&level));
    }
    // result: message.text (required); ruleId and ruleIndex consistent;
    // level one of the enumeration; one result per finding.
    let results = runs[0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    for r in results {
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], r["ruleId"]);
        assert!(
            r["message"]["text"]
                .as_str()
                .unwrap()
                .starts_with("myapp.service (PID 424")
        );
        assert!(["none", "note", "warning", "error"].contains(&r["level"].as_str().unwrap()));
        assert_eq!(
            r["locations"][0]["logicalLocations"][0]["name"],
            "myapp.service"
        );
    }
}
