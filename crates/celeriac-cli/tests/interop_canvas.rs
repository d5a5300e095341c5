//! Canvas on the Celery wire with real Python Celery: a Python client's
//! chains, groups, chords, links and link_errors run on celeriac workers,
//! and a chain and a chord cross a Python worker and celeriac workers. On
//! a private Redis (`redis::*`) and on RabbitMQ with results in a private
//! Redis (`amqp::*`; chords join in Redis, as Celery's do).

use std::process::Command;

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, interop_python as python, python_dir};
use celeriac_testkit::site::Site;
use serde_json::json;

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
    CeleryWorker::new(python, "pytasks")
        .args(["-Q", "py"])
        .broker(&site.broker)
        .backend(&site.backend)
        .start(&std::env::temp_dir(), "python-canvas-worker")
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
    let celeriac = celeriac_worker(site);
    let _python = python_worker(python, site);
    let v = canvas_client(python, site, "mixed");
    assert_eq!(v["chain"], 113, "((1 + 2) + 10) + 100: {v}");
    assert_eq!(v["chain_parents"], json!([13, 3]), "{v}");
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
        json!([4, 14]),
        "the callback got 4 prepended: {v}"
    );
    assert_eq!(
        v["link_error"]["errback_got"], v["link_error"]["failed"],
        "the errback is called with the failed task's id: {v}"
    );
    // Celery's errback rule: a three-argument errback that the worker runs
    // is called inline with (request, exc, traceback), a one-argument one
    // published with the failed id.
    let arity = &v["errback_arity"];
    let failed = arity["failed"].as_str().unwrap_or("?");
    assert_eq!(arity["published_got"], failed, "{v}");
    assert_eq!(
        arity["inline_state"], "PENDING",
        "an inline errback stores no result: {v}"
    );
    let log = celeriac.wait_for_log("errback: the task raised");
    assert!(
        log.lines().any(|l| l.contains("errback: the task raised")
            && l.contains(failed)
            && l.contains("arity three")),
        "celeriac.log_error got the request and the exception inline:\n{log}"
    );
    assert_eq!(
        v["group_10"],
        json!((0..10).map(|i| 2 * i).collect::<Vec<_>>()),
        "{v}"
    );
    assert_eq!(v["group_restored"], true, "GroupResult.restore: {v}");
    assert_eq!(v["group_ids"], json!([v["group_id"]]), "{v}");
    assert_eq!(v["group_1000_sum"], 500_500, "{v}");
    assert_eq!(v["chord"], json!([0, 2, 4]), "{v}");
    assert_eq!(
        v["chord_200"],
        json!([200, 20_100, true]),
        "every part, in header order: {v}"
    );
    let failing = &v["chord_failing"];
    assert_eq!(failing["state"], "FAILURE", "{v}");
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("ChordError: Dependency") && e.contains("bad header")),
        "a failed header part fails the body with ChordError: {v}"
    );
    let revoked = &v["chord_revoked"];
    assert_eq!(revoked["part_state"], "REVOKED", "{v}");
    assert_eq!(revoked["state"], "FAILURE", "{v}");
    let part_id = revoked["part_id"].as_str().unwrap_or("?");
    assert_eq!(
        revoked["error"],
        format!("ChordError: Dependency {part_id} raised TaskRevokedError('revoked')"),
        "a revoked header part fails the chord, as Celery's: {v}"
    );
    assert_eq!(v["map"], json!([1, "two", null]), "{v}");
    assert_eq!(v["starmap"], json!([3, 7]), "{v}");
    assert_eq!(
        v["chunks"],
        json!([[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]),
        "{v}"
    );
    assert_eq!(v["mixed_chord"], json!([2, 4, 6]), "{v}");
    assert_eq!(
        v["mixed"], 35,
        "(1 + 2) * 10 + 5 across Python and celeriac: {v}"
    );
    assert_eq!(v["mixed_parent_worker"], 30, "{v}");
    let from_python = &v["errback_from_python"];
    assert_eq!(
        from_python["got"], from_python["failed"],
        "a Python worker publishes a celeriac errback with the failed id: {v}"
    );
}
