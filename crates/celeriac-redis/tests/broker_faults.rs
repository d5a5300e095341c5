//! The Redis broker under faults, through its API: reserved queue names,
//! keys of the wrong type, a claim whose reply is lost, and a consumer that
//! dies holding messages. Each test starts its own `redis-server`.

mod raw_command;

use std::time::{Duration, Instant};

use celeriac_core::broker::prelude::*;
use celeriac_core::{BrokerError, Delivery, QueueNameError};
use celeriac_redis::RedisBroker;
use celeriac_testkit::proxy::FaultProxy;
use celeriac_testkit::redis_server::RedisServer;
use celeriac_testkit::{id_of, out, q};
use raw_command::raw;

/// Claims from `queue` until `want` messages came or `within` passed.
async fn claim_all(
    broker: &RedisBroker,
    queue: &str,
    want: usize,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(
            broker
                .claim(
                    "w",
                    &q(&[queue]),
                    want - got.len(),
                    Duration::from_millis(200),
                )
                .await
                .unwrap(),
        );
    }
    got
}

#[tokio::test]
async fn reserved_queue_names_are_refused_on_publish_and_claim() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let broker = RedisBroker::open(&url).unwrap();
    for name in [
        "unacked",
        "unacked_index",
        "_kombu.binding.celery",
        "celeriac.dlq",
        "",
    ] {
        let (o, _) = out(name, 0, None);
        let err = broker.publish(o).await.unwrap_err();
        assert!(
            matches!(err, BrokerError::InvalidQueue(_)),
            "publish to {name:?}: {err}"
        );
        let err = broker
            .claim("w", &q(&["celery", name]), 1, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BrokerError::InvalidQueue(_)),
            "claim from {name:?}: {err}"
        );
    }
    // A batch with one bad name publishes nothing.
    let (good, _) = out("celery", 0, None);
    let (bad, _) = out("unacked", 0, None);
    assert!(matches!(
        broker.publish_batch(vec![good, bad]).await,
        Err(BrokerError::InvalidQueue(QueueNameError::Reserved { .. }))
    ));
    assert_eq!(broker.queue_len("celery").await.unwrap(), 0);
    let kind: String = raw(&url, redis::cmd("TYPE").arg("unacked")).await;
    assert_eq!(kind, "none");
}

#[tokio::test]
async fn a_wrong_typed_bookkeeping_key_fails_the_claim_before_it_takes_anything() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let broker = RedisBroker::open(&url).unwrap();
    for key in [
        "unacked",
        "unacked_index",
        "celeriac.claims",
        "celeriac.deliveries",
        "celeriac.delayed",
    ] {
        let (o, id) = out("celery", 0, None);
        broker.publish(o).await.unwrap();
        // (The claim table keeps a record of the last batch: replace it.)
        let _: i64 = raw(&url, redis::cmd("DEL").arg(key)).await;
        let _: i64 = raw(&url, redis::cmd("LPUSH").arg(key).arg("junk")).await;
        let err = broker
            .claim("w", &q(&["celery"]), 10, Duration::from_millis(10))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("key \"{key}\" holds a list"))
                && text.contains("nothing was changed"),
            "{text}"
        );
        let waiting: i64 = raw(&url, redis::cmd("LLEN").arg("celery")).await;
        assert_eq!(
            waiting, 1,
            "the message is still queued after the refused claim on {key}"
        );
        let _: i64 = raw(&url, redis::cmd("DEL").arg(key)).await;
        let got = claim_all(&broker, "celery", 1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(id_of(&got[0]), id);
        broker.ack(&got[0]).await.unwrap();
    }
    // A queue's own key holding something else: the claim is refused too,
    // and what it had popped from the queues before is put back, in order.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (o, id) = out("celery", 0, None);
        broker.publish(o).await.unwrap();
        ids.push(id);
    }
    let _: i64 = raw(&url, redis::cmd("HSET").arg("other").arg("f").arg("v")).await;
    let err = broker
        .claim("w", &q(&["celery", "other"]), 10, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("key \"other\" holds a hash"),
        "{err}"
    );
    let held: i64 = raw(&url, redis::cmd("HLEN").arg("unacked")).await;
    assert_eq!(held, 0, "nothing was claimed");
    let got = claim_all(&broker, "celery", 3, Duration::from_secs(5)).await;
    assert_eq!(
        got.iter().map(id_of).collect::<Vec<_>>(),
        ids,
        "same messages, same order"
    );
}

