//! The production systemd client (`systemd::dbus::DbusSystemd`) against a
//! D-Bus double of systemd's manager served on a private socket under a
//! fake root, as systemd serves `/run/systemd/private`: properties by
//! `GetAll`, typed `SetUnitProperties`, a start awaited through
//! `JobRemoved` (sent before the method's reply, as a job that ends at once
//! is), a failed job, `Reload`, `ListUnits`, the manager's defaults, and
//! announcements turned into `UnitEvent`s. The VM suite covers the real
//! systemd.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast::cgroup::{Bytes, Count, CpuMax};
use holdfast::host::HostRoot;
use holdfast::limits::LimitValue;
use holdfast::systemd::dbus::{DbusSystemd, ListedUnit};
use holdfast::systemd::{INFINITY, SystemdClient, UnitEvent};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

const SLICE_PATH: &str = "/org/freedesktop/systemd1/unit/go_2dapp_2eslice";

/// A `SetUnitProperties` call: unit, runtime, typed properties.
type PropertiesCall = (String, bool, Vec<(String, u64)>);

#[derive(Default)]
struct Seen {
    calls: Vec<String>,
    properties: Vec<PropertiesCall>,
}

struct Manager {
    seen: Arc<Mutex<Seen>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn start_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        self.seen
            .lock()
            .unwrap()
            .calls
            .push(format!("start {name}"));
        let job = ObjectPath::try_from("/org/freedesktop/systemd1/job/42").unwrap();
        let result = if name == "broken.service" {
            "failed"
        } else {
            "done"
        };
        // The job ends before the reply is sent, after another job.
        let other = ObjectPath::try_from("/org/freedesktop/systemd1/job/41").unwrap();
        Self::job_removed(&emitter, 41, other, "other.service", "done")
            .await
            .unwrap();
        Self::job_removed(&emitter, 42, job.clone(), &name, result)
            .await
            .unwrap();
        Ok(job.into())
    }

    async fn reload(&self) {
        self.seen.lock().unwrap().calls.push("reload".into());
    }

    async fn subscribe(&self) {
        self.seen.lock().unwrap().calls.push("subscribe".into());
    }

    async fn set_unit_properties(
        &self,
        name: String,
        runtime: bool,
        props: Vec<(String, OwnedValue)>,
    ) {
        let typed = props
            .into_iter()
            .map(|(k, v)| (k, u64::try_from(&*v).expect("a t")))
            .collect();
        self.seen
            .lock()
            .unwrap()
            .properties
            .push((name, runtime, typed));
    }

    async fn list_units(&self) -> Vec<ListedUnit> {
        let path = || OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/x").unwrap();
        let unit = |name: &str, sub: &str| {
            (
                name.to_string(),
                String::new(),
                "loaded".to_string(),
                "active".to_string(),
                sub.to_string(),
                String::new(),
                path(),
                0,
                String::new(),
                path(),
            )
        };
        vec![
            unit("cron.service", "running"),
            unit("oneshot.service", "exited"),
            unit("go-app.slice", "active"),
        ]
    }

    #[zbus(property, name = "DefaultLimitNOFILE")]
    fn default_limit_nofile(&self) -> u64 {
        524288
    }

    #[zbus(property, name = "DefaultLimitNOFILESoft")]
    fn default_limit_nofile_soft(&self) -> u64 {
        1024
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

struct Unit;

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    fn load_state(&self) -> String {
        "loaded".into()
    }
    #[zbus(property)]
    fn active_state(&self) -> String {
        "active".into()
    }
    #[zbus(property)]
    fn drop_in_paths(&self) -> Vec<String> {
        vec!["/run/systemd/system.control/go-app.slice.d/50-MemoryMax.conf".into()]
    }
    #[zbus(property)]
    fn need_daemon_reload(&self) -> bool {
        false
    }
}

struct Slice;

