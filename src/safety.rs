//! Safety analysis of planned changes against the host's headroom. Pure.
//!
//! The overcommit gate: with `vm.overcommit_memory = 2` the kernel refuses
//! every private allocation, brk, thread stack and fork once Committed_AS
//! reaches CommitLimit — sshd and holdfast included — while the sysctl write
//! itself succeeds. So before switching to 2, or lowering the limit while in
//! mode 2, holdfast projects the new CommitLimit and refuses the change when
//! Committed_AS plus a headroom would not fit under it.

use std::fmt;

/// The /proc/meminfo fields the gate needs, in kB as the kernel prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    pub mem_total_kb: u64,
    pub swap_total_kb: u64,
    /// Memory reserved for huge pages (the `Hugetlb:` field, or
    /// HugePages_Total × Hugepagesize on kernels without it).
    pub hugetlb_kb: u64,
    pub committed_as_kb: u64,
    pub commit_limit_kb: u64,
}

impl MemInfo {
    /// Parses /proc/meminfo. Missing fields the gate cannot do without make
    /// it `None`.
    pub fn parse(text: &str) -> Option<MemInfo> {
        let field = |name: &str| -> Option<u64> {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == name).then(|| v.split_whitespace().next()?.parse().ok())?
            })
        };
        let hugetlb_kb = field("Hugetlb").unwrap_or_else(|| {
            field("HugePages_Total").unwrap_or(0) * field("Hugepagesize").unwrap_or(0)
        });
        Some(MemInfo {
            mem_total_kb: field("MemTotal")?,
            swap_total_kb: field("SwapTotal").unwrap_or(0),
            hugetlb_kb,
            committed_as_kb: field("Committed_AS")?,
            commit_limit_kb: field("CommitLimit").unwrap_or(0),
        })
    }

    /// CommitLimit as the kernel computes it for mode 2.
    pub fn projected_commit_limit_kb(&self, overcommit: &Overcommit) -> u64 {
        if overcommit.kbytes > 0 {
            overcommit.kbytes.saturating_add(self.swap_total_kb)
        } else {
            let ram = self.mem_total_kb.saturating_sub(self.hugetlb_kb);
            (u128::from(ram) * u128::from(overcommit.ratio) / 100)
                .try_into()
                .unwrap_or(u64::MAX)
                .saturating_add(self.swap_total_kb)
        }
    }
}

/// The overcommit sysctls, current or planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overcommit {
    pub memory: u64,
    pub ratio: u64,
    pub kbytes: u64,
}

/// The gate's answer for one planned change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not affected by the gate.
    NotApplicable,
    Allowed(GateFigures),
    Refused(GateFigures),
    /// The gate could not compute (no /proc/meminfo): refused, to be safe.
    Unknown(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateFigures {
    pub projected_limit_kb: u64,
    pub committed_as_kb: u64,
    pub headroom_percent: u8,
}

impl GateFigures {
    /// Committed_AS plus the headroom must fit under the projected limit.
    fn fits(&self) -> bool {
        let headroom =
            u128::from(self.projected_limit_kb) * u128::from(self.headroom_percent) / 100;
        u128::from(self.committed_as_kb) + headroom <= u128::from(self.projected_limit_kb)
    }
}

impl fmt::Display for GateFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projected CommitLimit {} kB, Committed_AS {} kB, headroom {}%",
            self.projected_limit_kb, self.committed_as_kb, self.headroom_percent
        )
    }
}

/// Which of the overcommit keys a planned change touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvercommitKey {
    Memory,
    Ratio,
    Kbytes,
}

impl OvercommitKey {
    pub const ALL: [OvercommitKey; 3] = [
        OvercommitKey::Memory,
        OvercommitKey::Ratio,
        OvercommitKey::Kbytes,
    ];

    pub fn as_sysctl(self) -> &'static str {
        match self {
            OvercommitKey::Memory => "vm.overcommit_memory",
            OvercommitKey::Ratio => "vm.overcommit_ratio",
            OvercommitKey::Kbytes => "vm.overcommit_kbytes",
        }
    }

    pub fn from_sysctl(key: &str) -> Option<OvercommitKey> {
        OvercommitKey::ALL
            .into_iter()
            .find(|k| k.as_sysctl() == key)
    }
}

