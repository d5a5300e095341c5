//! Subtasks: a task submits subtasks and waits for them without deadlock,
//! at concurrency 1, on memory://, sqlite:// and a private Redis.

use std::sync::Arc;
use std::time::Duration;

use celeriac::{
    Call, JobError, MemoryBackend, MemoryBroker, Outgoing, Registry, ResultBackend, Server,
    SubtaskError, TaskContext, TaskError, Transport, Worker, task,
};
use celeriac_testkit::redis_server::RedisServer;

const WAIT: Duration = Duration::from_secs(60);

#[task(name = "subtasks.square")]
fn square(x: i64) -> i64 {
    x * x
}

/// Submits `n` squares and waits for them all.
#[task(name = "subtasks.fan_out")]
fn fan_out(ctx: &TaskContext, n: i64) -> Result<i64, TaskError> {
    let parts = ctx.submit_all((0..n).map(square::call))?;
    Ok(ctx.wait_all(&parts)?.into_iter().sum())
}

/// The same from an `async fn`.
#[task(name = "subtasks.fan_out_async")]
async fn fan_out_async(ctx: &TaskContext, n: i64) -> Result<i64, TaskError> {
    let parts = ctx.submit_all_async((0..n).map(square::call)).await?;
    Ok(ctx.wait_all_async(&parts).await?.into_iter().sum())
}

#[task(name = "subtasks.fail")]
fn fail(why: String) -> Result<i64, TaskError> {
    Err(TaskError::typed("ValueError", "builtins", why))
}

/// Waits on a subtask that fails; the failure becomes its own.
#[task(name = "subtasks.waits_on_failure")]
fn waits_on_failure(ctx: &TaskContext) -> Result<i64, TaskError> {
    let ok = ctx.submit(square::call(3))?;
    let bad = ctx.submit(fail::call("bad input".into()))?;
    let nine = ctx.wait(&ok)?;
    match ctx.wait(&bad) {
        Err(SubtaskError::Failed(e)) => Err(e),
        other => Ok(nine + other?),
    }
}

/// A tree of waits: each level submits two of the level below and waits.
#[task(name = "subtasks.nested")]
fn nested(ctx: &TaskContext, depth: u32) -> Result<u64, TaskError> {
    if depth == 0 {
        return Ok(1);
    }
    let kids = ctx.submit_all([nested::call(depth - 1), nested::call(depth - 1)])?;
    Ok(ctx.wait_all(&kids)?.into_iter().sum())
}

/// An async task in the middle of blocking ones.
#[task(name = "subtasks.nested_async")]
async fn nested_async(ctx: &TaskContext, depth: u32) -> Result<u64, TaskError> {
    let kid = ctx.submit_async(nested::call(depth)).await?;
    Ok(ctx.wait_async(&kid).await? + 1)
}

/// Who a subtask's message says its parent and root are.
#[task(name = "subtasks.lineage")]
fn lineage(ctx: &TaskContext) -> (Option<String>, Option<String>) {
    (
        ctx.parent_id().map(str::to_string),
        ctx.root_id().map(str::to_string),
    )
}

#[task(name = "subtasks.spawn_lineage")]
fn spawn_lineage(ctx: &TaskContext) -> Result<(String, Option<String>, Option<String>), TaskError> {
    let kid = ctx.submit(lineage::call())?;
    let (parent, root) = ctx.wait(&kid)?;
    Ok((kid.id().to_string(), parent, root))
}

/// Waits on a subtask that outlasts its hard time limit.
#[task(name = "subtasks.waits_too_long")]
async fn waits_too_long(ctx: &TaskContext) -> Result<f64, TaskError> {
    let kid = ctx
        .submit_async(celeriac::builtins::sleep::call(1.5))
        .await?;
    Ok(ctx.wait_async(&kid).await?)
}

static KEPT: std::sync::Mutex<Option<TaskContext>> = std::sync::Mutex::new(None);

/// Keeps its context past its run.
#[task(name = "subtasks.keeps_ctx")]
fn keeps_ctx(ctx: &TaskContext) -> i64 {
    *KEPT.lock().unwrap() = Some(ctx.clone());
    1
}

/// A blocking wait called from an async task is refused, not a deadlock.
#[task(name = "subtasks.blocks_runtime")]
async fn blocks_runtime(ctx: &TaskContext) -> Result<i64, TaskError> {
    let kid = ctx.submit_async(square::call(2)).await?;
    Ok(ctx.wait(&kid)?)
}

fn server(broker: &str) -> Server {
    Server::builder()
        .broker(broker)
        .backend(broker)
        .workers(1)
        .build()
        .unwrap()
}

