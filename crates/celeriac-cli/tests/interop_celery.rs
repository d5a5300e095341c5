//! Interoperability with real Python Celery over a real Redis, both ways:
//! Python clients call celeriac workers, celeriac calls Python workers.
//!
//! `scripts/test.sh` starts a private `redis-server` and a venv with the
//! pinned Celery, and names them in `CELERIAC_TEST_REDIS_URL` and
//! `CELERIAC_TEST_PYTHON`. Each test uses its own Redis database.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use celeriac_testkit::process::LoggedChild;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

struct Env {
    python: String,
    redis_base: String,
}

/// The interop environment, or `None` (with a note) when it is not set up;
/// under `scripts/test.sh` (`CELERIAC_REQUIRE_INTEROP=1`) a missing
/// environment fails the test instead.
fn interop() -> Option<Env> {
    let python = std::env::var("CELERIAC_TEST_PYTHON").ok();
    let redis = std::env::var("CELERIAC_TEST_REDIS_URL").ok();
    match (python, redis) {
        (Some(python), Some(redis)) => Some(Env {
            python,
            redis_base: redis
                .trim_end_matches("/0")
                .trim_end_matches('/')
                .to_string(),
        }),
        _ if std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("CELERIAC_TEST_PYTHON and CELERIAC_TEST_REDIS_URL must be set")
        }
        _ => {
            eprintln!("skipped: run scripts/test.sh to start Redis and the Celery venv");
            None
        }
    }
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
}

/// Runs a Python script (a path, or `-c CODE`) with `args`, asserts it
/// succeeded and parses its stdout as JSON.
fn python_json(env: &Env, script: &[&str], args: &[&str]) -> serde_json::Value {
    let out = Command::new(&env.python)
        .args(script)
        .args(args)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "python {script:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn script(name: &str) -> String {
    python_dir().join(name).display().to_string()
}

fn celeriac_worker(url: &str) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", url, "-c", "2", "--diagnostic-tasks"]);
    LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-interop-worker")
}

fn celeriac(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run celeriac")
}

