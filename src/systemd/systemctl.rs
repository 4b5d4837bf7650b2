//! The production [`SystemdClient`]: the `systemctl` command. Used only
//! when the host root is `/` and systemd is PID 1.

use std::process::Command;

use super::{
    SHOW_PROPERTIES, SystemdClient, SystemdError, UnitInfo, parse_default_limit_nofile, parse_show,
    parse_unit_list,
};
use crate::host::HostRoot;
use crate::limits::LimitValue;

/// The production client: `systemctl`.
#[derive(Debug, Default)]
pub struct Systemctl;

impl Systemctl {
    fn run(&self, args: &[&str]) -> Result<String, SystemdError> {
        let err = |message: String| SystemdError {
            args: args.join(" "),
            message,
        };
        let out = Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| err(format!("cannot run systemctl: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }
}

impl Systemctl {
    /// After a restart, waits (at most `limit`) until the unit's main
    /// process has exec'd its program and settled. `systemctl restart` of a
    /// simple service returns once systemd has forked; until the exec the
    /// child is still systemd's (named `(prog)`), with systemd's environment
    /// and capabilities, and for a moment after it the kernel is still
    /// laying out the new environment (/proc/PID/environ reads empty or
    /// short). Verifying then would report transient drift, so the wait ends
    /// when the name is the program's and two reads of its environment
    /// 100 ms apart agree. This client only ever serves the host it runs on,
    /// so /proc is the real one.
    fn wait_for_exec(&self, unit: &str, limit: std::time::Duration) {
        let host = HostRoot::new("/");
        let deadline = std::time::Instant::now() + limit;
        let pause = std::time::Duration::from_millis(100);
        while std::time::Instant::now() < deadline {
            let Some(pid) = self.unit(unit).ok().and_then(|i| i.main_pid) else {
                return;
            };
            let read = |file: &str| std::fs::read(host.path(&format!("proc/{pid}/{file}"))).ok();
            let Some(comm) = read("comm") else {
                return;
            };
            if !comm.starts_with(b"(") {
                let first = read("environ");
                std::thread::sleep(pause);
                if first.as_ref().is_some_and(|e| !e.is_empty()) && read("environ") == first {
                    return;
                }
                continue;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl SystemdClient for Systemctl {
    fn unit(&self, unit: &str) -> Result<UnitInfo, SystemdError> {
        let mut args = vec!["show", unit];
        for p in SHOW_PROPERTIES {
            args.push("-p");
            args.push(p);
        }
        self.run(&args).map(|out| parse_show(&out))
    }

    fn default_limit_nofile(&self) -> Result<Option<(LimitValue, LimitValue)>, SystemdError> {
        let out = self.run(&[
            "show",
            "-p",
            "DefaultLimitNOFILESoft",
            "-p",
            "DefaultLimitNOFILE",
        ])?;
        Ok(parse_default_limit_nofile(&out))
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.run(&["daemon-reload"]).map(|_| ())
    }

    fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.run(&["restart", unit])?;
        self.wait_for_exec(unit, std::time::Duration::from_secs(10));
        Ok(())
    }

    fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.run(&["start", unit]).map(|_| ())
    }

    fn running_services(&self) -> Result<Vec<String>, SystemdError> {
        let out = self.run(&[
            "list-units",
            "--type=service",
            "--state=running",
            "--no-legend",
            "--plain",
        ])?;
        Ok(parse_unit_list(&out))
    }

    fn set_properties_runtime(
        &self,
        unit: &str,
        assignments: &[String],
    ) -> Result<(), SystemdError> {
        let mut args = vec!["set-property", "--runtime", unit];
        args.extend(assignments.iter().map(String::as_str));
        self.run(&args).map(|_| ())
    }
}
