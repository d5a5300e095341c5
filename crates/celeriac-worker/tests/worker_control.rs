//! Remote control of a running worker through its broker (Celery's
//! pidbox commands), on the in-process broker: inspect replies in Celery's
//! shapes, and control commands that change the worker while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_core::{Call, ControlRequest, Outgoing, Registry, State};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::Worker;
use serde_json::{Map, Value, json};

const NODE: &str = "w1@test";

struct Fixture {
    broker: Arc<MemoryBroker>,
    backend: Arc<MemoryBackend>,
    worker: Worker,
    running: tokio::task::JoinHandle<()>,
    release: Arc<AtomicBool>,
}

async fn start() -> Fixture {
    let release = Arc::new(AtomicBool::new(false));
    let gate = release.clone();
    let mut r = Registry::new();
    r.register_fn("t.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })
    .unwrap();
    r.register_fn("t.wait", move |ctx, _| {
        while !gate.load(Ordering::SeqCst) {
            ctx.check()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(json!("released"))
    })
    .unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(r))
        .concurrency(1)
        .nodename(NODE)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    // Requests broadcast before the worker listens are lost (a fanout):
    // wait until it answers.
    for _ in 0..100 {
        let ping = ControlRequest::new("ping");
        if !broker
            .call(ping, Duration::from_millis(100), Some(1))
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
    }
    Fixture {
        broker,
        backend,
        worker,
        running,
        release,
    }
}

impl Fixture {
    /// Sends `req` and returns this node's reply (panics without one).
    async fn ask(&self, req: ControlRequest) -> Value {
        let replies = self.call(req).await;
        assert_eq!(replies.len(), 1, "one reply: {replies:?}");
        replies[0][NODE].clone()
    }

    async fn call(&self, req: ControlRequest) -> Vec<Map<String, Value>> {
        self.broker
            .call(req, Duration::from_secs(2), Some(1))
            .await
            .unwrap()
    }

    async fn send(&self, call: Call<Value>) -> String {
        let msg = call.to_message().unwrap();
        self.broker
            .publish(Outgoing::from_message(&msg).unwrap())
            .await
            .unwrap();
        msg.id().to_string()
    }

    async fn result(&self, id: &str) -> Value {
        let watch = self.backend.watch(id).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("a result")
            .unwrap()
            .result
    }

    /// Waits until `check` holds for the reply to `method`.
    async fn until(&self, method: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let v = self.ask(ControlRequest::new(method)).await;
            if check(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{method} never satisfied the check")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_commands_answer_in_celerys_shapes() {
    let f = start().await;
    assert_eq!(
        f.ask(ControlRequest::new("ping")).await,
        json!({"ok": "pong"})
    );

    // A short task first, so the worker reserves ahead; then one that
    // runs until released and one reserved behind it.
    let quick = f.send(Call::new("t.add").arg(2).arg(3)).await;
    assert_eq!(f.result(&quick).await, 5);
    let long = f.send(Call::new("t.wait").arg(7)).await;
    let behind = f.send(Call::new("t.add").arg(1).arg(1)).await;
    // The quick task is listed until its message is acked, a moment after
    // its result is stored: wait for the long one alone.
    let active = f
        .until("active", |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["id"] == long.as_str())
        })
        .await;
    let a = &active[0];
    assert_eq!(a["id"], long);
    assert_eq!(
        (a["name"].clone(), a["type"].clone()),
        (json!("t.wait"), json!("t.wait"))
    );
    assert_eq!(a["args"], json!([7]));
    assert_eq!(a["hostname"], NODE);
    assert_eq!(a["acknowledged"], false, "celeriac acks late by default");
    assert!(a["time_start"].as_f64().unwrap() > 1.7e9);
    assert_eq!(a["worker_pid"], std::process::id());
    assert_eq!(a["delivery_info"]["routing_key"], "celery");
    let safe = f.ask(ControlRequest::new("active").arg("safe", true)).await;
    assert_eq!(safe[0]["args"], "(7,)", "safe: the repr of the arguments");
    let reserved = f
        .until("reserved", |v| v.as_array().is_some_and(|a| !a.is_empty()))
        .await;
    assert_eq!(reserved[0]["id"], behind);
    assert_eq!(reserved[0]["time_start"], Value::Null);
    assert_eq!(reserved[0]["acknowledged"], false);
    let q = f
        .ask(ControlRequest::new("query_task").arg("ids", json!([long, behind, "nope"])))
        .await;
    assert_eq!(q[&long][0], "active");
    assert_eq!(q[&behind][0], "reserved");
    assert!(q.get("nope").is_none());
    assert_eq!(f.ask(ControlRequest::new("scheduled")).await, json!([]));

    let stats = f.ask(ControlRequest::new("stats")).await;
    assert_eq!(stats["total"], json!({"t.add": 1, "t.wait": 1}));
    assert_eq!(stats["pid"], std::process::id());
    assert!(
        stats["clock"].is_string(),
        "Celery sends the clock as a string"
    );
    assert!(stats["uptime"].is_u64());
    assert_eq!(stats["pool"]["max-concurrency"], 1);
    assert!(stats["pool"]["processes"].is_array());
    assert_eq!(stats["pool"]["max-tasks-per-child"], "N/A");
    assert_eq!(stats["prefetch_count"], 4);
    assert_eq!(stats["broker"]["transport"], "memory");
    assert!(stats["rusage"]["maxrss"].is_u64());

    assert_eq!(
        f.ask(ControlRequest::new("registered").arg("taskinfoitems", json!([])))
            .await,
        json!(["t.add", "t.wait"])
    );
    let queues = f.ask(ControlRequest::new("active_queues")).await;
    assert_eq!(queues[0]["name"], "celery");
    assert_eq!(queues[0]["exchange"]["type"], "direct");
    assert_eq!(queues[0]["routing_key"], "celery");
    let conf = f.ask(ControlRequest::new("conf")).await;
    assert_eq!(conf["broker_url"], "memory://");
    assert_eq!(conf["worker_concurrency"], 1);
    let clock = f.ask(ControlRequest::new("clock")).await;
    assert!(clock["clock"].as_u64().unwrap() > 0);
    let report = f.ask(ControlRequest::new("report")).await;
    assert!(
        report["ok"]
            .as_str()
            .unwrap()
            .contains("software -> celeriac:")
    );
    assert_eq!(
        f.ask(ControlRequest::new("no_such_cmd")).await,
        json!({"error": "KeyError('no_such_cmd')"})
    );
    assert_eq!(
        f.ask(
            ControlRequest::new("hello")
                .arg("from_node", "w2@test")
                .arg("revoked", json!(["old"]))
        )
        .await["revoked"],
        json!(["old"]),
        "mingle: a peer's revokes are merged and sent back"
    );
    assert_eq!(
        f.ask(ControlRequest::new("hello").arg("from_node", NODE))
            .await,
        Value::Null,
        "its own hello gets null"
    );

    // A request for another node gets no reply; a glob that matches does.
    let other = ControlRequest::new("ping").to_nodes(["w2@test"]);
    assert!(
        f.broker
            .call(other, Duration::from_millis(300), None)
            .await
            .unwrap()
            .is_empty()
    );
    let glob = ControlRequest::new("ping").matching("w1@*", "glob");
    assert_eq!(f.ask(glob).await, json!({"ok": "pong"}));

    f.release.store(true, Ordering::SeqCst);
    assert_eq!(f.result(&long).await, "released");
    assert_eq!(f.result(&behind).await, 2);
    f.worker.shutdown();
    f.running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_change_the_running_worker() {
    let f = start().await;
    let ask = |r| f.ask(r);
    assert_eq!(
        ask(ControlRequest::new("pool_grow").arg("n", 2)).await,
        json!({"ok": "pool will grow"})
    );
    assert_eq!(f.worker.concurrency(), 3);
    assert_eq!(
        ask(ControlRequest::new("stats")).await["pool"]["max-concurrency"],
        3
    );
    assert_eq!(
        ask(ControlRequest::new("pool_shrink")).await,
        json!({"ok": "pool will shrink"})
    );
    assert_eq!(f.worker.concurrency(), 2);
    assert!(
        ask(ControlRequest::new("pool_shrink").arg("n", 5)).await["error"]
            .as_str()
            .unwrap()
            .starts_with("ValueError(")
    );
    assert_eq!(
        ask(ControlRequest::new("autoscale").arg("max", 4).arg("min", 1)).await,
        json!({"error": "ValueError('Autoscale not enabled')"})
    );

    let limit = |name: &str, rate: &str| {
        ControlRequest::new("rate_limit")
            .arg("task_name", name)
            .arg("rate_limit", rate)
    };
    assert_eq!(
        ask(limit("t.nope", "10/m")).await,
        json!({"error": "unknown task"})
    );
    assert!(
        ask(limit("t.add", "fast")).await["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid rate limit string")
    );
    assert_eq!(
        ask(limit("t.add", "100/s")).await,
        json!({"ok": "new rate limit set successfully"})
    );
    assert_eq!(
        ask(ControlRequest::new("registered")).await,
        json!(["t.add [rate_limit=100/s]", "t.wait"])
    );
    assert_eq!(
        ask(limit("t.add", "")).await,
        json!({"ok": "rate limit disabled successfully"})
    );
    assert_eq!(
        ask(ControlRequest::new("time_limit")
            .arg("task_name", "t.wait")
            .arg("soft", 10)
            .arg("hard", 20))
        .await,
        json!({"ok": "time limits set successfully"})
    );

    // Queues: consume a new one, stop consuming the default.
    assert_eq!(
        ask(ControlRequest::new("add_consumer").arg("queue", "extra")).await,
        json!({"ok": "add consumer extra"})
    );
    let on_extra = f
        .send(Call::new("t.add").arg(1).arg(2).queue("extra"))
        .await;
    assert_eq!(f.result(&on_extra).await, 3);
    assert_eq!(
        ask(ControlRequest::new("active_queues")).await[1]["name"],
        "extra"
    );
    assert_eq!(
        ask(ControlRequest::new("cancel_consumer").arg("queue", "celery")).await,
        json!({"ok": "no longer consuming from celery"})
    );
    assert_eq!(f.worker.queues(), vec!["extra".to_string()]);
    // A claim already waiting (up to 250 ms) still names the old queues.
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.send(Call::new("t.add").arg(0).arg(0)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        f.broker.queue_len("celery").await.unwrap(),
        1,
        "celery is no longer consumed"
    );

    // Events.
    assert!(!f.worker.events_enabled().load(Ordering::SeqCst));
    assert_eq!(
        ask(ControlRequest::new("enable_events")).await,
        json!({"ok": "task events enabled"})
    );
    assert!(f.worker.events_enabled().load(Ordering::SeqCst));
    assert_eq!(
        ask(ControlRequest::new("enable_events")).await,
        json!({"ok": "task events already enabled"})
    );
    assert_eq!(
        ask(ControlRequest::new("disable_events")).await,
        json!({"ok": "task events disabled"})
    );
    assert!(!f.worker.events_enabled().load(Ordering::SeqCst));

    // Revoke: a pending task is marked REVOKED at once, as Celery 5.7 does.
    let reply = ask(ControlRequest::new("revoke").arg("task_id", "gone-1")).await;
    assert_eq!(reply, json!({"ok": "tasks {'gone-1'} flagged as revoked"}));
    let meta = f.backend.get("gone-1").await.unwrap().expect("stored");
    assert_eq!(meta.status, State::Revoked);
    assert_eq!(ask(ControlRequest::new("revoked")).await, json!(["gone-1"]));
    assert_eq!(
        ask(ControlRequest::new("revoke")
            .arg("task_id", json!(["x"]))
            .arg("terminate", true))
        .await,
        json!({"ok": "terminate: tasks unknown"})
    );

    // Shutdown: no reply, and the worker stops warm.
    assert!(f.call(ControlRequest::new("shutdown")).await.is_empty());
    tokio::time::timeout(Duration::from_secs(10), f.running)
        .await
        .expect("the worker stops")
        .unwrap();
    f.release.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stops_a_running_task_at_once() {
    let f = start().await;
    let long = f.send(Call::new("t.wait").arg(1)).await;
    f.until("active", |v| v.as_array().is_some_and(|a| !a.is_empty()))
        .await;
    let reply = f
        .ask(
            ControlRequest::new("terminate")
                .arg("signal", "SIGKILL")
                .arg("task_id", long.as_str()),
        )
        .await;
    assert_eq!(reply, json!({"ok": format!("terminate: {long}")}));
    // A thread cannot be killed: its context is cancelled, which the task
    // checks (it is never released, so it ends only by the terminate).
    let watch = f.backend.watch(&long).await.unwrap();
    let meta = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(meta.status, State::Success, "{meta:?}");
    assert!(meta.status.is_ready(), "{meta:?}");
    assert!(
        f.broker
            .terminations(std::slice::from_ref(&long))
            .await
            .unwrap()
            .contains(&long),
        "the broadcast recorded the terminate"
    );
    f.release.store(true, Ordering::SeqCst);
    f.worker.shutdown();
    f.running.await.unwrap();
}
