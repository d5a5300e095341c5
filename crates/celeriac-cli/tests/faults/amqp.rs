//! Faults on RabbitMQ (the private test node, a vhost per test, results in
//! a private Redis): a worker killed with SIGKILL while it holds prefetched
//! messages, every connection closed by the server (`rabbitmqctl
//! close_all_connections`), and a queue deleted under a worker that
//! consumes it.

use std::time::{Duration, Instant};

use celeriac_testkit::rabbit_server;
use celeriac_testkit::redis_server::RedisServer;

use crate::{BIN, Client, run};

/// A worker on `broker` with results in `redis`, `-c 4`, named `name`.
fn worker(
    broker: &str,
    redis: &str,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> celeriac_testkit::process::LoggedChild {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["worker", "--broker", broker, "--result-backend", redis])
        .args(["-c", "4", "-n", name])
        .args(extra);
    celeriac_testkit::process::LoggedChild::spawn(cmd, dir, name)
}

#[test]
fn on_amqp_kill_9_of_a_worker_holding_prefetched_messages_loses_nothing() {
    if !rabbit_server::available() || !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let results = redis.url("");
    let vhost = rabbit_server::vhost_url();
    // A deep prefetch: the victim holds many unacked messages when it dies.
    let broker = format!("{vhost}?prefetch_count=200");
    let client = Client::with_backend(&broker, &results);
    let logs = tempfile::tempdir().unwrap();
    let tasks = client.send_adds(0, 3_000);
    let mut a = worker(&broker, &results, logs.path(), "a@amqp", &[]);
    let _b = worker(&broker, &results, logs.path(), "b@amqp", &[]);
    client.wait_waiting_at_most(2_000);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let _a2 = worker(&broker, &results, logs.path(), "a@amqp", &[]);
    let tally = client.tally(&tasks, Duration::from_secs(120));
    eprintln!(
        "faults/amqp kill -9: {tally:?}; every task had run {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        (tally.lost, tally.wrong),
        (0, 0),
        "RabbitMQ gives the dead worker's messages back and they run: {tally:?}"
    );
}

#[test]
fn on_amqp_a_worker_resumes_after_the_server_closes_every_connection() {
    if !rabbit_server::available() || !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let results = redis.url("");
    let broker = rabbit_server::vhost_url();
    let client = Client::with_backend(&broker, &results);
    let logs = tempfile::tempdir().unwrap();
    let w = worker(&broker, &results, logs.path(), "w@amqp", &[]);
    let first = client.send_adds(0, 200);
    assert_eq!(client.tally(&first, Duration::from_secs(60)).done, 200);
    let vhost = broker.rsplit('/').next().unwrap();
    rabbit_server::rabbitmqctl(&["close_all_connections", "-p", vhost, "fault test"]);
    let closed = Instant::now();
    // The client's own connection was closed too: it reconnects to send.
    let after = client.send_adds(1_000, 200);
    let tally = client.tally(&after, Duration::from_secs(60));
    eprintln!(
        "faults/amqp close_all_connections: {tally:?}; 200 tasks sent and run {:.2} s after the close",
        closed.elapsed().as_secs_f64()
    );
    assert_eq!((tally.lost, tally.wrong), (0, 0), "{tally:?}");
    assert!(
        w.log().contains("AMQP connection recovered"),
        "the worker says it reconnected:\n{}",
        w.log()
    );
}

