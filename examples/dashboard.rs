//! The web dashboard over a worker: what `celeriac dashboard --broker URL`
//! serves, embedded in a program. A worker runs a few tasks on the
//! in-process broker, the dashboard follows its events, and the example
//! reads `/api/tasks` back with a bearer token, then stops. Run with
//! `-- --serve` to keep it up and open the printed address in a browser
//! (Ctrl-C stops it).
//! Run: `cargo run -p celeriac-examples --example dashboard`.

use std::sync::Arc;
use std::time::Duration;

use celeriac::{Broker, Call, MemoryBackend, MemoryBroker, Outgoing, Registry, TaskError, Worker};
use celeriac_dashboard::Dashboard;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "example-token";

/// `GET path` with the token, over plain HTTP/1.1; the body as JSON.
async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Value> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_default();
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    Ok(serde_json::from_str(body)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let serve = std::env::args().any(|a| a == "--serve");
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let mut registry = Registry::new();
    registry.register_fn("demo.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })?;
    registry.register_fn("demo.fail", |_, _| Err(TaskError::new("no luck")))?;

    // The dashboard first: events are not kept for latecomers.
    let dashboard = Dashboard::builder(broker.clone())
        .max_tasks(1_000)
        .token(Some(TOKEN.to_string()))
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(dashboard.serve(listener, async {
        let _ = stopped.await;
    }));

    let worker = Worker::builder(
        broker.clone(),
        Arc::new(MemoryBackend::new()),
        Arc::new(registry),
    )
    .nodename("demo@example")
    .concurrency(2)
    .events(true)
    .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    for i in 0..5 {
        let m = Call::<Value>::new("demo.add").arg(i).arg(1).to_message()?;
        broker.publish(Outgoing::from_message(&m)?).await?;
    }
    let m = Call::<Value>::new("demo.fail").to_message()?;
    broker.publish(Outgoing::from_message(&m)?).await?;

    // The six tasks as the API lists them, once they all finished.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let tasks = loop {
        let tasks = get(addr, "/api/tasks").await?;
        let done = tasks.as_array().map_or(0, |t| {
            t.iter()
                .filter(|t| t["state"] == "SUCCESS" || t["state"] == "FAILURE")
                .count()
        });
        if done == 6 || tokio::time::Instant::now() > deadline {
            break tasks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for t in tasks.as_array().into_iter().flatten() {
        println!(
            "{} {} {}",
            t["id"].as_str().unwrap_or_default(),
            t["name"].as_str().unwrap_or_default(),
            t["state"].as_str().unwrap_or_default()
        );
    }
    let workers = get(addr, "/api/workers").await?;
    println!("workers: {}", workers.as_array().map_or(0, Vec::len));

    if serve {
        println!("dashboard at http://{addr}/ (token {TOKEN}); Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(());
    served.await??;
    worker.shutdown();
    running.await?;
    Ok(())
}
