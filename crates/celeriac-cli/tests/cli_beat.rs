//! `celeriac beat` as users run it: several beats on one schedule publish
//! each slot once, a `kill -9` of the leader hands over within seconds, a
//! restart runs no slot twice, a malformed schedule names the entry and
//! the field, and the messages interoperate with Python Celery both ways.
//! Each test runs the real binary against a private `redis-server` of its
//! own, or the default SQLite broker in a private `CELERIAC_HOME`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use celeriac_core::Message;
use celeriac_core::broker::prelude::*;
use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, interop_python, python_dir};
use celeriac_testkit::redis_server::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// A schedule of one entry sending `task(args)` every second to `queue`.
fn every_second(dir: &Path, task: &str, args: &str, queue: &str) -> String {
    let path = dir.join("beat.toml");
    std::fs::write(
        &path,
        format!(
            "[[entry]]\nname = \"tick\"\ntask = \"{task}\"\nargs = {args}\nevery = \"1s\"\nqueue = \"{queue}\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `celeriac beat` with `args`, its home (and so its default SQLite
/// broker) in `home`.
fn beat(home: &Path, args: &[&str]) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.arg("beat")
        .args(args)
        .env("CELERIAC_HOME", home)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND");
    LoggedChild::spawn(cmd, home, "celeriac-beat")
}

/// Stops a process with SIGTERM (a beat then gives its lease up) and
/// waits for it.
fn terminate(child: &mut LoggedChild) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "it did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (up to 30 s) until `check` holds.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The messages waiting on a Redis list, oldest first.
fn redis_messages(url: &str, list: &str) -> Vec<Message> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    raw.iter()
        .rev()
        .map(|m| Message::decode(m).unwrap())
        .collect()
}

/// The messages waiting on `queue` of the SQLite broker in `home`.
fn sqlite_messages(home: &Path, queue: &str) -> Vec<Message> {
    let url = format!("sqlite://{}/celeriac.db", home.display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let broker = celeriac_embedded::SqliteBroker::open(&url).unwrap();
        let got = broker
            .claim(
                "test",
                &[queue.to_string()],
                10_000,
                Duration::from_millis(100),
            )
            .await
            .unwrap();
        for d in &got {
            broker.requeue(d, None).await.unwrap();
        }
        got.iter()
            .map(|d| Message::decode(&d.payload).unwrap())
            .collect()
    })
}

/// The slot of a beat message, in unix seconds.
fn slot(m: &Message) -> f64 {
    let s = m.headers.extra["celeriac_beat_slot"].as_str().unwrap();
    celeriac_core::time::parse_iso(s).unwrap()
}

/// The pid in a message's `origin` header (`gen<pid>@host`).
fn origin_pid(m: &Message) -> u32 {
    let o = m.headers.origin.as_deref().unwrap();
    o.strip_prefix("gen")
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Asserts every message is a beat message with its own slot, and returns
/// the slots in order. With `contiguous`, the slots are every second from
/// the first to the last.
fn each_slot_once(msgs: &[Message], contiguous: bool) -> Vec<f64> {
    let mut count: HashMap<i64, usize> = HashMap::new();
    for m in msgs {
        assert_eq!(m.headers.extra["celery_beat_task"], true, "{:?}", m.headers);
        *count.entry((slot(m) * 1000.0) as i64).or_default() += 1;
    }
    let doubled: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "slots published more than once: {doubled:?}"
    );
    let mut slots: Vec<i64> = count.into_keys().collect();
    slots.sort();
    if contiguous {
        for w in slots.windows(2) {
            assert_eq!(w[1] - w[0], 1000, "a slot was skipped: {slots:?}");
        }
    }
    slots.iter().map(|s| *s as f64 / 1000.0).collect()
}

/// Two beats on one schedule for 10 s. Returns them, after asserting
/// that both ran, one led, and one stood by (a hand-over under a loaded
/// machine may make both lead in turn).
fn two_beats_for_ten_seconds(home: &Path, broker: &[&str]) -> Vec<LoggedChild> {
    let schedule = every_second(home, "celeriac.add", "[1, 2]", "beats");
    // `all`: a hand-over (a stalled leader on a loaded machine) skips no
    // slot either, so the slots must be every second.
    let args: Vec<&str> = [
        broker,
        &[
            "--schedule",
            &schedule,
            "--lock-ttl",
            "3s",
            "--catch-up",
            "all",
        ],
    ]
    .concat();
    let mut beats = vec![beat(home, &args), beat(home, &args)];
    std::thread::sleep(Duration::from_secs(10));
    for b in &mut beats {
        terminate(b);
    }
    let logs: Vec<String> = beats.iter().map(LoggedChild::log).collect();
    assert!(
        logs.iter().all(|l| l.contains("beat: starting")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("leader of group default")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("standing by")), "{logs:?}");
    beats
}

