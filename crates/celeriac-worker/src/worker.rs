//! The consume → execute → store → ack loop.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::TaskPool;
use celeriac_core::message::DEFAULT_MAX_BODY;
use celeriac_core::time::unix_now;
use celeriac_core::{
    Args, Broker, Delivery, Message, NodeInfo, Outgoing, RateLimit, Registry, ResultBackend,
    ResultMeta, RetryDecision, State, TaskContext, TaskError, TaskErrorKind,
};
use celeriac_pool::process::{ProcessJob, ProcessPool};
use celeriac_pool::{Panicked, ThreadPool};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

use crate::{PoolKind, WorkerError};

/// How long one claim waits for work before the loop claims again; it
/// also bounds how long a shutdown waits for the claim in flight.
const CLAIM_WAIT: Duration = Duration::from_millis(250);

/// Celery's default `worker_prefetch_multiplier`: a worker reserves up to
/// this many messages per execution slot.
pub const DEFAULT_PREFETCH_MULTIPLIER: usize = 4;

/// How long a reserved message may expect to wait for a slot: the worker
/// reserves ahead only as many messages per slot as it expects to start
/// within this time (from the tasks' average runtime), so that a message
/// never waits behind long tasks while another worker could run it.
const PREFETCH_WAIT: Duration = Duration::from_millis(50);

/// The most finished tasks whose results are stored and acks sent in one
/// round trip each.
const SETTLE_BATCH: usize = 512;

/// Counters of what a worker has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Tasks run to a SUCCESS.
    pub succeeded: u64,
    /// Tasks run to a FAILURE (errors, panics, bad arguments).
    pub failed: u64,
    /// Messages moved to the dead-letter store.
    pub dead_lettered: u64,
    /// Expired messages turned into REVOKED.
    pub expired: u64,
    /// Retries published.
    pub retried: u64,
    /// Revoked messages turned into REVOKED.
    pub revoked: u64,
    /// Deliveries skipped as duplicates (a finished task delivered again,
    /// or a second task with the same idempotency key).
    pub duplicates: u64,
    /// Tasks running now.
    pub active: usize,
}

#[derive(Debug, Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    expired: AtomicU64,
    retried: AtomicU64,
    revoked: AtomicU64,
    duplicates: AtomicU64,
}

/// Configures a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    concurrency: Option<usize>,
    queues: Vec<String>,
    nodename: Option<String>,
    max_body: usize,
    heartbeat: Duration,
    renew_every: Duration,
    pool: Option<ThreadPool>,
    result_extended: bool,
    max_deliveries: u32,
    rate_limits: HashMap<String, RateLimit>,
    kind: PoolKind,
    procs: ProcessOptions,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    autoscale: Option<(usize, usize)>,
    autoscale_keepalive: Duration,
    prefetch_multiplier: usize,
}

/// Settings of the worker's process pool.
#[derive(Debug, Clone, Default)]
struct ProcessOptions {
    max_tasks_per_child: Option<u64>,
    max_memory_per_child: Option<u64>,
    program: Option<std::path::PathBuf>,
}

impl WorkerBuilder {
    /// Which pool runs blocking tasks (default threads); see [`PoolKind`].
    pub fn pool_kind(mut self, kind: PoolKind) -> Self {
        self.kind = kind;
        self
    }