/// Asserts that `celeriac result ID --wait` prints `expected`.
fn assert_result(url: &str, id: &str, expected: &str) {
    let res = celeriac(&["result", id, "--wait", "--timeout", "60", "--broker", url]);
    assert_eq!(
        String::from_utf8_lossy(&res.stdout),
        expected,
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn python_clients_call_celeriac_workers() {
    let Some(env) = interop() else { return };
    let url = format!("{}/1", env.redis_base);
    let _worker = celeriac_worker(&url);
    let v = python_json(&env, &[&script("client.py")], &[&url]);
    assert_eq!(v["add"], 5, "AsyncResult.get() of celeriac.add(2, 3)");
    assert_eq!(v["kwargs"], 42, "kwargs map to parameters by name");
    assert_eq!(v["unicode"], "héllo wörld ✓ 日本");
    assert_eq!(v["nested"], true, "nested JSON comes back equal");
    assert_eq!(v["big"], 1024 * 1024, "a 1 MB payload round-trips");
    assert_eq!(
        v["priority"],
        serde_json::json!([0, 10, 18]),
        "every priority list is consumed"
    );
    let fail = &v["fail"];
    assert!(fail["message"].as_str().unwrap().contains("boom"), "{fail}");
    assert_eq!(fail["state"], "FAILURE");
    assert!(
        fail["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("boom")),
        "{fail}"
    );
    assert_eq!(
        v["chain_first_step"], 3,
        "a message carrying a chain is accepted and run"
    );
}

#[test]
fn celeriac_calls_python_celery_workers() {
    let Some(env) = interop() else { return };
    let url = format!("{}/2", env.redis_base);
    let mut cmd = Command::new(&env.python);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "pytasks",
        "worker",
        "-P",
        "solo",
        "-c",
        "1",
        "--loglevel",
        "INFO",
        "-n",
        "py@localhost",
    ])
    .current_dir(python_dir())
    .env("BROKER", &url)
    .env("PYTHONPATH", python_dir());
    let _worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "python-celery-worker");

    let out = celeriac(&[
        "call",
        "tasks.mul",
        "--args",
        "[6,7]",
        "--wait",
        "--timeout",
        "90",
        "--broker",
        &url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "42\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());

    let out = celeriac(&[
        "call",
        "tasks.boom",
        "--args",
        "[\"kaput\"]",
        "--wait",
        "--timeout",
        "90",
        "--broker",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a Python exception is a task failure: {stderr}"
    );
    assert!(
        stderr.contains("ValueError: kaput"),
        "typed error with exc_type and message: {stderr}"
    );
    assert!(
        stderr.contains("Traceback"),
        "Python's traceback text is shown: {stderr}"
    );
}

#[test]
fn the_job_server_and_cli_results_work_over_redis() {
    let Some(env) = interop() else { return };
    let url = format!("{}/3", env.redis_base);
    // The pp-style Server, pointed at Redis, with its own local worker.
    let server = celeriac::Server::builder()
        .broker(&url)
        .workers(2)
        .build()
        .unwrap();
    let jobs: Vec<_> = (0..20u64)
        .map(|n| server.submit(celeriac::builtins::fib::call(n)))
        .collect();
    for (n, j) in jobs.iter().enumerate() {
        assert_eq!(
            j.wait_timeout(std::time::Duration::from_secs(60)).unwrap(),
            celeriac::builtins::fib(n as u64)
        );
    }
    assert_eq!(server.stats().nodes[0].jobs, 20);
    assert!(server.active_nodes().contains_key("local"));
    drop(server);

    // `celeriac call` without --wait, then `celeriac result --wait`.
    let _worker = celeriac_worker(&url);
    let out = celeriac(&[
        "call",
        "celeriac.add",
        "--args",
        "[20,22]",
        "--broker",
        &url,
    ]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_result(&url, &id, "42\n");
    let meta = celeriac(&["result", &id, "--meta", "--broker", &url]);
    let doc: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(doc["status"], "SUCCESS");
    assert_eq!(doc["result"], 42);
    assert!(doc["date_done"].is_string());
}

fn kombu(env: &Env, mode: &str, url: &str) -> String {
    let out = Command::new(&env.python)
        .arg(python_dir().join("kombu_unacked.py"))
        .args([mode, url])
        .output()
        .expect("run kombu");
    assert!(
        out.status.success(),
        "kombu {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn python_kombu_restores_what_a_dead_celeriac_consumer_held() {
    use celeriac::prelude::*;
    let Some(env) = interop() else { return };
    let url = format!("{}/5", env.redis_base);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker =
        celeriac_redis::RedisBroker::open(&format!("{url}?visibility_timeout=3600")).unwrap();
    let msg = celeriac::Call::<i64>::new("celeriac.add")
        .arg(2)
        .arg(3)
        .to_message()
        .unwrap();
    rt.block_on(async {
        broker
            .publish(celeriac::Outgoing::from_message(&msg).unwrap())
            .await
            .unwrap();
        // Claimed and never acked: the consumer died holding it.
        let held = broker
            .claim(
                "doomed",
                &["celery".to_string()],
                1,
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(broker.queue_len("celery").await.unwrap(), 0);
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        kombu(&env, "restore", &url),
        "1",
        "kombu put the message back on its queue"
    );
    // A celeriac worker now runs the restored message.
    let _worker = celeriac_worker(&url);
    assert_result(&url, msg.id(), "5\n");
}

#[test]
fn celeriac_restores_what_a_dead_python_consumer_held() {
    let Some(env) = interop() else { return };
    let url = format!("{}/6", env.redis_base);
    // celeriac publishes (kombu's format), a Python kombu consumer takes the
    // message without acking and exits.
    let out = celeriac(&["call", "celeriac.add", "--args", "[40,2]", "--broker", &url]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tag = kombu(&env, "hold", &url);
    assert!(!tag.is_empty());
    // A celeriac worker with a 1 s visibility timeout restores and runs it.
    let _worker = celeriac_worker(&format!("{url}?visibility_timeout=1"));
    assert_result(&url, &id, "42\n");
}

#[test]
fn python_sees_retry_then_success() {
    let Some(env) = interop() else { return };
    let url = format!("{}/7", env.redis_base);
    let _worker = celeriac_worker(&url);
    let v = python_json(&env, &[&script("retry_states.py")], &[&url]);
    let states: Vec<&str> = v["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        states.contains(&"RETRY"),
        "Python saw the RETRY state: {states:?}"
    );
    assert_eq!(states.last(), Some(&"SUCCESS"), "{states:?}");
    let retry_at = states.iter().position(|s| *s == "RETRY").unwrap();
    assert!(
        !states[retry_at..].contains(&"PENDING"),
        "states only move forward: {states:?}"
    );
    assert_eq!(v["result"], 3, "three retries, success on the fourth try");
}

#[test]
fn python_control_revoke_is_honoured() {
    let Some(env) = interop() else { return };
    let url = format!("{}/8", env.redis_base);
    let _worker = celeriac_worker(&url);
    let v = python_json(&env, &[&script("revoke.py")], &[&url]);
    assert_eq!(v["revoked"]["state"], "REVOKED", "{v}");
    assert_eq!(v["revoked"]["error"], "TaskRevokedError", "{v}");
    assert_eq!(v["kept"], 4, "the task that was not revoked ran");
}

#[test]
fn python_control_revoke_terminate_kills_the_running_task() {
    let Some(env) = interop() else { return };
    let url = format!("{}/11", env.redis_base);
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", &url, "-c", "1", "-P", "processes"])
        .arg("--diagnostic-tasks");
    let _worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-interop-terminate");
    let v = python_json(&env, &[&script("revoke_terminate.py")], &[&url]);
    assert_eq!(v["terminated"]["state"], "REVOKED", "{v}");
    assert_eq!(v["terminated"]["error"], "TaskRevokedError", "{v}");
    assert!(v["seconds"].as_f64().unwrap() < 10.0, "{v}");
    assert_eq!(v["after"], 5, "the worker serves on: {v}");
}

#[test]
fn a_python_countdown_runs_once_after_its_eta() {
    let Some(env) = interop() else { return };
    let url = format!("{}/9", env.redis_base);
    let _a = celeriac_worker(&format!("{url}?visibility_timeout=1"));
    let _b = celeriac_worker(&format!("{url}?visibility_timeout=1"));
    let code = r#"
import json, sys, time
from celery import Celery
app = Celery("eta", broker=sys.argv[1], backend=sys.argv[1])
t = time.time()
r = app.send_task("celeriac.add", args=(2, 3), countdown=4)
v = r.get(timeout=60)
print(json.dumps({"value": v, "waited": time.time() - t}))
"#;
    let v = python_json(&env, &["-c", code], &[&url]);
    assert_eq!(v["value"], 5);
    assert!(
        v["waited"].as_f64().unwrap() >= 3.5,
        "not run before its eta: {v}"
    );
}
