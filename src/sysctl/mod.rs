//! The sysctl model: keys, values and expectations, and how an observed value
//! compares with an expectation. Pure: no I/O here (see `observe` for that).
//!
//! Kernel facts this follows (see the design notes):
//! - reads end with a newline and multi-value keys are tab-separated, so values
//!   are compared as whitespace-split tokens;
//! - writes parse numbers with base 0 (`050` is octal), so holdfast always
//!   writes canonical decimal, and the full vector for multi-value keys.

pub mod apply;
pub mod conf;
pub mod converge;
pub mod observe;
pub mod plan;
pub mod vendor;

use std::borrow::Cow;
use std::fmt;

/// A validated sysctl key in dotted form, e.g. `net.ipv4.ip_local_port_range`.
///
/// As with sysctl(8), a `/` inside a dotted key stands for a literal dot in
/// one path component, so `net.ipv4.conf.eth0/100.rp_filter` addresses
/// `/proc/sys/net/ipv4/conf/eth0.100/rp_filter`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlKey(String);

/// Why a string is not a sysctl key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is empty")]
    Empty,
    #[error("has fewer than two dot-separated parts")]
    NoDot,
    #[error("has an empty part")]
    EmptyPart,
    #[error("contains {0:?}, which cannot appear in a sysctl name")]
    BadChar(char),
    #[error("is written as a path; write it with dots")]
    PathForm,
    #[error("has a path component `.` or `..`")]
    DotComponent,
    #[error("starts with {0:?}; sysctl names start with a letter or a digit")]
    BadStart(char),
}

impl SysctlKey {
    pub fn parse(s: &str) -> Result<SysctlKey, KeyError> {
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        // systemd-sysctl reads a key whose first separator is `/` as a path
        // (its dots then belong to names): `net/ipv4.x` would be written as
        // `net.ipv4.x` at runtime but mean `net/ipv4.x` in sysctl.d.
        if s.find(['.', '/']).is_some_and(|i| s.as_bytes()[i] == b'/') {
            return Err(KeyError::PathForm);
        }
        // Every top-level directory of /proc/sys is a word. In sysctl.d a
        // line starting with `#` or `;` is a comment and `-` a flag, so such
        // a key would vanish from (or change) holdfast's persisted file.
        if let Some(c) = s.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
            return Err(KeyError::BadStart(c));
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '=' | '['))
        {
            return Err(KeyError::BadChar(c));
        }
        // One pass over the parts, allocating nothing: a policy has
        // hundreds of keys and this runs for each.
        let (mut parts, mut empty, mut dot) = (0, false, false);
        for part in s.split('.') {
            parts += 1;
            empty |= part.is_empty();
            // The path component is the part with `/` read as `.`: `/` is
            // `.` and `//` is `..`.
            dot |= part == "/" || part == "//";
        }
        if parts < 2 {
            return Err(KeyError::NoDot);
        }
        if empty {
            return Err(KeyError::EmptyPart);
        }
        if dot {
            return Err(KeyError::DotComponent);
        }
        Ok(SysctlKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components of the key's path under /proc/sys (borrowed from the
    /// key unless a `/` stands for a dot in it).
    pub fn path_components(&self) -> impl Iterator<Item = Cow<'_, str>> + '_ {
        self.0.split('.').map(|part| {
            if part.contains('/') {
                Cow::Owned(part.replace('/', "."))
            } else {
                Cow::Borrowed(part)
            }
        })
    }

    /// Keys that belong to a network namespace rather than to the whole host.
    pub fn is_per_netns(&self) -> bool {
        self.0.starts_with("net.")
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One whitespace-separated field of a sysctl value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Token {
    /// A decimal integer. i128 holds every u64 and i64 the kernel prints.
    Int(i128),
    /// Anything else (e.g. `kernel.core_pattern`), compared as text.
    Word(String),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Int(n) => write!(f, "{n}"),
            Token::Word(w) => f.write_str(w),
        }
    }
}

