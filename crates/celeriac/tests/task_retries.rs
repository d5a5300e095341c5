//! Retries with Celery's semantics: same task id, `retries + 1`, a RETRY
//! state, backoff, `max_retries`, `autoretry_for` and retryable errors.

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
