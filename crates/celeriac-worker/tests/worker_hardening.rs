//! The worker's hardening options on the in-process broker: a secret
//! (only signed messages run; unsigned, forged and altered ones are
//! dead-lettered with the reason and no result; retries, chain steps and
//! early-acked give-backs are signed again) and `max_result` (a FAILURE
//! `ResultTooLarge` stored in place of a result over the limit).

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_core::{
    Call, Message, Outgoing, Registry, ResultBackend, ResultMeta, Secret, State, TaskError,
    TaskOptions,
};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::{Worker, WorkerBuilder};
use serde_json::{Value, json};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("t.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })
    .unwrap();
    r.register_fn_with(
        "t.flaky",
        TaskOptions::new().max_retries(Some(3)),
        |ctx, _| {
            if ctx.retries() < 2 {
                Err(ctx.retry(Duration::from_millis(10)))
            } else {
                Ok(json!(ctx.retries()))
            }
        },
    )
    .unwrap();
    r.register_fn("t.repeat", |_, args| {
        let mut b = args.bind("repeat", &["n"])?;
        Ok(json!("z".repeat(b.take::<usize>(0)?)))
    })
    .unwrap();
    r.register_fn("t.shout", |_, args| {
        let mut b = args.bind("shout", &["n"])?;
        Err(TaskError::new("!".repeat(b.take::<usize>(0)?)))
    })
    .unwrap();
    r
}

struct Fixture {
    broker: Arc<MemoryBroker>,
    backend: Arc<MemoryBackend>,
    worker: Worker,
    running: tokio::task::JoinHandle<()>,
}

fn start(configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder) -> Fixture {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let builder = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry()))
        .concurrency(2)
        .nodename("hardening@test");
    let worker = configure(builder).build().unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    Fixture {
        broker,
        backend,
        worker,
        running,
    }
}

impl Fixture {
    async fn send_raw(&self, id: &str, payload: Vec<u8>) {
        self.broker
            .publish(Outgoing {
                queue: "celery".into(),
                priority: 0,
                eta: None,
                tag: uuid(),
                task_id: id.to_string(),
                payload,
            })
            .await
            .unwrap();
    }

    async fn run(&self, msg: &Message) -> ResultMeta {
        let watch = self.backend.watch(msg.id()).await.unwrap();
        self.send_raw(msg.id(), msg.encode().unwrap()).await;
        tokio::time::timeout(Duration::from_secs(20), watch)
            .await
            .expect("a result within 20 s")
            .unwrap()
    }