#[zbus::interface(name = "org.freedesktop.systemd1.Slice")]
impl Slice {
    #[zbus(property)]
    fn control_group(&self) -> String {
        "/go.slice/go-app.slice".into()
    }
    #[zbus(property)]
    fn memory_max(&self) -> u64 {
        314_572_800
    }
    #[zbus(property)]
    fn memory_high(&self) -> u64 {
        INFINITY
    }
    #[zbus(property, name = "CPUQuotaPerSecUSec")]
    fn cpu_quota(&self) -> u64 {
        100_000
    }
    #[zbus(property, name = "CPUQuotaPeriodUSec")]
    fn cpu_period(&self) -> u64 {
        1_000_000
    }
    #[zbus(property)]
    fn tasks_max(&self) -> u64 {
        512
    }
}

/// Serves the double on `ROOT/run/systemd/private`; every connection gets
/// the objects. Returns what the double saw and its connections (to send
/// announcements on).
fn serve(
    root: &std::path::Path,
) -> (
    Arc<Mutex<Seen>>,
    Arc<Mutex<Vec<zbus::blocking::Connection>>>,
) {
    let dir = root.join("run/systemd");
    std::fs::create_dir_all(&dir).unwrap();
    let listener = UnixListener::bind(dir.join("private")).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (seen2, conns2) = (Arc::clone(&seen), Arc::clone(&conns));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let conn = zbus::blocking::connection::Builder::unix_stream(stream.unwrap())
                .server(zbus::Guid::generate())
                .unwrap()
                .p2p()
                .serve_at(
                    "/org/freedesktop/systemd1",
                    Manager {
                        seen: Arc::clone(&seen2),
                    },
                )
                .unwrap()
                .serve_at(SLICE_PATH, Unit)
                .unwrap()
                .serve_at(SLICE_PATH, Slice)
                .unwrap()
                .build()
                .unwrap();
            conns2.lock().unwrap().push(conn);
        }
    });
    (seen, conns)
}

