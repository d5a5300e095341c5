//! What celeriac sends must reach Python: countdowns published as Celery
//! publishes them, revokes broadcast as Celery broadcasts them, and
//! `result_extended` results with every field Celery stores. Each test runs
//! the real `celeriac` binary and real Python Celery against a private
//! `redis-server` of its own (so Python's remote-control broadcasts and
//! celeriac's keys never meet another test's); the revoke tests run on
//! RabbitMQ too (a vhost of their own, results in a private Redis).
//!
//! The Python venv is named by `CELERIAC_TEST_PYTHON` (`scripts/test.sh`
//! sets it); without it the tests that need Python are skipped, except
//! under `CELERIAC_REQUIRE_INTEROP=1`, where they fail.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, interop_python as python, python_dir};
use celeriac_testkit::redis_server::RedisServer;
use celeriac_testkit::site::Site;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// Runs `tests/python/<script>` with `args`; asserts it succeeded and
/// returns its stdout.
fn python_run(python: &str, script: &str, args: &[&str]) -> String {
    python_run_with(python, script, args, None)
}

/// [`python_run`] with the result backend `BACKEND` if given.
fn python_run_with(python: &str, script: &str, args: &[&str], backend: Option<&str>) -> String {
    let mut cmd = Command::new(python);
    cmd.arg(python_dir().join(script)).args(args);
    if let Some(b) = backend {
        cmd.env("BACKEND", b);
    }
    let out = cmd.output().expect("run Python");
    assert!(
        out.status.success(),
        "python {script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real `celery worker` on the tasks of `tests/python/pytasks.py`, with
/// `result_extended` when `extended`, started and ready.
fn python_worker(
    python: &str,
    url: &str,
    pool: &str,
    extra: &[&str],
    extended: bool,
) -> LoggedChild {
    python_worker_at(
        python,
        &Site::shared_redis(url.to_string()),
        pool,
        extra,
        extended,
    )
}

/// [`python_worker`] on a site's broker and result backend.
fn python_worker_at(
    python: &str,
    site: &Site,
    pool: &str,
    extra: &[&str],
    extended: bool,
) -> LoggedChild {
    CeleryWorker::new(python, "pytasks")
        .pool([pool, "-c", "1"])
        .args(extra.iter().copied())
        .broker(&site.broker)
        .backend(&site.backend)
        .env("RESULT_EXTENDED", if extended { "1" } else { "0" })
        .start(&std::env::temp_dir(), "python-celery-worker")
}

fn celeriac_worker(url: &str, extra: &[&str]) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", url, "-c", "2"])
        .args(extra)
        .env("RUST_LOG", "info,celeriac_worker=debug");
    LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-reach-worker")
}

fn celeriac(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run celeriac")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The stored result document of `id` (`celeriac result --meta`), waiting
/// up to 60 s for a ready one.
fn wait_meta(url: &str, id: &str) -> Value {
    wait_meta_at(&Site::shared_redis(url.to_string()), id)
}

/// [`wait_meta`] on a site's broker and result backend.
fn wait_meta_at(site: &Site, id: &str) -> Value {
    let out = celeriac(
        &[
            &["result", id, "--wait", "--timeout", "60", "--meta"],
            &site.conn()[..],
        ]
        .concat(),
    );
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|_| {
        panic!(
            "no result for {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn unix_of(iso: &Value) -> f64 {
    celeriac_core::time::parse_iso(iso.as_str().expect("an ISO date")).expect("a valid ISO date")
}

fn redis_conn(url: &str) -> ::redis::Connection {
    ::redis::Client::open(url)
        .unwrap()
        .get_connection()
        .expect("connect to the private redis-server")
}

/// Polls `check` every 50 ms for up to 30 s; false if it never held.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_celeriac_countdown_runs_on_a_python_worker_after_its_eta() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let _py = python_worker(&python, &url, "solo", &[], false);

    let sent = celeriac_core::time::unix_now();
    let out = celeriac(&[
        "call",
        "tasks.mul",
        "--args",
        "[6,7]",
        "--countdown",
        "2",
        "--wait",
        "--timeout",
        "60",
        "--broker",
        &url,
    ]);
    assert_eq!(
        stdout(&out),
        "42",
        "the Python worker ran it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = {
        let mut c = redis_conn(&url);
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("celery-task-meta-*")
            .query(&mut c)
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys[0].trim_start_matches("celery-task-meta-").to_string()
    };
    let meta = wait_meta(&url, &id);
    let done = unix_of(&meta["date_done"]);
    assert!(
        done >= sent + 2.0,
        "run no earlier than its countdown: sent at {sent}, done at {done}"
    );
}

#[test]
fn call_wait_gives_up_by_default_with_a_clear_message() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    // Nobody consumes the queue: without --timeout the wait still ends,
    // well before this test's own watchdog.
    let mut child = Command::new(BIN)
        .args(["call", "celeriac.add", "--args", "[1,2]", "--wait"])
        .args(["--broker", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run celeriac");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`call --wait` without --timeout is still waiting after 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "the timeout's exit code: {stderr}");
    assert!(stderr.contains("timed out after 60 s"), "{stderr}");
}

celeriac_testkit::python_scenarios_on_redis_and_amqp!(
    celeriac_revoke_makes_a_python_worker_skip_a_waiting_task,
    celeriac_revoke_terminate_stops_a_task_running_on_a_python_worker,
);

fn celeriac_revoke_makes_a_python_worker_skip_a_waiting_task(python: &str, site: &Site) {
    let py = python_worker_at(python, site, "prefork", &[], false);
    let backend = Some(site.backend.as_str());

    // Sent by Python with a countdown: the worker holds both until due.
    let doomed = python_run_with(
        python,
        "send.py",
        &[&site.broker, "tasks.mul", "[2,3]", "4"],
        backend,
    );
    let kept = python_run_with(
        python,
        "send.py",
        &[&site.broker, "tasks.mul", "[4,5]", "4"],
        backend,
    );
    for id in [&doomed, &kept] {
        let log = py.wait_for_log(&format!("[{id}] received"));
        assert!(log.contains(&format!("[{id}] received")), "{log}");
    }
    let out = celeriac(&[&["revoke", &doomed][..], &site.conn()[..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        wait_meta_at(site, &kept)["result"],
        20,
        "the other task still ran"
    );
    let log = py.wait_for_log(&format!("Discarding revoked task: tasks.mul[{doomed}]"));
    assert!(
        log.contains(&format!("Discarding revoked task: tasks.mul[{doomed}]")),
        "the Python worker skipped the revoked task:\n{log}"
    );
    let meta = wait_meta_at(site, &doomed);
    assert_eq!(meta["status"], "REVOKED", "{meta}");
}

fn celeriac_revoke_terminate_stops_a_task_running_on_a_python_worker(python: &str, site: &Site) {
    let py = python_worker_at(python, site, "prefork", &[], false);

    let slow = python_run_with(
        python,
        "send.py",
        &[&site.broker, "tasks.sleep", "[600]"],
        Some(&site.backend),
    );
    let started = eventually(|| {
        let out = celeriac(&[&["result", &slow, "--meta"][..], &site.conn()[..]].concat());
        serde_json::from_str::<Value>(&stdout(&out)).is_ok_and(|m| m["status"] == "STARTED")
    });
    assert!(started, "tasks.sleep started:\n{}", py.log());

    let out = celeriac(
        &[
            &["revoke", "--terminate", "--signal", "KILL", &slow][..],
            &site.conn()[..],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the terminate it would sleep for ten minutes.
    let meta = wait_meta_at(site, &slow);
    assert_eq!(meta["status"], "REVOKED", "{meta}");
    assert_eq!(meta["result"]["exc_type"], "TaskRevokedError", "{meta}");
    let log = py.log();
    assert!(
        // Celery logs the signal's number: 9 is SIGKILL (SIGTERM would be 15).
        log.contains(&format!("Terminating {slow} (9)")),
        "the Python worker terminated it with the signal asked for:\n{log}"
    );
}

#[test]
fn python_result_extended_reads_every_field_of_a_celeriac_result() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let _rs = celeriac_worker(&url, &["-n", "rs@localhost", "--result-extended"]);
    // A Python worker with result_extended on another queue, to compare.
    let _py = python_worker(&python, &url, "solo", &["-Q", "py"], true);

    let out = python_run(&python, "result_extended.py", &[&url]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let (rs, py) = (&v["celeriac"], &v["python"]);
    assert_eq!(rs["value"], 5);
    assert_eq!(rs["args"], json!([2]), "{rs}");
    assert_eq!(rs["kwargs"], json!({"y": 3}), "{rs}");
    assert_eq!(rs["name"], "celeriac.add", "{rs}");
    assert_eq!(rs["queue"], "celery", "{rs}");
    assert_eq!(rs["worker"], "rs@localhost", "{rs}");
    assert_eq!(rs["retries"], 0, "{rs}");
    assert!(rs["date_done"].is_string(), "{rs}");

    // Field by field against what the Python worker stored.
    assert_eq!(py["worker"], "py@localhost", "{py}");
    for field in ["args", "kwargs", "retries"] {
        assert_eq!(rs[field], py[field], "{field}: {rs} vs {py}");
    }
    let (rs_doc, py_doc) = (&rs["stored"], &py["stored"]);
    for (key, value) in py_doc.as_object().unwrap() {
        let ours = &rs_doc[key];
        assert!(
            rs_doc.get(key).is_some(),
            "{key} is stored by Python but not by celeriac: {rs_doc}"
        );
        let same_type = std::mem::discriminant(ours) == std::mem::discriminant(value);
        assert!(same_type, "{key}: {ours} vs {value}");
    }
    let date = |d: &Value| d["date_done"].as_str().unwrap().len();
    assert_eq!(
        date(rs_doc),
        date(py_doc),
        "date_done in Celery's format: {rs_doc} vs {py_doc}"
    );
}

#[test]
fn a_celeriac_worker_holds_an_eta_task_durably_and_runs_it_once() {
    if !RedisServer::available() {
        return;
    }
    let mut redis = RedisServer::start();
    let url = redis.url("");
    let sent = celeriac_core::time::unix_now();
    let out = celeriac(&[
        "call",
        "celeriac.add",
        "--args",
        "[2,3]",
        "--countdown",
        "6",
        "--broker",
        &url,
    ]);
    let id = stdout(&out);
    assert!(!id.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // Published as Celery publishes it: on the queue, with its eta header.
    let mut c = redis_conn(&url);
    let queued: Vec<String> = ::redis::cmd("LRANGE")
        .arg("celery")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(queued.len(), 1, "the message is on the queue itself");
    let env: Value = serde_json::from_str(&queued[0]).unwrap();
    assert_eq!(env["headers"]["id"], id.as_str());
    assert!(
        unix_of(&env["headers"]["eta"]) >= sent + 6.0,
        "{}",
        env["headers"]
    );

    // A celeriac worker takes it and keeps it in Redis until due, not in
    // its memory: killed before the eta, it has run nothing.
    let mut first = celeriac_worker(&url, &[]);
    let deferred = eventually(|| {
        let delayed: usize = ::redis::cmd("ZCARD")
            .arg("celeriac.delayed")
            .query(&mut c)
            .unwrap();
        let on_queue: usize = ::redis::cmd("LLEN").arg("celery").query(&mut c).unwrap();
        delayed == 1 && on_queue == 0
    });
    assert!(deferred, "moved to the delayed set:\n{}", first.log());
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let result: Option<String> = ::redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query(&mut c)
        .unwrap();
    assert_eq!(result, None, "not run before its eta");

    // Redis restarts from its append-only file; a new worker runs it once.
    redis.restart(Duration::from_millis(200));
    let second = celeriac_worker(&url, &[]);
    let meta = wait_meta(&url, &id);
    assert_eq!(meta["result"], 5, "{meta}");
    assert!(unix_of(&meta["date_done"]) >= sent + 6.0, "{meta}");
    let runs = |w: &LoggedChild| w.count_lines(&[id.as_str(), "task succeeded"]);
    assert_eq!(runs(&first) + runs(&second), 1, "{}", second.log());
    let mut c = redis_conn(&url);
    for (cmd, key) in [
        ("LLEN", "celery"),
        ("ZCARD", "celeriac.delayed"),
        ("HLEN", "unacked"),
    ] {
        let n: usize = ::redis::cmd(cmd).arg(key).query(&mut c).unwrap();
        assert_eq!(n, 0, "{key} is empty");
    }
}

#[test]
fn a_python_tasks_update_state_is_seen_by_celeriac_result() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let py = python_worker(&python, &url, "solo", &[], false);
    let out = celeriac(&[
        "call",
        "tasks.progress",
        "--args",
        "[3, 0.5]",
        "--broker",
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    let mut seen = Vec::new();
    let progressed = eventually(|| {
        let out = celeriac(&["result", &id, "--meta", "--broker", &url]);
        let Ok(meta) = serde_json::from_str::<Value>(&stdout(&out)) else {
            return false;
        };
        if meta["status"] == "PROGRESS" {
            // Not ready: exit code 4, the document printed all the same.
            assert_eq!(out.status.code(), Some(4), "{meta}");
            seen.push(meta["result"].clone());
        }
        meta["status"] == "SUCCESS"
    });
    assert!(progressed, "tasks.progress finished:\n{}", py.log());
    assert!(!seen.is_empty(), "PROGRESS seen by celeriac result");
    assert!(
        seen.iter()
            .all(|m| m["total"] == 3 && m["current"].is_u64()),
        "the meta Python stored: {seen:?}"
    );
    assert_eq!(wait_meta(&url, &id)["result"], 3);
}
