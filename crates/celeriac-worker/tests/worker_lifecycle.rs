//! The worker's lifecycle seen from outside: each gate of `admit`, each
//! disposition of `decide`, and what `settle` does with it, observed
//! through an `Observer`, the stored results, the dead-letter store and
//! the worker's counters, on the in-process broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_core::time::{iso_from_unix, unix_now};
use celeriac_core::{
    Call, Delivery, Message, Outgoing, Registry, ResultBackend, ResultMeta, State, TaskError,
    TaskOptions,
};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::{Observer, RevokedBy, TaskEvent, Worker};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Every transition, by task id (or by queue for a message that could not
/// be decoded), in the order heard.
#[derive(Debug, Default)]
struct Journal(Mutex<HashMap<String, Vec<String>>>);

impl Journal {
    fn note(&self, key: &str, what: impl Into<String>) {
        self.0
            .lock()
            .entry(key.to_string())
            .or_default()
            .push(what.into());
    }

    fn of(&self, key: &str) -> Vec<String> {
        self.0.lock().get(key).cloned().unwrap_or_default()
    }
}

impl Observer for Journal {
    fn received(&self, t: &TaskEvent<'_>) {
        self.note(t.message.id(), "received");
    }
    fn started(&self, t: &TaskEvent<'_>) {
        self.note(t.message.id(), "started");
    }
    fn succeeded(&self, t: &TaskEvent<'_>, result: &Value, _: Duration) {
        self.note(t.message.id(), format!("succeeded {result}"));
    }
    fn failed(&self, t: &TaskEvent<'_>, error: &TaskError, _: Option<Duration>) {
        self.note(t.message.id(), format!("failed {}", error.exc_type()));
    }
    fn retried(&self, t: &TaskEvent<'_>, _: &TaskError, countdown: f64) {
        self.note(t.message.id(), format!("retried {countdown}"));
    }
    fn revoked(&self, t: &TaskEvent<'_>, by: RevokedBy) {
        self.note(t.message.id(), format!("revoked {by:?}"));
    }
    fn rejected(&self, d: &Delivery, task: Option<&Message>, _reason: &str) {
        let key = task.map_or(d.queue.as_str(), Message::id);
        self.note(key, "rejected");
    }
    fn requeued(&self, d: &Delivery, not_before: Option<f64>) {
        self.note(&d.queue, format!("requeued {}", not_before.is_some()));
    }
}

struct Fixture {
    broker: Arc<MemoryBroker>,
    backend: Arc<MemoryBackend>,
    journal: Arc<Journal>,
    worker: Worker,
    running: tokio::task::JoinHandle<()>,
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("t.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })
    .unwrap();
    r.register_fn("t.boom", |_, _| Err(TaskError::new("boom")))
        .unwrap();
    r.register_fn_with(
        "t.flaky",
        TaskOptions::new().max_retries(Some(3)),
        |ctx, _| {
            if ctx.retries() == 0 {
                Err(ctx.retry(Duration::from_millis(10)))
            } else {
                Ok(json!(ctx.retries()))
            }
        },
    )
    .unwrap();
    r
}

fn start() -> Fixture {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let journal = Arc::new(Journal::default());
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry()))
        .concurrency(2)
        .nodename("lifecycle@test")
        .observer(journal.clone())
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    Fixture {
        broker,
        backend,
        journal,
        worker,
        running,
    }
}

impl Fixture {
    async fn send(&self, msg: &Message) -> celeriac_core::ResultWatch {
        let watch = self.backend.watch(msg.id()).await.unwrap();
        self.broker
            .publish(Outgoing::from_message(msg).unwrap())
            .await
            .unwrap();
        watch
    }

    async fn finish(self) -> celeriac_worker::WorkerStats {
        self.worker.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.running)
            .await
            .expect("the worker stops")
            .unwrap();
        self.worker.stats()
    }
}

async fn ready(watch: celeriac_core::ResultWatch) -> ResultMeta {
    tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .expect("a result within 20 s")
        .unwrap()
}