#[test]
#[ignore = "needs root (holdfast uses systemd's private socket only as root): cargo test -- --include-ignored"]
fn the_dbus_client_speaks_systemds_interface() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, conns) = serve(dir.path());
    let client = DbusSystemd::new(&HostRoot::new(dir.path()));

    let info = client.unit("go-app.slice").unwrap();
    assert_eq!(info.load_state, "loaded");
    assert_eq!(
        info.control_group.as_deref(),
        Some("/go.slice/go-app.slice")
    );
    assert_eq!(info.memory_max, Some(Bytes::Value(314_572_800)));
    assert_eq!(info.memory_high, Some(Bytes::Max));
    assert_eq!(
        info.cpu_max,
        Some(CpuMax {
            quota_us: Some(100_000),
            period_us: 1_000_000
        })
    );
    assert_eq!(info.tasks_max, Some(Count::Value(512)));
    assert_eq!(info.drop_in_paths.len(), 1);

    // Several units at once (every GetAll sent before any reply is read):
    // each unit's answer is the one `unit` gives, in the order asked, and a
    // unit the manager does not know fails alone.
    let many = client.units(&["go-app.slice", "nothing-here.service", "go-app.slice"]);
    assert_eq!(many.len(), 3);
    assert_eq!(many[0].as_ref().unwrap(), &info);
    let missing = many[1].as_ref().unwrap_err().to_string();
    let alone = client.unit("nothing-here.service").unwrap_err().to_string();
    assert_eq!(missing, alone);
    assert!(missing.contains("nothing-here.service"), "{missing}");
    assert_eq!(many[2].as_ref().unwrap(), &info);

    client
        .set_properties_runtime(
            "go-app.slice",
            &[
                "MemoryMax=104857600".into(),
                "CPUQuota=10%".into(),
                "CPUQuotaPeriodSec=1000000us".into(),
                "TasksMax=infinity".into(),
            ],
        )
        .unwrap();
    assert!(
        client
            .set_properties_runtime("go-app.slice", &["Slice=x.slice".into()])
            .is_err(),
        "an assignment holdfast does not type is refused before any call"
    );
    client.start("go-app.slice").unwrap();
    let failed = client.start("broken.service").unwrap_err();
    assert!(failed.to_string().contains("job failed"), "{failed}");
    client.daemon_reload().unwrap();
    assert_eq!(
        client.default_limit_nofile().unwrap(),
        Some((LimitValue::Value(1024), LimitValue::Value(524288)))
    );
    assert_eq!(client.running_services().unwrap(), ["cron.service"]);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.properties,
            [(
                "go-app.slice".to_string(),
                true,
                vec![
                    ("MemoryMax".to_string(), 104_857_600),
                    ("CPUQuotaPerSecUSec".to_string(), 100_000),
                    ("CPUQuotaPeriodUSec".to_string(), 1_000_000),
                    ("TasksMax".to_string(), INFINITY),
                ]
            )]
        );
        assert_eq!(
            seen.calls,
            ["start go-app.slice", "start broken.service", "reload"]
        );
    }

    // Announcements: a thread with a connection of its own.
    let (tx, rx) = std::sync::mpsc::channel();
    let before = conns.lock().unwrap().len();
    client
        .subscribe(Box::new(move |e| tx.send(e).is_ok()))
        .unwrap();
    // The event thread listens before it calls Subscribe(): once the
    // double has seen the call, announcements reach it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while conns.lock().unwrap().len() == before
        || !seen.lock().unwrap().calls.iter().any(|c| c == "subscribe")
    {
        assert!(std::time::Instant::now() < deadline, "no subscription");
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = conns.lock().unwrap().last().unwrap().clone();
    events
        .emit_signal(
            None::<()>,
            SLICE_PATH,
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            &(
                "org.freedesktop.systemd1.Slice",
                HashMap::<&str, Value<'_>>::new(),
                Vec::<&str>::new(),
            ),
        )
        .unwrap();
    events
        .emit_signal(
            None::<()>,
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Reloading",
            &(false,),
        )
        .unwrap();
    let got: Vec<UnitEvent> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("an event"))
        .collect();
    assert_eq!(
        got,
        [
            UnitEvent::Changed("go-app.slice".into()),
            UnitEvent::Reloading(false)
        ]
    );
}

/// The daemon talks to systemd after it has installed its seccomp
/// allow-list and dropped capabilities: the client must work under them.
/// The double serves from this process; the client runs, hardened, in a
/// child (this test binary re-executed), since the filter cannot be
/// removed once installed.
#[test]
#[ignore = "needs root (holdfast uses systemd's private socket only as root): cargo test -- --include-ignored"]
fn the_dbus_client_works_under_the_daemons_seccomp_allow_list() {
    const PROBE: &str = "HOLDFAST_DBUS_SECCOMP_PROBE";
    if let Some(root) = std::env::var_os(PROBE) {
        holdfast::harden::lock_down(true).expect("lock down");
        let client = DbusSystemd::new(&HostRoot::new(&root));
        let info = client.unit("go-app.slice").expect("GetAll under seccomp");
        assert_eq!(info.tasks_max, Some(Count::Value(512)));
        client.start("go-app.slice").expect("a job under seccomp");
        let (tx, rx) = std::sync::mpsc::channel();
        client
            .subscribe(Box::new(move |e| tx.send(e).is_ok()))
            .expect("subscribe under seccomp");
        // The parent announces a reload once the subscription is there.
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
        assert_eq!(got, UnitEvent::Reloading(false));
        println!("PROBE-OK");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (seen, conns) = serve(dir.path());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_dbus_client_works_under_the_daemons_seccomp_allow_list",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.lock().unwrap().calls.iter().any(|c| c == "subscribe") {
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(events) = conns.lock().unwrap().last() {
        let _ = events.emit_signal(
            None::<()>,
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Reloading",
            &(false,),
        );
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PROBE-OK"), "{text}");
}
