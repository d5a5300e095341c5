//! A worker and a client on RabbitMQ, with results over Celery's `rpc://`
//! backend (each result comes back as a message to the client's own
//! reply queue), so RabbitMQ is the only server.
//! Run: `CELERIAC_BROKER_URL=amqp://guest:guest@127.0.0.1:<port>/<vhost> cargo run -p celeriac-examples --example rabbitmq`,
//! with the URL of a RabbitMQ vhost you own: the example declares queues
//! there, so it has no default and never falls back to a shared server.
//! Options go in the URL: `?queue_type=quorum`, `?max_priority=10`,
//! `?prefetch_count=N`, and for `amqps://`, `?ssl_ca_certs=/path/ca.pem`.
//!
//! While it runs, a Python client on the same vhost gets the same results:
//! `Celery(broker=url, backend='rpc://').send_task('tasks.mul', args=(6, 7)).get()`.

use std::sync::Arc;
use std::time::Duration;

use celeriac::{Call, Outgoing, Registry, Worker, open_backend, open_broker_for, task};

/// A task the worker can run; Python clients call it by this name.
#[task(name = "tasks.mul")]
fn mul(x: i64, y: i64) -> i64 {
    x * y
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("CELERIAC_BROKER_URL")
        .ok()
        .filter(|u| u.starts_with("amqp://") || u.starts_with("amqps://"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "set CELERIAC_BROKER_URL to the amqp:// URL of a RabbitMQ vhost you own; \
                 this example declares queues there, so it does not guess one"
            )
        })?;

    // The worker: `rpc://` rides on the AMQP broker opened just before it.
    let broker = open_broker_for(&url, "rpc://")?;
    let backend = open_backend("rpc://")?;
    let worker = Worker::builder(broker, backend, Arc::new(Registry::linked(false)?))
        .concurrency(2)
        // RabbitMQ's basic.qos becomes 2 × 4 = 8 per consumer.
        .prefetch_multiplier(4)
        .nodename("rabbit-example@localhost")
        .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    // The client: its own connection and its own reply queue.
    let broker = open_broker_for(&url, "rpc://")?;
    let backend = open_backend("rpc://")?;
    for call in [mul::call(6, 7), Call::new("celeriac.add").arg(2).arg(3)] {
        let msg = call.to_message()?;
        let watch = backend.watch(msg.id()).await?; // the reply queue exists before the task
        broker.publish(Outgoing::from_message(&msg)?).await?;
        let meta = tokio::time::timeout(Duration::from_secs(30), watch).await??;
        println!(
            "{}{} = {} (on {})",
            msg.task(),
            serde_json::json!(msg.args),
            meta.result,
            meta.worker.unwrap_or_default()
        );
    }

    worker.shutdown();
    running.await?;
    Ok(())
}
