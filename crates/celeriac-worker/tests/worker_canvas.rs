//! The canvas on the embedded brokers: chains, groups, chords (a failing
//! header included), links, link_errors and nested canvases, sent as
//! Celery's client sends them (messages built to the wire shape of the
//! reference's §1) to celeriac workers in this process, on `memory://` and
//! on `sqlite://` (two workers on their own handles of one file), with the
//! chords joined by the backend's join, or by `celery.chord_unlock` when
//! the backend offers none.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::time::{iso_from_unix, unix_now};
use celeriac_core::{
    BackendError, Broker, ChordJoin, Message, Outgoing, Registry, ResultBackend, ResultMeta,
    ResultWatch, State, TaskError,
};
use celeriac_embedded::{MemoryBackend, MemoryBroker, SqliteBackend, SqliteBroker};
use celeriac_worker::Worker;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

/// How many times `t.count` ran, by its key.
static RUNS: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Default::default);

fn runs(key: &str) -> usize {
    RUNS.lock().get(key).copied().unwrap_or(0)
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("t.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })
    .unwrap();
    r.register_fn("t.fail", |_, args| {
        let msg: String = args.bind("fail", &["message"])?.take(0)?;
        Err(TaskError::typed("ValueError", "builtins", msg))
    })
    .unwrap();
    r.register_fn("t.echo", |_, args| {
        args.bind("echo", &["value"])?.take::<Value>(0)
    })
    .unwrap();
    // Returns its first argument and counts its runs under its key.
    r.register_fn("t.count", |_, args| {
        let mut b = args.bind("count", &["value", "key"])?;
        let value: Value = b.take(0)?;
        let key: String = b.take(1)?;
        *RUNS.lock().entry(key).or_default() += 1;
        Ok(value)
    })
    .unwrap();
    r
}

/// A result backend without a join: another backend with that one
/// capability hidden, as Celery's filesystem or cache backends are, so
/// chords go through `celery.chord_unlock`.
#[derive(Debug)]
struct NoJoin(Arc<dyn ResultBackend>);

#[async_trait]
impl ResultBackend for NoJoin {
    fn url(&self) -> String {
        self.0.url()
    }
    fn is_private(&self) -> bool {
        self.0.is_private()
    }
    fn chord_join(&self) -> Option<&dyn ChordJoin> {
        None
    }
    async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        self.0.store(meta).await
    }
    async fn store_many(&self, metas: &[ResultMeta]) -> Result<(), BackendError> {
        self.0.store_many(metas).await
    }
    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        self.0.get(task_id).await
    }
    async fn watch(&self, task_id: &str) -> Result<ResultWatch, BackendError> {
        self.0.watch(task_id).await
    }
    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.0.forget(task_id).await
    }
    async fn claim_key(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BackendError> {
        self.0.claim_key(key, task_id, ttl).await
    }
}

/// The client's side, and the workers.
struct Env {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    /// Whether chords are joined by the backend (else by chord_unlock).
    joins: bool,
    workers: Vec<(Worker, tokio::task::JoinHandle<()>)>,
    _dir: Option<tempfile::TempDir>,
}

fn spawn(
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    name: &str,
) -> (Worker, tokio::task::JoinHandle<()>) {
    let w = Worker::builder(broker, backend, Arc::new(registry()))
        .concurrency(3)
        .nodename(name)
        .build()
        .unwrap();
    let run = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    (w, run)
}

fn hide_join(b: Arc<dyn ResultBackend>, joins: bool) -> Arc<dyn ResultBackend> {
    if joins { b } else { Arc::new(NoJoin(b)) }
}

fn memory(joins: bool) -> Env {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let backend = hide_join(Arc::new(MemoryBackend::new()), joins);
    let w = spawn(broker.clone(), backend.clone(), "memory@canvas");
    Env {
        broker,
        backend,
        joins,
        workers: vec![w],
        _dir: None,
    }
}

fn sqlite(joins: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/canvas.db", dir.path().display());
    let open = || -> (Arc<dyn Broker>, Arc<dyn ResultBackend>) {
        (
            SqliteBroker::open(&url).unwrap(),
            hide_join(SqliteBackend::open(&url).unwrap(), joins),
        )
    };
    let (broker, backend) = open();
    let workers = (0..2)
        .map(|i| {
            let (b, r) = open();
            spawn(b, r, &format!("sqlite{i}@canvas"))
        })
        .collect();
    Env {
        broker,
        backend,
        joins,
        workers,
        _dir: Some(dir),
    }
}

