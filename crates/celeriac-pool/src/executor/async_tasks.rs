//! Runs `async fn` tasks on the tokio runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::{
    Args, Enforces, Executor, PoolKind, Ran, RegisteredTask, ResizeError, TaskContext, TaskError,
};
use tokio::task::AbortHandle;

use super::{RunningTasks, soft_timer};
use crate::Panicked;

/// An [`Executor`] for `async fn` tasks: each runs as a tokio task on the
/// runtime that calls [`execute`](Executor::execute). A hard time limit
/// drops the future (`TimeLimitExceeded`), a terminate aborts it
/// (`TaskRevokedError`), a panic becomes a `Panicked` failure. How many run
/// at once is the worker's concurrency; the executor itself has no slots.
///
/// Cheap to clone; clones share the record of running tasks.
#[derive(Debug, Clone)]
pub struct AsyncExecutor {
    running: Arc<RunningTasks<AbortHandle>>,
}

impl AsyncExecutor {
    /// An executor on the current tokio runtime.
    pub fn new() -> Self {
        AsyncExecutor {
            running: RunningTasks::new(),
        }
    }
}

impl Default for AsyncExecutor {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Executor for AsyncExecutor {
    fn kind(&self) -> PoolKind {
        PoolKind::Async
    }

    fn limits(&self) -> Enforces {
        Enforces::NONE
            .with_hard_time_limit()
            .with_forced_terminate()
    }

    async fn execute(
        &self,
        task: &Arc<RegisteredTask>,
        ctx: TaskContext,
        args: Args,
    ) -> Option<Ran> {
        let start = Instant::now();
        let hard = ctx.time_limit();
        let timer = soft_timer(ctx.soft_time_limit(), ctx.cancel_token());
        let id = ctx.id().to_string();
        let handle = tokio::spawn(tracing::Instrument::in_current_span(
            task.invoke_async(ctx, args),
        ));
        let abort = handle.abort_handle();
        let _running = self.running.enter(&id, abort.clone());
        let joined = match hard {
            Some(limit) => match tokio::time::timeout(limit, handle).await {
                Ok(j) => Some(j),
                Err(_) => {
                    abort.abort();
                    None
                }
            },
            None => Some(handle.await),
        };
        if let Some(t) = timer {
            t.abort();
        }
        let out = match joined {
            Some(Ok(out)) => out,
            Some(Err(e)) if e.is_panic() => Err(TaskError::panicked(
                Panicked::from_payload(e.into_panic()).into_message(),
            )),
            Some(Err(_)) => Err(TaskError::revoked("terminated")),
            None => Err(TaskError::timed_out(format!(
                "TimeLimitExceeded({})",
                hard.unwrap_or_default().as_secs_f64()
            ))),
        };
        Some(Ran::new(out, start.elapsed()))
    }

    fn terminate(&self, task_id: &str) -> bool {
        let Some(abort) = self.running.get(task_id) else {
            return false;
        };
        tracing::warn!(task_id = %celeriac_core::escape::Escaped(task_id), "revoked with terminate: cancelling it");
        abort.abort();
        true
    }

    fn resize(&self, _n: usize) -> Result<(), ResizeError> {
        // Its concurrency is the worker's execution slots.
        Ok(())
    }

    async fn shutdown(&self, _timeout: Duration) {
        // Its tasks belong to the worker's runtime and end with their
        // handlers.
    }
}
