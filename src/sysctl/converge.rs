//! Writing a pass's sysctls so that every one of them holds when the pass
//! ends, although some writes change other keys as a side effect.
//!
//! Switching IPv4 forwarding off turns `net.ipv4.conf.all.accept_redirects`
//! on; a `conf.default` value is copied to interfaces; IPv6 forwarding is
//! copied to every interface (see [`super::plan::resets_others`]). Verifying
//! each key right after its own write would call a key `corrected` that a
//! later write of the same pass changed again. So the writes go in
//! [`write_order`] (keys that change others first), and only then is every
//! key read back; a key another write disturbed is written again, for at most
//! [`MAX_ROUNDS`] rounds.
//!
//! # Guarantees
//! - Every key the pass wrote is read back after all the pass's writes; an
//!   item is `corrected` only if that final read is compliant.
//! - A key that was compliant and that no write of the pass can disturb is
//!   not read again (a daemon pass that corrects one key costs one write and
//!   one read). When a write may disturb others, every compliant key of the
//!   pass is read again too, and rewritten if it changed.
//! - At most [`MAX_ROUNDS`] writes of one key per pass, so two writers that
//!   undo each other (a kernel quirk, a key the kernel rounds) cannot loop.
//!
//! The I/O comes in as two closures, so the logic is tested against a model
//! of the kernel's side effects.

use super::Observed;
use super::plan::{resets_others, write_order};
use super::{Comparison, Expect, SysctlKey, SysctlValue};

/// How many times one key may be written in one pass.
pub const MAX_ROUNDS: u32 = 3;

/// One key of the pass.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: SysctlKey,
    pub expect: Expect,
    /// The value to write, or `None` for a key that was compliant when the
    /// pass was planned (it is only read again, if a write may disturb it).
    pub write: Option<SysctlValue>,
}

/// What became of one [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not written, and (if read again) still compliant.
    Unchanged,
    /// Written, and compliant when read back after all writes. `disturbed`:
    /// another write of the pass changed it, so it was written again.
    Corrected { now: SysctlValue, disturbed: bool },
    /// A write failed; the explanation from the `write` closure.
    WriteFailed(String),
    /// Still not compliant after the last round. `wrote` is the last value
    /// written (`None`: compliant before, changed by another write of the
    /// pass, and the rounds ran out before it could be written again).
    NotHeld {
        wrote: Option<SysctlValue>,
        now: Observed,
        writes: u32,
    },
}

/// Whether writing `key` may change a key other than itself.
fn may_change_others(key: &SysctlKey) -> bool {
    resets_others(key.as_str()) || key.as_str().starts_with("net.ipv4.conf.default.")
}

