//! Remote control across Python Celery and celeriac, on a private Redis
//! (`redis::*`) and on RabbitMQ (`amqp::*`, results in a private Redis):
//! Python's `app.control` and the `celery inspect`/`celery control`
//! commands against a celeriac worker, and `celeriac inspect`/`control`
//! against a Python Celery worker.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, interop_python as python, python_dir};
use celeriac_testkit::site::Site;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");
const NODE: &str = "rw@localhost";
const PY_NODE: &str = "py@localhost";

celeriac_testkit::python_scenarios_on_redis_and_amqp!(
    python_app_control_gets_celerys_replies_from_a_celeriac_worker,
    celeriac_inspects_and_controls_a_python_worker,
);

fn celeriac_worker(site: &Site) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-c", "2", "-n", NODE])
        .args(site.conn());
    let w = LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-control-worker");
    let log = w.wait_for_log("worker ready");
    assert!(
        log.contains("worker ready"),
        "the worker did not start:\n{log}"
    );
    w
}

fn celery(python: &str, site: &Site, args: &[&str]) -> Output {
    Command::new(python)
        .args(["-m", "celery", "-A", "pytasks"])
        .args(args)
        .current_dir(python_dir())
        .env("BROKER", &site.broker)
        .env("BACKEND", &site.backend)
        .env("PYTHONPATH", python_dir())
        .output()
        .expect("run celery")
}

