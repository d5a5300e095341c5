//! The `celeriac` binary as users run it: separate worker and client
//! processes on the file broker, bad input, dead letters, the default
//! broker location, and the demo.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use celeriac_core::Outgoing;
use celeriac_core::broker::prelude::*;
use celeriac_embedded::SqliteBroker;
use celeriac_testkit::process::LoggedChild;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// `celeriac worker -c 2 --diagnostic-tasks` with `CELERIAC_HOME=dir`, on
/// `broker` (or the default broker), plus `extra` arguments.
struct WorkerProcess;

impl WorkerProcess {
    fn start(dir: &Path, broker: Option<&str>, extra: &[&str]) -> LoggedChild {
        let mut cmd = Command::new(BIN);
        cmd.arg("worker")
            .args(["-c", "2", "--diagnostic-tasks"])
            .args(extra);
        if let Some(b) = broker {
            cmd.args(["--broker", b]);
        }
        cmd.env("CELERIAC_HOME", dir)
            .env_remove("CELERIAC_BROKER_URL")
            .env_remove("CELERIAC_RESULT_BACKEND");
        LoggedChild::spawn(cmd, dir, "worker")
    }
}

fn celeriac(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CELERIAC_HOME", dir)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .output()
        .expect("run celeriac")
}

/// `celeriac call NAME --args ARGS --wait --timeout 60 --broker URL`.
fn call_wait(dir: &Path, url: &str, name: &str, args: &str) -> Output {
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
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db", dir.path().display());
    (dir, url)
}

#[test]
fn worker_and_call_in_separate_processes_print_5() {
    let (dir, url) = setup();
    let _w = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let out = call_wait(dir.path(), &url, "celeriac.add", "[2,3]");
    assert_eq!(stdout(&out), "5\n", "stderr: {}", stderr(&out));
    assert!(out.status.success());
}

