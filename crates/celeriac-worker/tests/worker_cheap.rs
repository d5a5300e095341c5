//! Tasks marked `cheap` run on the thread that handles their message, not
//! on a pool thread, and keep what the thread pool gives them: a result, a
//! panic as a typed `Panicked` failure (the worker keeps serving); a call
//! with a soft time limit runs on the pool, whose timer cancels its
//! context. On the in-process broker.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_core::{Call, Message, Outgoing, Registry, ResultMeta, State, TaskOptions};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::Worker;
use serde_json::{Value, json};

const CHEAP: TaskOptions = TaskOptions::new().cheap(true);

/// The name of the thread that runs a task.
fn thread_name() -> Value {
    json!(std::thread::current().name().unwrap_or("?"))
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn_with("t.where_cheap", CHEAP, |_, _| Ok(thread_name()))
        .unwrap();
    r.register_fn("t.where", |_, _| Ok(thread_name())).unwrap();
    r.register_fn_with("t.panic", CHEAP, |_, _| panic!("cheap and broken"))
        .unwrap();
    r.register_fn_with("t.until_cancelled", CHEAP, |ctx, _| {
        while !ctx.is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(ctx.check().map_or_else(
            |e| celeriac_core::TaskError::typed(e.exc_type(), "tests", thread_name().to_string()),
            |()| celeriac_core::TaskError::new("not cancelled"),
        ))
    })
    .unwrap();
    r
}

async fn run(msgs: &[Message]) -> Vec<ResultMeta> {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry()))
        .concurrency(2)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let mut watches = Vec::new();
    for m in msgs {
        watches.push(backend.watch(m.id()).await.unwrap());
        broker
            .publish(Outgoing::from_message(m).unwrap())
            .await
            .unwrap();
    }
    let mut metas = Vec::new();
    for w in watches {
        let meta = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a result within 20 s")
            .unwrap();
        metas.push(meta);
    }
    worker.shutdown();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the worker stops")
        .unwrap();
    metas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheap_task_runs_where_its_message_is_handled_and_a_plain_one_on_the_pool() {
    let cheap = Call::<Value>::new("t.where_cheap").to_message().unwrap();
    let plain = Call::<Value>::new("t.where").to_message().unwrap();
    let metas = run(&[cheap, plain]).await;
    let cheap_thread = metas[0].result.as_str().unwrap().to_string();
    let plain_thread = metas[1].result.as_str().unwrap().to_string();
    assert!(
        plain_thread.starts_with("celeriac-task"),
        "a plain task runs on the pool: {plain_thread}"
    );
    assert!(
        !cheap_thread.starts_with("celeriac-task"),
        "a cheap task runs on the handler's (runtime) thread: {cheap_thread}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheap_task_that_panics_is_a_typed_failure_and_the_worker_keeps_serving() {
    let boom = Call::<Value>::new("t.panic").to_message().unwrap();
    let after = Call::<Value>::new("t.where_cheap").to_message().unwrap();
    let metas = run(&[boom, after]).await;
    assert_eq!(metas[0].status, State::Failure);
    let err = metas[0].error();
    assert_eq!(err.exc_type(), "Panic", "{err}");
    assert!(err.message().contains("cheap and broken"), "{err}");
    assert_eq!(metas[1].status, State::Success, "the worker still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheap_task_with_a_soft_time_limit_runs_on_the_pool_and_is_cancelled() {
    let slow = Call::<Value>::new("t.until_cancelled")
        .time_limits(None, Some(0.05))
        .to_message()
        .unwrap();
    let metas = run(&[slow]).await;
    assert_eq!(metas[0].status, State::Failure);
    let err = metas[0].error();
    assert_eq!(err.exc_type(), "SoftTimeLimitExceeded", "{err}");
    assert!(
        err.message().contains("celeriac-task"),
        "it ran on a pool thread: {err}"
    );
}
