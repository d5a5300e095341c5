//! Interoperability with real Python Celery, both ways: Python clients call
//! celeriac workers, celeriac calls Python workers. Each scenario runs on
//! Redis (broker and results, `redis::*`) and on RabbitMQ (an AMQP broker
//! with results in a private Redis, `amqp::*`), as one function taking the
//! [`Site`].
//!
//! `scripts/test.sh` starts a private `redis-server`, a private RabbitMQ
//! node and a venv with the pinned Celery, and names them in
//! `CELERIAC_TEST_REDIS_URL`, `CELERIAC_TEST_AMQP_URL` and
//! `CELERIAC_TEST_PYTHON`. Each Redis test uses its own database of the
//! shared server; each AMQP test its own vhost and its own `redis-server`.

use std::process::{Command, Output};

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, python_dir};
use celeriac_testkit::site::Site;

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

/// Runs each scenario `name(env, site)` as `redis::name` (on database `db`
/// of the shared Redis) and as `amqp::name`.
macro_rules! on_redis_and_amqp {
    ($($name:ident($db:expr)),* $(,)?) => {
        mod redis {
            $(
                #[test]
                fn $name() {
                    let Some(env) = super::interop() else { return };
                    super::$name(&env, &super::Site::shared_redis(format!("{}/{}", env.redis_base, $db)));
                }
            )*
        }
        mod amqp {
            $(
                #[test]
                fn $name() {
                    let Some(env) = super::interop() else { return };
                    let Some(site) = super::Site::amqp() else { return };
                    super::$name(&env, &site);
                }
            )*
        }
    };
}

on_redis_and_amqp!(
    python_clients_call_celeriac_workers(1),
    celeriac_calls_python_celery_workers(2),
    the_job_server_and_cli_results_work(3),
    python_sees_retry_then_success(7),
    python_control_revoke_is_honoured(8),
    python_control_revoke_terminate_kills_the_running_task(11),
    a_python_countdown_runs_once_after_its_eta(9),
    python_sees_unknown_tasks_expiry_and_a_thousand_results(12),
);

/// Celery's `rpc://` result backend on RabbitMQ: results travel as
/// messages to the client's reply queue, both ways (a Python client with
/// `backend='rpc://'` and a celeriac worker; `celeriac call --wait` with
/// `--result-backend rpc://` and a Python worker).
mod rpc {
    #[test]
    fn python_clients_call_celeriac_workers() {
        let Some(env) = super::interop() else { return };
        let Some(site) = super::Site::amqp_rpc() else {
            return;
        };
        super::python_clients_call_celeriac_workers(&env, &site);
    }

    #[test]
    fn celeriac_calls_python_celery_workers() {
        let Some(env) = super::interop() else { return };
        let Some(site) = super::Site::amqp_rpc() else {
            return;
        };
        super::celeriac_calls_python_celery_workers(&env, &site);
    }
}

/// Runs a Python script (a path, or `-c CODE`) with the site's broker URL
/// as its first argument (and its result backend in `BACKEND`), asserts
/// it succeeded and parses its stdout as JSON.
fn python_json(env: &Env, site: &Site, script: &[&str], args: &[&str]) -> serde_json::Value {
    let out = Command::new(&env.python)
        .args(script)
        .arg(&site.broker)
        .args(args)
        .env("BACKEND", &site.backend)
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

fn celeriac_worker(site: &Site) -> LoggedChild {
    celeriac_worker_on(site, &site.broker, &["-c", "2"])
}

/// A celeriac worker on `broker` (the site's, with options) with the
/// site's backend, and `extra` arguments (`-c N` among them).
fn celeriac_worker_on(site: &Site, broker: &str, extra: &[&str]) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "worker",
        "--broker",
        broker,
        "--result-backend",
        &site.backend,
    ])
    .arg("--diagnostic-tasks")
    .args(extra);
    LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-interop-worker")
}

fn celeriac(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run celeriac")
}

/// `celeriac ARGS --broker B --result-backend R` on the site.
fn celeriac_at(site: &Site, args: &[&str]) -> Output {
    celeriac(&[args, &site.conn()].concat())
}

