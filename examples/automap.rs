//! Automatic batching of a map: 200,000 tiny calls as Celery
//! `celery.starmap` chunks whose size adapts to the measured per-item time
//! and round trip (10-50 ms of work per chunk), on the job server and from
//! a queue client. With `REDIS_URL` set (and `celeriac worker --broker
//! $REDIS_URL` running somewhere), the job server maps across that cluster.
//! Run: `cargo run -p celeriac-examples --example automap`.

use std::sync::Arc;

use celeriac::automap::ChunkSize;
use celeriac::{Call, MemoryBackend, MemoryBroker, Registry, Server, Worker, task};
use futures::StreamExt;

/// A tiny task: most of a map's cost is getting items to it.
#[task(name = "examples.automap.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = 200_000i64;

    // 1. The job server: local workers, or the cluster behind REDIS_URL.
    let server = match std::env::var("REDIS_URL") {
        Ok(url) => Server::builder().broker(&url).workers(0).build()?,
        Err(_) => Server::new()?,
    };
    let server_side = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut results = server.map(add::call(0, 0), (0..n).map(|i| (i, i)));
        let total: i64 = results.by_ref().map(|r| r.unwrap()).sum();
        let s = results.stats();
        println!(
            "Server::map: {n} items in {:?}, sum {total}; {} chunks, first sizes {:?}, largest {}, {:.2} µs an item",
            started.elapsed(),
            s.chunks,
            &s.sizes[..s.sizes.len().min(8)],
            s.max_size(),
            s.per_item.unwrap_or(0.0) * 1e6,
        );
        // Fixed chunks, as Celery's `chunks(it, 1000)`.
        let fixed = server.map_with(
            add::call(0, 0),
            (0..10i64).map(|i| (i, 1)),
            ChunkSize::Fixed(4),
        );
        println!("fixed chunks of 4: {:?}", fixed.wait().unwrap());
    });
    server_side.await?;

    // 2. The queue client's side: any broker and result backend with a
    //    worker on them (here both in process).
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let worker = Worker::builder(
        broker.clone(),
        backend.clone(),
        Arc::new(Registry::linked(false)?),
    )
    .concurrency(2)
    .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let mut results = Call::<i64>::new("examples.automap.add")
        .automap((0..n).map(|i| (i, 1)))
        .send(broker, backend)
        .await;
    let mut i = 0;
    while let Some(r) = results.next().await {
        assert_eq!(r?, i + 1, "results come in input order");
        i += 1;
    }
    println!(
        "Call::automap: {i} results in order; chunk sizes {:?}",
        &results.stats().sizes
    );
    worker.shutdown();
    running.await?;
    Ok(())
}
