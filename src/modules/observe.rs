//! Reading modprobe.d and the running kernel's modules under the host root.
//! The I/O side of `modules`; it never writes (holdfast's file is written by
//! the engine like every file it owns).

use std::collections::BTreeMap;
use std::io;

use super::conf;
use super::plan::{Loaded, ModulesHost};
use crate::host::{self, HostRoot, IoError, MODPROBE_CONF_DIRS, MODPROBE_OWN_FILE};
use crate::policy::Policy;

/// Reads everything the modules' plan needs. Unreadable files are warnings;
/// they never stop the pass.
pub fn observe(host: &HostRoot, policy: &Policy) -> (ModulesHost, Vec<IoError>) {
    let mut warnings = Vec::new();
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
    let own_path = host.path(MODPROBE_OWN_FILE);
    let own = host::read_optional_or_warn(&own_path, &mut warnings);
    let modules_file = host.path("proc/modules");
    let loaded = match host::read_to_string(&modules_file) {
        Ok(text) => Ok(parse_proc_modules(&text)),
        Err(e) => Err(e.to_string()),
    };
    let builtin = policy
        .kernel_modules
        .keys()
        .filter(|name| {
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
        },
        warnings,
    )
}

fn exists(path: &std::path::Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// `NAME SIZE REFCOUNT USED_BY STATE ADDRESS` per line; `USED_BY` is `-` or
/// a comma-separated list ending in `,`.
pub fn parse_proc_modules(text: &str) -> BTreeMap<String, Loaded> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next()?;
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
             garbage\n",
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got["usb_storage"].used_by, ["uas"]);
        assert_eq!(got["cramfs"].refcount, 0);
        assert!(got["cramfs"].used_by.is_empty());
    }
}