impl Env {
    async fn publish(&self, msgs: &[Message]) {
        let out = msgs
            .iter()
            .map(|m| Outgoing::from_message(m).unwrap())
            .collect();
        self.broker.publish_batch(out).await.unwrap();
    }

    async fn result(&self, id: &str) -> ResultMeta {
        let watch = self.backend.watch(id).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), watch)
            .await
            .unwrap_or_else(|_| panic!("no result for {id} within 30 s"))
            .unwrap()
    }

    async fn value(&self, id: &str) -> Value {
        let meta = self.result(id).await;
        assert_eq!(meta.status, State::Success, "{id}: {meta:?}");
        meta.result
    }

    /// Sends a chord as Celery's client does: on a backend with a join,
    /// the header with the size recorded just before the last part; on one
    /// without, `celery.chord_unlock` first, due in a second.
    async fn chord(&self, header: Vec<Value>, body: &Value) -> String {
        let gid = uuid();
        let mut body = body.clone();
        body["options"]["group_id"] = json!(gid);
        let msgs: Vec<Message> = header
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut m = message(s);
                m.headers.group = Some(gid.clone());
                m.headers.group_index = Some(i as u64);
                m.embed.chord = Some(body.clone());
                m
            })
            .collect();
        if self.joins {
            let (last, first) = msgs.split_last().unwrap();
            self.publish(first).await;
            let join = self.backend.chord_join().expect("a join");
            join.set_size(&gid, msgs.len() as u64).await.unwrap();
            self.publish(std::slice::from_ref(last)).await;
        } else {
            let tuples: Vec<Value> = msgs.iter().map(|m| json!([[m.id(), null], null])).collect();
            let mut kw = Map::new();
            kw.insert("interval".into(), Value::Null);
            kw.insert("max_retries".into(), Value::Null);
            kw.insert("result".into(), Value::Array(tuples));
            kw.insert("_chord_unlock_exchange_type".into(), json!("direct"));
            let unlock_id = uuid();
            let mut unlock = Message::with_id(
                "celery.chord_unlock",
                &unlock_id,
                vec![json!(gid), body.clone()],
                kw,
            );
            unlock.headers.eta = Some(iso_from_unix(unix_now() + 1.0));
            unlock.headers.ignore_result = Some(true);
            unlock.headers.root_id = Some(unlock_id.clone());
            self.publish(&[unlock]).await;
            self.publish(&msgs).await;
        }
        body["options"]["task_id"].as_str().unwrap().to_string()
    }

    async fn stop(self) {
        for (w, _) in &self.workers {
            w.shutdown();
        }
        for (_, run) in self.workers {
            tokio::time::timeout(Duration::from_secs(20), run)
                .await
                .expect("the worker stops")
                .unwrap();
        }
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A signature as Celery serializes it, with a frozen id.
fn sig(task: &str, args: Value) -> Value {
    json!({"task": task, "args": args, "kwargs": {}, "options": {"task_id": uuid()},
           "subtask_type": null, "immutable": false})
}

fn id_of(sig: &Value) -> String {
    sig["options"]["task_id"].as_str().unwrap().to_string()
}

/// The message a client sends for `sig` (its own id, its own root).
fn message(sig: &Value) -> Message {
    let id = id_of(sig);
    let args = sig["args"].as_array().cloned().unwrap_or_default();
    let mut m = Message::with_id(sig["task"].as_str().unwrap(), &id, args, Map::new());
    m.headers.root_id = Some(id);
    m
}

/// `chain(first, *rest)` as the client sends it: the first task's message,
/// the rest reversed in its embed.
fn chain(steps: &[Value]) -> Message {
    let mut m = message(&steps[0]);
    m.embed.chain = Some(steps[1..].iter().rev().cloned().collect());
    m
}

async fn chains(env: &Env) {
    let steps = [
        sig("t.add", json!([1, 2])),
        sig("t.add", json!([10])),
        sig("t.add", json!([100])),
    ];
    env.publish(&[chain(&steps)]).await;
    assert_eq!(env.value(&id_of(&steps[2])).await, 113);
    let middle = env.result(&id_of(&steps[1])).await;
    assert_eq!(middle.parent_id.as_deref(), Some(id_of(&steps[0]).as_str()));

    // A failing middle step: it and every step after it fail with its
    // error; nothing after it runs.
    let mut boom = sig("t.fail", json!(["middle"]));
    boom["immutable"] = json!(true);
    let steps = [sig("t.add", json!([1, 2])), boom, sig("t.add", json!([5]))];
    env.publish(&[chain(&steps)]).await;
    let last = env.result(&id_of(&steps[2])).await;
    assert_eq!(last.status, State::Failure);
    assert_eq!(last.error().message(), "middle");
    // Stored after the failed step's own FAILURE, as Celery does: whoever
    // sees the last step fail finds the failed step failed.
    let middle = env.backend.get(&id_of(&steps[1])).await.unwrap();
    assert_eq!(middle.map(|m| m.status), Some(State::Failure));
}

async fn groups_and_links(env: &Env) {
    let gid = uuid();
    let members: Vec<Message> = (0..10)
        .map(|i| {
            let mut m = message(&sig("t.add", json!([i, i])));
            m.headers.group = Some(gid.clone());
            m.headers.group_index = Some(i as u64);
            m
        })
        .collect();
    env.publish(&members).await;
    for (i, m) in members.iter().enumerate() {
        let meta = env.result(m.id()).await;
        assert_eq!(meta.result, json!(2 * i));
        assert_eq!(meta.group_id.as_deref(), Some(gid.as_str()));
    }

    let cb = sig("t.add", json!([10]));
    let mut m = message(&sig("t.add", json!([2, 2])));
    m.embed.callbacks = Some(vec![cb.clone()]);
    env.publish(&[m]).await;
    assert_eq!(env.value(&id_of(&cb)).await, 14, "the link got 4 prepended");

    let eb = sig("t.echo", json!([]));
    let mut m = message(&sig("t.fail", json!(["x"])));
    m.embed.errbacks = Some(vec![eb.clone()]);
    env.publish(&[m.clone()]).await;
    assert_eq!(
        env.value(&id_of(&eb)).await,
        json!(m.id()),
        "the errback is called with the failed task's id"
    );
}

async fn chords(env: &Env) {
    let key = uuid();
    let body = sig("t.count", json!([key]));
    let header = (0..5).map(|i| sig("t.add", json!([i, i]))).collect();
    let body_id = env.chord(header, &body).await;
    assert_eq!(env.value(&body_id).await, json!([0, 2, 4, 6, 8]));
    assert_eq!(runs(&key), 1, "the body ran once");

    // A failing header part: ChordError under the body's id, the body's
    // errback called with its id, and the body never runs.
    let key = uuid();
    let eb = sig("t.echo", json!([]));
    let mut body = sig("t.count", json!([key]));
    body["options"]["link_error"] = json!([eb.clone()]);
    let bad = sig("t.fail", json!(["bad header"]));
    let header = vec![sig("t.add", json!([1, 1])), bad.clone()];
    let body_id = env.chord(header, &body).await;
    let meta = env.result(&body_id).await;
    assert_eq!(meta.status, State::Failure);
    let err = meta.error();
    assert_eq!(
        (err.exc_type(), err.exc_module()),
        ("ChordError", Some("celery.exceptions"))
    );
    assert_eq!(
        err.message(),
        format!("Dependency {} raised ValueError('bad header')", id_of(&bad))
    );
    assert_eq!(env.value(&id_of(&eb)).await, json!(body_id));
    assert_eq!(runs(&key), 0, "the body did not run");
}

async fn nested(env: &Env) {
    // chain(add(1, 2), group(add(10), add(20)), count): the client made
    // the group and the next step a chord; the worker expands it.
    let key = uuid();
    let body = sig("t.count", json!([key]));
    let gid = uuid();
    let header = json!({"task": "celery.group", "args": [], "kwargs": {"tasks": [
        sig("t.add", json!([10])), sig("t.add", json!([20]))]},
        "options": {"task_id": gid}, "subtask_type": "group", "immutable": false});
    let step = json!({"task": "celery.chord", "args": [],
        "kwargs": {"header": header, "body": body, "kwargs": {}},
        "options": {"task_id": gid}, "subtask_type": "chord", "immutable": false});
    let after = sig("t.echo", json!([]));
    let first = sig("t.add", json!([1, 2]));
    env.publish(&[chain(&[first.clone(), step, after.clone()])])
        .await;
    assert_eq!(env.value(&id_of(&after)).await, json!([13, 23]));
    assert_eq!(runs(&key), 1);
    let children = env.result(&id_of(&first)).await.children;
    assert_eq!(children[0][0][0], json!(gid), "the header is the child");

    // A chord whose body is a chain.
    let b1 = sig("t.echo", json!([]));
    let b2 = sig("t.echo", json!([]));
    let body = json!({"task": "celery.chain", "args": [], "kwargs": {"tasks": [b1, b2.clone()]},
        "options": {"task_id": id_of(&b2)}, "subtask_type": "chain", "immutable": false});
    let header = (1..=3).map(|i| sig("t.add", json!([i, 0]))).collect();
    env.chord(header, &body).await;
    assert_eq!(env.value(&id_of(&b2)).await, json!([1, 2, 3]));
}

async fn big_chord(env: &Env) {
    let key = uuid();
    let body = sig("t.count", json!([key]));
    let header = (0..200).map(|i| sig("t.add", json!([i, 1]))).collect();
    let body_id = env.chord(header, &body).await;
    let got = env.value(&body_id).await;
    assert_eq!(got, json!((1..=200).collect::<Vec<_>>()), "in header order");
    assert_eq!(runs(&key), 1, "the body ran exactly once");
}

async fn everything(env: Env) {
    chains(&env).await;
    groups_and_links(&env).await;
    chords(&env).await;
    nested(&env).await;
    big_chord(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canvas_on_memory() {
    everything(memory(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canvas_on_sqlite_with_two_workers() {
    everything(sqlite(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canvas_on_memory_joined_by_chord_unlock() {
    let env = memory(false);
    chords(&env).await;
    nested(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canvas_on_sqlite_joined_by_chord_unlock() {
    let env = sqlite(false);
    chords(&env).await;
    nested(&env).await;
    big_chord(&env).await;
    env.stop().await;
}

/// A header part whose worker died after storing its result and before the
/// ack: the part comes back, is not run again, and joins the chord (which
/// counts it once), so the chord completes with the stored result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_part_redelivered_after_its_worker_died_joins_the_chord() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/canvas.db?lease=1", dir.path().display());
    let broker: Arc<dyn Broker> = SqliteBroker::open(&url).unwrap();
    let backend: Arc<dyn ResultBackend> = SqliteBackend::open(&url).unwrap();
    let gid = uuid();
    let key = uuid();
    let mut body = sig("t.count", json!([key]));
    body["options"]["group_id"] = json!(gid);
    let parts: Vec<Message> = (0..3)
        .map(|i| {
            let mut m = message(&sig("t.add", json!([i, 0])));
            m.headers.group = Some(gid.clone());
            m.headers.group_index = Some(i);
            m.embed.chord = Some(body.clone());
            m
        })
        .collect();
    // The worker that dies: it takes part 2, stores its result (999, so a
    // second run would show) and never acks.
    broker
        .publish(Outgoing::from_message(&parts[2]).unwrap())
        .await
        .unwrap();
    let held = broker
        .claim(
            "dead@canvas",
            &["celery".to_string()],
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    backend
        .store(&ResultMeta::success(parts[2].id(), json!(999)))
        .await
        .unwrap();
    let env = Env {
        workers: vec![spawn(
            SqliteBroker::open(&url).unwrap(),
            SqliteBackend::open(&url).unwrap(),
            "alive@canvas",
        )],
        broker,
        backend,
        joins: true,
        _dir: Some(dir),
    };
    env.backend
        .chord_join()
        .unwrap()
        .set_size(&gid, 3)
        .await
        .unwrap();
    env.publish(&parts[..2]).await;
    let body_id = id_of(&body);
    assert_eq!(
        env.value(&body_id).await,
        json!([0, 1, 999]),
        "the redelivered part joined with its stored result"
    );
    assert_eq!(runs(&key), 1);
    env.stop().await;
}
