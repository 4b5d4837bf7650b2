//! The `go_build` area's planner: one item per expectation of each service,
//! judged on the binary its main process runs. Pure.
//!
//! These settings are audit-only by nature — holdfast cannot rebuild a
//! binary — so in any mode an unmet expectation is `drifted`, with a detail
//! naming what the binary has and the flag that would fix it, and never an
//! action. Drifted items count as drift (exit 2) like any other.

use super::{Binary, Expectation, Go, GoBuildHost, Running};
use crate::item::{Item, ItemKey, State};
use crate::policy::{GoBuild, Policy, ServiceRule, Source, Sourced};

/// The services whose policy has a `go_build` section.
pub fn managed(policy: &Policy) -> Vec<(&ServiceRule, &Sourced<GoBuild>)> {
    policy
        .services
        .values()
        .filter_map(|r| r.go_build.as_ref().map(|g| (r, g)))
        .collect()
}

/// What one expectation asks, as the policy wrote it.
#[derive(Debug, Clone, Copy)]
enum Want {
    Flag(Expectation, bool),
    MinVersion(super::GoVersion),
}

impl Want {
    fn check(self) -> Expectation {
        match self {
            Want::Flag(e, _) => e,
            Want::MinVersion(_) => Expectation::MinVersion,
        }
    }

    fn desired(self) -> String {
        match self {
            Want::Flag(Expectation::Pie, true) => "PIE (-buildmode=pie)".into(),
            Want::Flag(Expectation::Pie, false) => "not PIE".into(),
            Want::Flag(Expectation::Stripped, true) => "stripped (-ldflags='-s -w')".into(),
            Want::Flag(Expectation::Stripped, false) => "not stripped".into(),
            Want::Flag(Expectation::Trimpath, true) => "-trimpath".into(),
            Want::Flag(Expectation::Trimpath, false) => "without -trimpath".into(),
            Want::Flag(Expectation::Cgo, true) => "CGO_ENABLED=1".into(),
            Want::Flag(Expectation::Cgo, false) => "CGO_ENABLED=0".into(),
            Want::Flag(Expectation::MinVersion, _) => String::new(),
            Want::MinVersion(v) => format!(">= {v}"),
        }
    }
}

fn wants(g: &GoBuild) -> Vec<(Want, Source)> {
    let mut out = Vec::new();
    for (e, field) in [
        (Expectation::Pie, &g.pie),
        (Expectation::Stripped, &g.stripped),
        (Expectation::Trimpath, &g.trimpath),
        (Expectation::Cgo, &g.cgo),
    ] {
        if let Some(f) = field {
            out.push((Want::Flag(e, f.value), f.source.clone()));
        }
    }
    if let Some(v) = &g.min_version {
        out.push((Want::MinVersion(v.value), v.source.clone()));
    }
    out
}

pub fn plan(policy: &Policy, host: &GoBuildHost) -> Vec<Item> {
    let mut items = Vec::new();
    for (rule, go_build) in managed(policy) {
        let mode = policy.mode_of(rule.mode.as_ref().map(|m| m.value));
        for (want, source) in wants(&go_build.value) {
            let key = ItemKey::GoBuild {
                unit: rule.unit.clone(),
                check: want.check(),
            };
            let mut item = Item::new(key, want.desired(), mode);
            item.source = Some(source);
            judge(&mut item, want, &rule.unit, host);
            items.push(item);
        }
    }
    items
}

fn judge(item: &mut Item, want: Want, unit: &str, host: &GoBuildHost) {
    if !host.systemd {
        item.state = State::Unsupported;
        item.detail.push(
            "systemd is not PID 1 on this host: holdfast finds a service's main process through systemd"
                .into(),
        );
        return;
    }
    let Some(running) = host.units.get(unit) else {
        item.state = State::Unsupported;
        if let Some(why) = &host.not_queried {
            item.detail.push(format!("systemd not asked: {why}"));
        }
        return;
    };
    let (pid, exe, binary) = match running {
        Running::Unknown(e) => {
            item.state = State::Failed;
            item.detail.push(format!("cannot ask systemd: {e}"));
            return;
        }
        Running::NotRunning => {
            item.state = State::Compliant;
            item.actual = "not running".into();
            item.detail
                .push(format!("{unit} has no main process: no binary to check"));
            return;
        }
        Running::Binary { pid, exe, read } => match read {
            Ok(b) => (*pid, exe, b),
            Err(e) => {
                item.state = State::Failed;
                item.actual = "unreadable".into();
                item.detail
                    .push(format!("cannot read the binary of PID {pid} ({exe}): {e}"));
                return;
            }
        },
    };
    let summary = summary(binary);
    let verdict = verdict(want, binary, &summary);
    item.actual = verdict.actual;
    item.state = verdict.state;
    item.detail.extend(verdict.detail);
    item.detail.push(format!("PID {pid} runs {exe}"));
    if item.state == State::Drifted {
        item.detail
            .push("holdfast cannot rebuild a binary: this is reported, never corrected".into());
    }
}

