//! The result subscription survives its connection being killed.

use std::time::Duration;

use celeriac_core::{ResultBackend, ResultMeta, State};
use celeriac_redis::RedisBackend;
use celeriac_testkit::redis_server::RedisServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_still_delivers_the_result() {
    if !RedisServer::available() {
        return;
    }
    // Its own server: killing every subscription must not touch other tests.
    let server = RedisServer::start();
    let url = server.url("");
    let watcher = RedisBackend::open(&url).unwrap();
    let writer = RedisBackend::open(&url).unwrap();
    let watch = watcher.watch("t-killed").await.unwrap();

    // Drop every pub/sub connection on the server, as a Redis failover or a
    // proxy timeout would.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "the watcher's subscription was killed");

    writer
        .store(&ResultMeta::success("t-killed", json!("still here")))
        .await
        .unwrap();
    let meta = tokio::time::timeout(Duration::from_secs(15), watch)
        .await
        .expect("the watch resolves after the subscription is lost")
        .unwrap();
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result, json!("still here"));
}
