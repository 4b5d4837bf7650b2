//! The resource-limit model shared by the policy and (later) the limits.d
//! and systemd backends: pam_limits domains, items and values. Pure, but
//! for `observe`, its I/O side.

pub mod conf;
pub mod observe;
pub mod plan;

use std::fmt;

/// Which limit a line sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitType {
    Soft,
    Hard,
}

impl LimitType {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitType::Soft => "soft",
            LimitType::Hard => "hard",
        }
    }
}

/// A pam_limits item (limits.conf(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitItem {
    Core,
    Data,
    Fsize,
    Memlock,
    Nofile,
    Rss,
    Stack,
    Cpu,
    Nproc,
    As,
    Maxlogins,
    Maxsyslogins,
    Nonewprivs,
    Priority,
    Locks,
    Sigpending,
    Msgqueue,
    Nice,
    Rtprio,
}

impl LimitItem {
    pub const ALL: &'static [(&'static str, LimitItem)] = &[
        ("core", LimitItem::Core),
        ("data", LimitItem::Data),
        ("fsize", LimitItem::Fsize),
        ("memlock", LimitItem::Memlock),
        ("nofile", LimitItem::Nofile),
        ("rss", LimitItem::Rss),
        ("stack", LimitItem::Stack),
        ("cpu", LimitItem::Cpu),
        ("nproc", LimitItem::Nproc),
        ("as", LimitItem::As),
        ("maxlogins", LimitItem::Maxlogins),
        ("maxsyslogins", LimitItem::Maxsyslogins),
        ("nonewprivs", LimitItem::Nonewprivs),
        ("priority", LimitItem::Priority),
        ("locks", LimitItem::Locks),
        ("sigpending", LimitItem::Sigpending),
        ("msgqueue", LimitItem::Msgqueue),
        ("nice", LimitItem::Nice),
        ("rtprio", LimitItem::Rtprio),
    ];

    pub fn parse(s: &str) -> Option<LimitItem> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, i)| *i)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, i)| *i == self)
            .map_or("?", |(n, _)| *n)
    }

    /// Items whose values may be negative (nice levels, priorities).
    pub fn allows_negative(self) -> bool {
        matches!(self, LimitItem::Priority | LimitItem::Nice)
    }
}

impl fmt::Display for LimitItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A limit value: a number or unlimited (`unlimited`, `infinity` or `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitValue {
    Value(i64),
    Unlimited,
}

impl LimitValue {
    /// Whether `self` is at most `other` (unlimited is the largest value).
    pub fn le(self, other: LimitValue) -> bool {
        match (self, other) {
            (_, LimitValue::Unlimited) => true,
            (LimitValue::Unlimited, LimitValue::Value(_)) => false,
            (LimitValue::Value(a), LimitValue::Value(b)) => a <= b,
        }
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Value(n) => write!(f, "{n}"),
            LimitValue::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// A pam_limits domain: who a line applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Domain {
    /// `*`: everyone.
    All,
    /// `@group`.
    Group(String),
    /// `%group` (maxlogins only) or `%`.
    GroupLogins(String),
    /// `uid:uid` range; either end may be open.
    UidRange(Option<u32>, Option<u32>),
    /// `@gid:gid` range; either end may be open.
    GidRange(Option<u32>, Option<u32>),
    /// A user name.
    User(String),
}

impl Domain {
    pub fn parse(s: &str) -> Result<Domain, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.chars().any(char::is_whitespace) {
            return Err("contains white space".into());
        }
        if s.chars().any(char::is_control) {
            return Err("contains a control character".into());
        }
        if s == "*" {
            return Ok(Domain::All);
        }
        if let Some(rest) = s.strip_prefix('%') {
            if rest.contains(['*', ':', '#', '@', '%']) {
                return Err(format!("has an unexpected character in {rest:?}"));
            }
            return Ok(Domain::GroupLogins(rest.to_string()));
        }
        let (is_group, body) = match s.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if body.is_empty() {
            return Err("names no group".into());
        }
        if let Some((lo, hi)) = body.split_once(':') {
            let parse = |t: &str| -> Result<Option<u32>, String> {
                if t.is_empty() {
                    Ok(None)
                } else {
                    t.parse::<u32>()
                        .map(Some)
                        .map_err(|_| format!("has a range end {t:?} that is not a number"))
                }
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if let (Some(a), Some(b)) = (lo, hi)
                && a > b
            {
                return Err(format!("is a range whose start {a} is above its end {b}"));
            }
            return Ok(if is_group {
                Domain::GidRange(lo, hi)
            } else {
                Domain::UidRange(lo, hi)
            });
        }
        if body.contains(['*', ':', '#']) {
            return Err(format!("has an unexpected character in {body:?}"));
        }
        Ok(if is_group {
            Domain::Group(body.to_string())
        } else {
            Domain::User(body.to_string())
        })
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = |v: &Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
        match self {
            Domain::All => f.write_str("*"),
            Domain::Group(g) => write!(f, "@{g}"),
            Domain::GroupLogins(g) => write!(f, "%{g}"),
            Domain::UidRange(a, b) => write!(f, "{}:{}", end(a), end(b)),
            Domain::GidRange(a, b) => write!(f, "@{}:{}", end(a), end(b)),
            Domain::User(u) => f.write_str(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_round_trip() {
        for s in [
            "*",
            "@app",
            "%admins",
            "1000:",
            ":2000",
            "1000:2000",
            "@100:200",
            "alice",
        ] {
            assert_eq!(Domain::parse(s).unwrap().to_string(), s);
        }
        assert!(Domain::parse("2000:1000").is_err());
        assert!(Domain::parse("@").is_err());
        assert!(Domain::parse("a b").is_err());
        assert!(Domain::parse("x:y").is_err());
    }

    #[test]
    fn unlimited_is_largest() {
        assert!(LimitValue::Value(5).le(LimitValue::Unlimited));
        assert!(!LimitValue::Unlimited.le(LimitValue::Value(5)));
        assert!(LimitValue::Value(5).le(LimitValue::Value(5)));
    }
}
