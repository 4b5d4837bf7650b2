//! `holdfast serve` end to end on a fake host root with real inotify: the
//! binary runs against a temp dir, listens on a temp-dir Unix socket and an
//! ephemeral loopback port (never :80), and the tests change files under the
//! root as another writer would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::pedantic,
    reason = "a test fails by panicking, and pedantic is for the shipped code; Cargo.toml has both"
)]

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::FakeHost;
use holdfast::daemon::client::{self, Response};
use holdfast::daemon::listen::ListenAddr;
use serde_json::Value;

const BASE: &str = "etc/holdfast/policy.d/10-base.yaml";

/// A running `holdfast serve`; killed if a test fails before stopping it.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.sysctl("net.core.somaxconn", "128");
    h.write(
        BASE,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 4096\n",
    );
    h
}

fn holdfast(h: &FakeHost, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    cmd.arg("--root").arg(h.root()).args(args);
    cmd
}

fn start(h: &FakeHost, extra: &[&str]) -> Daemon {
    start_with(h, extra, |_| {})
}

fn start_with(h: &FakeHost, extra: &[&str], setup: impl FnOnce(&mut Command)) -> Daemon {
    start_listening(h, h.path("hf.sock"), extra, setup)
}

fn start_listening(
    h: &FakeHost,
    socket: PathBuf,
    extra: &[&str],
    setup: impl FnOnce(&mut Command),
) -> Daemon {
    let mut cmd = holdfast(h, &["serve", "--listen", socket.to_str().unwrap()]);
    cmd.args(extra)
        .env("HOLDFAST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    setup(&mut cmd);
    let child = cmd.spawn().expect("spawn holdfast serve");
    let mut d = Daemon { child, socket };
    wait_ready(&mut d);
    d
}

fn unix(d: &Daemon) -> ListenAddr {
    ListenAddr::Unix(d.socket.clone())
}

fn get(addr: &ListenAddr, target: &str) -> Response {
    client::get(addr, target, "*/*", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// Waits for the first pass (healthz 200).
fn wait_ready(d: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client::get(&unix(d), "/healthz", "*/*", Duration::from_secs(1))
            && r.status == 200
        {
            return;
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = d.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("holdfast serve exited early ({status}):\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "holdfast serve not ready in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(d: &Daemon) -> Value {
    let r = get(&unix(d), "/status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("status JSON")
}

fn item<'a>(status: &'a Value, key: &str) -> &'a Value {
    status["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {status:#}"))
}

/// Polls the status until `pred` holds (10 s at most).
fn wait_for(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(d);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(d: &Daemon) {
    let ok = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

/// Waits for the daemon to exit and returns its exit code and stderr. The
/// limit only keeps a hung daemon from hanging the suite; how fast it stops
/// is measured in benchmarks, not asserted here.
fn exit_within(d: &mut Daemon, limit: Duration) -> (Option<i32>, Duration, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = d.child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = d.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), started.elapsed(), err);
        }
        assert!(
            started.elapsed() < limit,
            "holdfast serve did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn serve_corrects_drift_keeps_the_last_good_policy_applies_a_good_push_and_stops_on_sigterm() {
    let h = host();
    let mut d = start(&h, &[]);

    // The first pass corrected the host.
    let s = status(&d);
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "4096");
    assert_eq!(item(&s, "net.core.somaxconn")["state"], "corrected");
    assert_eq!(s["compliant"], true);
    assert_eq!(s["policy"]["last_error"], Value::Null);

    // Another writer changes the value: inotify → re-read → corrected.
    h.sysctl("net.core.somaxconn", "512");
    let s = wait_for(&d, "the second correction", |s| {
        item(s, "net.core.somaxconn")["corrections"] == 2
    });
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "4096");
    let it = item(&s, "net.core.somaxconn");
    assert_eq!(it["state"], "corrected");
    assert_eq!(it["actual"], "4096");
    assert!(
        it["source"]["file"]
            .as_str()
            .unwrap()
            .ends_with("10-base.yaml")
    );
    assert!(it["last_change"].as_str().unwrap().ends_with('Z'));

    // An invalid push: rejected with its location, nothing applied.
    h.write(
        "etc/holdfast/policy.d/20-push.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: 9999\n  vm.swappiness: {valu: 10}\n",
    );
    let s = wait_for(&d, "the rejection", |s| {
        !s["policy"]["last_error"].is_null()
    });
    let err = &s["policy"]["last_error"];
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("20-push.yaml:4:"), "{message}");
    assert_eq!(err["errors"][0]["line"], 4);
    assert_eq!(
        h.get_sysctl("net.core.somaxconn"),
        "4096",
        "nothing applied"
    );
    assert_eq!(s["policy"]["files"].as_array().unwrap().len(), 1);
    // The previous policy is still enforced.
    h.sysctl("net.core.somaxconn", "1");
    wait_for(&d, "the old policy's correction", |s| {
        item(s, "net.core.somaxconn")["corrections"] == 3
    });
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "4096");
    // The text view and `holdfast status` show the rejection too.
    let text = get(&unix(&d), "/status?format=text");
    let text = String::from_utf8(text.body).unwrap();
    assert!(text.contains("policy push REJECTED"), "{text}");
    assert!(text.contains("20-push.yaml:4:"), "{text}");

    // A valid push: applied, only the changed setting written.
    h.write(
        "etc/holdfast/policy.d/20-push.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: 8192\n",
    );
    let s = wait_for(&d, "the new policy", |s| {
        s["policy"]["last_error"].is_null() && item(s, "net.core.somaxconn")["desired"] == "8192"
    });
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "8192");
    assert_eq!(
        s["policy"]["last_change"]["changed"],
        serde_json::json!(["sysctl net.core.somaxconn"])
    );
    assert!(
        h.read("etc/sysctl.d/99-zz-holdfast.conf")
            .contains("net.core.somaxconn = 8192")
    );

    // SIGTERM: exit 0, socket removed.
    sigterm(&d);
    let (code, _, log) = exit_within(&mut d, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(!d.socket.exists(), "the Unix socket is removed on exit");
    assert!(log.contains("corrected"), "{log}");
    assert!(
        log.contains("20-push.yaml:4:"),
        "the log names the error: {log}"
    );
}

