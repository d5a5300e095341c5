//! The hardening options with the real binary.
//!
//! `--secret`: a worker with a secret runs
//! what `celeriac call --secret` signs (its retries included), and
//! dead-letters, with the reason and without a result, a message sent
//! without the secret and a signed one whose arguments were changed
//! afterwards. A worker without a secret ignores the signature. On a
//! Python Celery worker (private Redis), a signed message runs unchanged.
//!
//! `--max-result`: a result over the limit is stored as a FAILURE
//! `ResultTooLarge`, never as the value.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use celeriac_core::broker::prelude::*;
use celeriac_core::{Call, Outgoing, Secret};
use celeriac_embedded::SqliteBroker;
use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::CeleryWorker;
use celeriac_testkit::redis_server::RedisServer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");
const SECRET: &str = "a shared secret";

fn celeriac(dir: &Path, args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("CELERIAC_HOME", dir)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERIAC_SECRET");
    if let Some(s) = secret {
        cmd.args(["--secret", s]);
    }
    cmd.output().expect("run celeriac")
}

/// `celeriac worker` on `url`, with the secret in `CELERIAC_SECRET` if any.
fn worker(dir: &Path, url: &str, secret: Option<&str>) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-c", "2", "--diagnostic-tasks", "--broker", url])
        .env("CELERIAC_HOME", dir)
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERIAC_SECRET");
    if let Some(s) = secret {
        cmd.env("CELERIAC_SECRET", s);
    }
    LoggedChild::spawn(cmd, dir, "worker")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn call_wait(dir: &Path, url: &str, name: &str, args: &str, secret: Option<&str>) -> Output {
    celeriac(
        dir,
        &[
            "call",
            name,
            "--args",
            args,
            "--wait",
            "--timeout",
            "60",
            "--broker",
            url,
        ],
        secret,
    )
}

/// Waits (up to 60 s) until the dead-letter list has `n` entries; returns
/// its lines.
fn dead_letters(dir: &Path, url: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = celeriac(dir, &["dlq", "list", "--broker", url], None);
        let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A message for `celeriac.add(2, 3)` signed with `SECRET`, whose args
/// are then changed to `[2, 300]` in the envelope, signature kept.
fn altered_after_signing() -> (String, Vec<u8>) {
    let mut msg = Call::<i64>::new("celeriac.add")
        .arg(2)
        .arg(3)
        .to_message()
        .unwrap();
    Secret::new(SECRET).unwrap().sign(&mut msg).unwrap();
    let mut env: Value = serde_json::from_slice(&msg.encode().unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = String::from_utf8(b64.decode(env["body"].as_str().unwrap()).unwrap()).unwrap();
    assert!(body.starts_with("[[2,3]"), "{body}");
    let forged = body.replacen("[[2,3]", "[[2,300]", 1);
    env["body"] = json!(b64.encode(forged));
    (msg.id().to_string(), serde_json::to_vec(&env).unwrap())
}

#[test]
fn a_worker_with_a_secret_runs_signed_tasks_and_dead_letters_unsigned_and_altered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db", dir.path().display());
    let w = worker(dir.path(), &url, Some(SECRET));

    // Signed: runs, and so do its retries, which the worker signs again.
    let out = call_wait(dir.path(), &url, "celeriac.add", "[2,3]", Some(SECRET));
    assert_eq!(stdout(&out), "5\n", "stderr: {}", stderr(&out));
    let out = call_wait(dir.path(), &url, "celeriac.flaky", "[2]", Some(SECRET));
    assert_eq!(stdout(&out), "2\n", "two signed retries: {}", stderr(&out));

    // Unsigned.
    let out = celeriac(
        dir.path(),
        &["call", "celeriac.add", "--args", "[1,1]", "--broker", &url],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let unsigned_id = stdout(&out).trim().to_string();

    // Signed, then its args changed.
    let (forged_id, payload) = altered_after_signing();
    let broker = SqliteBroker::open(&url).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(broker.publish(Outgoing {
            queue: "celery".into(),
            priority: 0,
            eta: None,
            tag: "forged-1".into(),
            task_id: forged_id.clone(),
            payload,
        }))
        .unwrap();

    let lines = dead_letters(dir.path(), &url, 2);
    assert_eq!(lines.len(), 2, "{lines:?}\n{}", w.log());
    let line_of = |id: &str| {
        lines
            .iter()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} is not dead-lettered: {lines:?}"))
            .clone()
    };
    assert!(
        line_of(&unsigned_id).contains("unsigned message"),
        "{lines:?}"
    );
    assert!(
        line_of(&forged_id).contains("forged or altered message"),
        "{lines:?}"
    );
    for id in [&unsigned_id, &forged_id] {
        let res = celeriac(dir.path(), &["result", id, "--broker", &url], None);
        assert_eq!(res.status.code(), Some(4), "no result stored for {id}");
    }
    let log = w.log();
    assert!(
        log.contains("refusing a message whose signature does not check"),
        "{log}"
    );

    // Still serving signed work.
    let out = call_wait(dir.path(), &url, "celeriac.add", "[20,22]", Some(SECRET));
    assert_eq!(stdout(&out), "42\n", "stderr: {}", stderr(&out));
}

#[test]
fn a_worker_without_a_secret_ignores_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db", dir.path().display());
    let _w = worker(dir.path(), &url, None);
    let out = call_wait(dir.path(), &url, "celeriac.add", "[2,3]", Some(SECRET));
    assert_eq!(stdout(&out), "5\n", "stderr: {}", stderr(&out));
    let out = call_wait(dir.path(), &url, "celeriac.add", "[2,4]", None);
    assert_eq!(stdout(&out), "6\n", "stderr: {}", stderr(&out));
}

