//! `holdfast serve` hardens itself once its sockets are bound, as the
//! production baseline asks of every service: no_new_privs, a seccomp
//! allow-list of exactly the system calls it uses (`syscalls.rs`), and only
//! the capabilities its job needs.

#[cfg(target_arch = "x86_64")]
mod syscalls;

use std::collections::{BTreeMap, HashSet};

use caps::{CapSet, Capability};

/// The capabilities `serve` keeps when it has them (the unit's bounding
/// set says why): net.* sysctls, kernel.* sysctls, vm.mmap_min_addr,
/// /proc/PID/environ of other users' services, and unloading a module
/// with `unload: true` (which the shipped unit does not grant; the drop-in
/// in docs/src/kernel-modules.md does, and the allow-list has
/// delete_module only, no loading).
pub const KEEP: &[Capability] = &[
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_RAWIO,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_MODULE,
];

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(String),
    #[error("cannot drop capabilities: {0}")]
    Capabilities(String),
    #[error("cannot build the seccomp filter: {0}")]
    Filter(String),
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(String),
}

/// What `lock_down` did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardened {
    pub capabilities_kept: Vec<String>,
    /// `None` on architectures without a measured list.
    pub seccomp_syscalls: Option<usize>,
}

/// The system calls allowed after start-up, by name.
pub fn allowed_syscalls() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        syscalls::ALLOWED.iter().map(|(n, _)| *n).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// Sets no_new_privs, drops every capability but `KEEP` (from the bounding,
/// permitted, effective, inheritable and ambient sets), and installs the
/// seccomp allow-list on every thread of the process (TSYNC). Irreversible:
/// call it once the sockets are bound and before serving.
pub fn lock_down(seccomp: bool) -> Result<Hardened, HardenError> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| HardenError::NoNewPrivs(e.to_string()))?;
    let capabilities_kept = drop_capabilities()?;
    let seccomp_syscalls = if seccomp { install_filter()? } else { None };
    Ok(Hardened {
        capabilities_kept,
        seccomp_syscalls,
    })
}

fn drop_capabilities() -> Result<Vec<String>, HardenError> {
    let err = |e: caps::errors::CapsError| HardenError::Capabilities(e.to_string());
    let keep: HashSet<Capability> = KEEP.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    // The bounding set can only shrink with CAP_SETPCAP, which is dropped
    // last (with the other permitted capabilities).
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::read(None, CapSet::Bounding).map_err(err)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    let kept: HashSet<Capability> = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(err)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err)?;
    let mut names: Vec<String> = kept.iter().map(std::string::ToString::to_string).collect();
    names.sort();
    Ok(names)
}

#[cfg(target_arch = "x86_64")]
fn install_filter() -> Result<Option<usize>, HardenError> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = syscalls::ALLOWED
        .iter()
        .map(|(_, nr)| (*nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        // Everything else fails with EPERM instead of killing the daemon.
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| HardenError::Filter(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| HardenError::Filter(e.to_string()))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| HardenError::Seccomp(e.to_string()))?;
    Ok(Some(syscalls::ALLOWED.len()))
}

#[cfg(not(target_arch = "x86_64"))]
fn install_filter() -> Result<Option<usize>, HardenError> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_has_no_duplicates_and_no_dangerous_calls() {
        let names = allowed_syscalls();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len());
        for forbidden in [
            "ptrace",
            "mount",
            "umount2",
            "reboot",
            "kexec_load",
            "init_module",
            "bpf",
            "setuid",
            "sethostname",
            "unshare",
            "setns",
            "personality",
        ] {
            assert!(
                !unique.contains(forbidden),
                "{forbidden} must not be allowed"
            );
        }
        #[cfg(target_arch = "x86_64")]
        assert!(unique.contains("inotify_add_watch") && unique.contains("execve"));
    }

    /// Runs in a child process (this test binary re-executed), since the
    /// filter cannot be removed once installed.
    #[test]
    fn a_call_outside_the_list_is_refused_and_allowed_calls_work() {
        if std::env::var_os("HOLDFAST_SECCOMP_PROBE").is_some() {
            let hardened = lock_down(true).expect("lock down");
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            assert!(status.contains("NoNewPrivs:\t1"), "{status}");
            #[cfg(target_arch = "x86_64")]
            {
                assert!(hardened.seccomp_syscalls.is_some());
                assert!(status.contains("Seccomp:\t2"), "{status}");
                // getpgid is not on the list (harmless, so a broken filter
                // cannot hurt the machine running the test): EPERM.
                let err = nix::unistd::getpgid(None).unwrap_err();
                assert_eq!(err, nix::errno::Errno::EPERM);
            }
            // Allowed calls still work.
            assert!(std::fs::read_to_string("/proc/self/comm").is_ok());
            println!("PROBE-OK");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "harden::tests::a_call_outside_the_list_is_refused_and_allowed_calls_work",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HOLDFAST_SECCOMP_PROBE", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("PROBE-OK"), "{text}");
    }

    /// A panic in the hardened daemon must end in SIGABRT (the release
    /// profile aborts on panic; systemd sees a core-dump-worthy abort and
    /// restarts), not in SIGSEGV because abort() was refused its tgkill.
    /// The child installs the same lock-down as `serve`, then panics the way
    /// `panic = "abort"` does: the panic hook, then abort().
    #[test]
    fn a_panic_after_lock_down_ends_in_sigabrt() {
        if std::env::var_os("HOLDFAST_ABORT_PROBE").is_some() {
            lock_down(true).expect("lock down");
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default_hook(info);
                std::process::abort();
            }));
            panic!("probe panic after lock-down");
        }
        use std::os::unix::process::ExitStatusExt;
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "harden::tests::a_panic_after_lock_down_ends_in_sigabrt",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HOLDFAST_ABORT_PROBE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("probe panic after lock-down"), "{stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{:?}: {stderr}",
            out.status
        );
    }
}
