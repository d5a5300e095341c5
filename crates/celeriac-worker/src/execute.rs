//! Execute: picks the executor for each task (its own `pool` choice, else
//! the worker's [`PoolKind`]; an `async fn` always runs on the async
//! executor), and keeps the record of running tasks that a terminate
//! looks in. The executors themselves live in `celeriac-pool`, one per
//! pool, each enforcing its own time limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{Args, Executor, PoolKind, Ran, RegisteredTask, TaskContext};
use celeriac_pool::process::ProcessPool;
use celeriac_pool::{AsyncExecutor, ProcessExecutor, ThreadExecutor, ThreadPool};
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
    /// Tasks running now, by task id, and on which executor.
    running: Mutex<HashMap<String, PoolKind>>,
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
        let _running = RunningGuard::new(self, ctx.id(), kind);
        executor.execute(task, ctx, args).await
    }

    /// Stops `task_id` if it runs here (`revoke(terminate=True)`).
    pub(crate) fn terminate(&self, task_id: &str) {
        let kind = self.running.lock().get(task_id).copied();
        match kind {
            Some(PoolKind::Processes) => {
                let procs = self.processes.lock().clone();
                if let Some(p) = procs {
                    p.terminate(task_id);
                }
            }
            Some(PoolKind::Async) => {
                self.asyncs.terminate(task_id);
            }
            Some(_) => {
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
    fn new(executors: &'a Executors, id: &str, kind: PoolKind) -> Self {
        executors.running.lock().insert(id.to_string(), kind);
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
