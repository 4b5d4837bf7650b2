//! The four settings a slice can have, in the three forms holdfast meets
//! them: the policy's value, the kernel's cgroupfs file, and systemd's unit
//! directive and property. Pure.

use std::fmt;

use super::{Bytes, CPU_DEFAULT_PERIOD_US, Count, CpuMax};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    MemoryMax(Bytes),
    MemoryHigh(Bytes),
    CpuMax(CpuMax),
    PidsMax(Count),
}

/// Which knob, without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KnobKind {
    MemoryHigh,
    MemoryMax,
    CpuMax,
    PidsMax,
}

impl KnobKind {
    pub const ALL: [KnobKind; 4] = [
        KnobKind::MemoryHigh,
        KnobKind::MemoryMax,
        KnobKind::CpuMax,
        KnobKind::PidsMax,
    ];

    /// The cgroupfs file.
    pub fn file(self) -> &'static str {
        match self {
            KnobKind::MemoryMax => "memory.max",
            KnobKind::MemoryHigh => "memory.high",
            KnobKind::CpuMax => "cpu.max",
            KnobKind::PidsMax => "pids.max",
        }
    }

    /// The controller the file belongs to.
    pub fn controller(self) -> &'static str {
        match self {
            KnobKind::MemoryMax | KnobKind::MemoryHigh => "memory",
            KnobKind::CpuMax => "cpu",
            KnobKind::PidsMax => "pids",
        }
    }

    /// Parses the kernel's file content.
    pub fn parse_kernel(self, text: &str) -> Option<Knob> {
        let t = text.trim();
        Some(match self {
            KnobKind::MemoryMax => Knob::MemoryMax(Bytes::parse(t).ok()?),
            KnobKind::MemoryHigh => Knob::MemoryHigh(Bytes::parse(t).ok()?),
            KnobKind::CpuMax => Knob::CpuMax(parse_kernel_cpu_max(t)?),
            KnobKind::PidsMax => Knob::PidsMax(parse_count(t)?),
        })
    }
}

fn parse_count(t: &str) -> Option<Count> {
    match t {
        "max" | "infinity" => Some(Count::Max),
        n => n.parse().ok().map(Count::Value),
    }
}

/// The kernel's `cpu.max`: no bounds check (the kernel already enforced them).
fn parse_kernel_cpu_max(t: &str) -> Option<CpuMax> {
    let mut f = t.split_whitespace();
    let quota = f.next()?;
    let period_us = f
        .next()
        .map_or(Some(CPU_DEFAULT_PERIOD_US), |p| p.parse().ok())?;
    let quota_us = if quota == "max" {
        None
    } else {
        Some(quota.parse().ok()?)
    };
    Some(CpuMax {
        quota_us,
        period_us,
    })
}

impl Knob {
    pub fn kind(&self) -> KnobKind {
        match self {
            Knob::MemoryMax(_) => KnobKind::MemoryMax,
            Knob::MemoryHigh(_) => KnobKind::MemoryHigh,
            Knob::CpuMax(_) => KnobKind::CpuMax,
            Knob::PidsMax(_) => KnobKind::PidsMax,
        }
    }

    /// Whether the kernel's value means the policy's: memory limits compare
    /// after the kernel's rounding down to whole pages.
    pub fn matches(&self, kernel: &Knob) -> bool {
        match (self, kernel) {
            (Knob::MemoryMax(a), Knob::MemoryMax(b))
            | (Knob::MemoryHigh(a), Knob::MemoryHigh(b)) => a.page_rounded() == b.page_rounded(),
            (a, b) => a == b,
        }
    }

    /// The text written to the cgroupfs file.
    pub fn kernel_text(&self) -> String {
        match self {
            Knob::MemoryMax(b) | Knob::MemoryHigh(b) => b.to_string(),
            Knob::CpuMax(c) => c.to_string(),
            Knob::PidsMax(c) => c.to_string(),
        }
    }

    /// The unit-file directives that give this value through systemd.
    pub fn systemd_directives(&self) -> Vec<String> {
        let bytes = |b: &Bytes| match b {
            Bytes::Max => "infinity".to_string(),
            Bytes::Value(n) => n.to_string(),
        };
        match self {
            Knob::MemoryMax(b) => vec![format!("MemoryMax={}", bytes(b))],
            Knob::MemoryHigh(b) => vec![format!("MemoryHigh={}", bytes(b))],
            Knob::PidsMax(Count::Max) => vec!["TasksMax=infinity".into()],
            Knob::PidsMax(Count::Value(n)) => vec![format!("TasksMax={n}")],
            Knob::CpuMax(c) => {
                let quota = match c.quota_us {
                    None => "CPUQuota=".to_string(),
                    Some(q) => format!("CPUQuota={}", cpu_quota_percent(q, c.period_us)),
                };
                vec![quota, format!("CPUQuotaPeriodSec={}us", c.period_us)]
            }
        }
    }

