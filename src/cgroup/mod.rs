//! cgroup v2: the model shared by the policy and the backends (controllers,
//! sizes, `cpu.max`, `pids.max`, and the four knobs a slice can set), pure;
//! `detect` tells which cgroup hierarchy a host has and who owns it;
//! `plan` judges and plans slices through systemd or in holdfast's own
//! cgroupfs subtree (pure); `observe` reads.

pub mod detect;
pub mod knob;
pub mod observe;
pub mod plan;

use std::fmt;

/// Which cgroup hierarchy a host has (`detect` tells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Pure cgroup v2: holdfast manages cgroups.
    Unified,
    /// v1 controllers with a v2 hierarchy beside them: report only.
    Hybrid,
    /// Legacy v1 only: report only.
    Legacy,
    /// No cgroup filesystem at all.
    Missing,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Unified => "unified cgroup v2",
            CgroupMode::Hybrid => "hybrid cgroup v1/v2",
            CgroupMode::Legacy => "legacy cgroup v1",
            CgroupMode::Missing => "no cgroup filesystem",
        }
    }
}

/// holdfast's own cgroup subtree under the cgroup root, used only where
/// systemd does not own the cgroup tree.
pub const HOLDFAST_SUBTREE: &str = "holdfast.slice";

/// The cgroup v2 controllers a policy may ask for.
pub const CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];

/// A byte size or `max`. Sizes are written `100M`, `1G`, or bytes; suffixes
/// K, M, G, T are powers of 1024, as systemd reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bytes {
    Value(u64),
    Max,
}

/// The kernel rounds memory limits down to whole pages on write.
pub const PAGE_SIZE: u64 = 4096;

impl Bytes {
    pub fn parse(s: &str) -> Result<Bytes, String> {
        let t = s.trim();
        if t == "max" || t == "infinity" {
            return Ok(Bytes::Max);
        }
        let (digits, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            None => (t, 1u64),
            Some((i, _)) => {
                let unit = t[i..].trim();
                let mult = match unit.to_ascii_uppercase().as_str() {
                    "K" | "KB" | "KIB" => 1 << 10,
                    "M" | "MB" | "MIB" => 1 << 20,
                    "G" | "GB" | "GIB" => 1 << 30,
                    "T" | "TB" | "TIB" => 1 << 40,
                    "B" => 1,
                    _ => {
                        return Err(format!(
                            "has an unknown unit {unit:?}; use K, M, G or T (powers of 1024), bytes, or max"
                        ));
                    }
                };
                (&t[..i], mult)
            }
        };
        if digits.is_empty() {
            return Err("is not a size; write e.g. 100M, 1G, 104857600 or max".into());
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{digits:?} is not a number"))?;
        n.checked_mul(mult)
            .map(Bytes::Value)
            .ok_or_else(|| "is too large".into())
    }

    /// The value the kernel would store: rounded down to whole pages.
    #[must_use]
    pub fn page_rounded(self) -> Bytes {
        match self {
            Bytes::Value(n) => Bytes::Value(n / PAGE_SIZE * PAGE_SIZE),
            Bytes::Max => Bytes::Max,
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bytes::Value(n) => write!(f, "{n}"),
            Bytes::Max => f.write_str("max"),
        }
    }
}

/// A count or `max` (`pids.max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Count {
    Value(u64),
    Max,
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Value(n) => write!(f, "{n}"),
            Count::Max => f.write_str("max"),
        }
    }
}

/// `cpu.max`: a quota (µs, or none) per period (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuMax {
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

/// The kernel's limits on `cpu.max` (EINVAL outside them).
pub const CPU_MIN_QUOTA_US: u64 = 1_000;
pub const CPU_MIN_PERIOD_US: u64 = 1_000;
pub const CPU_MAX_PERIOD_US: u64 = 1_000_000;
pub const CPU_DEFAULT_PERIOD_US: u64 = 100_000;

impl CpuMax {
    /// Parses `"QUOTA PERIOD"`, `"max PERIOD"`, `"QUOTA"` or `"max"` (the
    /// period defaults to 100000 µs), and checks the kernel's bounds.
    pub fn parse(s: &str) -> Result<CpuMax, String> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let (quota, period) = match fields.as_slice() {
            [q] => (*q, None),
            [q, p] => (*q, Some(*p)),
            _ => {
                return Err(
                    "must be \"QUOTA PERIOD\" in microseconds, e.g. \"100000 1000000\", or \"max\""
                        .into(),
                );
            }
        };
        let quota_us =
            if quota == "max" {
                None
            } else {
                Some(quota.parse::<u64>().map_err(|_| {
                    format!("quota {quota:?} is not a number of microseconds or max")
                })?)
            };
        let period_us = match period {
            None => CPU_DEFAULT_PERIOD_US,
            Some(p) => p
                .parse::<u64>()
                .map_err(|_| format!("period {p:?} is not a number of microseconds"))?,
        };
        if !(CPU_MIN_PERIOD_US..=CPU_MAX_PERIOD_US).contains(&period_us) {
            return Err(format!(
                "period {period_us} µs is outside the kernel's range 1000..1000000 µs (1 ms to 1 s)"
            ));
        }
        if let Some(q) = quota_us
            && q < CPU_MIN_QUOTA_US
        {
            return Err(format!(
                "quota {q} µs is below the kernel's minimum of 1000 µs (1 ms)"
            ));
        }
        Ok(CpuMax {
            quota_us,
            period_us,
        })
    }
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota_us {
            Some(q) => write!(f, "{q} {}", self.period_us),
            None => write!(f, "max {}", self.period_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dash_nests_a_slice_in_the_cgroup_tree_as_systemd_does() {
        assert_eq!(plan::systemd_slice_cgroup("batch"), "batch.slice");
        assert_eq!(
            plan::systemd_slice_cgroup("go-app"),
            "go.slice/go-app.slice"
        );
        assert_eq!(
            plan::systemd_slice_cgroup("a-b-c"),
            "a.slice/a-b.slice/a-b-c.slice"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(Bytes::parse("100M"), Ok(Bytes::Value(104_857_600)));
        assert_eq!(Bytes::parse("1G"), Ok(Bytes::Value(1 << 30)));
        assert_eq!(Bytes::parse("100000000"), Ok(Bytes::Value(100_000_000)));
        assert_eq!(Bytes::parse("max"), Ok(Bytes::Max));
        assert!(Bytes::parse("10X").is_err());
        assert!(Bytes::parse("M").is_err());
        assert_eq!(
            Bytes::Value(100_000_000).page_rounded(),
            Bytes::Value(99_999_744)
        );
    }

    #[test]
    fn cpu_max() {
        assert_eq!(
            CpuMax::parse("100000 1000000"),
            Ok(CpuMax {
                quota_us: Some(100_000),
                period_us: 1_000_000
            })
        );
        assert_eq!(CpuMax::parse("max").unwrap().to_string(), "max 100000");
        assert!(CpuMax::parse("999 100000").unwrap_err().contains("below"));
        assert!(
            CpuMax::parse("50000 2000000")
                .unwrap_err()
                .contains("outside")
        );
        assert!(CpuMax::parse("50000 999").unwrap_err().contains("outside"));
        assert!(CpuMax::parse("a b c").is_err());
    }
}
