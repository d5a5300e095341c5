//! A real Flower 2.x against a celeriac worker on a private Redis, checked
//! through Flower's HTTP API: the worker online with stats and registered
//! tasks, the fields of its heartbeats on the dashboard, its tasks with
//! state and runtime (from Celery events), and Flower's actions taking
//! effect: pool grow and shrink, rate limit, time limits and revoke.
//!
//! Flower runs with `-A flower_app` (tests/python/flower_app.py), an app
//! that declares the task names the worker registers: Flower's task
//! actions refuse a name its own app does not define, for Python workers
//! too.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{interop_python as python, python_dir};
use celeriac_testkit::redis_server::RedisServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");
const NODE: &str = "flw@localhost";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` on Flower at `port` (empty on any error).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    if s.write_all(req.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

fn celeriac(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--broker", url])
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

#[test]
fn flower_shows_and_steers_a_celeriac_worker() {
    let Some(python) = python() else { return };
    let has_flower = Command::new(&python)
        .args(["-c", "import flower"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_flower,
        "flower is missing from the test venv (tests/python/requirements.txt)"
    );
    let redis = RedisServer::start();
    let url = redis.url("");

    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", &url, "-c", "2", "-n", NODE, "-E"]);
    let worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-flower-worker");
    worker.wait_for_log("worker ready");

    let port = free_port();
    let flower_log = tempfile::NamedTempFile::new().unwrap();
    let mut flower = Command::new(&python)
        .args([
            "-m",
            "celery",
            "-A",
            "flower_app",
            "--broker",
            &url,
            "flower",
        ])
        .arg("--address=127.0.0.1")
        .arg(format!("--port={port}"))
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .current_dir(python_dir())
        .stdout(Stdio::null())
        .stderr(flower_log.reopen().unwrap())
        .spawn()
        .expect("start flower");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "flower did not listen: {}",
            std::fs::read_to_string(flower_log.path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Flower subscribes to events on a thread of its own, after it
    // listens: wait until it has seen the worker (its heartbeat, which
    // Flower asks for once subscribed), so that no event below is sent
    // before Flower hears them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(port, "/workers?json=1").contains(NODE) {
        assert!(
            Instant::now() < deadline,
            "flower never saw the worker: {}",
            std::fs::read_to_string(flower_log.path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    for i in 0..3 {
        let args = format!("[{i},1]");
        let mut call = vec!["call", "celeriac.add", "--args", &args, "--wait"];
        // The first one with Celery's task-sent event, from the client.
        if i == 0 {
            call.push("--sent-event");
        }
        let o = celeriac(&url, &call);
        assert!(o.status.success(), "{}", text(&o));
    }
    let failed = celeriac(&url, &["call", "celeriac.add", "--args", "[1]", "--wait"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    // A task due in five minutes, for Flower to revoke.
    let later = celeriac(
        &url,
        &[
            "call",
            "celeriac.echo",
            "--args",
            "[1]",
            "--countdown",
            "300",
        ],
    );
    assert!(later.status.success(), "{}", text(&later));
    let later_id = String::from_utf8_lossy(&later.stdout).trim().to_string();

    let out = Command::new(&python)
        .arg(python_dir().join("flower_check.py"))
        .args([&format!("http://127.0.0.1:{port}"), NODE, &later_id])
        .output()
        .expect("run flower_check.py");
    let _ = flower.kill();
    let _ = flower.wait();
    assert!(
        out.status.success(),
        "{}\nflower's log:\n{}\nworker's log:\n{}",
        text(&out),
        std::fs::read_to_string(flower_log.path()).unwrap_or_default(),
        worker.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Online, with stats and registered tasks from remote control.
    let registered: Vec<&str> = seen["registered"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(registered.contains(&"celeriac.add"), "{seen}");
    assert_eq!(seen["pool"]["max-concurrency"], 2, "{seen}");
    assert_eq!(seen["active_queues"][0], "celery", "{seen}");
    // Tasks with state and runtime, from events.
    let tasks = seen["tasks"].as_array().unwrap();
    let ok: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["state"] == "SUCCESS" && t["name"] == "celeriac.add")
        .collect();
    assert_eq!(ok.len(), 3, "{seen}");
    for t in &ok {
        assert!(t["runtime"].as_f64().is_some_and(|r| r >= 0.0), "{t}");
        assert!(t["started"].as_f64().is_some(), "{t}");
    }
    // The task sent with --sent-event is known from its client too.
    let sent: Vec<&&Value> = ok.iter().filter(|t| t["sent"].is_number()).collect();
    assert_eq!(sent.len(), 1, "{seen}");
    assert!(
        sent[0]["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("gen") && c.contains('@')),
        "{seen}"
    );
    let bad = tasks.iter().find(|t| t["state"] == "FAILURE").unwrap();
    assert!(
        bad["exception"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError")),
        "{bad}"
    );
    // The dashboard's counters, and the worker's fields from its
    // worker-heartbeat events.
    let dash = &seen["dashboard"];
    assert_eq!(dash["status"], true, "{dash}");
    assert!(dash["task-succeeded"].as_u64() >= Some(3), "{dash}");
    assert!(dash["task-failed"].as_u64() >= Some(1), "{dash}");
    assert!(dash["worker-heartbeat"].as_u64() >= Some(1), "{dash}");
    assert_eq!(dash["sw_ident"], "celeriac", "{dash}");
    assert_eq!(dash["sw_ver"], env!("CARGO_PKG_VERSION"), "{dash}");
    assert_eq!(dash["freq"], 2.0, "{dash}");
    assert_eq!(dash["processed"].as_u64(), Some(4), "{dash}");
    assert_eq!(dash["active"].as_u64(), Some(0), "{dash}");
    assert_eq!(dash["loadavg"].as_array().map(Vec::len), Some(3), "{dash}");
    assert_eq!(dash["pid"], worker.id(), "{dash}");
    // Flower's actions.
    assert_eq!(seen["grow"][0], 200, "{seen}");
    assert_eq!(seen["pool_after_grow"]["max-concurrency"], 3, "{seen}");
    assert_eq!(seen["shrink"][0], 200, "{seen}");
    assert_eq!(seen["pool_after_shrink"]["max-concurrency"], 2, "{seen}");
    assert_eq!(seen["rate_limit"][0], 200, "{seen}");
    assert!(
        seen["rate_limit"][1]
            .as_str()
            .is_some_and(|m| m.contains("new rate limit set successfully")),
        "{seen}"
    );
    assert_eq!(
        seen["registered_after_rate_limit"], "celeriac.add [rate_limit=10/m]",
        "{seen}"
    );
    assert_eq!(seen["time_limit"][0], 200, "{seen}");
    assert_eq!(seen["scheduled_on_page"], true, "{seen}");
    assert_eq!(seen["revoke"][0], 200, "{seen}");
    // The revoke holds: the task that was due later ends REVOKED at once.
    let r = celeriac(
        &url,
        &["result", &later_id, "--meta", "--wait", "--timeout", "90"],
    );
    let meta: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
    assert_eq!(meta["status"], "REVOKED", "{}", text(&r));
}