/// What the binary is, for every detail line: `go1.22.12, CGO_ENABLED=1,
/// -buildmode=exe`, or why there is no Go build information.
pub fn summary(binary: &Binary) -> String {
    match &binary.go {
        Go::Build(b) => b.summary(),
        Go::NotGo => "not a Go binary: no Go build information".into(),
        Go::PointerFormat { .. } => {
            "Go build information in the pre-1.18 pointer format: unsupported (pre-1.18)".into()
        }
    }
}

struct Verdict {
    state: State,
    actual: String,
    detail: Vec<String>,
}

fn verdict(want: Want, b: &Binary, summary: &str) -> Verdict {
    let met = |ok: bool, actual: String, unmet: String| Verdict {
        state: if ok { State::Compliant } else { State::Drifted },
        actual,
        detail: if ok { Vec::new() } else { vec![unmet] },
    };
    let unknown = |why: String| Verdict {
        state: State::Unsupported,
        actual: "unknown".into(),
        detail: vec![why],
    };
    let build = b.build();
    match want {
        Want::Flag(Expectation::Pie, want) => {
            let have = b.is_pie();
            let actual = if have {
                "PIE (ET_DYN with an interpreter)".to_string()
            } else {
                format!(
                    "not PIE ({}{})",
                    b.elf_type.name(),
                    if b.interpreter {
                        ""
                    } else {
                        ", no interpreter"
                    }
                )
            };
            let fix = if want {
                format!("built without -buildmode=pie ({summary}): rebuild with -buildmode=pie")
            } else {
                format!("built as a PIE ({summary}), the policy says pie: false")
            };
            met(have == want, actual, fix)
        }
        Want::Flag(Expectation::Stripped, want) => {
            let have = b.is_stripped();
            let actual = if have {
                "stripped".to_string()
            } else {
                format!("has {}", b.unstripped_by())
            };
            let fix = if want {
                format!(
                    "not stripped: has {} ({summary}): rebuild with -ldflags='-s -w'",
                    b.unstripped_by()
                )
            } else {
                format!("stripped ({summary}), the policy says stripped: false")
            };
            met(have == want, actual, fix)
        }
        Want::Flag(Expectation::Trimpath, want) => {
            let Some(have) = build.and_then(super::BuildInfo::trimpath) else {
                return unknown(no_settings(summary, build.is_some()));
            };
            let actual = if have {
                "-trimpath"
            } else {
                "without -trimpath"
            }
            .to_string();
            let fix = if want {
                format!("built without -trimpath ({summary}): rebuild with go build -trimpath")
            } else {
                format!("built with -trimpath ({summary}), the policy says trimpath: false")
            };
            met(have == want, actual, fix)
        }
        Want::Flag(Expectation::Cgo, want) => {
            let Some(have) = build.and_then(super::BuildInfo::cgo) else {
                return unknown(no_settings(summary, build.is_some()));
            };
            let actual = format!("CGO_ENABLED={}", u8::from(have));
            let fix = if want {
                format!("built with CGO_ENABLED=0 ({summary}), the policy says cgo: true")
            } else {
                format!("built with CGO_ENABLED=1 ({summary}): rebuild with CGO_ENABLED=0")
            };
            met(have == want, actual, fix)
        }
        Want::Flag(Expectation::MinVersion, _) => unknown(String::new()),
        Want::MinVersion(min) => {
            let Some(info) = build else {
                return unknown(summary.to_string());
            };
            let Some(have) = info.go_version() else {
                return unknown(format!(
                    "{} is a development toolchain, not a release ({summary})",
                    info.version
                ));
            };
            met(
                have >= min,
                info.version.clone(),
                format!(
                    "built with {}, older than the policy's minimum {min} ({summary}): rebuild with Go {}.{} or later",
                    info.version, min.major, min.minor
                ),
            )
        }
    }
}

