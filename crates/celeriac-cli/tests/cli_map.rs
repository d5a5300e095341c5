//! `celeriac map NAME --args-file FILE` against a worker on the default
//! (SQLite) broker: results as JSON lines in input order, failures as
//! error objects, exit codes, and bad files refused before anything is
//! sent.

use std::path::Path;
use std::process::{Command, Output};

use celeriac_testkit::process::LoggedChild;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CELERIAC_HOME", dir)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERIAC_METRICS_ADDR");
    cmd
}

fn worker(dir: &Path) -> LoggedChild {
    let mut cmd = command(dir);
    cmd.args(["worker", "-c", "4", "--diagnostic-tasks"]);
    LoggedChild::spawn(cmd, dir, "worker")
}

/// `celeriac map NAME --args-file FILE` with `lines` as the file.
fn map(dir: &Path, name: &str, lines: &str, extra: &[&str]) -> Output {
    let file = dir.join("args.jsonl");
    std::fs::write(&file, lines).unwrap();
    command(dir)
        .args(["map", name, "--args-file"])
        .arg(&file)
        .args(extra)
        .output()
        .expect("run celeriac map")
}

fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn results_come_out_in_input_order_though_they_finish_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(dir.path());
    // Four slots: the short sleeps finish before the long first one.
    let out = map(
        dir.path(),
        "celeriac.sleep",
        "[0.8]\n[0.05]\n\n{\"args\": [0.3]}\n{\"kwargs\": {\"seconds\": 0.1}}\n",
        &["--timeout", "60"],
    );
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&out),
        vec![json!(0.8), json!(0.05), json!(0.3), json!(0.1)],
        "one line per non-blank input line, in input order"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("ETA"),
        "no progress bar when standard error is not a terminal"
    );
}

#[test]
fn failures_are_error_objects_in_their_place_and_the_exit_is_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(dir.path());
    let out = map(
        dir.path(),
        "celeriac.add",
        "[1, 2]\n[1]\n{\"args\": [3], \"kwargs\": {\"y\": 4}}\n[\"a\", 1]\n[10, 20]\n",
        &["--timeout", "60"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 5 tasks failed"));
    let got = lines(&out);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(
        (&got[0], &got[2], &got[4]),
        (&json!(3), &json!(7), &json!(30))
    );
    for bad in [&got[1], &got[3]] {
        let e = &bad["error"];
        assert_eq!(e["state"], "FAILURE", "{bad}");
        assert!(e["type"].as_str().is_some_and(|t| !t.is_empty()), "{bad}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}"
        );
        assert_eq!(e["task_id"].as_str().map(str::len), Some(36), "{bad}");
    }
}

#[test]
fn a_bad_line_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let out = map(dir.path(), "celeriac.add", "[1, 2]\n{\"argz\": [1]}\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("argz"), "{err}");
    assert!(out.stdout.is_empty());

    let out = map(dir.path(), "celeriac.add", "[1, 2]\n7\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));

    // Nothing was sent, not even the good first line.
    let db = dir.path().join("celeriac.db");
    if db.exists() {
        let url = format!("sqlite://{}", db.display());
        let broker = celeriac_embedded::SqliteBroker::open(&url).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let queued = rt.block_on(celeriac_core::broker::Transport::queue_len(
            &*broker, "celery",
        ));
        assert_eq!(queued.unwrap(), 0);
    }
}

#[test]
fn calls_without_a_worker_time_out_as_pending_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = map(
        dir.path(),
        "celeriac.add",
        "[1, 2]\n[3, 4]\n",
        &["--timeout", "0.5"],
    );
    assert_eq!(out.status.code(), Some(3));
    let got = lines(&out);
    assert_eq!(got.len(), 2);
    for l in &got {
        assert_eq!(l["error"]["state"], "PENDING", "{l}");
        assert_eq!(l["error"]["type"], "TimeoutError", "{l}");
    }
}