#[test]
fn two_beats_on_redis_publish_each_slot_exactly_once() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let home = tempfile::tempdir().unwrap();
    let beats = two_beats_for_ten_seconds(home.path(), &["--broker", &url]);
    each_slot_once_and_as_logged(&beats, &redis_messages(&url, "beats"));
}

/// Each 1 s slot of ten seconds was published once, and each send the two
/// beats logged is one of `msgs`.
fn each_slot_once_and_as_logged(beats: &[LoggedChild], msgs: &[Message]) {
    let slots = each_slot_once(msgs, true);
    assert!(slots.len() >= 7, "10 s of a 1 s schedule: {slots:?}");
    let sent: usize = beats
        .iter()
        .map(|b| b.count_lines(&["Sending due task tick"]))
        .sum();
    assert_eq!(sent, msgs.len(), "each logged send is one message");
}

#[test]
fn two_beats_on_the_default_sqlite_broker_publish_each_slot_exactly_once() {
    let home = tempfile::tempdir().unwrap();
    let beats = two_beats_for_ten_seconds(home.path(), &[]);
    each_slot_once_and_as_logged(&beats, &sqlite_messages(home.path(), "beats"));
}

#[test]
fn kill_9_of_the_leader_hands_over_within_5_s_and_doubles_no_slot() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let home = tempfile::tempdir().unwrap();
    let schedule = every_second(home.path(), "celeriac.add", "[1, 2]", "beats");
    let args = [
        "--broker",
        &url,
        "--schedule",
        &schedule,
        "--lock-ttl",
        "2s",
    ];
    let mut leader = beat(home.path(), &args);
    leader.wait_for_log("leader of group default");
    let standby = beat(home.path(), &args);
    standby.wait_for_log("standing by");
    wait_until("the leader's third message", || {
        redis_messages(&url, "beats").len() >= 3
    });
    leader.child.kill().unwrap();
    let killed = Instant::now();
    leader.child.wait().unwrap();
    let before = redis_messages(&url, "beats");
    let from_standby = |msgs: &[Message]| {
        msgs.iter()
            .filter(|m| origin_pid(m) == standby.id())
            .count()
    };
    wait_until("the standby's first message", || {
        from_standby(&redis_messages(&url, "beats")) > 0
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the standby published {took:?} after the kill -9"
    );
    wait_until("two more slots", || {
        from_standby(&redis_messages(&url, "beats")) >= 3
    });
    let mut standby = standby;
    terminate(&mut standby);
    let msgs = redis_messages(&url, "beats");
    each_slot_once(&msgs, false);
    let last_of_leader = before.iter().map(slot).fold(f64::MIN, f64::max);
    let first_of_standby = msgs
        .iter()
        .filter(|m| origin_pid(m) == standby.id())
        .map(slot)
        .fold(f64::MAX, f64::min);
    assert!(
        first_of_standby > last_of_leader,
        "the standby went on after the leader's last slot"
    );
    assert!(
        standby
            .log()
            .contains("leader of group default (fencing token 2)"),
        "{}",
        standby.log()
    );
}

#[test]
fn a_restart_mid_schedule_runs_no_slot_twice_and_with_catch_up_all_skips_none() {
    let home = tempfile::tempdir().unwrap();
    let schedule = every_second(home.path(), "celeriac.add", "[1, 2]", "beats");
    let args = [
        "--schedule",
        &schedule,
        "--lock-ttl",
        "1s",
        "--catch-up",
        "all",
    ];
    let count = || sqlite_messages(home.path(), "beats").len();
    let mut first = beat(home.path(), &args);
    wait_until("three slots", || count() >= 3);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Down for two slots or so, then back: the lease lapses, the
    // restarted beat reads the last run and catches up from there.
    std::thread::sleep(Duration::from_millis(2500));
    let mut second = beat(home.path(), &args);
    wait_until("three more slots", || count() >= 8);
    terminate(&mut second);
    let slots = each_slot_once(&sqlite_messages(home.path(), "beats"), true);
    assert!(slots.len() >= 8, "{slots:?}");
    assert!(
        second
            .log()
            .contains("leader of group default (fencing token 2)")
    );
}

