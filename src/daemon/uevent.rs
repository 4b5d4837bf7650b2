//! The kernel's announcements of modules that load and unload: uevents on
//! the `NETLINK_KOBJECT_UEVENT` socket (`add@/module/NAME`,
//! `remove@/module/NAME`, `SUBSYSTEM=module`). The daemon listens on the
//! kernel's multicast group (not udev's, which repeats them later and
//! only when udev runs), on a thread of its own, so that a module the policy
//! disables is reported the moment it loads, not at the next rescan.
//!
//! The parsing is pure; the socket and the thread are the only I/O.
//!
//! # Caveats
//! - The kernel sends module uevents to sockets in the initial network
//!   namespace only: a daemon in another namespace hears nothing, and the
//!   rescan covers.
//! - A burst larger than the socket's buffer loses messages (`ENOBUFS`): the
//!   listener then reports [`UEvent::Lost`], and the daemon runs a full pass.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};

/// The kernel's multicast group on the uevent socket (udev's is 2).
const KERNEL_GROUP: u32 = 1;
/// A uevent is at most a few KiB (the kernel's `UEVENT_BUFFER_SIZE` is 2048
/// for the variables).
const BUFFER: usize = 8192;

/// What the listener reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UEvent {
    /// A module loaded (`loaded`) or unloaded, by its kernel name (`_`,
    /// never `-`).
    Module { name: String, loaded: bool },
    /// Messages were lost: whatever they said is not known.
    Lost,
}

/// A module's load or unload from one uevent message; `None` for any other
/// message (another subsystem, another action, udev's own format).
pub fn parse(msg: &[u8]) -> Option<UEvent> {
    let mut fields = msg
        .split(|b| *b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok());
    // The kernel's header is ACTION@DEVPATH; udev's starts "libudev".
    let (action, devpath) = fields.next()?.split_once('@')?;
    let mut subsystem = None;
    for field in fields {
        if let Some(s) = field.strip_prefix("SUBSYSTEM=") {
            subsystem = Some(s);
        }
    }
    if subsystem != Some("module") {
        return None;
    }
    let name = devpath.strip_prefix("/module/")?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let loaded = match action {
        "add" => true,
        "remove" => false,
        _ => return None,
    };
    Some(UEvent::Module {
        name: name.replace('-', "_"),
        loaded,
    })
}

/// Listens on the kernel's uevent group from a thread of its own, and gives
/// `sink` each module event (and [`UEvent::Lost`] after an overflow) until
/// it returns `false`. The error is the socket's: no such socket here (a
/// kernel without it, a seccomp filter), or no right to bind it.
pub fn listen(sink: Box<dyn Fn(UEvent) -> bool + Send>) -> Result<(), String> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(|e| format!("uevent socket: {e}"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))
        .map_err(|e| format!("bind the uevent socket to the kernel's group: {e}"))?;
    std::thread::Builder::new()
        .name("holdfast-uevent".into())
        .spawn(move || {
            let mut buffer = vec![0u8; BUFFER];
            loop {
                let event = match recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
                    Ok(n) => parse(&buffer[..n]),
                    Err(Errno::EINTR) => continue,
                    Err(Errno::ENOBUFS) => Some(UEvent::Lost),
                    Err(e) => {
                        tracing::warn!(
                            "kernel uevents: {e}; module loads are found by the rescan from now on"
                        );
                        return;
                    }
                };
                if let Some(event) = event
                    && !sink(event)
                {
                    return;
                }
            }
        })
        .map_err(|e| format!("start the uevent thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(parts: &[&str]) -> Vec<u8> {
        parts.join("\0").into_bytes()
    }

    #[test]
    fn module_loads_and_unloads_are_read_from_the_kernels_messages() {
        let add = msg(&[
            "add@/module/usb-storage",
            "ACTION=add",
            "DEVPATH=/module/usb-storage",
            "SUBSYSTEM=module",
            "SEQNUM=4242",
            "",
        ]);
        assert_eq!(
            parse(&add),
            Some(UEvent::Module {
                name: "usb_storage".into(),
                loaded: true
            })
        );
        let remove = msg(&["remove@/module/hfs", "ACTION=remove", "SUBSYSTEM=module"]);
        assert_eq!(
            parse(&remove),
            Some(UEvent::Module {
                name: "hfs".into(),
                loaded: false
            })
        );
    }

    #[test]
    fn other_messages_are_not_module_events() {
        // Another subsystem, a module's parameter directory, a change, udev's
        // own header, garbage.
        for m in [
            msg(&["add@/devices/virtual/net/veth0", "SUBSYSTEM=net"]),
            msg(&["add@/module/hfs/holders", "SUBSYSTEM=module"]),
            msg(&["change@/module/hfs", "SUBSYSTEM=module"]),
            msg(&["libudev", "add@/module/hfs", "SUBSYSTEM=module"]),
            b"\xff\xfe@".to_vec(),
            Vec::new(),
            msg(&["add@/module/", "SUBSYSTEM=module"]),
        ] {
            assert_eq!(parse(&m), None, "{m:?}");
        }
    }
}
