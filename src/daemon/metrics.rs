//! Prometheus metrics (prometheus-client). Counters and the pass-duration
//! histogram are updated by the loop (atomic increments, a short lock for
//! the histogram); everything that describes the current state (counts per
//! state, the settings that drift, timestamps, the process's own figures) is
//! computed at scrape time from the latest published [`Snapshot`], so the
//! loop never touches it.
//!
//! # Guarantees
//! - The number of series is bounded by what is wrong, not by the policy's
//!   size: a fixed set (about 65, see `tests::a_compliant_500_key_policy_*`)
//!   plus one `holdfast_setting_drift` series per setting in a drift state.
//!   The full per-setting state set (`holdfast_setting_state`, eight series
//!   per setting) is opt-in: `serve --metrics-per-setting`.
//! - `key` labels never carry the `--root` prefix, and holdfast's own files
//!   are named by a short name (the unit, the file name) rather than a path
//!   ([`metric_key`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::process;
use super::schedule::Trigger;
use super::state::Snapshot;
use crate::item::{ItemKey, Kind, State};

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

/// What `/metrics` shows beyond the fixed set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Also export `holdfast_setting_state` for every setting and state
    /// (`--metrics-per-setting`): eight series per setting.
    pub per_setting: bool,
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
    /// The default set, for a host rooted at `/`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Metrics {
        Metrics::with_config(snapshots, MetricsConfig::default())
    }

    pub fn with_config(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        config: MetricsConfig,
    ) -> Metrics {
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
        registry.register_collector(Box::new(StateCollector { snapshots, config }));
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
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            }
        }
        Ok(out)
    }
}