/// A host whose one audited setting drifts (swappiness 60, policy 10).
fn audit_host() -> FakeHost {
    let h = host();
    h.sysctl("vm.swappiness", "60");
    h.write(
        "etc/holdfast/policy.d/20-audit.yaml",
        "version: 1\nsysctl:\n  vm.swappiness: {value: 10, mode: audit}\n",
    );
    h
}

#[test]
fn the_api_serves_status_filters_text_health_and_metrics_read_only() {
    let h = audit_host();
    let d = start(&h, &["--listen", "127.0.0.1:0"]);
    let s = status(&d);
    let tcp = s["daemon"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|l| {
            l["address"]
                .as_str()
                .filter(|a| a.starts_with("127.0.0.1:"))
        })
        .expect("the TCP listener in status");
    let tcp = ListenAddr::parse(tcp).unwrap();

    let r = get(&tcp, "/status?state=drifted");
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["compliant"], false);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["key"], "vm.swappiness");
    assert_eq!(v["summary"]["drifted"], 1);
    // The key and holdfast's persisted sysctl.d file.
    assert_eq!(v["summary"]["corrected"], 2);

    let r = client::get(&tcp, "/status", "text/plain", Duration::from_secs(5)).unwrap();
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains("NOT compliant: 2 corrected, 1 drifted"),
        "{text}"
    );

    let r = get(&tcp, "/status?state=drifed");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("unknown state"));

    let r = get(&tcp, "/healthz");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).starts_with("ok"));

    let r = get(&tcp, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let metrics = String::from_utf8(r.body).unwrap();
    for line in [
        "holdfast_setting_drift{kind=\"sysctl\",key=\"vm.swappiness\",state=\"drifted\"} 1",
        "holdfast_settings{state=\"corrected\"} 2",
        "holdfast_corrections_total{kind=\"sysctl\"} 1",
        "holdfast_policy_reloads_total{result=\"success\"} 1",
        "holdfast_compliant 0",
        "holdfast_rescan_interval_seconds 60",
        "holdfast_watch_errors 0",
        "process_open_fds ",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // Settings in line have no series of their own, and keys never carry
    // the fake root.
    assert!(!metrics.contains("somaxconn"), "{metrics}");
    assert!(!metrics.contains("holdfast_setting_state"), "{metrics}");
    let root = h.root().to_str().unwrap();
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("key=") && l.contains(root)),
        "{metrics}"
    );
    assert!(metrics.contains("holdfast_pass_duration_seconds_bucket{le=\"+Inf\"} "));

    let r = client::get(
        &tcp,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&r.body).ends_with("# EOF\n"));

    // Read-only, hardened.
    for (request, code) in [
        (
            "POST /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "405",
        ),
        (
            "DELETE /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "405",
        ),
        (
            "GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "404",
        ),
        (
            "HEAD /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "200",
        ),
        (
            "GET /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n",
            "413",
        ),
        // DNS rebinding: a page of another site that resolves to 127.0.0.1.
        (
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "421",
        ),
        (
            "GET http://x/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "421",
        ),
    ] {
        let reply = raw_request(&tcp, request.as_bytes());
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {code}")),
            "{request:?} -> {reply}"
        );
        if request.starts_with("HEAD") {
            assert!(reply.ends_with("\r\n\r\n"), "HEAD has no body: {reply}");
        }
    }
    let huge = format!(
        "GET /status HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let reply = raw_request(&tcp, huge.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
}

