//! A worker on the durable file broker and a client that sends it tasks,
//! as two terminals running `celeriac worker` and `celeriac call` would.
//! Run: `cargo run -p celeriac-examples --example worker_and_client`.

use std::sync::Arc;
use std::time::Duration;

use celeriac::{Call, Outgoing, Registry, Worker, open_backend, open_broker, task};

/// A task the worker can run; Python clients call it by this name.
#[task(name = "tasks.mul")]
fn mul(x: i64, y: i64) -> i64 {
    x * y
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("celeriac-example-{}", std::process::id()));
    // An explicit sqlite:// path must be in a directory that exists (a typo
    // in a path is an error, not a new empty broker).
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}/broker.db", dir.display());

    // The worker side: every linked #[task] (and the built-ins).
    let worker = Worker::builder(
        open_broker(&url)?,
        open_backend(&url)?,
        Arc::new(Registry::linked(false)?),
    )
    .concurrency(2)
    // Reserve up to 4 messages per slot (Celery's default); 1 for long tasks.
    .prefetch_multiplier(4)
    .nodename("example@localhost")
    .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    // The client side: its own handles on the same file.
    let broker = open_broker(&url)?;
    let backend = open_backend(&url)?;
    for call in [mul::call(6, 7), Call::new("celeriac.add").arg(2).arg(3)] {
        let msg = call.to_message()?;
        let watch = backend.watch(msg.id()).await?; // subscribe before sending
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
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
