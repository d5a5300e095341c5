//! A result backend that refuses writes (a real Redis at its `maxmemory`,
//! which answers every write with OOM): the worker stores the computed
//! result again with back-off and never runs the task again; past its
//! patience it dead-letters the message with the result attached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac::prelude::*;
use celeriac::{Call, MemoryBroker, Outgoing, Registry, State, Worker};
use celeriac_redis::RedisBackend;
use celeriac_testkit::redis_server::RedisServer;

/// Turns writes on the server off (OOM) or on again.
fn refuse_writes(url: &str, refuse: bool) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let limit = if refuse { "1" } else { "0" };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .exec(&mut conn)
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .exec(&mut conn)
        .unwrap();
}

struct Setup {
    _redis: RedisServer,
    url: String,
    broker: Arc<MemoryBroker>,
    backend: Arc<RedisBackend>,
    runs: Arc<AtomicUsize>,
    worker: Worker,
    running: tokio::task::JoinHandle<()>,
}

fn setup(patience: Duration) -> Option<Setup> {
    if !RedisServer::available() {
        return None;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let broker = Arc::new(MemoryBroker::new());
    let backend = RedisBackend::open(&url).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let counter = runs.clone();
    registry
        .register_fn("t.once", move |_, _| {
            Ok(serde_json::json!(
                counter.fetch_add(1, Ordering::SeqCst) + 1
            ))
        })
        .unwrap();
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(2)
        .store_retry_for(patience)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    Some(Setup {
        _redis: redis,
        url,
        broker,
        backend,
        runs,
        worker,
        running,
    })
}

impl Setup {
    async fn send(&self) -> String {
        let msg = Call::<serde_json::Value>::new("t.once")
            .to_message()
            .unwrap();
        self.broker
            .publish(Outgoing::from_message(&msg).unwrap())
            .await
            .unwrap();
        msg.id().to_string()
    }

    async fn until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        let start = Instant::now();
        while !done().await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.worker.shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("the worker stops")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_result_is_stored_again_and_the_task_never_runs_twice() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    refuse_writes(&s.url, true);
    let id = s.send().await;
    s.until("the task ran", async || s.runs.load(Ordering::SeqCst) == 1)
        .await;
    // Several store attempts fail meanwhile (0.5 s, 1 s, ...).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.backend.get(&id).await.unwrap(),
        None,
        "nothing stored yet"
    );
    refuse_writes(&s.url, false);
    s.until("the result is stored", async || {
        s.backend.get(&id).await.unwrap().is_some()
    })
    .await;
    let meta = s.backend.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (meta.status, meta.result),
        (State::Success, serde_json::json!(1))
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 1, "the task ran once");
    assert!(s.broker.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(s.worker.stats().succeeded, 1);
    s.until("nothing went back to the queue", async || {
        s.broker.queue_len("celery").await.unwrap() == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_patience_the_message_is_dead_lettered_with_the_result() {
    let Some(s) = setup(Duration::from_secs(2)) else {
        return;
    };
    refuse_writes(&s.url, true);
    let id = s.send().await;
    s.until("dead-lettered", async || {
        !s.broker.dead_letters(10).await.unwrap().is_empty()
    })
    .await;
    let letters = s.broker.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let reason = &letters[0].reason;
    assert!(
        reason.contains("could not be stored") && reason.contains(&id),
        "{reason}"
    );
    assert!(
        reason.contains(r#""result":1"#),
        "the result is attached: {reason}"
    );
    // Nothing is recomputed afterwards either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.runs.load(Ordering::SeqCst), 1, "the task ran once");
    assert_eq!(s.broker.queue_len("celery").await.unwrap(), 0);
    refuse_writes(&s.url, false);
    s.stop().await;
}