#[test]
fn on_amqp_a_queue_deleted_under_the_worker_is_reported_and_the_others_served() {
    if !rabbit_server::available() || !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let results = redis.url("");
    let broker = rabbit_server::vhost_url();
    let logs = tempfile::tempdir().unwrap();
    let w = worker(
        &broker,
        &results,
        logs.path(),
        "q@amqp",
        &["-Q", "celery,other"],
    );
    let call = |queue: &str, x: &str| {
        let out = run(&[
            "call",
            "celeriac.add",
            "--args",
            &format!("[{x}, 1]"),
            "--queue",
            queue,
            "--wait",
            "--timeout",
            "60",
            "--broker",
            &broker,
            "--result-backend",
            &results,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(call("other", "1"), "2");
    let vhost = broker.rsplit('/').next().unwrap();
    rabbit_server::rabbitmqctl(&["delete_queue", "-p", vhost, "other"]);
    let log = w.wait_for_log("AMQP consumer ended");
    assert!(
        log.contains("AMQP consumer ended") && log.contains("other"),
        "a clear warning names the queue:\n{log}"
    );
    assert_eq!(call("celery", "2"), "3", "the other queue is still served");
    assert_eq!(
        call("other", "3"),
        "4",
        "the deleted queue is declared and consumed again"
    );
}

/// Celery holds a countdown's message unacked in the worker until it is
/// due, which RabbitMQ's `consumer_timeout` (30 min by default) punishes
/// by closing the channel. A celeriac worker holds none: the message waits
/// in a durable delay queue, so no consumer timeout can apply to it,
/// however long the countdown.
#[test]
fn on_amqp_a_long_countdown_waits_in_rabbitmq_not_in_the_worker() {
    if !rabbit_server::available() || !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let results = redis.url("");
    let broker = rabbit_server::vhost_url();
    let logs = tempfile::tempdir().unwrap();
    let _w = worker(&broker, &results, logs.path(), "eta@amqp", &[]);
    // As Python sends it: the eta in the headers, published to `celery`;
    // the worker takes it, sees it is not due, and moves it out.
    let client = Client::with_backend(&broker, &results);
    let due = celeriac_core::time::unix_now() + 3600.0;
    let mut m = celeriac::Call::<serde_json::Value>::new("celeriac.add")
        .arg(1)
        .arg(2)
        .to_message()
        .unwrap();
    m.headers.eta = Some(celeriac_core::time::iso_from_unix(due));
    let mut out = celeriac::Outgoing::from_message(&m).unwrap();
    out.eta = None;
    client.rt.block_on(client.broker.publish(out)).unwrap();
    let vhost = broker.rsplit('/').next().unwrap();
    let queues = || {
        rabbit_server::rabbitmqctl(&[
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let text = queues();
        let delayed = text.lines().any(waiting_in_a_delay_queue);
        if delayed || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        listed.lines().any(waiting_in_a_delay_queue),
        "the message waits, ready, in a delay queue:\n{listed}"
    );
    assert!(
        listed.lines().any(|l| l == "celery\t0\t0"),
        "nothing is held unacked on the task queue:\n{listed}"
    );
}

/// A `list_queues` line of a delay queue with ready messages and none
/// unacked.
fn waiting_in_a_delay_queue(line: &str) -> bool {
    let cols: Vec<&str> = line.split('\t').collect();
    matches!(cols.as_slice(), [name, ready, "0"]
        if name.starts_with("celeriac.delay.") && ready.parse::<u64>().is_ok_and(|n| n >= 1))
}

#[test]
fn on_amqp_a_rabbitmq_restart_mid_run_loses_nothing() {
    if !rabbit_server::available() || !RedisServer::available() {
        return;
    }
    // A node of its own: the shared one serves the other tests meanwhile.
    let node = rabbit_server::PrivateNode::start();
    let redis = RedisServer::start();
    let results = redis.url("");
    let broker = node.url.clone();
    let logs = tempfile::tempdir().unwrap();
    let w = worker(&broker, &results, logs.path(), "r@amqp", &[]);
    let client = Client::with_backend(&broker, &results);
    let first = client.send_adds(0, 5_000);
    // A publisher keeps sending through the restart: each batch returns
    // only once RabbitMQ confirmed it, and is sent again if it did not.
    let (b, r) = (broker.clone(), results.clone());
    let publisher =
        std::thread::spawn(move || Client::with_backend(&b, &r).send_adds(5_000, 5_000));
    std::thread::sleep(Duration::from_millis(500));
    node.restart(Duration::from_secs(2));
    let restarted = Instant::now();
    let mut tasks = first;
    tasks.extend(publisher.join().expect("the publisher"));
    let tally = client.tally(&tasks, Duration::from_secs(240));
    eprintln!(
        "faults/amqp restart: {tally:?}; every task had run {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        (tally.lost, tally.wrong),
        (0, 0),
        "confirmed publishes survive the restart and run: {tally:?}"
    );
    assert!(
        w.log().contains("AMQP connection recovered"),
        "the restart happened under the worker:\n{}",
        w.log()
    );
}
