//! # celeriac-pool
//!
//! The executors the celeriac worker runs tasks on: a resizable thread pool
//! ([`ThreadPool`]), a pool of child processes ([`process::ProcessPool`])
//! for crash isolation, hard time limits and memory limits, and the
//! [`Executor`](celeriac_core::Executor)s over them ([`executor`]):
//! [`ThreadExecutor`], [`ProcessExecutor`] and [`AsyncExecutor`] for
//! `async fn` tasks.
//!
//! - [`ThreadPool`]: a cheap, cloneable handle to a pool of worker threads
//!   fed by one FIFO queue. [`ThreadPool::spawn`] queues a fire-and-forget
//!   closure; [`ThreadPool::execute`] returns a [`TaskHandle`] to the result.
//! - Panics in tasks are caught: the thread survives, the panic is counted
//!   and reported as [`Panicked`].
//! - [`ThreadPool::set_threads`] grows the pool at once and shrinks it
//!   between tasks, never dropping queued work.
//! - [`ThreadPool::blocking_section`] lets a task that waits for other
//!   tasks of the same pool lend its place to a new thread meanwhile.
//! - [`ThreadPool::shutdown`] stops accepting work, runs what is queued and
//!   joins the threads; later submissions return the closure in a
//!   [`ShutdownError`].
//!
//! # Design
//!
//! - One FIFO queue, a `parking_lot` `Mutex<VecDeque>`, shared by all
//!   workers; the same lock guards the closed flag and the thread target, so
//!   a submission either lands before shutdown (and runs) or is rejected.
//! - Idle workers spin briefly (one at a time) before sleeping on a condvar,
//!   and producers wake a sleeper only when no worker spins, so bursts of
//!   small tasks avoid futex wake-ups; see the `shared` module.
//! - A task from [`ThreadPool::execute`] is a single allocation: one `Arc`
//!   holding the closure, then the result slot (`Mutex` + `Condvar`) that
//!   its [`TaskHandle`] waits on.
//! - Resizing: growing starts threads at once; shrinking lowers the target
//!   and surplus workers retire when they next look for work (between
//!   tasks); sleeping workers are woken to do so.
//!
//! # Examples
//!
//! ```
//! use celeriac_pool::ThreadPool;
//!
//! let pool = ThreadPool::builder().threads(2).build().unwrap();
//! let handles: Vec<_> = (1..=10u64).map(|i| pool.execute(move || i * 2).unwrap()).collect();
//! let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
//! assert_eq!(total, 110);
//! pool.shutdown();
//! ```

mod blocking;
mod error;
pub mod executor;
mod job;
mod pool;
pub mod process;
mod shared;
mod spin;

pub use blocking::BlockingSection;
pub use error::{BuildError, Panicked, ResizeError, ShutdownError};
pub use executor::{AsyncExecutor, ProcessExecutor, ThreadExecutor};
pub use job::TaskHandle;
pub use pool::{ThreadPool, ThreadPoolBuilder};
