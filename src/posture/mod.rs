//! Service security posture: what a process really runs with, read from
//! /proc/PID/status and /proc/PID/environ, checked against a policy
//! (managed services) or a baseline (`holdfast audit`). Pure.

pub mod caps;

use std::collections::BTreeMap;
use std::fmt;

use crate::cgroup::CpuMax;

/// The posture fields of /proc/PID/status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub name: String,
    /// Real, effective, saved and filesystem UIDs.
    pub uid: [u32; 4],
    pub no_new_privs: Option<bool>,
    /// 0 = none, 1 = strict, 2 = filter.
    pub seccomp: Option<u8>,
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
}

impl ProcStatus {
    pub fn parse(text: &str) -> Option<ProcStatus> {
        let mut s = ProcStatus::default();
        let mut saw_uid = false;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "Name" => s.name = v.to_string(),
                "Uid" => {
                    let ids: Vec<u32> = v
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    if let [a, b, c, d] = ids.as_slice() {
                        s.uid = [*a, *b, *c, *d];
                        saw_uid = true;
                    }
                }
                "NoNewPrivs" => s.no_new_privs = Some(v == "1"),
                "Seccomp" => s.seccomp = v.parse().ok(),
                "CapEff" => s.cap_eff = caps::parse_mask(v)?,
                "CapPrm" => s.cap_prm = caps::parse_mask(v)?,
                "CapBnd" => s.cap_bnd = caps::parse_mask(v)?,
                "CapAmb" => s.cap_amb = caps::parse_mask(v)?,
                _ => {}
            }
        }
        saw_uid.then_some(s)
    }
}

/// Parses /proc/PID/environ (NUL-separated `KEY=VALUE`).
pub fn parse_environ(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// GOMAXPROCS for a CPU limit: ceil(quota / period), at least 1; the CPU
/// count when there is no quota.
pub fn gomaxprocs_for(cpu_max: Option<CpuMax>, cpus: u32) -> u32 {
    match cpu_max.and_then(|c| c.quota_us.map(|q| (q, c.period_us))) {
        Some((q, p)) if p > 0 => u32::try_from(q.div_ceil(p)).unwrap_or(u32::MAX).max(1),
        _ => cpus.max(1),
    }
}

/// How serious a finding is (SARIF levels: note, warning, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Low => "note",
            Severity::Medium => "warning",
            Severity::High => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One posture check, as audit reports it (one SARIF rule each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub description: &'static str,
    /// What the check reads.
    pub reads: &'static str,
}

pub const CHECKS: &[Check] = &[
    Check {
        id: "HF001",
        name: "no-new-privileges",
        severity: Severity::Medium,
        description: "The process can gain privileges through setuid/setgid binaries or file capabilities (no_new_privs is not set).",
        reads: "NoNewPrivs in /proc/PID/status",
    },
    Check {
        id: "HF002",
        name: "seccomp-filter",
        severity: Severity::Medium,
        description: "The process runs without a seccomp system-call filter.",
        reads: "Seccomp in /proc/PID/status (2 = filter)",
    },
    Check {
        id: "HF003",
        name: "dangerous-capabilities",
        severity: Severity::High,
        description: "The process holds effective capabilities that amount to root or nearly (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE, ...).",
        reads: "CapEff in /proc/PID/status",
    },
    Check {
        id: "HF004",
        name: "runs-as-root",
        severity: Severity::High,
        description: "The process runs with effective UID 0.",
        reads: "Uid in /proc/PID/status",
    },
    Check {
        id: "HF005",
        name: "capability-bounding-set",
        severity: Severity::Low,
        description: "The capability bounding set is not reduced: the process or its children could regain any capability.",
        reads: "CapBnd in /proc/PID/status",
    },
];

pub fn check(id: &str) -> Option<&'static Check> {
    CHECKS.iter().find(|c| c.id == id)
}

/// A failed check on one process, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static Check,
    pub unit: String,
    pub pid: u32,
    pub evidence: String,
}

/// The facts the posture checks read, each as the evidence of a failed
/// check or `None`. The services planner (a managed service's posture
/// fields) and the audit (every running service) both judge through these,
/// so the two can never disagree on what, say, "has a seccomp filter" means.
pub mod evidence {
    use super::{ProcStatus, caps};

    /// no_new_privs is not set.
    pub fn may_gain_privileges(s: &ProcStatus) -> Option<String> {
        (s.no_new_privs != Some(true)).then(|| "NoNewPrivs: 0".to_string())
    }

    /// No seccomp filter (mode 2).
    pub fn no_seccomp_filter(s: &ProcStatus) -> Option<String> {
        (s.seccomp != Some(2)).then(|| {
            format!(
                "Seccomp: {}",
                s.seccomp.map_or("?".into(), |v| v.to_string())
            )
        })
    }

