//! The contracts every celeriac broker, result backend and executor keep,
//! as async test functions. Each executor runs
//! [`executor::run_contract`]; each broker crate runs the broker contract
//! against its own fixtures with [`broker_contract!`]:
//!
//! ```ignore
//! celeriac_testkit::broker_contract!(memory_broker, make_memory_fixture);
//! ```

pub mod beat_store;
pub mod chord_join;
pub mod control;
pub mod executor;
pub mod process;
pub mod proxy;
pub mod python;
pub mod rabbit_server;
pub mod redis_server;
pub mod settle_together;
pub mod site;
pub mod tls;

pub use control::{
    a_broadcast_revoke_is_recorded, control_calls_reach_every_listener_and_collect_their_replies,
    control_casts_arrive_and_stray_replies_are_dropped, delayed_messages_are_listed_by_queue,
    purge_deletes_waiting_messages_and_keeps_held_ones,
};

/// Publishes `calls` in batches of 500; returns their task ids in order.
pub async fn send_calls(
    broker: &dyn celeriac_core::Broker,
    calls: Vec<celeriac_core::Call<serde_json::Value>>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for c in calls {
        let m = c.to_message().expect("a call encodes");
        ids.push(m.id().to_string());
        batch.push(celeriac_core::Outgoing::from_message(&m).expect("a message encodes"));
        if batch.len() == 500 {
            broker
                .publish_batch(std::mem::take(&mut batch))
                .await
                .expect("publish");
        }
    }
    broker.publish_batch(batch).await.expect("publish");
    ids
}

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::time::unix_now;
use celeriac_core::{
    Broker, BrokerError, Message, NodeInfo, Outgoing, ResultBackend, ResultMeta, State, TaskError,
};
use serde_json::json;

/// A generous wait.
pub const LONG: Duration = Duration::from_secs(2);
/// A short wait.
pub const SHORT: Duration = Duration::from_millis(50);

/// An outgoing message on `queue` with a priority and an eta, and its id.
pub fn out(queue: &str, priority: u8, eta: Option<f64>) -> (Outgoing, String) {
    let mut m = Message::new("t.x", vec![json!(priority)], Default::default());
    m.set_queue(queue);
    m.properties.priority = priority;
    let mut o = Outgoing::from_message(&m).unwrap();
    o.eta = eta;
    (o, m.id().to_string())
}

/// The task id of a delivery.
pub fn id_of(d: &celeriac_core::Delivery) -> String {
    Message::decode(&d.payload).unwrap().id().to_string()
}