/// Why a policy value is not a valid sysctl value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("is empty")]
    Empty,
    #[error(
        "{0:?} is not canonical decimal: the kernel reads numbers with base 0 (`050` is octal 40, `0x32` is 50); write {1}"
    )]
    NotDecimal(String, String),
    #[error("{0:?} is not a valid number")]
    BadNumber(String),
    #[error("{0:?}: the kernel does not read a leading `+`; write {1}")]
    PlusSign(String, String),
}

/// A sysctl value as a list of tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SysctlValue(Vec<Token>);

impl SysctlValue {
    pub fn tokens(&self) -> &[Token] {
        &self.0
    }

    pub fn from_int(n: i128) -> SysctlValue {
        SysctlValue(vec![Token::Int(n)])
    }

    /// Parses a value read from /proc/sys. Never fails: a field that is not a
    /// decimal integer is kept as a word.
    pub fn from_kernel(text: &str) -> SysctlValue {
        SysctlValue(
            text.split_whitespace()
                .map(|t| {
                    // Only what the kernel prints as a number: Rust's parse
                    // also takes `+5`, which the kernel refuses to read.
                    let digits = t.strip_prefix('-').unwrap_or(t);
                    let decimal = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                    match t.parse::<i128>() {
                        Ok(n) if decimal => Token::Int(n),
                        _ => Token::Word(t.to_string()),
                    }
                })
                .collect(),
        )
    }

    /// Parses a value written in a policy. Fields that look numeric must be
    /// canonical decimal; anything else is a word.
    pub fn from_policy(text: &str) -> Result<SysctlValue, ValueError> {
        let mut tokens = Vec::new();
        for field in text.split_whitespace() {
            tokens.push(parse_policy_token(field)?);
        }
        if tokens.is_empty() {
            return Err(ValueError::Empty);
        }
        Ok(SysctlValue(tokens))
    }

    /// The single integer of a scalar numeric value.
    pub fn as_single_int(&self) -> Option<i128> {
        match self.0.as_slice() {
            [Token::Int(n)] => Some(*n),
            _ => None,
        }
    }

    /// The canonical text written to the kernel and to sysctl.d: decimal
    /// numbers, fields separated by one space, the full vector.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&t.to_string());
        }
        out
    }
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

fn parse_policy_token(field: &str) -> Result<Token, ValueError> {
    // `+5` would be a word here but a number to the kernel (and to
    // `from_kernel`): the value would never compare equal. Found by the
    // policy fuzz target.
    if let Some(rest) = field.strip_prefix('+')
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_digit())
    {
        let plain = rest.trim_start_matches('0');
        return Err(ValueError::PlusSign(
            field.to_string(),
            if plain.is_empty() { "0" } else { plain }.to_string(),
        ));
    }
    let digits = field.strip_prefix('-').unwrap_or(field);
    let is_hex = (digits.starts_with("0x") || digits.starts_with("0X"))
        && digits.len() > 2
        && digits[2..].chars().all(|c| c.is_ascii_hexdigit());
    let is_decimal = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit());
    if !is_hex && !is_decimal {
        // Not a number: a word such as a cpu list (`0-1`), a path, a UUID.
        return Ok(Token::Word(field.to_string()));
    }
    if is_hex || (digits.len() > 1 && digits.starts_with('0')) {
        let suggestion =
            parse_base0(field).map_or_else(|| "plain decimal".to_string(), |n| n.to_string());
        return Err(ValueError::NotDecimal(field.to_string(), suggestion));
    }
    field
        .parse::<i128>()
        .map(Token::Int)
        .map_err(|_| ValueError::BadNumber(field.to_string()))
}

/// What the kernel would make of a number (strtol with base 0); used only to
/// suggest the decimal the user meant.
fn parse_base0(field: &str) -> Option<i128> {
    let (neg, digits) = match field.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, field),
    };
    let n = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i128::from_str_radix(hex, 16).ok()?
    } else {
        i128::from_str_radix(digits, 8).ok()?
    };
    Some(if neg { -n } else { n })
}

