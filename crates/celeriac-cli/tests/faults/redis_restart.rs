//! `redis-server` restarts in the middle of a run, with the default
//! visibility timeout (an hour), so that a claim whose reply the restart
//! lost would show as missing tasks.
//!
//! - With an append-only file, Redis keeps every write it acknowledged:
//!   nothing may be lost, and the same worker carries on.
//! - Without persistence, Redis forgets everything on a restart (its own
//!   promise): what was lost is printed, and the worker must recover and
//!   serve new tasks.

use std::path::Path;
use std::time::{Duration, Instant};

use celeriac_testkit::redis_server::RedisServer;

use crate::{Client, worker};

#[test]
fn redis_restarts_with_aof_mid_run_lose_nothing() {
    if !RedisServer::available() {
        return;
    }
    let mut redis = RedisServer::start();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    let tasks = client.send_adds(0, 10_000);
    let w = worker(&url, logs.path(), "steady@faults", &[]);
    // Three restarts while the worker claims, runs and acks.
    for left in [8_000, 6_000, 4_000] {
        client.wait_waiting_at_most(left);
        redis.restart(Duration::from_millis(300));
    }
    let restarted = Instant::now();
    let tally = client.tally(&tasks, Duration::from_secs(120));
    eprintln!(
        "faults/redis_restart (aof): {tally:?}; done {:.1} s after the last restart",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        (tally.lost, tally.wrong),
        (0, 0),
        "nothing is lost across restarts with an append-only file: {tally:?}\n{}",
        w.log()
    );
    assert!(
        Path::new(&format!("/proc/{}", w.child.id())).exists(),
        "the same worker process carried on"
    );
}

#[test]
fn after_a_restart_without_persistence_the_worker_serves_new_tasks() {
    if !RedisServer::available() {
        return;
    }
    let mut redis = RedisServer::start_volatile();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    let before = client.send_adds(0, 5_000);
    let w = worker(&url, logs.path(), "volatile@faults", &[]);
    client.wait_waiting_at_most(3_000);
    redis.restart(Duration::from_millis(300));
    let restarted = Instant::now();
    // What Redis forgot: the queue, the claims and the results it held.
    let lost = client.tally(&before, Duration::from_secs(5));
    let after = client.send_adds(100_000, 200);
    let tally = client.tally(&after, Duration::from_secs(60));
    eprintln!(
        "faults/redis_restart (no persistence): of the {} tasks sent before the restart, \
         {} have a result afterwards and {} are gone (Redis kept nothing); the {} sent \
         after it: {tally:?}, done {:.1} s after the restart",
        lost.sent,
        lost.done,
        lost.lost,
        after.len(),
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(lost.wrong, 0, "no wrong results: {lost:?}");
    assert_eq!(
        (tally.lost, tally.wrong),
        (0, 0),
        "the worker recovers and serves new tasks: {tally:?}\n{}",
        w.log()
    );
    assert!(
        Path::new(&format!("/proc/{}", w.child.id())).exists(),
        "the same worker process carried on"
    );
}