#[test]
fn malformed_schedules_name_the_entry_and_the_field_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "name = \"tick\"\ntask = \"t\"\nevery = \"1x\"",
            "entry \"tick\" (#1), field \"every\": invalid duration \"1x\"",
        ),
        (
            "name = \"tick\"\ntask = \"t\"\nevery = \"1s\"\nqeue = \"q\"",
            "entry \"tick\" (#1), field \"qeue\": is not a field",
        ),
        (
            "name = \"tick\"\nevery = \"1s\"",
            "entry \"tick\" (#1), field \"task\": is missing",
        ),
        (
            "name = \"nightly\"\ntask = \"t\"\ncron = \"0 3 * *\"",
            "entry \"nightly\" (#1), field \"cron\": a cron expression has 5 fields",
        ),
        (
            "name = \"nightly\"\ntask = \"t\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Atlantis\"",
            "entry \"nightly\" (#1), field \"timezone\": unknown time zone",
        ),
        (
            "name = \"tick\"\ntask = \"t\"\nevery = \"1s\"\npriority = 10",
            "entry \"tick\" (#1), field \"priority\": must be 0-9",
        ),
        (
            "name = \"tick\"\ntask = \"t\"\nevery = \"1s\"\n[[entry]]\nname = \"tick\"\ntask = \"u\"\nevery = \"2s\"",
            "entry \"tick\" (#2), field \"name\": is used by an earlier entry",
        ),
        (
            "name = \"tick\"\ntask = \"t\"\nevery = \"1s",
            "not a valid TOML schedule",
        ),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, format!("[[entry]]\n{body}\n")).unwrap();
        for list in [false, true] {
            let mut cmd = Command::new(BIN);
            cmd.args(["beat", "--schedule", path.to_str().unwrap()])
                .env("CELERIAC_HOME", dir.path());
            if list {
                cmd.arg("--list");
            }
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{body}: {stderr}");
            assert!(
                stderr.contains(expected) && stderr.contains(path.to_str().unwrap()),
                "{body}: expected {expected:?} in {stderr}"
            );
        }
    }
    let out = Command::new(BIN)
        .args(["beat", "--schedule", "/nonexistent/beat.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the schedule"));
}

#[test]
fn list_prints_each_entry_s_next_run_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "[[entry]]\nname = \"tick\"\ntask = \"celeriac.add\"\nevery = \"1m\"\n\
         [[entry]]\nname = \"nightly\"\ntask = \"reports.build\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "beat",
            "--schedule",
            path.to_str().unwrap(),
            "--list",
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!(lines[0], "tick: celeriac.add every 1m");
    assert_eq!(
        lines[3],
        "nightly: reports.build cron \"30 2 * * *\" (Europe/Berlin)"
    );
    let now = celeriac_core::time::unix_now();
    let times: Vec<f64> = [1, 2, 4, 5]
        .iter()
        .map(|i| {
            let local = lines[*i].trim().split(' ').next().unwrap();
            celeriac_core::time::parse_iso(local).unwrap()
        })
        .collect();
    assert!(times[0] > now && times[1] - times[0] == 60.0, "{text}");
    assert!(
        times[2] > now && times[3] - times[2] >= 23.0 * 3600.0,
        "{text}"
    );
    assert!(lines[4].contains(":30:00.000+0"), "02:30 local: {text}");
}

#[test]
fn worker_b_embeds_a_beat_whose_tasks_the_worker_runs() {
    let home = tempfile::tempdir().unwrap();
    let schedule = every_second(home.path(), "celeriac.add", "[20, 22]", "celery");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "worker",
        "-c",
        "1",
        "-B",
        "--schedule",
        &schedule,
        "--lock-ttl",
        "1s",
    ])
    .env("CELERIAC_HOME", home.path())
    .env_remove("CELERIAC_BROKER_URL");
    let mut worker = LoggedChild::spawn(cmd, home.path(), "celeriac-worker-b");
    wait_until("two ticks run", || {
        worker.count_lines(&["celeriac.add", "succeeded", "42"]) >= 2
    });
    assert!(worker.log().contains("leader of group default"));
    terminate(&mut worker);
    assert!(
        worker.log().contains("released the lease"),
        "{}",
        worker.log()
    );
}

