//! The broker contract, part two: results, revokes and terminations,
//! batched acks and stores, idempotency keys and rate-limit buckets.

use std::time::Duration;

use celeriac_core::time::unix_now;
use celeriac_core::{ResultMeta, State, TaskError};
use serde_json::json;

use crate::{Fixture, LONG, SHORT, id_of, out, q};

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