fn celeriac(site: &Site, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(site.conn())
        .output()
        .expect("run celeriac")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `celeriac ARGS --json` against the site: the replies as JSON (without
/// `-d`, after a second without another reply).
fn celeriac_json(site: &Site, args: &[&str]) -> Value {
    let o = celeriac(site, &[args, &["--json", "-t", "1"]].concat());
    assert!(o.status.success(), "celeriac {args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// Waits until the process exits; its status.
fn exits(child: &mut LoggedChild) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "it did not stop:\n{}",
            child.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn python_app_control_gets_celerys_replies_from_a_celeriac_worker(python: &str, site: &Site) {
    let mut worker = celeriac_worker(site);
    let out = Command::new(python)
        .arg(python_dir().join("control.py"))
        .args([&site.broker, NODE])
        .env("BACKEND", &site.backend)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "control.py failed:\n{}\n{}",
        text(&out),
        worker.log()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("control.py prints JSON");
    let ok = |s: &str| json!([{NODE: {"ok": s}}]);

    assert_eq!(v["ping"], json!({NODE: {"ok": "pong"}}), "{v}");
    assert_eq!(v["ping_all"], json!({NODE: {"ok": "pong"}}), "{v}");
    assert_eq!(v["ping_glob"], json!({NODE: {"ok": "pong"}}), "{v}");
    assert_eq!(v["ping_other"], Value::Null, "nobody else answers: {v}");
    let stats = &v["stats"][NODE];
    assert_eq!(stats["pool"]["max-concurrency"], 2, "{stats}");
    assert_eq!(stats["pid"], worker.id(), "{stats}");
    assert!(stats["clock"].is_string(), "{stats}");
    assert_eq!(stats["broker"]["transport"], site.transport(), "{stats}");
    assert_eq!(stats["broker"]["port"], site.broker_port(), "{stats}");
    assert_eq!(stats["prefetch_count"], 8, "{stats}");
    if !site.is_redis() {
        // RabbitMQ applies it: the consumer's basic.qos is -c 2 × 4.
        let vhost = site.broker.rsplit('/').next().unwrap();
        assert_eq!(stats["broker"]["virtual_host"], vhost, "{stats}");
        assert_eq!(stats["broker"]["ssl"], false, "{stats}");
        let consumers = celeriac_testkit::rabbit_server::consumer_prefetch(&site.broker);
        assert!(
            consumers.contains(&("celery".to_string(), "8".to_string())),
            "{consumers:?}"
        );
    }
    assert!(stats["rusage"]["utime"].is_number(), "{stats}");
    let registered = v["registered"][NODE].as_array().unwrap();
    assert!(registered.contains(&json!("celeriac.add")), "{v}");
    assert!(
        registered
            .iter()
            .all(|t| !t.as_str().unwrap().starts_with("celery."))
    );
    assert_eq!(v["active_queues"][NODE][0]["name"], "celery", "{v}");
    assert_eq!(v["active_queues"][NODE][0]["exchange"]["type"], "direct");
    assert!(
        v["conf"][NODE]["broker_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}://", site.transport()))
    );
    assert!(
        v["report"][NODE]["ok"]
            .as_str()
            .unwrap()
            .contains("celeriac")
    );
    // The eta task waits in the broker, listed in Celery's shape. RabbitMQ
    // keeps it in a delay queue that cannot be browsed: the reply says so.
    if site.is_redis() {
        let scheduled = &v["scheduled"][NODE];
        assert_eq!(scheduled.as_array().map(Vec::len), Some(1), "{v}");
        assert!(
            scheduled[0]["eta"]
                .as_str()
                .is_some_and(|e| celeriac::time::parse_iso(e).is_some()),
            "{v}"
        );
        assert_eq!(scheduled[0]["priority"], 6, "{v}");
        let request = &scheduled[0]["request"];
        assert_eq!(request["id"], v["later_id"], "{v}");
        assert_eq!(request["name"], "celeriac.echo", "{v}");
        assert_eq!(request["args"], json!([7]), "{v}");
        assert_eq!(request["hostname"], NODE, "{v}");
        assert_eq!(request["time_start"], Value::Null, "{v}");
        assert_eq!(
            v["query_later"][NODE][v["later_id"].as_str().unwrap()][0],
            "scheduled",
            "{v}"
        );
    } else {
        assert!(
            v["scheduled"][NODE]["error"]
                .as_str()
                .is_some_and(|e| e.contains("does not list its delayed messages")),
            "{v}"
        );
    }

    let active = &v["active"][NODE][0];
    assert_eq!(active["name"], "celeriac.sleep", "{v}");
    assert_eq!(active["args"], "(2,)", "safe=True: the repr: {v}");
    assert_eq!(active["hostname"], NODE);
    assert!(active["time_start"].as_f64().unwrap() > 0.0);
    let slow_id = active["id"].as_str().unwrap();
    assert_eq!(v["query_task"][NODE][slow_id][0], "active", "{v}");

    assert_eq!(
        v["revoke"],
        ok("tasks {'never-ran'} flagged as revoked"),
        "{v}"
    );
    assert_eq!(v["revoked"], json!({NODE: ["never-ran"]}), "{v}");
    assert_eq!(v["revoked_state"], "REVOKED", "5.7: marked at once: {v}");
    assert_eq!(v["pool_grow"], ok("pool will grow"), "{v}");
    assert_eq!(v["max_concurrency"], 3, "{v}");
    assert_eq!(v["pool_shrink"], ok("pool will shrink"), "{v}");
    assert_eq!(
        v["rate_limit"],
        ok("new rate limit set successfully"),
        "{v}"
    );
    assert_eq!(
        v["rate_limit_unknown"],
        json!([{NODE: {"error": "unknown task"}}])
    );
    assert!(
        v["registered_after"][NODE]
            .as_array()
            .unwrap()
            .contains(&json!("celeriac.add [rate_limit=10/m]")),
        "{v}"
    );
    assert_eq!(v["time_limit"], ok("time limits set successfully"), "{v}");
    assert_eq!(v["add_consumer"], ok("add consumer extra"), "{v}");
    assert_eq!(v["extra_result"], 5, "a task on the added queue ran: {v}");
    assert_eq!(v["queues_after_add"], json!(["celery", "extra"]), "{v}");
    assert_eq!(
        v["cancel_consumer"],
        ok("no longer consuming from extra"),
        "{v}"
    );
    assert_eq!(v["enable_events"], ok("task events enabled"), "{v}");
    assert_eq!(v["disable_events"], ok("task events disabled"), "{v}");
    assert_eq!(
        v["autoscale"],
        json!([{NODE: {"error": "ValueError('Autoscale not enabled')"}}])
    );
    assert_eq!(
        v["unknown"],
        json!([{NODE: {"error": "KeyError('no_such_cmd')"}}])
    );
    assert!(v["clock"][NODE]["clock"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["slow"], 2.0, "{v}");
    assert_eq!(
        v["total"],
        json!({"celeriac.add": 1, "celeriac.sleep": 1}),
        "{v}"
    );

    // The `celery` command line too.
    let o = celery(python, site, &["inspect", "ping", "-d", NODE]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{NODE}: OK")) && text(&o).contains("pong"),
        "{}",
        text(&o)
    );
    let o = celery(python, site, &["inspect", "stats", "--json"]);
    let stats: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(stats[NODE]["pool"]["max-concurrency"], 2);
    let o = celery(python, site, &["control", "pool_grow", "2", "-d", NODE]);
    assert!(text(&o).contains("pool will grow"), "{}", text(&o));
    let o = celery(
        python,
        site,
        &["control", "add_consumer", "more", "-d", NODE],
    );
    assert!(text(&o).contains("add consumer more"), "{}", text(&o));
    let queues = celeriac_json(site, &["inspect", "active_queues"]);
    assert_eq!(queues[NODE][1]["name"], "more", "{queues}");
    let o = celery(python, site, &["status"]);
    assert!(text(&o).contains("1 node online."), "{}", text(&o));
    // A shutdown gets no reply (celery says so) and stops the worker warm.
    celery(python, site, &["control", "shutdown", "-d", NODE]);
    assert!(exits(&mut worker).success());
    assert!(worker.log().contains("Got shutdown from remote"));
}

fn celeriac_inspects_and_controls_a_python_worker(python: &str, site: &Site) {
    let mut worker = python_worker(python, site, PY_NODE, &["prefork", "-c", "1"], false);

    assert_eq!(
        celeriac_json(site, &["inspect", "ping"]),
        json!({PY_NODE: {"ok": "pong"}})
    );
    let o = celeriac(site, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("->  {PY_NODE}: OK")),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("1 node online."), "{}", text(&o));
    let stats = celeriac_json(site, &["inspect", "stats"]);
    let s = &stats[PY_NODE];
    assert_eq!(s["pool"]["max-concurrency"], 1, "{stats}");
    assert_eq!(
        s["pool"]["implementation"],
        "celery.concurrency.prefork:TaskPool"
    );
    assert_eq!(s["pid"], worker.id(), "{stats}");
    assert_eq!(
        celeriac_json(site, &["inspect", "registered"]),
        json!({PY_NODE: ["tasks.add", "tasks.boom", "tasks.mul", "tasks.progress", "tasks.sleep"]})
    );
    assert_eq!(
        celeriac_json(site, &["inspect", "active"]),
        json!({PY_NODE: []})
    );
    let queues = celeriac_json(site, &["inspect", "active_queues"]);
    assert_eq!(queues[PY_NODE][0]["name"], "celery", "{queues}");
    assert_eq!(
        celeriac_json(site, &["inspect", "revoked", "-d", PY_NODE]),
        json!({PY_NODE: []})
    );

    assert_eq!(
        celeriac_json(site, &["control", "rate_limit", "tasks.add", "10/m"]),
        json!({PY_NODE: {"ok": "new rate limit set successfully"}})
    );
    let registered = celeriac_json(site, &["inspect", "registered"]);
    assert!(
        registered[PY_NODE]
            .as_array()
            .unwrap()
            .contains(&json!("tasks.add [rate_limit=10/m]")),
        "{registered}"
    );
    assert_eq!(
        celeriac_json(site, &["control", "pool_grow", "1"]),
        json!({PY_NODE: {"ok": "pool will grow"}})
    );
    // Prefork grows its processes (its `max-concurrency` stays as it was),
    // in the background: ask until the new child shows, for up to 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = celeriac_json(site, &["inspect", "stats"]);
        let processes = stats[PY_NODE]["pool"]["processes"]
            .as_array()
            .map_or(0, Vec::len);
        if processes == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not grow to 2 processes: {stats}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        celeriac_json(site, &["control", "add_consumer", "extra"]),
        json!({PY_NODE: {"ok": "add consumer extra"}})
    );
    let o = celeriac(site, &["inspect", "ping", "-d", "nobody@x", "-t", "0.5"]);
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    let o = celeriac(site, &["control", "shutdown", "-d", PY_NODE]);
    assert!(o.status.success(), "{}", text(&o));
    exits(&mut worker);
}

/// A Python worker of `pytasks` on `site` as `node`, with pool arguments
/// `pool` (`-P` first), with or without mingle.
fn python_worker(
    python: &str,
    site: &Site,
    node: &str,
    pool: &[&str],
    mingle: bool,
) -> LoggedChild {
    CeleryWorker::new(python, "pytasks")
        .pool(pool.iter().copied())
        .node(node)
        .args(if mingle {
            None
        } else {
            Some("--without-mingle")
        })
        .broker(&site.broker)
        .backend(&site.backend)
        .start(&std::env::temp_dir(), "python-worker")
}

/// Mingle both ways: a celeriac worker starting beside a Python worker
/// learns the ids the Python worker holds as revoked (and skips such a
/// task), and a Python worker starting later learns them from the
/// celeriac worker.
#[test]
fn mingle_shares_revoked_ids_between_celeriac_and_python_workers() {
    let Some(python) = python() else { return };
    let site = Site::redis();
    let url = site.broker.clone();
    let mut py = python_worker(&python, &site, PY_NODE, &["solo"], false);
    // Only the Python worker hears this revoke: no celeriac process is
    // on the broker to record it.
    let o = celery(&python, &site, &["control", "revoke", "mingle-x"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        celeriac_json(&site, &["inspect", "revoked", "-d", PY_NODE]),
        json!({PY_NODE: ["mingle-x"]})
    );

    let mut cmd = Command::new(BIN);
    cmd.args([
        "worker", "--broker", &url, "-c", "1", "-n", NODE, "-Q", "mingleq",
    ]);
    let mut worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-mingle-worker");
    let log = worker.wait_for_log("worker ready");
    assert!(log.contains("mingle: sync with 1 nodes"), "{log}");
    assert_eq!(
        celeriac_json(&site, &["inspect", "revoked", "-d", NODE]),
        json!({NODE: ["mingle-x"]})
    );
    // A task with that id, sent by Python to the celeriac worker's queue:
    // discarded as revoked, not run.
    let o = Command::new(&python)
        .args([
            "-c",
            "import sys; from celery import Celery; \
             Celery('s', broker=sys.argv[1]).send_task('celeriac.add', args=(1, 2), \
             task_id='mingle-x', queue='mingleq')",
            &url,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let log = worker.wait_for_log("mingle-x");
    assert!(
        log.contains("Discarding revoked task: celeriac.add[mingle-x]"),
        "{log}"
    );
    assert!(!log.contains("succeeded"), "{log}");

    // The Python worker goes; a new one learns the id from the celeriac
    // worker's answer to its hello.
    celeriac(&site, &["control", "shutdown", "-d", PY_NODE]);
    exits(&mut py);
    let py2_node = "py2@localhost";
    let mut py2 = python_worker(&python, &site, py2_node, &["solo"], true);
    assert!(
        py2.log().contains("mingle: sync with 1 nodes"),
        "{}",
        py2.log()
    );
    assert_eq!(
        celeriac_json(&site, &["inspect", "revoked", "-d", py2_node]),
        json!({py2_node: ["mingle-x"]})
    );
    celeriac(&site, &["control", "shutdown"]);
    exits(&mut py2);
    assert!(exits(&mut worker).success());
}
