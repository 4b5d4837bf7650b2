//! Reading and writing sysctls under the host root, and reading the sysctl.d
//! configuration that boot will apply. This is the I/O side of `sysctl`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use super::Observed;
use super::conf::{self, Assignment, BootLines};
use super::plan::{self, SysctlHost};
use super::vendor::{EtcEntry, SameName, VendorFile};
use super::{SysctlKey, SysctlValue};
use crate::host::{self, HostRoot, IoError, SYSCTL_CONF_DIRS, SYSCTL_PERSIST_FILE};
use crate::item::OWN_UNIT_FILE_MARK;
use crate::policy::Policy;
use crate::safety::{MemInfo, OvercommitKey};

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
    let (ConfFiles { boot, vendor }, mut warnings) = read_conf(host);
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
        boot: BootLines::new(boot),
        meminfo,
        persisted,
        persist_plan: None,
        persist_path,
        vendor,
    };
    (state, warnings)
}

/// Reads the sysctl.d configuration again into `observed` (after the pass
/// wrote or removed a copy of a vendor file, which changes what boot
/// applies).
pub fn reread_conf(host: &HostRoot, observed: &mut SysctlHost) -> Vec<IoError> {
    let (conf, warnings) = read_conf(host);
    observed.boot = BootLines::new(conf.boot);
    observed.vendor = conf.vendor;
    warnings
}

/// Reads again the policy's keys among `keys` into `observed` (a key pass:
/// an event named them), with the overcommit keys and /proc/meminfo when
/// the gate judges one of them. Returns the keys read: those the pass may
/// plan and write. A key that reads empty is left out and keeps its last
/// value: a write in progress that truncated first (a regular file, as in a
/// fake root; procfs never reads empty), whose end fires another event.
/// Acting on the empty value would mark the key failed and drop it from the
/// persisted file.
pub fn observe_keys(
    host: &HostRoot,
    policy: &Policy,
    observed: &mut SysctlHost,
    keys: &BTreeSet<SysctlKey>,
) -> BTreeSet<SysctlKey> {
    let mut refresh: BTreeSet<SysctlKey> = keys
        .iter()
        .filter(|k| policy.sysctls.contains_key(*k))
        .cloned()
        .collect();
    let gate = plan::needs_meminfo(policy)
        && refresh
            .iter()
            .any(|k| OvercommitKey::from_sysctl(k.as_str()).is_some());
    if gate {
        refresh.extend(
            OvercommitKey::ALL
                .iter()
                .filter_map(|k| SysctlKey::parse(k.as_sysctl()).ok()),
        );
        observed.meminfo = host::read_optional(&host.meminfo())
            .ok()
            .flatten()
            .as_deref()
            .and_then(MemInfo::parse);
    }
    refresh.retain(|k| {
        let now = read_key(host, k);
        if let Observed::Value(v) = &now
            && v.tokens().is_empty()
        {
            return false;
        }
        observed.values.insert(k.clone(), now);
        true
    });
    refresh
}

