//! Idempotency: effects applied once, even when a message is delivered
//! twice or a client submits the same work twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celeriac::prelude::*;
use celeriac::{
    Call, MemoryBackend, MemoryBroker, Outgoing, Registry, ResultBackend, ResultMeta, Server,
    Worker, task,
};

static CHARGES: AtomicU32 = AtomicU32::new(0);
static EFFECTS: AtomicU32 = AtomicU32::new(0);

/// A side effect that must happen once: charging a card.
#[task(name = "idem.charge")]
fn charge(amount: u32) -> u32 {
    CHARGES.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    amount
}

#[task(name = "idem.effect")]
fn effect() -> u32 {
    EFFECTS.fetch_add(1, Ordering::SeqCst) + 1
}

#[test]
fn two_submissions_with_one_key_apply_the_effect_once() {
    let s = Server::builder().workers(2).build().unwrap();
    let first = s.submit(charge::call(42).idempotency_key("order-7"));
    let second = s.submit(charge::call(42).idempotency_key("order-7"));
    let other = s.submit(charge::call(5).idempotency_key("order-8"));
    let wait = Duration::from_secs(30);
    assert_eq!(first.wait_timeout(wait).unwrap(), 42);
    assert_eq!(
        second.wait_timeout(wait).unwrap(),
        42,
        "the duplicate gets the first one's result"
    );
    assert_eq!(other.wait_timeout(wait).unwrap(), 5);
    assert_eq!(
        CHARGES.load(Ordering::SeqCst),
        2,
        "order-7 charged once, order-8 once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_the_effect_ran_is_skipped() {
    let broker = Arc::new(MemoryBroker::with_lease("idem", Duration::from_millis(300)));
    let backend = Arc::new(MemoryBackend::new());
    let msg = Call::<u32>::new("idem.effect").to_message().unwrap();
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();

    // A worker claims it, applies the effect, stores the result, and dies
    // before the ack.
    let held = broker
        .claim(
            "dies-before-ack",
            &["celery".into()],
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let applied = effect();
    backend
        .store(&ResultMeta::success(msg.id(), applied.into()))
        .await
        .unwrap();

    // The lease lapses; a live worker gets the message again.
    let worker = Worker::builder(
        broker.clone(),
        backend.clone(),
        Arc::new(Registry::linked(false).unwrap()),
    )
    .concurrency(1)
    .build()
    .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.stats().duplicates == 0 {
        assert!(Instant::now() < deadline, "the redelivery was never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        EFFECTS.load(Ordering::SeqCst),
        1,
        "the effect was applied once"
    );
    assert_eq!(backend.get(msg.id()).await.unwrap().unwrap().result, 1);
    assert_eq!(broker.queue_len("celery").await.unwrap(), 0);
    assert!(
        broker
            .claim("w", &["celery".into()], 1, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "the redelivered message was acked"
    );
    worker.shutdown();
    running.await.unwrap();
}
