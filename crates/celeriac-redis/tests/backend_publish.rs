//! A stored result is published on its channel, to whoever listens there
//! by channel (Celery's clients wait on it through `SUBSCRIBE`) or by
//! pattern (a monitor), results of a batch nobody waits for included.

use std::time::Duration;

use celeriac_core::{ResultBackend, ResultMeta};
use celeriac_redis::RedisBackend;
use celeriac_testkit::redis_server::RedisServer;
use futures::StreamExt;
use serde_json::json;

/// The next message of `stream` as (channel, payload), within 10 s.
async fn next(stream: &mut redis::aio::PubSubStream) -> (String, String) {
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a result published within 10 s")
        .expect("the subscription is open");
    (
        msg.get_channel_name().to_string(),
        msg.get_payload().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_is_published_to_its_subscriber_and_to_pattern_subscribers() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start();
    let url = server.url("");
    let client = redis::Client::open(url.as_str()).unwrap();
    let (mut one, mut one_stream) = client.get_async_pubsub().await.unwrap().split();
    one.subscribe("celery-task-meta-t1").await.unwrap();
    let backend = RedisBackend::open(&url).unwrap();

    // Nobody listens to t0's channel, someone to t1's: both are stored in
    // one batch, and t1's subscriber gets t1's result.
    backend
        .store_many(&[
            ResultMeta::success("t0", json!(0)),
            ResultMeta::success("t1", json!(1)),
        ])
        .await
        .unwrap();
    let (channel, payload) = next(&mut one_stream).await;
    assert_eq!(channel, "celery-task-meta-t1");
    let meta: ResultMeta = serde_json::from_str(&payload).unwrap();
    assert_eq!((meta.task_id.as_str(), &meta.result), ("t1", &json!(1)));
    assert_eq!(
        backend.get("t0").await.unwrap().map(|m| m.result),
        Some(json!(0)),
        "a result nobody listens for is stored all the same"
    );

    // A pattern subscriber (a monitor on `celery-task-meta-*`) gets every
    // result, those no channel subscriber waits for included.
    let (mut all, mut all_stream) = client.get_async_pubsub().await.unwrap().split();
    all.psubscribe("celery-task-meta-*").await.unwrap();
    backend
        .store_many(&[
            ResultMeta::success("t2", json!(2)),
            ResultMeta::success("t3", json!(3)),
        ])
        .await
        .unwrap();
    let mut got = vec![next(&mut all_stream).await.0, next(&mut all_stream).await.0];
    got.sort();
    assert_eq!(got, ["celery-task-meta-t2", "celery-task-meta-t3"]);
}
