//! The contract every [`Executor`] keeps, as async test functions, run by
//! each executor's tests as the broker contract is run by each broker:
//!
//! ```ignore
//! let registry = celeriac_testkit::executor::contract_registry();
//! celeriac_testkit::executor::run_contract(&ThreadExecutor::new(pool), &registry).await;
//! ```
//!
//! A process executor's children must know the contract's tasks: its test
//! binary calls `celeriac_pool::process::init_child(contract_registry)`
//! first thing in `main` (`harness = false`).
//!
//! Each claim of [`Executor::limits`] is checked both ways: a hard time
//! limit, a crash and a terminate end the task as the executor says it
//! can, and an executor that says it cannot still returns the task's own
//! result instead of hanging or losing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::{
    Args, Executor, PoolKind, Ran, Registry, TaskContext, TaskError, TaskErrorKind, TaskOptions,
};
use serde_json::{Value, json};

/// Sleeps `secs` seconds in 5 ms steps, returning `"cancelled"` as soon as
/// its context is cancelled, else `"finished"`.
pub const SLEEP: &str = "contract.sleep";
/// [`SLEEP`] as an `async fn`, for the async executor.
pub const SLEEP_ASYNC: &str = "contract.sleep_async";
/// Returns its first argument.
pub const ECHO: &str = "contract.echo";
/// [`ECHO`] as an `async fn`.
pub const ECHO_ASYNC: &str = "contract.echo_async";
/// Panics with the message `"contract panic"`.
pub const PANIC: &str = "contract.panic";
/// [`PANIC`] as an `async fn`.
pub const PANIC_ASYNC: &str = "contract.panic_async";
/// Aborts its process (only ever run on an executor that isolates
/// crashes).
pub const ABORT: &str = "contract.abort";

