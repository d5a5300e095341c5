//! Execute: picks the executor for each task (its own `pool` choice, else
//! the worker's [`PoolKind`]; an `async fn` always runs on the async
//! executor), and keeps the record of running tasks that a terminate
//! looks in. The executors themselves live in `celeriac-pool`, one per
//! pool, each enforcing its own time limits.
//!
//! A task marked [`cheap`](celeriac_core::TaskOptions::cheap) that would
//! run on threads runs right here instead, on the thread that handles its
//! message: for a task of a few microseconds, the hand-off to a pool
//! thread and the wake-up back cost more than the task. It keeps what the
//! thread pool gives: a panic is a typed `Panicked` failure and a
//! terminate cancels its context; a call with a time limit goes to the
//! pool, whose timer cancels its context at the soft limit.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::{
    Args, CancelToken, Executor, PoolKind, Ran, RegisteredTask, TaskContext, TaskError,
};
use celeriac_pool::process::ProcessPool;
use celeriac_pool::{AsyncExecutor, Panicked, ProcessExecutor, ThreadExecutor, ThreadPool};
use parking_lot::Mutex;

use crate::WorkerError;
use crate::config::ProcessOptions;

/// The worker's executors: threads and async always, processes built up
/// front for `-P processes` or at the first task that asks for them.
#[derive(Debug)]
pub(crate) struct Executors {
    kind: PoolKind,
    threads: ThreadExecutor,
    asyncs: AsyncExecutor,
    processes: Mutex<Option<ProcessExecutor>>,
    proc_opts: ProcessOptions,
    /// Tasks running now, by task id, and where.
    running: Mutex<HashMap<String, Where>>,
}

/// Where a running task runs.
#[derive(Debug, Clone)]
enum Where {
    /// On an executor.
    Pool(PoolKind),
    /// Here, as a cheap task: a terminate cancels its context.
    Inline(CancelToken),
}

impl Executors {
    pub(crate) fn new(
        kind: PoolKind,
        threads: ThreadPool,
        proc_opts: ProcessOptions,
        concurrency: usize,
    ) -> Result<Self, WorkerError> {
        let processes = if kind == PoolKind::Processes {
            Some(ProcessExecutor::new(build_processes(
                &proc_opts,
                concurrency,
            )?))
        } else {
            None
        };
        Ok(Executors {
            kind,
            threads: ThreadExecutor::new(threads),
            asyncs: AsyncExecutor::new(),
            processes: Mutex::new(processes),
            proc_opts,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The thread pool blocking tasks run on.
    pub(crate) fn threads(&self) -> &ThreadPool {
        self.threads.pool()
    }

    /// The worker's pool kind.
    pub(crate) fn kind(&self) -> PoolKind {
        self.kind
    }

    /// Where `task` runs.
    fn choose(&self, task: &RegisteredTask) -> PoolKind {
        if task.is_async() {
            return PoolKind::Async;
        }
        match task.options().pool_choice() {
            Some(PoolKind::Processes) => PoolKind::Processes,
            Some(PoolKind::Threads) => PoolKind::Threads,
            _ => match self.kind {
                PoolKind::Processes => PoolKind::Processes,
                _ => PoolKind::Threads,
            },
        }
    }

    /// The process executor, built at first use when the worker's kind is
    /// not processes.
    fn processes(&self, concurrency: usize) -> Result<ProcessExecutor, WorkerError> {
        let mut procs = self.processes.lock();
        if let Some(p) = procs.as_ref() {
            return Ok(p.clone());
        }
        let p = ProcessExecutor::new(build_processes(&self.proc_opts, concurrency)?);
        *procs = Some(p.clone());
        Ok(p)
    }

    /// Runs a task on the executor that suits it. `None` when that executor
    /// is shutting down (the message goes back to the broker).
    pub(crate) async fn run(
        &self,
        task: &Arc<RegisteredTask>,
        ctx: TaskContext,
        args: Args,
        concurrency: usize,
    ) -> Option<Ran> {
        let mut kind = self.choose(task);
        // A time limit needs a timer that runs while the task does: the
        // pool's tasks have it, one on this thread might not get it.
        let limited = ctx.soft_time_limit().is_some() || ctx.time_limit().is_some();
        if kind == PoolKind::Threads && task.options().is_cheap() && !limited {
            return Some(self.run_here(task, ctx, args));
        }
        let procs = match kind {
            PoolKind::Processes => match self.processes(concurrency) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "no process pool; running on threads");
                    kind = PoolKind::Threads;
                    None
                }
            },
            _ => None,
        };
        let executor: &dyn Executor = match (&procs, kind) {
            (Some(p), _) => p,
            (None, PoolKind::Async) => &self.asyncs,
            (None, _) => &self.threads,
        };
        let _running = RunningGuard::new(self, ctx.id(), Where::Pool(kind));
        executor.execute(task, ctx, args).await
    }