#[test]
fn an_empty_secret_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db", dir.path().display());
    let out = celeriac(
        dir.path(),
        &["call", "celeriac.add", "--broker", &url],
        Some(""),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("must not be empty"),
        "{}",
        stderr(&out)
    );
}

/// A signed message runs on a Python Celery worker as it is: the header is
/// one Celery does not know, and ignores.
#[test]
fn python_celery_workers_run_signed_messages() {
    let Ok(python) = std::env::var("CELERIAC_TEST_PYTHON") else {
        assert!(
            std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "CELERIAC_TEST_PYTHON must be set under scripts/test.sh"
        );
        eprintln!("skipped: CELERIAC_TEST_PYTHON is not set");
        return;
    };
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let dir = tempfile::tempdir().unwrap();
    let _py = CeleryWorker::new(&python, "pytasks")
        .pool(["solo", "-c", "1"])
        .node("py-signed@localhost")
        .broker(&url)
        .spawn(dir.path(), "python-worker");
    let out = celeriac(
        dir.path(),
        &[
            "call",
            "tasks.mul",
            "--args",
            "[6,7]",
            "--wait",
            "--timeout",
            "90",
            "--broker",
            &url,
        ],
        Some(SECRET),
    );
    assert_eq!(stdout(&out), "42\n", "stderr: {}", stderr(&out));
}

#[test]
fn a_result_over_max_result_is_stored_as_a_result_too_large_failure() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db", dir.path().display());
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-c", "1", "--max-result", "64", "--broker", &url])
        .env("CELERIAC_HOME", dir.path())
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERIAC_SECRET");
    let _w = LoggedChild::spawn(cmd, dir.path(), "worker");

    let small = "x".repeat(10);
    let out = call_wait(
        dir.path(),
        &url,
        "celeriac.echo",
        &format!("[\"{small}\"]"),
        None,
    );
    assert_eq!(stdout(&out), format!("\"{small}\"\n"), "{}", stderr(&out));

    let big = "y".repeat(1000);
    let out = celeriac(
        dir.path(),
        &[
            "call",
            "celeriac.echo",
            "--args",
            &format!("[\"{big}\"]"),
            "--broker",
            &url,
        ],
        None,
    );
    let id = stdout(&out).trim().to_string();
    let res = celeriac(
        dir.path(),
        &["result", &id, "--wait", "--timeout", "60", "--broker", &url],
        None,
    );
    assert_eq!(res.status.code(), Some(1), "a failure: {}", stdout(&res));
    let err = stderr(&res);
    assert!(err.contains("ResultTooLarge"), "{err}");
    assert!(
        err.contains("1002 bytes") && err.contains("limit of 64 bytes"),
        "names both sizes: {err}"
    );
    let meta = celeriac(
        dir.path(),
        &["result", &id, "--meta", "--broker", &url],
        None,
    );
    let doc = stdout(&meta);
    assert!(doc.contains("FAILURE") && !doc.contains(&big), "{doc}");
}
