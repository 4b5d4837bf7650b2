//! GOMAXPROCS against the CPU a service may really use. Pure.
//!
//! The effective CPU limit of a process is the tightest `cpu.max` quota on
//! the whole path from its cgroup to the root, and never more than the CPUs
//! its affinity mask allows. What the Go runtime picks by itself when no
//! `GOMAXPROCS` variable is set depends on its version (design notes §10):
//! - before Go 1.25: the number of CPUs in the affinity mask;
//! - Go 1.25 and later: the quota of its own (leaf) cgroup only — ancestors
//!   are ignored (golang/go#81180) — rounded up, at least 2, at most the
//!   affinity count; `GODEBUG=containermaxprocs=0` turns this off.

use crate::cgroup::CpuMax;

use super::GoVersion;

/// The Go release whose runtime first reads its cgroup's CPU limit.
pub const CGROUP_AWARE_SINCE: GoVersion = GoVersion {
    major: 1,
    minor: 25,
    patch: 0,
    prerelease: true,
};

/// ceil(quota / period), at least 1; `None` without a quota.
pub fn quota_cpus(c: CpuMax) -> Option<u32> {
    let q = c.quota_us?;
    let p = c.period_us.max(1);
    Some(u32::try_from(q.div_ceil(p)).unwrap_or(u32::MAX).max(1))
}

/// The tightest of some quotas (the smallest quota / period); `None` when
/// none has a quota.
pub fn tightest(limits: impl IntoIterator<Item = CpuMax>) -> Option<CpuMax> {
    limits
        .into_iter()
        .filter(|c| c.quota_us.is_some())
        .min_by(|a, b| {
            let (qa, qb) = (
                u128::from(a.quota_us.unwrap_or(0)),
                u128::from(b.quota_us.unwrap_or(0)),
            );
            (qa * u128::from(b.period_us)).cmp(&(qb * u128::from(a.period_us)))
        })
}

/// The slices a policy slice lives in, outermost first, itself last: a
/// dash nests a systemd slice (`a-b` is inside `a`).
pub fn slice_path(name: &str) -> Vec<String> {
    let parts: Vec<&str> = name.split('-').collect();
    (1..=parts.len()).map(|n| parts[..n].join("-")).collect()
}

/// One cgroup on a process's path, with its `cpu.max` when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The cgroup path, e.g. `/go.slice/go-app.slice`.
    pub path: String,
    pub cpu_max: Option<CpuMax>,
}

/// A number of CPUs and what sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus {
    pub cpus: u32,
    pub why: String,
}