/// Asserts that `celeriac result ID --wait` prints `expected`.
fn assert_result(site: &Site, id: &str, expected: &str) {
    let res = celeriac(
        &[
            &["result", id, "--wait", "--timeout", "60"][..],
            &site.conn(),
        ]
        .concat(),
    );
    assert_eq!(
        String::from_utf8_lossy(&res.stdout),
        expected,
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

fn python_clients_call_celeriac_workers(env: &Env, site: &Site) {
    let _worker = celeriac_worker(site);
    let v = python_json(env, site, &[&script("client.py")], &[]);
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

fn celeriac_calls_python_celery_workers(env: &Env, site: &Site) {
    let _worker = CeleryWorker::new(&env.python, "pytasks")
        .pool(["solo", "-c", "1"])
        .broker(&site.broker)
        .backend(&site.backend)
        .spawn(&std::env::temp_dir(), "python-celery-worker");

    let out = celeriac_at(
        site,
        &[
            "call",
            "tasks.mul",
            "--args",
            "[6,7]",
            "--wait",
            "--timeout",
            "90",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "42\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());

    let out = celeriac_at(
        site,
        &[
            "call",
            "tasks.boom",
            "--args",
            "[\"kaput\"]",
            "--wait",
            "--timeout",
            "90",
        ],
    );
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

    // A countdown and an expiry sent by celeriac, as Celery sends them: the
    // Python worker runs the first after its eta and revokes the second.
    let t = std::time::Instant::now();
    let out = celeriac_at(
        site,
        &[
            "call",
            "tasks.add",
            "--args",
            "[1,2]",
            "--countdown",
            "2",
            "--wait",
            "--timeout",
            "90",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
    assert!(t.elapsed().as_secs_f64() >= 1.5, "not run before its eta");
}

fn the_job_server_and_cli_results_work(_env: &Env, site: &Site) {
    // The pp-style Server, pointed at the site, with its own local worker.
    let server = celeriac::Server::builder()
        .broker(&site.broker)
        .backend(&site.backend)
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
    let _worker = celeriac_worker(site);
    let out = celeriac_at(site, &["call", "celeriac.add", "--args", "[20,22]"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_result(site, &id, "42\n");
    let meta = celeriac_at(site, &["result", &id, "--meta"]);
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

// Redis only: kombu's Redis transport restores unacked messages itself. On
// AMQP, RabbitMQ gives a dead consumer's messages back.
#[test]
fn python_kombu_restores_what_a_dead_celeriac_consumer_held() {
    use celeriac::prelude::*;
    let Some(env) = interop() else { return };
    let site = Site::shared_redis(format!("{}/5", env.redis_base));
    let url = site.broker.clone();
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
    let _worker = celeriac_worker(&site);
    assert_result(&site, msg.id(), "5\n");
}

#[test]
fn celeriac_restores_what_a_dead_python_consumer_held() {
    let Some(env) = interop() else { return };
    let site = Site::shared_redis(format!("{}/6", env.redis_base));
    let url = site.broker.clone();
    // celeriac publishes (kombu's format), a Python kombu consumer takes the
    // message without acking and exits.
    let out = celeriac(&["call", "celeriac.add", "--args", "[40,2]", "--broker", &url]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tag = kombu(&env, "hold", &url);
    assert!(!tag.is_empty());
    // A celeriac worker with a 1 s visibility timeout restores and runs it.
    let _worker = celeriac_worker_on(&site, &format!("{url}?visibility_timeout=1"), &["-c", "2"]);
    assert_result(&site, &id, "42\n");
}

fn python_sees_retry_then_success(env: &Env, site: &Site) {
    let _worker = celeriac_worker(site);
    let v = python_json(env, site, &[&script("retry_states.py")], &[]);
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

fn python_control_revoke_is_honoured(env: &Env, site: &Site) {
    let _worker = celeriac_worker(site);
    let v = python_json(env, site, &[&script("revoke.py")], &[]);
    assert_eq!(v["revoked"]["state"], "REVOKED", "{v}");
    assert_eq!(v["revoked"]["error"], "TaskRevokedError", "{v}");
    assert_eq!(v["kept"], 4, "the task that was not revoked ran");
}

fn python_control_revoke_terminate_kills_the_running_task(env: &Env, site: &Site) {
    let _worker = celeriac_worker_on(site, &site.broker, &["-c", "1", "-P", "processes"]);
    let v = python_json(env, site, &[&script("revoke_terminate.py")], &[]);
    assert_eq!(v["terminated"]["state"], "REVOKED", "{v}");
    assert_eq!(v["terminated"]["error"], "TaskRevokedError", "{v}");
    assert!(v["seconds"].as_f64().unwrap() < 10.0, "{v}");
    assert_eq!(v["after"], 5, "the worker serves on: {v}");
}

fn a_python_countdown_runs_once_after_its_eta(env: &Env, site: &Site) {
    // On Redis, a 1 s visibility timeout would rerun a task a worker holds
    // too long; the eta must not be held that way.
    let url = if site.is_redis() {
        format!("{}?visibility_timeout=1", site.broker)
    } else {
        site.broker.clone()
    };
    let _a = celeriac_worker_on(site, &url, &["-c", "2"]);
    let _b = celeriac_worker_on(site, &url, &["-c", "2"]);
    let code = r#"
import json, os, sys, time
from celery import Celery
app = Celery("eta", broker=sys.argv[1], backend=os.environ["BACKEND"])
t = time.time()
r = app.send_task("celeriac.add", args=(2, 3), countdown=4)
v = r.get(timeout=60)
print(json.dumps({"value": v, "waited": time.time() - t}))
"#;
    let v = python_json(env, site, &["-c", code], &[]);
    assert_eq!(v["value"], 5);
    assert!(
        v["waited"].as_f64().unwrap() >= 3.5,
        "not run before its eta: {v}"
    );
}

fn python_sees_unknown_tasks_expiry_and_a_thousand_results(env: &Env, site: &Site) {
    let _worker = celeriac_worker(site);
    let code = r#"
import json, os, sys
from celery import Celery
from celery.result import ResultSet
app = Celery("more", broker=sys.argv[1], backend=os.environ["BACKEND"])
out = {}
r = app.send_task("no.such.task", args=(1,))
try:
    r.get(timeout=60)
    out["unknown"] = "no exception"
except Exception as exc:
    out["unknown"] = {"state": r.state, "error": type(exc).__name__, "message": str(exc)}
# Due after it expires: the worker must not run it.
r = app.send_task("celeriac.add", args=(1, 1), countdown=2, expires=1)
try:
    r.get(timeout=60)
    out["expired"] = "no exception"
except Exception as exc:
    out["expired"] = {"state": r.state, "error": type(exc).__name__}
rs = ResultSet([app.send_task("celeriac.add", args=(i, 1)) for i in range(1000)])
got = rs.get(timeout=180)
out["thousand"] = [len(got), sum(got), got == [i + 1 for i in range(1000)]]
print(json.dumps(out))
"#;
    let v = python_json(env, site, &["-c", code], &[]);
    assert_eq!(v["unknown"]["state"], "FAILURE", "{v}");
    assert_eq!(v["unknown"]["error"], "NotRegistered", "{v}");
    assert!(
        v["unknown"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no.such.task")),
        "{v}"
    );
    assert_eq!(v["expired"]["state"], "REVOKED", "{v}");
    assert_eq!(v["expired"]["error"], "TaskRevokedError", "{v}");
    assert_eq!(
        v["thousand"],
        serde_json::json!([1000, 500_500, true]),
        "1000 results, each its own: {v}"
    );
    // The unknown task's message is kept, with its reason, not dropped.
    let list = celeriac_at(site, &["dlq", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("no.such.task") && l.contains("unknown task")),
        "{text}\n{}",
        String::from_utf8_lossy(&list.stderr)
    );
}

/// RabbitMQ only: priorities need an `x-max-priority` queue there (on
/// Redis, 0 is the highest and every queue has them). A Python client
/// with `task_queue_max_priority = 10` declares its queue so; a celeriac
/// worker with `?max_priority=10` declares it the same way and gets the
/// messages highest priority first.
#[test]
fn on_amqp_python_priorities_run_highest_first() {
    let Some(env) = interop() else { return };
    let Some(site) = Site::amqp() else { return };
    let code = r#"
import json, os, sys
from celery import Celery
app = Celery("prio", broker=sys.argv[1], backend=os.environ["BACKEND"])
app.conf.task_queue_max_priority = 10
app.conf.task_default_queue = "prio"
print(json.dumps([app.send_task("celeriac.echo", args=(p,), priority=p).id for p in (1, 9, 5, 3, 7)]))
"#;
    let ids = python_json(&env, &site, &["-c", code], &[]);
    let broker = format!("{}?max_priority=10&prefetch_count=1", site.broker);
    let w = celeriac_worker_on(&site, &broker, &["-c", "1", "-Q", "prio"]);
    let mut done: Vec<(f64, i64)> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let out = celeriac_at(
                &site,
                &[
                    "result",
                    id.as_str().unwrap(),
                    "--wait",
                    "--timeout",
                    "60",
                    "--meta",
                ],
            );
            let meta: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", w.log()));
            let at = celeriac_core::time::parse_iso(meta["date_done"].as_str().unwrap()).unwrap();
            (at, meta["result"].as_i64().unwrap())
        })
        .collect();
    done.sort_by(|a, b| a.0.total_cmp(&b.0));
    let order: Vec<i64> = done.iter().map(|(_, p)| *p).collect();
    assert_eq!(order, [9, 7, 5, 3, 1], "highest priority first");
    assert!(
        !w.log().contains("other arguments"),
        "the worker declared the queue as Python did:\n{}",
        w.log()
    );
}
