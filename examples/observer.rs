//! Watching a worker's task lifecycle with an `Observer`: every task's
//! transitions (received, started, succeeded, failed, retried, revoked,
//! rejected, requeued) reach it without touching the worker. Events,
//! metrics and dashboards attach this way.
//! Run: `cargo run -p celeriac-examples --example observer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use celeriac::prelude::*;
use celeriac::{
    Call, MemoryBackend, MemoryBroker, Observer, Outgoing, Registry, TaskError, TaskEvent, Worker,
};
use serde_json::Value;

/// Counts transitions and prints each task's end.
#[derive(Debug, Default)]
struct Tally {
    received: AtomicUsize,
    started: AtomicUsize,
    succeeded: AtomicUsize,
    failed: AtomicUsize,
    rejected: AtomicUsize,
}

impl Observer for Tally {
    fn received(&self, _task: &TaskEvent<'_>) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    fn started(&self, _task: &TaskEvent<'_>) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }
    fn succeeded(&self, task: &TaskEvent<'_>, result: &Value, runtime: Duration) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        println!(
            "{}[{}] succeeded in {runtime:?}: {result}",
            task.message.task(),
            task.message.id()
        );
    }
    fn failed(&self, task: &TaskEvent<'_>, error: &TaskError, _runtime: Option<Duration>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        println!(
            "{}[{}] failed: {error}",
            task.message.task(),
            task.message.id()
        );
    }
    fn rejected(&self, _d: &celeriac::Delivery, _task: Option<&celeriac::Message>, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        println!("dead-lettered: {reason}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut registry = Registry::new();
    registry.register_fn("examples.double", |_, args| {
        let n: i64 = args.bind("double", &["n"])?.take(0)?;
        Ok(serde_json::json!(n * 2))
    })?;
    let tally = Arc::new(Tally::default());
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(2)
        .observer(tally.clone())
        .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    let mut watches = Vec::new();
    for call in [
        Call::<Value>::new("examples.double").arg(21),
        Call::<Value>::new("examples.double").arg("not a number"),
        Call::<Value>::new("examples.unknown"),
    ] {
        let msg = call.to_message()?;
        watches.push(backend.watch(msg.id()).await?);
        broker.publish(Outgoing::from_message(&msg)?).await?;
    }
    for w in watches {
        w.await?;
    }
    worker.shutdown();
    running.await?;

    let n = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    println!(
        "received {}, started {}, succeeded {}, failed {}, dead-lettered {}",
        n(&tally.received),
        n(&tally.started),
        n(&tally.succeeded),
        n(&tally.failed),
        n(&tally.rejected)
    );
    assert_eq!(
        (n(&tally.succeeded), n(&tally.failed), n(&tally.rejected)),
        (1, 2, 1)
    );
    Ok(())
}
