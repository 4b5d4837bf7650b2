//! Reading running binaries: each managed service's main process (systemd's
//! `MainPID`) and the file it runs, through `/proc/PID/exe` under the host
//! root. Opening `/proc/PID/exe` opens the running image itself, so a
//! binary replaced on disk since the process started (the link reads
//! `... (deleted)`) is still the one read. Also the cgroup path, its
//! `cpu.max` files and the affinity mask of a process, for the GOMAXPROCS
//! check of `holdfast audit`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::maxprocs::{self, Level};
use super::plan::managed;
use super::{Binary, GoBuildHost, ReadAt, Running, parse};
use crate::cgroup::CpuMax;
use crate::host::{HostRoot, IoError};
use crate::policy::Policy;
use crate::systemd::{self, SystemdClient};

pub fn observe(
    host: &HostRoot,
    client: Option<&dyn SystemdClient>,
    policy: &Policy,
) -> (GoBuildHost, Vec<IoError>) {
    let mut out = GoBuildHost {
        systemd: systemd::is_pid1(host),
        ..GoBuildHost::default()
    };
    if !out.systemd {
        return (out, Vec::new());
    }
    let Some(client) = client else {
        out.not_queried = Some(systemd::foreign_root_note(host));
        return (out, Vec::new());
    };
    for (rule, _) in managed(policy) {
        let running = match client.unit(&rule.unit) {
            Err(e) => Running::Unknown(e.to_string()),
            Ok(info) => match info.main_pid.filter(|p| *p > 0) {
                None => Running::NotRunning,
                Some(pid) => {
                    let (exe, read) = read_exe(host, pid);
                    Running::Binary { pid, exe, read }
                }
            },
        };
        out.units.insert(rule.unit.clone(), running);
    }
    (out, Vec::new())
}

/// A file read by position.
struct FileAt {
    file: File,
    size: u64,
}

impl ReadAt for FileAt {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}

/// Reads and parses the binary a process runs: where `/proc/PID/exe`
/// points, and the parse of the file it opens.
pub fn read_exe(host: &HostRoot, pid: u32) -> (String, Result<Binary, String>) {
    let path = host.path(&format!("proc/{pid}/exe"));
    let exe = std::fs::read_link(&path)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string());
    (exe, read_binary(&path))
}

/// Parses the ELF file at `path`; errors name the path.
pub fn read_binary(path: &std::path::Path) -> Result<Binary, String> {
    let file = File::open(path).map_err(|e| IoError::new("open", path, e).to_string())?;
    let size = file
        .metadata()
        .map_err(|e| IoError::new("stat", path, e).to_string())?
        .len();
    parse(&mut FileAt { file, size }).map_err(|e| format!("{}: {e}", path.display()))
}

/// A process's CPU view: every cgroup on its path with its quota (leaf
/// first), and the number of CPUs its affinity mask allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuView {
    pub levels: Vec<Level>,
    pub affinity: u32,
}

impl CpuView {
    /// The leaf cgroup's `cpu.max` (what Go 1.25+ reads).
    pub fn leaf(&self) -> Option<CpuMax> {
        self.levels.first().and_then(|l| l.cpu_max)
    }
}

