//! Building a [`Server`]: its broker, backend, pool, queue, routes and
//! secret, then the runtime, the local worker and the publisher.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use celeriac_connect::{open_backend, open_broker_for};
use celeriac_core::{Registry, Routes, Secret};
use celeriac_worker::{PoolKind, Worker};
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;

use crate::server::*;

/// Configures a [`Server`].
#[derive(Debug)]
pub struct ServerBuilder {
    broker: Option<String>,
    backend: Option<String>,
    workers: Option<usize>,
    queue: Option<String>,
    registry: Option<Registry>,
    diagnostic: bool,
    nodename: Option<String>,
    pool: PoolKind,
    routes: Routes,
    secret: Option<Secret>,
    local_lane: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            broker: None,
            backend: None,
            workers: None,
            queue: None,
            registry: None,
            diagnostic: false,
            nodename: None,
            pool: PoolKind::default(),
            routes: Routes::default(),
            secret: None,
            local_lane: true,
        }
    }
}

impl ServerBuilder {
    /// Whether jobs may take the local lane (default: yes). On the
    /// server's private `memory://` broker and result store, with a local
    /// worker on threads, a job is handed to the worker's thread pool as a
    /// typed call, with no message, broker or result store, and its result
    /// comes straight back: a few microseconds per job instead of a
    /// hundred. Revokes, time limits, retries, subtasks, callbacks, groups
    /// and stats behave as on the broker path; what the lane cannot do the
    /// same way (an eta, an expiry, an idempotency key, async or
    /// rate-limited tasks, ...) goes through the broker. `false` sends
    /// every job through the broker.
    pub fn local_lane(mut self, on: bool) -> Self {
        self.local_lane = on;
        self
    }

    /// Routes tasks matching `pattern` (a name, or a glob with `*`) to
    /// `queue` when their call names no queue; the first matching route
    /// wins. The local worker consumes the routed queues too.
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.routes = self.routes.route(pattern, queue);
        self
    }

    /// The pool that runs the local worker's jobs (default: threads).
    /// With [`PoolKind::Processes`] each job runs in a child process (crash
    /// isolation, hard time limits); the program must then call
    /// `celeriac::init()` first thing in `main`, and the children know only
    /// `#[task]` functions (the linked registry), not closures registered
    /// at runtime.
    pub fn pool(mut self, pool: PoolKind) -> Self {
        self.pool = pool;
        self
    }

    /// The broker URL. Defaults to `memory://` (a private in-process
    /// broker). Use `sqlite:///path.db` to share work with `celeriac
    /// worker` processes on this machine.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.broker = Some(url.into());
        self
    }

    /// The result backend URL. Defaults to the broker's own store.
    pub fn backend(mut self, url: impl Into<String>) -> Self {
        self.backend = Some(url.into());
        self
    }

    /// Local worker threads. Defaults to the number of CPUs; `0` runs no
    /// local worker (jobs go to other workers on the same broker).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The queue jobs are sent to and the local worker consumes (default
    /// `celery`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The tasks the local worker runs. Defaults to every task linked into
    /// the binary with `#[celeriac::task]`.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Also registers the diagnostic tasks (`celeriac.fail`, ...), when the
    /// registry is the linked default.
    pub fn diagnostic_tasks(mut self, on: bool) -> Self {
        self.diagnostic = on;
        self
    }

    /// The local worker's node name.
    pub fn nodename(mut self, name: impl Into<String>) -> Self {
        self.nodename = Some(name.into());
        self
    }

    /// Signs every job with `secret` (see [`celeriac_core::sign`]), and
    /// makes the local worker run only jobs signed with it. Workers
    /// elsewhere on the broker need the same secret (`celeriac worker
    /// --secret`, or `CELERIAC_SECRET`).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Starts the server.
    pub fn build(self) -> Result<Server, ServerError> {
        let broker_url = self.broker.unwrap_or_else(|| "memory://".to_string());
        let backend_url = self
            .backend
            .unwrap_or_else(|| celeriac_connect::default_backend_url(&broker_url));
        let broker = open_broker_for(&broker_url, &backend_url)?;
        let lane_allowed = self.local_lane;
        let backend = open_backend(&backend_url)?;
        let queue = self.queue.unwrap_or_else(|| "celery".to_string());
        let workers = self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("celeriac-io")
            .enable_all()
            .build()
            .map_err(|e| ServerError::Runtime(e.to_string()))?;

        let worker = if workers > 0 {
            let registry = match self.registry {
                Some(r) => r,
                None => Registry::linked(self.diagnostic)?,
            };
            let nodename = self.nodename.unwrap_or_else(|| {
                format!(
                    "server-{}@{}",
                    std::process::id(),
                    celeriac_core::message::hostname()
                )
            });
            let mut queues = vec![queue.clone()];
            for q in self.routes.queues() {
                if !queues.iter().any(|x| x == q) {
                    queues.push(q.to_string());
                }
            }
            let mut builder = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
                .concurrency(workers)
                .pool_kind(self.pool)
                .queues(queues)
                .nodename(nodename);
            if let Some(secret) = &self.secret {
                builder = builder.secret(secret.clone());
            }
            Some(builder.build()?)
        } else {
            None
        };

        let (cb_tx, cb_rx) = std::sync::mpsc::channel::<CallbackJob>();
        let callback_thread = std::thread::Builder::new()
            .name("celeriac-callbacks".into())
            .spawn(move || {
                while let Ok(job) = cb_rx.recv() {
                    job();
                }
            })
            .map_err(|e| ServerError::Runtime(e.to_string()))?;

        let shared = Arc::new(ServerState {
            forget_results: backend.is_private(),
            broker,
            backend,
            local_node: worker.as_ref().map(|w| w.nodename().to_string()),
            pending: Mutex::new(Default::default()),
            groups: Mutex::new(HashMap::new()),
            groups_cv: Condvar::new(),
            tally: Mutex::new(BTreeMap::new()),
            lane_tally: Default::default(),
            rt: rt.handle().clone(),
            retry_publish: Mutex::new(None),
            callbacks: Mutex::new(Some(cb_tx)),
            secret: self.secret,
            oid: uuid::Uuid::new_v4().to_string(),
            lane_inflight: AtomicUsize::new(0),
            lane_jobs: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        *shared.retry_publish.lock() = Some(tx.clone());
        rt.spawn(publisher(shared.clone(), rx));
        let lane = worker
            .as_ref()
            .filter(|_| {
                lane_allowed
                    && shared.broker.url() == "memory://"
                    && shared.backend.is_private()
                    && shared.secret.is_none()
            })
            .cloned();
        let worker_task = worker.as_ref().map(|w| {
            let w = w.clone();
            rt.spawn(async move { w.run().await })
        });
        Ok(Server {
            handle: Arc::new(ServerCore {
                rt: Some(rt),
                shared,
                worker,
                lane,
                worker_task: Mutex::new(worker_task),
                publish: tx,
                queue,
                routes: self.routes,
                created: Instant::now(),
                destroyed: AtomicBool::new(false),
                callback_thread: Mutex::new(Some(callback_thread)),
            }),
        })
    }
}