/// Queue names.
pub fn q(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Two handles on one broker and one result store (two processes'
/// view, for brokers that have one), made with a given claim lease.
#[allow(missing_debug_implementations)]
pub struct Fixture {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// A second handle on the same broker.
    pub other: Arc<dyn Broker>,
    /// The result backend.
    pub backend: Arc<dyn ResultBackend>,
    /// A second handle on the same result backend.
    pub other_backend: Arc<dyn ResultBackend>,
    /// Anything the fixture must keep alive (a temporary directory, ...).
    pub keep: Option<Box<dyn std::any::Any + Send>>,
}

/// Contract: `publish_claim_ack`.
pub async fn publish_claim_ack(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (o, id) = out("celery", 0, None);
    let payload = o.payload.clone();
    f.broker.publish(o).await.unwrap();
    assert_eq!(f.broker.queue_len("celery").await.unwrap(), 1);
    let got = f
        .other
        .claim("w1", &q(&["celery"]), 10, LONG)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].payload, payload,
        "payload is delivered byte for byte"
    );
    assert_eq!(id_of(&got[0]), id);
    assert_eq!((got[0].deliveries, got[0].redelivered), (1, false));
    assert_eq!(
        f.broker.queue_len("celery").await.unwrap(),
        0,
        "claimed is not waiting"
    );
    f.other.ack(&got[0]).await.unwrap();
    assert!(matches!(
        f.other.ack(&got[0]).await,
        Err(BrokerError::NotHeld(_))
    ));
    assert!(
        f.broker
            .claim("w1", &q(&["celery"]), 1, SHORT)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Contract: `empty_claim_times_out_empty`.
pub async fn empty_claim_times_out_empty(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let got = f
        .broker
        .claim("w", &q(&["nothing-here"]), 4, SHORT)
        .await
        .unwrap();
    assert!(got.is_empty());
}

/// Contract: `priority_zero_first_then_fifo`.
pub async fn priority_zero_first_then_fifo(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let mut expected = Vec::new();
    let mut batch = Vec::new();
    for p in [9u8, 0, 5, 0, 9] {
        let (o, id) = out("celery", p, None);
        expected.push((p, id));
        batch.push(o);
    }
    f.broker.publish_batch(batch).await.unwrap();
    expected.sort_by_key(|(p, _)| *p); // stable: FIFO within a priority
    let mut got = Vec::new();
    while got.len() < expected.len() {
        for d in f.broker.claim("w", &q(&["celery"]), 1, LONG).await.unwrap() {
            got.push(id_of(&d));
        }
    }
    let want: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(got, want);
}

/// Contract: `depth_by_priority_counts_each_level`. Priorities on kombu's
/// Redis steps (0, 3, 6, 9), which every broker here reports exactly.
pub async fn depth_by_priority_counts_each_level(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    assert!(
        f.broker
            .queue_len_by_priority("prio")
            .await
            .unwrap()
            .is_empty()
    );
    let later = Some(unix_now() + 300.0);
    for (p, eta) in [
        (9, None),
        (0, None),
        (3, None),
        (0, None),
        (6, later),
        (9, None),
    ] {
        f.broker.publish(out("prio", p, eta).0).await.unwrap();
    }
    f.broker.publish(out("other", 3, None).0).await.unwrap();
    let want = vec![(0, 2), (3, 1), (6, 1), (9, 2)];
    assert_eq!(f.other.queue_len_by_priority("prio").await.unwrap(), want);
    assert_eq!(f.broker.queue_len("prio").await.unwrap(), 6);
    let got = f.other.claim("w", &q(&["prio"]), 2, LONG).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        f.broker.queue_len_by_priority("prio").await.unwrap(),
        vec![(3, 1), (6, 1), (9, 2)],
        "claimed messages are not waiting"
    );
    assert_eq!(
        f.broker.queue_len_by_priority("other").await.unwrap(),
        vec![(3, 1)]
    );
}

/// Contract: `queues_served_in_given_order_and_max_respected`.
pub async fn queues_served_in_given_order_and_max_respected(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, ida) = out("a", 0, None);
    let (b1, _) = out("b", 0, None);
    let (b2, _) = out("b", 0, None);
    f.broker.publish_batch(vec![b1, b2, a]).await.unwrap();
    let got = f.broker.claim("w", &q(&["a", "b"]), 2, LONG).await.unwrap();
    assert_eq!(got.len(), 2, "max is respected");
    assert_eq!(id_of(&got[0]), ida, "queue a first");
    assert_eq!(got[1].queue, "b");
    let rest = f.broker.claim("w", &q(&["a", "b"]), 5, LONG).await.unwrap();
    assert_eq!(rest.len(), 1);
}

