//! Nested canvas on the Celery wire, real Python Celery 5.7 as the client
//! and celeriac as the worker, over a private Redis: canvases that a
//! worker must expand itself (a group or a chord inside a chain, a chain
//! as a chord body or a link), a group of chains and a chord of chords;
//! and chords joined by `celery.chord_unlock`, which Celery's client sends
//! when its result backend has no native join.

use std::process::Command;

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{interop_python as python, python_dir};
use celeriac_testkit::redis_server::RedisServer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

fn client(python: &str, url: &str, mode: &str) -> Value {
    let out = Command::new(python)
        .arg(python_dir().join("canvas_nested.py"))
        .args([url, mode])
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "canvas_nested.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("canvas_nested.py prints JSON")
}

fn worker(url: &str, name: &str) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", url, "-c", "2", "--diagnostic-tasks"]);
    LoggedChild::spawn(cmd, &std::env::temp_dir(), name)
}

fn ok(v: &Value, key: &str) -> Value {
    v[key]
        .get("ok")
        .cloned()
        .unwrap_or_else(|| panic!("{key} failed: {}", v[key]))
}

#[test]
fn nested_python_canvas_runs_on_a_celeriac_worker() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let _worker = worker(&url, "celeriac-nested-worker");
    let v = client(&python, &url, "nested");
    assert_eq!(ok(&v, "group_of_chains"), json!([12, 24]), "{v}");
    assert_eq!(
        ok(&v, "chord_of_chords"),
        json!([[2, 4], [6, 8]]),
        "each inner body is one part of the outer chord: {v}"
    );
    assert_eq!(
        ok(&v, "chain_with_group"),
        json!([13, 23]),
        "the worker expands the group (a chord) with 3 prepended: {v}"
    );
    let children = &v["chain_with_group_children"];
    assert_eq!(
        children[0][1].as_array().map(Vec::len),
        Some(2),
        "the first task lists the header as its child: {v}"
    );
    assert_eq!(ok(&v, "chain_ending_in_group"), json!([13, 23]), "{v}");
    assert_eq!(ok(&v, "chain_with_chord"), json!([13, 23]), "{v}");
    assert_eq!(ok(&v, "chain_with_chord_body"), json!([13, 23]), "{v}");
    assert_eq!(ok(&v, "chord_with_chain_body"), json!([2, 4]), "{v}");
    assert_eq!(
        ok(&v, "chord_with_chain_body_first"),
        json!([2, 4]),
        "both steps of the body ran: {v}"
    );
    assert_eq!(ok(&v, "link_chain"), 112, "1 + 1 + 10 + 100: {v}");
    let failing = v["chord_of_chords_failing"]["error"].as_str().unwrap_or("");
    assert!(
        failing.starts_with("ChordError: Dependency") && failing.contains("'inner'"),
        "the inner chord's body fails with the header's error: {v}"
    );
}

#[test]
fn chords_sent_with_chord_unlock_are_joined_by_the_celeriac_worker() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let worker = worker(&url, "celeriac-unlock-worker");
    let v = client(&python, &url, "unlock");
    assert_eq!(ok(&v, "unlock_chord"), json!([0, 2, 4, 6, 8]), "{v}");
    let unlocks = v["unlock_ids"].as_array().expect("recorded");
    assert_eq!(unlocks.len(), 1, "Python sent celery.chord_unlock: {v}");
    assert_eq!(
        v["unlock_body_parent"], unlocks[0],
        "the unlock published the body: {v}"
    );
    assert!(v["unlock_body_group"].is_string(), "{v}");
    assert_eq!(
        ok(&v, "unlock_failing_errback"),
        v["unlock_failing_body_id"],
        "the body's errback is called with the body's id: {v}"
    );
    assert_eq!(v["unlock_failing_body"]["status"], "FAILURE", "{v}");
    let why = v["unlock_failing_body"]["result"].as_str().unwrap_or("");
    assert!(
        why.contains("Dependency") && why.contains("bad header"),
        "ChordError under the body's id: {v}"
    );
    assert_eq!(ok(&v, "unlock_waits"), json!([2, 2.0]), "{v}");
    assert_eq!(
        v["unlock_waits_stored"],
        json!(["PENDING"]),
        "celery.chord_unlock stores no RETRY (it ignores its result): {v}"
    );
    assert!(
        worker.count_lines(&["task retry", "task=celery.chord_unlock"]) >= 1,
        "the unlock waited (retried) for the slow part:\n{}",
        worker.log()
    );
    assert_eq!(ok(&v, "unlock_chain_with_chord"), json!([13, 23]), "{v}");
}
