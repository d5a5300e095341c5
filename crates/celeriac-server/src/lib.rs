//! # celeriac-server
//!
//! The pp-style job server. Parallel Python's API, with its semantics fixed:
//!
//! | pp | celeriac |
//! |---|---|
//! | `pp.Server()` | [`Server::new`]: workers sized to the machine, embedded `memory://` broker |
//! | `Server(ncpus, ppservers, …)` | [`Server::builder`]: broker URL, workers, queue |
//! | `job = server.submit(f, args, callback=…, group=…)` | [`Server::submit`] / [`Server::job`] → [`Job<T>`] |
//! | `job()` | [`Job::wait`], [`Job::wait_timeout`], [`Job::ready`], [`Job::try_result`] |
//! | `server.wait(group)` | [`Server::wait_group`], [`Server::wait`] |
//! | `Template(server, f, …).submit(args)` | [`Template`] |
//! | `set_ncpus` / `get_ncpus` | [`Server::set_workers`] / [`Server::workers`]; any node: [`Server::set_node_workers`] |
//! | `pool.starmap(f, items)` (auto-chunked, across the cluster) | [`Server::map`] → [`MapResults`] |
//! | `get_active_nodes()` | [`Server::active_nodes`] |
//! | `get_stats()` / `print_stats()` | [`Server::stats`] / [`Server::print_stats`] |
//! | Celery's `chain(...).apply_async()`, `group`, `chord` | [`Server::apply`] → [`Job`] / [`GroupResult`] |
//! | Celery's `AsyncResult(id)`, `.parent`, `.children` | [`Server::result`], [`Job::parent`], [`Job::children`] |
//!
//! Where pp returns `None` for a job whose function raised, celeriac returns
//! a typed [`JobError`] carrying the task's error and message, panics
//! included.
//!
//! Every job travels the same path as a Celery task: a protocol v2 message
//! through the broker to a worker (the server's own, or other processes on
//! the same broker), and a result document back through the result backend.

mod builder;
mod canvas;
mod group;
mod job;
mod map;
mod nodes;
mod server;
mod stats;

pub use builder::ServerBuilder;
pub use canvas::Apply;
pub use group::{GroupResult, ResultRef};
pub use job::{Job, JobError};
pub use map::{MAP_GROUP, MapResults};
pub use server::{Server, ServerError, Submit, Template};
pub use stats::{NodeStats, Stats};
