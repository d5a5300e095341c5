//! The book's two running examples, the Fibonacci job and the web
//! crawler, on every layer celeriac offers: `examples/fibonacci.rs` and
//! `examples/crawler.rs` are thin command lines over this module, and
//! `tests/book_layers.rs` runs every layer of both.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use celeriac::{Args, AsyncExecutor, Executor, Ran, Registry, TaskContext};
use serde_json::Value;

pub mod crawl;
pub mod fetch;
pub mod fib;
pub mod workers;

/// What runs the jobs: the book's chapters, one per tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The thread pool (`celeriac::ThreadPool`; the book's `threading`).
    Threads,
    /// The process pool (`celeriac::ProcessPool`; `multiprocessing`): each
    /// job in a child process.
    Processes,
    /// `#[task] async fn` on the async executor (`asyncio`).
    Async,
    /// The pp-style job server (`celeriac::Server`; Parallel Python) with
    /// callbacks.
    Server,
    /// A task per job on a broker, run by worker processes (Celery).
    Queue,
}

impl Layer {
    /// Every layer, in the book's order.
    pub const ALL: [Layer; 5] = [
        Layer::Threads,
        Layer::Processes,
        Layer::Async,
        Layer::Server,
        Layer::Queue,
    ];
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Threads => "threads",
            Layer::Processes => "processes",
            Layer::Async => "async",
            Layer::Server => "server",
            Layer::Queue => "queue",
        })
    }
}

impl FromStr for Layer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Layer::ALL
            .into_iter()
            .find(|l| l.to_string() == s)
            .ok_or_else(|| {
                format!("unknown layer {s:?}: threads, processes, async, server or queue")
            })
    }
}

/// A linked `async fn` task on the async executor, with a runtime of its
/// own: what the async layers of both examples run.
#[derive(Debug)]
pub struct AsyncTask {
    rt: tokio::runtime::Runtime,
    registry: Arc<Registry>,
    exec: AsyncExecutor,
    name: &'static str,
}

impl AsyncTask {
    /// The task `name`, which must be linked into this binary.
    pub fn new(name: &'static str) -> anyhow::Result<Self> {
        let registry = Registry::linked(false)?;
        registry
            .get(name)
            .with_context(|| format!("{name} is not linked"))?;
        Ok(AsyncTask {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
            registry: Arc::new(registry),
            exec: AsyncExecutor::new(),
            name,
        })
    }

    /// The runtime to run [`AsyncTask::call`]s on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// One run of the task with positional `args`, as the executor runs it
    /// (time limits, panics caught); `None` if the executor is shut down.
    pub fn call(&self, args: Vec<Value>) -> impl Future<Output = Option<Ran>> + Send + 'static {
        let (registry, exec, name) = (self.registry.clone(), self.exec.clone(), self.name);
        async move {
            let task = registry.get(name).expect("checked by AsyncTask::new");
            let ctx = TaskContext::detached(name);
            exec.execute(task, ctx, Args::new(args, Default::default()))
                .await
        }
    }
}
