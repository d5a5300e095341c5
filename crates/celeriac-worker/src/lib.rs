//! # celeriac-worker
//!
//! The execution path every celeriac entry point shares: the `celeriac
//! worker` command, the pp-style `Server` of `celeriac-server`
//! and users' own worker binaries.
//!
//! A [`Worker`] claims task messages from a [`Broker`](celeriac_core::Broker), decodes them (Celery
//! protocol v2, or v1 converted), runs them on a thread pool and stores the
//! result in a [`ResultBackend`](celeriac_core::ResultBackend) before it acknowledges the message:
//!
//! - it claims only as many messages as it has free execution slots, so a
//!   long task never holds messages an idle worker could run;
//! - it renews the lease of every message it is running;
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
pub use worker::{Worker, WorkerBuilder, WorkerStats};

/// Which pool executes tasks.
///
/// # Examples
///
/// ```
/// use celeriac_worker::PoolKind;
/// assert_eq!("threads".parse::<PoolKind>().unwrap(), PoolKind::Threads);
/// assert!("processes".parse::<PoolKind>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolKind {
    /// A thread pool (shared memory; the default).
    #[default]
    Threads,
}

impl std::str::FromStr for PoolKind {
    type Err = WorkerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "threads" => Ok(PoolKind::Threads),
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
    /// The pool kind is not available in this version.
    #[error("pool {0:?} is not available in this version; use threads")]
    UnsupportedPool(String),
}
