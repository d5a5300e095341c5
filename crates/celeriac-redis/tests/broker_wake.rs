//! The wake-up of an idle Redis consumer: the blocking wait moves the
//! message into the consumer's inbox and the claim, sent behind it in the
//! same pipeline, records it. What this must keep: every message delivered
//! once and whole, a big one sent over the network once, and a message left
//! in a dead consumer's inbox put back on its queue. Each test starts its
//! own `redis-server`.

mod raw_command;

use std::time::{Duration, Instant};

use celeriac_core::broker::prelude::*;
use celeriac_core::{Message, Outgoing};
use celeriac_redis::RedisBroker;
use celeriac_testkit::redis_server::RedisServer;
use celeriac_testkit::{id_of, out, q};
use raw_command::raw;
use serde_json::json;

/// Bytes the server has sent to its clients so far.
async fn net_out(url: &str) -> u64 {
    let info: String = raw(url, redis::cmd("INFO").arg("stats")).await;
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// A message of about `size` bytes for `queue`.
fn big(queue: &str, size: usize) -> (Outgoing, String) {
    let mut m = Message::new("t.big", vec![json!("x".repeat(size))], Default::default());
    m.set_queue(queue);
    (Outgoing::from_message(&m).unwrap(), m.id().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_message_that_wakes_a_consumer_crosses_the_network_once() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let broker = RedisBroker::open(&url).unwrap();
    let publisher = RedisBroker::open(&url).unwrap();
    // Connected, scripts loaded, the wait's connection open.
    assert!(
        broker
            .claim("w", &q(&["celery"]), 1, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    const SIZE: usize = 2_000_000;
    let (o, id) = big("celery", SIZE);
    let sent = o.payload.clone();
    let before = net_out(&url).await;
    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move {
            broker
                .claim("w", &q(&["celery"]), 1, Duration::from_secs(10))
                .await
                .unwrap()
        }
    });
    // The consumer is waiting when the message arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher.publish(o).await.unwrap();
    let got = waiting.await.unwrap();
    let sent_bytes = net_out(&url).await - before;
    assert_eq!(got.len(), 1);
    assert_eq!(id_of(&got[0]), id);
    assert_eq!(got[0].payload, sent, "the payload arrives whole");
    assert!(
        !got[0].redelivered && got[0].deliveries == 1,
        "{:?}",
        got[0].tag
    );
    assert!(
        sent_bytes < (SIZE + SIZE / 2) as u64,
        "the server sent {sent_bytes} bytes for a message of {SIZE}: it was sent twice"
    );
    // Claimed as any other message: held in `unacked`, the inbox empty.
    let held: u64 = raw(&url, redis::cmd("HLEN").arg("unacked")).await;
    assert_eq!(held, 1);
    let registry: Vec<String> = raw(&url, redis::cmd("HKEYS").arg("celeriac.inboxes")).await;
    assert_eq!(registry.len(), 1, "{registry:?}");
    let inbox = format!("celeriac.inbox.{}", registry[0]);
    let left: u64 = raw(&url, redis::cmd("LLEN").arg(&inbox)).await;
    assert_eq!(left, 0);
    assert_eq!(broker.ack_many(&got).await.unwrap(), vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumers_woken_together_each_get_distinct_whole_messages() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let a = RedisBroker::open(&url).unwrap();
    let b = RedisBroker::open(&url).unwrap();
    let publisher = RedisBroker::open(&url).unwrap();
    // Three waits of one handle (two of them under one consumer name, so
    // one waits without the inbox) and one of another handle.
    let mut waits = Vec::new();
    for (broker, name) in [(&a, "w"), (&a, "w"), (&a, "v"), (&b, "w")] {
        let broker = broker.clone();
        waits.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.is_empty() && Instant::now() < deadline {
                got = broker
                    .claim(name, &q(&["celery"]), 1, Duration::from_millis(500))
                    .await
                    .unwrap();
            }
            (broker, got)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sent = Vec::new();
    for i in 0..4 {
        let (o, id) = big("celery", 1000 * (i + 1));
        sent.push((id, o.payload.clone()));
        publisher.publish(o).await.unwrap();
    }
    let mut got = Vec::new();
    for w in waits {
        let (broker, ds) = w.await.unwrap();
        assert_eq!(broker.ack_many(&ds).await.unwrap(), vec![true; ds.len()]);
        got.extend(ds);
    }
    let mut got: Vec<(String, Vec<u8>)> =
        got.iter().map(|d| (id_of(d), d.payload.clone())).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "each message once, with its own payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_in_a_dead_consumers_inbox_goes_back_to_its_queue() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    // A consumer killed between its wait and its claim: its message is in
    // its inbox, registered, and its liveness lease is gone.
    let (o, id) = out("celery", 0, None);
    let _: () = raw(
        &url,
        redis::cmd("SADD").arg("celeriac.consumers").arg("dead"),
    )
    .await;
    let _: () = raw(
        &url,
        redis::cmd("HSET")
            .arg("celeriac.inboxes")
            .arg("dead.0")
            .arg("celery"),
    )
    .await;
    let _: () = raw(
        &url,
        redis::cmd("RPUSH")
            .arg("celeriac.inbox.dead.0")
            .arg(&o.payload),
    )
    .await;
    let live = RedisBroker::open(&url).unwrap();
    // A consumer judges others once its own lease has held for a whole
    // lease (10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got = live
            .claim("w", &q(&["celery"]), 10, Duration::from_millis(500))
            .await
            .unwrap();
    }
    assert_eq!(got.len(), 1, "the message came back");
    assert_eq!(id_of(&got[0]), id);
    assert_eq!(got[0].payload, o.payload, "as it was");
    assert_eq!(live.ack_many(&got).await.unwrap(), vec![true]);
    let left: u64 = raw(&url, redis::cmd("EXISTS").arg("celeriac.inbox.dead.0")).await;
    assert_eq!(left, 0);
    let registered: u64 = raw(
        &url,
        redis::cmd("HEXISTS").arg("celeriac.inboxes").arg("dead.0"),
    )
    .await;
    assert_eq!(registered, 0, "the dead consumer's inbox is forgotten");
}

/// Calls of `command` the server has run so far.
async fn calls(url: &str, command: &str) -> u64 {
    let info: String = raw(url, redis::cmd("INFO").arg("commandstats")).await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_a_claim_that_emptied_the_lists_the_next_one_starts_with_its_wait() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let broker = RedisBroker::open(&url).unwrap();
    let (o, _) = out("celery", 0, None);
    broker.publish(o).await.unwrap();
    // Took one of the two it could: every list was empty.
    let got = broker
        .claim("w", &q(&["celery"]), 2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let (evals, waits) = (calls(&url, "evalsha").await, calls(&url, "blmove").await);
    let none = broker
        .claim("w", &q(&["celery"]), 2, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_empty());
    let evals = calls(&url, "evalsha").await - evals;
    let waits = calls(&url, "blmove").await - waits;
    assert!(waits >= 1, "it waited");
    assert_eq!(
        evals, waits,
        "every claim script ran behind a wait, none before"
    );
    assert_eq!(broker.ack_many(&got).await.unwrap(), vec![true]);
}