/// What the policy asks of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this value (all fields).
    Exact(SysctlValue),
    /// A single number within bounds (either may be open).
    Range {
        min: Option<i128>,
        max: Option<i128>,
    },
}

/// How an observed value compares with an expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    Compliant,
    /// Not compliant; `target` is the value holdfast would write.
    Drifted {
        target: SysctlValue,
    },
    /// The observed value cannot be compared (e.g. a bound on a multi-value
    /// key); the string says why.
    Incomparable(String),
}

impl Expect {
    pub fn compare(&self, actual: &SysctlValue) -> Comparison {
        match self {
            Expect::Exact(want) => {
                if want == actual {
                    Comparison::Compliant
                } else {
                    Comparison::Drifted {
                        target: want.clone(),
                    }
                }
            }
            Expect::Range { min, max } => {
                let Some(n) = actual.as_single_int() else {
                    return Comparison::Incomparable(format!(
                        "a min/max bound needs a single number, the kernel has {actual:?}",
                        actual = actual.canonical()
                    ));
                };
                match (min, max) {
                    (Some(lo), _) if n < *lo => Comparison::Drifted {
                        target: SysctlValue::from_int(*lo),
                    },
                    (_, Some(hi)) if n > *hi => Comparison::Drifted {
                        target: SysctlValue::from_int(*hi),
                    },
                    _ => Comparison::Compliant,
                }
            }
        }
    }

    /// The value to persist (or write) when nothing better is known: the
    /// exact value, else the bound.
    pub fn default_target(&self) -> SysctlValue {
        match self {
            Expect::Exact(v) => v.clone(),
            Expect::Range { min: Some(lo), .. } => SysctlValue::from_int(*lo),
            Expect::Range { max: Some(hi), .. } => SysctlValue::from_int(*hi),
            // Validation rejects a range with neither bound.
            Expect::Range {
                min: None,
                max: None,
            } => SysctlValue(Vec::new()),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Exact(v) => write!(f, "{v}"),
            Expect::Range {
                min: Some(lo),
                max: Some(hi),
            } => write!(f, "{lo}..{hi}"),
            Expect::Range { min: Some(lo), .. } => write!(f, ">= {lo}"),
            Expect::Range { max: Some(hi), .. } => write!(f, "<= {hi}"),
            Expect::Range { .. } => f.write_str("any"),
        }
    }
}