fn no_settings(summary: &str, is_go: bool) -> String {
    if is_go {
        format!(
            "the build information records no such setting ({summary}): built outside `go build`?"
        )
    } else {
        summary.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobuild::{BuildInfo, ElfType};
    use std::collections::BTreeMap;

    fn policy(go_build: &str) -> Policy {
        Policy::from_files([(
            "p.yaml",
            format!(
                "version: 1\nmode: enforce\nservices:\n  app.service:\n    go_build: {go_build}\n"
            )
            .as_str(),
        )])
        .unwrap()
    }

    fn default_build() -> Binary {
        Binary {
            elf_type: ElfType::Exec,
            interpreter: true,
            sections: vec![".text".into(), ".symtab".into(), ".debug_info".into()],
            go: Go::Build(BuildInfo {
                version: "go1.22.12".into(),
                path: Some("example.com/app".into()),
                main_module: None,
                settings: vec![
                    ("-buildmode".into(), "exe".into()),
                    ("-compiler".into(), "gc".into()),
                    ("CGO_ENABLED".into(), "1".into()),
                ],
            }),
        }
    }

    fn host(read: Result<Binary, String>) -> GoBuildHost {
        GoBuildHost {
            systemd: true,
            not_queried: None,
            units: BTreeMap::from([(
                "app.service".to_string(),
                Running::Binary {
                    pid: 42,
                    exe: "/usr/bin/app".into(),
                    read,
                },
            )]),
        }
    }

    const ALL: &str =
        "{pie: true, stripped: true, trimpath: true, cgo: false, min_version: \"1.23\"}";

    #[test]
    fn every_unmet_expectation_is_drift_naming_the_binary_and_the_fix() {
        let items = plan(&policy(ALL), &host(Ok(default_build())));
        let got: Vec<(String, State)> =
            items.iter().map(|i| (i.key.to_string(), i.state)).collect();
        assert_eq!(
            got,
            [
                ("app.service go_build.pie".to_string(), State::Drifted),
                ("app.service go_build.stripped".into(), State::Drifted),
                ("app.service go_build.trimpath".into(), State::Drifted),
                ("app.service go_build.cgo".into(), State::Drifted),
                ("app.service go_build.min_version".into(), State::Drifted),
            ]
        );
        assert!(items.iter().all(|i| i.action.is_none()), "never an action");
        assert_eq!(
            items[2].detail[0],
            "built without -trimpath (go1.22.12, CGO_ENABLED=1, -buildmode=exe): rebuild with go build -trimpath"
        );
        assert!(items[0].detail[0].ends_with("rebuild with -buildmode=pie"));
        assert!(items[1].detail[0].starts_with("not stripped: has .symtab, .debug_* (1 sections)"));
        assert!(items[3].detail[0].ends_with("rebuild with CGO_ENABLED=0"));
        assert!(
            items[4].detail[0]
                .starts_with("built with go1.22.12, older than the policy's minimum go1.23")
        );
        assert!(
            items
                .iter()
                .all(|i| i.detail.contains(&"PID 42 runs /usr/bin/app".to_string()))
        );
        assert!(!crate::item::all_compliant(&items));
    }

    #[test]
    fn a_hardened_build_meets_every_expectation() {
        let mut b = default_build();
        b.elf_type = ElfType::Dyn;
        b.sections = vec![".text".into(), ".go.buildinfo".into()];
        if let Go::Build(info) = &mut b.go {
            info.version = "go1.23.4".into();
            info.settings = vec![
                ("-buildmode".into(), "pie".into()),
                ("-trimpath".into(), "true".into()),
                ("CGO_ENABLED".into(), "0".into()),
            ];
        }
        let items = plan(&policy(ALL), &host(Ok(b)));
        assert!(
            items.iter().all(|i| i.state == State::Compliant),
            "{items:#?}"
        );
        assert_eq!(items[4].actual, "go1.23.4");
    }

    #[test]
    fn a_non_go_binary_is_judged_on_its_elf_only() {
        let mut b = default_build();
        b.go = Go::NotGo;
        let items = plan(&policy(ALL), &host(Ok(b)));
        let states: Vec<State> = items.iter().map(|i| i.state).collect();
        assert_eq!(
            states,
            [
                State::Drifted,
                State::Drifted,
                State::Unsupported,
                State::Unsupported,
                State::Unsupported
            ]
        );
        assert_eq!(
            items[2].detail[0],
            "not a Go binary: no Go build information"
        );
        let mut old = default_build();
        old.go = Go::PointerFormat { pointer_size: 8 };
        let items = plan(&policy("{trimpath: true}"), &host(Ok(old)));
        assert_eq!(items[0].state, State::Unsupported);
        assert!(items[0].detail[0].contains("unsupported (pre-1.18)"));
    }

    #[test]
    fn without_systemd_or_a_readable_binary_nothing_is_judged() {
        let p = policy("{pie: true}");
        let mut h = host(Err("truncated".into()));
        assert_eq!(plan(&p, &h)[0].state, State::Failed);
        h.units.insert("app.service".into(), Running::NotRunning);
        assert_eq!(plan(&p, &h)[0].actual, "not running");
        h.systemd = false;
        assert_eq!(plan(&p, &h)[0].state, State::Unsupported);
    }
}