    /// Waits (up to 20 s) for `n` dead letters; returns their reasons by
    /// task id.
    async fn dead_letters(&self, n: usize) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let dead = self.broker.dead_letters(100).await.unwrap();
            if dead.len() >= n || tokio::time::Instant::now() > deadline {
                return dead
                    .into_iter()
                    .map(|d| {
                        let id = Message::decode(&d.payload)
                            .map(|m| m.id().to_string())
                            .unwrap_or_default();
                        (id, d.reason)
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) {
        self.worker.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.running)
            .await
            .expect("the worker stops")
            .unwrap();
    }
}

fn uuid() -> String {
    Call::<Value>::new("x")
        .to_message()
        .unwrap()
        .id()
        .to_string()
}

fn secret() -> Secret {
    Secret::new("worker secret").unwrap()
}

fn signed(mut msg: Message) -> Message {
    secret().sign(&mut msg).unwrap();
    msg
}

fn add(x: i64, y: i64) -> Message {
    Call::<i64>::new("t.add")
        .arg(x)
        .arg(y)
        .to_message()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_only_signed_messages_run_and_the_rest_are_dead_lettered_without_a_result() {
    let f = start(|b| b.secret(secret()));

    let meta = f.run(&signed(add(2, 3))).await;
    assert_eq!((meta.status, meta.result), (State::Success, json!(5)));

    // Retries change the headers: the worker signs each one again.
    let flaky = signed(Call::<i64>::new("t.flaky").to_message().unwrap());
    let meta = f.run(&flaky).await;
    assert_eq!((meta.status, meta.result), (State::Success, json!(2)));

    let unsigned = add(1, 1);
    f.send_raw(unsigned.id(), unsigned.encode().unwrap()).await;

    let mut other_key = add(1, 2);
    Secret::new("not the worker's")
        .unwrap()
        .sign(&mut other_key)
        .unwrap();
    f.send_raw(other_key.id(), other_key.encode().unwrap())
        .await;

    // Signed, then its name changed: a replay under another task.
    let mut renamed = signed(add(1, 3));
    renamed.headers.task = "t.flaky".into();
    f.send_raw(renamed.id(), renamed.encode().unwrap()).await;

    // Signed, then its args changed.
    let mut altered = signed(add(1, 4));
    altered.args[1] = json!(400);
    f.send_raw(altered.id(), altered.encode().unwrap()).await;

    let dead = f.dead_letters(4).await;
    assert_eq!(dead.len(), 4, "{dead:?}");
    let reason = |id: &str| {
        dead.iter()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"))
    };
    assert!(
        reason(unsigned.id()).starts_with("unsigned message"),
        "{dead:?}"
    );
    for m in [&other_key, &renamed, &altered] {
        assert!(
            reason(m.id()).starts_with("forged or altered message"),
            "{dead:?}"
        );
    }
    for m in [&unsigned, &other_key, &renamed, &altered] {
        assert_eq!(f.backend.get(m.id()).await.unwrap(), None, "no result");
    }
    let stats = f.worker.stats();
    assert_eq!(stats.succeeded, 2, "nothing forged ran: {stats:?}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_the_chain_steps_a_worker_sends_on_are_signed_and_run() {
    let f = start(|b| b.secret(secret()));
    let step_id = uuid();
    // add(2, 3) | add(10): the next step gets 5 as its first argument.
    let mut first = add(2, 3);
    first.embed.chain = Some(vec![
        json!({"task": "t.add", "args": [10], "kwargs": {}, "options": {"task_id": step_id}}),
    ]);
    let watch = f.backend.watch(&step_id).await.unwrap();
    let meta = f.run(&signed(first)).await;
    assert_eq!(meta.result, json!(5));
    let step = tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .expect("the chain step ran")
        .unwrap();
    assert_eq!((step.status, step.result), (State::Success, json!(15)));
    assert!(
        f.broker.dead_letters(10).await.unwrap().is_empty(),
        "nothing refused"
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_signature_is_ignored() {
    let f = start(|b| b);
    let meta = f.run(&signed(add(2, 3))).await;
    assert_eq!(meta.result, json!(5));
    let mut altered = signed(add(2, 3));
    altered.args[1] = json!(30);
    let meta = f.run(&altered).await;
    assert_eq!(meta.result, json!(32), "not checked without a secret");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_max_result_is_stored_as_result_too_large_and_the_value_never() {
    let f = start(|b| b.max_result(100));
    let small = Call::<String>::new("t.repeat")
        .arg(10)
        .to_message()
        .unwrap();
    let meta = f.run(&small).await;
    assert_eq!(meta.result, json!("z".repeat(10)));

    let big = Call::<String>::new("t.repeat")
        .arg(100_000)
        .to_message()
        .unwrap();
    let meta = f.run(&big).await;
    assert_eq!(meta.status, State::Failure);
    assert_eq!(meta.result["exc_type"], json!("ResultTooLarge"));
    let text = meta.result["exc_message"].to_string();
    assert!(
        text.contains("100002 bytes") && text.contains("limit of 100 bytes"),
        "{text}"
    );
    let stored = serde_json::to_string(&meta).unwrap();
    assert!(stored.len() < 2000, "the value is not stored: {stored}");

    let loud = Call::<String>::new("t.shout")
        .arg(100_000)
        .to_message()
        .unwrap();
    let meta = f.run(&loud).await;
    assert_eq!(meta.status, State::Failure);
    assert_eq!(meta.result["exc_type"], json!("ResultTooLarge"));
    assert!(serde_json::to_string(&meta).unwrap().len() < 2000);
    let stats = f.worker.stats();
    assert_eq!((stats.succeeded, stats.failed), (1, 2));
    f.finish().await;
}