/// Every case, on one broker, with one execution slot.
fn at_concurrency_one(url: &str) {
    let s = server(url);
    assert_eq!(s.workers(), 1);
    let sum: i64 = (0..10).map(|i| i * i).sum();
    assert_eq!(s.submit(fan_out::call(10)).wait_timeout(WAIT).unwrap(), sum);
    assert_eq!(
        s.submit(fan_out_async::call(10))
            .wait_timeout(WAIT)
            .unwrap(),
        sum
    );

    let err = s
        .submit(waits_on_failure::call())
        .wait_timeout(WAIT)
        .unwrap_err();
    let te = err.task_error().expect("the subtask's failure");
    assert_eq!((te.exc_type(), te.message()), ("ValueError", "bad input"));

    // 2^3 leaves, 7 tasks waiting on the way down, one slot.
    assert_eq!(s.submit(nested::call(3)).wait_timeout(WAIT).unwrap(), 8);
    assert_eq!(
        s.submit(nested_async::call(2)).wait_timeout(WAIT).unwrap(),
        5
    );

    let parent = s.submit(spawn_lineage::call());
    let (kid, kid_parent, kid_root) = parent.wait_timeout(WAIT).unwrap();
    assert_eq!(kid_parent.as_deref(), Some(parent.id()), "parent_id");
    assert_eq!(kid_root.as_deref(), Some(parent.id()), "root_id");
    assert_ne!(kid, parent.id());

    // Several parents at once still finish on one slot.
    let many: Vec<_> = (0..4).map(|_| s.submit(fan_out::call(5))).collect();
    for job in many {
        assert_eq!(job.wait_timeout(WAIT).unwrap(), 30);
    }
    s.destroy();
}

#[test]
fn a_task_waits_on_its_subtasks_at_concurrency_one_on_memory() {
    at_concurrency_one("memory://subtasks-memory");
}

#[test]
fn a_task_waits_on_its_subtasks_at_concurrency_one_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    at_concurrency_one(&url);
}

#[test]
fn a_task_waits_on_its_subtasks_at_concurrency_one_on_redis() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    at_concurrency_one(&redis.url(""));
}

#[test]
fn a_blocking_wait_in_an_async_task_is_a_typed_error() {
    let s = server("memory://subtasks-blocking");
    let err = s
        .submit(blocks_runtime::call())
        .wait_timeout(WAIT)
        .unwrap_err();
    let JobError::Task(te) = err else {
        panic!("a task error, got {err}")
    };
    assert_eq!(te.exc_type(), "RuntimeError");
    assert!(te.message().contains("wait_async"), "{te}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_cut_short_by_the_time_limit_leaves_the_slot_counts_right() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let registry = Registry::linked(false).unwrap();
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(1)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let run = |call: Call<serde_json::Value>| {
        let (broker, backend) = (broker.clone(), backend.clone());
        async move {
            let msg = call.to_message().unwrap();
            let watch = backend.watch(msg.id()).await.unwrap();
            broker
                .publish(Outgoing::from_message(&msg).unwrap())
                .await
                .unwrap();
            tokio::time::timeout(WAIT, watch).await.unwrap().unwrap()
        }
    };
    // The async task is dropped at its hard limit in the middle of its
    // wait, its slot given up.
    let cut = run(waits_too_long::call().cast().time_limits(Some(0.3), None)).await;
    assert_eq!(cut.error().exc_type(), "TimeLimitExceeded");
    // The slot came back: waits still work at concurrency 1, and once all
    // is done no slot is counted as busy.
    let sum = run(fan_out::call(4).cast()).await;
    assert_eq!(sum.result, 14);
    let deadline = std::time::Instant::now() + WAIT;
    while worker.stats().active != 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", worker.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown();
    running.await.unwrap();
}

#[test]
fn a_context_kept_past_its_task_can_no_longer_submit() {
    let s = server("memory://subtasks-kept");
    assert_eq!(s.submit(keeps_ctx::call()).wait_timeout(WAIT).unwrap(), 1);
    let ctx = KEPT
        .lock()
        .unwrap()
        .take()
        .expect("the task kept its context");
    let err = ctx.submit(square::call(2)).unwrap_err();
    assert!(matches!(err, SubtaskError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("finished"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parents_result_lists_its_subtasks_as_children() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let registry = Registry::linked(false).unwrap();
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(1)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let msg = Call::<i64>::new("subtasks.fan_out")
        .arg(3)
        .to_message()
        .unwrap();
    let watch = backend.watch(msg.id()).await.unwrap();
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();
    let meta = tokio::time::timeout(WAIT, watch).await.unwrap().unwrap();
    assert_eq!(meta.result, 5);
    assert_eq!(meta.children.len(), 3, "{:?}", meta.children);
    for child in &meta.children {
        let id = child[0][0].as_str().expect("[[id, null], null]");
        let kid = backend.get(id).await.unwrap().expect("the child's result");
        assert_eq!(kid.status, celeriac::State::Success);
    }
    worker.shutdown();
    running.await.unwrap();
}
