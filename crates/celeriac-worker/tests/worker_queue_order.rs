//! A worker consuming several queues (`-Q busy,quiet`) serves each in
//! turn: a message on a later queue does not wait until every message of
//! a busy earlier queue has run (kombu's Redis transport rotates its
//! queues the same way). On the in-process broker, whose claims serve
//! queues in the order they are given.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_core::{Call, Outgoing, Registry};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::Worker;
use parking_lot::Mutex;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_first_queue_does_not_starve_the_next() {
    let order = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut registry = Registry::new();
    let seen = order.clone();
    registry
        .register_fn("t.record", move |_, args| {
            let tag = args.args[0].as_str().unwrap_or("?").to_string();
            seen.lock().push(tag);
            Ok(Value::Null)
        })
        .unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    // Everything is queued before the worker starts.
    let mut watches = Vec::new();
    let publish = |queue: &str, tag: String| {
        let msg = Call::<Value>::new("t.record")
            .arg(tag)
            .queue(queue)
            .to_message()
            .unwrap();
        let out = Outgoing::from_message(&msg).unwrap();
        (msg.id().to_string(), out)
    };
    let mut outs = Vec::new();
    for i in 0..40 {
        outs.push(publish("busy", format!("busy-{i}")));
    }
    outs.push(publish("quiet", "quiet".to_string()));
    for (id, out) in outs {
        watches.push(backend.watch(&id).await.unwrap());
        broker.publish(out).await.unwrap();
    }
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(1)
        .prefetch_multiplier(1)
        .queues(["busy", "quiet"])
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    for w in watches {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("every task runs within 20 s")
            .unwrap();
    }
    worker.shutdown();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the worker stops")
        .unwrap();
    let order = order.lock().clone();
    assert_eq!(order.len(), 41, "{order:?}");
    let at = order.iter().position(|t| t == "quiet").unwrap();
    // Strict queue order would run it last (at 40). With each claim
    // taking one message, the quiet queue gets the second claim's turn.
    assert!(
        at <= 2,
        "the quiet queue's message ran as number {at} of 41: {order:?}"
    );
}
