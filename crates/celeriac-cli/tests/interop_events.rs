//! Celery's monitoring events across implementations, on the same wire:
//!
//! - Celery's own receiver (`app.events.Receiver`, what `celery events`
//!   and Flower use) sees every event of a celeriac worker, with Celery's
//!   fields;
//! - `celeriac events --dump` shows a Python Celery worker's events;
//! - `celeriac events --dump` follows a celeriac worker on the default
//!   embedded broker (the SQLite file).
//! - Python's `app.control.enable_events()`, as Flower sends it, turns on
//!   the task events of a celeriac worker started without `-E`.
//!
//! Each test but the embedded one runs on a private Redis (`redis::*`) and
//! on RabbitMQ with results in a private Redis (`amqp::*`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, python_dir};
use celeriac_testkit::site::Site;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

celeriac_testkit::python_scenarios_on_redis_and_amqp!(
    celerys_receiver_sees_every_event_of_a_celeriac_worker,
    celeriac_events_dump_shows_a_python_workers_events,
    pythons_enable_events_turns_on_a_celeriac_workers_task_events,
);

fn celeriac(args: &[&str], home: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(home) = home {
        cmd.env("CELERIAC_HOME", home)
            .env_remove("CELERIAC_BROKER_URL");
    }
    cmd.output().expect("run celeriac")
}

/// `celeriac call ... --wait`'s stdout.
fn call_wait(site: &Site, name: &str, args: &str) -> String {
    let out = celeriac(
        &[
            &["call", name, "--args", args, "--wait", "--timeout", "60"][..],
            &site.conn(),
        ]
        .concat(),
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits up to 60 s for `child` to exit.
fn wait_exit(child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not exit within 60 s");
}

fn celeriac_worker(site: Option<&Site>, home: Option<&Path>, name: &str) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-E", "-c", "2", "--diagnostic-tasks", "-n", name]);
    if let Some(site) = site {
        cmd.args(site.conn());
    }
    if let Some(home) = home {
        cmd.env("CELERIAC_HOME", home)
            .env_remove("CELERIAC_BROKER_URL");
    }
    let worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-events-worker");
    let log = worker.wait_for_log("worker ready");
    assert!(
        log.contains("worker ready"),
        "the worker did not start:\n{log}"
    );
    worker
}

fn of<'a>(events: &'a [Value], kind: &str, id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["uuid"] == id)
        .collect()
}

fn one<'a>(events: &'a [Value], kind: &str, id: &str) -> &'a Value {
    match of(events, kind, id).as_slice() {
        [e] => e,
        other => panic!("{kind} of {id}: {} events in {events:#?}", other.len()),
    }
}

