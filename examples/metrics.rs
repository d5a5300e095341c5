//! Prometheus metrics of a worker: the `TaskMetrics` observer counts tasks
//! by name and state and records runtimes and queue waits through the
//! `metrics` facade; a recorder (here `metrics-exporter-prometheus`)
//! turns them into the Prometheus text format. `celeriac worker
//! --metrics-addr HOST:PORT` does the same and serves it at `/metrics`.
//! Run: `cargo run -p celeriac-examples --example metrics`.

use std::sync::Arc;

use celeriac::prelude::*;
use celeriac::{Call, MemoryBackend, MemoryBroker, Outgoing, Registry, TaskMetrics, Worker};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Histograms as Prometheus histograms (the exporter's default for a
    // metric without buckets is a summary).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.001, 0.01, 0.1, 1.0, 10.0],
        )?
        .install_recorder()?;
    TaskMetrics::describe();

    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut registry = Registry::new();
    registry.register_fn("examples.double", |_, args| {
        let n: i64 = args.bind("double", &["n"])?.take(0)?;
        Ok(serde_json::json!(n * 2))
    })?;
    let metrics = Arc::new(TaskMetrics::for_registry(&registry));
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(2)
        .observer(metrics.clone())
        .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    let mut watches = Vec::new();
    for call in [
        Call::<Value>::new("examples.double").arg(21),
        Call::<Value>::new("examples.double").arg(4),
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
    // The gauges (reserved, active, pool children) are read on demand;
    // `celeriac worker` does it twice a second.
    metrics.sample(&worker);
    worker.shutdown();
    running.await?;

    let text = prometheus.render();
    for line in text.lines().filter(|l| !l.contains("_bucket")) {
        println!("{line}");
    }
    assert!(text.contains(r#"celeriac_tasks_total{task="examples.double",state="SUCCESS"} 2"#));
    assert!(text.contains(r#"celeriac_tasks_total{task="examples.double",state="FAILURE"} 1"#));
    assert!(text.contains(r#"celeriac_tasks_total{task="<unregistered>",state="FAILURE"} 1"#));
    Ok(())
}
