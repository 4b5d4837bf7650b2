//! `holdfast audit`: the posture of every running service on the host,
//! managed or not, and how its main binary was built (the Go checks of
//! `gobuild::findings`), as a table, JSON, or SARIF 2.1.0 for code-scanning
//! tools. Reads systemd's unit list, /proc and the cgroup files; writes
//! nothing.

use serde_json::{Value, json};

use crate::gobuild::{Go, findings as go_findings, observe as go_observe, releases};
use crate::host::HostRoot;
use crate::posture::{self, Check, Finding, ProcStatus, Severity, caps};
use crate::services::observe::unit_pids;
use crate::systemd::{SystemdClient, SystemdError};

/// The result of an audit.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// The services looked at.
    pub units: Vec<String>,
    pub findings: Vec<Finding>,
    /// Services or processes that could not be read.
    pub warnings: Vec<String>,
    /// A Go binary was judged (the release table matters).
    pub saw_go: bool,
}

/// Every check an audit runs: the process posture checks, then the checks
/// of a Go service's main binary.
pub fn checks() -> impl Iterator<Item = &'static Check> {
    posture::CHECKS.iter().chain(go_findings::CHECKS)
}

/// Audits every running service.
pub fn run(host: &HostRoot, client: &dyn SystemdClient) -> Result<Audit, SystemdError> {
    let all_caps = caps::mask(
        &caps::CAPABILITIES
            .iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>(),
    )
    .unwrap_or(0);
    let mut audit = Audit::default();
    for unit in client.running_services()? {
        let info = match client.unit(&unit) {
            Ok(i) => i,
            Err(e) => {
                audit.warnings.push(format!("{unit}: {e}"));
                continue;
            }
        };
        if let Some(pid) = info.main_pid.filter(|p| *p > 0) {
            audit_main_binary(host, &unit, pid, &mut audit);
        }
        for pid in unit_pids(host, &info) {
            let path = host.path(&format!("proc/{pid}/status"));
            // A process may exit between the listing and the read.
            let Some(status) = std::fs::read_to_string(&path)
                .ok()
                .as_deref()
                .and_then(ProcStatus::parse)
            else {
                continue;
            };
            audit
                .findings
                .extend(posture::audit_process(&unit, pid, &status, all_caps));
        }
        audit.units.push(unit);
    }
    // The release table only matters when a Go binary was judged.
    let today = releases::date_of(std::time::SystemTime::now());
    if audit.saw_go
        && releases::stale_on(&today)
        && let Some((minor, date)) = releases::newest()
    {
        audit.warnings.push(format!(
            "holdfast's Go release table ends at go1.{minor} ({date}); Go has probably released since, so a release reported as supported may not be (update holdfast)"
        ));
    }
    Ok(audit)
}

/// The Go checks of a service's main binary (read through /proc/PID/exe):
/// how it was built, and the GOMAXPROCS its runtime picks against the CPU
/// limit of its cgroup path. A binary without Go build information has
/// none; one that cannot be read is a warning.
fn audit_main_binary(host: &HostRoot, unit: &str, pid: u32, audit: &mut Audit) {
    // A process may exit between the listing and the read.
    if std::fs::symlink_metadata(host.path(&format!("proc/{pid}/exe"))).is_err() {
        return;
    }
    let (exe, read) = go_observe::read_exe(host, pid);
    let binary = match read {
        Ok(b) => b,
        Err(e) => {
            audit
                .warnings
                .push(format!("{unit}: PID {pid} ({exe}): {e}"));
            return;
        }
    };
    let Go::Build(info) = &binary.go else {
        return;
    };
    audit.saw_go = true;
    audit
        .findings
        .extend(go_findings::binary_findings(unit, pid, &binary));
    let environ = std::fs::read(host.path(&format!("proc/{pid}/environ")))
        .map(|b| posture::parse_environ(&b));
    if let (Ok(environ), Some(view)) = (environ, go_observe::cpu_view(host, pid)) {
        audit.findings.extend(go_findings::gomaxprocs_finding(
            unit,
            pid,
            info,
            &environ,
            &view.levels,
            view.affinity,
        ));
    }
}

impl Audit {
    /// Whether any finding is at or above `level`.
    pub fn fails(&self, level: Severity) -> bool {
        self.findings.iter().any(|f| f.check.severity >= level)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let rows: Vec<[String; 5]> = self
            .findings
            .iter()
            .map(|f| {
                [
                    f.unit.clone(),
                    f.pid.to_string(),
                    format!("{} {}", f.check.id, f.check.name),
                    f.check.severity.to_string(),
                    f.evidence.clone(),
                ]
            })
            .collect();
        let header = ["SERVICE", "PID", "CHECK", "SEVERITY", "EVIDENCE"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in std::iter::once(&header).chain(rows.iter()) {
            let mut line = String::new();
            for (i, (c, w)) in r.iter().zip(widths).enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    line.push_str(&" ".repeat(w - c.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        let clean = self
            .units
            .iter()
            .filter(|u| !self.findings.iter().any(|f| &f.unit == *u))
            .count();
        out.push_str(&format!(
            "\n{} finding(s) in {} running service(s); {clean} service(s) without findings\n",
            self.findings.len(),
            self.units.len()
        ));
        out
    }

    pub fn to_json(&self) -> String {
        let doc = json!({
            "schema_version": 1,
            "units": self.units,
            "findings": self.findings.iter().map(|f| json!({
                "unit": f.unit,
                "pid": f.pid,
                "check": f.check.id,
                "name": f.check.name,
                "severity": f.check.severity.as_str(),
                "evidence": f.evidence,
            })).collect::<Vec<_>>(),
            "warnings": self.warnings,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// A SARIF 2.1.0 log: one rule per check, one result per finding, the
    /// service as the result's logical location.
    pub fn to_sarif(&self) -> Value {
        let rules: Vec<Value> = checks()
            .map(|c| {
                json!({
                    "id": c.id,
                    "name": c.name,
                    "shortDescription": {"text": c.description},
                    "fullDescription": {"text": format!("{} Reads {}.", c.description, c.reads)},
                    "defaultConfiguration": {"level": c.severity.sarif_level()},
                    "properties": {"severity": c.severity.as_str()},
                })
            })
            .collect();
        let results: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                let index = checks().position(|c| c.id == f.check.id).unwrap_or(0);
                json!({
                    "ruleId": f.check.id,
                    "ruleIndex": index,
                    "level": f.check.severity.sarif_level(),
                    "message": {"text": format!("{} (PID {}): {}", f.unit, f.pid, f.evidence)},
                    "locations": [{
                        "logicalLocations": [{
                            "name": f.unit,
                            "fullyQualifiedName": format!("{}/{}", f.unit, f.pid),
                            "kind": "module",
                        }],
                    }],
                    "partialFingerprints": {"holdfastFinding/v1": format!("{}:{}", f.unit, f.check.id)},
                })
            })
            .collect();
        json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {
                    "name": "holdfast",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules,
                }},
                "results": results,
            }],
        })
    }
}
