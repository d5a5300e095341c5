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
//! - `beat`: periodic tasks with leader election (two beats, one leader).
