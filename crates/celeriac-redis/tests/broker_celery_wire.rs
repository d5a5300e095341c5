//! What the Redis broker writes where Python Celery reads it: eta messages
//! on the queue itself, and revokes as Celery's pidbox broadcast. Each
//! test runs its own private `redis-server`.

use std::time::Duration;

use base64::Engine as _;
use celeriac_core::broker::prelude::*;
use celeriac_core::time::unix_now;
use celeriac_core::{Call, Outgoing};
use celeriac_redis::RedisBroker;
use celeriac_testkit::redis_server::RedisServer;
use serde_json::Value;

fn conn(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url(""))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eta_message_goes_on_its_queue_and_is_never_claimed_early() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let broker = RedisBroker::open(&server.url("")).unwrap();
    let eta = unix_now() + 1.5;
    let msg = Call::<i64>::new("t.add")
        .arg(1)
        .eta(eta)
        .to_message()
        .unwrap();
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();

    // On the queue, with its eta header, where kombu's BRPOP finds it.
    let mut c = conn(&server);
    let queued: Vec<String> = redis::cmd("LRANGE")
        .arg("celery")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(queued.len(), 1);
    let env: Value = serde_json::from_str(&queued[0]).unwrap();
    assert_eq!(env["headers"]["eta"], msg.headers.eta.clone().unwrap());

    // A claim before the eta takes it off the queue into the delayed set,
    // and returns nothing.
    let queues = ["celery".to_string()];
    let early = broker
        .claim("w", &queues, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(early.is_empty(), "claimed before its eta");
    let (on_queue, delayed, unacked): (usize, usize, usize) = redis::pipe()
        .llen("celery")
        .zcard("celeriac.delayed")
        .hlen("unacked")
        .query(&mut c)
        .unwrap();
    assert_eq!((on_queue, delayed, unacked), (0, 1, 0));

    // Once due, it is claimed, unchanged.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.is_empty() && std::time::Instant::now() < deadline {
        got = broker
            .claim("w", &queues, 10, Duration::from_millis(500))
            .await
            .unwrap();
    }
    assert_eq!(got.len(), 1);
    assert!(unix_now() >= eta, "not before its eta");
    assert_eq!(got[0].payload, queued[0].as_bytes());
    broker.ack(&got[0]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_eta_message_goes_to_its_worker_at_once() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let broker = RedisBroker::open(&server.url("")).unwrap();
    let msg = Call::<i64>::new("t.add")
        .arg(1)
        .eta(unix_now() + 3600.0)
        .to_message()
        .unwrap();
    broker
        .revoke(&[msg.id().to_string()], Duration::from_secs(60))
        .await
        .unwrap();
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();
    let got = broker
        .claim("w", &["celery".to_string()], 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "delivered now, to be recorded REVOKED");
    assert!(got[0].revoked);
}

/// The next message on `pubsub`, decoded: the envelope and its body.
fn next_broadcast(pubsub: &mut redis::PubSub<'_>) -> (Value, Value) {
    let msg = pubsub.get_message().expect("a broadcast");
    let env: Value = serde_json::from_slice(&msg.get_payload::<Vec<u8>>().unwrap()).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(env["body"].as_str().unwrap())
        .unwrap();
    (env, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_are_broadcast_as_celery_broadcasts_them_and_recorded_durably() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let prefix = "app:";
    let broker = RedisBroker::open(&server.url(&format!("?global_keyprefix={prefix}"))).unwrap();
    // A consumer, so that the broker's own remote-control listener runs and
    // hears the broadcasts too.
    let _ = broker
        .claim("w", &["celery".to_string()], 1, Duration::from_millis(50))
        .await
        .unwrap();
    let mut sub = conn(&server);
    let mut pubsub = sub.as_pubsub();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // kombu prefixes the fanout topic with global_keyprefix too.
    pubsub.subscribe("app:/0.celery.pidbox").unwrap();

    broker
        .revoke(&["a".to_string()], Duration::from_secs(30))
        .await
        .unwrap();
    let (env, body) = next_broadcast(&mut pubsub);
    assert_eq!(body["method"], "revoke");
    assert_eq!(
        body["arguments"],
        serde_json::json!({"task_id": "a", "terminate": false, "signal": "SIGTERM"})
    );
    assert_eq!(
        env["properties"]["delivery_info"]["exchange"],
        "celery.pidbox"
    );
    assert_eq!(env["properties"]["body_encoding"], "base64");
    assert!(env["headers"]["expires"].as_f64().unwrap() > unix_now());

    broker
        .revoke_terminate_with_signal(
            &["b".to_string(), "c".to_string()],
            Duration::from_secs(30),
            "SIGKILL",
        )
        .await
        .unwrap();
    let (_, body) = next_broadcast(&mut pubsub);
    assert_eq!(
        body["arguments"],
        serde_json::json!({"task_id": ["b", "c"], "terminate": true, "signal": "SIGKILL"})
    );
    broker
        .revoke_terminate(&["d".to_string()], Duration::from_secs(30))
        .await
        .unwrap();
    let (_, body) = next_broadcast(&mut pubsub);
    assert_eq!(body["arguments"]["signal"], "SIGTERM");
    assert_eq!(body["arguments"]["terminate"], true);

    // The durable keys keep the TTL asked for, although the broker's own
    // listener heard the broadcast (it records Python's revokes for 3 h).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = conn(&server);
    for key in [
        "app:celeriac.revoked.a",
        "app:celeriac.revoked.b",
        "app:celeriac.terminate.c",
        "app:celeriac.terminate.d",
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut c).unwrap();
        assert!((1..=30).contains(&ttl), "{key}: {ttl}");
    }
    assert_eq!(
        broker
            .revoked(&["a".into(), "b".into(), "z".into()])
            .await
            .unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(
        broker
            .terminations(&["a".into(), "c".into()])
            .await
            .unwrap(),
        vec!["c".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_revoke_is_recorded_by_the_listener_for_three_hours() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    // With a global_keyprefix, kombu prefixes the pidbox channel as well.
    let broker = RedisBroker::open(&server.url("?global_keyprefix=app:")).unwrap();
    let _ = broker
        .claim("w", &["celery".to_string()], 1, Duration::from_millis(50))
        .await
        .unwrap();
    // What `app.control.revoke("p")` publishes (Celery 5.7, with
    // `broker_transport_options={"global_keyprefix": "app:"}`), repeated until
    // the listener, which subscribes in the background, has heard it.
    let body = r#"{"method": "revoke", "arguments": {"task_id": "p", "terminate": false, "signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}"#;
    let envelope = serde_json::json!({
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"clock": 1, "expires": unix_now() + 1.0},
        "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": "d"},
    })
    .to_string();
    let mut c = conn(&server);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ttl = loop {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("app:/0.celery.pidbox")
            .arg(&envelope)
            .query(&mut c)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ttl: i64 = redis::cmd("TTL")
            .arg("app:celeriac.revoked.p")
            .query(&mut c)
            .unwrap();
        if ttl > 0 || std::time::Instant::now() > deadline {
            break ttl;
        }
    };
    assert!(ttl > 3 * 3600 - 60, "recorded for Celery's 3 h: {ttl}");
}
