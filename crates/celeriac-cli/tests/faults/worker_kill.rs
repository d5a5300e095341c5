//! `kill -9` of a worker holding reserved and running tasks, with the
//! default visibility timeout (an hour). The dead worker's claims come
//! back when its liveness lease lapses (seconds), not when their
//! visibility timeout does.

use std::time::{Duration, Instant};

use celeriac_testkit::redis_server::RedisServer;

use crate::{Client, worker};

#[test]
fn kill_9_of_a_worker_loses_nothing_and_its_tasks_run_within_a_minute() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    let tasks = client.send_adds(0, 10_000);
    let mut a = worker(&url, logs.path(), "a@faults", &[]);
    let _b = worker(&url, logs.path(), "b@faults", &[]);
    // Kill one worker about a third of the way through, while it holds
    // claimed messages.
    client.wait_waiting_at_most(7_000);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let held: usize = client.redis(redis::cmd("HLEN").arg("unacked"));
    // A replacement with the dead worker's name: it must not matter.
    let _a2 = worker(&url, logs.path(), "a@faults", &[]);
    let tally = client.tally(&tasks, Duration::from_secs(60));
    let recovered = killed.elapsed();
    eprintln!(
        "faults/worker_kill: {tally:?}; {held} messages claimed at the kill; \
         every task had run {:.1} s after the kill",
        recovered.as_secs_f64()
    );
    assert_eq!(
        (tally.lost, tally.wrong),
        (0, 0),
        "every task runs within a minute of the kill, with the right result: {tally:?}"
    );
}