#[tokio::test]
async fn settling_with_a_wrong_typed_key_changes_nothing() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let broker = RedisBroker::open(&url).unwrap();
    let (o, _) = out("celery", 0, None);
    broker.publish(o).await.unwrap();
    let got = claim_all(&broker, "celery", 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let entry = || async {
        let e: Option<String> = raw(
            &url,
            redis::cmd("HGET")
                .arg("unacked")
                .arg(got[0].tag.split('#').next().unwrap()),
        )
        .await;
        e
    };
    assert!(entry().await.is_some());
    // The delivery counter is a list: ack, dead-letter and requeue refuse.
    let _: i64 = raw(&url, redis::cmd("DEL").arg("celeriac.deliveries")).await;
    let _: i64 = raw(
        &url,
        redis::cmd("LPUSH").arg("celeriac.deliveries").arg("junk"),
    )
    .await;
    assert!(
        broker
            .ack(&got[0])
            .await
            .unwrap_err()
            .to_string()
            .contains("celeriac.deliveries")
    );
    assert!(broker.dead_letter(&got[0], "x").await.is_err());
    assert!(entry().await.is_some(), "still claimed");
    let _: i64 = raw(&url, redis::cmd("DEL").arg("celeriac.deliveries")).await;
    let _: i64 = raw(
        &url,
        redis::cmd("HSET")
            .arg("celeriac.deliveries")
            .arg(got[0].tag.split('#').next().unwrap())
            .arg(1),
    )
    .await;
    // The queue's list is a hash: a requeue refuses and keeps the claim.
    let _: i64 = raw(&url, redis::cmd("HSET").arg("celery").arg("f").arg("v")).await;
    assert!(broker.requeue(&got[0], None).await.is_err());
    assert!(entry().await.is_some(), "still claimed");
    let _: i64 = raw(&url, redis::cmd("DEL").arg("celery")).await;
    broker.ack(&got[0]).await.unwrap();
    assert!(entry().await.is_none());
}

#[tokio::test]
async fn a_message_restored_onto_a_wrong_typed_queue_is_dead_lettered_not_dropped() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("?visibility_timeout=0.3");
    let broker = RedisBroker::open(&url).unwrap();
    let (o, id) = out("jobs", 0, None);
    broker.publish(o).await.unwrap();
    let got = claim_all(&broker, "jobs", 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    // While it is held, its queue's key becomes a hash; its lease lapses.
    let _: i64 = raw(&url, redis::cmd("HSET").arg("jobs").arg("f").arg("v")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Any claim runs the restore.
    let _ = broker
        .claim("w", &q(&["celery"]), 1, Duration::from_millis(100))
        .await
        .unwrap();
    let dead = broker.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].queue, "jobs");
    assert!(
        dead[0].reason.contains("holds a hash"),
        "{}",
        dead[0].reason
    );
    let restored = celeriac_core::Message::decode(&dead[0].payload).unwrap();
    assert_eq!(restored.id(), id);
    let held: i64 = raw(&url, redis::cmd("HLEN").arg("unacked")).await;
    assert_eq!(held, 0);
}

