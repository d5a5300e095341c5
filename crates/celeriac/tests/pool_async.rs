//! The async pool (`async fn` tasks on tokio under a concurrency limit),
//! soft time limits on threads, and autoscale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::{
    Call, MemoryBackend, MemoryBroker, PoolKind, Registry, ResultBackend, ResultMeta, State,
    TaskContext, TaskErrorKind, Worker, WorkerBuilder, task,
};
use serde_json::json;

/// Sleeps on the tokio timer, not on a thread.
#[task(name = "async_test.sleep")]
async fn async_sleep(seconds: f64) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

/// Waits for its soft limit, checking its context between awaits.
#[task(name = "async_test.until_cancelled")]
async fn until_cancelled(ctx: &TaskContext) -> String {
    let start = Instant::now();
    while !ctx.is_cancelled() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    format!("cancelled={}", ctx.is_cancelled())
}

/// A blocking loop that honours its soft limit.
#[task(name = "async_test.blocking_cooperative")]
fn blocking_cooperative(ctx: &TaskContext) -> String {
    let start = Instant::now();
    while !ctx.is_cancelled() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    format!("cancelled={}", ctx.is_cancelled())
}

struct Setup {
    rt: tokio::runtime::Runtime,
    broker: Arc<MemoryBroker>,
    backend: Arc<MemoryBackend>,
}

impl Setup {
    fn new() -> Self {
        Setup {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            broker: Arc::new(MemoryBroker::new()),
            backend: Arc::new(MemoryBackend::new()),
        }
    }

    fn builder(&self) -> WorkerBuilder {
        let registry = Registry::linked(true).unwrap();
        Worker::builder(
            self.broker.clone(),
            self.backend.clone(),
            Arc::new(registry),
        )
    }

    fn send(&self, calls: Vec<Call<serde_json::Value>>) -> Vec<String> {
        self.rt
            .block_on(celeriac_testkit::send_calls(self.broker.as_ref(), calls))
    }

    fn start(&self, worker: &Worker) -> tokio::task::JoinHandle<()> {
        let w = worker.clone();
        self.rt.spawn(async move { w.run().await })
    }

    /// Waits for every result; panics after `within`.
    fn results(&self, ids: &[String], within: Duration) -> Vec<ResultMeta> {
        self.rt.block_on(async {
            let deadline = Instant::now() + within;
            let mut out = Vec::new();
            for id in ids {
                loop {
                    if let Some(m) = self.backend.get(id).await.unwrap()
                        && m.status.is_ready()
                    {
                        out.push(m);
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no result for {id} in {within:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            out
        })
    }
}

#[test]
fn a_thousand_one_second_async_tasks_run_at_once() {
    let s = Setup::new();
    let worker = s
        .builder()
        .pool_kind(PoolKind::Async)
        .concurrency(1000)
        .build()
        .unwrap();
    let ids = s.send(
        (0..1000)
            .map(|_| Call::new("async_test.sleep").arg(1.0))
            .collect(),
    );
    let start = Instant::now();
    let _run = s.start(&worker);
    let results = s.results(&ids, Duration::from_secs(60));
    let took = start.elapsed();
    assert!(
        results
            .iter()
            .all(|m| m.status == State::Success && m.result == json!(1.0))
    );
    // One after another they would take 1000 s; at once, about one.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    eprintln!("1000 × 1 s async tasks at concurrency 1000: {took:?}");
    worker.shutdown();
}

#[test]
fn async_hard_limit_cancels_the_future_and_soft_limit_is_seen() {
    let s = Setup::new();
    let worker = s
        .builder()
        .pool_kind(PoolKind::Async)
        .concurrency(10)
        .build()
        .unwrap();
    let ids = s.send(vec![
        Call::new("async_test.sleep")
            .arg(30.0)
            .time_limits(Some(0.5), None),
        Call::new("async_test.until_cancelled").time_limits(None, Some(0.2)),
    ]);
    let start = Instant::now();
    let _run = s.start(&worker);
    let r = s.results(&ids, Duration::from_secs(20));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(r[0].status, State::Failure);
    assert_eq!(r[0].result["exc_type"], "TimeLimitExceeded");
    assert_eq!(r[1].result, json!("cancelled=true"));
    worker.shutdown();
}

#[test]
fn blocking_tasks_on_an_async_worker_never_block_the_executor() {
    let s = Setup::new();
    let worker = s
        .builder()
        .pool_kind(PoolKind::Async)
        .concurrency(50)
        .build()
        .unwrap();
    // Far more blocking sleeps than runtime threads: were they run on the
    // executor, the async task behind them would wait for them.
    let mut calls: Vec<Call<serde_json::Value>> = (0..8)
        .map(|_| Call::new("celeriac.sleep").arg(1.0))
        .collect();
    calls.push(Call::new("async_test.sleep").arg(0.01));
    let ids = s.send(calls);
    let start = Instant::now();
    let _run = s.start(&worker);
    s.results(&ids[8..], Duration::from_secs(20));
    let quick = start.elapsed();
    assert!(
        quick < Duration::from_millis(900),
        "async task waited {quick:?}"
    );
    let r = s.results(&ids[..8], Duration::from_secs(30));
    assert!(r.iter().all(|m| m.status == State::Success));
    worker.shutdown();
}

#[test]
fn soft_limit_on_the_thread_pool_is_observed() {
    let s = Setup::new();
    let worker = s
        .builder()
        .concurrency(2)
        .soft_time_limit(Duration::from_millis(200))
        .build()
        .unwrap();
    let ids = s.send(vec![Call::new("async_test.blocking_cooperative")]);
    let start = Instant::now();
    let _run = s.start(&worker);
    let r = s.results(&ids, Duration::from_secs(20));
    assert_eq!(r[0].result, json!("cancelled=true"));
    assert!(start.elapsed() < Duration::from_secs(5));
    worker.shutdown();
}

#[test]
fn an_async_task_on_a_blocking_executor_is_a_typed_error() {
    let registry = Registry::linked(false).unwrap();
    let task = registry.get("async_test.sleep").unwrap();
    assert!(task.is_async());
    let err = task
        .invoke(
            &TaskContext::detached("async_test.sleep"),
            celeriac::Args::new(vec![json!(0.0)], Default::default()),
        )
        .unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::Failed);
    assert!(err.message().contains("async pool"), "{err}");
}

#[test]
fn autoscale_grows_with_the_queue_and_shrinks_when_idle() {
    let s = Setup::new();
    let worker = s
        .builder()
        .autoscale(1, 4)
        .autoscale_keepalive(Duration::from_millis(500))
        .build()
        .unwrap();
    assert_eq!(worker.concurrency(), 1);
    let ids = s.send(
        (0..60)
            .map(|_| Call::new("celeriac.sleep").arg(0.05))
            .collect(),
    );
    let _run = s.start(&worker);
    let t = Instant::now();
    let mut peak = 0;
    while t.elapsed() < Duration::from_secs(20) && peak < 4 {
        peak = peak.max(worker.concurrency());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(peak, 4, "grew to the maximum while messages waited");
    let r = s.results(&ids, Duration::from_secs(60));
    assert!(r.iter().all(|m| m.status == State::Success), "no task lost");
    let t = Instant::now();
    while worker.concurrency() != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "never shrank");
        std::thread::sleep(Duration::from_millis(20));
    }
    worker.shutdown();
}