pub fn read_key(host: &HostRoot, key: &SysctlKey) -> Observed {
    let path = host.sysctl_path(key);
    match host::read_kernel_file(&path) {
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
    let (conf, errors) = read_conf(host);
    (conf.boot, errors)
}

/// What the sysctl.d directories hold.
pub struct ConfFiles {
    /// The assignments boot applies, in boot order, but those of holdfast's
    /// own file.
    pub boot: Vec<Assignment>,
    /// Every vendor file with what `/etc/sysctl.d` has of its name, and
    /// holdfast's copies whose vendor file is gone.
    pub vendor: Vec<SameName>,
}

/// Reads the sysctl.d directories once: the files boot applies (each read
/// once), and for `sysctl_conflicts: override` the vendor files with what
/// `/etc/sysctl.d` has of their names (a vendor file masked by holdfast's
/// copy is read too, to refresh the copy when it changes).
pub fn read_conf(host: &HostRoot) -> (ConfFiles, Vec<IoError>) {
    let mut candidates = Vec::new();
    let mut errors = Vec::new();
    for (idx, dir) in SYSCTL_CONF_DIRS.iter().enumerate() {
        match host::list_files_and_masks(&host.path(dir), ".conf") {
            Ok(files) => candidates.extend(files.into_iter().map(|f| (idx, f))),
            Err(e) => errors.push(e),
        }
    }
    // The vendor file of each name: the first outside /etc (directories
    // are listed highest priority first).
    let mut vendors: BTreeMap<String, (usize, PathBuf)> = BTreeMap::new();
    for (idx, path) in &candidates {
        if *idx == 0 {
            continue;
        }
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            vendors
                .entry(name.to_string())
                .or_insert_with(|| (*idx, path.clone()));
        }
    }
    let mut files = conf::boot_order(candidates);
    // `sysctl --system` reads /etc/sysctl.conf after the directories.
    let legacy = host.path("etc/sysctl.conf");
    if legacy.is_file() && !files.iter().any(|f| same_file(f, &legacy)) {
        files.push(legacy);
    }
    let etc_dir = host.path(SYSCTL_CONF_DIRS[0]);
    let mut assignments = Vec::new();
    // The texts of the files read that concern copies: vendor files and
    // /etc files of a vendor file's name or with holdfast's mark.
    let mut texts: HashMap<PathBuf, String> = HashMap::new();
    let mut own_copies: Vec<String> = Vec::new();
    let persist_name = Path::new(SYSCTL_PERSIST_FILE).file_name();
    // holdfast's own file is read apart (`SysctlHost::persisted`) and is
    // never a competitor of its own keys: its lines are not parsed here.
    let persist_path = host.sysctl_persist_file();
    for file in files {
        if file == persist_path {
            continue;
        }
        match host::read_to_string(&file) {
            Ok(text) => {
                assignments.extend(conf::parse(&file, &text));
                let name = file.file_name();
                let in_etc = file.parent() == Some(etc_dir.as_path());
                let name_str = name.and_then(|n| n.to_str());
                if in_etc && name != persist_name && text.starts_with(OWN_UNIT_FILE_MARK) {
                    own_copies.extend(name_str.map(str::to_string));
                    texts.insert(file, text);
                } else if !in_etc || name_str.is_some_and(|n| vendors.contains_key(n)) {
                    texts.insert(file, text);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let mut names: Vec<String> = vendors.keys().cloned().collect();
    names.extend(own_copies.into_iter().filter(|n| !vendors.contains_key(n)));
    names.sort();
    let mut vendor = Vec::new();
    for name in names {
        if Path::new(&name).file_name() == persist_name {
            continue;
        }
        let etc_path = etc_dir.join(&name);
        let etc = match etc_entry(&etc_path, texts.get(&etc_path)) {
            Ok(e) => e,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let file = vendors.get(&name).map(|(idx, path)| {
            let text = match (&etc, texts.get(path)) {
                (EtcEntry::Foreign(_), _) => None,
                (_, Some(t)) => Some(t.clone()),
                // Masked by holdfast's copy: read for the copy's sake.
                (_, None) => host::read_to_string(path).map_err(|e| errors.push(e)).ok(),
            };
            VendorFile {
                path: path.clone(),
                shown: format!("/{}/{name}", SYSCTL_CONF_DIRS[*idx]),
                text,
            }
        });
        vendor.push(SameName {
            etc_path,
            etc,
            vendor: file,
        });
    }
    (
        ConfFiles {
            boot: assignments,
            vendor,
        },
        errors,
    )
}

/// What `/etc/sysctl.d` has at `path` (`text`: its content, when it was
/// read as a file boot applies).
fn etc_entry(path: &Path, text: Option<&String>) -> Result<EtcEntry, IoError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(EtcEntry::Absent),
        Err(e) => return Err(IoError::new("stat", path, e)),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| IoError::new("read link", path, e))?;
        return Ok(EtcEntry::Foreign(format!("a link to {}", target.display())));
    }
    if !meta.is_file() {
        return Ok(EtcEntry::Foreign("not a regular file".into()));
    }
    let text = match text {
        Some(t) => t.clone(),
        None => host::read_to_string(path)?,
    };
    Ok(if text.starts_with(OWN_UNIT_FILE_MARK) {
        EtcEntry::Ours(text)
    } else {
        EtcEntry::Foreign("a file holdfast did not write".into())
    })
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

    #[test]
    fn vendor_files_with_what_etc_has_of_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let host = HostRoot::new(root);
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        write("usr/lib/sysctl.d/50-default.conf", "vm.swappiness = 60\n");
        write("lib/sysctl.d/50-default.conf", "vm.swappiness = 70\n");
        write("usr/lib/sysctl.d/60-masked.conf", "vm.swappiness = 61\n");
        write("run/sysctl.d/70-site.conf", "vm.swappiness = 62\n");
        write("usr/lib/sysctl.d/70-site.conf", "vm.swappiness = 63\n");
        write("usr/lib/sysctl.d/80-copied.conf", "vm.swappiness = 64\n");
        write(
            "etc/sysctl.d/80-copied.conf",
            "# Managed by holdfast: a copy\n#vm.swappiness = 64\n",
        );
        write(
            "etc/sysctl.d/90-gone.conf",
            "# Managed by holdfast: a copy\n",
        );
        write("etc/sysctl.d/70-site.conf", "vm.swappiness = 1\n");
        std::os::unix::fs::symlink("/dev/null", root.join("etc/sysctl.d/60-masked.conf")).unwrap();
        let (conf, errors) = read_conf(&host);
        assert!(errors.is_empty(), "{errors:?}");
        // A link to /dev/null masks the vendor file at boot.
        let boot: Vec<String> = conf
            .boot
            .iter()
            .map(|a| {
                a.value
                    .as_ref()
                    .map_or_else(String::new, SysctlValue::canonical)
            })
            .collect();
        assert_eq!(boot, ["60", "1"]);
        let summary: Vec<(String, String, Option<String>, Option<String>)> = conf
            .vendor
            .iter()
            .map(|s| {
                (
                    s.etc_path.strip_prefix(root).unwrap().display().to_string(),
                    match &s.etc {
                        EtcEntry::Absent => "absent".to_string(),
                        EtcEntry::Ours(_) => "ours".to_string(),
                        EtcEntry::Foreign(what) => what.clone(),
                    },
                    s.vendor.as_ref().map(|v| v.shown.clone()),
                    s.vendor.as_ref().and_then(|v| v.text.clone()),
                )
            })
            .collect();
        let v = |shown: &str, text: Option<&str>| (Some(shown.to_string()), text.map(String::from));
        let row = |etc: &str, what: &str, (shown, text): (Option<String>, Option<String>)| {
            (etc.to_string(), what.to_string(), shown, text)
        };
        assert_eq!(
            summary,
            [
                row(
                    "etc/sysctl.d/50-default.conf",
                    "absent",
                    v(
                        "/usr/lib/sysctl.d/50-default.conf",
                        Some("vm.swappiness = 60\n")
                    )
                ),
                row(
                    "etc/sysctl.d/60-masked.conf",
                    "a link to /dev/null",
                    v("/usr/lib/sysctl.d/60-masked.conf", None)
                ),
                row(
                    "etc/sysctl.d/70-site.conf",
                    "a file holdfast did not write",
                    v("/run/sysctl.d/70-site.conf", None)
                ),
                // Masked by holdfast's copy, and read for it.
                row(
                    "etc/sysctl.d/80-copied.conf",
                    "ours",
                    v(
                        "/usr/lib/sysctl.d/80-copied.conf",
                        Some("vm.swappiness = 64\n")
                    )
                ),
                (
                    "etc/sysctl.d/90-gone.conf".into(),
                    "ours".into(),
                    None,
                    None
                ),
            ]
        );
    }
}
