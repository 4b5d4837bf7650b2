//! Reading and writing sysctls under the host root, and reading the sysctl.d
//! configuration that boot will apply. This is the I/O side of `sysctl`.

use std::io;

pub use super::Observed;
use super::conf::{self, Assignment};
use super::plan::{self, SysctlHost};
use super::{SysctlKey, SysctlValue};
use crate::host::{self, HostRoot, IoError, SYSCTL_CONF_DIRS};
use crate::policy::Policy;
use crate::safety::MemInfo;

/// Reads everything the sysctl plan needs. Files that cannot be read are
/// returned as warnings; they never stop the pass.
pub fn observe(host: &HostRoot, policy: &Policy) -> (SysctlHost, Vec<IoError>) {
    let values = plan::keys_to_read(policy)
        .into_iter()
        .map(|k| {
            let observed = read_key(host, &k);
            (k, observed)
        })
        .collect();
    let (boot, mut warnings) = read_boot_config(host);
    // Only the overcommit gate needs /proc/meminfo.
    let meminfo = if plan::needs_meminfo(policy) {
        host::read_optional_or_warn(&host.meminfo(), &mut warnings)
            .as_deref()
            .and_then(MemInfo::parse)
    } else {
        None
    };
    let persist_path = host.sysctl_persist_file();
    let persisted = host::read_optional_or_warn(&persist_path, &mut warnings);
    let state = SysctlHost {
        values,
        boot,
        meminfo,
        persisted,
        persist_path,
    };
    (state, warnings)
}

pub fn read_key(host: &HostRoot, key: &SysctlKey) -> Observed {
    let path = host.sysctl_path(key);
    match std::fs::read_to_string(&path) {
        Ok(text) => Observed::Value(SysctlValue::from_kernel(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Observed::Absent,
        // A path component that is a file, not a directory: no such key.
        Err(e) if e.raw_os_error() == Some(20) => Observed::Absent,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Observed::Unreadable(IoError::new("read", &path, e).to_string())
        }
        Err(e) => Observed::Failed(IoError::new("read", &path, e).to_string()),
    }
}

/// Writes a value in canonical form (decimal numbers, the full vector).
pub fn write_key(host: &HostRoot, key: &SysctlKey, value: &SysctlValue) -> Result<(), IoError> {
    host.write_kernel_file(&host.sysctl_path(key), &format!("{}\n", value.canonical()))
}

/// The sysctl configuration files boot will apply, in order, parsed. Files
/// that cannot be read are returned as errors beside the assignments, so one
/// unreadable file does not hide the others.
pub fn read_boot_config(host: &HostRoot) -> (Vec<Assignment>, Vec<IoError>) {
    let mut candidates = Vec::new();
    let mut errors = Vec::new();
    for (idx, dir) in SYSCTL_CONF_DIRS.iter().enumerate() {
        match host::list_files(&host.path(dir), ".conf") {
            Ok(files) => candidates.extend(files.into_iter().map(|f| (idx, f))),
            Err(e) => errors.push(e),
        }
    }
    let mut files = conf::boot_order(candidates);
    // `sysctl --system` reads /etc/sysctl.conf after the directories.
    let legacy = host.path("etc/sysctl.conf");
    if legacy.is_file() && !files.iter().any(|f| same_file(f, &legacy)) {
        files.push(legacy);
    }
    let mut assignments = Vec::new();
    for file in files {
        match host::read_to_string(&file) {
            Ok(text) => assignments.extend(conf::parse(&file, &text)),
            Err(e) => errors.push(e),
        }
    }
    (assignments, errors)
}

/// Whether two paths are the same file (Debian links 99-sysctl.conf to
/// ../sysctl.conf; reading it twice would report every key as set twice).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn key(s: &str) -> SysctlKey {
        SysctlKey::parse(s).unwrap()
    }

    #[test]
    fn reads_values_absent_and_failed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        fs::create_dir_all(dir.path().join("proc/sys/net/ipv4")).unwrap();
        fs::write(
            dir.path().join("proc/sys/net/ipv4/ip_local_port_range"),
            "32768\t60999\n",
        )
        .unwrap();
        assert_eq!(
            read_key(&host, &key("net.ipv4.ip_local_port_range")),
            Observed::Value(SysctlValue::from_kernel("32768 60999"))
        );
        assert_eq!(read_key(&host, &key("net.ipv4.nope")), Observed::Absent);
        // A component that is a file, not a directory.
        assert_eq!(
            read_key(&host, &key("net.ipv4.ip_local_port_range.x")),
            Observed::Absent
        );
        // A directory where a key was expected.
        assert!(matches!(
            read_key(&host, &key("net.ipv4")),
            Observed::Failed(msg) if msg.contains("proc/sys/net/ipv4")
        ));
    }

    #[test]
    fn boot_config_dedupes_linked_sysctl_conf() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        fs::create_dir_all(dir.path().join("etc/sysctl.d")).unwrap();
        fs::create_dir_all(dir.path().join("usr/lib/sysctl.d")).unwrap();
        fs::write(dir.path().join("etc/sysctl.conf"), "vm.swappiness = 1\n").unwrap();
        std::os::unix::fs::symlink(
            "../sysctl.conf",
            dir.path().join("etc/sysctl.d/99-sysctl.conf"),
        )
        .unwrap();
        fs::write(
            dir.path().join("usr/lib/sysctl.d/50-default.conf"),
            "vm.swappiness = 60\n",
        )
        .unwrap();
        let (assignments, errors) = read_boot_config(&host);
        assert!(errors.is_empty());
        let files: Vec<_> = assignments
            .iter()
            .map(|a| {
                a.file
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            files,
            [
                "usr/lib/sysctl.d/50-default.conf",
                "etc/sysctl.d/99-sysctl.conf"
            ]
        );
    }
}
