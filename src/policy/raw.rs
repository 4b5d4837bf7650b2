//! The policy as written: serde structs close to the YAML, every value with
//! its location. `validate` turns these into the typed [`super::Policy`].
//!
//! Fields are checked by name here (`deny_unknown_fields`) and by type where
//! YAML's type is enough; everything about meaning is checked in `validate`,
//! so that its messages can say what a value should look like.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDoc {
    pub version: Spanned<Scalar>,
    pub mode: Option<Spanned<String>>,
    /// What to do about vendor sysctl.d files that set a managed key to
    /// another value: `report` or `override`.
    pub sysctl_conflicts: Option<Spanned<String>>,
    pub sysctl: Option<Entries<RawSysctl>>,
    pub limits: Option<Vec<Spanned<RawLimit>>>,
    pub services: Option<Entries<RawService>>,
    pub service_defaults: Option<RawServiceDefaults>,
    pub cgroup: Option<RawCgroup>,
    /// Kernel modules: `NAME: disabled`, or a table with state, unload and
    /// mode.
    pub kernel_modules: Option<Entries<RawModule>>,
    pub safety: Option<RawSafety>,
}

/// A scalar as YAML typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i128),
    Str(String),
    Bool(bool),
    Float(f64),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A sysctl entry: a bare value, or a table with bounds and a mode.
#[derive(Debug)]
pub enum RawSysctl {
    Value(Scalar),
    Table(Box<RawSysctlTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSysctlTable {
    pub value: Option<Spanned<Scalar>>,
    pub min: Option<Spanned<Scalar>>,
    pub max: Option<Spanned<Scalar>>,
    pub mode: Option<Spanned<String>>,
}

/// A kernel module entry: its state alone (`cramfs: disabled`), or a table.
#[derive(Debug)]
pub enum RawModule {
    State(String),
    Table(Box<RawModuleTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModuleTable {
    pub state: Option<Spanned<String>>,
    pub unload: Option<Spanned<Scalar>>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub domain: Spanned<String>,
    pub item: Spanned<String>,
    pub soft: Option<Spanned<Scalar>>,
    pub hard: Option<Spanned<Scalar>>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub slice: Option<Spanned<String>>,
    pub limit_nofile: Option<Spanned<Scalar>>,
    pub no_new_privileges: Option<Spanned<Scalar>>,
    pub seccomp: Option<Spanned<Vec<Spanned<String>>>>,
    pub capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    pub user: Option<Spanned<String>>,
    pub go_runtime: Option<Spanned<RawGoRuntime>>,
    pub go_build: Option<Spanned<RawGoBuild>>,
    pub mode: Option<Spanned<String>>,
}

/// How a service's main binary must have been built.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoBuild {
    pub pie: Option<Spanned<Scalar>>,
    pub stripped: Option<Spanned<Scalar>>,
    pub trimpath: Option<Spanned<Scalar>>,
    pub cgo: Option<Spanned<Scalar>>,
    pub min_version: Option<Spanned<Scalar>>,
}

/// The Go runtime baseline of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoRuntime {
    pub gomaxprocs: Option<Spanned<Scalar>>,
    pub godebug: Option<Spanned<String>>,
    pub gotraceback: Option<Spanned<String>>,
}

/// Defaults for every systemd service (systemd's `DefaultLimitNOFILE=`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceDefaults {
    pub limit_nofile: Option<Spanned<Scalar>>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCgroup {
    pub controllers: Option<Vec<Spanned<String>>>,
    pub slices: Option<Entries<RawSlice>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlice {
    #[serde(rename = "memory.max")]
    pub memory_max: Option<Spanned<Scalar>>,
    #[serde(rename = "memory.high")]
    pub memory_high: Option<Spanned<Scalar>>,
    #[serde(rename = "cpu.max")]
    pub cpu_max: Option<Spanned<Scalar>>,
    #[serde(rename = "pids.max")]
    pub pids_max: Option<Spanned<Scalar>>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSafety {
    /// Percent of the projected CommitLimit kept free when switching
    /// `vm.overcommit_memory` to 2.
    pub overcommit_headroom_percent: Option<Spanned<Scalar>>,
}

/// A YAML mapping kept as an ordered list of located keys and values.
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(Spanned<String>, Spanned<V>)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<Spanned<V>>()?;
                    out.push((key, value));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a string")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
        i128::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom("number too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for RawSysctl {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSysctl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value (number or string) or a mapping with value, min, max, mode")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_bool(v).map(RawSysctl::Value)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_i64(v).map(RawSysctl::Value)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_u64(v).map(RawSysctl::Value)
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_i128(v).map(RawSysctl::Value)
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_u128(v).map(RawSysctl::Value)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_f64(v).map(RawSysctl::Value)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSysctl, E> {
                ScalarVisitor.visit_str(v).map(RawSysctl::Value)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSysctl, A::Error> {
                RawSysctlTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawSysctl::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawModule {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawModule;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a state (`disabled`) or a mapping with state, unload, mode")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawModule, E> {
                Ok(RawModule::State(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawModule, A::Error> {
                RawModuleTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawModule::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}