fn call(name: &str) -> Call<Value> {
    Call::<Value>::new(name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_failure_and_retry_each_report_their_transitions_and_store_one_result() {
    let f = start();
    let ok = call("t.add").arg(2).arg(3).to_message().unwrap();
    let bad = call("t.boom").to_message().unwrap();
    let flaky = call("t.flaky").to_message().unwrap();
    let (w_ok, w_bad, w_flaky) = (f.send(&ok).await, f.send(&bad).await, f.send(&flaky).await);

    let meta = ready(w_ok).await;
    assert_eq!(
        (meta.status, meta.result.clone()),
        (State::Success, json!(5))
    );
    assert_eq!(meta.worker.as_deref(), Some("lifecycle@test"));
    assert_eq!(meta.queue.as_deref(), Some("celery"));
    assert_eq!(ready(w_bad).await.status, State::Failure);
    let meta = ready(w_flaky).await;
    assert_eq!(
        (meta.status, meta.result.clone()),
        (State::Success, json!(1))
    );

    let journal = f.journal.clone();
    let stats = f.finish().await;
    assert_eq!(journal.of(ok.id()), ["received", "started", "succeeded 5"]);
    assert_eq!(
        journal.of(bad.id()),
        ["received", "started", "failed TaskError"]
    );
    assert_eq!(
        journal.of(flaky.id()),
        [
            "received",
            "started",
            "retried 0.01",
            "received",
            "started",
            "succeeded 1"
        ],
        "a retry is the same task id, received again"
    );
    assert_eq!(
        (stats.succeeded, stats.failed, stats.retried, stats.active),
        (2, 1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_skip_what_must_not_run_and_say_why() {
    let f = start();
    // Unknown task: FAILURE NotRegistered, then the dead-letter store.
    let unknown = call("t.nope").to_message().unwrap();
    // Expired before it was claimed: REVOKED.
    let mut expired = call("t.add").arg(1).arg(1).to_message().unwrap();
    expired.headers.expires = Some(iso_from_unix(unix_now() - 60.0));
    // Revoked before it was claimed: REVOKED.
    let revoked = call("t.add").arg(1).arg(2).to_message().unwrap();
    f.broker
        .revoke(&[revoked.id().to_string()], Duration::from_secs(60))
        .await
        .unwrap();
    let watches = [
        f.send(&unknown).await,
        f.send(&expired).await,
        f.send(&revoked).await,
    ];
    // Not a message at all: dead-lettered with the decoder's reason.
    f.broker
        .publish(Outgoing {
            queue: "celery".into(),
            priority: 0,
            eta: None,
            tag: "garbage-tag".into(),
            task_id: String::new(),
            payload: b"{not json".to_vec(),
        })
        .await
        .unwrap();
    let [w_unknown, w_expired, w_revoked] = watches;
    let meta = ready(w_unknown).await;
    assert_eq!(meta.status, State::Failure);
    assert_eq!(meta.result["exc_type"], json!("NotRegistered"));
    let meta = ready(w_expired).await;
    assert_eq!(meta.status, State::Revoked);
    assert_eq!(meta.result["exc_message"], json!(["expired"]));
    let meta = ready(w_revoked).await;
    assert_eq!(meta.status, State::Revoked);
    assert_eq!(meta.result["exc_message"], json!(["revoked"]));

    // Both dead letters, with their reasons.
    let mut letters = Vec::new();
    for _ in 0..400 {
        letters = f.broker.dead_letters(10).await.unwrap();
        if letters.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut reasons: Vec<String> = letters.iter().map(|l| l.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("malformed"), "{reasons:?}");
    assert_eq!(reasons[1], "unknown task \"t.nope\"");

    let journal = f.journal.clone();
    let stats = f.finish().await;
    assert_eq!(
        journal.of(unknown.id()),
        ["received", "failed NotRegistered", "rejected"]
    );
    assert_eq!(journal.of(expired.id()), ["received", "revoked Expiry"]);
    assert_eq!(journal.of(revoked.id()), ["received", "revoked Revoke"]);
    assert_eq!(journal.of("celery"), ["rejected"], "the undecodable one");
    assert_eq!(
        (
            stats.succeeded,
            stats.failed,
            stats.dead_lettered,
            stats.expired,
            stats.revoked
        ),
        (0, 1, 2, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_eta_goes_back_to_the_broker_and_runs_when_due() {
    let f = start();
    let mut later = call("t.add").arg(20).arg(22).to_message().unwrap();
    // As a foreign producer would send it: on the queue, eta in the header.
    later.headers.eta = Some(iso_from_unix(unix_now() + 0.5));
    let mut out = Outgoing::from_message(&later).unwrap();
    out.eta = None;
    let watch = f.backend.watch(later.id()).await.unwrap();
    f.broker.publish(out).await.unwrap();
    let meta = ready(watch).await;
    assert_eq!(
        (meta.status, meta.result.clone()),
        (State::Success, json!(42))
    );
    let journal = f.journal.clone();
    f.finish().await;
    assert_eq!(journal.of("celery"), ["requeued true"]);
    assert_eq!(
        journal.of(later.id()),
        ["received", "received", "started", "succeeded 42"],
        "received, deferred, received again when due"
    );
}
