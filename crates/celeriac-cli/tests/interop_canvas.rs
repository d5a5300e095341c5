//! Canvas on the Celery wire with real Python Celery: a Python client's
//! chains, groups, chords, links and link_errors run on celeriac workers,
//! and a chain and a chord cross a Python worker and celeriac workers. On
//! a private Redis (`redis::*`) and on RabbitMQ with results in a private
//! Redis (`amqp::*`; chords join in Redis, as Celery's do).

use std::process::Command;

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{interop_python as python, python_dir};
use celeriac_testkit::site::Site;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

fn canvas_client(python: &str, site: &Site, mode: &str) -> serde_json::Value {
    let out = Command::new(python)
        .arg(python_dir().join("canvas.py"))
        .args([&site.broker, mode])
        .env("BACKEND", &site.backend)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "canvas.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("canvas.py prints JSON")
}

fn celeriac_worker(site: &Site) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-c", "2", "--diagnostic-tasks"])
        .args(site.conn());
    LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-canvas-worker")
}

fn python_worker(python: &str, site: &Site) -> LoggedChild {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "celery", "-A", "pytasks", "worker", "-P", "solo"])
        .args(["-Q", "py", "--loglevel", "INFO", "-n", "py@localhost"])
        .current_dir(python_dir())
        .env("BROKER", &site.broker)
        .env("BACKEND", &site.backend)
        .env("PYTHONPATH", python_dir());
    let worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "python-canvas-worker");
    let log = worker.wait_for_log(" ready.");
    assert!(
        log.contains(" ready."),
        "the Python worker did not start:\n{log}"
    );
    worker
}

#[test]
fn python_canvas_runs_on_celeriac_workers_and_across_python() {
    let Some(python) = python() else { return };
    canvas_on(&python, &Site::redis());
}

#[test]
fn python_canvas_runs_on_celeriac_workers_and_across_python_over_amqp() {
    let Some(python) = python() else { return };
    let Some(site) = Site::amqp() else { return };
    canvas_on(&python, &site);
}

fn canvas_on(python: &str, site: &Site) {
    let _celeriac = celeriac_worker(site);
    let _python = python_worker(python, site);
    let v = canvas_client(python, site, "mixed");
    assert_eq!(v["chain"], 113, "((1 + 2) + 10) + 100: {v}");
    assert_eq!(v["chain_parents"], serde_json::json!([13, 3]), "{v}");
    assert_eq!(v["chain_100"], 100, "{v}");
    let failing = &v["failing_middle"];
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.contains("middle")),
        "the chain's .get() raises the middle step's error: {v}"
    );
    assert_eq!(failing["last_state"], "FAILURE", "{v}");
    assert_eq!(failing["middle_state"], "FAILURE", "{v}");
    assert_eq!(failing["first"], 3, "{v}");
    assert_eq!(
        v["link"],
        serde_json::json!([4, 14]),
        "the callback got 4 prepended: {v}"
    );
    assert_eq!(
        v["link_error"]["errback_got"], v["link_error"]["failed"],
        "the errback is called with the failed task's id: {v}"
    );
    assert_eq!(
        v["mixed"], 35,
        "(1 + 2) * 10 + 5 across Python and celeriac: {v}"
    );
    assert_eq!(v["mixed_parent_worker"], 30, "{v}");
    assert_eq!(
        v["group_10"],
        serde_json::json!([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),
        "{v}"
    );
    assert_eq!(v["group_restored"], true, "GroupResult.save/restore: {v}");
    assert_eq!(v["group_ids"], serde_json::json!([v["group_id"]]), "{v}");
    assert_eq!(v["group_1000_sum"], 500_500, "{v}");
    assert_eq!(
        v["chord"],
        serde_json::json!([0, 2, 4]),
        "the body got the header results in order: {v}"
    );
    assert_eq!(
        v["chord_200"],
        serde_json::json!([200, 20_100, true]),
        "{v}"
    );
    // Python's `.get()` raises the failed header's error (it checks the
    // parents first), before the body's ChordError may be stored.
    assert!(
        v["chord_failing"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad header")),
        "{v}"
    );
    assert_eq!(v["map"], serde_json::json!([1, "two", null]), "{v}");
    assert_eq!(v["starmap"], serde_json::json!([3, 7]), "{v}");
    assert_eq!(
        v["chunks"],
        serde_json::json!([[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]),
        "{v}"
    );
    assert_eq!(
        v["mixed_chord"],
        serde_json::json!([2, 4, 6]),
        "a chord across both: {v}"
    );
}