    /// Process pool: retire a child after this many tasks.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.procs.max_tasks_per_child = Some(n);
        self
    }

    /// Process pool: retire a child after a task that leaves its peak
    /// resident set above this many bytes.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.procs.max_memory_per_child = Some(bytes);
        self
    }

    /// Process pool: the program children run (default: this one). It must
    /// call `celeriac::init()` first thing in `main`.
    pub fn process_program(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.procs.program = Some(path.into());
        self
    }

    /// Default hard time limit of every task (Celery's `task_time_limit`);
    /// a message's own `timelimit` wins. Enforced by killing the child on
    /// the process pool and by cancelling the future on the async pool; a
    /// thread cannot be killed, so the thread pool only applies soft limits.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Default soft time limit of every task (Celery's
    /// `task_soft_time_limit`): the task's `TaskContext::is_cancelled`
    /// turns true, on every pool.
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }

    /// Scales concurrency between `min` and `max` with the queue depth
    /// (Celery's `--autoscale=max,min`): up at once when messages wait,
    /// down after [`autoscale_keepalive`](Self::autoscale_keepalive) of
    /// lower demand.
    pub fn autoscale(mut self, min: usize, max: usize) -> Self {
        self.autoscale = Some((min, max));
        self
    }

    /// How long demand must stay lower before autoscale shrinks the worker
    /// (default 30 s, as Celery).
    pub fn autoscale_keepalive(mut self, keepalive: Duration) -> Self {
        self.autoscale_keepalive = keepalive;
        self
    }

    /// The most messages the worker reserves per execution slot (Celery's
    /// `worker_prefetch_multiplier`, default
    /// [`DEFAULT_PREFETCH_MULTIPLIER`]). Unlike Celery, the worker reserves
    /// ahead only while the tasks are short: only as many messages per
    /// slot as it expects to start within 50 ms, from the average runtime
    /// of recent tasks, so a message never waits behind long tasks while
    /// another worker is idle. Reserved messages are claimed with a lease
    /// that is renewed until they are settled, start in claim order, and
    /// honour revokes and expiry that arrive while they wait. 1 claims only
    /// for free slots; 0 counts as 1.
    pub fn prefetch_multiplier(mut self, n: usize) -> Self {
        self.prefetch_multiplier = n.max(1);
        self
    }

    /// Execution slots (threads). Defaults to the number of CPUs.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Queues to consume, in priority order. Defaults to `celery`.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// The node name, e.g. `w1@host`. Defaults to `celeriac@<hostname>`.
    pub fn nodename(mut self, name: impl Into<String>) -> Self {
        self.nodename = Some(name.into());
        self
    }

    /// Largest message body accepted; larger ones are dead-lettered.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How often the worker announces itself (default 2 s, as Celery).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How often leases of running tasks are renewed at most (default 10 s).
    /// The worker renews at least three times per broker lease
    /// ([`Broker::lease`](celeriac_core::Transport::lease)), whatever this says.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = every;
        self
    }

    /// Also store each task's args and kwargs with its result, like
    /// Celery's `result_extended` (default off, as in Celery). The task name,
    /// worker, queue, retries and runtime are always stored.
    pub fn result_extended(mut self, on: bool) -> Self {
        self.result_extended = on;
        self
    }

    /// A message delivered more than this many times without being
    /// acknowledged (its worker crashed or was killed every time) is a
    /// poison message: it is moved to the dead-letter queue instead of
    /// being run again. Default 5; 0 disables the limit.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Limits how often task `name` starts, overriding its own
    /// `rate_limit` (like Celery's `rate_limit` control command). A global
    /// limit is shared by every worker on the broker.
    pub fn rate_limit(mut self, name: impl Into<String>, limit: RateLimit) -> Self {
        self.rate_limits.insert(name.into(), limit);
        self
    }

    /// Runs tasks on this pool instead of a new one.
    pub fn pool(mut self, pool: ThreadPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Builds the worker. It starts consuming when [`Worker::run`] is
    /// awaited.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.queues.is_empty() {
            return Err(WorkerError::NoQueues);
        }
        if let Some((min, max)) = self.autoscale
            && (min == 0 || min > max)
        {
            return Err(WorkerError::Autoscale { min, max });
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let concurrency = match (self.concurrency, self.autoscale) {
            (Some(0), _) => return Err(WorkerError::ZeroConcurrency),
            (_, Some((min, _))) => min,
            (Some(n), None) => n,
            (None, None) if self.kind == PoolKind::Async => 100,
            (None, None) => cpus,
        };
        // Blocking tasks of an async worker share a CPU-sized thread pool.
        let threads = if self.kind == PoolKind::Async {
            concurrency.min(cpus)
        } else {
            concurrency
        };
        let pool = match self.pool {
            Some(p) => {
                p.set_threads(threads)
                    .map_err(|_| WorkerError::ZeroConcurrency)?;
                p
            }
            None => ThreadPool::builder()
                .thread_name("celeriac-task")
                .threads(threads)
                .build()
                .map_err(|e| WorkerError::Pool(e.to_string()))?,
        };
        let procs = Mutex::new(None);
        if self.kind == PoolKind::Processes {
            *procs.lock() = Some(build_processes(&self.procs, concurrency)?);
        }
        let nodename = self
            .nodename
            .unwrap_or_else(|| format!("celeriac@{}", celeriac_core::message::hostname()));
        Ok(Worker {
            inner: Arc::new(Inner {
                broker: self.broker,
                backend: self.backend,
                registry: self.registry,
                queues: self.queues,
                nodename,
                max_body: self.max_body,
                heartbeat: self.heartbeat,
                renew_every: self.renew_every,
                result_extended: self.result_extended,
                max_deliveries: self.max_deliveries,
                rate_limits: self.rate_limits,
                local_rate: Mutex::new(HashMap::new()),
                pool,
                kind: self.kind,
                procs,
                proc_opts: self.procs,
                time_limit: self.time_limit,
                soft_time_limit: self.soft_time_limit,
                autoscale: self.autoscale,
                autoscale_keepalive: self.autoscale_keepalive,
                running: Mutex::new(HashMap::new()),
                target: AtomicUsize::new(concurrency),
                prefetch: self.prefetch_multiplier,
                avg_runtime_us: AtomicU64::new(u64::MAX),
                reserved: AtomicUsize::new(0),
                executing: AtomicUsize::new(0),
                line: Mutex::new(Line::default()),
                settling: AtomicUsize::new(0),
                waiting: Mutex::new(HashMap::new()),
                to_settle: Mutex::new(Vec::new()),
                settling_now: AtomicBool::new(false),
                slot_freed: Notify::new(),
                held: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                stopping: AtomicBool::new(false),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    queues: Vec<String>,
    nodename: String,
    max_body: usize,
    heartbeat: Duration,
    renew_every: Duration,
    result_extended: bool,
    max_deliveries: u32,
    rate_limits: HashMap<String, RateLimit>,
    local_rate: Mutex<HashMap<String, f64>>,
    pool: ThreadPool,
    kind: PoolKind,
    /// The process pool: built up front for `-P processes`, or at the
    /// first task that asks for processes.
    procs: Mutex<Option<ProcessPool>>,
    proc_opts: ProcessOptions,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    autoscale: Option<(usize, usize)>,
    autoscale_keepalive: Duration,
    /// Tasks running now, by task id, and how to stop each.
    running: Mutex<HashMap<String, Stopper>>,
    target: AtomicUsize,
    /// The most messages reserved per execution slot.
    prefetch: usize,
    /// Average runtime of the recent tasks in microseconds (an EWMA;
    /// `u64::MAX` before the first task finishes).
    avg_runtime_us: AtomicU64,
    /// Messages claimed and not yet run (waiting for a slot or running).
    reserved: AtomicUsize,
    /// Execution slots in use.
    executing: AtomicUsize,
    /// Reserved messages, in the order they start.
    line: Mutex<Line>,
    /// Messages held and not yet settled (acked, requeued or dead-lettered).
    settling: AtomicUsize,
    /// Task ids of reserved messages waiting for a slot, and whether a
    /// revoke arrived for them since they were claimed.
    waiting: Mutex<HashMap<String, bool>>,
    /// Finished tasks whose result is stored and message acked in batches.
    to_settle: Mutex<Vec<Settle>>,
    /// Whether a task is settling a batch (see [`settle`]).
    settling_now: AtomicBool,
    slot_freed: Notify,
    held: Mutex<HashMap<String, Delivery>>,
    counters: Counters,
    stopping: AtomicBool,
}

impl Inner {
    /// How many messages to reserve per slot: as many as are expected to
    /// start within [`PREFETCH_WAIT`], between 1 and `prefetch`. Until a
    /// task has finished, nothing is known: 1.
    fn reserve_per_slot(&self) -> usize {
        let avg = self.avg_runtime_us.load(Ordering::Relaxed);
        if avg == u64::MAX {
            return 1;
        }
        let fit = PREFETCH_WAIT.as_micros() as u64 / avg.max(1);
        (fit as usize).clamp(1, self.prefetch)
    }

    fn record_runtime(&self, runtime: Duration) {
        let us = runtime.as_micros().min(u64::MAX as u128 - 1) as u64;
        let _ = self
            .avg_runtime_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == u64::MAX {
                    us
                } else {
                    (avg.saturating_mul(7) / 8).saturating_add(us / 8)
                })
            });
    }
}

/// A worker: consumes task messages and runs them. Cheap to clone; clones
/// share the worker.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use celeriac_core::{Call, Outgoing, Registry, ResultBackend, Transport};
/// use celeriac_embedded::{MemoryBackend, MemoryBroker};
/// use celeriac_worker::Worker;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let broker = Arc::new(MemoryBroker::new());
/// let backend = Arc::new(MemoryBackend::new());
/// let mut registry = Registry::new();
/// registry.register_fn("tasks.mul", |_, args| {
///     let mut b = args.bind("mul", &["x", "y"])?;
///     Ok(serde_json::json!(b.take::<i64>(0)? * b.take::<i64>(1)?))
/// }).unwrap();
/// let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
///     .concurrency(2)
///     .build()
///     .unwrap();
/// let running = tokio::spawn({ let w = worker.clone(); async move { w.run().await } });
///
/// let msg = Call::<i64>::new("tasks.mul").arg(6).arg(7).to_message().unwrap();
/// let watch = backend.watch(msg.id()).await.unwrap();
/// broker.publish(Outgoing::from_message(&msg).unwrap()).await.unwrap();
/// assert_eq!(watch.await.unwrap().result, 42);
///
/// worker.shutdown();
/// running.await.unwrap();
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl Worker {
    /// Starts configuring a worker for a broker, a result backend and the
    /// tasks it can run.
    pub fn builder(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Arc<Registry>,
    ) -> WorkerBuilder {
        WorkerBuilder {
            broker,
            backend,
            registry,
            concurrency: None,
            queues: vec![celeriac_core::message::DEFAULT_QUEUE.to_string()],
            nodename: None,
            max_body: DEFAULT_MAX_BODY,
            heartbeat: Duration::from_secs(2),
            renew_every: Duration::from_secs(10),
            pool: None,
            result_extended: false,
            max_deliveries: 5,
            rate_limits: HashMap::new(),
            kind: PoolKind::Threads,
            procs: ProcessOptions::default(),
            time_limit: None,
            soft_time_limit: None,
            autoscale: None,
            autoscale_keepalive: Duration::from_secs(30),
            prefetch_multiplier: DEFAULT_PREFETCH_MULTIPLIER,
        }
    }

    /// The node name.
    pub fn nodename(&self) -> &str {
        &self.inner.nodename
    }

    /// The queues consumed.
    pub fn queues(&self) -> &[String] {
        &self.inner.queues
    }

    /// Execution slots.
    pub fn concurrency(&self) -> usize {
        self.inner.target.load(Ordering::SeqCst)
    }

    /// Resizes the worker while it runs. Running tasks finish; no task is
    /// lost. `n` must be at least 1.
    pub fn set_concurrency(&self, n: usize) -> Result<(), WorkerError> {
        if n == 0 {
            return Err(WorkerError::ZeroConcurrency);
        }
        let inner = &self.inner;
        let threads = if inner.kind == PoolKind::Async {
            n.min(std::thread::available_parallelism().map_or(1, |c| c.get()))
        } else {
            n
        };
        inner
            .pool
            .set_threads(threads)
            .map_err(|e| WorkerError::Pool(e.to_string()))?;
        if let Some(p) = inner.procs.lock().as_ref() {
            p.set_processes(n)?;
        }
        let old = inner.target.swap(n, Ordering::SeqCst);
        if old != n {
            tracing::info!(node = %inner.nodename, from = old, to = n, "concurrency changed");
        }
        self.inner.slot_freed.notify_waiters();
        self.inner.line.lock().wake_front();
        Ok(())
    }

    /// The pool kind running blocking tasks.
    pub fn pool_kind(&self) -> PoolKind {
        self.inner.kind
    }

    /// Pids of the process pool's children (empty without one).
    pub fn child_pids(&self) -> Vec<u32> {
        self.inner
            .procs
            .lock()
            .as_ref()
            .map(ProcessPool::pids)
            .unwrap_or_default()
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.inner.counters;
        WorkerStats {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            revoked: c.revoked.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            active: self.inner.executing.load(Ordering::SeqCst),
        }
    }

    /// Asks the worker to stop (warm): it stops claiming, finishes the
    /// tasks it is running, stores their results and acks them, puts the
    /// messages it reserved but had not started back on their queue, then
    /// [`Worker::run`] returns.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.slot_freed.notify_waiters();
        self.inner.line.lock().wake_all();
    }

    /// Whether shutdown was requested.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Consumes and runs tasks until [`Worker::shutdown`] is called. Must
    /// run inside a tokio runtime.
    pub async fn run(&self) {
        let inner = &self.inner;
        tracing::info!(node = %inner.nodename, queues = ?inner.queues, concurrency = self.concurrency(),
            broker = %inner.broker.url(), "worker ready");
        let heartbeat = tokio::spawn(heartbeat_loop(self.inner.clone()));
        let renewer = tokio::spawn(renew_loop(self.inner.clone()));
        let terminator = tokio::spawn(terminate_loop(self.inner.clone()));
        let scaler = inner
            .autoscale
            .map(|(min, max)| tokio::spawn(autoscale_loop(self.clone(), min, max)));
        let mut backoff = Duration::from_millis(100);
        while !self.is_stopping() {
            // Reserve up to `prefetch` messages per slot.
            let free = loop {
                let freed = inner.slot_freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let limit = inner.target.load(Ordering::SeqCst) * inner.reserve_per_slot();
                let busy = inner.reserved.load(Ordering::SeqCst);
                if self.is_stopping() {
                    break 0;
                }
                if busy < limit {
                    break limit - busy;
                }
                freed.await;
            };
            if free == 0 {
                break;
            }
            // A claim is never cancelled: the broker may already have
            // recorded it, and a dropped claim would strand its messages
            // until their lease lapses. It returns within CLAIM_WAIT.
            let claimed = inner
                .broker
                .claim(&inner.nodename, &inner.queues, free, CLAIM_WAIT)
                .await;
            match claimed {
                Ok(deliveries) if self.is_stopping() => {
                    // Shutting down: give back what was just claimed
                    // instead of starting it.
                    for d in deliveries {
                        if let Err(e) = inner.broker.requeue(&d, None).await {
                            tracing::error!(error = %e, "could not give a message back at shutdown; it returns when its lease lapses");
                        }
                    }
                    break;
                }
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    for d in deliveries {
                        inner.reserved.fetch_add(1, Ordering::SeqCst);
                        inner.settling.fetch_add(1, Ordering::SeqCst);
                        // Held (its lease renewed) from the claim until it
                        // is settled, waiting for a slot included.
                        inner.held.lock().insert(d.tag.clone(), d.clone());
                        // Its place in line, taken here so that messages
                        // start in the order they were claimed.
                        let wake = Arc::new(Notify::new());
                        let ticket = inner.line.lock().join(&wake);
                        let inner = self.inner.clone();
                        tokio::spawn(async move {
                            let tag = d.tag.clone();
                            let mut slot = Slot::new(&inner, ticket, wake);
                            handle(&inner, d, &mut slot).await;
                            drop(slot);
                            inner.held.lock().remove(&tag);
                            inner.settling.fetch_sub(1, Ordering::SeqCst);
                            inner.slot_freed.notify_waiters();
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "claim failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Warm shutdown: wait until every held message is settled (its
        // result stored and the message acked or given back).
        loop {
            let freed = inner.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if inner.settling.load(Ordering::SeqCst) == 0 {
                break;
            }
            freed.await;
        }
        heartbeat.abort();
        renewer.abort();
        terminator.abort();
        if let Some(s) = scaler {
            s.abort();
        }
        let procs = inner.procs.lock().clone();
        if let Some(p) = procs {
            let _ = tokio::task::spawn_blocking(move || p.shutdown(Duration::from_secs(10))).await;
        }
        if let Err(e) = inner.broker.node_gone(&inner.nodename).await {
            tracing::warn!(error = %e, "could not remove node record");
        }
        tracing::info!(node = %inner.nodename, "worker stopped");
    }
}

fn build_processes(opts: &ProcessOptions, n: usize) -> Result<ProcessPool, WorkerError> {
    let mut b = ProcessPool::builder().processes(n);
    if let Some(m) = opts.max_tasks_per_child {
        b = b.max_tasks_per_child(m);
    }
    if let Some(m) = opts.max_memory_per_child {
        b = b.max_memory_per_child(m);
    }
    if let Some(p) = &opts.program {
        b = b.program(p);
    }
    Ok(b.build()?)
}

/// Follows queue depth: grows at once to what is running plus waiting
/// (within `max`), shrinks after `keepalive` of lower demand (within
/// `min`).
async fn autoscale_loop(worker: Worker, min: usize, max: usize) {
    let inner = &worker.inner;
    let mut low_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut waiting = 0usize;
        for q in &inner.queues {
            match inner.broker.queue_len(q).await {
                Ok(n) => waiting += n,
                Err(e) => {
                    tracing::debug!(queue = %q, error = %e, "autoscale: queue length unknown")
                }
            }
        }
        let busy = inner.reserved.load(Ordering::SeqCst);
        let want = (busy + waiting).clamp(min, max);
        let current = worker.concurrency();
        if want > current {
            low_since = None;
            tracing::info!(from = current, to = want, waiting, "autoscale: growing");
            if let Err(e) = worker.set_concurrency(want) {
                tracing::warn!(error = %e, "autoscale: could not grow");
            }
        } else if want < current {
            let since = *low_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= inner.autoscale_keepalive {
                tracing::info!(from = current, to = want, "autoscale: shrinking");
                if let Err(e) = worker.set_concurrency(want) {
                    tracing::warn!(error = %e, "autoscale: could not shrink");
                }
                low_since = None;
            }
        } else {
            low_since = None;
        }
    }
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    loop {
        let node = NodeInfo {
            name: inner.nodename.clone(),
            concurrency: inner.target.load(Ordering::SeqCst),
            pid: std::process::id(),
            last_seen: unix_now(),
        };
        if let Err(e) = inner.broker.heartbeat(&node).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::time::sleep(inner.heartbeat).await;
    }
}

async fn renew_loop(inner: Arc<Inner>) {
    let every = inner
        .renew_every
        .min(inner.broker.lease() / 3)
        .max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let held: Vec<Delivery> = inner.held.lock().values().cloned().collect();
        if held.is_empty() {
            continue;
        }
        if let Err(e) = inner.broker.renew(&held).await {
            tracing::warn!(error = %e, count = held.len(), "lease renewal failed");
        }
    }
}

async fn dead_letter(inner: &Inner, d: &Delivery, reason: &str) {
    inner.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = inner.broker.dead_letter(d, reason).await {
        // Not acked, so the lease lapses and the message comes back.
        tracing::error!(error = %e, reason, "could not dead-letter message; it stays in the broker");
    }
}

async fn store(inner: &Inner, meta: &ResultMeta) -> bool {
    match inner.backend.store(meta).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(task_id = %meta.task_id, error = %e, "could not store result");
            false
        }
    }
}

/// The line of reserved messages waiting to start: they start in the order
/// they joined it (the order of their claim), as slots free up. Only the
/// first in line is woken when a slot frees, not every waiting message.
#[derive(Debug, Default)]
struct Line {
    waiting: std::collections::VecDeque<(u64, Arc<Notify>)>,
    next: u64,
}

impl Line {
    fn join(&mut self, wake: &Arc<Notify>) -> u64 {
        let ticket = self.next;
        self.next += 1;
        self.waiting.push_back((ticket, wake.clone()));
        if self.waiting.len() == 1 {
            wake.notify_one();
        }
        ticket
    }

    fn leave(&mut self, ticket: u64) {
        if let Some(at) = self.waiting.iter().position(|(t, _)| *t == ticket) {
            self.waiting.remove(at);
            if at == 0 {
                self.wake_front();
            }
        }
    }

    fn is_first(&self, ticket: u64) -> bool {
        self.waiting.front().is_some_and(|(t, _)| *t == ticket)
    }

    /// Wakes the first in line (a permit is kept if it is not waiting yet).
    fn wake_front(&self) {
        if let Some((_, wake)) = self.waiting.front() {
            wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for (_, wake) in &self.waiting {
            wake.notify_one();
        }
    }
}

/// A reserved message's claim on the worker: its reservation, its place in
/// line, and once [`Slot::start`] returns, an execution slot. All are
/// released once the task has run (or will not run), so that the next
/// claim overlaps with storing this task's result.
struct Slot<'a> {
    inner: &'a Inner,
    reserved: bool,
    ticket: Option<u64>,
    wake: Arc<Notify>,
    executing: bool,
}

impl<'a> Slot<'a> {
    /// The slot of a message that joined the line with `ticket`.
    fn new(inner: &'a Inner, ticket: u64, wake: Arc<Notify>) -> Self {
        Slot {
            inner,
            reserved: true,
            ticket: Some(ticket),
            wake,
            executing: false,
        }
    }

    /// Leaves the line for a wait of its own (a rate limit), so that the
    /// messages behind it can start.
    fn step_aside(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.inner.line.lock().leave(t);
        }
    }

    /// Joins the line again, at its end.
    fn rejoin(&mut self) {
        if self.ticket.is_none() && !self.executing {
            self.ticket = Some(self.inner.line.lock().join(&self.wake));
        }
    }

    /// Waits until this message is first in line and a slot is free.
    /// Returns `false` if the worker is shutting down instead (the message
    /// is to be given back).
    async fn start(&mut self) -> bool {
        let inner = self.inner;
        self.rejoin();
        loop {
            if inner.stopping.load(Ordering::SeqCst) {
                self.step_aside();
                return false;
            }
            {
                let mut line = inner.line.lock();
                let first = self.ticket.is_some_and(|t| line.is_first(t));
                let target = inner.target.load(Ordering::SeqCst);
                if first && inner.executing.load(Ordering::SeqCst) < target {
                    line.waiting.pop_front();
                    self.ticket = None;
                    let running = inner.executing.fetch_add(1, Ordering::SeqCst) + 1;
                    self.executing = true;
                    // The next in line may start too, if a slot is left (a
                    // wake without one would only put it back to sleep).
                    if running < target {
                        line.wake_front();
                    }
                    return true;
                }
            }
            // Woken when it becomes first, when a slot frees while it is
            // first, or at shutdown; a permit left by an earlier wake makes
            // this return at once, so no wake is lost.
            self.wake.notified().await;
        }
    }

    fn release(&mut self) {
        let inner = self.inner;
        self.step_aside();
        if std::mem::take(&mut self.executing) {
            inner.executing.fetch_sub(1, Ordering::SeqCst);
            inner.line.lock().wake_front();
        }
        if std::mem::take(&mut self.reserved) {
            inner.reserved.fetch_sub(1, Ordering::SeqCst);
            inner.slot_freed.notify_waiters();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A finished task to settle: its result to store (none with
/// `ignore_result`), then its message to ack.
#[derive(Debug)]
struct Settle {
    meta: Option<ResultMeta>,
    delivery: Delivery,
    /// Told when it is settled (none when its own handler settles it).
    done: Option<oneshot::Sender<()>>,
}

/// Stores the result of a finished task and acks its message, batched with
/// the other tasks finishing at the same time; returns once both are done
/// (or the message was given back because the result could not be stored).
///
/// Whoever finds no batch being written writes one itself: its own task and
/// every one queued meanwhile, and again until none is left. So a lone task
/// is settled by its own handler without a hand-off to another task, and a
/// busy worker makes two round trips per batch instead of two per task.
async fn settle(inner: &Inner, meta: Option<ResultMeta>, delivery: Delivery) {
    if !inner.broker.batch_settles() {
        // In-process: a batch saves no round trip, and waiting for another
        // handler's batch would add a wake-up.
        let one = Settle {
            meta,
            delivery,
            done: None,
        };
        settle_batch(inner, vec![one]).await;
        return;
    }
    let (done, mut rx) = oneshot::channel();
    inner.to_settle.lock().push(Settle {
        meta,
        delivery,
        done: Some(done),
    });
    loop {
        if inner.settling_now.swap(true, Ordering::AcqRel) {
            // Another handler is writing batches; ours is queued, and it
            // checks the queue once more after clearing the flag.
            let _ = (&mut rx).await;
            return;
        }
        {
            // Cleared however this ends, a panicking backend included (the
            // unsettled messages then come back when their leases lapse).
            let _combining = ClearOnDrop(&inner.settling_now);
            loop {
                let batch: Vec<Settle> = {
                    let mut queue = inner.to_settle.lock();
                    let n = queue.len().min(SETTLE_BATCH);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                settle_batch(inner, batch).await;
            }
        }
        // A task queued after the last drain and before the flag cleared
        // saw the flag set and is waiting: take it over.
        if inner.to_settle.lock().is_empty() {
            // Ours was in a batch written above (or by the handler that
            // held the flag before us).
            let _ = rx.await;
            return;
        }
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn settle_batch(inner: &Inner, batch: Vec<Settle>) {
    // Taken apart without copies: the results to store, and for each task
    // whether it had one, its delivery and whom to tell.
    let mut metas = Vec::with_capacity(batch.len());
    let mut tasks = Vec::with_capacity(batch.len());
    for s in batch {
        tasks.push((s.meta.is_some(), s.delivery, s.done));
        metas.extend(s.meta);
    }
    // Whether each result is stored.
    let stored: Vec<bool> = match inner.backend.store_many(&metas).await {
        Ok(()) => vec![true; metas.len()],
        Err(e) => {
            tracing::warn!(error = %e, count = metas.len(), "could not store a batch of results; storing them one by one");
            let mut stored = Vec::with_capacity(metas.len());
            for meta in &metas {
                stored.push(store(inner, meta).await);
            }
            stored
        }
    };
    let mut stored = stored.into_iter();
    let mut acks = Vec::with_capacity(tasks.len());
    let mut back = Vec::new();
    let mut dones = Vec::with_capacity(tasks.len());
    for (has_meta, delivery, done) in tasks {
        if !has_meta || stored.next().unwrap_or(false) {
            acks.push(delivery);
        } else {
            back.push(delivery);
        }
        dones.extend(done);
    }
    match inner.broker.ack_many(&acks).await {
        Ok(held) => {
            for (d, held) in acks.iter().zip(held) {
                if !held {
                    tracing::warn!(tag = %d.tag, "ack refused: the message's lease had lapsed; it may be delivered again (its stored result makes a redelivery skip it)");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, count = acks.len(), "ack failed; the messages may be delivered again (their stored results make a redelivery skip them)");
        }
    }
    for d in &back {
        if let Err(e) = inner.broker.requeue(d, Some(unix_now() + 1.0)).await {
            tracing::error!(error = %e, "could not requeue task after a failed result store; it returns when its lease lapses");
        }
    }
    for done in dones {
        let _ = done.send(());
    }
}

async fn handle(inner: &Arc<Inner>, d: Delivery, slot: &mut Slot<'_>) {
    if inner.max_deliveries > 0 && d.deliveries > inner.max_deliveries {
        let reason = format!(
            "poison message: delivered {} times without being acknowledged (its worker crashed or was killed each time)",
            d.deliveries - 1
        );
        tracing::error!(queue = %d.queue, deliveries = d.deliveries, "{reason}; moving it to the dead-letter queue");
        slot.release();
        dead_letter(inner, &d, &reason).await;
        return;
    }
    let msg = match Message::decode_with_limit(&d.payload, inner.max_body) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(queue = %d.queue, error = %e, bytes = d.payload.len(),
                "malformed message; moving it to the dead-letter queue");
            slot.release();
            dead_letter(inner, &d, &e.to_string()).await;
            return;
        }
    };
    let id = msg.id().to_string();
    let name = msg.task().to_string();
    let now = unix_now();

    if d.revoked {
        tracing::info!(task_id = %id, task = %name, "task revoked; marking REVOKED");
        inner.counters.revoked.fetch_add(1, Ordering::Relaxed);
        slot.release();
        settle_revoked(inner, &msg, d, "revoked").await;
        return;
    }
    if let Some(exp) = msg.expires_unix().filter(|&e| e < now) {
        tracing::info!(task_id = %id, task = %name, expired_at = exp, "task expired; marking REVOKED");
        inner.counters.expired.fetch_add(1, Ordering::Relaxed);
        slot.release();
        settle_revoked(inner, &msg, d, "expired").await;
        return;
    }
    if let Some(eta) = msg.eta_unix().filter(|&e| e > now + 0.005) {
        // A delayed message the broker did not hold back (e.g. from a
        // foreign producer): put it in the broker's delayed store.
        slot.release();
        if let Err(e) = inner.broker.requeue(&d, Some(eta)).await {
            tracing::error!(task_id = %id, error = %e, "could not defer eta task");
        }
        return;
    }
    if let Some(key) = msg.idempotency_key() {
        match inner.backend.claim_key(key, &id, IDEMPOTENCY_TTL).await {
            Ok(None) => {}
            Ok(Some(holder)) if holder == id => {}
            Ok(Some(holder)) => {
                duplicate_of(inner, &msg, &d, key, &holder).await;
                return;
            }
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "could not claim the idempotency key; retrying later");
                if let Err(e) = inner.broker.requeue(&d, Some(now + 1.0)).await {
                    tracing::error!(task_id = %id, error = %e, "could not requeue task");
                }
                return;
            }
        }
    }
    if d.redelivered {
        // A worker that died after storing the result but before the ack
        // leaves a finished task to be delivered again: skip it.
        if let Ok(Some(meta)) = inner.backend.get(&id).await
            && meta.status.is_ready()
        {
            tracing::info!(task_id = %id, task = %name, status = %meta.status,
                "redelivered task already finished; skipping it");
            inner.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            ack(inner, &d).await;
            return;
        }
    }
    let Some(task) = inner.registry.get(&name).cloned() else {
        tracing::error!(task_id = %id, task = %name, "received unregistered task; moving it to the dead-letter queue");
        let err = TaskError::not_registered(&name);
        let meta = extended(inner, &msg, &d, ResultMeta::failure(&id, &err), None);
        store(inner, &meta).await;
        inner.counters.failed.fetch_add(1, Ordering::Relaxed);
        slot.release();
        dead_letter(inner, &d, &format!("unknown task {name:?}")).await;
        return;
    };
    if msg.embed.callbacks.is_some()
        || msg.embed.chain.as_ref().is_some_and(|c| !c.is_empty())
        || msg.embed.chord.is_some()
    {
        tracing::warn!(task_id = %id, "message carries canvas callbacks/chain/chord; celeriac does not run them yet");
    }

    let options = *task.options();
    let limit = inner.rate_limits.get(&name).copied().or(options.rate());
    if let Some(limit) = limit
        && !wait_for_rate(inner, &name, limit, &d, slot).await
    {
        return;
    }
    // Wait for an execution slot: the message may have been reserved ahead
    // of one (prefetch). A revoke that arrives meanwhile is honoured, and a
    // worker shutting down gives waiting messages back.
    inner.waiting.lock().insert(id.clone(), false);
    let started = slot.start().await;
    let revoked_meanwhile = inner.waiting.lock().remove(&id).unwrap_or(false);
    if !started {
        if let Err(e) = inner.broker.requeue(&d, None).await {
            tracing::error!(task_id = %id, error = %e, "could not give a reserved message back at shutdown; it returns when its lease lapses");
        }
        return;
    }
    if revoked_meanwhile {
        tracing::info!(task_id = %id, task = %name, "task revoked while reserved; marking REVOKED");
        inner.counters.revoked.fetch_add(1, Ordering::Relaxed);
        slot.release();
        settle_revoked(inner, &msg, d, "revoked").await;
        return;
    }
    if let Some(exp) = msg.expires_unix().filter(|&e| e < unix_now()) {
        tracing::info!(task_id = %id, task = %name, expired_at = exp, "task expired while reserved; marking REVOKED");
        inner.counters.expired.fetch_add(1, Ordering::Relaxed);
        slot.release();
        settle_revoked(inner, &msg, d, "expired").await;
        return;
    }
    let mut ctx = TaskContext::from_message(&msg, &inner.nodename);
    let hard = ctx.time_limit().or(inner.time_limit);
    let soft = ctx.soft_time_limit().or(inner.soft_time_limit);
    ctx.set_time_limits(hard, soft);
    let args = Args::new(msg.args.clone(), msg.kwargs.clone());
    // acks_late = false (Celery's default, not ours): ack as the task
    // starts; a crash from here on loses it, as the task asked.
    let early = !options.is_acks_late();
    if early {
        inner.held.lock().remove(&d.tag);
        ack(inner, &d).await;
    }
    let outcome = execute(inner, &task, ctx, args, hard, soft).await;
    slot.release();
    if let Some((_, runtime)) = &outcome {
        inner.record_runtime(*runtime);
    }
    let Some((out, runtime)) = outcome else {
        // The pool is shutting down: give the message back.
        inner.held.lock().remove(&d.tag);
        let back = if early {
            match Outgoing::from_message(&msg) {
                Ok(o) => inner.broker.publish(o).await,
                Err(e) => Err(celeriac_core::BrokerError::storage(e)),
            }
        } else {
            inner.broker.requeue(&d, None).await
        };
        if let Err(e) = back {
            tracing::error!(task_id = %id, error = %e, "could not requeue task");
        }
        return;
    };
    if let Err(e) = &out
        && e.kind() == TaskErrorKind::WorkerLost
        && !early
        && options.rejects_on_worker_lost()
    {
        // Celery's reject_on_worker_lost: run it again rather than fail it
        // (a message that keeps killing its worker ends as a poison
        // message after max_deliveries).
        tracing::warn!(task_id = %id, task = %name, error = %e, "worker lost; requeueing (reject_on_worker_lost)");
        inner.held.lock().remove(&d.tag);
        if let Err(e) = inner.broker.requeue(&d, None).await {
            tracing::error!(task_id = %id, error = %e, "could not requeue task");
        }
        return;
    }
    let meta = match out {
        Ok(v) => {
            inner.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(task_id = %id, task = %name, runtime = ?runtime, "task succeeded");
            ResultMeta::success(&id, v)
        }
        Err(e) => {
            let retries = msg.headers.retries;
            match options.decide(&e, retries, random_unit()) {
                RetryDecision::Retry { countdown } => {
                    retry(inner, &msg, &d, &e, countdown, runtime, early).await;
                    return;
                }
                RetryDecision::GiveUp if e.kind() == TaskErrorKind::Retry => {
                    inner.counters.failed.fetch_add(1, Ordering::Relaxed);
                    let err = TaskError::typed(
                        "MaxRetriesExceededError",
                        "celery.exceptions",
                        format!(
                            "Can't retry {name}[{id}] args:{:?} kwargs:{:?}",
                            msg.args, msg.kwargs
                        ),
                    );
                    tracing::warn!(task_id = %id, task = %name, retries, "task gave up: max retries exceeded");
                    ResultMeta::failure(&id, &err)
                }
                _ => {
                    inner.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(task_id = %id, task = %name, error = %e, "task failed");
                    ResultMeta::failure(&id, &e)
                }
            }
        }
    };
    let meta = extended(inner, &msg, &d, meta, Some(runtime));
    let meta = (msg.headers.ignore_result != Some(true)).then_some(meta);
    if early {
        inner.held.lock().remove(&d.tag);
        if let Some(meta) = meta
            && !store(inner, &meta).await
        {
            tracing::error!(task_id = %id, "the result was not stored and the message was acked early (acks_late = false)");
        }
    } else {
        settle(inner, meta, d).await;
    }
}

/// Records REVOKED (`why`: revoked or expired) for a task that will not
/// run, and acks its message.
async fn settle_revoked(inner: &Inner, msg: &Message, d: Delivery, why: &str) {
    let meta = extended(
        inner,
        msg,
        &d,
        ResultMeta::failure(msg.id(), &TaskError::revoked(why)),
        None,
    );
    settle(inner, Some(meta), d).await;
}

/// How to stop a running task for `revoke(terminate=True)`.
#[derive(Debug, Clone)]
enum Stopper {
    /// A thread cannot be killed: cancel its context.
    Thread(celeriac_core::CancelToken),
    /// Kill its child process.
    Process,
    /// Abort its future.
    Future(tokio::task::AbortHandle),
}

/// Removes a task from the running set when its run ends.
struct RunningGuard<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> RunningGuard<'a> {
    fn new(inner: &'a Inner, id: &str, stop: Stopper) -> Self {
        inner.running.lock().insert(id.to_string(), stop);
        RunningGuard {
            inner,
            id: id.to_string(),
        }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.inner.running.lock().remove(&self.id);
    }
}

/// Every second, asks the broker which reserved messages were revoked
/// since their claim (they are marked, and recorded as REVOKED instead of
/// running), and which running tasks were revoked with terminate (they
/// are stopped).
async fn terminate_loop(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waiting: Vec<String> = inner.waiting.lock().keys().cloned().collect();
        if !waiting.is_empty() {
            match inner.broker.revoked(&waiting).await {
                Ok(revoked) => {
                    let mut waiting = inner.waiting.lock();
                    for id in revoked {
                        if let Some(flag) = waiting.get_mut(&id) {
                            *flag = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not check reserved messages for revokes")
                }
            }
        }
        let ids: Vec<String> = inner.running.lock().keys().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        let doomed = match inner.broker.terminations(&ids).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "could not check for terminations");
                continue;
            }
        };
        for id in doomed {
            let stop = inner.running.lock().get(&id).cloned();
            match stop {
                Some(Stopper::Process) => {
                    let pool = inner.procs.lock().clone();
                    if pool.is_some_and(|p| p.terminate(&id)) {
                        tracing::warn!(task_id = %id, "revoked with terminate: killing its child process");
                    }
                }
                Some(Stopper::Future(h)) => {
                    tracing::warn!(task_id = %id, "revoked with terminate: cancelling it");
                    h.abort();
                }
                Some(Stopper::Thread(token)) if !token.is_cancelled() => {
                    tracing::warn!(task_id = %id, "revoked with terminate: a thread cannot be killed; cancelling its context");
                    token.cancel();
                }
                _ => {}
            }
        }
    }
}

/// Where a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exec {
    Threads,
    Processes,
    Async,
}

