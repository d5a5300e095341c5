//! A dropped result backend stops its listener and closes its
//! subscription, instead of leaving a task and a connection behind that
//! later report a "lost" subscription when the process exits.

use std::time::{Duration, Instant};

use celeriac_core::{ResultBackend, ResultMeta, State};
use celeriac_redis::RedisBackend;
use celeriac_testkit::redis_server::RedisServer;
use serde_json::json;

/// The server's pub/sub connections.
async fn pubsub_clients(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

async fn wait_for_no_subscription(conn: &mut redis::aio::MultiplexedConnection) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pubsub_clients(conn).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the subscription is still open 15 s after the backend was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_backend_closes_its_result_subscription() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let backend = RedisBackend::open(&url).unwrap();
    let watch = backend.watch("t-never").await.unwrap();
    // The watch subscribes in the background (its SUBSCRIBE may land after
    // `watch` returns).
    let deadline = Instant::now() + Duration::from_secs(15);
    while pubsub_clients(&mut conn).await == 0 {
        assert!(Instant::now() < deadline, "the listener never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        pubsub_clients(&mut conn).await,
        1,
        "one subscription for the backend"
    );
    drop(watch);
    drop(backend);
    wait_for_no_subscription(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outliving_its_backend_still_gets_its_result_then_the_subscription_closes() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let backend = RedisBackend::open(&url).unwrap();
    let watch = backend.watch("t-later").await.unwrap();
    drop(backend);
    let writer = RedisBackend::open(&url).unwrap();
    writer
        .store(&ResultMeta::success("t-later", json!(1)))
        .await
        .unwrap();
    let meta = tokio::time::timeout(Duration::from_secs(15), watch)
        .await
        .expect("the result arrives")
        .unwrap();
    assert_eq!(meta.status, State::Success);
    drop(writer);
    wait_for_no_subscription(&mut conn).await;
}