    /// The `systemctl set-property` assignments for this value.
    pub fn systemd_properties(&self) -> Vec<String> {
        self.systemd_directives()
    }
}

/// `CPUQuota=` as a percentage of one CPU: systemd takes it per second, and
/// computes the quota for the period itself. Two decimals (systemd reads
/// permyriads).
pub fn cpu_quota_percent(quota_us: u64, period_us: u64) -> String {
    // Per-second quota in µs, then in hundredths of a percent (1% = 10 ms/s).
    let per_sec = u128::from(quota_us) * 1_000_000 / u128::from(period_us.max(1));
    let permyriad = per_sec / 100;
    if permyriad % 100 == 0 {
        format!("{}%", permyriad / 100)
    } else {
        format!("{}.{:02}%", permyriad / 100, permyriad % 100)
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kernel_text())
    }
}

/// Parses a systemd time span as `systemctl show` prints it (`100ms`,
/// `1s`, `1min 40s`, `infinity`) into microseconds; `None` for infinity.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the total is a sum of non-negative parts, and `as` saturates at u64::MAX"
)]
pub fn parse_timespan_us(text: &str) -> Option<Option<u64>> {
    let t = text.trim();
    if t == "infinity" || t.is_empty() {
        return Some(None);
    }
    let mut total: f64 = 0.0;
    for part in t.split_whitespace() {
        let idx = part
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(part.len());
        let (num, unit) = part.split_at(idx);
        let n: f64 = num.parse().ok()?;
        let mult = match unit {
            "us" | "usec" | "" => 1.0,
            "ms" | "msec" => 1e3,
            "s" | "sec" => 1e6,
            "min" => 60e6,
            "h" | "hr" => 3600e6,
            _ => return None,
        };
        total += n * mult;
    }
    Some(Some(total.round() as u64))
}

/// systemd's view of a slice's CPU limit as a `cpu.max`: the per-second
/// quota scaled to the period.
pub fn cpu_max_from_systemd(quota_per_sec_us: Option<u64>, period_us: Option<u64>) -> CpuMax {
    let period_us = period_us.unwrap_or(CPU_DEFAULT_PERIOD_US);
    CpuMax {
        quota_us: quota_per_sec_us.map(|q| q * period_us / 1_000_000),
        period_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_for_the_baseline_slice() {
        let cpu = Knob::CpuMax(CpuMax {
            quota_us: Some(100_000),
            period_us: 1_000_000,
        });
        assert_eq!(
            cpu.systemd_directives(),
            ["CPUQuota=10%", "CPUQuotaPeriodSec=1000000us"]
        );
        assert_eq!(cpu_quota_percent(50_000, 100_000), "50%");
        assert_eq!(cpu_quota_percent(12_345, 100_000), "12.34%");
        assert_eq!(cpu_quota_percent(250_000, 100_000), "250%");
        assert_eq!(
            Knob::MemoryMax(Bytes::Value(104_857_600)).systemd_directives(),
            ["MemoryMax=104857600"]
        );
        assert_eq!(
            Knob::PidsMax(Count::Max).systemd_directives(),
            ["TasksMax=infinity"]
        );
    }

    #[test]
    fn kernel_values_and_page_rounding() {
        let want = Knob::MemoryMax(Bytes::Value(100_000_000));
        let kernel = KnobKind::MemoryMax.parse_kernel("99999744\n").unwrap();
        assert!(want.matches(&kernel));
        assert!(!want.matches(&KnobKind::MemoryMax.parse_kernel("max\n").unwrap()));
        assert_eq!(
            KnobKind::CpuMax.parse_kernel("max 100000\n"),
            Some(Knob::CpuMax(CpuMax {
                quota_us: None,
                period_us: 100_000
            }))
        );
        assert_eq!(
            KnobKind::PidsMax.parse_kernel("512\n"),
            Some(Knob::PidsMax(Count::Value(512)))
        );
    }

    #[test]
    fn systemd_timespans() {
        assert_eq!(parse_timespan_us("100ms"), Some(Some(100_000)));
        assert_eq!(parse_timespan_us("1s"), Some(Some(1_000_000)));
        assert_eq!(parse_timespan_us("1min 40s"), Some(Some(100_000_000)));
        assert_eq!(parse_timespan_us("infinity"), Some(None));
        assert_eq!(parse_timespan_us("12parsecs"), None);
        assert_eq!(
            cpu_max_from_systemd(Some(100_000), Some(1_000_000)),
            CpuMax {
                quota_us: Some(100_000),
                period_us: 1_000_000
            }
        );
    }
}
