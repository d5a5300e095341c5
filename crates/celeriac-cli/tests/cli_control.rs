//! `celeriac inspect`, `control`, `status` and `purge`, and the worker's
//! banner, on the default broker (the SQLite file under `CELERIAC_HOME`),
//! with the worker and the commands in separate processes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use celeriac_testkit::process::LoggedChild;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");
const NODE: &str = "cw@localhost";

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CELERIAC_HOME", dir)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND");
    cmd
}

fn celeriac(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("run celeriac")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `celeriac ARGS --json -d NODE`: the replies as JSON (naming the node,
/// the command returns once it replied).
fn json_of(dir: &Path, args: &[&str]) -> Value {
    let o = celeriac(dir, &[args, &["--json", "-t", "5", "-d", NODE]].concat());
    assert!(o.status.success(), "celeriac {args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// `celeriac purge ARGS` answering the prompt with `answer`.
fn purge(dir: &Path, args: &[&str], answer: &str) -> Output {
    let mut child = command(dir)
        .arg("purge")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run celeriac purge");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A worker whose stdout (the banner) goes to `dir/banner.txt`.
fn worker(dir: &Path) -> LoggedChild {
    let banner = std::fs::File::create(dir.join("banner.txt")).unwrap();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let child = command(dir)
        .args(["worker", "-c", "2", "-n", NODE])
        .stdout(banner)
        .stderr(log)
        .spawn()
        .expect("start the worker");
    let w = LoggedChild {
        child,
        log: dir.join("worker.log"),
    };
    let log = w.wait_for_log("worker ready");
    assert!(
        log.contains("worker ready"),
        "the worker did not start:\n{log}"
    );
    w
}

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

#[test]
fn inspect_control_and_status_reach_a_worker_on_the_default_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut w = worker(d);

    let banner = std::fs::read_to_string(d.join("banner.txt")).unwrap();
    for needle in [
        &format!(" -------------- {NODE} v"),
        ".> transport:   sqlite://",
        ".> results:     sqlite://",
        ".> concurrency: 2 (threads)",
        ".> task events: OFF",
        ".> app:         celeriac\n",
        ".> prefetch:    4 per slot\n",
        ".> celery           exchange=celery(direct) key=celery",
        "[tasks]\n  . celeriac.add\n",
    ] {
        assert!(
            banner.contains(needle),
            "{needle:?} not in the banner:\n{banner}"
        );
    }

    // Generous timeouts: the replies of a busy machine may take over the
    // default second on the file broker (its listeners poll).
    let o = celeriac(d, &["status", "-t", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("->  {NODE}: OK\n\n1 node online.\n")
    );
    let o = celeriac(d, &["inspect", "ping", "-t", "3"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("->  {NODE}: OK\n        pong\n\n1 node online.\n"),
        "{}",
        text(&o)
    );
    assert_eq!(
        json_of(d, &["inspect", "ping"]),
        json!({NODE: {"ok": "pong"}})
    );

    let o = celeriac(d, &["call", "celeriac.add", "--args", "[20, 22]", "--wait"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "42\n", "{}", text(&o));
    let stats = json_of(d, &["inspect", "stats"]);
    let s = &stats[NODE];
    assert_eq!(s["total"], json!({"celeriac.add": 1}), "{stats}");
    assert_eq!(s["pool"]["max-concurrency"], 2, "{stats}");
    assert_eq!(s["broker"]["transport"], "sqlite", "{stats}");
    assert_eq!(s["pid"], w.id(), "{stats}");
    let o = celeriac(d, &["inspect", "registered", "-d", NODE, "-t", "5"]);
    assert!(text(&o).contains("    * celeriac.add\n"), "{}", text(&o));
    assert_eq!(json_of(d, &["inspect", "active"]), json!({NODE: []}));
    assert_eq!(json_of(d, &["inspect", "reserved"]), json!({NODE: []}));
    assert_eq!(json_of(d, &["inspect", "scheduled"]), json!({NODE: []}));
    assert_eq!(json_of(d, &["inspect", "revoked"]), json!({NODE: []}));

    assert_eq!(
        json_of(d, &["control", "pool_grow", "3"]),
        json!({NODE: {"ok": "pool will grow"}})
    );
    assert_eq!(
        json_of(d, &["inspect", "stats"])[NODE]["pool"]["max-concurrency"],
        5
    );
    assert_eq!(
        json_of(d, &["control", "pool_shrink", "2"]),
        json!({NODE: {"ok": "pool will shrink"}})
    );
    assert_eq!(
        json_of(d, &["control", "rate_limit", "celeriac.add", "100/s"]),
        json!({NODE: {"ok": "new rate limit set successfully"}})
    );
    assert!(
        json_of(d, &["inspect", "registered"])[NODE]
            .as_array()
            .unwrap()
            .contains(&json!("celeriac.add [rate_limit=100/s]"))
    );
    let o = celeriac(
        d,
        &[
            "control",
            "rate_limit",
            "tasks.nope",
            "1/s",
            "-d",
            NODE,
            "-t",
            "5",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "a worker's error: {}", text(&o));
    assert!(
        text(&o).contains(&format!("->  {NODE}: ERROR\n        unknown task")),
        "{}",
        text(&o)
    );
    assert_eq!(
        json_of(d, &["control", "time_limit", "celeriac.sleep", "5", "10"]),
        json!({NODE: {"ok": "time limits set successfully"}})
    );
    assert_eq!(
        json_of(d, &["control", "add_consumer", "extra"]),
        json!({NODE: {"ok": "add consumer extra"}})
    );
    let o = celeriac(
        d,
        &[
            "call",
            "celeriac.add",
            "-q",
            "extra",
            "--args",
            "[1, 2]",
            "--wait",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "3\n", "{}", text(&o));
    let queues = json_of(d, &["inspect", "active_queues"]);
    let names: Vec<&Value> = queues[NODE]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| &q["name"])
        .collect();
    assert_eq!(names, [&json!("celery"), &json!("extra")]);
    assert_eq!(
        json_of(d, &["control", "cancel_consumer", "extra"]),
        json!({NODE: {"ok": "no longer consuming from extra"}})
    );
    assert_eq!(
        json_of(d, &["control", "enable_events"]),
        json!({NODE: {"ok": "task events enabled"}})
    );
    assert_eq!(
        json_of(d, &["inspect", "conf"])[NODE]["worker_send_task_events"],
        true
    );
    let o = celeriac(d, &["inspect", "ping", "-d", "nobody@x", "-t", "0.5"]);
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    assert!(text(&o).contains("No nodes replied"), "{}", text(&o));

    let o = celeriac(d, &["control", "shutdown"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        exits(&mut w).success(),
        "a remote shutdown is a warm, clean stop"
    );
    let o = celeriac(d, &["status", "-t", "0.5"]);
    assert_eq!(o.status.code(), Some(69), "nobody left: {}", text(&o));
}

#[test]
fn purge_asks_first_and_prints_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..3 {
        let o = celeriac(
            d,
            &[
                "call",
                "celeriac.add",
                "-q",
                "parked",
                "--args",
                &format!("[{i}, 1]"),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = celeriac(
        d,
        &["call", "celeriac.add", "-q", "kept", "--countdown", "600"],
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = purge(d, &["-Q", "parked"], "n\n");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("WARNING: This will remove all tasks from queue: parked.")
            && out.contains("Are you sure you want to delete all tasks? [y/N]"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("Aborted!"));

    let o = purge(d, &["-Q", "parked"], "y\n");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .ends_with("Purged 3 messages from 1 known task queue.\n"),
        "the refused purge deleted nothing: {}",
        text(&o)
    );
    let o = celeriac(d, &["purge", "-f", "-Q", "parked,kept"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Purged 1 message from 2 known task queues.\n",
        "the delayed message is purged too: {}",
        text(&o)
    );
    let o = celeriac(d, &["purge", "-f"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "No messages purged from 1 queue.\n",
        "{}",
        text(&o)
    );
}