/// Sends raw bytes and returns the reply (the server closes after it).
fn raw_request(addr: &ListenAddr, request: &[u8]) -> String {
    use std::io::Write;
    let ListenAddr::Tcp(a) = addr else {
        panic!("tcp only")
    };
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package): cargo test -- --include-ignored"]
fn promtool_accepts_the_metrics() {
    let h = audit_host();
    let d = start(&h, &["--listen", "127.0.0.1:0"]);
    let r = client::get(&unix(&d), "/metrics", "*/*", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 200);
    promtool_accepts(&String::from_utf8(r.body).unwrap());
}

/// `promtool check metrics` (Debian's prometheus package) must accept the
/// exposition.
fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    common::require(child.is_ok(), "promtool");
    let Ok(mut child) = child else { return };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The series in a Prometheus text exposition.
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn metrics_text(addr: &ListenAddr) -> String {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package): cargo test -- --include-ignored"]
fn metrics_grow_with_drift_not_with_the_policy() {
    // 500 audit-mode sysctls, all in line.
    let h = FakeHost::new();
    let mut policy = String::from("version: 1\nmode: audit\nsysctl:\n");
    for i in 0..500 {
        h.sysctl(&format!("net.fleet.key{i}"), "1");
        policy.push_str(&format!("  net.fleet.key{i}: 1\n"));
    }
    h.write(BASE, &policy);
    let mut d = start(&h, &[]);
    let metrics = metrics_text(&unix(&d));
    let compliant = series(&metrics).len();
    assert!(
        compliant <= 80,
        "{compliant} series for a compliant 500-key policy:\n{metrics}"
    );
    assert!(metrics.contains("holdfast_settings{state=\"compliant\"} 500"));
    promtool_accepts(&metrics);

    // Three settings drift: three more series, each naming its setting.
    for i in [7, 70, 700 % 500] {
        h.sysctl(&format!("net.fleet.key{i}"), "0");
    }
    wait_for(&d, "three drifted settings", |s| {
        s["summary"]["drifted"] == 3
    });
    let metrics = metrics_text(&unix(&d));
    assert_eq!(series(&metrics).len(), compliant + 3, "{metrics}");
    for i in [7, 70, 200] {
        let line = format!(
            "holdfast_setting_drift{{kind=\"sysctl\",key=\"net.fleet.key{i}\",state=\"drifted\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    promtool_accepts(&metrics);
    sigterm(&d);
    exit_within(&mut d, Duration::from_secs(5));

    // Opt-in: every setting's state, eight series each.
    let d = start(&h, &["--metrics-per-setting"]);
    let metrics = metrics_text(&unix(&d));
    let per_setting = series(&metrics)
        .into_iter()
        .filter(|l| l.starts_with("holdfast_setting_state{"))
        .count();
    assert_eq!(per_setting, 500 * 8, "{metrics}");
    promtool_accepts(&metrics);
}

/// GET over TCP with extra request headers; the raw response, parsed.
fn get_with(addr: &ListenAddr, target: &str, headers: &str) -> Response {
    use std::io::Write;
    let ListenAddr::Tcp(a) = addr else {
        panic!("tcp only")
    };
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    client::parse_response(&raw).unwrap()
}

fn gunzip(body: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut out)
        .expect("a gzip body");
    out
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package): cargo test -- --include-ignored"]
fn metrics_and_status_are_gzipped_when_the_client_accepts_it() {
    let h = host();
    let d = start(&h, &["--listen", "127.0.0.1:0"]);
    let tcp = status(&d)["daemon"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|l| l["address"].as_str().filter(|a| a.starts_with("127.")))
        .map(|a| ListenAddr::parse(a).unwrap())
        .expect("the TCP listener");
    for target in ["/metrics", "/status"] {
        let plain = get_with(&tcp, target, "");
        assert_eq!(plain.header("content-encoding"), None, "{target}");
        let zipped = get_with(&tcp, target, "Accept-Encoding: gzip, deflate\r\n");
        assert_eq!(zipped.status, 200);
        assert_eq!(zipped.header("content-encoding"), Some("gzip"), "{target}");
        assert_eq!(
            zipped.header("content-type"),
            plain.header("content-type"),
            "{target}"
        );
        assert!(zipped.body.len() < plain.body.len(), "{target}");
        let text = gunzip(&zipped.body);
        if target == "/metrics" {
            assert!(text.contains("holdfast_build_info{version="), "{text}");
            promtool_accepts(&text);
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["schema_version"], 1);
        }
    }
    // A client that accepts only identity gets identity.
    let r = get_with(&tcp, "/metrics", "Accept-Encoding: identity\r\n");
    assert_eq!(r.header("content-encoding"), None);
}