/// Reads a process's cgroup path (`/proc/PID/cgroup`), the CPU quota of
/// every cgroup from its own to the root (cgroup v2 `cpu.max`, or v1
/// `cpu.cfs_quota_us`/`cpu.cfs_period_us` where the cpu controller is on
/// v1), and `Cpus_allowed_list` of `/proc/PID/status`. `None` when the
/// process is gone.
pub fn cpu_view(host: &HostRoot, pid: u32) -> Option<CpuView> {
    let cgroup = std::fs::read_to_string(host.path(&format!("proc/{pid}/cgroup"))).ok()?;
    let status = std::fs::read_to_string(host.path(&format!("proc/{pid}/status"))).ok()?;
    let affinity = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(maxprocs::count_cpu_list)
        .unwrap_or_else(|| crate::services::observe::online_cpus(host));
    let mut levels = Vec::new();
    let (v1_cpu, v2) = cgroup_paths(&cgroup);
    if let Some(path) = v1_cpu {
        for dir in ["sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpu"] {
            if host.path(dir).is_dir() {
                for p in ancestors(&path) {
                    let read =
                        |f: &str| std::fs::read_to_string(host.path(&format!("{dir}{p}/{f}"))).ok();
                    let quota = read("cpu.cfs_quota_us").and_then(|q| q.trim().parse::<i64>().ok());
                    let period =
                        read("cpu.cfs_period_us").and_then(|q| q.trim().parse::<u64>().ok());
                    let cpu_max = period.map(|period_us| CpuMax {
                        quota_us: quota.and_then(|q| u64::try_from(q).ok()),
                        period_us,
                    });
                    levels.push(Level { path: p, cpu_max });
                }
                break;
            }
        }
    } else if let Some(path) = v2 {
        let base = ["sys/fs/cgroup", "sys/fs/cgroup/unified"]
            .into_iter()
            .find(|b| host.path(&format!("{b}/cgroup.controllers")).is_file());
        if let Some(base) = base {
            for p in ancestors(&path) {
                let cpu_max = std::fs::read_to_string(host.path(&format!("{base}{p}/cpu.max")))
                    .ok()
                    .and_then(|t| CpuMax::parse(t.trim()).ok());
                levels.push(Level { path: p, cpu_max });
            }
        }
    }
    Some(CpuView { levels, affinity })
}

/// The cgroup of the v1 cpu controller, and the v2 cgroup, from the lines
/// of `/proc/PID/cgroup` (`0::/a/b`, `4:cpu,cpuacct:/a/b`).
pub fn cgroup_paths(text: &str) -> (Option<String>, Option<String>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_string());
        }
    }
    (v1, v2)
}

/// `/a/b/c` → `/a/b/c`, `/a/b`, `/a` (the root cgroup has no quota file).
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "..")
        .collect();
    (1..=parts.len())
        .rev()
        .map(|n| format!("/{}", parts[..n].join("/")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines_and_ancestors() {
        let (v1, v2) = cgroup_paths(
            "12:pids:/x\n4:cpu,cpuacct:/system.slice/a.service\n0::/system.slice/a.service\n",
        );
        assert_eq!(v1.as_deref(), Some("/system.slice/a.service"));
        assert_eq!(v2.as_deref(), Some("/system.slice/a.service"));
        assert_eq!(cgroup_paths("0::/\n"), (None, Some("/".into())));
        assert_eq!(
            ancestors("/a.slice/a-b.slice/x.service"),
            [
                "/a.slice/a-b.slice/x.service",
                "/a.slice/a-b.slice",
                "/a.slice"
            ]
        );
        assert!(ancestors("/").is_empty());
    }

    #[test]
    fn cpu_view_reads_every_quota_on_the_path_of_a_fake_host() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("proc/7/cgroup", "0::/go.slice/go-app.slice/app.service\n");
        w("proc/7/status", "Name:\tapp\nCpus_allowed_list:\t0-3\n");
        w("sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        w("sys/fs/cgroup/go.slice/cpu.max", "50000 100000\n");
        w(
            "sys/fs/cgroup/go.slice/go-app.slice/cpu.max",
            "max 100000\n",
        );
        w(
            "sys/fs/cgroup/go.slice/go-app.slice/app.service/cpu.max",
            "max 100000\n",
        );
        let view = cpu_view(&HostRoot::new(dir.path()), 7).unwrap();
        assert_eq!(view.affinity, 4);
        assert_eq!(view.levels.len(), 3);
        assert_eq!(view.leaf().unwrap().quota_us, None);
        assert_eq!(
            maxprocs::effective_limit(&view.levels, view.affinity).cpus,
            1
        );
        assert_eq!(cpu_view(&HostRoot::new(dir.path()), 8), None);
    }
}
