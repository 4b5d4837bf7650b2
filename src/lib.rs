//! holdfast: a declarative host-hardening agent.
//!
//! The crate is split into a pure core, which parses, validates, compares and
//! plans without touching the outside world, and an I/O edge that reads and
//! writes the host through an injected [`host::HostRoot`]. See ARCHITECTURE.md
//! for the map.

pub mod area;
pub mod audit;
pub mod cgroup;
pub mod daemon;
pub mod engine;
pub mod exec;
pub mod gobuild;
pub mod harden;
pub mod host;
pub mod item;
pub mod journal;
pub mod limits;
pub mod modules;
pub mod policy;
pub mod posture;
pub mod report;
pub mod rollback;
pub mod safety;
pub mod services;
pub mod sources;
pub mod sysctl;
pub mod systemd;