#[test]
fn holdfast_status_prints_the_report_and_exits_like_check() {
    let h = host();
    let d = start(&h, &[]);
    let sock = d.socket.to_str().unwrap().to_string();
    let out = holdfast(&h, &["status", "--connect", &sock])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("net.core.somaxconn"), "{text}");
    assert!(text.contains("\ncompliant: 2 corrected"), "{text}");

    let out = holdfast(&h, &["--format", "json", "status", "--connect", &sock])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);

    // Drift an audit-only setting: exit 2.
    h.sysctl("vm.swappiness", "60");
    h.write(
        "etc/holdfast/policy.d/20-audit.yaml",
        "version: 1\nsysctl:\n  vm.swappiness: {value: 10, mode: audit}\n",
    );
    wait_for(&d, "the audit item", |s| {
        s["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["key"] == "vm.swappiness")
    });
    let out = holdfast(&h, &["status", "--connect", &sock, "--state", "drifted"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("vm.swappiness"), "{text}");
    assert!(!text.contains("net.core.somaxconn  "), "filtered: {text}");

    // No daemon there: exit 1 with a hint.
    let out = holdfast(
        &h,
        &["status", "--connect", h.path("none.sock").to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") && err.contains("none.sock"),
        "{err}"
    );
}

#[test]
fn holdfast_status_exits_3_and_says_so_first_while_a_push_is_rejected() {
    let h = host();
    let d = start(&h, &[]);
    let sock = d.socket.to_str().unwrap().to_string();
    // The status names each file in force with the digest of its content.
    let base = h.path(BASE).display().to_string();
    assert_eq!(
        status(&d)["policy"]["sha256"][&base],
        holdfast::policy::sha256_hex(&h.read(BASE))
    );
    h.write(
        "etc/holdfast/policy.d/20-bad.yaml",
        "version: 1\nsysctl:\n  net.core.somaxconn: {mni: 1}\n",
    );
    wait_for(&d, "the rejection", |s| {
        !s["policy"]["last_error"].is_null()
    });
    let out = holdfast(&h, &["status", "--connect", &sock])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.starts_with("policy push REJECTED at "),
        "the rejection comes first:\n{text}"
    );
    assert!(text.contains("20-bad.yaml:3:"), "{text}");
    // The host is compliant under the policy in force: the rejection
    // still decides the exit code.
    let out = holdfast(&h, &["--format", "json", "status", "--connect", &sock])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["compliant"], true);

    // A valid push clears it.
    std::fs::remove_file(h.path("etc/holdfast/policy.d/20-bad.yaml")).unwrap();
    wait_for(&d, "the rejection to clear", |s| {
        s["policy"]["last_error"].is_null()
    });
    let out = holdfast(&h, &["status", "--connect", &sock])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_port_already_taken_is_reported_and_reconciling_goes_on() {
    let h = host();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut d = start(&h, &["--listen", &addr]);
    let s = status(&d);
    let listeners = s["daemon"]["listeners"].as_array().unwrap();
    let failed = listeners
        .iter()
        .find(|l| l["address"] == addr.as_str())
        .unwrap();
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("in use"),
        "{failed}"
    );
    // Still reconciling.
    h.sysctl("net.core.somaxconn", "3");
    wait_for(&d, "the correction", |s| {
        item(s, "net.core.somaxconn")["corrections"] == 2
    });
    let out = holdfast(&h, &["status", "--connect", d.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("NOT listening on {addr}")), "{text}");
    sigterm(&d);
    let (code, _, log) = exit_within(&mut d, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert!(log.contains("NOT listening"), "{log}");
}

#[test]
fn non_loopback_addresses_are_refused_without_allow_remote() {
    let h = host();
    let out = holdfast(&h, &["serve", "--listen", "0.0.0.0:8080"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:8080"), "{err}");
    assert!(err.contains("--allow-remote"), "{err}");
    let out = holdfast(&h, &["serve", "--listen", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Reads datagrams from the fake NOTIFY_SOCKET until `want` is among them.
fn recv_until(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m| m.contains(want)) {
        assert!(Instant::now() < deadline, "no {want} in {seen:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn systemd_gets_ready_status_watchdog_and_stopping() {
    let h = host();
    let path = h.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = start_with(&h, &[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000");
    });
    let mut seen = Vec::new();
    recv_until(&sock, "READY=1", &mut seen);
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=2 corrected"), "{ready}");
    // The loop keeps pinging while idle (every half WATCHDOG_USEC; the
    // interval itself is checked under paused time in the sdnotify tests).
    // The deadline only guards against a daemon that stopped pinging.
    let guard = Instant::now() + Duration::from_secs(30);
    let mut pings = 0;
    let mut buf = [0u8; 4096];
    while pings < 3 && Instant::now() < guard {
        if let Ok(n) = sock.recv(&mut buf) {
            pings += usize::from(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
        }
    }
    assert!(
        pings >= 3,
        "{pings} watchdog pings before the guard ran out"
    );
    sigterm(&d);
    recv_until(&sock, "STOPPING=1", &mut seen);
    let (code, _, _) = exit_within(&mut d, Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

#[test]
fn socket_activation_serves_on_the_socket_systemd_passes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let h = host();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let socket = h.path("hf.sock");
    // systemd's contract: the sockets from fd 3 on, LISTEN_FDS, and
    // LISTEN_PID naming the service process (the shell execs holdfast, so
    // its pid is holdfast's).
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$HF" --root "$ROOT" serve --listen "$SOCK""#,
    ])
    .env("HF", env!("CARGO_BIN_EXE_holdfast"))
    .env("ROOT", h.root())
    .env("SOCK", &socket)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe; between fork and exec
    // they only place the listening socket at fd 3 without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 onto itself keeps close-on-exec: clear it either way.
            if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(listener);
    let mut d = Daemon { child, socket };
    wait_ready(&mut d);
    let s = status(&d);
    let activated = s["daemon"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["origin"] == "socket-activation")
        .unwrap_or_else(|| panic!("{s:#}"));
    assert_eq!(activated["address"], addr.to_string());
    let r = get(&ListenAddr::Tcp(addr), "/healthz");
    assert_eq!(r.status, 200);
}

#[test]
fn a_push_of_a_world_writable_policy_file_is_rejected_and_the_last_good_stays() {
    use std::os::unix::fs::PermissionsExt;
    let h = host();
    let d = start(&h, &[]);
    assert_eq!(h.get_sysctl("net.core.somaxconn"), "4096");

    // Anyone could have written this file: it must not switch the policy.
    let staged = h.path("staged.yaml");
    std::fs::write(
        &staged,
        "version: 1\nmode: enforce\nsysctl:\n  net.core.somaxconn: 64\n",
    )
    .unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::rename(&staged, h.path("etc/holdfast/policy.d/20-push.yaml")).unwrap();
    let s = wait_for(&d, "the rejection", |s| {
        !s["policy"]["last_error"].is_null()
    });
    let message = s["policy"]["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "20-push.yaml:1:1: the policy file is not trusted: writable by its group and others"
        ),
        "{message}"
    );
    assert_eq!(
        h.get_sysctl("net.core.somaxconn"),
        "4096",
        "nothing applied"
    );
    assert_eq!(item(&s, "net.core.somaxconn")["desired"], "4096");
}

#[test]
fn apply_and_rollback_ask_the_running_daemon_and_its_rollback_stays_rolled_back() {
    const KEY: &str = "proc/sys/net/core/somaxconn";
    let h = host();
    // The daemon on the root's own socket, where the CLI looks for it.
    let socket = h.path("run/holdfast/holdfast.sock");
    let d = start_listening(&h, socket, &["--rescan", "1h"], |_| {});
    assert_eq!(h.read(KEY).trim(), "4096");

    // apply while the daemon holds the writer lock: the daemon runs it.
    let out = holdfast(&h, &["--format", "json", "apply"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["command"], "apply");
    assert_eq!(report["compliant"], true);
    let s = status(&d);
    assert_eq!(s["last_pass"]["trigger"], "request", "{s:#}");

    // A policy of its own next to a daemon's is refused, naming the daemon.
    let policy = h.path(BASE);
    let out = holdfast(&h, &["apply", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a holdfast daemon runs"), "{stderr}");

    // rollback through the daemon: the host is back, and stays so.
    let out = holdfast(&h, &["rollback"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("restored"), "{stdout}");
    assert_eq!(h.read(KEY).trim(), "128");
    wait_for(&d, "the pause", |s| {
        s["paused"]["scope"] == serde_json::json!([])
    });
    h.sysctl("net.core.somaxconn", "100");
    wait_for(&d, "the drift reported", |s| {
        item(s, "net.core.somaxconn")["actual"] == "100"
    });
    assert_eq!(h.read(KEY).trim(), "100", "not corrected while paused");
    let out = holdfast(&h, &["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enforcement PAUSED"), "{text}");

    // An apply asks for enforcement again.
    let out = holdfast(&h, &["apply"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(h.read(KEY).trim(), "4096");
    assert!(status(&d)["paused"].is_null());

    // Anyone but root is refused, and nothing changes.
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        h.sysctl("net.core.somaxconn", "100");
        wait_for(&d, "the correction", |s| {
            item(s, "net.core.somaxconn")["actual"] == "4096"
        });
        // Passes of the daemon's own making (its write's event) may still
        // follow the correction: what must not run is a pass by request.
        let requests = || {
            metrics_text(&unix(&d))
                .lines()
                .find_map(|l| l.strip_prefix("holdfast_passes_total{trigger=\"request\"} "))
                .map(str::to_string)
        };
        let before = requests();
        assert!(before.is_some(), "the apply above ran a pass by request");
        let out = holdfast(&h, &["apply"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("only root may ask"), "{stderr}");
        assert_eq!(requests(), before);
        assert_eq!(h.read(KEY).trim(), "4096");
    }
}