/// Contract: `lapsed_lease_redelivers_and_old_claim_cannot_ack`.
pub async fn lapsed_lease_redelivers_and_old_claim_cannot_ack(make: fn(Duration) -> Fixture) {
    let f = make(Duration::from_millis(300));
    let (o, id) = out("celery", 0, None);
    f.broker.publish(o).await.unwrap();
    let first = f
        .broker
        .claim("dead-worker", &q(&["celery"]), 1, LONG)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // The worker "dies": no ack, no renew. Another consumer gets it back.
    let again = f
        .other
        .claim("w2", &q(&["celery"]), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(id_of(&again[0]), id);
    assert!(again[0].redelivered);
    assert_eq!(again[0].deliveries, 2);
    assert!(matches!(
        f.broker.ack(&first[0]).await,
        Err(BrokerError::NotHeld(_))
    ));
    f.other.ack(&again[0]).await.unwrap();
}

/// Contract: `renewed_lease_is_not_redelivered`.
pub async fn renewed_lease_is_not_redelivered(make: fn(Duration) -> Fixture) {
    let f = make(Duration::from_millis(400));
    let (o, _) = out("celery", 0, None);
    f.broker.publish(o).await.unwrap();
    let held = f
        .broker
        .claim("w1", &q(&["celery"]), 1, LONG)
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.broker.renew(&held).await.unwrap();
        let stolen = f
            .other
            .claim("w2", &q(&["celery"]), 1, Duration::ZERO)
            .await
            .unwrap();
        assert!(stolen.is_empty(), "a renewed lease must not be redelivered");
    }
    f.broker.ack(&held[0]).await.unwrap();
}