#[test]
fn the_default_broker_needs_no_flags() {
    // Two terminals, no server, no --broker: the file broker in CELERIAC_HOME.
    let dir = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(dir.path(), None, &[]);
    let out = celeriac(
        dir.path(),
        &[
            "call",
            "celeriac.add",
            "--args",
            "[2,3]",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(stdout(&out), "5\n", "stderr: {}", stderr(&out));
    assert!(
        dir.path().join("celeriac.db").exists(),
        "the documented default location is used"
    );
}

#[test]
fn failures_exit_non_zero_with_the_error() {
    let (dir, url) = setup();
    let _w = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let out = call_wait(dir.path(), &url, "celeriac.fail", "[\"boom\"]");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    assert!(stderr(&out).contains("TaskError: boom"), "{}", stderr(&out));

    let out = call_wait(dir.path(), &url, "celeriac.panic", "[\"oh no\"]");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Panic: oh no"), "{}", stderr(&out));

    let out = call_wait(dir.path(), &url, "celeriac.add", "[1]");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TypeError"), "{}", stderr(&out));

    // The worker is still serving.
    let out = call_wait(dir.path(), &url, "celeriac.echo", "[{\"a\":[1,\"é\"]}]");
    assert_eq!(stdout(&out), "{\"a\":[1,\"é\"]}\n");
}

#[test]
fn call_prints_the_id_and_result_reads_it() {
    let (dir, url) = setup();
    let out = celeriac(
        dir.path(),
        &["call", "celeriac.fib", "--args", "[20]", "--broker", &url],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(uuid_like(&id), "{id}");
    let pending = celeriac(dir.path(), &["result", &id, "--broker", &url]);
    assert_eq!(pending.status.code(), Some(4), "not run yet: no worker");
    let w = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let done = celeriac(
        dir.path(),
        &["result", &id, "--wait", "--timeout", "60", "--broker", &url],
    );
    assert_eq!(stdout(&done), "6765\n", "{}", stderr(&done));
    let meta = celeriac(dir.path(), &["result", &id, "--meta", "--broker", &url]);
    let doc: serde_json::Value = serde_json::from_str(stdout(&meta).trim()).unwrap();
    assert_eq!(doc["status"], "SUCCESS");
    assert_eq!(doc["task_id"], id.as_str());
    assert_eq!(doc["name"], "celeriac.fib");

    // The worker logs the task as Celery does.
    let log = w.wait_for_log("succeeded in");
    assert!(
        log.contains(&format!("Task celeriac.fib[{id}] received")),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains(&format!("Task celeriac.fib[{id}] succeeded in ")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.trim_end().ends_with("s: 6765"), "{line}");
    let failed = call_wait(dir.path(), &url, "celeriac.add", "[1]");
    assert_eq!(failed.status.code(), Some(1));
    let log = w.wait_for_log("raised unexpected");
    let line = log
        .lines()
        .find(|l| l.contains("] raised unexpected in "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(
            "s: TypeError(\"celeriac.add() missing 1 required positional argument: 'y'\")"
        ),
        "{line}"
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn malformed_and_unknown_messages_are_dead_lettered_and_the_worker_keeps_serving() {
    let (dir, url) = setup();
    let empty = celeriac(dir.path(), &["dlq", "list", "--broker", &url]);
    assert!(empty.status.success());
    assert_eq!(stdout(&empty), "", "no lines on stdout for scripts");
    assert_eq!(stderr(&empty).trim(), "no dead letters");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = SqliteBroker::open(&url).unwrap();
    rt.block_on(broker.publish(Outgoing {
        queue: "celery".into(),
        priority: 0,
        eta: None,
        tag: "garbage-1".into(),
        task_id: String::new(),
        payload: b"{this is not a celery message".to_vec(),
    }))
    .unwrap();
    let w = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let log = w.wait_for_log("malformed message");
    assert!(
        log.contains("malformed message; moving it to the dead-letter queue"),
        "{log}"
    );
    assert!(
        log.contains("envelope is not a JSON object"),
        "the log names the problem: {log}"
    );

    let out = call_wait(dir.path(), &url, "no.such.task", "[]");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NotRegistered"), "{}", stderr(&out));

    // Still serving.
    let out = call_wait(dir.path(), &url, "celeriac.add", "[2,3]");
    assert_eq!(stdout(&out), "5\n");

    let list = celeriac(dir.path(), &["dlq", "list", "--broker", &url]);
    let text = stdout(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("<undecodable>") && lines[0].contains("malformed message"),
        "{text}"
    );
    assert!(
        lines[1].contains("no.such.task") && lines[1].contains("unknown task"),
        "{text}"
    );

    let id = lines[1].split('\t').next().unwrap();
    let requeue = celeriac(dir.path(), &["dlq", "requeue", id, "--broker", &url]);
    assert_eq!(stdout(&requeue), format!("requeued {id}\n"));
    let missing = celeriac(dir.path(), &["dlq", "requeue", "999999", "--broker", &url]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn unsupported_pool_and_bad_json_are_clear_errors() {
    let (dir, url) = setup();
    let out = celeriac(dir.path(), &["worker", "-P", "gevent", "--broker", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown pool \"gevent\""),
        "{}",
        stderr(&out)
    );
    let out = celeriac(
        dir.path(),
        &[
            "call",
            "celeriac.add",
            "--args",
            "{\"x\":1}",
            "--broker",
            &url,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--args must be a JSON list"),
        "{}",
        stderr(&out)
    );
    let out = celeriac(
        dir.path(),
        &["call", "celeriac.add", "--broker", "ftp://nope"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unsupported scheme"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn node_names_expand_like_celery() {
    let (dir, url) = setup();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let first = host.split('.').next().unwrap().to_string();
    let w = WorkerProcess::start(dir.path(), Some(&url), &["-n", "w1-%n@%h"]);
    let log = w.wait_for_log("worker ready");
    assert!(log.contains(&format!("node=w1-{first}@{host}")), "{log}");
    drop(w);
    let w = WorkerProcess::start(dir.path(), Some(&url), &["-n", "worker2"]);
    let log = w.wait_for_log("worker ready");
    assert!(log.contains("node=celeriac@worker2 "), "{log}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (dir, url) = setup();
    let w = WorkerProcess::start(
        dir.path(),
        Some(&url),
        &["--log-format", "json", "-l", "info"],
    );
    let out = call_wait(dir.path(), &url, "celeriac.echo", "[\"a\\nb\"]");
    assert!(out.status.success(), "{}", stderr(&out));
    let log = w.wait_for_log("succeeded in");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"] == "worker ready"
            && l["fields"]["node"].is_string()),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Task celeriac.echo[") && m.contains("succeeded in"))),
        "{log}"
    );
}

#[test]
fn warm_shutdown_finishes_the_running_task() {
    let (dir, url) = setup();
    let w = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let out = celeriac(
        dir.path(),
        &[
            "call",
            "celeriac.sleep",
            "--args",
            "[1.5]",
            "--broker",
            &url,
        ],
    );
    let id = stdout(&out).trim().to_string();
    w.wait_for_log("worker ready");
    std::thread::sleep(Duration::from_millis(600));
    // SIGTERM: warm shutdown.
    let pid = w.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let log = w.wait_for_log("worker stopped");
    assert!(log.contains("warm shutdown"), "{log}");
    let res = celeriac(dir.path(), &["result", &id, "--broker", &url]);
    assert_eq!(
        stdout(&res),
        "1.5\n",
        "the running task finished: {}",
        stderr(&res)
    );
}

#[test]
fn demo_prints_results_speedup_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let out = celeriac(dir.path(), &["demo", "--rounds", "1", "--repeat", "1"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for needle in [
        "fib(4) = 3",
        "fib(10) = 55",
        "fib(36) = 14930352",
        "correct",
        "speedup",
        " job count | % of all jobs",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn kill_9_of_a_worker_loses_no_task() {
    // A short lease so the dead worker's claims lapse quickly.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db?lease=1", dir.path().display());
    let mut ids = Vec::new();
    for i in 0..12 {
        let out = celeriac(
            dir.path(),
            &[
                "call",
                "celeriac.sleep",
                "--args",
                &format!("[0.{}]", 3 + i % 3),
                "--broker",
                &url,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
    }
    let mut first = WorkerProcess::start(dir.path(), Some(&url), &[]);
    first.wait_for_log("worker ready");
    std::thread::sleep(Duration::from_millis(500));
    // Dies while holding claimed, running tasks.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _second = WorkerProcess::start(dir.path(), Some(&url), &[]);
    for id in &ids {
        let out = celeriac(
            dir.path(),
            &["result", id, "--wait", "--timeout", "60", "--broker", &url],
        );
        assert!(out.status.success(), "task {id}: {}", stderr(&out));
    }
}

#[test]
fn a_task_that_kills_its_worker_every_time_ends_in_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    // A lease long enough that a worker starved by a busy machine cannot
    // lose its own claim before the task kills it (a second claim by the
    // same worker would count as a delivery that crashed nothing).
    let url = format!("sqlite://{}/broker.db?lease=2", dir.path().display());
    let out = celeriac(dir.path(), &["call", "celeriac.crash", "--broker", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each worker runs the task and dies with it (abort takes the process),
    // until the delivery limit sets the message aside.
    let mut crashes = 0;
    let mut last_log = String::new();
    for _ in 0..3 {
        let mut w = WorkerProcess::start(dir.path(), Some(&url), &["--max-deliveries", "2"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = w.child.try_wait().unwrap() {
                break Some(s);
            }
            if w.log().contains("poison message") || Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match status {
            Some(s) => {
                assert!(!s.success(), "the crash task aborts its worker");
                crashes += 1;
                last_log = w.log();
            }
            None => {
                last_log = w.log();
                assert!(
                    last_log.contains("delivered 2 times without being acknowledged"),
                    "{last_log}"
                );
                break;
            }
        }
    }
    assert_eq!(
        crashes, 2,
        "two deliveries crashed a worker, the third was set aside; the last worker's log:\n{}",
        last_log
    );
    let list = celeriac(dir.path(), &["dlq", "list", "--broker", &url]);
    let text = stdout(&list);
    assert!(
        text.contains("celeriac.crash") && text.contains("poison message"),
        "{text}"
    );
}

#[test]
fn a_revoke_issued_before_any_worker_starts_is_honoured() {
    let (dir, url) = setup();
    let out = celeriac(
        dir.path(),
        &["call", "celeriac.add", "--args", "[1,1]", "--broker", &url],
    );
    let doomed = stdout(&out).trim().to_string();
    let out = celeriac(
        dir.path(),
        &["call", "celeriac.add", "--args", "[2,2]", "--broker", &url],
    );
    let kept = stdout(&out).trim().to_string();
    let rev = celeriac(dir.path(), &["revoke", &doomed, "--broker", &url]);
    assert_eq!(stdout(&rev), format!("revoked {doomed}\n"));
    let _w = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let res = celeriac(
        dir.path(),
        &[
            "result",
            &kept,
            "--wait",
            "--timeout",
            "60",
            "--broker",
            &url,
        ],
    );
    assert_eq!(stdout(&res), "4\n");
    let res = celeriac(
        dir.path(),
        &[
            "result",
            &doomed,
            "--wait",
            "--timeout",
            "60",
            "--broker",
            &url,
        ],
    );
    assert_eq!(
        res.status.code(),
        Some(1),
        "a revoked task is a failure for its caller"
    );
    assert!(
        stderr(&res).contains("TaskRevokedError: revoked"),
        "{}",
        stderr(&res)
    );
}

#[test]
fn on_the_file_broker_a_countdown_past_the_lease_runs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db?lease=1", dir.path().display());
    let a = WorkerProcess::start(
        dir.path(),
        Some(&url),
        &["-n", "a@test", "--loglevel", "debug"],
    );
    let b = WorkerProcess::start(
        dir.path(),
        Some(&url),
        &["-n", "b@test", "--loglevel", "debug"],
    );
    let out = celeriac(
        dir.path(),
        &[
            "call",
            "celeriac.add",
            "--args",
            "[1,2]",
            "--countdown",
            "4",
            "--broker",
            &url,
        ],
    );
    let id = stdout(&out).trim().to_string();
    let sent = Instant::now();
    let res = celeriac(
        dir.path(),
        &["result", &id, "--wait", "--timeout", "60", "--broker", &url],
    );
    assert_eq!(stdout(&res), "3\n");
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "it did not run before its eta"
    );
    std::thread::sleep(Duration::from_secs(2));
    let runs: usize = [&a, &b]
        .iter()
        .map(|w| w.count_lines(&["task succeeded", &id]))
        .sum();
    assert_eq!(runs, 1, "executed exactly once across both workers");
}

#[test]
fn on_the_file_broker_a_global_rate_limit_holds_across_processes() {
    use celeriac_core::ResultBackend;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/broker.db", dir.path().display());
    let limit = ["--rate-limit", "celeriac.echo=10/s"];
    let _a = WorkerProcess::start(
        dir.path(),
        Some(&url),
        &[&["-n", "a@test"][..], &limit[..]].concat(),
    );
    let _b = WorkerProcess::start(
        dir.path(),
        Some(&url),
        &[&["-n", "b@test"][..], &limit[..]].concat(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = SqliteBroker::open(&url).unwrap();
    let backend = celeriac_embedded::SqliteBackend::open(&url).unwrap();
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..80 {
        let m = celeriac_core::Call::<i64>::new("celeriac.echo")
            .arg(i)
            .to_message()
            .unwrap();
        ids.push(m.id().to_string());
        batch.push(Outgoing::from_message(&m).unwrap());
    }
    rt.block_on(broker.publish_batch(batch)).unwrap();
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            if let Some(meta) = rt.block_on(backend.get(id)).unwrap() {
                times.push(
                    celeriac_core::time::parse_iso(meta.date_done.as_deref().unwrap()).unwrap(),
                );
                break;
            }
            assert!(Instant::now() < deadline, "not all tasks finished");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    times.sort_by(f64::total_cmp);
    let in_5s = times.iter().filter(|t| **t < times[0] + 5.0).count();
    assert!(
        (45..=55).contains(&in_5s),
        "10/s over 5 s should start about 50 tasks, within 10%: {in_5s}"
    );
}

#[test]
fn on_the_file_broker_a_warm_shutdown_under_load_loses_nothing() {
    use celeriac_core::ResultBackend;
    let (dir, url) = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = SqliteBroker::open(&url).unwrap();
    let backend = celeriac_embedded::SqliteBackend::open(&url).unwrap();
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..2000 {
        let m = celeriac_core::Call::<i64>::new("celeriac.add")
            .arg(i)
            .arg(1)
            .to_message()
            .unwrap();
        ids.push(m.id().to_string());
        batch.push(Outgoing::from_message(&m).unwrap());
    }
    rt.block_on(broker.publish_batch(batch)).unwrap();
    let mut first = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(broker.queue_len("celery")).unwrap() > 1500 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &first.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        first.child.wait().unwrap().success(),
        "a warm shutdown exits cleanly"
    );
    let _second = WorkerProcess::start(dir.path(), Some(&url), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        while rt.block_on(backend.get(id)).unwrap().is_none() {
            assert!(Instant::now() < deadline, "task {id} never completed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