/// Judges the planned overcommit changes as a whole.
///
/// Returns a verdict for the mode change and one for the limit change
/// (ratio/kbytes). A limit change is harmless while the final mode is not 2,
/// so when only the switch to 2 is unsafe, the limit is still written (ratio
/// before mode) and only the switch is refused.
pub fn overcommit_gate(
    meminfo: Option<&MemInfo>,
    current: Overcommit,
    planned: Overcommit,
    headroom_percent: u8,
) -> (Verdict, Verdict) {
    let switching = planned.memory == 2 && current.memory != 2;
    let mode_stays_strict = planned.memory == 2 && current.memory == 2;
    let limit_changes = planned.ratio != current.ratio || planned.kbytes != current.kbytes;
    if !(switching || (mode_stays_strict && limit_changes)) {
        return (Verdict::NotApplicable, Verdict::NotApplicable);
    }
    let Some(mi) = meminfo else {
        let why = "cannot read /proc/meminfo to check CommitLimit headroom".to_string();
        return if switching {
            (Verdict::Unknown(why), Verdict::NotApplicable)
        } else {
            (Verdict::NotApplicable, Verdict::Unknown(why))
        };
    };
    let figures = GateFigures {
        projected_limit_kb: mi.projected_commit_limit_kb(&planned),
        committed_as_kb: mi.committed_as_kb,
        headroom_percent,
    };
    if switching {
        let v = if figures.fits() {
            Verdict::Allowed(figures)
        } else {
            Verdict::Refused(figures)
        };
        let limit = if limit_changes {
            Verdict::Allowed(figures)
        } else {
            Verdict::NotApplicable
        };
        return (v, limit);
    }
    // Already strict: only a lower limit can hurt.
    let current_limit = mi.projected_commit_limit_kb(&current);
    let v = if figures.projected_limit_kb >= current_limit || figures.fits() {
        Verdict::Allowed(figures)
    } else {
        Verdict::Refused(figures)
    };
    (Verdict::NotApplicable, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         1000 kB\nSwapTotal:       1000000 kB\nHugetlb:         2000000 kB\nCommitLimit:     9000000 kB\nCommitted_AS:    8000000 kB\n";

    fn oc(memory: u64, ratio: u64) -> Overcommit {
        Overcommit {
            memory,
            ratio,
            kbytes: 0,
        }
    }

    #[test]
    fn parses_meminfo_and_projects_limit() {
        let mi = MemInfo::parse(MEMINFO).unwrap();
        assert_eq!(mi.hugetlb_kb, 2_000_000);
        // (16e6 - 2e6) * 80% + 1e6 swap
        assert_eq!(mi.projected_commit_limit_kb(&oc(2, 80)), 12_200_000);
        let kb = Overcommit {
            memory: 2,
            ratio: 0,
            kbytes: 5_000_000,
        };
        assert_eq!(mi.projected_commit_limit_kb(&kb), 6_000_000);
        let old = MemInfo::parse(
            "MemTotal: 100 kB\nHugePages_Total: 3\nHugepagesize: 10 kB\nCommitted_AS: 5 kB\n",
        )
        .unwrap();
        assert_eq!(old.hugetlb_kb, 30);
        assert!(MemInfo::parse("MemTotal: 1 kB\n").is_none());
    }

    #[test]
    fn switch_allowed_with_headroom_and_refused_without() {
        let mi = MemInfo::parse(MEMINFO).unwrap();
        // 12.2 GB limit, 8 GB committed: fits with 10% headroom.
        let (mode, ratio) = overcommit_gate(Some(&mi), oc(0, 50), oc(2, 80), 10);
        assert!(matches!(mode, Verdict::Allowed(_)));
        assert!(matches!(ratio, Verdict::Allowed(_)));
        // ratio 50: (14e6 * 0.5) + 1e6 = 8e6 limit; 8e6 committed + 0.8e6 headroom > 8e6.
        let (mode, ratio) = overcommit_gate(Some(&mi), oc(0, 50), oc(2, 50), 10);
        assert!(matches!(mode, Verdict::Refused(f) if f.projected_limit_kb == 8_000_000));
        assert_eq!(ratio, Verdict::NotApplicable);
        // No headroom asked: exactly at the limit is allowed.
        let (mode, _) = overcommit_gate(Some(&mi), oc(0, 50), oc(2, 50), 0);
        assert!(matches!(mode, Verdict::Allowed(_)));
    }

    #[test]
    fn lowering_ratio_while_strict_is_gated_raising_is_not() {
        let mi = MemInfo::parse(MEMINFO).unwrap();
        let (_, lower) = overcommit_gate(Some(&mi), oc(2, 80), oc(2, 50), 10);
        assert!(matches!(lower, Verdict::Refused(_)));
        let (_, raise) = overcommit_gate(Some(&mi), oc(2, 50), oc(2, 80), 10);
        assert!(matches!(raise, Verdict::Allowed(_)));
    }

    #[test]
    fn other_modes_are_not_gated_and_missing_meminfo_refuses() {
        assert_eq!(
            overcommit_gate(None, oc(0, 50), oc(1, 80), 10),
            (Verdict::NotApplicable, Verdict::NotApplicable)
        );
        assert!(matches!(
            overcommit_gate(None, oc(0, 50), oc(2, 80), 10).0,
            Verdict::Unknown(_)
        ));
    }
}
