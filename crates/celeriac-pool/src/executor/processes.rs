//! Runs blocking tasks in child processes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{
    Args, Enforces, Executor, PoolKind, Ran, RegisteredTask, ResizeError, TaskContext,
};
use tokio::sync::oneshot;

use crate::process::{ProcessJob, ProcessPool};

/// An [`Executor`] on a [`ProcessPool`]: each task runs in a child process
/// (a re-execution of this program, which must call `celeriac::init()`
/// first thing in `main`). The child that runs a task is killed for a hard
/// time limit (`TimeLimitExceeded`) or a terminate (`TaskRevokedError`),
/// and a child that dies fails its task with `WorkerLostError`; the pool
/// replaces it.
///
/// Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    pool: ProcessPool,
}

impl ProcessExecutor {
    /// An executor running tasks on `pool`.
    pub fn new(pool: ProcessPool) -> Self {
        ProcessExecutor { pool }
    }

    /// The process pool.
    pub fn pool(&self) -> &ProcessPool {
        &self.pool
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    fn kind(&self) -> PoolKind {
        PoolKind::Processes
    }

    fn limits(&self) -> Enforces {
        Enforces::NONE
            .with_hard_time_limit()
            .with_crash_isolation()
            .with_forced_terminate()
    }

    async fn execute(
        &self,
        task: &Arc<RegisteredTask>,
        ctx: TaskContext,
        args: Args,
    ) -> Option<Ran> {
        let (tx, rx) = oneshot::channel();
        let job = ProcessJob::new(task.name(), ctx, args);
        self.pool
            .submit(job, move |o| {
                let _ = tx.send(Ran::new(o.result, o.runtime));
            })
            .ok()?;
        rx.await.ok()
    }

    fn terminate(&self, task_id: &str) -> bool {
        let found = self.pool.terminate(task_id);
        if found {
            tracing::warn!(task_id = %celeriac_core::escape::Escaped(task_id), "revoked with terminate: killing its child process");
        }
        found
    }

    fn resize(&self, n: usize) -> Result<(), ResizeError> {
        self.pool.set_processes(n).map_err(|e| ResizeError {
            pool: PoolKind::Processes,
            source: Box::new(e),
        })
    }

    async fn shutdown(&self, timeout: Duration) {
        let pool = self.pool.clone();
        let _ = tokio::task::spawn_blocking(move || pool.shutdown(timeout)).await;
    }
}