/// Contract: `requeue_with_delay`.
pub async fn requeue_with_delay(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (o, id) = out("celery", 0, None);
    f.broker.publish(o).await.unwrap();
    let d = f.broker.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    f.broker
        .requeue(&d[0], Some(unix_now() + 0.4))
        .await
        .unwrap();
    assert!(
        f.other
            .claim("w", &q(&["celery"]), 1, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    let back = f
        .other
        .claim("w", &q(&["celery"]), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(id_of(&back[0]), id);
    assert!(back[0].redelivered);
}

/// Contract: `eta_messages_wait_in_the_broker`.
pub async fn eta_messages_wait_in_the_broker(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (o, id) = out("celery", 0, Some(unix_now() + 0.5));
    f.broker.publish(o).await.unwrap();
    assert_eq!(
        f.broker.queue_len("celery").await.unwrap(),
        1,
        "a delayed message is counted"
    );
    assert!(
        f.other
            .claim("w", &q(&["celery"]), 1, Duration::from_millis(150))
            .await
            .unwrap()
            .is_empty()
    );
    let got = f
        .other
        .claim("w", &q(&["celery"]), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(id_of(&got[0]), id);
    assert!(!got[0].redelivered);
}

/// Contract: `dead_letters_keep_payload_and_reason`.
pub async fn dead_letters_keep_payload_and_reason(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (o, id) = out("celery", 0, None);
    let payload = o.payload.clone();
    f.broker.publish(o).await.unwrap();
    let d = f.broker.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    f.broker.dead_letter(&d[0], "poison: test").await.unwrap();
    assert!(matches!(
        f.broker.ack(&d[0]).await,
        Err(BrokerError::NotHeld(_))
    ));
    let dl = f.other.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].reason, "poison: test");
    assert_eq!(dl[0].queue, "celery");
    assert_eq!(dl[0].payload, payload);
    assert!(!f.other.requeue_dead_letter("no-such-id").await.unwrap());
    assert!(f.other.requeue_dead_letter(&dl[0].id).await.unwrap());
    assert!(f.broker.dead_letters(10).await.unwrap().is_empty());
    let back = f.broker.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    assert_eq!(id_of(&back[0]), id);
}

/// Contract: `concurrent_claims_take_each_message_once`.
pub async fn concurrent_claims_take_each_message_once(make: fn(Duration) -> Fixture) {
    let f = make(Duration::from_secs(30));
    let mut ids = HashSet::new();
    let mut batch = Vec::new();
    for _ in 0..400 {
        let (o, id) = out("celery", 0, None);
        ids.insert(id);
        batch.push(o);
    }
    f.broker.publish_batch(batch).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let b = if i % 2 == 0 {
            f.broker.clone()
        } else {
            f.other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = b
                    .claim(&format!("c{i}"), &q(&["celery"]), 7, SHORT)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                for d in got {
                    mine.push(id_of(&d));
                    b.ack(&d).await.unwrap();
                }
            }
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    assert_eq!(seen.len(), 400, "every message claimed exactly once");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
}

/// Contract: `heartbeats_list_nodes`.
pub async fn heartbeats_list_nodes(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let node = |name: &str, age: f64| NodeInfo {
        name: name.into(),
        concurrency: 3,
        pid: 42,
        last_seen: unix_now() - age,
    };
    f.broker.heartbeat(&node("w1@h", 0.0)).await.unwrap();
    f.broker.heartbeat(&node("old@h", 60.0)).await.unwrap();
    let nodes = f.other.nodes(Duration::from_secs(6)).await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["w1@h"]
    );
    assert_eq!(nodes[0].concurrency, 3);
    f.broker.node_gone("w1@h").await.unwrap();
    assert!(
        f.other
            .nodes(Duration::from_secs(6))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Contract: `results_store_get_watch_forget`.
pub async fn results_store_get_watch_forget(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    assert!(
        f.backend.get("nope").await.unwrap().is_none(),
        "PENDING is never stored"
    );
    let watch = f.other_backend.watch("t1").await.unwrap();
    // A non-final state does not resolve the watch.
    f.backend
        .store(&ResultMeta::new("t1", State::Retry, json!(null)))
        .await
        .unwrap();
    f.backend
        .store(&ResultMeta::success("t1", json!({"v": [1, 2]})))
        .await
        .unwrap();
    let meta = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result, json!({"v": [1, 2]}));
    // A watch started after the result was stored resolves at once.
    let late = f.other_backend.watch("t1").await.unwrap();
    assert_eq!(
        tokio::time::timeout(LONG, late)
            .await
            .unwrap()
            .unwrap()
            .status,
        State::Success
    );
    f.backend.forget("t1").await.unwrap();
    assert!(f.other_backend.get("t1").await.unwrap().is_none());
}

/// Contract: `success_is_never_overwritten`.
pub async fn success_is_never_overwritten(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    f.backend
        .store(&ResultMeta::success("t2", json!(5)))
        .await
        .unwrap();
    f.other_backend
        .store(&ResultMeta::failure(
            "t2",
            &TaskError::new("late duplicate"),
        ))
        .await
        .unwrap();
    let meta = f.backend.get("t2").await.unwrap().unwrap();
    assert_eq!((meta.status, meta.result), (State::Success, json!(5)));
    // FAILURE can be overwritten (e.g. by a retry that succeeds).
    f.backend
        .store(&ResultMeta::failure("t3", &TaskError::new("first")))
        .await
        .unwrap();
    f.backend
        .store(&ResultMeta::success("t3", json!(1)))
        .await
        .unwrap();
    assert_eq!(
        f.other_backend.get("t3").await.unwrap().unwrap().status,
        State::Success
    );
}

/// Contract: `revoked_ids_are_flagged_at_claim_until_they_expire`.
pub async fn revoked_ids_are_flagged_at_claim_until_they_expire(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, ida) = out("celery", 0, None);
    let (b, _) = out("celery", 0, None);
    let (c, idc) = out("celery", 0, None);
    f.other
        .revoke(std::slice::from_ref(&ida), Duration::from_secs(60))
        .await
        .unwrap();
    f.other
        .revoke(std::slice::from_ref(&idc), Duration::from_millis(1100))
        .await
        .unwrap();
    f.broker.publish_batch(vec![a, b]).await.unwrap();
    // A claim returns what has arrived, up to its maximum (a consumer's
    // deliveries on AMQP arrive one by one): claim until both are here.
    let mut got = Vec::new();
    for _ in 0..20 {
        let more = 2 - got.len();
        got.extend(
            f.broker
                .claim("w", &q(&["celery"]), more, LONG)
                .await
                .unwrap(),
        );
        if got.len() == 2 {
            break;
        }
    }
    assert_eq!(got.len(), 2);
    for d in &got {
        assert_eq!(d.revoked, id_of(d) == ida, "only the revoked id is flagged");
        f.broker.ack(d).await.unwrap();
    }
    // A revoke expires with its TTL.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    f.broker.publish(c).await.unwrap();
    let got = f.broker.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    assert_eq!(id_of(&got[0]), idc);
    assert!(!got[0].revoked, "the revoke of {idc} expired");
}

/// Contract: `terminations_are_recorded_with_their_revoke`.
pub async fn terminations_are_recorded_with_their_revoke(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, ida) = out("celery", 0, None);
    let plain = format!("plain-{}", unix_now());
    f.other
        .revoke_terminate(std::slice::from_ref(&ida), Duration::from_secs(60))
        .await
        .unwrap();
    f.other
        .revoke(std::slice::from_ref(&plain), Duration::from_secs(60))
        .await
        .unwrap();
    let asked = vec![ida.clone(), plain.clone(), "never-revoked".to_string()];
    assert_eq!(
        f.broker.terminations(&asked).await.unwrap(),
        vec![ida.clone()]
    );
    // A terminate is also a revoke: a queued copy is flagged at claim.
    f.broker.publish(a).await.unwrap();
    let got = f.broker.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    assert!(got[0].revoked);
    f.broker.ack(&got[0]).await.unwrap();
}

