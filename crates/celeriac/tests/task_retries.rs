//! Retries with Celery's semantics: same task id, `retries + 1`, a RETRY
//! state, backoff, `max_retries`, `autoretry_for` and retryable errors; and
//! the other states a task stores before its outcome (STARTED, and its own
//! with `update_state`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celeriac::builtins::flaky;
use celeriac::prelude::*;
use celeriac::{
    Call, MemoryBackend, MemoryBroker, Outgoing, Registry, ResultBackend, Server, State,
    TaskContext, TaskError, Worker, task,
};

const WAIT: Duration = Duration::from_secs(60);

static AUTO_ATTEMPTS: AtomicU32 = AtomicU32::new(0);
static EXPLICIT_ATTEMPTS: AtomicU32 = AtomicU32::new(0);
static RETRYABLE_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[task(
    name = "retries.value_error",
    max_retries = 2,
    autoretry_for("ValueError"),
    retry_backoff = 0.01,
    retry_jitter = false
)]
fn value_error() -> Result<(), TaskError> {
    AUTO_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    Err(TaskError::typed("ValueError", "builtins", "nope"))
}

#[task(name = "retries.explicit", max_retries = 1)]
fn explicit(ctx: &TaskContext) -> Result<(), TaskError> {
    EXPLICIT_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    Err(ctx.retry(Duration::from_millis(10)))
}

#[task(
    name = "retries.transient",
    max_retries = 5,
    default_retry_delay = 0.01
)]
fn transient(ctx: &TaskContext) -> Result<u32, TaskError> {
    RETRYABLE_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    if ctx.retries() < 2 {
        return Err(TaskError::new("connection reset").retryable());
    }
    Ok(ctx.retries())
}

fn server() -> Server {
    Server::builder()
        .workers(2)
        .diagnostic_tasks(true)
        .build()
        .unwrap()
}

#[test]
fn three_retries_with_backoff_succeed_on_the_fourth_try() {
    let s = server();
    let job = s.submit(flaky::call(3));
    assert_eq!(
        job.wait_timeout(WAIT).unwrap(),
        3,
        "it ran with retries 0, 1, 2, then 3"
    );
}

#[test]
fn autoretry_gives_up_after_max_retries_with_the_original_error() {
    let s = server();
    let err = s
        .submit(value_error::call())
        .wait_timeout(WAIT)
        .unwrap_err();
    let te = err.task_error().unwrap();
    assert_eq!((te.exc_type(), te.message()), ("ValueError", "nope"));
    assert_eq!(
        AUTO_ATTEMPTS.load(Ordering::SeqCst),
        3,
        "1 try + max_retries 2"
    );
}

#[test]
fn explicit_retries_past_the_limit_fail_with_max_retries_exceeded() {
    let s = server();
    let err = s.submit(explicit::call()).wait_timeout(WAIT).unwrap_err();
    let te = err.task_error().unwrap();
    assert_eq!(te.exc_type(), "MaxRetriesExceededError");
    assert!(
        te.message().contains("Can't retry retries.explicit["),
        "{}",
        te.message()
    );
    assert_eq!(EXPLICIT_ATTEMPTS.load(Ordering::SeqCst), 2);
}

#[test]
fn retryable_errors_are_retried_under_the_policy() {
    let s = server();
    assert_eq!(s.submit(transient::call()).wait_timeout(WAIT).unwrap(), 2);
    assert_eq!(RETRYABLE_ATTEMPTS.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_state_is_stored_between_attempts_with_the_same_id() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let worker = Worker::builder(
        broker.clone(),
        backend.clone(),
        Arc::new(Registry::linked(true).unwrap()),
    )
    .concurrency(2)
    .build()
    .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let msg = Call::<u32>::new("celeriac.flaky")
        .arg(3)
        .to_message()
        .unwrap();
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(meta) = backend.get(msg.id()).await.unwrap() {
            if seen.last() != Some(&meta.status) {
                seen.push(meta.status.clone());
            }
            if meta.status.is_ready() {
                assert_eq!(meta.result, 3);
                assert_eq!(meta.retries, Some(3), "the final attempt is retries = 3");
                break;
            }
            if meta.status == State::Retry {
                let err = meta.error();
                assert_eq!(err.exc_type(), "Retry");
            }
        }
        assert!(Instant::now() < deadline, "no final state; saw {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.first(), Some(&State::Retry));
    assert_eq!(seen.last(), Some(&State::Success));
    assert_eq!(worker.stats().retried, 3);
    worker.shutdown();
    running.await.unwrap();
}

/// Set by the test once it has seen the PROGRESS a task stored.
static PROGRESS_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn until_progress_seen() {
    let deadline = Instant::now() + WAIT;
    while !PROGRESS_SEEN.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stores PROGRESS from an async task, then says whether the blocking form
/// was refused on the runtime's thread and a final state refused.
#[task(name = "states.report_async")]
async fn report_async(ctx: &TaskContext, step: u32) -> Result<(bool, bool), TaskError> {
    ctx.update_state_async("PROGRESS", serde_json::json!({"step": step}))
        .await?;
    until_progress_seen().await;
    let blocked = matches!(
        ctx.update_state("PROGRESS", serde_json::json!({})),
        Err(celeriac::StateError::WouldBlock)
    );
    let final_refused = matches!(
        ctx.update_state_async("SUCCESS", serde_json::json!(1))
            .await,
        Err(celeriac::StateError::Final(_))
    );
    Ok((blocked, final_refused))
}

/// Stores PROGRESS from a blocking task on the thread pool.
#[task(name = "states.report")]
fn report(ctx: &TaskContext, step: u32) -> Result<u32, TaskError> {
    ctx.update_state("PROGRESS", serde_json::json!({"step": step}))?;
    let deadline = Instant::now() + WAIT;
    while !PROGRESS_SEEN.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_state_is_stored_while_the_task_runs_and_the_result_replaces_it() {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let mut registry = Registry::new();
    registry.register::<report_async>().unwrap();
    registry.register::<report>().unwrap();
    let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
        .concurrency(2)
        .track_started(true)
        .build()
        .unwrap();
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    for (call, step, result) in [
        (
            report_async::call(7).cast(),
            7,
            serde_json::json!([true, true]),
        ),
        (report::call(8).cast(), 8, serde_json::json!(8)),
    ] {
        PROGRESS_SEEN.store(false, Ordering::SeqCst);
        let call: Call<serde_json::Value> = call;
        let msg = call.to_message().unwrap();
        let watch = backend.watch(msg.id()).await.unwrap();
        broker
            .publish(Outgoing::from_message(&msg).unwrap())
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let progress = loop {
            let meta = backend.get(msg.id()).await.unwrap();
            if let Some(m) = meta.filter(|m| m.status == State::Custom("PROGRESS".into())) {
                break m;
            }
            assert!(Instant::now() < deadline, "no PROGRESS for {}", msg.task());
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(progress.result["step"], step, "{progress:?}");
        assert!(progress.date_done.is_none(), "not ready: {progress:?}");
        assert_eq!(progress.name.as_deref(), Some(msg.task()), "{progress:?}");
        PROGRESS_SEEN.store(true, Ordering::SeqCst);
        let done = tokio::time::timeout(WAIT, watch).await.unwrap().unwrap();
        assert_eq!(done.status, State::Success);
        assert_eq!(done.result, result);
    }
    worker.shutdown();
    running.await.unwrap();
}
