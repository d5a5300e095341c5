//! Remote control of a running worker, as `celery inspect` and `celery
//! control` do it: ping it, read its stats and the tasks it runs, grow its
//! pool, change a rate limit, make it consume another queue, purge a
//! queue, and shut it down, all through the broker.
//! Run: `cargo run -p celeriac-examples --example remote_control`.

use std::sync::Arc;
use std::time::Duration;

use celeriac::prelude::*;
use celeriac::{Call, ControlRequest, MemoryBackend, MemoryBroker, Outgoing, Registry, Worker};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut registry = Registry::new();
    registry.register_fn("tasks.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })?;
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(2)
        .nodename("w1@example")
        .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    // Requests are broadcast to every worker; `call` collects the replies,
    // `{node: reply}`, until a second passes without one. A request sent
    // before the worker listens is lost, so wait for a pong first.
    let ask = |req: ControlRequest| {
        let broker = broker.clone();
        async move {
            broker
                .call(req, Duration::from_secs(1), None)
                .await
                .map(|replies| {
                    replies
                        .into_iter()
                        .flatten()
                        .collect::<serde_json::Map<_, _>>()
                })
        }
    };
    while ask(ControlRequest::new("ping")).await?.is_empty() {}
    println!(
        "ping: {}",
        Value::Object(ask(ControlRequest::new("ping")).await?)
    );

    let msg = Call::<i64>::new("tasks.add").arg(2).arg(3).to_message()?;
    let watch = backend.watch(msg.id()).await?;
    broker.publish(Outgoing::from_message(&msg)?).await?;
    println!("2 + 3 = {}", watch.await?.result);

    let stats = ask(ControlRequest::new("stats")).await?;
    let s = &stats["w1@example"];
    println!(
        "stats: total {}, max-concurrency {}, uptime {} s",
        s["total"], s["pool"]["max-concurrency"], s["uptime"]
    );
    let grow = ControlRequest::new("pool_grow").arg("n", 2);
    println!("pool_grow: {}", Value::Object(ask(grow).await?));
    println!("concurrency now {}", worker.concurrency());
    let limit = ControlRequest::new("rate_limit")
        .arg("task_name", "tasks.add")
        .arg("rate_limit", "100/s");
    println!("rate_limit: {}", Value::Object(ask(limit).await?));
    println!(
        "registered: {}",
        Value::Object(ask(ControlRequest::new("registered")).await?)
    );
    let add = ControlRequest::new("add_consumer").arg("queue", "extra");
    println!("add_consumer: {}", Value::Object(ask(add).await?));
    println!("queues now {:?}", worker.queues());

    // Purge: drop what waits on a queue nobody consumes.
    let mut parked = Call::<i64>::new("tasks.add").arg(1).arg(1).to_message()?;
    parked.set_queue("parked");
    broker.publish(Outgoing::from_message(&parked)?).await?;
    println!(
        "purged {} message(s) from parked",
        broker.purge("parked").await?
    );

    // A shutdown gets no reply; the worker stops warm.
    broker.broadcast(&ControlRequest::new("shutdown")).await?;
    running.await?;
    println!("worker stopped");
    Ok(())
}
