//! `holdfast audit`'s checks of a Go service's main binary: how it was
//! built (PIE, stripped, cgo, -trimpath, a supported Go release) and
//! whether the GOMAXPROCS its runtime picks fits the CPU it may use. Pure:
//! the audit reads the binary and the process and calls these.

use std::collections::BTreeMap;

use super::maxprocs::{self, Level};
use super::releases::{self, Support};
use super::{Binary, BuildInfo, Go};
use crate::posture::{Check, Finding, Severity};

pub const CHECKS: &[Check] = &[
    Check {
        id: "HF006",
        name: "go-not-pie",
        severity: Severity::Medium,
        description: "A Go service's main binary is not a position-independent executable: its code is always loaded at the same address, so ASLR cannot move it. Build with -buildmode=pie.",
        reads: "the ELF header and program headers of /proc/PID/exe (PIE = ET_DYN with PT_INTERP)",
    },
    Check {
        id: "HF007",
        name: "go-not-stripped",
        severity: Severity::Low,
        description: "A Go service's main binary carries its symbol table or DWARF debug information. Build with -ldflags='-s -w'.",
        reads: "the section names of /proc/PID/exe (.symtab, .debug_*)",
    },
    Check {
        id: "HF008",
        name: "go-cgo-enabled",
        severity: Severity::Low,
        description: "A Go service's main binary was built with cgo (CGO_ENABLED=1): C code runs in the process, outside Go's memory safety, and the binary depends on the host's C library. Build with CGO_ENABLED=0 unless C code is needed.",
        reads: "CGO_ENABLED in the Go build information of /proc/PID/exe",
    },
    Check {
        id: "HF009",
        name: "go-no-trimpath",
        severity: Severity::Low,
        description: "A Go service's main binary was built without -trimpath: it embeds file system paths of the machine that built it.",
        reads: "-trimpath in the Go build information of /proc/PID/exe",
    },
    Check {
        id: "HF010",
        name: "go-release-unsupported",
        severity: Severity::Medium,
        description: "A Go service's main binary was built with a Go release that no longer receives security fixes (Go supports its two newest major releases). Rebuild with a supported release.",
        reads: "the Go version in the build information of /proc/PID/exe, against holdfast's release table",
    },
    Check {
        id: "HF011",
        name: "go-gomaxprocs-over-cpu-limit",
        severity: Severity::Medium,
        description: "A Go service without a GOMAXPROCS variable whose runtime picks more parallelism than the CPU its cgroups allow: it runs more threads than it gets CPU for and is throttled. Set GOMAXPROCS (holdfast's go_runtime: gomaxprocs: auto).",
        reads: "the Go version of /proc/PID/exe, /proc/PID/environ, /proc/PID/cgroup, cpu.max of every cgroup up to the root, Cpus_allowed_list in /proc/PID/status",
    },
];

fn finding(id: &str, unit: &str, pid: u32, evidence: String) -> Option<Finding> {
    CHECKS.iter().find(|c| c.id == id).map(|check| Finding {
        check,
        unit: unit.to_string(),
        pid,
        evidence,
    })
}

/// The build checks of one binary: none for a binary without Go build
/// information (it is not a Go service's binary, or holdfast cannot tell).
pub fn binary_findings(unit: &str, pid: u32, binary: &Binary) -> Vec<Finding> {
    let Go::Build(info) = &binary.go else {
        return Vec::new();
    };
    let summary = info.summary();
    let mut out = Vec::new();
    if !binary.is_pie() {
        out.extend(finding(
            "HF006",
            unit,
            pid,
            format!(
                "{}{} ({summary})",
                binary.elf_type.name(),
                if binary.interpreter {
                    ""
                } else {
                    ", no interpreter"
                }
            ),
        ));
    }
    if !binary.is_stripped() {
        out.extend(finding(
            "HF007",
            unit,
            pid,
            format!("has {} ({summary})", binary.unstripped_by()),
        ));
    }
    if info.cgo() == Some(true) {
        out.extend(finding(
            "HF008",
            unit,
            pid,
            format!("CGO_ENABLED=1 ({summary})"),
        ));
    }
    if info.trimpath() == Some(false) {
        out.extend(finding(
            "HF009",
            unit,
            pid,
            format!("built without -trimpath ({summary})"),
        ));
    }
    if let Some(v) = info.go_version()
        && let Support::Unsupported { supported } = releases::supported(v)
    {
        out.extend(finding(
            "HF010",
            unit,
            pid,
            format!(
                "{} is out of support; Go supports {supported}",
                info.version
            ),
        ));
    }
    out
}

