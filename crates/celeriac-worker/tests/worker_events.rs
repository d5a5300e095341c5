//! Celery's events from a worker, as a monitor receives them through the
//! broker (the in-process one here; `interop_events.rs` in celeriac-cli
//! has Celery's own receiver on Redis): worker events always, task events
//! with `events(true)`, each with the fields Celery's carry.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::EventStream;
use celeriac_core::broker::prelude::*;
use celeriac_core::events::{self, Event};
use celeriac_core::time::{iso_from_unix, unix_now};
use celeriac_core::{
    Call, ControlRequest, Message, Outgoing, Registry, ResultBackend, TaskError, TaskOptions,
};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::Worker;
use futures::StreamExt;
use serde_json::{Value, json};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("t.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })
    .unwrap();
    r.register_fn("t.boom", |_, _| {
        Err(TaskError::typed("ValueError", "builtins", "boom"))
    })
    .unwrap();
    r.register_fn_with(
        "t.flaky",
        TaskOptions::new().max_retries(Some(3)),
        |ctx, _| {
            if ctx.retries() == 0 {
                Err(ctx.retry(Duration::from_millis(10)))
            } else {
                Ok(json!("done"))
            }
        },
    )
    .unwrap();
    r
}

/// Every event of `stream` until `until` holds for one (included), or 20 s.
async fn collect(stream: &mut EventStream, until: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no closing event within 20 s; got {out:#?}"))
            .expect("the subscription stays open")
            .expect("no subscription error");
        for ev in events::decode(&next.body).expect("event JSON") {
            // The message's routing key is the event type's, or task.multi.
            let kind = ev["type"].as_str().unwrap().to_string();
            if kind.starts_with("task-") {
                assert_eq!(next.routing_key, "task.multi");
            } else {
                assert_eq!(next.routing_key, events::routing_key(&kind));
            }
            assert_eq!(next.hostname, "ev@test");
            let done = until(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
    }
}

fn of<'a>(events: &'a [Event], kind: &str, id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e.get("uuid").and_then(Value::as_str) == Some(id))
        .collect()
}

fn one<'a>(events: &'a [Event], kind: &str, id: &str) -> &'a Event {
    match of(events, kind, id).as_slice() {
        [e] => e,
        other => panic!("{kind} of {id}: {} events in {events:#?}", other.len()),
    }
}