/// A real `celery worker` on `tests/python/pytasks.py`.
fn python_worker(python: &str, url: &str, dir: &Path) -> LoggedChild {
    CeleryWorker::new(python, "pytasks")
        .broker(url)
        .spawn(dir, "python-worker")
}

#[test]
fn python_workers_run_what_celeriac_beat_publishes() {
    let Some(python) = interop_python() else {
        return;
    };
    let redis = RedisServer::start();
    let url = redis.url("");
    let home = tempfile::tempdir().unwrap();
    let schedule = every_second(home.path(), "tasks.add", "[2, 3]", "celery");
    let worker = python_worker(&python, &url, home.path());
    let mut b = beat(home.path(), &["--broker", &url, "--schedule", &schedule]);
    wait_until("Python to run two beats", || {
        worker.count_lines(&["tasks.add", "succeeded", ": 5"]) >= 2
    });
    terminate(&mut b);
    assert!(b.count_lines(&["Sending due task tick (tasks.add)"]) >= 2);
}

#[test]
fn celeriac_workers_run_what_python_celery_beat_publishes() {
    let Some(python) = interop_python() else {
        return;
    };
    let redis = RedisServer::start();
    let url = redis.url("");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "beat_app",
        "beat",
        "--loglevel",
        "INFO",
    ])
    .arg("--schedule")
    .arg(home.path().join("celerybeat-schedule"))
    .current_dir(python_dir())
    .env("BROKER", &url)
    .env("PYTHONPATH", python_dir());
    let _py_beat = LoggedChild::spawn(cmd, home.path(), "python-beat");
    // What Python's beat sends, before anyone consumes it.
    wait_until("Python's beat to send", || {
        !redis_messages(&url, "celery").is_empty()
    });
    let first = &redis_messages(&url, "celery")[0];
    assert_eq!(first.task(), "celeriac.add");
    assert_eq!(
        first.headers.extra["celery_beat_task"], true,
        "{:?}",
        first.headers
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", &url, "-c", "1"]);
    let worker = LoggedChild::spawn(cmd, home.path(), "celeriac-worker");
    wait_until("the celeriac worker to run two beats", || {
        worker.count_lines(&["celeriac.add", "succeeded", "32"]) >= 2
    });
}

#[test]
fn two_beats_on_rabbitmq_keep_the_lease_in_the_result_store() {
    if !celeriac_testkit::rabbit_server::available() {
        return;
    }
    let amqp = celeriac_testkit::rabbit_server::vhost_url();
    let home = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/results.db", home.path().display());
    // Without a result store of its own, a beat on AMQP says what it needs.
    let schedule = every_second(home.path(), "celeriac.add", "[1, 2]", "beats");
    let out = Command::new(BIN)
        .args(["beat", "--broker", &amqp, "--schedule", &schedule])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("result backend"));
    let args = [
        "--broker",
        &amqp,
        "--result-backend",
        &store,
        "--schedule",
        &schedule,
        "--lock-ttl",
        "3s",
        "--catch-up",
        "all",
    ];
    let mut beats = [beat(home.path(), &args), beat(home.path(), &args)];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = celeriac::open_broker(&amqp).unwrap();
    let mut msgs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while msgs.len() < 5 {
        assert!(Instant::now() < deadline, "five beats on RabbitMQ");
        let got = rt
            .block_on(broker.claim(
                "test",
                &["beats".to_string()],
                100,
                Duration::from_millis(500),
            ))
            .unwrap();
        for d in &got {
            msgs.push(Message::decode(&d.payload).unwrap());
        }
        rt.block_on(broker.ack_many(&got)).unwrap();
    }
    for b in &mut beats {
        terminate(b);
    }
    let got = rt
        .block_on(broker.claim(
            "test",
            &["beats".to_string()],
            100,
            Duration::from_millis(500),
        ))
        .unwrap();
    msgs.extend(got.iter().map(|d| Message::decode(&d.payload).unwrap()));
    each_slot_once(&msgs, true);
    assert!(
        beats
            .iter()
            .any(|b| b.log().contains("leader of group default"))
    );
    assert!(beats.iter().any(|b| b.log().contains("standing by")));
}