/// The tasks the contract runs.
pub fn contract_registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn(SLEEP, |ctx, args| {
        let secs: f64 = args.bind(SLEEP, &["secs"])?.take(0)?;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            if ctx.is_cancelled() {
                return Ok(json!("cancelled"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(json!("finished"))
    })
    .expect("a fresh registry");
    r.register_async_fn(SLEEP_ASYNC, TaskOptions::new(), |ctx, args| async move {
        let secs: f64 = args.bind(SLEEP_ASYNC, &["secs"])?.take(0)?;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            if ctx.is_cancelled() {
                return Ok(json!("cancelled"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(json!("finished"))
    })
    .expect("a fresh registry");
    r.register_fn(ECHO, |_, args| {
        args.bind(ECHO, &["value"])?.take::<Value>(0)
    })
    .expect("a fresh registry");
    r.register_async_fn(ECHO_ASYNC, TaskOptions::new(), |_, args| async move {
        args.bind(ECHO_ASYNC, &["value"])?.take::<Value>(0)
    })
    .expect("a fresh registry");
    r.register_fn(PANIC, |_, _| -> Result<Value, TaskError> {
        panic!("contract panic")
    })
    .expect("a fresh registry");
    r.register_async_fn(PANIC_ASYNC, TaskOptions::new(), |_, _| async move {
        panic!("contract panic")
    })
    .expect("a fresh registry");
    r.register_fn(ABORT, |_, _| -> Result<Value, TaskError> {
        std::process::abort()
    })
    .expect("a fresh registry");
    r
}

/// Runs every contract test on `ex`.
pub async fn run_contract(ex: &dyn Executor, registry: &Registry) {
    returns_the_result(ex, registry).await;
    a_panic_is_a_typed_failure_and_the_executor_keeps_serving(ex, registry).await;
    the_soft_limit_cancels_the_context(ex, registry).await;
    the_hard_limit_stops_the_task_where_enforced(ex, registry).await;
    terminate_stops_the_running_task(ex, registry).await;
    a_crash_fails_only_its_task_where_isolated(ex, registry).await;
    terminate_of_an_unknown_task_finds_nothing(ex);
}

/// The task name to use on `ex`: the async variant on the async executor.
fn pick(ex: &dyn Executor, blocking: &'static str, asynchronous: &'static str) -> &'static str {
    if ex.kind() == PoolKind::Async {
        asynchronous
    } else {
        blocking
    }
}

fn call(name: &str, args: Vec<Value>) -> (TaskContext, Args) {
    (
        TaskContext::detached(name),
        Args::new(args, Default::default()),
    )
}

async fn run(
    ex: &dyn Executor,
    registry: &Registry,
    name: &str,
    ctx: TaskContext,
    args: Args,
) -> Ran {
    let task = Arc::clone(registry.get(name).expect("a contract task"));
    tokio::time::timeout(Duration::from_secs(30), ex.execute(&task, ctx, args))
        .await
        .unwrap_or_else(|_| panic!("{:?}: {name} did not end within 30 s", ex.kind()))
        .unwrap_or_else(|| panic!("{:?}: the executor is shut down", ex.kind()))
}

/// A task's return value comes back as is, with its runtime.
pub async fn returns_the_result(ex: &dyn Executor, registry: &Registry) {
    let name = pick(ex, ECHO, ECHO_ASYNC);
    let (ctx, args) = call(name, vec![json!({"n": [1, 2, 3]})]);
    let ran = run(ex, registry, name, ctx, args).await;
    assert_eq!(ran.result.expect("echo succeeds"), json!({"n": [1, 2, 3]}));
    let name = pick(ex, SLEEP, SLEEP_ASYNC);
    let (ctx, args) = call(name, vec![json!(0.05)]);
    let ran = run(ex, registry, name, ctx, args).await;
    assert_eq!(ran.result.expect("sleep succeeds"), json!("finished"));
    assert!(
        ran.runtime >= Duration::from_millis(50),
        "{:?}: runtime {:?} is less than the task slept",
        ex.kind(),
        ran.runtime
    );
}

/// A panic is a `Panicked` failure with its message, and the next task runs.
pub async fn a_panic_is_a_typed_failure_and_the_executor_keeps_serving(
    ex: &dyn Executor,
    registry: &Registry,
) {
    let name = pick(ex, PANIC, PANIC_ASYNC);
    let (ctx, args) = call(name, vec![]);
    let err = run(ex, registry, name, ctx, args)
        .await
        .result
        .expect_err("a panic is a failure");
    assert_eq!(
        err.kind(),
        TaskErrorKind::Panicked,
        "{:?}: {err}",
        ex.kind()
    );
    assert!(
        err.message().contains("contract panic"),
        "{:?}: {err}",
        ex.kind()
    );
    returns_the_result(ex, registry).await;
}

/// The soft time limit cancels the task's context, on every executor.
pub async fn the_soft_limit_cancels_the_context(ex: &dyn Executor, registry: &Registry) {
    let name = pick(ex, SLEEP, SLEEP_ASYNC);
    let (mut ctx, args) = call(name, vec![json!(20.0)]);
    ctx.set_time_limits(None, Some(Duration::from_millis(200)));
    let ran = run(ex, registry, name, ctx, args).await;
    assert_eq!(
        ran.result.expect("a cancelled sleep returns"),
        json!("cancelled"),
        "{:?}: the soft limit must cancel the context",
        ex.kind()
    );
}

/// A hard time limit ends the task with `TimeLimitExceeded` where the
/// executor enforces it; elsewhere the task runs to its own end.
pub async fn the_hard_limit_stops_the_task_where_enforced(ex: &dyn Executor, registry: &Registry) {
    let name = pick(ex, SLEEP, SLEEP_ASYNC);
    let enforced = ex.limits().hard_time_limit;
    let secs = if enforced { 20.0 } else { 0.6 };
    let (mut ctx, args) = call(name, vec![json!(secs)]);
    ctx.set_time_limits(Some(Duration::from_millis(200)), None);
    let ran = run(ex, registry, name, ctx, args).await;
    if enforced {
        let err = ran.result.expect_err("a hard limit fails the task");
        assert_eq!(
            err.kind(),
            TaskErrorKind::TimedOut,
            "{:?}: {err}",
            ex.kind()
        );
        assert!(
            err.exc_type().contains("TimeLimitExceeded"),
            "{:?}: {err}",
            ex.kind()
        );
    } else {
        assert_eq!(
            ran.result.expect("not enforced: the task ends by itself"),
            json!("finished")
        );
    }
    returns_the_result(ex, registry).await;
}

/// A terminate finds the running task and ends it: at once as
/// `TaskRevokedError` where forced, else by cancelling its context.
pub async fn terminate_stops_the_running_task(ex: &dyn Executor, registry: &Registry) {
    let name = pick(ex, SLEEP, SLEEP_ASYNC);
    let (ctx, args) = call(name, vec![json!(20.0)]);
    let id = ctx.id().to_string();
    let running = run(ex, registry, name, ctx, args);
    let terminate = async {
        // Until the executor has it (a child process may still be starting).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ex.terminate(&id) {
            assert!(
                Instant::now() < deadline,
                "{:?}: terminate never found the task",
                ex.kind()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ran, ()) = tokio::join!(running, terminate);
    if ex.limits().forced_terminate {
        let err = ran.result.expect_err("a forced terminate fails the task");
        assert_eq!(err.kind(), TaskErrorKind::Revoked, "{:?}: {err}", ex.kind());
    } else {
        assert_eq!(
            ran.result.expect("a cancelled sleep returns"),
            json!("cancelled"),
            "{:?}: a terminate must at least cancel the context",
            ex.kind()
        );
    }
    returns_the_result(ex, registry).await;
}

/// A task that crashes its process fails with `WorkerLostError`, and the
/// executor serves the next one; only checked where crashes are isolated
/// (elsewhere a crash takes the whole program down, by design).
pub async fn a_crash_fails_only_its_task_where_isolated(ex: &dyn Executor, registry: &Registry) {
    if !ex.limits().crash_isolation {
        return;
    }
    let (ctx, args) = call(ABORT, vec![]);
    let err = run(ex, registry, ABORT, ctx, args)
        .await
        .result
        .expect_err("a crash is a failure");
    assert_eq!(
        err.kind(),
        TaskErrorKind::WorkerLost,
        "{:?}: {err}",
        ex.kind()
    );
    returns_the_result(ex, registry).await;
}

/// A terminate for a task the executor does not run finds nothing.
pub fn terminate_of_an_unknown_task_finds_nothing(ex: &dyn Executor) {
    assert!(!ex.terminate("no-such-task"), "{:?}", ex.kind());
}