fn choose(inner: &Inner, task: &celeriac_core::RegisteredTask) -> Exec {
    if task.is_async() {
        return Exec::Async;
    }
    match task.options().pool_choice() {
        Some(TaskPool::Processes) => Exec::Processes,
        Some(TaskPool::Threads) => Exec::Threads,
        _ => match inner.kind {
            PoolKind::Processes => Exec::Processes,
            _ => Exec::Threads,
        },
    }
}

/// The process pool, built at first use when the worker's kind is not
/// processes.
fn process_pool(inner: &Inner) -> Result<ProcessPool, WorkerError> {
    let mut procs = inner.procs.lock();
    if let Some(p) = procs.as_ref() {
        return Ok(p.clone());
    }
    let p = build_processes(&inner.proc_opts, inner.target.load(Ordering::SeqCst))?;
    *procs = Some(p.clone());
    Ok(p)
}

/// Cancels `token` when the soft limit passes, unless aborted first.
fn soft_timer(
    soft: Option<Duration>,
    token: &celeriac_core::CancelToken,
) -> Option<tokio::task::JoinHandle<()>> {
    soft.map(|soft| {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(soft).await;
            token.cancel();
        })
    })
}

/// Runs a task on the pool that suits it. `None` when the pool is shutting
/// down (the message goes back to the broker).
async fn execute(
    inner: &Arc<Inner>,
    task: &Arc<celeriac_core::RegisteredTask>,
    ctx: TaskContext,
    args: Args,
    hard: Option<Duration>,
    soft: Option<Duration>,
) -> Option<(Result<Value, TaskError>, Duration)> {
    match choose(inner, task) {
        Exec::Async => {
            let start = Instant::now();
            let timer = soft_timer(soft, ctx.cancel_token());
            let id = ctx.id().to_string();
            let handle = tokio::spawn(task.invoke_async(ctx, args));
            let abort = handle.abort_handle();
            let _running = RunningGuard::new(inner, &id, Stopper::Future(abort.clone()));
            let joined = match hard {
                Some(limit) => match tokio::time::timeout(limit, handle).await {
                    Ok(j) => Some(j),
                    Err(_) => {
                        abort.abort();
                        None
                    }
                },
                None => Some(handle.await),
            };
            if let Some(t) = timer {
                t.abort();
            }
            let out = match joined {
                Some(Ok(out)) => out,
                Some(Err(e)) if e.is_panic() => Err(TaskError::panicked(
                    Panicked::from_payload(e.into_panic()).into_message(),
                )),
                Some(Err(_)) => Err(TaskError::revoked("terminated")),
                None => Err(TaskError::timed_out(format!(
                    "TimeLimitExceeded({})",
                    hard.unwrap_or_default().as_secs_f64()
                ))),
            };
            Some((out, start.elapsed()))
        }
        Exec::Processes => {
            let pool = match process_pool(inner) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "no process pool; running on threads");
                    return run_on_threads(inner, task, ctx, args, hard, soft).await;
                }
            };
            let (tx, rx) = oneshot::channel();
            let _running = RunningGuard::new(inner, ctx.id(), Stopper::Process);
            let job = ProcessJob::new(task.name(), ctx, args);
            pool.submit(job, move |o| {
                let _ = tx.send((o.result, o.runtime));
            })
            .ok()?;
            rx.await.ok()
        }
        Exec::Threads => run_on_threads(inner, task, ctx, args, hard, soft).await,
    }
}