/// The state metrics, read from the latest snapshot at each scrape.
#[derive(Debug)]
struct StateCollector {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    config: MetricsConfig,
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

/// A count or a size as a gauge's i64, saturating (never wrapping to a
/// negative figure).
fn saturating<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `key` label of a setting: the item's key, and for holdfast's own
/// files a short name instead of the path (which carries the host root) —
/// the unit a drop-in or slice unit configures (`myapp.service`,
/// `go-app.slice`), `system.conf` for the manager's drop-in, else the file
/// name (`99-zz-holdfast.conf`, `limits.conf:12` for a malformed line).
/// The kind label already says which file family it is.
pub fn metric_key(key: &ItemKey) -> String {
    let name = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    match key {
        ItemKey::SysctlFile(p)
        | ItemKey::SysctlOverride(p)
        | ItemKey::LimitsFile(p)
        | ItemKey::ModprobeFile(p) => name(p),
        ItemKey::Module(m) => m.to_string(),
        ItemKey::LimitsLine { file, line } => format!("{}:{line}", name(file)),
        ItemKey::UnitFile { unit: Some(u), .. } => u.clone(),
        ItemKey::UnitFile { unit: None, .. } => "system.conf".to_string(),
        other => other.to_string(),
    }
}

impl Collector for StateCollector {
    #[expect(
        clippy::too_many_lines,
        reason = "one family after another, in the order /metrics shows them"
    )]
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Clone the Arc and release the channel's lock before encoding.
        let snap = Arc::clone(&self.snapshots.borrow());

        {
            let mut m = encoder.encode_descriptor(
                "holdfast_setting_drift",
                "1 for each managed setting in a drift state (drifted, refused, failed, \
                 restart-required, contested); absent while the setting is in line",
                None,
                MetricType::Gauge,
            )?;
            let mut seen = BTreeSet::new();
            for i in snap.items.iter().filter(|i| i.item.state.is_drift()) {
                let key = metric_key(&i.item.key);
                if !seen.insert((i.item.kind(), key.clone())) {
                    continue;
                }
                let labels = [
                    ("kind", i.item.kind().as_str()),
                    ("key", key.as_str()),
                    ("state", i.item.state.as_str()),
                ];
                ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
            }
        }
        if self.config.per_setting {
            let mut m = encoder.encode_descriptor(
                "holdfast_setting_state",
                "1 for the state each managed setting is in, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            let mut seen = BTreeSet::new();
            for i in &snap.items {
                let key = metric_key(&i.item.key);
                if !seen.insert((i.item.kind(), key.clone())) {
                    continue;
                }
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
                ConstGauge::new(saturating(snap.count(s)))
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
            "holdfast_last_pass_timestamp_seconds",
            "Unix time of the last reconcile pass (0 before the first)",
            snap.last_pass.as_ref().map_or(0.0, |p| unix_seconds(p.at)),
        )?;
        gauge(
            &mut encoder,
            "holdfast_rescan_interval_seconds",
            "The configured full rescan interval (--rescan): a pass runs at least this often",
            snap.rescan_interval.as_secs_f64(),
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
            saturating(snap.watches.watched),
        )?;
        gauge(
            &mut encoder,
            "holdfast_watch_errors",
            "Wanted paths holdfast could not watch (changes there are seen only at the rescan)",
            saturating(snap.watches.errors.len()),
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
        encode_process(&mut encoder, &process::read(), snap.started_at)
    }
}

/// The standard `process_*` metrics of the daemon itself.
fn encode_process(
    encoder: &mut DescriptorEncoder,
    figures: &process::ProcessFigures,
    started_at: SystemTime,
) -> fmt::Result {
    if let Some(stat) = figures.stat {
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stat.cpu_seconds).encode(m)?;
        gauge(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            saturating(stat.resident_bytes),
        )?;
        gauge(
            encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            saturating(stat.virtual_bytes),
        )?;
    }
    if let Some(n) = figures.open_fds {
        gauge(
            encoder,
            "process_open_fds",
            "Number of open file descriptors",
            saturating(n),
        )?;
    }
    if let Some(n) = figures.max_fds {
        gauge(
            encoder,
            "process_max_fds",
            "Maximum number of open file descriptors",
            saturating(n),
        )?;
    }
    gauge(
        encoder,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds",
        unix_seconds(started_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::{ItemStatus, ListenerOrigin, ListenerStatus};
    use crate::item::Item;
    use crate::policy::Mode;

    /// The typed key of a setting the tests name by kind and text.
    fn key_of(kind: Kind, key: &str) -> crate::item::ItemKey {
        use crate::item::ItemKey;
        match kind {
            Kind::Sysctl => ItemKey::Sysctl(crate::sysctl::SysctlKey::parse(key).unwrap()),
            Kind::SysctlPersist => ItemKey::SysctlFile(key.into()),
            Kind::Limit => {
                let parts: Vec<&str> = key.split(' ').collect();
                ItemKey::Limit {
                    domain: crate::limits::Domain::parse(parts[0]).unwrap(),
                    kind: if parts[1] == "soft" {
                        crate::limits::LimitType::Soft
                    } else {
                        crate::limits::LimitType::Hard
                    },
                    item: crate::limits::LimitItem::parse(parts[2]).unwrap(),
                }
            }
            other => panic!("no test key for {other:?}"),
        }
    }

    fn setting(kind: Kind, key: &str, state: State) -> Arc<ItemStatus> {
        let mut item = Item::new(key_of(kind, key), "1", Mode::Enforce);
        item.state = state;
        Arc::new(ItemStatus {
            item,
            last_change: SystemTime::now(),
            corrections: 0,
            next_attempt: None,
        })
    }

    /// A daemon on `root` with the default listeners (the Unix socket and
    /// loopback :80 over IPv4 and IPv6), `n` compliant sysctls, holdfast's
    /// persisted file, and `drifting` more settings in a drift state.
    fn snapshot(root: &str, n: usize, drifting: &[(Kind, &str, State)]) -> Snapshot {
        let listeners = ["/run/holdfast/holdfast.sock", "127.0.0.1:80", "[::1]:80"]
            .map(|a| ListenerStatus {
                address: a.to_string(),
                origin: ListenerOrigin::Default,
                error: None,
            })
            .to_vec();
        let mut snap = Snapshot::starting(Arc::new(listeners), Duration::from_secs(60));
        snap.items = (0..n)
            .map(|i| setting(Kind::Sysctl, &format!("net.test.key{i}"), State::Compliant))
            .collect();
        snap.items.push(setting(
            Kind::SysctlPersist,
            &format!("{root}/etc/sysctl.d/99-zz-holdfast.conf"),
            State::Compliant,
        ));
        snap.items
            .extend(drifting.iter().map(|(k, key, s)| setting(*k, key, *s)));
        snap
    }

    fn scrape(snap: Snapshot, config: MetricsConfig) -> String {
        let (_tx, rx) = watch::channel(Arc::new(snap));
        let m = Metrics::with_config(rx, config);
        // The loop's counters and histogram have samples as in a real run.
        m.pass(Trigger::Start, Duration::from_millis(2));
        m.correction(Kind::Sysctl);
        m.reload(true);
        m.encode(Format::Prometheus).unwrap()
    }

    fn series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    #[test]
    fn a_compliant_500_key_policy_costs_at_most_80_series() {
        let text = scrape(snapshot("/", 500, &[]), MetricsConfig::default());
        let n = series(&text).len();
        assert!(n <= 80, "{n} series:\n{text}");
        assert!(!text.contains("holdfast_setting_drift{"), "{text}");
        assert!(!text.contains("holdfast_setting_state"), "{text}");
        assert!(!text.contains("holdfast_contested_settings"), "{text}");
        // The same fixed set whatever the policy's size.
        let small = scrape(snapshot("/", 5, &[]), MetricsConfig::default());
        assert_eq!(series(&small).len(), n);
    }

    #[test]
    fn each_drifting_setting_adds_one_series_naming_it() {
        let base = series(&scrape(snapshot("/", 500, &[]), MetricsConfig::default())).len();
        let drifting = [
            (Kind::Sysctl, "vm.swappiness", State::Drifted),
            (Kind::Sysctl, "vm.overcommit_memory", State::Contested),
            (Kind::Limit, "* soft nofile", State::Failed),
            // Not drift: no series.
            (Kind::Sysctl, "net.gone", State::Unsupported),
            (Kind::Sysctl, "net.fixed", State::Corrected),
        ];
        let text = scrape(snapshot("/", 500, &drifting), MetricsConfig::default());
        assert_eq!(series(&text).len(), base + 3, "{text}");
        for line in [
            r#"holdfast_setting_drift{kind="sysctl",key="vm.swappiness",state="drifted"} 1"#,
            r#"holdfast_setting_drift{kind="sysctl",key="vm.overcommit_memory",state="contested"} 1"#,
            r#"holdfast_setting_drift{kind="limit",key="* soft nofile",state="failed"} 1"#,
            r#"holdfast_settings{state="contested"} 1"#,
            r#"holdfast_settings{state="unsupported"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn the_full_state_set_is_opt_in() {
        let config = MetricsConfig { per_setting: true };
        let text = scrape(snapshot("/srv/root", 10, &[]), config);
        let per_setting = series(&text)
            .into_iter()
            .filter(|l| l.starts_with("holdfast_setting_state{"))
            .count();
        // Ten sysctls and the persisted file, eight states each.
        assert_eq!(per_setting, 11 * 8);
        assert!(text.contains(
            r#"holdfast_setting_state{kind="sysctl-persist",key="99-zz-holdfast.conf",state="compliant"} 1"#
        ));
        assert!(!text.contains("/srv/root"), "{text}");
    }

    #[test]
    fn the_process_rescan_and_watch_figures_are_exported() {
        let mut snap = snapshot("/", 1, &[]);
        snap.watches.errors = vec!["/x: permission denied".into(), "/y: gone".into()];
        let text = scrape(snap, MetricsConfig::default());
        for line in [
            "holdfast_rescan_interval_seconds 60",
            "holdfast_watch_errors 2",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_max_fds gauge",
            "# TYPE process_start_time_seconds gauge",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn keys_lose_the_root_and_own_files_get_short_names() {
        use crate::item::ItemKey;
        let root = Path::new("/tmp/fake-root");
        let unit_file = |rel: &str, unit: Option<&str>| ItemKey::UnitFile {
            path: root.join(rel),
            unit: unit.map(str::to_string),
        };
        let cases = [
            (
                key_of(Kind::Sysctl, "net.core.somaxconn"),
                "net.core.somaxconn",
            ),
            (
                ItemKey::SysctlFile(root.join("etc/sysctl.d/99-zz-holdfast.conf")),
                "99-zz-holdfast.conf",
            ),
            (
                ItemKey::LimitsFile(root.join("etc/security/limits.d/90-holdfast.conf")),
                "90-holdfast.conf",
            ),
            (
                ItemKey::LimitsLine {
                    file: root.join("etc/security/limits.conf"),
                    line: 12,
                },
                "limits.conf:12",
            ),
            (
                unit_file(
                    "etc/systemd/system/myapp.service.d/90-holdfast.conf",
                    Some("myapp.service"),
                ),
                "myapp.service",
            ),
            (
                unit_file("etc/systemd/system/go-app.slice", Some("go-app.slice")),
                "go-app.slice",
            ),
            (
                unit_file("etc/systemd/system.conf.d/90-holdfast.conf", None),
                "system.conf",
            ),
            (
                ItemKey::OwnCgroupKnob {
                    slice: "app".into(),
                    knob: crate::cgroup::knob::KnobKind::MemoryMax,
                },
                "/holdfast.slice/app memory.max",
            ),
            (
                ItemKey::Service {
                    unit: "myapp.service".into(),
                    setting: crate::item::ServiceSetting::LimitNofile,
                },
                "myapp.service LimitNOFILE",
            ),
        ];
        for (key, want) in cases {
            assert_eq!(metric_key(&key), want, "{key:?}");
        }
    }
}
