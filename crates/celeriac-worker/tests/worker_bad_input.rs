//! Bad input reaching a worker: a message whose `eta` or `expires` is not a
//! time, an integer argument a 64-bit integer cannot hold, a time limit too
//! large for a `Duration`. Each ends as a FAILURE with a typed error and a
//! dead letter that says why (or, for the time limit, simply runs), never
//! as a task run with a guessed value or a crashed worker; and the worker
//! keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_core::{Call, Message, Outgoing, Registry, ResultMeta, State};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::{Worker, WorkerError};
use serde_json::{Value, json};

struct Fixture {
    /// How many times the task ran.
    ran: Arc<AtomicUsize>,
    broker: Arc<MemoryBroker>,
    backend: Arc<MemoryBackend>,
    worker: Worker,
    running: tokio::task::JoinHandle<()>,
}

fn start() -> Fixture {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let mut r = Registry::new();
    r.register_fn("t.add", move |_, args| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut b = args.bind("add", &["x", "y"])?;
        let (x, y): (Value, Value) = (b.take(0)?, b.take(1)?);
        Ok(json!([x, y]))
    })
    .unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(r))
        .concurrency(2)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    Fixture {
        ran,
        broker,
        backend,
        worker,
        running,
    }
}

impl Fixture {
    /// Publishes `payload` (the envelope of `msg`, possibly edited) and
    /// waits for the result of `msg`'s task.
    async fn run(&self, msg: &Message, payload: Vec<u8>) -> ResultMeta {
        let watch = self.backend.watch(msg.id()).await.unwrap();
        let mut out = Outgoing::from_message(msg).unwrap();
        out.payload = payload;
        self.broker.publish(out).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), watch)
            .await
            .expect("a result within 20 s")
            .unwrap()
    }

    /// The reason `id`'s message was dead-lettered (the result is stored
    /// just before the message is moved: wait for it).
    async fn reason_for(&self, id: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let letters = self.broker.dead_letters(100).await.unwrap();
            if let Some(d) = letters
                .iter()
                .find(|d| Message::decode(&d.payload).is_ok_and(|m| m.id() == id))
            {
                return d.reason.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no dead letter for {id} after 20 s: {letters:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.worker.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.running)
            .await
            .expect("the worker stops")
            .unwrap();
    }
}

fn add(x: i64, y: i64) -> Message {
    Call::<Value>::new("t.add")
        .arg(x)
        .arg(y)
        .to_message()
        .unwrap()
}

/// `msg`'s envelope with its body replaced by the JSON text `body`, as a
/// Python client writes it (integers of any size as plain literals).
fn with_body(msg: &Message, body: &str) -> Vec<u8> {
    let mut env: Value = serde_json::from_slice(&msg.encode().unwrap()).unwrap();
    env["body"] = Value::String(body.to_string());
    env["properties"]["body_encoding"] = json!("utf-8");
    serde_json::to_vec(&env).unwrap()
}

fn exc(meta: &ResultMeta) -> (String, String) {
    assert_eq!(meta.status, State::Failure, "{meta:?}");
    (
        meta.result["exc_type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        meta.result["exc_message"].to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_eta_or_expires_fails_the_task_and_is_dead_lettered_with_the_reason() {
    let f = start();
    let mut eta = add(1, 2);
    eta.headers.eta = Some("not-a-date".into());
    let mut expires = add(1, 2);
    expires.headers.expires = Some("yesterday".into());
    for (msg, header, value) in [
        (&eta, "eta", "not-a-date"),
        (&expires, "expires", "yesterday"),
    ] {
        let meta = f.run(msg, msg.encode().unwrap()).await;
        let (exc_type, exc_message) = exc(&meta);
        assert_eq!(exc_type, "ValueError", "{header}");
        assert!(
            exc_message.contains(&format!("header `{header}`")),
            "{exc_message}"
        );
        let reason = f.reason_for(msg.id()).await;
        assert!(
            reason.contains(&format!("header `{header}` is not an ISO-8601 time"))
                && reason.contains(value),
            "{reason}"
        );
    }
    assert_eq!(f.ran.load(Ordering::SeqCst), 0, "neither task ran");
    // The worker goes on serving; a well-formed eta in the past runs.
    let mut fine = add(2, 3);
    fine.headers.eta = Some("2020-01-01T00:00:00+00:00".into());
    let meta = f.run(&fine, fine.encode().unwrap()).await;
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result, json!([2, 3]));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integer_outside_64_bits_fails_with_overflow_error_and_is_never_rounded() {
    let f = start();
    let msg = add(0, 0);
    let big = "1180591620717411303424"; // 2**70
    let meta = f
        .run(&msg, with_body(&msg, &format!("[[{big}, 1], {{}}, {{}}]")))
        .await;
    let (exc_type, exc_message) = exc(&meta);
    assert_eq!(exc_type, "OverflowError");
    assert!(exc_message.contains(big), "{exc_message}");
    assert!(f.reason_for(msg.id()).await.contains(big));
    assert_eq!(
        f.ran.load(Ordering::SeqCst),
        0,
        "never run with a rounded number"
    );

    let negative = add(0, 0);
    let meta = f
        .run(
            &negative,
            with_body(&negative, "[[1], {\"y\": -9223372036854775809}, {}]"),
        )
        .await;
    assert_eq!(exc(&meta).0, "OverflowError");

    // The largest integers that fit arrive exact.
    let edge = add(0, 0);
    let meta = f
        .run(
            &edge,
            with_body(
                &edge,
                "[[18446744073709551615, -9223372036854775808], {}, {}]",
            ),
        )
        .await;
    assert_eq!(meta.status, State::Success, "{meta:?}");
    assert_eq!(meta.result, json!([u64::MAX, i64::MIN]));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_limit_too_large_for_a_duration_runs_the_task_instead_of_crashing_the_worker() {
    let f = start();
    let mut msg = add(4, 5);
    msg.headers.timelimit = (Some(1e30), Some(1e300));
    let meta = f.run(&msg, msg.encode().unwrap()).await;
    assert_eq!(meta.status, State::Success, "{meta:?}");
    let after = add(6, 7);
    assert_eq!(
        f.run(&after, after.encode().unwrap()).await.result,
        json!([6, 7])
    );
    f.stop().await;
}

#[test]
fn an_empty_queue_name_or_a_zero_max_body_is_refused_when_the_worker_is_built() {
    let build = |queues: Vec<&str>, max_body: usize| {
        Worker::builder(
            Arc::new(MemoryBroker::new()),
            Arc::new(MemoryBackend::new()),
            Arc::new(Registry::new()),
        )
        .queues(queues)
        .max_body(max_body)
        .build()
    };
    assert!(matches!(
        build(vec!["celery", ""], 1024),
        Err(WorkerError::EmptyQueueName)
    ));
    assert!(matches!(
        build(vec!["celery"], 0),
        Err(WorkerError::ZeroMaxBody)
    ));
    assert!(build(vec!["celery"], 1).is_ok());
}
