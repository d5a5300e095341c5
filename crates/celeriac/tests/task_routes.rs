//! Task routes send calls to queues by task name or glob; only workers
//! consuming that queue run them.

use std::sync::Arc;
use std::time::Duration;

use celeriac::builtins::{add, fib};
use celeriac::{Registry, Server, Worker, open_backend, open_broker};

#[test]
fn routed_tasks_reach_only_the_workers_of_their_queue() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/routes.db", dir.path().display());
    // A pure client that routes celeriac.fib to "cpu".
    let client = Server::builder()
        .broker(&url)
        .workers(0)
        .route("celeriac.f*", "cpu")
        .build()
        .unwrap();
    let routed = client.submit(fib::call(20));
    let plain = client.submit(add::call(2.into(), 3.into()));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = open_broker(&url).unwrap();
    rt.block_on(async {
        // Both wait in their own queues.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while broker.queue_len("cpu").await.unwrap() + broker.queue_len("celery").await.unwrap() < 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "jobs were not published"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(broker.queue_len("cpu").await.unwrap(), 1);
        assert_eq!(broker.queue_len("celery").await.unwrap(), 1);
    });
    // A worker for "cpu" only: it runs fib, and add stays queued.
    let worker = Worker::builder(
        open_broker(&url).unwrap(),
        open_backend(&url).unwrap(),
        Arc::new(Registry::linked(false).unwrap()),
    )
    .queues(["cpu"])
    .concurrency(1)
    .build()
    .unwrap();
    let running = rt.spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    assert_eq!(routed.wait_timeout(Duration::from_secs(30)).unwrap(), 6765);
    assert!(
        !plain.ready(),
        "the unrouted task is not taken by the cpu worker"
    );
    worker.shutdown();
    rt.block_on(running).unwrap();
    assert_eq!(rt.block_on(broker.queue_len("celery")).unwrap(), 1);
}

#[test]
fn the_local_worker_consumes_routed_queues() {
    let s = Server::builder()
        .workers(1)
        .route("celeriac.fib", "cpu")
        .build()
        .unwrap();
    assert_eq!(
        s.submit(fib::call(15))
            .wait_timeout(Duration::from_secs(30))
            .unwrap(),
        610
    );
    assert_eq!(
        s.submit(add::call(1.into(), 1.into()))
            .wait_timeout(Duration::from_secs(30))
            .unwrap(),
        serde_json::json!(2)
    );
}