/// The effective CPU limit of a process: the tightest quota on its path
/// (`levels`, leaf first or last, any order) and its affinity count.
pub fn effective_limit(levels: &[Level], affinity: u32) -> Cpus {
    let tight = levels
        .iter()
        .filter_map(|l| l.cpu_max.map(|c| (l, c)))
        .filter(|(_, c)| c.quota_us.is_some())
        .min_by(|(_, a), (_, b)| {
            let t = tightest([*a, *b]);
            if t == Some(*a) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
    match tight.and_then(|(l, c)| quota_cpus(c).map(|n| (l, c, n))) {
        Some((l, c, n)) if n < affinity => Cpus {
            cpus: n,
            why: format!(
                "cpu.max {} {} of {}",
                c.quota_us.unwrap_or(0),
                c.period_us,
                l.path
            ),
        },
        _ => Cpus {
            cpus: affinity.max(1),
            why: format!("{} CPU(s) in the affinity mask", affinity.max(1)),
        },
    }
}

/// What the Go runtime of `version` picks when no `GOMAXPROCS` variable is
/// set, given its leaf cgroup's `cpu.max`, its affinity count and its
/// `GODEBUG`.
pub fn runtime_pick(
    version: GoVersion,
    leaf: Option<CpuMax>,
    affinity: u32,
    godebug: Option<&str>,
) -> Cpus {
    let affinity = affinity.max(1);
    let by_cpus = Cpus {
        cpus: affinity,
        why: format!("{version} uses the {affinity} CPU(s) of its affinity mask"),
    };
    if version < CGROUP_AWARE_SINCE {
        return by_cpus;
    }
    let off = godebug.is_some_and(|d| d.split(',').any(|kv| kv.trim() == "containermaxprocs=0"));
    if off {
        return Cpus {
            cpus: affinity,
            why: format!(
                "{version} with GODEBUG=containermaxprocs=0 uses the {affinity} CPU(s) of its affinity mask"
            ),
        };
    }
    match leaf.and_then(quota_cpus) {
        Some(n) => {
            let n = n.max(2).min(affinity);
            Cpus {
                cpus: n,
                why: format!("{version} reads only its own cgroup's cpu.max: {n}"),
            }
        }
        None => Cpus {
            cpus: affinity,
            why: format!(
                "{version} reads only its own cgroup's cpu.max, which has no quota: the {affinity} CPU(s) of its affinity mask"
            ),
        },
    }
}

/// The number of CPUs in a list such as `Cpus_allowed_list: 0-3,6`.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n: u32 = 0;
    for range in list.trim().split(',').filter(|r| !r.is_empty()) {
        let count = if let Some((a, b)) = range.split_once('-') {
            let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            b.checked_sub(a)?.checked_add(1)?
        } else {
            range.trim().parse::<u32>().ok()?;
            1
        };
        n = n.checked_add(count)?;
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(
        clippy::unnecessary_wraps,
        reason = "the tests build `Option`s of the path"
    )]
    fn cpu(q: Option<u64>, p: u64) -> Option<CpuMax> {
        Some(CpuMax {
            quota_us: q,
            period_us: p,
        })
    }

    fn v(s: &str) -> GoVersion {
        GoVersion::parse_runtime(s).unwrap()
    }

    #[test]
    fn the_tightest_quota_on_the_path_wins() {
        let levels = [
            Level {
                path: "/go.slice".into(),
                cpu_max: cpu(Some(100_000), 100_000),
            },
            Level {
                path: "/go.slice/go-app.slice".into(),
                cpu_max: cpu(Some(300_000), 100_000),
            },
            Level {
                path: "/go.slice/go-app.slice/app.service".into(),
                cpu_max: cpu(None, 100_000),
            },
        ];
        let e = effective_limit(&levels, 8);
        assert_eq!(e.cpus, 1);
        assert!(e.why.contains("/go.slice"), "{}", e.why);
        // The affinity mask is tighter still.
        assert_eq!(effective_limit(&levels[1..], 2).cpus, 2);
        assert_eq!(effective_limit(&[], 4).cpus, 4);
    }

    #[test]
    fn the_runtime_pick_depends_on_the_go_version() {
        let leaf_none = cpu(None, 100_000);
        // Before 1.25: the CPU count, whatever the quota.
        assert_eq!(
            runtime_pick(v("go1.22.12"), cpu(Some(100_000), 100_000), 8, None).cpus,
            8
        );
        // 1.25: the leaf's quota, at least 2, at most the CPUs.
        assert_eq!(
            runtime_pick(v("go1.25.0"), cpu(Some(350_000), 100_000), 8, None).cpus,
            4
        );
        assert_eq!(
            runtime_pick(v("go1.25.1"), cpu(Some(50_000), 100_000), 8, None).cpus,
            2
        );
        assert_eq!(
            runtime_pick(v("go1.25.1"), cpu(Some(900_000), 100_000), 4, None).cpus,
            4
        );
        // An ancestor's quota is not seen: the leaf has none.
        assert_eq!(runtime_pick(v("go1.25.1"), leaf_none, 8, None).cpus, 8);
        assert_eq!(
            runtime_pick(
                v("go1.26.0"),
                cpu(Some(100_000), 100_000),
                8,
                Some("madvdontneed=1,containermaxprocs=0")
            )
            .cpus,
            8
        );
        assert!(v("go1.25rc1") >= CGROUP_AWARE_SINCE);
        assert!(v("go1.24.9") < CGROUP_AWARE_SINCE);
    }

    #[test]
    fn slices_nest_by_dashes_and_quotas_compare_by_ratio() {
        assert_eq!(slice_path("a-b-c"), ["a", "a-b", "a-b-c"]);
        assert_eq!(slice_path("go"), ["go"]);
        let t = tightest([
            CpuMax {
                quota_us: Some(200_000),
                period_us: 1_000_000,
            },
            CpuMax {
                quota_us: Some(50_000),
                period_us: 100_000,
            },
            CpuMax {
                quota_us: None,
                period_us: 100_000,
            },
        ]);
        assert_eq!(t.and_then(|c| c.quota_us), Some(200_000));
        assert_eq!(tightest([]), None);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-3,6\n"), Some(5));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }
}
