//! Linux capabilities: names and bit numbers (capabilities(7)), and the
//! decoding of the `Cap*` masks in /proc/PID/status. Pure.

/// Every capability the kernel defines, by bit number.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Capabilities that amount to root on their own, or nearly: an audit
/// finding at high severity when a service holds one.
pub const DANGEROUS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETFCAP",
    "CAP_NET_ADMIN",
    "CAP_BPF",
    "CAP_SYS_BOOT",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_CHOWN",
    "CAP_FOWNER",
];

/// The bit of a capability name (`CAP_NET_BIND_SERVICE` or
/// `cap_net_bind_service`).
pub fn bit(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    CAPABILITIES
        .iter()
        .position(|c| *c == upper)
        .and_then(|p| u32::try_from(p).ok())
}

/// The mask of a set of names; `None` when a name is unknown.
pub fn mask(names: &[String]) -> Option<u64> {
    names
        .iter()
        .try_fold(0u64, |m, n| bit(n).map(|b| m | (1u64 << b)))
}

/// The names of the bits set in `mask`; unknown bits as `cap_N`.
pub fn decode(mask: u64) -> Vec<String> {
    (0..64u32)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAPABILITIES
                .get(b as usize)
                .map_or_else(|| format!("cap_{b}"), std::string::ToString::to_string)
        })
        .collect()
}

/// Parses a `CapEff:`-style hex mask.
pub fn parse_mask(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_real_masks() {
        // A root shell's full set on a 6.x kernel (41 capabilities).
        let full = parse_mask("000001ffffffffff").unwrap();
        assert_eq!(decode(full).len(), 41);
        assert_eq!(
            decode(full).last().map(String::as_str),
            Some("CAP_CHECKPOINT_RESTORE")
        );
        // CAP_NET_BIND_SERVICE alone.
        assert_eq!(
            decode(parse_mask("0000000000000400").unwrap()),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(decode(0), Vec::<String>::new());
        assert_eq!(decode(1 << 50), ["cap_50"]);
        assert_eq!(
            mask(&["CAP_NET_BIND_SERVICE".into(), "cap_chown".into()]),
            Some(0x401)
        );
        assert_eq!(mask(&["CAP_NOPE".into()]), None);
    }
}