/// What reading a key's /proc/sys file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Value(SysctlValue),
    /// ENOENT: this kernel has no such key (yet: keys appear when a module
    /// loads or an interface comes up).
    Absent,
    /// EACCES/EPERM on read: a write-only key such as `vm.drop_caches`, or a
    /// key this process may not read.
    Unreadable(String),
    /// Any other failure, with the path and the OS error.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let ok = |s: &str| {
            SysctlKey::parse(s)
                .map(|k| k.path_components().map(Cow::into_owned).collect::<Vec<_>>())
        };
        assert_eq!(ok("vm.swappiness").unwrap(), ["vm", "swappiness"]);
        assert_eq!(
            ok("net.ipv4.conf.eth0/100.rp_filter").unwrap(),
            ["net", "ipv4", "conf", "eth0.100", "rp_filter"]
        );
        assert_eq!(ok("swappiness"), Err(KeyError::NoDot));
        assert_eq!(ok("vm..swappiness"), Err(KeyError::EmptyPart));
        assert_eq!(ok("vm.swappiness."), Err(KeyError::EmptyPart));
        assert_eq!(ok("vm/swappiness"), Err(KeyError::PathForm));
        // Found by the policy fuzz target: systemd-sysctl reads this as the
        // path net/ipv4.ip_forward, holdfast would write net.ipv4/ip_forward.
        assert_eq!(ok("net/ipv4.ip_forward"), Err(KeyError::PathForm));
        // Also found by it: these start a comment or a flag in sysctl.d.
        assert_eq!(ok(";vm.swappiness"), Err(KeyError::BadStart(';')));
        assert_eq!(ok("#vm.swappiness"), Err(KeyError::BadStart('#')));
        assert_eq!(ok("-vm.swappiness"), Err(KeyError::BadStart('-')));
        assert_eq!(ok("net.ipv4.conf.*.rp_filter"), Err(KeyError::BadChar('*')));
        assert_eq!(ok("vm.swap piness"), Err(KeyError::BadChar(' ')));
        assert_eq!(ok("net.x./"), Err(KeyError::DotComponent));
        assert_eq!(ok("net.x.//"), Err(KeyError::DotComponent));
        assert_eq!(ok(""), Err(KeyError::Empty));
    }

    /// The checks as first written (collecting the parts and the path
    /// components); `parse` must judge every string as this does.
    fn parse_by_definition(s: &str) -> Result<SysctlKey, KeyError> {
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        if s.find(['.', '/']).is_some_and(|i| s.as_bytes()[i] == b'/') {
            return Err(KeyError::PathForm);
        }
        if let Some(c) = s.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
            return Err(KeyError::BadStart(c));
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '=' | '['))
        {
            return Err(KeyError::BadChar(c));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() < 2 {
            return Err(KeyError::NoDot);
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(KeyError::EmptyPart);
        }
        let components: Vec<String> = parts.iter().map(|p| p.replace('/', ".")).collect();
        if components
            .iter()
            .any(|c| c == "." || c == ".." || c.is_empty())
        {
            return Err(KeyError::DotComponent);
        }
        Ok(SysctlKey(s.to_string()))
    }

    #[test]
    fn parse_agrees_with_the_definition_on_every_short_string() {
        // Every string of up to five characters over an alphabet that
        // reaches each check: separators, a bad start, a bad character.
        let alphabet = ['a', '1', '.', '/', '-', ' ', '*'];
        let mut strings = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for s in &strings {
                for c in alphabet {
                    longer.push(format!("{s}{c}"));
                }
            }
            for s in &longer {
                assert_eq!(SysctlKey::parse(s), parse_by_definition(s), "{s:?}");
                checked += 1;
            }
            strings = longer;
        }
        assert_eq!(SysctlKey::parse(""), parse_by_definition(""));
        assert!(checked > 19_000);
        // Path components: borrowed, or with `/` read as `.`.
        let key = SysctlKey::parse("net.ipv4.conf.eth0/100.rp_filter").unwrap();
        let components: Vec<Cow<'_, str>> = key.path_components().collect();
        assert!(matches!(components[0], Cow::Borrowed("net")));
        assert_eq!(components[3], "eth0.100");
    }

    /// Found by the policy fuzz target: `+2768` was a word in a policy and
    /// a number read back, so it could never be compliant.
    #[test]
    fn a_plus_sign_is_not_a_number_anywhere() {
        assert_eq!(
            SysctlValue::from_policy("+2768 60999"),
            Err(ValueError::PlusSign("+2768".into(), "2768".into()))
        );
        assert_eq!(SysctlValue::from_kernel("+5").canonical(), "+5");
        assert_eq!(SysctlValue::from_kernel("+5").as_single_int(), None);
        assert_eq!(SysctlValue::from_kernel("-5").as_single_int(), Some(-5));
    }

    #[test]
    fn kernel_values_compare_as_tokens() {
        let a = SysctlValue::from_kernel("32768\t60999\n");
        let b = SysctlValue::from_policy("32768   60999").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "32768 60999");
        assert_eq!(
            SysctlValue::from_kernel("18446744073709551615\n").as_single_int(),
            Some(18446744073709551615)
        );
        assert_eq!(
            SysctlValue::from_kernel("|/usr/lib/systemd/systemd-coredump %P\n").canonical(),
            "|/usr/lib/systemd/systemd-coredump %P"
        );
    }

    #[test]
    fn policy_numbers_must_be_canonical_decimal() {
        assert_eq!(
            SysctlValue::from_policy("050"),
            Err(ValueError::NotDecimal("050".into(), "40".into()))
        );
        assert_eq!(
            SysctlValue::from_policy("0x32"),
            Err(ValueError::NotDecimal("0x32".into(), "50".into()))
        );
        assert_eq!(
            SysctlValue::from_policy("1".repeat(50).as_str()),
            Err(ValueError::BadNumber("1".repeat(50)))
        );
        // Words that merely start with a digit are words, not numbers.
        for word in [
            "0-1",
            "6.18.44-fc",
            "00:00:00",
            "00000000-00000000",
            "12abc",
        ] {
            assert_eq!(
                SysctlValue::from_policy(word).unwrap().tokens(),
                [Token::Word(word.into())]
            );
        }
        assert_eq!(SysctlValue::from_policy("  "), Err(ValueError::Empty));
        assert_eq!(
            SysctlValue::from_policy("-1 0").unwrap().canonical(),
            "-1 0"
        );
        assert_eq!(
            SysctlValue::from_policy("0").unwrap().as_single_int(),
            Some(0)
        );
    }

    #[test]
    fn comparisons() {
        let v = |s: &str| SysctlValue::from_kernel(s);
        let exact = Expect::Exact(v("2"));
        assert_eq!(exact.compare(&v("2\n")), Comparison::Compliant);
        assert_eq!(
            exact.compare(&v("0\n")),
            Comparison::Drifted { target: v("2") }
        );
        let min = Expect::Range {
            min: Some(4096),
            max: None,
        };
        assert_eq!(min.compare(&v("8192")), Comparison::Compliant);
        assert_eq!(min.compare(&v("4096")), Comparison::Compliant);
        assert_eq!(
            min.compare(&v("128")),
            Comparison::Drifted { target: v("4096") }
        );
        let max = Expect::Range {
            min: None,
            max: Some(0),
        };
        assert_eq!(max.compare(&v("2")), Comparison::Drifted { target: v("0") });
        assert!(matches!(
            max.compare(&v("1 2")),
            Comparison::Incomparable(_)
        ));
        // A multi-value exact expectation with fewer fields is drift.
        assert_eq!(
            Expect::Exact(v("4 4 1 7")).compare(&v("4 4 1")),
            Comparison::Drifted {
                target: v("4 4 1 7")
            }
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever whitespace the kernel or a person uses, a value reads
        /// back equal to its canonical form, and the canonical form is what
        /// a policy would write.
        #[test]
        fn canonical_form_round_trips(fields in prop::collection::vec(any::<i64>(), 1..6), tabs in any::<bool>()) {
            let sep = if tabs { "\t" } else { "   " };
            let text: Vec<String> = fields.iter().map(std::string::ToString::to_string).collect();
            let kernel = SysctlValue::from_kernel(&format!("{}\n", text.join(sep)));
            let policy = SysctlValue::from_policy(&text.join(" ")).unwrap();
            prop_assert_eq!(&kernel, &policy);
            prop_assert_eq!(SysctlValue::from_policy(&kernel.canonical()).unwrap(), kernel);
        }

        /// A bound either holds or the planned target satisfies it.
        #[test]
        fn range_targets_satisfy_the_range(n in any::<i64>(), lo in -1000i64..1000, width in 0i64..1000) {
            let expect = Expect::Range { min: Some(lo.into()), max: Some((lo + width).into()) };
            match expect.compare(&SysctlValue::from_int(n.into())) {
                Comparison::Compliant => prop_assert!(i128::from(n) >= lo.into() && i128::from(n) <= (lo + width).into()),
                Comparison::Drifted { target } => prop_assert_eq!(expect.compare(&target), Comparison::Compliant),
                Comparison::Incomparable(_) => prop_assert!(false),
            }
        }
    }
}