    /// Runs a cheap task without a time limit on this thread, as the
    /// thread pool would run it. (A timer task spawned from here could sit
    /// in this thread's run queue, where no other thread takes it, until
    /// the task returns: a task with a limit goes to the pool.)
    fn run_here(&self, task: &RegisteredTask, ctx: TaskContext, args: Args) -> Ran {
        let token = ctx.cancel_token().clone();
        let _running = RunningGuard::new(self, ctx.id(), Where::Inline(token));
        let start = Instant::now();
        let out = catch_unwind(AssertUnwindSafe(|| task.invoke(&ctx, args))).unwrap_or_else(|p| {
            Err(TaskError::panicked(
                Panicked::from_payload(p).into_message(),
            ))
        });
        Ran::new(out, start.elapsed())
    }

    /// Stops `task_id` if it runs here (`revoke(terminate=True)`).
    pub(crate) fn terminate(&self, task_id: &str) {
        let kind = self.running.lock().get(task_id).cloned();
        match kind {
            Some(Where::Inline(token)) => {
                tracing::warn!(task_id = %celeriac_core::escape::Escaped(task_id), "revoked with terminate: a cheap task runs on the worker's own thread and cannot be killed; cancelling its context");
                token.cancel();
            }
            Some(Where::Pool(PoolKind::Processes)) => {
                let procs = self.processes.lock().clone();
                if let Some(p) = procs {
                    p.terminate(task_id);
                }
            }
            Some(Where::Pool(PoolKind::Async)) => {
                self.asyncs.terminate(task_id);
            }
            Some(Where::Pool(_)) => {
                self.threads.terminate(task_id);
            }
            None => {}
        }
    }

    /// Ids of the tasks running now.
    pub(crate) fn running(&self) -> Vec<String> {
        self.running.lock().keys().cloned().collect()
    }

    /// Resizes to `n` slots: the thread pool (capped at the CPUs on an
    /// async worker, whose blocking tasks share a CPU-sized pool) and the
    /// process pool if there is one.
    pub(crate) fn resize(&self, n: usize) -> Result<(), WorkerError> {
        self.threads
            .resize(thread_count(self.kind, n))
            .map_err(|e| WorkerError::Pool(Box::new(e)))?;
        if let Some(p) = self.processes.lock().as_ref() {
            p.pool().set_processes(n)?;
        }
        Ok(())
    }

    /// The process pool's `max_tasks_per_child`, if set.
    pub(crate) fn max_tasks_per_child(&self) -> Option<u64> {
        self.proc_opts.max_tasks_per_child
    }

    /// Pids of the process pool's children (empty without one).
    pub(crate) fn child_pids(&self) -> Vec<u32> {
        self.processes
            .lock()
            .as_ref()
            .map(|p| p.pool().pids())
            .unwrap_or_default()
    }

    /// The process pool's counters (`None` without one).
    pub(crate) fn pool_stats(&self) -> Option<celeriac_pool::process::ProcessPoolStats> {
        self.processes.lock().as_ref().map(|p| p.pool().stats())
    }

    /// Stops the process pool, if any (up to 10 s for running tasks). The
    /// thread pool may be the caller's own ([`WorkerBuilder::pool`]), and
    /// async tasks end with their handlers, so neither is stopped here.
    ///
    /// [`WorkerBuilder::pool`]: crate::WorkerBuilder::pool
    pub(crate) async fn shutdown(&self) {
        let procs = self.processes.lock().clone();
        if let Some(p) = procs {
            p.shutdown(Duration::from_secs(10)).await;
        }
    }
}

/// Threads for `n` slots: blocking tasks of an async worker share a
/// CPU-sized thread pool.
pub(crate) fn thread_count(kind: PoolKind, n: usize) -> usize {
    if kind == PoolKind::Async {
        n.min(std::thread::available_parallelism().map_or(1, |c| c.get()))
    } else {
        n
    }
}

fn build_processes(opts: &ProcessOptions, n: usize) -> Result<ProcessPool, WorkerError> {
    let mut b = ProcessPool::builder().processes(n);
    if let Some(m) = opts.max_tasks_per_child {
        b = b.max_tasks_per_child(m);
    }
    if let Some(m) = opts.max_memory_per_child {
        b = b.max_memory_per_child(m);
    }
    if let Some(p) = &opts.program {
        b = b.program(p);
    }
    Ok(b.build()?)
}

/// Records a task as running on an executor while its run lasts.
struct RunningGuard<'a> {
    executors: &'a Executors,
    id: String,
}

impl<'a> RunningGuard<'a> {
    fn new(executors: &'a Executors, id: &str, at: Where) -> Self {
        executors.running.lock().insert(id.to_string(), at);
        RunningGuard {
            executors,
            id: id.to_string(),
        }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.executors.running.lock().remove(&self.id);
    }
}