/// Contract: `batch_acks_report_each_delivery`.
pub async fn batch_acks_report_each_delivery(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, _) = out("celery", 0, None);
    let (b, _) = out("celery", 0, None);
    let (c, _) = out("celery", 0, None);
    f.broker.publish_batch(vec![a, b, c]).await.unwrap();
    let got = f.broker.claim("w", &q(&["celery"]), 3, LONG).await.unwrap();
    assert_eq!(got.len(), 3);
    // One acked on its own first: no longer held when the batch comes.
    f.other.ack(&got[1]).await.unwrap();
    let mut forged = got[0].clone();
    forged.tag.push_str("-not-a-claim");
    let batch = vec![got[0].clone(), got[1].clone(), got[2].clone(), forged];
    assert_eq!(
        f.other.ack_many(&batch).await.unwrap(),
        vec![true, false, true, false],
        "each delivery's own answer, in order"
    );
    assert_eq!(f.broker.queue_len("celery").await.unwrap(), 0);
    assert!(
        f.broker
            .claim("w", &q(&["celery"]), 3, SHORT)
            .await
            .unwrap()
            .is_empty(),
        "acked messages are gone"
    );
    assert_eq!(f.broker.ack_many(&[]).await.unwrap(), Vec::<bool>::new());
}

/// Contract: `batch_stores_keep_success_and_wake_watchers`.
pub async fn batch_stores_keep_success_and_wake_watchers(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let tag = unix_now().to_string();
    let (a, b, c) = (format!("a-{tag}"), format!("b-{tag}"), format!("c-{tag}"));
    let watch_a = f.other_backend.watch(&a).await.unwrap();
    f.backend
        .store(&ResultMeta::success(&c, json!("first")))
        .await
        .unwrap();
    f.backend
        .store_many(&[
            ResultMeta::success(&a, json!(1)),
            // A late duplicate in the same batch: SUCCESS stays.
            ResultMeta::failure(&a, &TaskError::new("late duplicate")),
            ResultMeta::failure(&b, &TaskError::new("first try")),
            // FAILURE can be replaced, within a batch too.
            ResultMeta::success(&b, json!(2)),
            // A SUCCESS stored before the batch stays.
            ResultMeta::success(&c, json!("second")),
        ])
        .await
        .unwrap();
    let got = tokio::time::timeout(LONG, watch_a).await.unwrap().unwrap();
    assert_eq!((got.status, got.result), (State::Success, json!(1)));
    for (id, want) in [(&a, json!(1)), (&b, json!(2)), (&c, json!("first"))] {
        let meta = f.other_backend.get(id).await.unwrap().unwrap();
        assert_eq!((meta.status, meta.result), (State::Success, want), "{id}");
    }
    f.backend.store_many(&[]).await.unwrap();
}

