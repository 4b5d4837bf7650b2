//! Reading limits.conf, limits.d and `fs.nr_open` under the host root: the
//! I/O side of `limits`.

use super::conf;
use super::plan::LimitsHost;
use crate::host::{self, HostRoot, IoError};
use crate::sysctl::SysctlKey;
use crate::sysctl::observe::{Observed, read_key};

pub fn observe(host: &HostRoot) -> (LimitsHost, Vec<IoError>) {
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    let main = host.limits_conf();
    if main.is_file() {
        files.push(main);
    }
    match host::list_files(&host.limits_d(), ".conf") {
        Ok(found) => files.extend(found),
        Err(e) => warnings.push(e),
    }
    let mut lines = Vec::new();
    let mut malformed = Vec::new();
    for file in files {
        match host::read_to_string(&file) {
            Ok(text) => {
                let (l, m) = conf::parse(&file, &text);
                lines.extend(l);
                malformed.extend(m);
            }
            Err(e) => warnings.push(e),
        }
    }
    let managed_path = host.limits_managed_file();
    let managed = host::read_optional_or_warn(&managed_path, &mut warnings);
    let nr_open = SysctlKey::parse("fs.nr_open")
        .ok()
        .and_then(|k| match read_key(host, &k) {
            Observed::Value(v) => v.as_single_int().and_then(|n| u64::try_from(n).ok()),
            _ => None,
        });
    (
        LimitsHost {
            lines,
            malformed,
            managed_path,
            managed,
            nr_open,
        },
        warnings,
    )
}
