//! # celeriac-worker
//!
//! The execution path every celeriac entry point shares: the `celeriac
//! worker` command, the pp-style `Server` of `celeriac-server`
//! and users' own worker binaries.
//!
//! A [`Worker`] claims task messages from a [`Broker`](celeriac_core::Broker), decodes them (Celery
//! protocol v2, or v1 converted), runs them on a thread pool, a process
//! pool or the async executor ([`PoolKind`]) and stores the
//! result in a [`ResultBackend`](celeriac_core::ResultBackend) before it acknowledges the message:
//!
//! - it reserves messages ahead of its execution slots (up to
//!   [`WorkerBuilder::prefetch_multiplier`] per slot) only while its tasks
//!   are short, so a long task never holds messages an idle worker could
//!   run; reserved messages start in the order they were claimed;
//! - it renews the lease of every message it holds, running or reserved;
//! - it stores results and acknowledges messages in batches;
//! - a message that cannot be decoded, names an unknown task, or is too
//!   large is logged with a clear error and moved to the dead-letter store
//!   with the reason, and the worker keeps serving; an unknown task also
//!   gets a FAILURE `NotRegistered` result, as in Celery;
//! - wrong arguments, task errors and panics become FAILURE results with
//!   the message; nothing panics the worker;
//! - a message that expired becomes REVOKED; one whose `eta` is in the
//!   future goes back to the broker's delayed store, never held in memory.
//!
//! [`open_broker`] and [`open_backend`] turn URLs into brokers and backends.

mod connect;
mod worker;

pub use connect::{default_backend_url, open_backend, open_broker};
pub use worker::{DEFAULT_PREFETCH_MULTIPLIER, Worker, WorkerBuilder, WorkerStats};

/// Which pool executes tasks (`celeriac worker -P ...`).
///
/// Whatever the kind, an `async fn` task runs on the async executor, and a
/// task's own `#[task(pool = "...")]` choice wins for blocking tasks; this
/// is the pool for the rest.
///
/// # Examples
///
/// ```
/// use celeriac_worker::PoolKind;
/// assert_eq!("threads".parse::<PoolKind>().unwrap(), PoolKind::Threads);
/// assert_eq!("prefork".parse::<PoolKind>().unwrap(), PoolKind::Processes);
/// assert_eq!("async".parse::<PoolKind>().unwrap(), PoolKind::Async);
/// assert!("gevent".parse::<PoolKind>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolKind {
    /// A thread pool (shared memory; the default).
    #[default]
    Threads,
    /// A pool of child processes: crash isolation, hard time limits,
    /// memory limits and recycling. The program must call
    /// `celeriac::init()` first thing in `main`.
    Processes,
    /// The async executor, for `async fn` tasks at high concurrency;
    /// blocking tasks still run on threads.
    Async,
}

impl std::str::FromStr for PoolKind {
    type Err = WorkerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "threads" => Ok(PoolKind::Threads),
            "processes" | "prefork" => Ok(PoolKind::Processes),
            "async" => Ok(PoolKind::Async),
            other => Err(WorkerError::UnsupportedPool(other.to_string())),
        }
    }
}

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The thread pool could not be built.
    #[error("thread pool: {0}")]
    Pool(String),
    /// No queue to consume from.
    #[error("a worker needs at least one queue")]
    NoQueues,
    /// Concurrency must be at least 1.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    /// The pool kind is unknown.
    #[error("unknown pool {0:?}: use threads, processes or async")]
    UnsupportedPool(String),
    /// The process pool could not be built.
    #[error("process pool: {0}")]
    Processes(#[from] celeriac_pool::process::ProcessPoolError),
    /// Autoscale bounds are not `1 <= min <= max`.
    #[error("autoscale needs 1 <= min <= max (got min {min}, max {max})")]
    Autoscale {
        /// The minimum asked for.
        min: usize,
        /// The maximum asked for.
        max: usize,
    },
}