/// The GOMAXPROCS check: a Go process without a `GOMAXPROCS` variable
/// whose runtime (by its version) picks more than the effective CPU limit
/// of its cgroup path and affinity mask.
pub fn gomaxprocs_finding(
    unit: &str,
    pid: u32,
    info: &BuildInfo,
    environ: &BTreeMap<String, String>,
    levels: &[Level],
    affinity: u32,
) -> Option<Finding> {
    if environ.contains_key("GOMAXPROCS") {
        return None;
    }
    let version = info.go_version()?;
    let leaf = levels.first().and_then(|l| l.cpu_max);
    let pick = maxprocs::runtime_pick(
        version,
        leaf,
        affinity,
        environ.get("GODEBUG").map(String::as_str),
    );
    let limit = maxprocs::effective_limit(levels, affinity);
    (pick.cpus > limit.cpus).then(|| {
        finding(
            "HF011",
            unit,
            pid,
            format!(
                "GOMAXPROCS unset: the runtime picks {} ({}), but the CPU limit is {} ({})",
                pick.cpus, pick.why, limit.cpus, limit.why
            ),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CpuMax;
    use crate::gobuild::ElfType;

    fn info(version: &str, settings: &[(&str, &str)]) -> BuildInfo {
        BuildInfo {
            version: version.into(),
            path: None,
            main_module: None,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_default_build_fails_every_build_check_and_a_hardened_one_none() {
        let default = Binary {
            elf_type: ElfType::Exec,
            interpreter: true,
            sections: vec![".symtab".into(), ".debug_info".into()],
            go: Go::Build(info(
                "go1.12.5",
                &[("-buildmode", "exe"), ("CGO_ENABLED", "1")],
            )),
        };
        let ids: Vec<&str> = binary_findings("a.service", 1, &default)
            .iter()
            .map(|f| f.check.id)
            .collect();
        assert_eq!(ids, ["HF006", "HF007", "HF008", "HF009", "HF010"]);
        let (newest, _) = releases::newest().unwrap();
        let hardened = Binary {
            elf_type: ElfType::Dyn,
            interpreter: true,
            sections: vec![".text".into()],
            go: Go::Build(info(
                &format!("go1.{newest}.1"),
                &[
                    ("-buildmode", "pie"),
                    ("-trimpath", "true"),
                    ("CGO_ENABLED", "0"),
                ],
            )),
        };
        assert!(binary_findings("a.service", 1, &hardened).is_empty());
        let not_go = Binary {
            go: Go::NotGo,
            ..default
        };
        assert!(binary_findings("a.service", 1, &not_go).is_empty());
    }

    #[test]
    fn gomaxprocs_is_a_finding_only_when_the_runtime_would_pick_too_many() {
        let levels = [
            Level {
                path: "/go.slice/go-app.slice/app.service".into(),
                cpu_max: None,
            },
            Level {
                path: "/go.slice/go-app.slice".into(),
                cpu_max: Some(CpuMax {
                    quota_us: Some(100_000),
                    period_us: 100_000,
                }),
            },
        ];
        let env = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // Go 1.22 and 1.25 both pick 4 here: 1.25 ignores the slice.
        for v in ["go1.22.12", "go1.25.3"] {
            let f = gomaxprocs_finding("a.service", 9, &info(v, &[]), &env(&[]), &levels, 4)
                .expect("a finding");
            assert!(
                f.evidence.contains("picks 4") && f.evidence.contains("limit is 1"),
                "{}",
                f.evidence
            );
        }
        // Set explicitly: the runtime's own logic is off.
        assert!(
            gomaxprocs_finding(
                "a.service",
                9,
                &info("go1.22.12", &[]),
                &env(&[("GOMAXPROCS", "1")]),
                &levels,
                4
            )
            .is_none()
        );
        // One CPU: nothing to pick beyond the limit.
        assert!(
            gomaxprocs_finding(
                "a.service",
                9,
                &info("go1.22.12", &[]),
                &env(&[]),
                &levels,
                1
            )
            .is_none()
        );
        // Go 1.25 with the quota on its own cgroup: at least 2 > 1.
        let leaf = [Level {
            path: "/a.service".into(),
            cpu_max: Some(CpuMax {
                quota_us: Some(100_000),
                period_us: 100_000,
            }),
        }];
        let f = gomaxprocs_finding("a.service", 9, &info("go1.25.0", &[]), &env(&[]), &leaf, 8)
            .unwrap();
        assert!(f.evidence.contains("picks 2"), "{}", f.evidence);
    }
}
