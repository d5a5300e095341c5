//! # celeriac
//!
//! Parallel, concurrent and distributed task execution for Rust: a thread
//! pool, a pp-style job server and a Celery-compatible task queue, on one
//! task model and one execution path.
//!
//! ```
//! use celeriac::{Server, task};
//!
//! #[task(name = "docs.square")]
//! fn square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! let server = Server::new().unwrap();
//! let jobs: Vec<_> = (0..10).map(|i| server.submit(square::call(i))).collect();
//! let total: i64 = jobs.iter().map(|j| j.wait().unwrap()).sum();
//! assert_eq!(total, 285);
//! ```
//!
//! - Tasks are plain functions marked [`#[task]`](task). Each has a stable
//!   name on the wire and a typed call handle.
//! - [`Server`] is the pp-style job server: `submit` returns a [`Job`].
//! - [`Worker`] consumes a broker; `celeriac worker` is one.
//! - Messages are Celery protocol v2 everywhere ([`Message`]); results are
//!   stored as Celery stores them ([`ResultMeta`]).
//! - Brokers: `memory://` (in process, the [`Server`] default) and
//!   `sqlite:///path.db` (a durable file shared by processes on one machine,
//!   the CLI default). A broker is the sum of small capability traits
//!   ([`Transport`], [`DeadLetters`], [`Revocations`], [`RateLimits`],
//!   [`Nodes`]); `use celeriac::prelude::*` brings them into scope to call
//!   them on a concrete broker such as [`MemoryBroker`].

extern crate self as celeriac;

pub mod builtins;

/// Automatic batching of a map across the network: see
/// [`celeriac_core::automap`], [`Call::automap`] and [`Server::map`].
pub mod automap {
    pub use celeriac_core::automap::*;
}
#[cfg(feature = "cli")]
pub mod cli;

pub use celeriac_connect::{default_backend_url, open_backend, open_broker, open_broker_for};
pub use celeriac_core::CancelToken;
pub use celeriac_core::broker::prelude;
pub use celeriac_core::broker::{EventMessage, EventStream, Events};
pub use celeriac_core::{
    Args, BackendError, BoxError, Broker, BrokerError, Call, CodecError, DeadLetter, DeadLetters,
    Delivery, Message, NodeInfo, Nodes, Outgoing, RateLimit, RateLimits, Registry, RegistryError,
    ResultBackend, ResultMeta, RetryDecision, Revocations, Routes, Secret, SignatureError, State,
    StateError, Task, TaskContext, TaskDef, TaskError, TaskErrorKind, TaskFuture, TaskOptions,
    Transport,
};
pub use celeriac_core::{Control, ControlInbox, ControlReply, ControlRequest};
pub use celeriac_core::{Enforces, Executor, PoolKind, Ran};
pub use celeriac_core::{QueueNameError, validate_queue_name};
pub use celeriac_core::{Subtask, SubtaskError, Subtasks};
pub use celeriac_core::{escape, events, message, monitor, time};
pub use celeriac_embedded::{
    MemoryBackend, MemoryBroker, SqliteBackend, SqliteBroker, default_db_path,
};
pub use celeriac_pool::process::{
    Outcome, PoolClosed, ProcessJob, ProcessPool, ProcessPoolBuilder, ProcessPoolError,
    ProcessPoolStats,
};
pub use celeriac_pool::{AsyncExecutor, ProcessExecutor, ThreadExecutor};
pub use celeriac_pool::{BlockingSection, ThreadPool};
pub use celeriac_server::{
    Apply, GroupResult, Job, JobError, MapResults, NodeStats, ResultRef, Server, ServerBuilder,
    ServerError, Stats, Template,
};

/// Celery's canvas, typed: see [`celeriac_core::canvas`] and
/// [`Server::apply`].
///
/// `#[task]` gives every task with parameters a step constructor,
/// `task::s(..)`: every argument but the first, which is the previous
/// step's result. A chain whose steps do not fit does not compile:
///
/// ```
/// use celeriac::canvas::{chain, chord, group};
/// use celeriac::{Server, task};
///
/// #[task(name = "docs.canvas.add")]
/// fn add(x: i64, y: i64) -> i64 { x + y }
/// #[task(name = "docs.canvas.total")]
/// fn total(xs: Vec<i64>) -> i64 { xs.iter().sum() }
///
/// let server = Server::new().unwrap();
/// // (1 + 2) + 10
/// let job = server.apply(chain(add::call(1, 2)).then(add::s(10)));
/// assert_eq!(job.wait().unwrap(), 13);
/// // Every member, in order.
/// let g = server.apply(group((0..5).map(|i| add::call(i, i))));
/// assert_eq!(g.wait().unwrap(), vec![0, 2, 4, 6, 8]);
/// # let _ = chord(vec![add::call(1, 1)], total::s());
/// ```
///
/// ```compile_fail
/// use celeriac::canvas::chain;
/// use celeriac::task;
///
/// #[task(name = "docs.canvas.add")]
/// fn add(x: i64, y: i64) -> i64 { x + y }
/// #[task(name = "docs.canvas.shout")]
/// fn shout(s: String) -> String { s.to_uppercase() }
///
/// // `shout` takes a String; `add` returns an i64.
/// let flow = chain(add::call(1, 2)).then(shout::s());
/// ```
pub mod canvas {
    pub use celeriac_core::canvas::*;
}
pub use celeriac_worker::{
    DEFAULT_PREFETCH_MULTIPLIER, Observer, RevokedBy, TaskEvent, TaskLog, Worker, WorkerBuilder,
    WorkerStats,
};
pub use celeriac_worker::{TaskMetrics, UNREGISTERED};

