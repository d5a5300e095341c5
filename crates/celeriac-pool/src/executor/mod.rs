//! The three [`Executor`](celeriac_core::Executor)s a worker runs tasks on,
//! one per [`PoolKind`](celeriac_core::PoolKind):
//!
//! - [`ThreadExecutor`] (`threads.rs`): the [`ThreadPool`](crate::ThreadPool);
//!   soft time limits only, since a thread cannot be stopped from outside;
//! - [`ProcessExecutor`] (`processes.rs`): the
//!   [`ProcessPool`](crate::process::ProcessPool); hard and soft limits,
//!   crash isolation, terminate by killing the child;
//! - [`AsyncExecutor`] (`async_tasks.rs`): `async fn` tasks on the tokio
//!   runtime; hard limits by dropping the future, terminate by aborting it.
//!
//! Each keeps its own record of what it runs, so that
//! [`Executor::terminate`](celeriac_core::Executor::terminate) can find a
//! task by id. `execute` must be called inside a tokio runtime (the soft
//! time limit is a tokio timer).

mod async_tasks;
mod processes;
mod threads;

pub use async_tasks::AsyncExecutor;
pub use processes::ProcessExecutor;
pub use threads::ThreadExecutor;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::CancelToken;
use parking_lot::Mutex;

/// Tasks an executor runs now, by task id, with how to stop each.
#[derive(Debug)]
pub(crate) struct RunningTasks<S>(Mutex<HashMap<String, S>>);

impl<S: Clone> RunningTasks<S> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(RunningTasks(Mutex::new(HashMap::new())))
    }

    /// Records `id` until the returned guard drops.
    pub(crate) fn enter(self: &Arc<Self>, id: &str, stop: S) -> RunningTask<S> {
        self.0.lock().insert(id.to_string(), stop);
        RunningTask {
            running: Arc::clone(self),
            id: id.to_string(),
        }
    }

    /// How to stop `id`, if it runs here.
    pub(crate) fn get(&self, id: &str) -> Option<S> {
        self.0.lock().get(id).cloned()
    }
}

/// Removes a task from its executor's [`RunningTasks`] set when its run ends.
#[derive(Debug)]
pub(crate) struct RunningTask<S: Clone> {
    running: Arc<RunningTasks<S>>,
    id: String,
}

impl<S: Clone> Drop for RunningTask<S> {
    fn drop(&mut self) {
        self.running.0.lock().remove(&self.id);
    }
}

/// Cancels `token` when the soft limit passes, unless aborted first.
pub(crate) fn soft_timer(
    soft: Option<Duration>,
    token: &CancelToken,
) -> Option<tokio::task::JoinHandle<()>> {
    soft.map(|soft| {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(soft).await;
            token.cancel();
        })
    })
}
