//! Celery's events on Redis: the channels kombu's fanout uses (with the
//! database and `global_keyprefix`), and a subscription that outlives a
//! Redis restart. Each test runs its own private `redis-server`.

use std::time::Duration;

use base64::Engine as _;
use celeriac_core::broker::prelude::*;
use celeriac_core::broker::{EventMessage, EventStream};
use celeriac_redis::RedisBroker;
use celeriac_testkit::redis_server::RedisServer;
use futures::StreamExt;
use serde_json::Value;

fn heartbeat(host: &str) -> EventMessage {
    EventMessage {
        routing_key: "worker.heartbeat".into(),
        hostname: host.into(),
        body: format!(r#"{{"hostname": "{host}", "type": "worker-heartbeat"}}"#).into_bytes(),
    }
}

async fn next(stream: &mut EventStream) -> EventMessage {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an event within 20 s")
            .expect("the subscription stays open");
        match item {
            Ok(m) => return m,
            // A lost connection is reported, and the subscription goes on.
            Err(e) => eprintln!("subscription: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_on_kombus_fanout_channels_of_their_db_and_prefix() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    // A raw subscriber, as kombu's receiver subscribes on database 3.
    let client = redis::Client::open(server.url("")).unwrap();
    let mut raw = client.get_async_pubsub().await.unwrap();
    raw.psubscribe("/3.celeryev/*").await.unwrap();
    raw.psubscribe("app:/3.celeryev/*").await.unwrap();
    let mut raw = raw.into_on_message();

    let url = server.url("").replace("/0", "/3");
    let plain = RedisBroker::open(&url).unwrap();
    let prefixed = RedisBroker::open(&format!("{url}?global_keyprefix=app:")).unwrap();
    let mut plain_sub = plain.subscribe_events().await.unwrap();
    let mut prefixed_sub = prefixed.subscribe_events().await.unwrap();

    plain.send_events(&[heartbeat("a@h")]).await.unwrap();
    prefixed.send_events(&[heartbeat("b@h")]).await.unwrap();

    for (channel, host) in [
        ("/3.celeryev/worker.heartbeat", "a@h"),
        ("app:/3.celeryev/worker.heartbeat", "b@h"),
    ] {
        let msg = tokio::time::timeout(Duration::from_secs(10), raw.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_channel_name(), channel);
        let env: Value = serde_json::from_slice(&msg.get_payload::<Vec<u8>>().unwrap()).unwrap();
        assert_eq!(env["headers"]["hostname"], host);
        assert_eq!(env["properties"]["delivery_info"]["exchange"], "celeryev");
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(body, heartbeat(host).body);
    }
    // Each broker's subscriber sees its own prefix's events only.
    assert_eq!(next(&mut plain_sub).await, heartbeat("a@h"));
    assert_eq!(next(&mut prefixed_sub).await, heartbeat("b@h"));
    plain.send_events(&[heartbeat("c@h")]).await.unwrap();
    assert_eq!(next(&mut plain_sub).await, heartbeat("c@h"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), prefixed_sub.next())
            .await
            .is_err(),
        "a prefixed subscriber sees only its prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_outlives_a_redis_restart() {
    if !RedisServer::available() {
        return;
    }
    let mut server = RedisServer::start();
    let broker = RedisBroker::open(&server.url("")).unwrap();
    let mut sub = broker.subscribe_events().await.unwrap();
    broker.send_events(&[heartbeat("before@h")]).await.unwrap();
    assert_eq!(next(&mut sub).await, heartbeat("before@h"));

    let _server = tokio::task::spawn_blocking(move || {
        server.restart(Duration::from_millis(500));
        server
    })
    .await
    .unwrap();
    // Until the subscriber is back, events are lost (as with Celery), so
    // send until one arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = broker.send_events(&[heartbeat("after@h")]).await;
        match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            Ok(Some(Ok(m))) => {
                assert_eq!(m, heartbeat("after@h"));
                break;
            }
            Ok(Some(Err(e))) => eprintln!("subscription: {e}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event after the restart"
        );
    }
}
