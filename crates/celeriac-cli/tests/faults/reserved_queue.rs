//! Queues named like the broker's own bookkeeping keys. Publishing to
//! `unacked` once turned kombu's `unacked` hash into a list: every claim
//! then failed with WRONGTYPE after its script had popped the batch, so
//! queued tasks vanished and every worker stopped working.

use std::time::Duration;

use celeriac_testkit::redis_server::RedisServer;

use crate::{Client, run, worker};

#[test]
fn a_reserved_queue_name_is_refused_and_harms_nothing() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    let tasks = client.send_adds(0, 5);
    for queue in [
        "unacked",
        "unacked_index",
        "_kombu.binding.celery",
        "celeriac.dlq",
    ] {
        let out = run(&[
            "call",
            "celeriac.add",
            "--args",
            "[1,2]",
            "--queue",
            queue,
            "--broker",
            &url,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "call --queue {queue} is a usage error: {err}"
        );
        assert!(err.contains("reserved"), "the error says why: {err}");
    }
    // A worker on the dead-letter list would consume its own dead letters.
    let out = run(&["worker", "-Q", "celery,celeriac.dlq", "--broker", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "worker -Q celeriac.dlq: {err}");
    assert!(err.contains("reserved"), "{err}");
    let kind: String = client.redis(redis::cmd("TYPE").arg("unacked"));
    assert_eq!(kind, "none", "nothing was written to `unacked`");
    assert_eq!(client.waiting(), 5, "the queued tasks are untouched");
    let _w = worker(&url, logs.path(), "after@faults", &[]);
    let tally = client.tally(&tasks, Duration::from_secs(60));
    assert_eq!((tally.lost, tally.wrong), (0, 0), "{tally:?}");
}

#[test]
fn a_clobbered_bookkeeping_key_stops_claims_before_they_take_anything() {
    // A publisher that does not know the rule (an old celeriac, a Python
    // client, a hand-typed LPUSH) can still make `unacked` a list. Claims
    // must then fail with a clear error and leave the queue as it was.
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    let tasks = client.send_adds(0, 5);
    let _: i64 = client.redis(redis::cmd("LPUSH").arg("unacked").arg("junk"));
    let w = worker(&url, logs.path(), "blocked@faults", &[]);
    let log = w.wait_for_log("claim failed");
    assert!(
        log.contains("unacked") && log.contains("list"),
        "the error names the key and what it holds:\n{log}"
    );
    // Let it retry a few times: nothing may leave the queue meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(client.waiting(), 5, "no claim took a message:\n{}", w.log());
    // The operator removes the stray key; the worker carries on by itself.
    let _: i64 = client.redis(redis::cmd("DEL").arg("unacked"));
    let tally = client.tally(&tasks, Duration::from_secs(60));
    assert_eq!((tally.lost, tally.wrong), (0, 0), "{tally:?}\n{}", w.log());
}