    /// Runs with effective UID 0 (`any_id`: or real UID 0, as a service
    /// whose policy says it never runs as root is judged).
    pub fn runs_as_root(s: &ProcStatus, any_id: bool) -> Option<String> {
        (s.uid[1] == 0 || (any_id && s.uid[0] == 0))
            .then(|| format!("Uid: {} {} {} {}", s.uid[0], s.uid[1], s.uid[2], s.uid[3]))
    }

    /// Capabilities outside `allowed` in the bounding, effective or ambient
    /// set.
    pub fn capabilities_beyond(s: &ProcStatus, allowed: u64) -> Option<String> {
        let mut extra = Vec::new();
        for (name, m) in [
            ("CapBnd", s.cap_bnd),
            ("CapEff", s.cap_eff),
            ("CapAmb", s.cap_amb),
        ] {
            let over = caps::decode(m & !allowed);
            if !over.is_empty() {
                extra.push(format!("{name} has {}", over.join(", ")));
            }
        }
        (!extra.is_empty()).then(|| extra.join("; "))
    }

    /// Effective capabilities that amount to root or nearly.
    pub fn dangerous_capabilities(s: &ProcStatus) -> Option<String> {
        let dangerous: Vec<String> = caps::decode(s.cap_eff)
            .into_iter()
            .filter(|c| caps::DANGEROUS.contains(&c.as_str()))
            .collect();
        (!dangerous.is_empty()).then(|| format!("CapEff has {}", dangerous.join(", ")))
    }

    /// The bounding set is the full set of capabilities the kernel knows.
    pub fn full_bounding_set(s: &ProcStatus, all_caps: u64) -> Option<String> {
        (all_caps != 0 && s.cap_bnd & all_caps == all_caps)
            .then(|| "CapBnd is the full set".to_string())
    }
}

/// The baseline posture checks of one process (audit: managed or not).
pub fn audit_process(unit: &str, pid: u32, status: &ProcStatus, all_caps: u64) -> Vec<Finding> {
    let checks = [
        ("HF001", evidence::may_gain_privileges(status)),
        ("HF002", evidence::no_seccomp_filter(status)),
        ("HF003", evidence::dangerous_capabilities(status)),
        // The audit flags an effective UID 0 only.
        ("HF004", evidence::runs_as_root(status, false)),
        ("HF005", evidence::full_bounding_set(status, all_caps)),
    ];
    checks
        .into_iter()
        .filter_map(|(id, found)| {
            Some(Finding {
                check: check(id)?,
                unit: unit.to_string(),
                pid,
                evidence: found?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_SLEEP: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";
    const HARDENED: &str = "Name:\tmyapp\nUid:\t998\t998\t998\t998\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapBnd:\t0000000000000400\nCapAmb:\t0000000000000400\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn parses_status_fixtures() {
        let s = ProcStatus::parse(ROOT_SLEEP).unwrap();
        assert_eq!(s.uid, [0, 0, 0, 0]);
        assert_eq!(s.no_new_privs, Some(false));
        assert_eq!(s.seccomp, Some(0));
        assert_eq!(caps::decode(s.cap_eff).len(), 41);
        let h = ProcStatus::parse(HARDENED).unwrap();
        assert_eq!(h.uid[1], 998);
        assert_eq!(h.no_new_privs, Some(true));
        assert_eq!(h.seccomp, Some(2));
        assert_eq!(caps::decode(h.cap_bnd), ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(ProcStatus::parse("Name:\tx\n"), None);
    }

    #[test]
    fn audit_findings() {
        let all = caps::mask(
            &caps::CAPABILITIES
                .iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let root = audit_process(
            "legacy.service",
            7,
            &ProcStatus::parse(ROOT_SLEEP).unwrap(),
            all,
        );
        let ids: Vec<&str> = root.iter().map(|f| f.check.id).collect();
        assert_eq!(ids, ["HF001", "HF002", "HF003", "HF004", "HF005"]);
        assert!(
            root[2]
                .evidence
                .starts_with("CapEff has CAP_CHOWN, CAP_DAC_OVERRIDE"),
            "{}",
            root[2].evidence
        );
        assert!(
            audit_process("ok.service", 8, &ProcStatus::parse(HARDENED).unwrap(), all).is_empty()
        );
    }

    #[test]
    fn environ_and_gomaxprocs() {
        let env = parse_environ(b"PATH=/bin\0GOMAXPROCS=1\0GODEBUG=madvdontneed=1\0");
        assert_eq!(env["GOMAXPROCS"], "1");
        assert_eq!(env["GODEBUG"], "madvdontneed=1");
        let cpu = |q: Option<u64>, p: u64| {
            Some(CpuMax {
                quota_us: q,
                period_us: p,
            })
        };
        assert_eq!(gomaxprocs_for(cpu(Some(100_000), 1_000_000), 8), 1);
        assert_eq!(gomaxprocs_for(cpu(Some(250_000), 100_000), 8), 3);
        assert_eq!(gomaxprocs_for(cpu(Some(1_000), 100_000), 8), 1);
        assert_eq!(gomaxprocs_for(cpu(None, 100_000), 8), 8);
        assert_eq!(gomaxprocs_for(None, 0), 1);
    }
}