async fn run_on_threads(
    inner: &Arc<Inner>,
    task: &Arc<celeriac_core::RegisteredTask>,
    ctx: TaskContext,
    args: Args,
    hard: Option<Duration>,
    soft: Option<Duration>,
) -> Option<(Result<Value, TaskError>, Duration)> {
    if hard.is_some() {
        tracing::debug!(task = %task.name(), "a hard time limit is not enforced on the thread pool (a thread cannot be killed); use -P processes");
    }
    let timer = soft_timer(soft, ctx.cancel_token());
    let _running = RunningGuard::new(inner, ctx.id(), Stopper::Thread(ctx.cancel_token().clone()));
    let (tx, rx) = oneshot::channel();
    let task = Arc::clone(task);
    let spawned = inner.pool.spawn(move || {
        let start = Instant::now();
        let out = catch_unwind(AssertUnwindSafe(|| task.invoke(&ctx, args))).unwrap_or_else(|p| {
            Err(TaskError::panicked(
                Panicked::from_payload(p).into_message(),
            ))
        });
        let _ = tx.send((out, start.elapsed()));
    });
    let outcome = match spawned {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    if let Some(t) = timer {
        t.abort();
    }
    outcome
}

/// Waits until the rate limit lets task `name` start. A wait longer than a
/// couple of seconds gives the message back to the broker (delayed) instead
/// of holding a slot; returns whether the task may run now.
async fn wait_for_rate(
    inner: &Arc<Inner>,
    name: &str,
    limit: RateLimit,
    d: &Delivery,
    slot: &mut Slot<'_>,
) -> bool {
    let key = format!("celeriac.rate.{name}");
    loop {
        let wait = if limit.is_global() {
            match inner.broker.rate_wait(&key, limit.interval()).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(task = %name, error = %e, "rate limit bucket unavailable; waiting");
                    1.0
                }
            }
        } else {
            let mut local = inner.local_rate.lock();
            match celeriac_core::rate::gcra(local.get(name).copied(), unix_now(), limit.interval())
            {
                Ok(tat) => {
                    local.insert(name.to_string(), tat);
                    0.0
                }
                Err(w) => w,
            }
        };
        if wait <= 0.0 {
            return true;
        }
        if wait > 2.0 {
            inner.held.lock().remove(&d.tag);
            if let Err(e) = inner.broker.requeue(d, Some(unix_now() + wait)).await {
                tracing::error!(task = %name, error = %e, "could not requeue a rate-limited task");
            }
            return false;
        }
        // Out of line while it waits: the messages behind it start.
        slot.step_aside();
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

/// How long an idempotency key is remembered (as long as results are).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400);

/// A task whose idempotency key another task holds: it gets that task's
/// result once there is one, without running.
async fn duplicate_of(inner: &Arc<Inner>, msg: &Message, d: &Delivery, key: &str, holder: &str) {
    let id = msg.id();
    match inner.backend.get(holder).await {
        Ok(Some(meta)) if meta.status.is_ready() => {
            tracing::info!(task_id = %id, key, first = %holder, "duplicate of an idempotent task; reusing its result");
            inner.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            let mut copy = meta;
            copy.task_id = id.to_string();
            if store(inner, &copy).await {
                ack(inner, d).await;
            }
        }
        Ok(_) => {
            // The first task has not finished yet: look again shortly.
            if let Err(e) = inner.broker.requeue(d, Some(unix_now() + 0.5)).await {
                tracing::error!(task_id = %id, error = %e, "could not requeue task");
            }
        }
        Err(e) => {
            tracing::error!(task_id = %id, error = %e, "could not read the first task's result; retrying later");
            if let Err(e) = inner.broker.requeue(d, Some(unix_now() + 1.0)).await {
                tracing::error!(task_id = %id, error = %e, "could not requeue task");
            }
        }
    }
}

/// A number in `[0, 1)` for retry jitter.
fn random_unit() -> f64 {
    let bits = (uuid::Uuid::new_v4().as_u128() >> 75) as u64; // 53 random bits
    bits as f64 / (1u64 << 53) as f64
}

/// Celery's retry: store RETRY, publish the same task id again with
/// `retries + 1`, an eta `countdown` seconds away (kept by the broker's
/// delayed store) and `parent_id` set to itself, then ack this delivery.
async fn retry(
    inner: &Arc<Inner>,
    msg: &Message,
    d: &Delivery,
    err: &TaskError,
    countdown: f64,
    runtime: Duration,
    acked: bool,
) {
    let id = msg.id().to_string();
    let mut meta = ResultMeta::new(
        &id,
        State::Retry,
        serde_json::to_value(err.to_exception_info()).unwrap_or(Value::Null),
    );
    meta.traceback = Some(
        err.traceback()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{err}\n")),
    );
    let meta = extended(inner, msg, d, meta, Some(runtime));
    let mut next = msg.clone();
    next.headers.retries += 1;
    next.headers.eta = Some(celeriac_core::time::iso_from_unix(unix_now() + countdown));
    next.headers.parent_id = Some(id.clone());
    next.properties.delivery_tag = uuid::Uuid::new_v4().to_string();
    next.set_queue(&d.queue);
    // RETRY first: stored after the next attempt, it could overwrite that
    // attempt's final state.
    store(inner, &meta).await;
    inner.held.lock().remove(&d.tag);
    let published = match Outgoing::from_message(&next) {
        Ok(out) => inner.broker.publish(out).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => {
            inner.counters.retried.fetch_add(1, Ordering::Relaxed);
            tracing::info!(task_id = %id, task = %msg.task(), retries = next.headers.retries, countdown, "task retry");
            if !acked {
                ack(inner, d).await;
            }
        }
        Err(e) if acked => {
            tracing::error!(task_id = %id, error = %e, "could not publish the retry of a task acked early (acks_late = false); it is lost");
        }
        Err(e) => {
            // Keep the original instead, delayed the same way: nothing lost.
            tracing::error!(task_id = %id, error = %e, "could not publish the retry; requeueing the original");
            if let Err(e) = inner.broker.requeue(d, Some(unix_now() + countdown)).await {
                tracing::error!(task_id = %id, error = %e, "could not requeue task");
            }
        }
    }
}

async fn ack(inner: &Inner, d: &Delivery) {
    if let Err(e) = inner.broker.ack(d).await {
        tracing::warn!(error = %e, "ack failed; the message may be delivered again");
    }
}

fn extended(
    inner: &Inner,
    msg: &Message,
    d: &Delivery,
    mut meta: ResultMeta,
    runtime: Option<Duration>,
) -> ResultMeta {
    meta.name = Some(msg.headers.task.clone());
    if inner.result_extended {
        meta.args = Some(Value::Array(msg.args.clone()));
        meta.kwargs = Some(Value::Object(msg.kwargs.clone()));
    }
    meta.worker = Some(inner.nodename.clone());
    meta.retries = Some(msg.headers.retries);
    meta.queue = Some(d.queue.clone());
    meta.parent_id = msg.headers.parent_id.clone();
    meta.group_id = msg.headers.group.clone();
    meta.runtime = runtime.map(|r| r.as_secs_f64());
    meta
}
