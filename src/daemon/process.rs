//! The daemon's own process figures for `/metrics` (the `process_*` names
//! every Prometheus client library exports): resident and virtual memory,
//! CPU seconds, open and allowed file descriptors. Parsing is pure; reading
//! goes through [`host::OWN_PROCESS`], which is always this process's own
//! `/proc/self`, never a path under the host root.
//!
//! Read at scrape time with the calls the daemon's seccomp allow-list
//! already has (`openat`, `read`, `getdents64`, `close`): no `getrusage`
//! or CPU-time clocks.

use std::path::Path;

use crate::host::{self, IoError};
use crate::limits::LimitValue;

/// What `/proc/self/stat` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub virtual_bytes: u64,
    pub resident_bytes: u64,
}

impl ProcStat {
    /// Parses `/proc/PID/stat` (proc(5)). The command name (field 2) is in
    /// parentheses and may itself contain spaces and parentheses, so fields
    /// are counted from the last `)`. `ticks` is `sysconf(_SC_CLK_TCK)`,
    /// `page` the page size.
    #[expect(
        clippy::cast_precision_loss,
        reason = "CPU ticks stay far below 2^52 (a century of CPU time at 100 Hz is 2^39)"
    )]
    pub fn parse(text: &str, ticks: u64, page: u64) -> Option<ProcStat> {
        let after = &text[text.rfind(')')? + 1..];
        // After the name: field 3 (state) is index 0.
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime) = (field(14)?, field(15)?);
        let (vsize, rss) = (field(23)?, field(24)?);
        if ticks == 0 {
            return None;
        }
        Some(ProcStat {
            cpu_seconds: (utime + stime) as f64 / ticks as f64,
            virtual_bytes: vsize,
            resident_bytes: rss.saturating_mul(page),
        })
    }
}

/// The process figures one scrape shows; a figure that could not be read is
/// left out of the exposition rather than shown as 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessFigures {
    pub stat: Option<ProcStat>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Reads this process's figures.
pub fn read() -> ProcessFigures {
    let own = Path::new(host::OWN_PROCESS);
    let stat = host::read_to_string(&own.join("stat"))
        .ok()
        .and_then(|t| ProcStat::parse(&t, clock_ticks(), page_size()));
    let open_fds = count_entries(&own.join("fd")).ok();
    let max_fds = host::read_to_string(&own.join("limits"))
        .ok()
        .and_then(|t| crate::services::parse_proc_nofile(&t))
        .and_then(|(soft, _hard)| match soft {
            LimitValue::Value(n) => u64::try_from(n).ok(),
            LimitValue::Unlimited => None,
        });
    ProcessFigures {
        stat,
        open_fds,
        max_fds,
    }
}

fn count_entries(dir: &Path) -> Result<u64, IoError> {
    let entries = std::fs::read_dir(dir).map_err(|e| IoError::new("list", dir, e))?;
    // The directory handle read_dir holds is one of the entries; it is gone
    // once the count is returned, so it is not counted.
    Ok(entries.filter_map(Result::ok).count().saturating_sub(1) as u64)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value; glibc answers
    // _SC_CLK_TCK from the auxiliary vector without a system call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(0)
}

fn page_size() -> u64 {
    // SAFETY: as above; the page size comes from the auxiliary vector.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_memory_after_a_name_with_spaces_and_parentheses() {
        // A real line of /proc/PID/stat, with a hostile command name.
        let text = "4242 (hold (fast) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 130 0 0 20 0 3 0 123456 9437184 1700 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17000 0 0 0 17 1 0 0 0 0 0\n";
        let s = ProcStat::parse(text, 100, 4096).unwrap();
        assert!((s.cpu_seconds - 3.8).abs() < 1e-9, "{}", s.cpu_seconds);
        assert_eq!(s.virtual_bytes, 9_437_184);
        assert_eq!(s.resident_bytes, 1700 * 4096);
    }

    #[test]
    fn a_truncated_line_or_zero_ticks_gives_nothing() {
        assert_eq!(ProcStat::parse("1 (x) S 1 2 3", 100, 4096), None);
        assert_eq!(ProcStat::parse("no parenthesis", 100, 4096), None);
        let line = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 100 10 0";
        assert!(ProcStat::parse(line, 100, 4096).is_some());
        assert_eq!(ProcStat::parse(line, 0, 4096), None);
    }

    #[test]
    fn this_process_reports_its_own_figures() {
        let f = read();
        let stat = f.stat.expect("/proc/self/stat");
        assert!(stat.resident_bytes > 0);
        assert!(stat.virtual_bytes >= stat.resident_bytes);
        let fds = f.open_fds.expect("/proc/self/fd");
        // stdin, stdout and stderr at least (the test harness keeps them).
        assert!(fds >= 3, "{fds}");
        assert!(f.max_fds.is_some_and(|m| m >= fds));
    }
}
