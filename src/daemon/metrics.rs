//! Prometheus metrics (prometheus-client). Counters and the pass-duration
//! histogram are updated by the loop (atomic increments, a short lock for
//! the histogram); everything that describes the current state (per-setting
//! state gauges, counts, timestamps) is computed at scrape time from the
//! latest published [`Snapshot`], so the loop never touches it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::schedule::Trigger;
use super::state::Snapshot;
use crate::item::{Kind, State};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0, for scrapers that ask for it.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (curl, promtool, older scrapers).
    Prometheus,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// OpenMetrics when the `Accept` header asks for it, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    corrections: Family<KindLabels, Counter>,
    failures: Family<KindLabels, Counter>,
    passes: Family<TriggerLabels, Counter>,
    pass_duration: Histogram,
    reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Metrics {
        let mut registry = Registry::default();
        let corrections = Family::<KindLabels, Counter>::default();
        let failures = Family::<KindLabels, Counter>::default();
        let passes = Family::<TriggerLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        // 50 µs .. 3.3 s.
        let pass_duration = Histogram::new(exponential_buckets(0.000_05, 4.0, 9));
        // Every series exists from the start, at 0, so rates work at once.
        for kind in Kind::ALL {
            let l = KindLabels {
                kind: kind.as_str(),
            };
            let _ = corrections.get_or_create(&l);
            let _ = failures.get_or_create(&l);
        }
        for t in Trigger::ALL {
            let _ = passes.get_or_create(&TriggerLabels {
                trigger: t.as_str(),
            });
        }
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "holdfast_corrections",
            "Settings holdfast wrote and verified, by kind",
            corrections.clone(),
        );
        registry.register(
            "holdfast_failures",
            "Failed reads or writes of settings, by kind",
            failures.clone(),
        );
        registry.register(
            "holdfast_passes",
            "Reconcile passes, by what triggered them",
            passes.clone(),
        );
        registry.register(
            "holdfast_pass_duration_seconds",
            "Duration of reconcile passes in seconds",
            pass_duration.clone(),
        );
        registry.register(
            "holdfast_policy_reloads",
            "Policy reloads, by result (failure: the push was rejected and the previous policy stays)",
            reloads.clone(),
        );
        registry.register_collector(Box::new(StateCollector { snapshots }));
        Metrics {
            registry,
            corrections,
            failures,
            passes,
            pass_duration,
            reloads,
        }
    }

    pub fn correction(&self, kind: Kind) {
        self.corrections
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn failure(&self, kind: Kind) {
        self.failures
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn pass(&self, trigger: Trigger, duration: Duration) {
        self.passes
            .get_or_create(&TriggerLabels {
                trigger: trigger.as_str(),
            })
            .inc();
        self.pass_duration.observe(duration.as_secs_f64());
    }

    pub fn reload(&self, accepted: bool) {
        let result = if accepted { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn encode(&self, format: Format) -> Result<String, fmt::Error> {
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

/// The state metrics, read from the latest snapshot at each scrape.
#[derive(Debug)]
struct StateCollector {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> fmt::Result {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    g.encode(m)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Clone the Arc and release the channel's lock before encoding.
        let snap = Arc::clone(&self.snapshots.borrow());

        {
            let mut m = encoder.encode_descriptor(
                "holdfast_setting_state",
                "1 for the state each managed setting is in, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for i in &snap.items {
                let key = i.item.key.to_string();
                for s in State::ALL {
                    let labels = [
                        ("kind", i.item.kind().as_str()),
                        ("key", key.as_str()),
                        ("state", s.as_str()),
                    ];
                    ConstGauge::new(i64::from(i.item.state == s))
                        .encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "holdfast_settings",
                "Managed settings by state",
                None,
                MetricType::Gauge,
            )?;
            for s in State::ALL {
                ConstGauge::new(snap.count(s) as i64)
                    .encode(m.encode_family(&[("state", s.as_str())])?)?;
            }
        }
        gauge(
            &mut encoder,
            "holdfast_compliant",
            "1 when every managed setting is in line with the policy in force",
            i64::from(snap.compliant()),
        )?;
        gauge(
            &mut encoder,
            "holdfast_contested_settings",
            "Settings another writer keeps reverting (corrections are backed off)",
            snap.count(State::Contested) as i64,
        )?;
        gauge(
            &mut encoder,
            "holdfast_last_pass_timestamp_seconds",
            "Unix time of the last reconcile pass (0 before the first)",
            snap.last_pass.as_ref().map_or(0.0, |p| unix_seconds(p.at)),
        )?;
        gauge(
            &mut encoder,
            "holdfast_policy_loaded_timestamp_seconds",
            "Unix time the policy in force was loaded (0 when none is)",
            snap.policy.loaded_at.map_or(0.0, unix_seconds),
        )?;
        gauge(
            &mut encoder,
            "holdfast_policy_rejected",
            "1 while the newest policy push is rejected (the previous policy stays in force)",
            i64::from(snap.policy.rejected.is_some()),
        )?;
        gauge(
            &mut encoder,
            "holdfast_watches",
            "Paths watched with inotify",
            snap.watches.watched as i64,
        )?;
        {
            let mut m = encoder.encode_descriptor(
                "holdfast_listener_up",
                "1 for each API address holdfast listens on, 0 for those it could not bind",
                None,
                MetricType::Gauge,
            )?;
            for l in snap.listeners.iter() {
                ConstGauge::new(i64::from(l.error.is_none()))
                    .encode(m.encode_family(&[("address", l.address.as_str())])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "holdfast_build_info",
                "The running holdfast version",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(m.encode_family(&[("version", snap.version)])?)?;
        }
        Ok(())
    }
}
