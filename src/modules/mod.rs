//! Kernel modules (`kernel_modules` in the policy): keeping modules a
//! hardening baseline disables out of the kernel. The module root holds the
//! value type the policy and the planner share; `conf` reads modprobe.d as
//! modprobe does (pure), `plan` judges each module and plans holdfast's
//! modprobe.d file (pure), `observe` reads the files and the running kernel.

pub mod conf;
pub mod observe;
pub mod plan;

use std::fmt;

/// A module name as the kernel and modprobe know it: `-` and `_` are the
/// same character to both (kmod's `underscores()`), so names compare with
/// `_` (`usb-storage` is `usb_storage`); the policy's spelling is kept for
/// the lines holdfast writes, which compliance content matches as written.
#[derive(Debug, Clone)]
pub struct ModuleName {
    name: String,
    written: String,
}

impl PartialEq for ModuleName {
    fn eq(&self, other: &ModuleName) -> bool {
        self.name == other.name
    }
}

impl Eq for ModuleName {}

impl PartialOrd for ModuleName {
    fn partial_cmp(&self, other: &ModuleName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ModuleName {
    fn cmp(&self, other: &ModuleName) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

impl std::hash::Hash for ModuleName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// Why a policy's module name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than the kernel's {MODULE_NAME_MAX} characters")]
    TooLong,
    #[error("has {0:?}, which no module name has (letters, digits, `_` and `-` only)")]
    BadChar(char),
}

/// The kernel's `MODULE_NAME_LEN` less its terminating NUL.
pub const MODULE_NAME_MAX: usize = 55;

impl ModuleName {
    pub fn parse(name: &str) -> Result<ModuleName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MODULE_NAME_MAX {
            return Err(NameError::TooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(ModuleName {
            name: name.replace('-', "_"),
            written: name.to_string(),
        })
    }

    /// The name as the kernel has it (/proc/modules, /sys/module), and as
    /// modprobe compares it.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The name as the policy wrote it.
    pub fn written(&self) -> &str {
        &self.written
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_and_underscores_are_one_name() {
        assert_eq!(
            ModuleName::parse("usb-storage").unwrap(),
            ModuleName::parse("usb_storage").unwrap()
        );
        let name = ModuleName::parse("usb-storage").unwrap();
        assert_eq!(
            (name.as_str(), name.written()),
            ("usb_storage", "usb-storage")
        );
        assert_eq!(ModuleName::parse(""), Err(NameError::Empty));
        assert_eq!(ModuleName::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(ModuleName::parse(&"x".repeat(56)), Err(NameError::TooLong));
    }
}
