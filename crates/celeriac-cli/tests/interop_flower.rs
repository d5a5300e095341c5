//! A real Flower 2.x against a celeriac worker on a private Redis, checked
//! through Flower's HTTP API: the worker online with stats and registered
//! tasks, its tasks with state and runtime (from Celery events), and
//! Flower's pool grow and revoke actions taking effect. (Flower's rate-limit
//! action accepts only tasks its own Celery app defines; the rate_limit
//! command itself is tested with Python's `celery control` in
//! interop_control.rs.)

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
        .args(["-m", "celery", "--broker", &url, "flower"])
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

    for i in 0..3 {
        let o = celeriac(
            &url,
            &[
                "call",
                "celeriac.add",
                "--args",
                &format!("[{i},1]"),
                "--wait",
            ],
        );
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
    let bad = tasks.iter().find(|t| t["state"] == "FAILURE").unwrap();
    assert!(
        bad["exception"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError")),
        "{bad}"
    );
    // The dashboard's counters and worker fields.
    let dash = &seen["dashboard"];
    assert_eq!(dash["status"], true, "{dash}");

    assert!(dash["task-succeeded"].as_u64() >= Some(3), "{dash}");
    assert!(dash["task-failed"].as_u64() >= Some(1), "{dash}");
    // Flower's actions.
    assert_eq!(seen["grow"][0], 200, "{seen}");
    assert_eq!(seen["pool_after_grow"]["max-concurrency"], 3, "{seen}");
    assert_eq!(seen["revoke"][0], 200, "{seen}");
    // The revoke holds: the task that was due later ends REVOKED at once.
    let r = celeriac(
        &url,
        &["result", &later_id, "--meta", "--wait", "--timeout", "90"],
    );
    let meta: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
    assert_eq!(meta["status"], "REVOKED", "{}", text(&r));
}
