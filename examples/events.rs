//! Celery's monitoring events from a worker: subscribe on the broker, as
//! `celeriac events`, `celery events` or Flower do, and watch a worker run
//! tasks with task events on (`celeriac worker -E`). On Redis the same
//! events reach Python monitors, and Python workers' events reach
//! `celeriac events`. The client sends `task-sent` for what it publishes
//! (Celery's `task_send_sent_event`; `celeriac call --sent-event`).
//! Run: `cargo run -p celeriac-examples --example events`.

use std::sync::Arc;

use celeriac::events;
use celeriac::prelude::*;
use celeriac::{Call, MemoryBackend, MemoryBroker, Outgoing, Registry, TaskError, Worker};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut registry = Registry::new();
    registry.register_fn("demo.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })?;
    registry.register_fn("demo.fail", |_, _| Err(TaskError::new("no luck")))?;

    // A monitor subscribes first: events are not kept for latecomers.
    let mut stream = broker.subscribe_events().await?;
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .nodename("demo@example")
        .concurrency(2)
        .events(true)
        .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    let add = Call::<Value>::new("demo.add").arg(2).arg(3).to_message()?;
    let fail = Call::<Value>::new("demo.fail").to_message()?;
    let done = backend.watch(fail.id()).await?;
    for (clock, m) in [&add, &fail].into_iter().enumerate() {
        broker.publish(Outgoing::from_message(m)?).await?;
        let sent = events::task_sent(m, clock as u64 + 1, celeriac::time::unix_now());
        broker.send_events(&[sent]).await?;
    }
    done.await?;
    worker.shutdown();

    let mut kinds = Vec::new();
    while let Some(msg) = stream.next().await {
        for ev in events::decode(&msg?.body)? {
            let kind = ev["type"].as_str().unwrap_or_default().to_string();
            let detail = ["name", "result", "exception"]
                .iter()
                .find_map(|k| ev.get(*k))
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            println!(
                "{} {kind}{detail}",
                ev["hostname"].as_str().unwrap_or_default()
            );
            kinds.push(kind);
        }
        if kinds.last().map(String::as_str) == Some("worker-offline") {
            break;
        }
    }
    running.await?;
    for want in [
        "task-sent",
        "worker-online",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
    ] {
        anyhow::ensure!(kinds.iter().any(|k| k == want), "no {want} event");
    }
    Ok(())
}