fn celerys_receiver_sees_every_event_of_a_celeriac_worker(python: &str, site: &Site) {
    let url = site.broker.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.json");
    let node = "ev@interop";

    let mut cmd = Command::new(python);
    cmd.arg(python_dir().join("events_receiver.py"))
        .args([url.as_str(), node, "120"])
        .arg(&out);
    let mut receiver = LoggedChild::spawn(cmd, dir.path(), "events-receiver");
    let log = receiver.wait_for_log("READY");
    assert!(log.contains("READY"), "the receiver did not start:\n{log}");

    // Revoked before it is sent: celeriac workers honour `celeriac revoke`
    // at claim time.
    let revoked = uuid::Uuid::new_v4().to_string();
    let r = celeriac(&[&["revoke", &revoked][..], &site.conn()].concat(), None);
    assert!(r.status.success());
    let worker = celeriac_worker(Some(site), None, node);

    // A Python client sends the tasks whose ids it must know.
    let send = Command::new(python)
        .args(["-c", SEND])
        .args([url.as_str(), revoked.as_str()])
        .env("BACKEND", &site.backend)
        .output()
        .expect("run Python");
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    let sent: Value = serde_json::from_slice(&send.stdout).unwrap();
    let (ok, bad, flaky, expired, unknown) = (
        sent["ok"].as_str().unwrap(),
        sent["bad"].as_str().unwrap(),
        sent["flaky"].as_str().unwrap(),
        sent["expired"].as_str().unwrap(),
        sent["unknown"].as_str().unwrap(),
    );
    for id in [ok, bad, flaky, expired, revoked.as_str()] {
        celeriac(
            &[
                &["result", id, "--wait", "--timeout", "60"][..],
                &site.conn(),
            ]
            .concat(),
            None,
        );
    }
    // celeriac's client with Celery's task_send_sent_event.
    let by_client = celeriac(
        &[
            "call",
            "celeriac.echo",
            "--args",
            "[\"hi\"]",
            "--sent-event",
            "--wait",
        ]
        .iter()
        .chain(site.conn().iter())
        .copied()
        .collect::<Vec<_>>(),
        None,
    );
    assert!(
        by_client.status.success(),
        "{}",
        String::from_utf8_lossy(&by_client.stderr)
    );
    // `--wait` prints the result; the id is in the task-sent event.
    assert_eq!(String::from_utf8_lossy(&by_client.stdout).trim(), "\"hi\"");
    // Past a heartbeat, then a warm shutdown: worker-offline ends the capture.
    std::thread::sleep(Duration::from_millis(2500));
    let worker_pid = u64::from(worker.id());
    let mut worker = worker;
    terminate(&worker.child);
    wait_exit(&mut worker.child, "the worker");
    wait_exit(&mut receiver.child, "the receiver");
    let log = receiver.log();
    assert!(log.contains("DONE"), "{log}");
    let events: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let sent = events
        .iter()
        .find(|e| e["type"] == "task-sent" && e["name"] == "celeriac.echo")
        .unwrap_or_else(|| panic!("no task-sent: {events:?}"));
    let by_client = sent["uuid"].as_str().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "task-succeeded" && e["uuid"] == by_client),
        "the worker ran the task the client sent"
    );
    assert!(
        sent["hostname"]
            .as_str()
            .is_some_and(|h| h.starts_with("gen") && h.contains('@')),
        "{sent}"
    );
    assert_eq!(sent["name"], "celeriac.echo", "{sent}");
    assert_eq!(sent["args"], "('hi',)", "{sent}");
    assert_eq!(sent["kwargs"], "{}", "{sent}");
    assert_eq!(sent["root_id"], by_client, "{sent}");
    assert_eq!(sent["retries"], 0, "{sent}");
    assert_eq!(sent["queue"], "celery", "{sent}");
    assert_eq!(sent["routing_key"], "celery", "{sent}");
    assert_eq!(sent["exchange"], "", "{sent}");
    assert!(sent["local_received"].as_f64().is_some(), "{sent}");
    let events: Vec<Value> = events
        .into_iter()
        .filter(|e| e["hostname"] == node)
        .collect();

    // Celery's receiver took every one in: local_received is its own.
    for e in &events {
        assert_eq!(e["pid"].as_u64(), Some(worker_pid), "{e}");
        assert!(e["clock"].as_u64().is_some_and(|c| c > 0), "{e}");
        assert!(e["utcoffset"].is_number(), "{e}");
        assert!(e["timestamp"].as_f64().is_some(), "{e}");
        assert!(e["local_received"].as_f64().is_some(), "{e}");
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"worker-online"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"worker-offline"), "{kinds:?}");
    let beat = events
        .iter()
        .rev()
        .find(|e| e["type"] == "worker-heartbeat")
        .expect("a heartbeat");
    for key in ["active", "processed"] {
        assert!(beat[key].is_u64(), "{key}: {beat}");
    }
    assert_eq!(beat["freq"], 2.0);
    assert_eq!(beat["processed"], 5, "add, fail, flaky twice, echo: {beat}");
    assert_eq!(beat["loadavg"].as_array().map(Vec::len), Some(3));
    assert_eq!(beat["sw_ident"], "celeriac");
    assert_eq!(beat["sw_sys"], "Linux");
    assert!(beat["sw_ver"].is_string());

    let r = one(&events, "task-received", ok);
    assert_eq!(r["name"], "celeriac.add");
    assert_eq!(r["args"], "(2, 3)");
    assert_eq!(r["kwargs"], "{}");
    assert_eq!(r["root_id"], ok);
    assert_eq!(r["parent_id"], Value::Null);
    assert_eq!(r["retries"], 0);
    assert_eq!((&r["eta"], &r["expires"]), (&Value::Null, &Value::Null));
    one(&events, "task-started", ok);
    let s = one(&events, "task-succeeded", ok);
    assert_eq!(s["result"], "5");
    assert!(s["runtime"].as_f64().is_some_and(|t| t >= 0.0));

    let f = one(&events, "task-failed", bad);
    assert_eq!(f["exception"], "TaskError('boom')");
    assert!(
        f["traceback"].as_str().is_some_and(|t| t.contains("boom")),
        "{f}"
    );

    assert!(one(&events, "task-retried", flaky)["exception"].is_string());
    let again = of(&events, "task-received", flaky);
    assert_eq!(again.len(), 2, "the retry is received again");
    assert_eq!(
        (&again[1]["retries"], &again[1]["parent_id"]),
        (&json!(1), &json!(flaky))
    );
    assert_eq!(one(&events, "task-succeeded", flaky)["result"], "1");

    let e = one(&events, "task-revoked", expired);
    assert_eq!(
        (&e["expired"], &e["terminated"], &e["signum"]),
        (&json!(true), &json!(false), &Value::Null)
    );
    let e = one(&events, "task-revoked", &revoked);
    assert_eq!(
        (&e["expired"], &e["terminated"]),
        (&json!(false), &json!(false))
    );

    one(&events, "task-failed", unknown);
    assert_eq!(one(&events, "task-rejected", unknown)["requeue"], false);
}

