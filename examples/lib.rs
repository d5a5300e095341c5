//! Runnable examples of celeriac: `cargo run -p celeriac-examples --example NAME`.
//!
//! - `thread_pool`: the resizable thread pool.
//! - `job_server`: the pp-style job server (the book's Fibonacci with callbacks).
//! - `worker_and_client`: a worker on the durable file broker and a client.
//! - `celery_messages`: reading and writing Python Celery's wire format.
//! - `redis_server`: the job server on Redis, shared with Python Celery.
//! - `task_semantics`: retries, idempotency keys, revoke, expiry, rate limits.
//! - `process_pool`: crash isolation, time limits, batching, a server on processes.
//! - `async_tasks`: `#[task] async fn` on the async pool.
//! - `crawler`: the book's web crawler on threads, processes, async, the
//!   job server and the queue.
//! - `fibonacci`: the book's Fibonacci job on the same five layers.
//! - `beat`: periodic tasks with leader election (two beats, one leader).

pub mod book;

/// The concepts guide, `docs/concepts.md`: its snippets are this crate's
/// doctests.
#[doc = include_str!("../docs/concepts.md")]
pub mod concepts {}