#[tokio::test]
async fn a_due_delayed_message_whose_queue_key_is_wrong_is_dead_lettered() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let broker = RedisBroker::open(&url).unwrap();
    let soon = celeriac_core::time::unix_now() + 0.2;
    let (o, id) = out("later", 0, Some(soon));
    broker.publish(o).await.unwrap();
    let _: i64 = raw(&url, redis::cmd("SADD").arg("later").arg("x")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = broker
        .claim("w", &q(&["celery"]), 1, Duration::from_millis(10))
        .await
        .unwrap();
    let dead = broker.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("holds a set"), "{}", dead[0].reason);
    assert_eq!(
        celeriac_core::Message::decode(&dead[0].payload)
            .unwrap()
            .id(),
        id
    );
    let delayed: i64 = raw(&url, redis::cmd("ZCARD").arg("celeriac.delayed")).await;
    assert_eq!(delayed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_is_lost_is_resumed_by_the_next_claim() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let direct = RedisBroker::open(&url).unwrap();
    // Load the scripts, so that the cut claim runs (not a NOSCRIPT).
    let _ = direct
        .claim("warm-up", &q(&["warm-up"]), 1, Duration::from_millis(10))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (o, id) = out("celery", 0, None);
        direct.publish(o).await.unwrap();
        ids.push(id);
    }
    let port: u16 = url
        .trim_start_matches("redis://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(port);
    let broker = RedisBroker::open(&proxy.redis_url("")).unwrap();
    proxy.lose_reply_to(b"celeriac.deliveries");
    let err = broker
        .claim("w", &q(&["celery"]), 10, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Connection { .. }), "{err}");
    assert_eq!(proxy.cuts(), 1);
    // The script ran: the batch is claimed, held by nobody who knows it.
    assert_eq!(direct.queue_len("celery").await.unwrap(), 0);
    let held: i64 = raw(&url, redis::cmd("HLEN").arg("unacked")).await;
    assert_eq!(held, 3);
    // The next claim (after the reconnect) gets that batch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        match broker
            .claim("w", &q(&["celery"]), 10, Duration::from_millis(10))
            .await
        {
            Ok(got) => break got,
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let got_ids: Vec<String> = got.iter().map(id_of).collect();
    assert_eq!(got_ids, ids, "the same batch, in order");
    for d in &got {
        assert_eq!((d.deliveries, d.redelivered), (1, false), "delivered once");
    }
    assert_eq!(broker.ack_many(&got).await.unwrap(), vec![true; 3]);
    let held: i64 = raw(&url, redis::cmd("HLEN").arg("unacked")).await;
    assert_eq!(held, 0);
    // And the claim after that takes new messages again.
    let (o, id) = out("celery", 0, None);
    direct.publish(o).await.unwrap();
    let next = claim_all(&broker, "celery", 1, Duration::from_secs(5)).await;
    assert_eq!(next.iter().map(id_of).collect::<Vec<_>>(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_messages_come_back_in_seconds_and_a_live_ones_never() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    // The default visibility timeout: an hour.
    let url = server.url("");
    let a = RedisBroker::open(&url).unwrap();
    let b = RedisBroker::open(&url).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (o, id) = out("celery", 0, None);
        a.publish(o).await.unwrap();
        ids.push(id);
    }
    let held = claim_all(&a, "celery", 2, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 2);
    // While `a` lives (its lease renewed), `b` gets nothing, for longer
    // than the liveness lease.
    let alive_until = Instant::now() + Duration::from_secs(14);
    while Instant::now() < alive_until {
        let got = b
            .claim("b", &q(&["celery"]), 10, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(got.is_empty(), "a live consumer's messages were taken");
    }
    // `a` dies (its process would be killed: no renewal, no ack).
    drop(a);
    let died = Instant::now();
    let got = claim_all(&b, "celery", 2, Duration::from_secs(30)).await;
    eprintln!(
        "a dead consumer's messages came back {:.1} s after its death",
        died.elapsed().as_secs_f64()
    );
    let mut got_ids: Vec<String> = got.iter().map(id_of).collect();
    got_ids.sort();
    ids.sort();
    assert_eq!(got_ids, ids, "both messages come back, long before an hour");
    for d in &got {
        assert!(d.redelivered && d.deliveries == 2, "{d:?}");
    }
    assert_eq!(b.ack_many(&got).await.unwrap(), vec![true; 2]);
    let consumers: Vec<String> = raw(&url, redis::cmd("SMEMBERS").arg("celeriac.consumers")).await;
    assert_eq!(
        consumers.len(),
        1,
        "the dead consumer is forgotten: {consumers:?}"
    );
    let fields: Vec<Vec<u8>> = raw(&url, redis::cmd("HKEYS").arg("celeriac.claims")).await;
    let records = fields
        .iter()
        .filter(|f| f.starts_with(b"\0celeriac-batch:"))
        .count();
    assert_eq!(records, 1, "only the live consumer's batch record is left");
}
