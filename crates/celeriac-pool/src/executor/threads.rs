//! Runs blocking tasks on the thread pool.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::{
    Args, CancelToken, Enforces, Executor, PoolKind, Ran, RegisteredTask, ResizeError, TaskContext,
    TaskError,
};
use tokio::sync::oneshot;

use super::{RunningTasks, soft_timer};
use crate::{Panicked, ThreadPool};

/// An [`Executor`] on a [`ThreadPool`]: the cheapest hand-off and shared
/// memory. A thread cannot be stopped from outside, so a hard time limit is
/// not enforced and a terminate only cancels the task's context (a task
/// that checks [`TaskContext::is_cancelled`] sees it); the soft time limit
/// cancels the context too. Panics are caught and become
/// `TaskErrorKind::Panicked` failures.
///
/// Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct ThreadExecutor {
    pool: ThreadPool,
    running: Arc<RunningTasks<CancelToken>>,
}

impl ThreadExecutor {
    /// An executor running tasks on `pool`.
    pub fn new(pool: ThreadPool) -> Self {
        ThreadExecutor {
            pool,
            running: RunningTasks::new(),
        }
    }

    /// The thread pool.
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }
}

#[async_trait]
impl Executor for ThreadExecutor {
    fn kind(&self) -> PoolKind {
        PoolKind::Threads
    }

    fn limits(&self) -> Enforces {
        Enforces::NONE
    }

    async fn execute(
        &self,
        task: &Arc<RegisteredTask>,
        ctx: TaskContext,
        args: Args,
    ) -> Option<Ran> {
        if ctx.time_limit().is_some() {
            tracing::debug!(task = %celeriac_core::escape::Escaped(task.name()), "a hard time limit is not enforced on the thread pool (a thread cannot be killed); use -P processes");
        }
        let timer = soft_timer(ctx.soft_time_limit(), ctx.cancel_token());
        let _running = self.running.enter(ctx.id(), ctx.cancel_token().clone());
        let (tx, rx) = oneshot::channel();
        let task = Arc::clone(task);
        // The task's span (the worker's), entered on the pool thread too.
        let span = tracing::Span::current();
        let spawned = self.pool.spawn(move || {
            let _span = span.enter();
            let start = Instant::now();
            let out =
                catch_unwind(AssertUnwindSafe(|| task.invoke(&ctx, args))).unwrap_or_else(|p| {
                    Err(TaskError::panicked(
                        Panicked::from_payload(p).into_message(),
                    ))
                });
            let _ = tx.send(Ran::new(out, start.elapsed()));
        });
        let ran = match spawned {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        if let Some(t) = timer {
            t.abort();
        }
        ran
    }

    fn terminate(&self, task_id: &str) -> bool {
        let Some(token) = self.running.get(task_id) else {
            return false;
        };
        if !token.is_cancelled() {
            tracing::warn!(task_id = %celeriac_core::escape::Escaped(task_id), "revoked with terminate: a thread cannot be killed; cancelling its context");
            token.cancel();
        }
        true
    }

    fn resize(&self, n: usize) -> Result<(), ResizeError> {
        self.pool.set_threads(n).map_err(|e| ResizeError {
            pool: PoolKind::Threads,
            source: Box::new(e),
        })
    }

    async fn shutdown(&self, timeout: Duration) {
        let pool = self.pool.clone();
        let _ = tokio::task::spawn_blocking(move || pool.shutdown_timeout(timeout)).await;
    }
}
