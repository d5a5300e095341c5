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
//! The worker knows brokers and backends only by their traits: turning a
//! URL into one is `celeriac-connect`'s job.
//!
//! # The lifecycle, and the file for each step
//!
//! ```text
//!  worker.rs   claim loop ── claims up to `room` messages ──┐
//!  line.rs     reserve: a slot and a place in line          │  one handler
//!  settle.rs   hold: in the ledger, lease renewed           │  per message
//!  admit.rs    gates: poison, malformed, revoked, expired,  ▼
//!              eta, idempotency, redelivered, unregistered ── Skip(Disposition) ─┐
//!              rate limit                                                        │
//!  line.rs     wait for an execution slot (in claim order)                       │
//!  admit.rs    gates again: revoked or expired meanwhile ──── Skip(Disposition) ─┤
//!  execute.rs  run on the task's executor (celeriac-pool)                        │
//!  decide.rs   pure: run + TaskOptions → Decision → Disposition                  │
//!  canvas.rs   pure: the chain step, callbacks and errbacks to send on            │
//!  errbacks.rs the errbacks Celery's arity rule calls inline                     │
//!  meta.rs     pure: what a stored result carries (result_extended, size)         │
//!  settle.rs   the only place that acks, requeues, dead-letters, stores, ◄───────┘
//!              or publishes a retry (batched where the broker gains)
//!
//!  observe.rs  counters and observers, told at each transition
//!  events.rs   Celery's worker and task events (an observer + a chore)
//!  control.rs  revokes of reserved messages, terminate of running tasks
//!  subtasks.rs a task's subtasks: submit, and wait with its slot given up
//!  task_metrics.rs  metrics (counters, histograms, gauges) via `metrics`
//!  chores.rs   heartbeat, lease renewal, autoscale
//!  config.rs   WorkerBuilder and the immutable Config
//! ```

mod admit;
mod canvas;
mod celery_tasks;
mod chores;
mod config;
mod control;
mod decide;
mod errbacks;
mod events;
mod execute;
mod line;
mod local;
mod meta;
mod observe;
mod settle;
mod states;
mod subtasks;
mod task_log;
mod task_metrics;
mod worker;

pub use celeriac_core::PoolKind;
pub use config::{DEFAULT_PREFETCH_MULTIPLIER, DEFAULT_STORE_RETRY_FOR, WorkerBuilder};
pub use local::{LocalEnd, LocalJob, LocalSuccess};
pub use observe::{Observer, RevokedBy, TaskEvent, WorkerStats};
pub use task_log::{RESULT_REPR_MAX, TaskLog};
pub use task_metrics::{TaskMetrics, UNREGISTERED};
pub use worker::Worker;

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The thread pool could not be built or resized.
    #[error("thread pool: {0}")]
    Pool(#[source] celeriac_core::BoxError),
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
    /// A queue name is empty.
    #[error("a queue name is empty")]
    EmptyQueueName,
    /// A queue name is one of the brokers' own bookkeeping keys (such as
    /// `unacked` or `celeriac.dlq`), which a worker must never consume.
    #[error(transparent)]
    ReservedQueue(#[from] celeriac_core::QueueNameError),
    /// The largest accepted body is 0 bytes: every message would be
    /// dead-lettered.
    #[error("max_body must be at least 1 byte")]
    ZeroMaxBody,
    /// Autoscale bounds are not `1 <= min <= max`.
    #[error("autoscale needs 1 <= min <= max (got min {min}, max {max})")]
    Autoscale {
        /// The minimum asked for.
        min: usize,
        /// The maximum asked for.
        max: usize,
    },
}

impl From<celeriac_core::UnknownPool> for WorkerError {
    fn from(e: celeriac_core::UnknownPool) -> Self {
        WorkerError::UnsupportedPool(e.0)
    }
}
