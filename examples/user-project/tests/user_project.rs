//! The user's project end to end: its own binary, whose `main` is
//! `celeriac::cli::main()`, runs a worker on threads and on processes
//! against a private redis-server, and a Python Celery client calls the
//! project's tasks, sees a missing argument's TypeError, the process that
//! ran each task, and STARTED then PROGRESS while a task runs.

use std::process::Command;

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{interop_python, python_dir};
use celeriac_testkit::redis_server::RedisServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_user-project");

fn worker(url: &str, pool: &str, extra: &[&str]) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", url, "-P", pool, "-c", "2"])
        .args(extra);
    let w = LoggedChild::spawn(cmd, &std::env::temp_dir(), "user-project-worker");
    let log = w.wait_for_log("ready");
    assert!(log.contains("ready"), "the worker did not start:\n{log}");
    w
}

fn python_client(python: &str, url: &str, worker_pid: u32) -> Value {
    let out = Command::new(python)
        .arg(python_dir().join("user_project.py"))
        .args([url, &worker_pid.to_string()])
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "user_project.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from user_project.py")
}

fn check(out: &Value, on_processes: bool) {
    assert_eq!(out["add"], 5, "{out}");
    assert_eq!(out["kwargs"], 42, "{out}");
    assert_eq!(out["missing"]["type"], "TypeError", "{out}");
    assert!(
        out["missing"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing 1 required positional argument: 'y'")),
        "{out}"
    );
    assert_eq!(out["ran_in_worker_process"], !on_processes, "{out}");
    assert_eq!(
        out["sleep_started"], on_processes,
        "STARTED for every task only with --track-started: {out}"
    );
    assert_eq!(out["words"], 6, "{out}");
    let states: Vec<&Value> = out["states"].as_array().expect("states").iter().collect();
    let started = states
        .iter()
        .position(|s| s[0] == "STARTED")
        .unwrap_or_else(|| panic!("STARTED seen: {out}"));
    assert!(
        states[started][1]["pid"].is_u64() && states[started][1]["hostname"].is_string(),
        "STARTED's info is Celery's (pid, hostname): {out}"
    );
    let progress: Vec<&Value> = states
        .iter()
        .filter(|s| s[0] == "PROGRESS")
        .map(|s| &s[1])
        .collect();
    assert!(!progress.is_empty(), "PROGRESS seen: {out}");
    assert!(
        progress
            .iter()
            .all(|p| p["total"] == 3 && p["done"].is_u64()),
        "PROGRESS info as the task set it: {out}"
    );
    let first_progress = states.iter().position(|s| s[0] == "PROGRESS").unwrap();
    assert!(started < first_progress, "STARTED before PROGRESS: {out}");
}

#[test]
fn python_calls_the_projects_own_tasks_on_threads_and_on_processes() {
    let Some(python) = interop_python() else {
        return;
    };
    let redis = RedisServer::start();
    let url = redis.url("");
    // Threads without --track-started (only count_words asks for STARTED),
    // processes with it (every task).
    for (pool, on_processes) in [("threads", false), ("processes", true)] {
        let track: &[&str] = if on_processes {
            &["--track-started"]
        } else {
            &[]
        };
        let w = worker(&url, pool, track);
        let out = python_client(&python, &url, w.id());
        check(&out, on_processes);
        drop(w);
    }
}

#[test]
fn the_binary_is_the_whole_cli() {
    let out = Command::new(BIN).arg("tasks").output().unwrap();
    assert!(out.status.success());
    let names = String::from_utf8_lossy(&out.stdout);
    for task in [
        "proj.add",
        "proj.whoami",
        "proj.count_words",
        "celeriac.add",
    ] {
        assert!(names.lines().any(|l| l == task), "{task} in:\n{names}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in [
        "worker", "call", "result", "revoke", "dlq", "inspect", "config",
    ] {
        assert!(help.contains(sub), "{sub} in:\n{help}");
    }
}
