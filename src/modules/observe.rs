//! Reading modprobe.d and the running kernel's modules under the host root.
//! The I/O side of `modules`; it never writes (holdfast's file is written by
//! the engine like every file it owns).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::conf;
use super::plan::{KernelIndex, Loaded, ModulesHost};
use crate::host::{self, HostRoot, IoError, MODPROBE_CONF_DIRS, MODPROBE_OWN_FILE};
use crate::policy::Policy;

/// Reads everything the modules' plan needs. Unreadable files are warnings;
/// they never stop the pass.
pub fn observe(host: &HostRoot, policy: &Policy) -> (ModulesHost, Vec<IoError>) {
    let mut warnings = Vec::new();
    let own_path = host.path(MODPROBE_OWN_FILE);
    let own = host::read_optional_or_warn(&own_path, &mut warnings);
    if policy.kernel_modules.is_empty() {
        // Only holdfast's file matters (one left by an earlier policy).
        let host = ModulesHost {
            lines: Vec::new(),
            own_path,
            own,
            loaded: Ok(BTreeMap::new()),
            builtin: Vec::new(),
            kernel: Err("no module in the policy".into()),
        };
        return (host, warnings);
    }
    let wanted: BTreeSet<&str> = policy
        .kernel_modules
        .keys()
        .map(super::ModuleName::as_str)
        .collect();
    let mut candidates = Vec::new();
    for (idx, dir) in MODPROBE_CONF_DIRS.iter().enumerate() {
        match host::list_files(&host.path(dir), ".conf") {
            Ok(files) => candidates.extend(files.into_iter().map(|f| (idx, f))),
            Err(e) => warnings.push(e),
        }
    }
    let mut lines = Vec::new();
    for file in crate::sysctl::conf::boot_order(candidates) {
        match host::read_to_string(&file) {
            Ok(text) => lines.extend(conf::parse(&file, &text)),
            Err(e) => warnings.push(e),
        }
    }
    let modules_file = host.path("proc/modules");
    let loaded = match host::read_to_string(&modules_file) {
        Ok(text) => Ok(parse_proc_modules(&text, |name| wanted.contains(name))),
        Err(e) => Err(e.to_string()),
    };
    let kernel = read_kernel_index(host, |name| wanted.contains(name));
    // Built in: listed in modules.builtin, or (a kernel without that file)
    // a /sys/module directory with no `initstate` and no /proc/modules line.
    // A built-in module without parameters has no /sys/module directory.
    let builtin = policy
        .kernel_modules
        .keys()
        .filter(|name| {
            if let Ok(k) = &kernel
                && k.builtin.contains(name.as_str())
            {
                return true;
            }
            let in_proc = loaded.as_ref().is_ok_and(|l| l.contains_key(name.as_str()));
            let sys = host.path(&format!("sys/module/{}", name.as_str()));
            !in_proc && sys.is_dir() && !exists(&sys.join("initstate"))
        })
        .map(|name| name.as_str().to_string())
        .collect();
    (
        ModulesHost {
            lines,
            own_path,
            own,
            loaded,
            builtin,
            kernel,
        },
        warnings,
    )
}

/// The running kernel's module index: its release (kernel.osrelease), and
/// which `wanted` names `modules.dep` and `modules.builtin` of its module
/// directory list (/lib/modules/RELEASE, or /usr/lib/modules/RELEASE where
/// /lib is not merged into /usr). Only those are kept: a distribution's
/// kernel lists thousands. `Err` says why it could not be read: then no
/// module is said to be missing from the kernel.
fn read_kernel_index(
    host: &HostRoot,
    wanted: impl Fn(&str) -> bool,
) -> Result<KernelIndex, String> {
    let release_file = host.path("proc/sys/kernel/osrelease");
    let release = host::read_to_string(&release_file)
        .map_err(|e| e.to_string())?
        .trim()
        .to_string();
    let dirs = [
        host.path(&format!("lib/modules/{release}")),
        host.path(&format!("usr/lib/modules/{release}")),
    ];
    let Some(dir) = dirs.iter().find(|d| d.join("modules.dep").is_file()) else {
        return Err(format!(
            "no modules.dep for kernel {release} in /lib/modules or /usr/lib/modules"
        ));
    };
    let modules = names_in(&dir.join("modules.dep"), &wanted)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    // A kernel may list no built-in modules (no modules.builtin at all).
    let builtin = names_in(&dir.join("modules.builtin"), &wanted)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    Ok(KernelIndex {
        release,
        modules,
        builtin,
    })
}

/// The `wanted` module names a `modules.dep` or `modules.builtin` lists,
/// read line by line (a distribution's modules.dep is some 400 KiB, which a
/// daemon should not hold, even briefly); `None` when the file is absent.
fn names_in(
    path: &std::path::Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Option<BTreeSet<String>>, IoError> {
    use std::io::BufRead;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoError::new("open", path, e)),
    };
    let mut reader = io::BufReader::with_capacity(16 * 1024, file);
    let mut names = BTreeSet::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(Some(names)),
            Ok(_) => names.extend(module_name(&line).filter(|n| wanted(n))),
            Err(e) => return Err(IoError::new("read", path, e)),
        }
    }
}

/// The module name of a line of `modules.dep` or `modules.builtin`: the
/// file name of its first path, less `.ko` and any compression suffix, with
/// `-` as `_` (`kernel/drivers/usb/storage/usb-storage.ko.xz: ...` is
/// `usb_storage`).
pub fn module_name(line: &str) -> Option<String> {
    let path = line.split(':').next()?.trim();
    let file = path.rsplit('/').next()?;
    let (name, _) = file.split_once(".ko")?;
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

fn exists(path: &std::path::Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// `NAME SIZE REFCOUNT USED_BY STATE ADDRESS` per line; `USED_BY` is `-` or
/// a comma-separated list ending in `,`. Only the modules `wanted` keeps.
pub fn parse_proc_modules(text: &str, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, Loaded> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next().filter(|n| wanted(n))?;
            let _size = f.next()?;
            let refcount = f.next()?.parse().ok()?;
            let used_by = f
                .next()
                .unwrap_or("-")
                .split(',')
                .filter(|u| !u.is_empty() && *u != "-")
                .map(str::to_string)
                .collect();
            Some((name.to_string(), Loaded { refcount, used_by }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_lines_give_name_references_and_users() {
        let got = parse_proc_modules(
            "usb_storage 81920 1 uas, Live 0x0000000000000000\n\
             cramfs 45056 0 - Live 0x0000000000000000\n\
             ext4 1 0 - Live 0x0000000000000000\n\
             garbage\n",
            |name| name != "ext4",
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got["usb_storage"].used_by, ["uas"]);
        assert_eq!(got["cramfs"].refcount, 0);
        assert!(got["cramfs"].used_by.is_empty());
    }

    #[test]
    fn module_index_lines_give_kernel_names() {
        let lines = [
            "kernel/fs/hfs/hfs.ko.xz: kernel/drivers/cdrom/cdrom.ko.xz\n",
            "kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/sd_mod.ko",
            "kernel/fs/ext4/ext4.ko\n",
            "\n",
            "not a module\n",
            "kernel/fs/.ko\n",
        ];
        let got: Vec<Option<String>> = lines.iter().map(|l| module_name(l)).collect();
        let want = [
            Some("hfs"),
            Some("usb_storage"),
            Some("ext4"),
            None,
            None,
            None,
        ];
        assert_eq!(got, want.map(|w| w.map(str::to_string)));
    }
}
