//! Who else writes a contested setting: the evidence holdfast can name.
//! [`likely_writers`] is pure (the key, its conflicting configuration files,
//! the names of running processes); [`running_processes`] reads
//! `/proc/*/comm` under the host root.
//!
//! Known writers (DESIGN-NOTES §5): kubelet forces `vm.overcommit_memory=1`,
//! `vm.panic_on_oom`, `kernel.panic` and `kernel.panic_on_oops` at start;
//! TuneD re-applies sysctl.d (`reapply_sysctl`); systemd-sysctl re-applies
//! per-interface keys when interfaces appear; container runtimes turn on IP
//! forwarding; configuration-management agents apply their own values.

use crate::host::HostRoot;
use crate::item::{Conflict, ItemKey};

/// A process name (as in /proc/PID/comm, at most 15 bytes) and the keys it
/// is known to write: exact keys, prefixes ending in `.`, or `*` for any.
const KNOWN_WRITERS: &[(&str, &[&str], &str)] = &[
    (
        "kubelet",
        &[
            "vm.overcommit_memory",
            "vm.panic_on_oom",
            "kernel.panic",
            "kernel.panic_on_oops",
            "kernel.keys.root_maxkeys",
            "kernel.keys.root_maxbytes",
        ],
        "kubelet sets these at start (--protect-kernel-defaults=false)",
    ),
    (
        "k3s-server",
        &[
            "vm.overcommit_memory",
            "vm.panic_on_oom",
            "kernel.panic",
            "kernel.panic_on_oops",
        ],
        "k3s embeds the kubelet",
    ),
    (
        "k3s-agent",
        &[
            "vm.overcommit_memory",
            "vm.panic_on_oom",
            "kernel.panic",
            "kernel.panic_on_oops",
        ],
        "k3s embeds the kubelet",
    ),
    ("tuned", &["*"], "TuneD re-applies its profile and sysctl.d"),
    ("systemd-sysctl", &["*"], "systemd-sysctl applies sysctl.d"),
    ("sysctl", &["*"], "a sysctl command is running"),
    (
        "dockerd",
        &[
            "net.ipv4.ip_forward",
            "net.ipv4.conf.",
            "net.ipv6.conf.",
            "net.bridge.",
        ],
        "dockerd enables forwarding for its networks",
    ),
    (
        "containerd",
        &["net.ipv4.ip_forward", "net.ipv4.conf.", "net.bridge."],
        "CNI plugins set forwarding",
    ),
    (
        "NetworkManager",
        &["net.ipv4.conf.", "net.ipv6.conf."],
        "NetworkManager sets per-interface keys",
    ),
    (
        "firewalld",
        &["net.ipv4.ip_forward", "net.ipv6.conf."],
        "firewalld sets forwarding for its zones",
    ),
    ("puppet", &["*"], "a configuration-management agent"),
    ("chef-client", &["*"], "a configuration-management agent"),
    ("salt-minion", &["*"], "a configuration-management agent"),
];

fn writes(patterns: &[&str], key: &str) -> bool {
    patterns
        .iter()
        .any(|p| *p == "*" || *p == key || (p.ends_with('.') && key.starts_with(p)))
}

/// Configuration-management agents, which may write any setting.
const ANY_SETTING_WRITERS: &[&str] = &["puppet", "chef-client", "salt-minion"];

/// The likely writers of a setting, most specific evidence first: other
/// configuration files that set it to another value, then running
/// processes known to write it. The sysctl writers (systemd-sysctl, TuneD,
/// kubelet, ...) are named only for sysctls; for other settings only the
/// agents that may write anything are.
pub fn likely_writers(key: &ItemKey, conflicts: &[Conflict], running: &[String]) -> Vec<String> {
    let sysctl = key.sysctl().map(super::super::sysctl::SysctlKey::as_str);
    let mut out: Vec<String> = conflicts
        .iter()
        .map(|c| {
            let reapplied = if sysctl.is_some() {
                " (re-applied by systemd-sysctl, `sysctl --system` or TuneD)"
            } else {
                ""
            };
            format!(
                "{}:{} sets {}{reapplied}",
                c.file.display(),
                c.line,
                c.value
            )
        })
        .collect();
    for (name, patterns, why) in KNOWN_WRITERS {
        let writes_it = match sysctl {
            Some(k) => writes(patterns, k),
            None => ANY_SETTING_WRITERS.contains(name),
        };
        if writes_it && running.iter().any(|r| r == name) {
            out.push(format!("process {name} is running: {why}"));
        }
    }
    out
}

/// The names of the processes running on the host (`/proc/*/comm`),
/// sorted and deduplicated. Unreadable entries (processes that exited while
/// we looked) are skipped.
pub fn running_processes(host: &HostRoot) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(host.path("proc")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim_end().to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sysctl(k: &str) -> ItemKey {
        ItemKey::Sysctl(crate::sysctl::SysctlKey::parse(k).unwrap())
    }

    #[test]
    fn sysctl_writers_are_not_named_for_other_settings() {
        let slice = ItemKey::SliceKnob {
            unit: "go-app.slice".into(),
            knob: crate::cgroup::knob::KnobKind::MemoryMax,
        };
        let running = vec!["tuned".to_string(), "puppet".to_string()];
        let got = likely_writers(&slice, &[], &running);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("puppet"), "{got:#?}");
    }

    #[test]
    fn names_conflicting_files_then_known_processes() {
        let conflicts = [Conflict {
            file: PathBuf::from("/etc/sysctl.d/90-k8s.conf"),
            line: 2,
            value: "1".into(),
            wins_at_boot: false,
        }];
        let running = vec![
            "kubelet".to_string(),
            "sshd".to_string(),
            "tuned".to_string(),
        ];
        let got = likely_writers(&sysctl("vm.overcommit_memory"), &conflicts, &running);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(
            got[0].starts_with("/etc/sysctl.d/90-k8s.conf:2 sets 1"),
            "{got:#?}"
        );
        assert!(got[1].contains("kubelet"), "{got:#?}");
        assert!(got[2].contains("tuned"), "{got:#?}");
        // kubelet does not touch somaxconn; nothing known runs: no evidence.
        assert!(likely_writers(&sysctl("net.core.somaxconn"), &[], &["kubelet".into()]).is_empty());
        // Prefix patterns.
        assert_eq!(
            likely_writers(
                &sysctl("net.ipv4.conf.eth0.forwarding"),
                &[],
                &["dockerd".into()]
            )
            .len(),
            1
        );
    }

    #[test]
    fn reads_process_names_under_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, comm) in [("1", "init\n"), ("42", "kubelet\n"), ("43", "kubelet\n")] {
            let p = dir.path().join("proc").join(pid);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("comm"), comm).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("proc/sys")).unwrap();
        let host = HostRoot::new(dir.path());
        assert_eq!(running_processes(&host), ["init", "kubelet"]);
    }
}