/// Sends the tasks of the receiver test from Python: argv = URL, the id
/// to send the revoked task with. Prints their ids as JSON.
const SEND: &str = r#"
import json, os, sys, time
from datetime import datetime, timedelta, timezone
from celery import Celery
app = Celery(broker=sys.argv[1], backend=os.environ["BACKEND"])
past = datetime.now(timezone.utc) - timedelta(minutes=1)
ids = {
    "ok": app.send_task("celeriac.add", (2, 3)).id,
    "bad": app.send_task("celeriac.fail", ("boom",)).id,
    "flaky": app.send_task("celeriac.flaky", (1,)).id,
    "expired": app.send_task("celeriac.add", (1, 1), expires=past).id,
    "unknown": app.send_task("nope.missing", ()).id,
}
app.send_task("celeriac.add", (1, 2), task_id=sys.argv[2])
print(json.dumps(ids))
"#;

/// `celeriac events --dump`, its stdout in a file, killed when dropped.
struct Dump {
    child: Child,
    out: PathBuf,
}

impl Dump {
    fn start(site: Option<&Site>, home: Option<&Path>, dir: &Path) -> Dump {
        let out = dir.join("dump.txt");
        let mut cmd = Command::new(BIN);
        cmd.args(["events", "--dump"]);
        if let Some(site) = site {
            cmd.args(site.conn());
        }
        if let Some(home) = home {
            cmd.env("CELERIAC_HOME", home)
                .env_remove("CELERIAC_BROKER_URL");
        }
        let child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.join("dump.err")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn celeriac events");
        let dump = Dump { child, out };
        dump.wait_for(|l| l.starts_with("-> celeriac events: capturing"));
        dump
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits up to 60 s for a line for which `want` holds; returns it.
    fn wait_for(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| want(l)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no such line in:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("celeriac events --dump printed:\n{}", self.text());
        }
    }
}

fn celeriac_events_dump_shows_a_python_workers_events(python: &str, site: &Site) {
    let dir = tempfile::tempdir().unwrap();
    let dump = Dump::start(Some(site), None, dir.path());

    let mut worker = CeleryWorker::new(python, "pytasks")
        .node("py@events")
        .args(["-E"])
        .broker(&site.broker)
        .backend(&site.backend)
        .start(dir.path(), "python-events-worker");

    assert_eq!(call_wait(site, "tasks.add", "[2, 3]"), "5");
    let out = celeriac(
        &[
            &[
                "call",
                "tasks.boom",
                "--args",
                r#"["kaput"]"#,
                "--wait",
                "--timeout",
                "60",
            ][..],
            &site.conn(),
        ]
        .concat(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));

    let online = dump.wait_for(|l| l.starts_with("py@events [") && l.contains("] started: "));
    for field in ["sw_ident=py-celery", "freq=2.0", "processed=0", "loadavg=["] {
        assert!(online.contains(field), "{field}: {online}");
    }
    let received = dump.wait_for(|l| {
        l.contains("] task received: tasks.add(") && l.contains("args=(2, 3) kwargs={}")
    });
    assert!(received.starts_with("py@events ["), "{received}");
    let succeeded = dump.wait_for(|l| l.contains("] task succeeded: tasks.add("));
    assert!(succeeded.contains("result=5"), "{succeeded}");
    assert!(succeeded.contains("runtime="), "{succeeded}");
    dump.wait_for(|l| l.contains("] task started: tasks.add("));
    let failed = dump.wait_for(|l| l.contains("] task failed: tasks.boom("));
    assert!(failed.contains("exception=ValueError('kaput')"), "{failed}");
    assert!(
        failed.contains("Traceback (most recent call last)"),
        "{failed}"
    );
    let beat = dump.wait_for(|l| l.starts_with("py@events [") && l.contains("] heartbeat: "));
    assert!(beat.contains("active=0"), "{beat}");

    terminate(&worker.child);
    wait_exit(&mut worker.child, "the Python worker");
    dump.wait_for(|l| l.starts_with("py@events [") && l.contains("] shutdown: "));
}