/// Turns a function into a task.
///
/// ```
/// use celeriac::{task, Task, TaskContext};
///
/// /// Adds two numbers.
/// #[task(name = "tasks.add")]
/// pub fn add(x: i64, y: i64) -> i64 {
///     x + y
/// }
///
/// // The function is still a function.
/// assert_eq!(add(2, 3), 5);
/// // `add::call` builds a typed call: a Call<i64>.
/// let call = add::call(2, 3);
/// assert_eq!(call.name(), "tasks.add");
/// // `add` (the task type) implements celeriac::Task.
/// assert_eq!(<add as Task>::PARAMS, &["x", "y"]);
///
/// // Errors are returned as Result; any Display error type works.
/// #[task(name = "tasks.parse")]
/// fn parse(text: String) -> Result<i64, std::num::ParseIntError> {
///     text.parse()
/// }
///
/// // A first `&TaskContext` parameter gives access to the call's metadata.
/// #[task(name = "tasks.whoami")]
/// fn whoami(ctx: &TaskContext) -> String {
///     ctx.id().to_string()
/// }
/// ```
///
/// - `name = "..."` sets the wire name; without it the name is the Rust
///   module path with `.` separators, e.g. `my_crate.jobs.add`. Give
///   explicit names to tasks other programs call.
/// - `diagnostic` registers the task only in registries that ask for
///   diagnostic tasks.
/// - Parameters must be owned types that deserialize from JSON. Positional
///   arguments map to them in order, keyword arguments by name; a
///   `Option<T>` parameter may be omitted.
/// - The return value must serialize to JSON; a `Result<T, E>` return with
///   `E: Display` stores `E` as the failure.
/// - The task registers itself at link time ([`Registry::linked`]); a
///   duplicate name is refused at startup.
///
/// - `pool = "threads" | "processes" | "async"` chooses the pool that runs
///   the task (see [`PoolKind`]); without it, an `async fn` runs on the
///   async executor and a blocking fn on the worker's pool (`-P`).
/// - `cheap` marks a task that returns within microseconds and never
///   blocks: a thread-pool worker runs it where it handles the message,
///   without the hand-off to a pool thread (see [`TaskOptions::cheap`]).
///
/// An `async fn` becomes an async task. It runs on the worker's tokio
/// runtime under the concurrency limit, so thousands can wait on I/O at
/// once; a blocking task never runs there.
///
/// ```
/// use std::time::Duration;
/// use celeriac::{task, Task, TaskContext};
///
/// #[task(name = "tasks.fetch")]
/// async fn fetch(ctx: &TaskContext, url: String) -> Result<usize, String> {
///     // e.g. an HTTP client call; here, a timer.
///     tokio::time::sleep(Duration::from_millis(1)).await;
///     Ok(url.len() + ctx.retries() as usize)
/// }
///
/// assert!(<fetch as Task>::IS_ASYNC);
/// ```
///
/// A task's pool must suit it:
///
/// ```compile_fail
/// #[celeriac::task(pool = "async")]
/// fn blocking() {}
/// ```
pub use celeriac_macros::task;

/// Call this first thing in `main` of any program that runs tasks in a
/// process pool (`celeriac worker -P processes`, [`ProcessPool`], a
/// [`Server`] with processes).
///
/// The process pool starts its children by re-executing the current
/// binary, never by `fork`. In a child, `init` serves tasks from the
/// linked registry (every `#[task]`, diagnostic ones included) and exits
/// when the pool retires the child, so it never returns there; in any
/// other process it returns at once. Everything `main` does before `init`
/// also runs in each child.
///
/// ```no_run
/// fn main() {
///     celeriac::init();
///     // ... build a Worker, a Server or a ProcessPool ...
/// }
/// ```
#[allow(clippy::needless_doctest_main)] // `main` is the point of the example
pub fn init() {
    init_with(|| Registry::linked(true).expect("duplicate task names"));
}

/// [`init`] with an explicit registry for the children, for tasks
/// registered with [`Registry::register_fn`] rather than `#[task]`.
pub fn init_with(registry: impl FnOnce() -> Registry) {
    celeriac_pool::process::init_child(registry);
}

#[doc(hidden)]
pub mod __private {
    pub use celeriac_core::__private::*;
}
