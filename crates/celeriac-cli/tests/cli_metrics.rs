//! `celeriac worker --metrics-addr`: `/metrics` scraped over HTTP from a
//! running worker after tasks succeeded and failed, and read with a
//! Prometheus text-format parser (`prometheus-parse`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use celeriac_testkit::process::LoggedChild;
use prometheus_parse::{Scrape, Value};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn celeriac(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CELERIAC_HOME", dir)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERIAC_METRICS_ADDR")
        .output()
        .expect("run celeriac")
}

/// `GET /metrics`: the status line and the body.
fn get_metrics(port: u16) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

fn scrape(port: u16) -> Scrape {
    let (status, body) = get_metrics(port).expect("scrape /metrics");
    assert!(status.contains(" 200"), "status {status:?}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of the sample `metric` whose labels include `labels`.
fn value<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| &x.value)
}

fn counter(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match value(s, metric, labels) {
        Some(Value::Counter(v)) | Some(Value::Untyped(v)) => *v,
        other => panic!("{metric} {labels:?}: not a counter: {other:?}"),
    }
}

fn gauge(s: &Scrape, metric: &str) -> f64 {
    match value(s, metric, &[]) {
        Some(Value::Gauge(v)) => *v,
        other => panic!("{metric}: not a gauge: {other:?}"),
    }
}

/// Observations in a histogram (its `+Inf` bucket).
fn histogram_count(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match value(s, metric, labels) {
        Some(Value::Histogram(buckets)) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .expect("a +Inf bucket"),
        other => panic!("{metric} {labels:?}: not a histogram: {other:?}"),
    }
}

fn call_wait(dir: &Path, name: &str, args: &str) -> Output {
    celeriac(
        dir,
        &["call", name, "--args", args, "--wait", "--timeout", "60"],
    )
}

#[test]
fn metrics_count_tasks_by_name_and_state_with_histograms_and_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-P", "processes", "-c", "2", "--diagnostic-tasks"])
        .args(["--metrics-addr", &addr])
        .env("CELERIAC_HOME", dir.path())
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND");
    let worker = LoggedChild::spawn(cmd, dir.path(), "worker");
    worker.wait_for_log("serving Prometheus metrics");

    for (x, y) in [(1, 2), (3, 4), (5, 6)] {
        let out = call_wait(dir.path(), "celeriac.add", &format!("[{x},{y}]"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (x + y).to_string(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for _ in 0..2 {
        let out = call_wait(dir.path(), "celeriac.fail", "[\"boom\"]");
        assert_eq!(out.status.code(), Some(1));
    }
    // A task no worker knows: counted, but not under its own name.
    let out = call_wait(dir.path(), "no.such.task", "[]");
    assert_eq!(out.status.code(), Some(1));

    // The gauges are sampled twice a second: wait until the pool's two
    // children show.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = scrape(port);
        if value(&s, "celeriac_pool_children", &[]).is_some_and(|v| *v == Value::Gauge(2.0)) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no pool children gauge of 2: {:?}\nworker log:\n{}",
            s.samples,
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let add = [("task", "celeriac.add"), ("state", "SUCCESS")];
    assert_eq!(counter(&s, "celeriac_tasks_total", &add), 3.0);
    let fail = [("task", "celeriac.fail"), ("state", "FAILURE")];
    assert_eq!(counter(&s, "celeriac_tasks_total", &fail), 2.0);
    let unknown = [("task", "<unregistered>"), ("state", "FAILURE")];
    assert_eq!(counter(&s, "celeriac_tasks_total", &unknown), 1.0);
    assert!(
        value(&s, "celeriac_tasks_total", &[("task", "no.such.task")]).is_none(),
        "a name from a message that no task has is not a label"
    );
    assert!(
        value(
            &s,
            "celeriac_tasks_total",
            &[("task", "celeriac.add"), ("state", "FAILURE")]
        )
        .is_none()
    );

    for task in ["celeriac.add", "celeriac.fail"] {
        let n = if task == "celeriac.add" { 3.0 } else { 2.0 };
        let t = [("task", task)];
        assert_eq!(
            histogram_count(&s, "celeriac_task_runtime_seconds", &t),
            n,
            "{task}"
        );
        assert_eq!(
            histogram_count(&s, "celeriac_task_queue_wait_seconds", &t),
            n,
            "{task}"
        );
    }
    // The unknown task never ran: no runtime.
    assert!(
        value(
            &s,
            "celeriac_task_runtime_seconds",
            &[("task", "<unregistered>")]
        )
        .is_none()
    );

    // Idle now: nothing reserved or running, two slots.
    assert_eq!(gauge(&s, "celeriac_worker_reserved"), 0.0);
    assert_eq!(gauge(&s, "celeriac_worker_active"), 0.0);
    assert_eq!(gauge(&s, "celeriac_worker_concurrency"), 2.0);
    assert_eq!(counter(&s, "celeriac_pool_child_restarts_total", &[]), 0.0);
    // The broker never failed, and its counters are there to say so.
    let claim = [("op", "claim")];
    assert_eq!(counter(&s, "celeriac_broker_errors_total", &claim), 0.0);
    assert_eq!(counter(&s, "celeriac_broker_reconnects_total", &[]), 0.0);
}

#[test]
fn a_metrics_address_in_use_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = celeriac(dir.path(), &["worker", "--metrics-addr", &addr]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serving metrics on"), "{err}");
}
