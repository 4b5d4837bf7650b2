//! Which Go releases still receive security fixes. This table is the one
//! place holdfast knows Go's release history; holdfast has no network
//! access at run time, so it is updated by hand when Go ships a major
//! release (docs/src/go.md, "Updating the Go release table").
//!
//! Go's policy (go.dev/doc/devel/release#policy): each major release is
//! supported until there are two newer major releases; fixes go only to
//! the two newest. Go ships a major release every six months, in February
//! and August.

use super::GoVersion;

/// Go 1.x major releases with their release dates (ISO 8601), oldest first.
/// Reviewed against go.dev/doc/devel/release. Add a line when a new major
/// release ships; nothing else changes.
pub const RELEASES: &[(u32, &str)] = &[
    (18, "2022-03-15"),
    (19, "2022-08-02"),
    (20, "2023-02-01"),
    (21, "2023-08-08"),
    (22, "2024-02-06"),
    (23, "2024-08-13"),
    (24, "2025-02-11"),
    (25, "2025-08-12"),
];

/// How many of the newest major releases Go supports.
pub const SUPPORTED_MAJORS: usize = 2;

/// Whether a release still receives security fixes, as far as the table
/// knows: it is one of the two newest majors in it. A release newer than
/// the table is assumed supported (the table is older than the binary).
pub fn supported(v: GoVersion) -> Support {
    let newest: Vec<u32> = RELEASES
        .iter()
        .rev()
        .take(SUPPORTED_MAJORS)
        .map(|(minor, _)| *minor)
        .collect();
    let Some(&oldest_supported) = newest.last() else {
        return Support::Unknown;
    };
    let newest_known = newest.first().copied().unwrap_or(oldest_supported);
    if v.major != 1 {
        return Support::Unknown;
    }
    if v.minor > newest_known {
        Support::NewerThanTable
    } else if v.minor >= oldest_supported {
        Support::Supported
    } else {
        Support::Unsupported {
            supported: newest
                .iter()
                .rev()
                .map(|m| format!("1.{m}"))
                .collect::<Vec<_>>()
                .join(" and "),
        }
    }
}

/// What the table says of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Supported,
    /// No longer receives security fixes; `supported` names the releases
    /// that do (`1.24 and 1.25`).
    Unsupported {
        supported: String,
    },
    /// Newer than every release in the table.
    NewerThanTable,
    Unknown,
}

/// The newest release in the table and its date.
pub fn newest() -> Option<(u32, &'static str)> {
    RELEASES.last().copied()
}

/// Whether the table is probably out of date on `today` (`YYYY-MM-DD`):
/// more than seven months after its newest release, Go has shipped
/// another one (six-month cadence, plus a month of slack). Dates compare
/// as text because they are ISO 8601.
pub fn stale_on(today: &str) -> bool {
    let Some((_, date)) = newest() else {
        return true;
    };
    let (Some(y), Some(m)) = (
        date.get(0..4).and_then(|y| y.parse::<u32>().ok()),
        date.get(5..7).and_then(|m| m.parse::<u32>().ok()),
    ) else {
        return true;
    };
    let months = y * 12 + (m - 1) + 7;
    let due = format!("{:04}-{:02}{}", months / 12, months % 12 + 1, &date[7..]);
    today > due.as_str()
}

/// The UTC date (`YYYY-MM-DD`) of a time, for [`stale_on`].
pub fn date_of(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_ordered_and_dated() {
        for w in RELEASES.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "consecutive majors");
            assert!(w[1].1 > w[0].1, "dates increase");
        }
        for (_, d) in RELEASES {
            assert!(d.len() == 10 && d.as_bytes()[4] == b'-' && d.as_bytes()[7] == b'-');
        }
    }

    #[test]
    fn only_the_two_newest_majors_are_supported() {
        fn v(s: &str) -> GoVersion {
            GoVersion::parse(s).unwrap()
        }
        let (newest, _) = newest().unwrap();
        assert_eq!(supported(v(&format!("1.{newest}.3"))), Support::Supported);
        assert_eq!(
            supported(v(&format!("1.{}", newest - 1))),
            Support::Supported
        );
        assert_eq!(
            supported(v(&format!("1.{}", newest - 2))),
            Support::Unsupported {
                supported: format!("1.{} and 1.{newest}", newest - 1)
            }
        );
        assert_eq!(
            supported(v("1.12")),
            supported(v(&format!("1.{}", newest - 2)))
        );
        assert_eq!(
            supported(v(&format!("1.{}", newest + 1))),
            Support::NewerThanTable
        );
    }

    #[test]
    fn dates_are_civil_utc_dates() {
        let at = |secs| date_of(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_795_996_800), "2026-11-30");
    }

    #[test]
    fn the_table_goes_stale_seven_months_after_its_newest_release() {
        let (_, date) = newest().unwrap();
        assert!(!stale_on(date));
        let y: u32 = date[0..4].parse().unwrap();
        assert!(stale_on(&format!("{}-12-31", y + 1)));
    }
}