#[test]
fn celeriac_events_dump_follows_a_celeriac_worker_on_the_default_broker() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = Dump::start(None, Some(home.path()), dir.path());
    assert!(
        dump.text()
            .contains(&format!("sqlite://{}", home.path().display())),
        "the default broker: {}",
        dump.text()
    );
    let mut worker = celeriac_worker(None, Some(home.path()), "w1@default");
    let out = celeriac(
        &["call", "celeriac.add", "--args", "[20, 22]", "--wait"],
        Some(home.path()),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = celeriac(
        &["call", "celeriac.fail", "--args", r#"["nope"]"#, "--wait"],
        Some(home.path()),
    );
    assert_eq!(out.status.code(), Some(1));

    dump.wait_for(|l| l.starts_with("w1@default [") && l.contains("] started: "));
    dump.wait_for(|l| {
        l.contains("] task received: celeriac.add(") && l.contains("args=(20, 22) kwargs={}")
    });
    dump.wait_for(|l| l.contains("] task started: celeriac.add("));
    let ok = dump.wait_for(|l| l.contains("] task succeeded: celeriac.add("));
    assert!(ok.contains("result=42"), "{ok}");
    let failed = dump.wait_for(|l| l.contains("] task failed: celeriac.fail("));
    assert!(failed.contains("exception=TaskError('nope')"), "{failed}");
    let beat = dump.wait_for(|l| l.contains("] heartbeat: ") && l.contains("processed=2"));
    assert!(beat.contains("sw_ident=celeriac"), "{beat}");

    terminate(&worker.child);
    wait_exit(&mut worker.child, "the worker");
    dump.wait_for(|l| l.starts_with("w1@default [") && l.contains("] shutdown: "));
}

fn pythons_enable_events_turns_on_a_celeriac_workers_task_events(python: &str, site: &Site) {
    let url = site.broker.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.json");
    let node = "plain@interop";
    let mut cmd = Command::new(python);
    cmd.arg(python_dir().join("events_receiver.py"))
        .args([url.as_str(), node, "120"])
        .arg(&out);
    let mut receiver = LoggedChild::spawn(cmd, dir.path(), "events-receiver");
    assert!(receiver.wait_for_log("READY").contains("READY"));

    // Without -E: only worker events, until a monitor asks, as Flower does.
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-c", "1", "-n", node])
        .args(site.conn());
    let mut worker = LoggedChild::spawn(cmd, dir.path(), "celeriac-plain-worker");
    assert!(worker.wait_for_log("worker ready").contains("worker ready"));
    let quiet = call_wait(site, "celeriac.add", "[1, 1]");
    assert_eq!(quiet, "2");
    let script = r#"
import os, sys
from celery import Celery
app = Celery(broker=sys.argv[1], backend=os.environ["BACKEND"])
replies = app.control.enable_events(reply=True, timeout=5)
assert replies == [{sys.argv[2]: {"ok": "task events enabled"}}], replies
print(app.send_task("celeriac.add", (2, 3)).get(timeout=60))
"#;
    let run = Command::new(python)
        .args(["-c", script, &url, node])
        .env("BACKEND", &site.backend)
        .output()
        .expect("run Python");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "5");

    terminate(&worker.child);
    wait_exit(&mut worker.child, "the worker");
    wait_exit(&mut receiver.child, "the receiver");
    let events: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tasks: Vec<&Value> = events
        .iter()
        .filter(|e| e["hostname"] == node && e["type"].as_str().unwrap().starts_with("task-"))
        .collect();
    let names: Vec<&str> = tasks.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(
        names,
        ["celeriac.add"],
        "only the task after enable_events: {tasks:#?}"
    );
    let done: Vec<&&Value> = tasks
        .iter()
        .filter(|e| e["type"] == "task-succeeded")
        .collect();
    assert_eq!(done.len(), 1, "{tasks:#?}");
    assert_eq!(done[0]["result"], "5");
}
