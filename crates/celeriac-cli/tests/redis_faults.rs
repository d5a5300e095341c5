//! Faults on a real Redis: a worker killed with SIGKILL while it holds
//! claimed tasks, and a `redis-server` restart in the middle of a run. Each
//! test starts its own `redis-server` on a free port (with an append-only
//! file, so a restart keeps the data, as a production Redis would), and
//! counts the results of every task it sent.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::prelude::*;
use celeriac::{Call, ResultBackend};
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::redis_server::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// `celeriac worker` on `url` with 4 threads, named `name`.
fn start_worker(url: &str, dir: &Path, name: &str) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", url, "-c", "4", "-n", name]);
    LoggedChild::spawn(cmd, dir, name)
}

async fn send(broker: &Arc<RedisBroker>, calls: Vec<Call<serde_json::Value>>) -> Vec<String> {
    celeriac_testkit::send_calls(broker.as_ref(), calls).await
}

/// Waits until every id has a SUCCESS result; returns how many have one.
async fn count_done(backend: &Arc<RedisBackend>, ids: &[String], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut done: HashSet<&String> = HashSet::new();
    loop {
        for id in ids {
            if done.contains(id) {
                continue;
            }
            if let Ok(Some(meta)) = backend.get(id).await
                && meta.status == celeriac::State::Success
            {
                done.insert(id);
            }
        }
        if done.len() == ids.len() || Instant::now() > deadline {
            return done.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One private Redis with a client runtime, broker and backend on it, and
/// a directory for worker logs.
struct Scenario {
    _redis: RedisServer,
    url: String,
    rt: tokio::runtime::Runtime,
    broker: Arc<RedisBroker>,
    backend: Arc<RedisBackend>,
    logs: tempfile::TempDir,
}

impl Scenario {
    /// `None` (a skip) when redis-server is not installed.
    fn start(query: &str) -> Option<Self> {
        if !RedisServer::available() {
            return None;
        }
        let redis = RedisServer::start();
        let url = redis.url(query);
        Some(Scenario {
            broker: RedisBroker::open(&url).unwrap(),
            backend: RedisBackend::open(&url).unwrap(),
            url,
            _redis: redis,
            rt: tokio::runtime::Runtime::new().unwrap(),
            logs: tempfile::tempdir().unwrap(),
        })
    }

    fn send(&self, calls: Vec<Call<serde_json::Value>>) -> Vec<String> {
        self.rt.block_on(send(&self.broker, calls))
    }

    fn worker(&self, name: &str) -> LoggedChild {
        start_worker(&self.url, self.logs.path(), name)
    }

    /// Waits until at most `n` messages are waiting on `celery`.
    fn wait_queue_at_most(&self, n: usize) {
        self.rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.broker.queue_len("celery").await.unwrap_or(usize::MAX) > n
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    fn count_done(&self, ids: &[String], within: Duration) -> usize {
        self.rt.block_on(count_done(&self.backend, ids, within))
    }
}

#[test]
fn kill_9_of_a_worker_holding_tasks_loses_nothing() {
    // A short visibility timeout: the dead worker's claims come back fast.
    let Some(sc) = Scenario::start("?visibility_timeout=2") else {
        return;
    };
    let ids = sc.send(
        (0..1000)
            .map(|_| Call::new("celeriac.sleep").arg(0.005))
            .collect(),
    );
    let mut first = sc.worker("first@test");
    // Let it claim and run some, then kill it while it holds claims.
    sc.wait_queue_at_most(900);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _second = sc.worker("second@test");
    assert_eq!(
        sc.count_done(&ids, Duration::from_secs(120)),
        1000,
        "every task completes after the kill"
    );
}

#[test]
fn a_redis_restart_mid_run_loses_nothing_and_the_worker_resumes() {
    let Some(mut sc) = Scenario::start("?visibility_timeout=3") else {
        return;
    };
    let ids = sc.send(
        (0..10_000i64)
            .map(|i| Call::new("celeriac.add").arg(i).arg(1))
            .collect(),
    );
    let worker = sc.worker("steady@test");
    sc.wait_queue_at_most(8_000);
    sc._redis.restart(Duration::from_millis(500));
    assert_eq!(
        sc.count_done(&ids, Duration::from_secs(180)),
        10_000,
        "every task completes across the restart, with no worker restart"
    );
    let log = worker.log();
    assert!(
        log.contains("claim failed")
            || log.contains("could not store result")
            || log.contains("ack failed"),
        "the worker saw the outage and carried on:\n{log}"
    );
    assert!(
        Path::new(&format!("/proc/{}", worker.child.id())).exists(),
        "the same worker process is still running"
    );
}

#[test]
fn a_long_task_is_never_redelivered_while_its_worker_lives() {
    // Celery redelivers a long acks_late task every visibility timeout
    // (celery#6229); celeriac renews the lease while the task runs.
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("?visibility_timeout=1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = RedisBroker::open(&url).unwrap();
    let backend = RedisBackend::open(&url).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let a = start_worker(&url, logs.path(), "a@test");
    let b = start_worker(&url, logs.path(), "b@test");
    let ids = rt.block_on(send(&broker, vec![Call::new("celeriac.sleep").arg(3.5)]));
    let done = rt.block_on(count_done(&backend, &ids, Duration::from_secs(60)));
    assert_eq!(done, 1);
    let meta = rt.block_on(backend.get(&ids[0])).unwrap().unwrap();
    for w in [&a, &b] {
        let log = w.log();
        assert!(
            !log.contains("restored messages"),
            "the running task's lease lapsed and it was restored:\n{log}"
        );
    }
    assert!(meta.worker.is_some());
}

fn start_logged(url: &str, dir: &Path, name: &str, level: &str) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "worker",
        "--broker",
        url,
        "-c",
        "2",
        "-n",
        name,
        "--loglevel",
        level,
    ]);
    LoggedChild::spawn(cmd, dir, name)
}

#[test]
fn a_countdown_far_past_the_visibility_timeout_runs_exactly_once() {
    // Celery holds eta tasks unacked in worker memory, so Redis redelivers
    // them every visibility timeout and they run several times (#2481).
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("?visibility_timeout=1");
    let logs = tempfile::tempdir().unwrap();
    let a = start_logged(&url, logs.path(), "a@test", "debug");
    let b = start_logged(&url, logs.path(), "b@test", "debug");
    let out = Command::new(BIN)
        .args([
            "call",
            "celeriac.add",
            "--args",
            "[20,22]",
            "--countdown",
            "5",
            "--broker",
            &url,
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sent = Instant::now();
    let res = Command::new(BIN)
        .args(["result", &id, "--wait", "--timeout", "60", "--broker", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&res.stdout), "42\n");
    assert!(
        sent.elapsed() >= Duration::from_secs(4),
        "it did not run before its eta"
    );
    std::thread::sleep(Duration::from_secs(2)); // room for a duplicate to show up
    let runs: usize = [&a, &b]
        .iter()
        .map(|w| w.count_lines(&["task succeeded", &id]))
        .sum();
    assert_eq!(runs, 1, "executed exactly once across both workers");
}

#[test]
fn warm_shutdown_under_load_loses_nothing() {
    let Some(sc) = Scenario::start("") else {
        return;
    };
    let ids = sc.send(
        (0..10_000i64)
            .map(|i| Call::new("celeriac.add").arg(i).arg(1))
            .collect(),
    );
    let mut first = sc.worker("first@test");
    sc.wait_queue_at_most(7_000);
    // SIGTERM: warm shutdown. It must exit by itself, having settled what it held.
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
    let log = first.log();
    assert!(
        log.contains("warm shutdown") && log.contains("worker stopped"),
        "{log}"
    );
    // It settled everything it held: nothing is left claimed in kombu's
    // unacked hash (a claim cut short at shutdown would strand messages
    // there until the visibility timeout).
    let unacked: usize = sc.rt.block_on(async {
        let client = redis::Client::open(sc.url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("HLEN")
            .arg("unacked")
            .query_async(&mut c)
            .await
            .unwrap()
    });
    assert_eq!(unacked, 0, "the warm shutdown left claimed messages behind");
    let _second = sc.worker("second@test");
    assert_eq!(
        sc.count_done(&ids, Duration::from_secs(180)),
        10_000,
        "every task completes after a warm shutdown"
    );
}

#[test]
fn a_global_rate_limit_holds_across_two_workers() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = RedisBroker::open(&url).unwrap();
    let backend = RedisBackend::open(&url).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let spawn = |name: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["worker", "--broker", &url, "-c", "4", "-n", name])
            .args(["--rate-limit", "celeriac.echo=20/s"]);
        LoggedChild::spawn(cmd, logs.path(), name)
    };
    let _a = spawn("a@test");
    let _b = spawn("b@test");
    let calls = (0..300)
        .map(|i| Call::new("celeriac.echo").arg(i))
        .collect();
    let ids = rt.block_on(send(&broker, calls));
    // Completion times of everything that finished; the run takes ~15 s.
    let done = rt.block_on(count_done(&backend, &ids, Duration::from_secs(120)));
    assert_eq!(done, 300);
    let mut times: Vec<f64> = rt.block_on(async {
        let mut t = Vec::new();
        for id in &ids {
            let meta = backend.get(id).await.unwrap().unwrap();
            t.push(celeriac::time::parse_iso(meta.date_done.as_deref().unwrap()).unwrap());
        }
        t
    });
    times.sort_by(f64::total_cmp);
    let start = times[0];
    let in_10s = times.iter().filter(|t| **t < start + 10.0).count();
    assert!(
        (180..=220).contains(&in_10s),
        "20/s over 10 s should start about 200 tasks, within 10%: {in_10s}"
    );
    let workers: HashSet<String> = rt.block_on(async {
        let mut w = HashSet::new();
        for id in &ids {
            w.insert(
                backend
                    .get(id)
                    .await
                    .unwrap()
                    .unwrap()
                    .worker
                    .unwrap_or_default(),
            );
        }
        w
    });
    assert_eq!(
        workers.len(),
        2,
        "both workers shared the work: {workers:?}"
    );
}

#[test]
fn cold_shutdown_under_load_loses_nothing() {
    let Some(sc) = Scenario::start("?visibility_timeout=2") else {
        return;
    };
    let ids = sc.send(
        (0..400)
            .map(|_| Call::new("celeriac.sleep").arg(0.01))
            .collect(),
    );
    let mut first = sc.worker("first@test");
    sc.wait_queue_at_most(300);
    // SIGQUIT: cold shutdown, running tasks are abandoned.
    assert!(
        Command::new("kill")
            .args(["-QUIT", &first.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        !first.child.wait().unwrap().success(),
        "a cold shutdown exits at once, with a failure status"
    );
    let log = first.log();
    assert!(
        log.contains("cold shutdown") && !log.contains("warm shutdown"),
        "{log}"
    );
    let _second = sc.worker("second@test");
    assert_eq!(
        sc.count_done(&ids, Duration::from_secs(120)),
        400,
        "abandoned tasks are redelivered and complete"
    );
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run celeriac")
}

#[test]
fn on_redis_a_revoke_before_any_worker_starts_is_honoured() {
    let Some(sc) = Scenario::start("") else {
        return;
    };
    let ids = sc.send(vec![
        Call::new("celeriac.add").arg(1).arg(1),
        Call::new("celeriac.add").arg(2).arg(2),
    ]);
    let out = run(&["revoke", &ids[0], "--broker", &sc.url]);
    assert!(out.status.success());
    let _w = sc.worker("late@test");
    assert_eq!(sc.count_done(&ids[1..], Duration::from_secs(60)), 1);
    let res = run(&[
        "result",
        &ids[0],
        "--wait",
        "--timeout",
        "60",
        "--broker",
        &sc.url,
    ]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("TaskRevokedError: revoked"));
}

#[test]
fn on_redis_a_poison_message_ends_in_the_dead_letter_queue() {
    // A lease long enough that a worker starved by a busy machine cannot
    // lose its own claim before the task kills it (a second claim by the
    // same worker would count as a delivery that crashed nothing).
    let Some(sc) = Scenario::start("?visibility_timeout=2") else {
        return;
    };
    let ids = sc.send(vec![Call::new("celeriac.crash")]);
    let mut crashes = 0;
    for i in 0..3 {
        let log = sc.logs.path().join(format!("poison-{i}.log"));
        let mut child = Command::new(BIN)
            .args([
                "worker",
                "--broker",
                &sc.url,
                "--diagnostic-tasks",
                "--max-deliveries",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(!status.success());
                crashes += 1;
                break;
            }
            // The worker logs the poison message as its gate sees it, and
            // writes the dead letter just after: stop it only once the
            // dead letter is there.
            if std::fs::read_to_string(&log)
                .unwrap()
                .contains("poison message")
                && !sc
                    .rt
                    .block_on(sc.broker.dead_letters(10))
                    .unwrap()
                    .is_empty()
            {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "neither a crash nor a dead letter"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let logs: Vec<String> = (0..3)
        .map(|i| {
            std::fs::read_to_string(sc.logs.path().join(format!("poison-{i}.log")))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(crashes, 2, "the workers' logs:\n{}", logs.join("\n----\n"));
    let list = run(&["dlq", "list", "--broker", &sc.url]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&ids[0]) && text.contains("poison message"),
        "{text}"
    );
}

#[test]
fn on_redis_one_idempotency_key_runs_once() {
    let Some(sc) = Scenario::start("") else {
        return;
    };
    let ids = sc.send(vec![
        Call::new("celeriac.echo")
            .arg("first")
            .idempotency_key("order-1"),
        Call::new("celeriac.echo")
            .arg("second")
            .idempotency_key("order-1"),
    ]);
    let log = sc.logs.path().join("idem.log");
    let mut child = Command::new(BIN)
        .args([
            "worker",
            "--broker",
            &sc.url,
            "-c",
            "2",
            "--loglevel",
            "debug",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert_eq!(sc.count_done(&ids, Duration::from_secs(60)), 2);
    let first = sc.rt.block_on(sc.backend.get(&ids[0])).unwrap().unwrap();
    let second = sc.rt.block_on(sc.backend.get(&ids[1])).unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    // With two slots both messages are claimed at once, and either may take
    // the key first: what must hold is one body run and one shared result.
    assert!(
        first.result == "first" || first.result == "second",
        "{text}"
    );
    assert_eq!(
        second.result, first.result,
        "the duplicate reuses the result of the one that ran: {text}"
    );
    let runs = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("task succeeded"))
        .count();
    assert_eq!(runs, 1, "one execution for one key");
}