/// Contract: `revokes_are_listed_for_messages_already_claimed`.
pub async fn revokes_are_listed_for_messages_already_claimed(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, ida) = out("celery", 0, None);
    let (b, idb) = out("celery", 0, None);
    f.broker.publish_batch(vec![a, b]).await.unwrap();
    let got = f.broker.claim("w", &q(&["celery"]), 2, LONG).await.unwrap();
    assert!(got.iter().all(|d| !d.revoked));
    // The revoke comes after the claim (a message reserved ahead of a slot).
    f.other
        .revoke(std::slice::from_ref(&ida), Duration::from_secs(60))
        .await
        .unwrap();
    let asked = vec![ida.clone(), idb.clone()];
    assert_eq!(f.broker.revoked(&asked).await.unwrap(), vec![ida.clone()]);
    assert!(f.broker.revoked(&[]).await.unwrap().is_empty());
    for d in &got {
        f.broker.ack(d).await.unwrap();
    }
}

/// Contract: `idempotency_keys_are_claimed_once_until_they_expire`.
pub async fn idempotency_keys_are_claimed_once_until_they_expire(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let key = format!("k-{}", unix_now());
    assert_eq!(
        f.backend
            .claim_key(&key, "t1", Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        f.other_backend
            .claim_key(&key, "t2", Duration::from_secs(60))
            .await
            .unwrap()
            .as_deref(),
        Some("t1"),
        "a second claimant learns who holds the key"
    );
    assert_eq!(
        f.backend
            .claim_key(&key, "t1", Duration::from_secs(1))
            .await
            .unwrap()
            .as_deref(),
        Some("t1")
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        f.other_backend
            .claim_key(&key, "t3", Duration::from_secs(60))
            .await
            .unwrap(),
        None,
        "an expired key can be claimed again"
    );
}

/// Contract: `rate_limit_buckets_are_shared`.
pub async fn rate_limit_buckets_are_shared(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let key = format!("rate-{}", unix_now());
    assert_eq!(
        f.broker.rate_wait(&key, 0.5).await.unwrap(),
        0.0,
        "the first start is free"
    );
    let wait = f.other.rate_wait(&key, 0.5).await.unwrap();
    assert!(
        wait > 0.3 && wait <= 0.5,
        "another handle must wait for the interval: {wait}"
    );
    tokio::time::sleep(Duration::from_secs_f64(wait + 0.01)).await;
    assert_eq!(f.other.rate_wait(&key, 0.5).await.unwrap(), 0.0);
    assert!(f.broker.rate_wait(&key, 0.5).await.unwrap() > 0.0);
}

/// Runs every contract function against fixtures made by `$make`, one
/// `#[tokio::test]` each, in a module called `$module`.
#[macro_export]
macro_rules! broker_contract {
    ($module:ident, $make:path) => {
        mod $module {
            $crate::broker_contract!(@tests $make;
                publish_claim_ack,
                empty_claim_times_out_empty,
                priority_zero_first_then_fifo,
                depth_by_priority_counts_each_level,
                queues_served_in_given_order_and_max_respected,
                lapsed_lease_redelivers_and_old_claim_cannot_ack,
                renewed_lease_is_not_redelivered,
                requeue_with_delay,
                eta_messages_wait_in_the_broker,
                dead_letters_keep_payload_and_reason,
                concurrent_claims_take_each_message_once,
                heartbeats_list_nodes,
                results_store_get_watch_forget,
                success_is_never_overwritten,
                revoked_ids_are_flagged_at_claim_until_they_expire,
                terminations_are_recorded_with_their_revoke,
                batch_acks_report_each_delivery,
                batch_stores_keep_success_and_wake_watchers,
                revokes_are_listed_for_messages_already_claimed,
                idempotency_keys_are_claimed_once_until_they_expire,
                rate_limit_buckets_are_shared,
                control_calls_reach_every_listener_and_collect_their_replies,
                control_casts_arrive_and_stray_replies_are_dropped,
                a_broadcast_revoke_is_recorded,
                purge_deletes_waiting_messages_and_keeps_held_ones,
                delayed_messages_are_listed_by_queue,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name($make).await
            }
        )*
    };
}