async fn publish(broker: &MemoryBroker, msg: &Message) {
    broker
        .publish(Outgoing::from_message(msg).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_events_sends_every_task_event_in_celerys_shape() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut stream = broker.subscribe_events().await.unwrap();
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry()))
        .concurrency(2)
        .nodename("ev@test")
        .heartbeat(Duration::from_millis(200))
        .events(true)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    let ok = Call::<Value>::new("t.add")
        .arg(2)
        .arg(3)
        .to_message()
        .unwrap();
    let bad = Call::<Value>::new("t.boom").to_message().unwrap();
    let flaky = Call::<Value>::new("t.flaky").to_message().unwrap();
    let unknown = Call::<Value>::new("t.nope").to_message().unwrap();
    let mut expired = Call::<Value>::new("t.add")
        .arg(1)
        .arg(1)
        .to_message()
        .unwrap();
    expired.headers.expires = Some(iso_from_unix(unix_now() - 60.0));
    let revoked = Call::<Value>::new("t.add")
        .arg(1)
        .arg(2)
        .to_message()
        .unwrap();
    broker
        .revoke(&[revoked.id().to_string()], Duration::from_secs(60))
        .await
        .unwrap();
    let last = backend.watch(flaky.id()).await.unwrap();
    for m in [&ok, &bad, &unknown, &expired, &revoked, &flaky] {
        publish(&broker, m).await;
    }
    tokio::time::timeout(Duration::from_secs(20), last)
        .await
        .unwrap()
        .unwrap();
    // At least one heartbeat after the tasks, then a warm shutdown.
    let mut seen = collect(&mut stream, |e| {
        e["type"] == "worker-heartbeat" && e["processed"].as_u64() >= Some(4)
    })
    .await;
    worker.shutdown();
    running.await.unwrap();
    seen.extend(collect(&mut stream, |e| e["type"] == "worker-offline").await);

    // Every event carries the sender's fields.
    let pid = u64::from(std::process::id());
    for e in &seen {
        assert_eq!(e["hostname"], "ev@test", "{e:?}");
        assert_eq!(e["pid"].as_u64(), Some(pid), "{e:?}");
        assert!(e["utcoffset"].is_f64(), "{e:?}");
        assert!(e["clock"].as_u64().is_some_and(|c| c > 0), "{e:?}");
        let ts = e["timestamp"].as_f64().unwrap();
        assert!((ts - unix_now()).abs() < 60.0, "{e:?}");
    }
    let mut clocks: Vec<u64> = seen.iter().map(|e| e["clock"].as_u64().unwrap()).collect();
    clocks.sort_unstable();
    clocks.dedup();
    assert_eq!(
        clocks.len(),
        seen.len(),
        "one Lamport clock value per event"
    );

    // Worker events: online first, heartbeats with Celery's fields, offline last.
    assert_eq!(seen[0]["type"], "worker-online");
    assert_eq!(seen.last().unwrap()["type"], "worker-offline");
    let beat = seen
        .iter()
        .rev()
        .find(|e| e["type"] == "worker-heartbeat")
        .unwrap();
    assert_eq!(beat["freq"], 0.2);
    assert_eq!(beat["active"], 0);
    assert_eq!(beat["sw_ident"], "celeriac");
    assert_eq!(beat["sw_ver"], env!("CARGO_PKG_VERSION"));
    assert!(beat["sw_sys"].is_string());
    assert_eq!(beat["loadavg"].as_array().map(Vec::len), Some(3));
    // ok, bad, and both runs of flaky started.
    assert_eq!(beat["processed"], 4);

    // The successful task.
    let id = ok.id();
    let r = one(&seen, "task-received", id);
    assert_eq!(r["name"], "t.add");
    assert_eq!(r["args"], "(2, 3)");
    assert_eq!(r["kwargs"], "{}");
    assert_eq!(r["root_id"], id);
    assert_eq!(r["parent_id"], Value::Null);
    assert_eq!(r["retries"], 0);
    assert_eq!((&r["eta"], &r["expires"]), (&Value::Null, &Value::Null));
    one(&seen, "task-started", id);
    let s = one(&seen, "task-succeeded", id);
    assert_eq!(s["result"], "5", "the result's repr");
    assert!(
        s["runtime"]
            .as_f64()
            .is_some_and(|t| (0.0..10.0).contains(&t))
    );

    // The failure: the exception's repr and a traceback.
    let f = one(&seen, "task-failed", bad.id());
    assert_eq!(f["exception"], "ValueError('boom')");
    assert!(f["traceback"].as_str().unwrap().contains("boom"), "{f:?}");

    // The retry: retried, then received again as its own child.
    let id = flaky.id();
    let retried = one(&seen, "task-retried", id);
    assert!(
        retried["exception"].as_str().unwrap().starts_with("Retry("),
        "{retried:?}"
    );
    assert!(retried["traceback"].is_string());
    let received = of(&seen, "task-received", id);
    assert_eq!(received.len(), 2);
    assert_eq!(received[1]["retries"], 1);
    assert_eq!(received[1]["parent_id"], id);
    assert!(received[1]["eta"].is_string(), "the retry's eta");
    assert_eq!(one(&seen, "task-succeeded", id)["result"], "'done'");

    // Expired and revoked: task-revoked, never started.
    let e = one(&seen, "task-revoked", expired.id());
    assert_eq!(
        (&e["expired"], &e["terminated"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(e["signum"], Value::Null);
    let e = one(&seen, "task-revoked", revoked.id());
    assert_eq!(
        (&e["expired"], &e["terminated"]),
        (&json!(false), &json!(false))
    );
    assert!(of(&seen, "task-started", revoked.id()).is_empty());

    // Unknown task: failed, then rejected (dead-lettered, not requeued).
    one(&seen, "task-failed", unknown.id());
    assert_eq!(one(&seen, "task-rejected", unknown.id())["requeue"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_a_worker_sends_only_worker_events() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut stream = broker.subscribe_events().await.unwrap();
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry()))
        .concurrency(1)
        .nodename("ev@test")
        .heartbeat(Duration::from_millis(100))
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let ok = Call::<Value>::new("t.add")
        .arg(2)
        .arg(3)
        .to_message()
        .unwrap();
    let watch = backend.watch(ok.id()).await.unwrap();
    publish(&broker, &ok).await;
    tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .unwrap()
        .unwrap();
    let mut seen = collect(&mut stream, |e| e["processed"] == 1).await;
    worker.shutdown();
    running.await.unwrap();
    seen.extend(collect(&mut stream, |e| e["type"] == "worker-offline").await);
    let kinds: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "worker-online");
    assert!(
        kinds.iter().all(|k| k.starts_with("worker-")),
        "no task events without -E: {kinds:?}"
    );
    assert_eq!(*kinds.last().unwrap(), "worker-offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitors_enable_events_and_heartbeat_reach_the_worker() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut stream = broker.subscribe_events().await.unwrap();
    // No -E, and heartbeats far apart.
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry()))
        .concurrency(1)
        .nodename("ev@test")
        .heartbeat(Duration::from_secs(3600))
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    collect(&mut stream, |e| e["type"] == "worker-online").await;

    // A monitor's wakeup: a heartbeat at once, not in an hour. (A request
    // that lands while the worker is sending another event is not queued,
    // as in Celery, so a monitor that misses one asks again.)
    let mut beat = false;
    for _ in 0..20 {
        broker
            .broadcast(&ControlRequest::new("heartbeat"))
            .await
            .unwrap();
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            let evs = events::decode(&m.body).unwrap();
            beat = evs.iter().any(|e| e["type"] == "worker-heartbeat");
            if beat {
                break;
            }
        }
    }
    assert!(beat, "no heartbeat on request");

    // Flower's enable_events: task events from then on.
    broker
        .broadcast(&ControlRequest::new("enable_events"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !worker
        .events_enabled()
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "enable_events not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = Call::<Value>::new("t.add")
        .arg(4)
        .arg(5)
        .to_message()
        .unwrap();
    publish(&broker, &ok).await;
    let seen = collect(&mut stream, |e| e["type"] == "task-succeeded").await;
    let s = one(&seen, "task-succeeded", ok.id());
    assert_eq!(s["result"], "9");
    one(&seen, "task-received", ok.id());
    worker.shutdown();
    running.await.unwrap();
}
