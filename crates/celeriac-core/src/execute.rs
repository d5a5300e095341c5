//! The [`Executor`] extension trait: where a worker runs a task.
//!
//! A worker hands each task it admits to the executor of the task's pool
//! ([`PoolKind`]): a thread pool, a pool of child processes or the async
//! runtime (the implementations live in `celeriac-pool`). An executor
//! runs the task, enforces the context's time limits as far as its pool
//! can ([`Executor::limits`]), stops a task on request
//! ([`Executor::terminate`], Celery's `revoke(terminate=True)`), and
//! reports how the run ended ([`Ran`]). What happens to the message after
//! that is the worker's business, not the executor's.
//!
//! Every executor must pass the executor contract in `celeriac-testkit`:
//! results come back, panics are typed failures that leave the executor
//! serving, the soft limit cancels the task's context, and a hard limit,
//! a terminate and a crash end as the pool can end them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::TaskError;
use crate::options::PoolKind;
use crate::task::{Args, RegisteredTask, TaskContext};

/// How a task's run ended, as its executor reports it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Ran {
    /// The task's return value, or why it failed: its own error, a panic
    /// (`TaskErrorKind::Panicked`), a hard time limit
    /// (`TaskErrorKind::TimedOut`), a terminate (`TaskErrorKind::Revoked`)
    /// or a lost process (`TaskErrorKind::WorkerLost`).
    pub result: Result<Value, TaskError>,
    /// How long it ran.
    pub runtime: Duration,
}

impl Ran {
    /// A run that ended with `result` after `runtime`.
    pub fn new(result: Result<Value, TaskError>, runtime: Duration) -> Self {
        Ran { result, runtime }
    }
}

/// What an executor can enforce; the executor contract checks each claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enforces {
    /// A hard time limit stops the task and fails it with
    /// `TimeLimitExceeded` (processes: the child is killed; async: the
    /// future is dropped). A thread cannot be stopped from outside, so a
    /// thread pool only applies soft limits.
    pub hard_time_limit: bool,
    /// A task that crashes its process (abort, segfault, OOM kill) fails
    /// with `WorkerLostError` and the executor keeps serving. Only a pool of
    /// child processes isolates crashes.
    pub crash_isolation: bool,
    /// [`Executor::terminate`] stops a running task at once. A thread pool
    /// can only cancel the task's context, which a task sees if it looks.
    pub forced_terminate: bool,
}

impl Enforces {
    /// Nothing enforced.
    pub const NONE: Enforces = Enforces {
        hard_time_limit: false,
        crash_isolation: false,
        forced_terminate: false,
    };

    /// With [`hard_time_limit`](Self::hard_time_limit) set.
    pub const fn with_hard_time_limit(mut self) -> Self {
        self.hard_time_limit = true;
        self
    }

    /// With [`crash_isolation`](Self::crash_isolation) set.
    pub const fn with_crash_isolation(mut self) -> Self {
        self.crash_isolation = true;
        self
    }

    /// With [`forced_terminate`](Self::forced_terminate) set.
    pub const fn with_forced_terminate(mut self) -> Self {
        self.forced_terminate = true;
        self
    }
}

/// Runs tasks for a worker. See the [module docs](self).
#[async_trait]
pub trait Executor: Send + Sync + fmt::Debug {
    /// The pool this executor is.
    fn kind(&self) -> PoolKind;

    /// What this executor enforces.
    fn limits(&self) -> Enforces;

    /// Runs `task` with `args` under `ctx`, enforcing the context's time
    /// limits ([`TaskContext::time_limit`],
    /// [`TaskContext::soft_time_limit`]) as far as [`limits`](Self::limits)
    /// says. `None` means the executor is shut down and the task did not
    /// run: its message goes back to the broker.
    async fn execute(
        &self,
        task: &Arc<RegisteredTask>,
        ctx: TaskContext,
        args: Args,
    ) -> Option<Ran>;

    /// Stops the task `task_id` if this executor is running (or queueing)
    /// it, for `revoke(terminate=True)`; returns whether it was found.
    fn terminate(&self, task_id: &str) -> bool;

    /// Resizes the executor to `n` execution slots (`n >= 1`).
    fn resize(&self, n: usize) -> Result<(), ResizeError>;

    /// Stops the executor: running tasks get up to `timeout` to finish.
    async fn shutdown(&self, timeout: Duration);
}

/// An executor could not be resized.
#[derive(Debug, thiserror::Error)]
#[error("could not resize the {pool} executor: {source}")]
pub struct ResizeError {
    /// The pool.
    pub pool: PoolKind,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}
