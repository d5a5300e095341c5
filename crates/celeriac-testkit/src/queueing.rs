//! The broker contract, part one: publishing, claiming in priority and
//! queue order, leases, delays and ETAs, dead letters, concurrent claims
//! and heartbeats.

use std::collections::HashSet;
use std::time::Duration;

use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, NodeInfo};

use crate::{Fixture, LONG, SHORT, id_of, out, q};

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