/// Writes the targets' values in [`write_order`], reads them back after all
/// writes, and writes again what another write disturbed. Returns one
/// outcome per target, in the targets' order.
pub fn settle(
    targets: &[Target],
    write: &mut dyn FnMut(&SysctlKey, &SysctlValue) -> Result<(), String>,
    read: &mut dyn FnMut(&SysctlKey) -> Observed,
) -> Vec<Outcome> {
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by(|&a, &b| {
        let (ka, kb) = (&targets[a].key, &targets[b].key);
        (write_order(ka.as_str()), ka).cmp(&(write_order(kb.as_str()), kb))
    });
    let mut written: Vec<Option<SysctlValue>> = vec![None; targets.len()];
    let mut writes = vec![0u32; targets.len()];
    let mut failed: Vec<Option<String>> = vec![None; targets.len()];
    let mut last_read: Vec<Option<Observed>> = vec![None; targets.len()];
    let mut pending: Vec<(usize, SysctlValue)> = order
        .iter()
        .filter_map(|&i| targets[i].write.clone().map(|v| (i, v)))
        .collect();
    for round in 1..=MAX_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let mut disturbing = false;
        for (i, value) in pending.drain(..) {
            match write(&targets[i].key, &value) {
                Ok(()) => {
                    disturbing |= may_change_others(&targets[i].key);
                    written[i] = Some(value);
                    writes[i] += 1;
                }
                Err(why) => failed[i] = Some(why),
            }
        }
        // Read back what was written, and, after a write that may change
        // other keys, every key of the pass.
        for &i in &order {
            if failed[i].is_some() || (written[i].is_none() && !disturbing) {
                continue;
            }
            let now = read(&targets[i].key);
            if let Observed::Value(value) = &now
                && let Comparison::Drifted { target } = targets[i].expect.compare(value)
                && round < MAX_ROUNDS
            {
                pending.push((i, target));
            }
            last_read[i] = Some(now);
        }
    }
    (0..targets.len())
        .map(|i| {
            if let Some(why) = failed[i].take() {
                return Outcome::WriteFailed(why);
            }
            let compliant = |o: &Observed| match o {
                Observed::Value(v) => targets[i].expect.compare(v) == Comparison::Compliant,
                _ => false,
            };
            match (last_read[i].take(), written[i].take()) {
                (None, _) => Outcome::Unchanged,
                (Some(Observed::Value(now)), Some(_))
                    if compliant(&Observed::Value(now.clone())) =>
                {
                    Outcome::Corrected {
                        disturbed: writes[i] > 1 || targets[i].write.is_none(),
                        now,
                    }
                }
                (Some(now), None) if compliant(&now) => Outcome::Unchanged,
                (Some(now), wrote) => Outcome::NotHeld {
                    wrote,
                    now,
                    writes: writes[i],
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The kernel's side effects that matter here, as measured on Linux 6.18
    /// in a network namespace: switching IPv4 forwarding sets
    /// `conf.all.accept_redirects` to the opposite and `conf.default.forwarding`
    /// and each interface's forwarding to the new value.
    struct Kernel {
        values: BTreeMap<String, i128>,
        writes: Vec<String>,
    }

    impl Kernel {
        fn new(values: &[(&str, i128)]) -> Kernel {
            Kernel {
                values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                writes: Vec::new(),
            }
        }

        fn write(&mut self, key: &SysctlKey, value: &SysctlValue) -> Result<(), String> {
            let k = key.as_str();
            let n = value.as_single_int().ok_or("not a number")?;
            let old = *self.values.get(k).ok_or("ENOENT")?;
            self.writes.push(format!("{k}={n}"));
            self.values.insert(k.to_string(), n);
            if matches!(k, "net.ipv4.ip_forward" | "net.ipv4.conf.all.forwarding") && old != n {
                self.values.insert("net.ipv4.conf.all.forwarding".into(), n);
                self.values.insert("net.ipv4.ip_forward".into(), n);
                self.values.insert(
                    "net.ipv4.conf.all.accept_redirects".into(),
                    i128::from(n == 0),
                );
                self.values
                    .insert("net.ipv4.conf.default.forwarding".into(), n);
            }
            Ok(())
        }

        fn read(&self, key: &SysctlKey) -> Observed {
            match self.values.get(key.as_str()) {
                Some(v) => Observed::Value(SysctlValue::from_int(*v)),
                None => Observed::Absent,
            }
        }
    }

    fn key(s: &str) -> SysctlKey {
        SysctlKey::parse(s).unwrap()
    }

    fn target(k: &str, want: i128, write: bool) -> Target {
        let value = SysctlValue::from_int(want);
        Target {
            key: key(k),
            expect: Expect::Exact(value.clone()),
            write: write.then_some(value),
        }
    }

    fn run(kernel: &mut Kernel, targets: &[Target]) -> Vec<Outcome> {
        let cell = std::cell::RefCell::new(kernel);
        settle(
            targets,
            &mut |k, v| cell.borrow_mut().write(k, v),
            &mut |k| cell.borrow().read(k),
        )
    }

    #[test]
    fn forwarding_is_written_before_the_keys_it_resets() {
        // Forwarding on, redirects accepted: the CIS settings want both off.
        let mut kernel = Kernel::new(&[
            ("net.ipv4.ip_forward", 1),
            ("net.ipv4.conf.all.forwarding", 1),
            ("net.ipv4.conf.all.accept_redirects", 1),
            ("net.ipv4.conf.default.forwarding", 1),
        ]);
        let targets = [
            target("net.ipv4.conf.all.accept_redirects", 0, true),
            target("net.ipv4.ip_forward", 0, true),
        ];
        let outcomes = run(&mut kernel, &targets);
        assert_eq!(
            kernel.writes,
            [
                "net.ipv4.ip_forward=0",
                "net.ipv4.conf.all.accept_redirects=0"
            ]
        );
        assert!(
            outcomes.iter().all(|o| matches!(
                o,
                Outcome::Corrected {
                    disturbed: false,
                    ..
                }
            )),
            "{outcomes:?}"
        );
        assert_eq!(kernel.values["net.ipv4.conf.all.accept_redirects"], 0);
    }

    #[test]
    fn a_compliant_key_disturbed_by_a_write_is_written_again() {
        // accept_redirects is already right; switching forwarding off turns
        // it back on, and the pass must notice and correct it.
        let mut kernel = Kernel::new(&[
            ("net.ipv4.ip_forward", 1),
            ("net.ipv4.conf.all.forwarding", 1),
            ("net.ipv4.conf.all.accept_redirects", 0),
            ("net.ipv4.conf.default.forwarding", 1),
        ]);
        let targets = [
            target("net.ipv4.conf.all.accept_redirects", 0, false),
            target("net.ipv4.ip_forward", 0, true),
        ];
        let outcomes = run(&mut kernel, &targets);
        assert_eq!(
            outcomes[0],
            Outcome::Corrected {
                now: SysctlValue::from_int(0),
                disturbed: true
            }
        );
        assert!(matches!(
            outcomes[1],
            Outcome::Corrected {
                disturbed: false,
                ..
            }
        ));
        assert_eq!(kernel.values["net.ipv4.conf.all.accept_redirects"], 0);
    }

    #[test]
    fn a_write_that_changes_nothing_else_rereads_only_what_it_wrote() {
        let mut kernel =
            Kernel::new(&[("net.core.somaxconn", 128), ("net.ipv4.tcp_syncookies", 1)]);
        let reads = std::cell::Cell::new(0);
        let cell = std::cell::RefCell::new(&mut kernel);
        let outcomes = settle(
            &[
                target("net.core.somaxconn", 4096, true),
                target("net.ipv4.tcp_syncookies", 1, false),
            ],
            &mut |k, v| cell.borrow_mut().write(k, v),
            &mut |k| {
                reads.set(reads.get() + 1);
                cell.borrow().read(k)
            },
        );
        assert_eq!(reads.get(), 1);
        assert_eq!(outcomes[1], Outcome::Unchanged);
    }

    #[test]
    fn two_keys_that_undo_each_other_stop_after_the_bounded_rounds() {
        // ip_forward and conf.all.forwarding are one setting: a policy that
        // wants them different can never hold. The pass ends, failed.
        let mut kernel = Kernel::new(&[
            ("net.ipv4.ip_forward", 0),
            ("net.ipv4.conf.all.forwarding", 0),
            ("net.ipv4.conf.all.accept_redirects", 1),
            ("net.ipv4.conf.default.forwarding", 0),
        ]);
        let targets = [
            target("net.ipv4.ip_forward", 1, true),
            target("net.ipv4.conf.all.forwarding", 0, false),
        ];
        let outcomes = run(&mut kernel, &targets);
        assert!(
            kernel.writes.len() <= 2 * MAX_ROUNDS as usize,
            "{:?}",
            kernel.writes
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Outcome::NotHeld { .. })),
            "{outcomes:?}"
        );
    }

    #[test]
    fn a_failed_write_is_reported_and_not_retried() {
        let mut kernel = Kernel::new(&[]);
        let outcomes = run(&mut kernel, &[target("net.ipv4.nope", 1, true)]);
        assert_eq!(outcomes, [Outcome::WriteFailed("ENOENT".into())]);
    }

    #[test]
    fn a_value_the_kernel_does_not_keep_fails_after_the_rounds() {
        // A kernel that clamps a value: every read gives 100.
        let mut kernel = Kernel::new(&[("net.core.somaxconn", 100)]);
        let cell = std::cell::RefCell::new(&mut kernel);
        let outcomes = settle(
            &[target("net.core.somaxconn", 4096, true)],
            &mut |k, v| cell.borrow_mut().write(k, v),
            &mut |_| Observed::Value(SysctlValue::from_int(100)),
        );
        assert_eq!(
            outcomes,
            [Outcome::NotHeld {
                wrote: Some(SysctlValue::from_int(4096)),
                now: Observed::Value(SysctlValue::from_int(100)),
                writes: MAX_ROUNDS,
            }]
        );
    }
}
