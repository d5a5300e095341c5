//! The worker's configuration: [`WorkerBuilder`], and the immutable
//! [`Config`] a built worker reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use celeriac_core::message::DEFAULT_MAX_BODY;
use celeriac_core::{Broker, PoolKind, RateLimit, Registry, ResultBackend, Secret};
use celeriac_pool::ThreadPool;

use crate::WorkerError;
use crate::decide::MetaFacts;
use crate::observe::Observer;
use crate::worker::Worker;

/// Celery's default `worker_prefetch_multiplier`: a worker reserves up to
/// this many messages per execution slot.
pub const DEFAULT_PREFETCH_MULTIPLIER: usize = 4;

/// How long a worker keeps storing a result the backend refused before it
/// dead-letters the message with the result attached
/// ([`WorkerBuilder::store_retry_for`]).
pub const DEFAULT_STORE_RETRY_FOR: Duration = Duration::from_secs(300);

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
    observers: Vec<Arc<dyn Observer>>,
    store_retry_for: Duration,
    secret: Option<Secret>,
    max_result: Option<usize>,
    events_enabled: Arc<AtomicBool>,
    mingle: bool,
}

/// Settings of the worker's process pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcessOptions {
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) program: Option<std::path::PathBuf>,
}

/// What a built worker knows of its configuration; it never changes.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) queues: Vec<String>,
    pub(crate) nodename: String,
    pub(crate) max_body: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) renew_every: Duration,
    pub(crate) result_extended: bool,
    pub(crate) max_deliveries: u32,
    pub(crate) rate_limits: HashMap<String, RateLimit>,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) soft_time_limit: Option<Duration>,
    pub(crate) autoscale: Option<(usize, usize)>,
    pub(crate) autoscale_keepalive: Duration,
    pub(crate) store_retry_for: Duration,
    /// Run only messages signed with it; sign what the worker publishes.
    pub(crate) secret: Option<Secret>,
    /// The largest result stored, encoded.
    pub(crate) max_result: Option<usize>,
    /// Whether task events are sent (`-E`; remote control's
    /// `enable_events` and `disable_events` flip it while the worker runs).
    pub(crate) events_enabled: Arc<AtomicBool>,
    /// Whether the worker says `hello` to the others as it starts.
    pub(crate) mingle: bool,
}

impl Config {
    /// What every stored result carries from the worker.
    pub(crate) fn meta_facts(&self) -> MetaFacts<'_> {
        MetaFacts {
            nodename: &self.nodename,
            extended: self.result_extended,
        }
    }
}

/// The parts a [`Worker`] is made of, checked and ready.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) backend: Arc<dyn ResultBackend>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) config: Config,
    pub(crate) kind: PoolKind,
    pub(crate) threads: ThreadPool,
    pub(crate) procs: ProcessOptions,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
}

impl WorkerBuilder {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Arc<Registry>,
    ) -> Self {
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
            observers: Vec::new(),
            store_retry_for: DEFAULT_STORE_RETRY_FOR,
            secret: None,
            max_result: None,
            events_enabled: Arc::new(AtomicBool::new(false)),
            mingle: true,
        }
    }

    /// Whether the worker syncs with the other workers as it starts
    /// (Celery's mingle; default on, `--without-mingle` turns it off): it
    /// broadcasts `hello` before it claims anything and records the task
    /// ids the others (Python Celery workers included) hold as revoked, so
    /// that it skips them too. It waits for the nodes the broker knows to
    /// be listening, at most one second, as Celery does; alone, it does
    /// not wait.
    pub fn mingle(mut self, on: bool) -> Self {
        self.mingle = on;
        self
    }

    /// Sends task events (`task-received`, `task-started`, ...; Celery's
    /// `-E`) for monitors such as `celeriac events`, `celery events` and
    /// Flower. Default off, as in Celery; a monitor's `enable_events`
    /// (Flower sends it every 5 s) turns them on while the worker runs.
    /// Worker events (`worker-online`, `worker-heartbeat`,
    /// `worker-offline`) are always sent.
    pub fn events(self, on: bool) -> Self {
        self.events_enabled.store(on, Ordering::SeqCst);
        self
    }

    /// The flag that says whether task events are sent, shared with the
    /// worker once built: an [`Observer`] made before the worker reads it.
    pub fn events_enabled(&self) -> Arc<AtomicBool> {
        self.events_enabled.clone()
    }

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
    /// `%h`, `%n` and `%d` expand to the host name, its first label and
    /// its domain, and a name without `@` gets `celeriac@` in front, as
    /// Celery's `-n` does ([`celeriac_core::expand_nodename`]).
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
    /// (`Broker::lease`), whatever this says.
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

    /// How long a result the backend refused is stored again, with
    /// back-off (0.5 s, doubling up to 30 s), before its message is moved
    /// to the dead-letter queue with the result attached (default
    /// [`DEFAULT_STORE_RETRY_FOR`]). The task is never run again for a
    /// failed store: its message stays held, its lease renewed, and is
    /// acked once the result is stored. A warm shutdown stops retrying and
    /// dead-letters at once.
    pub fn store_retry_for(mut self, patience: Duration) -> Self {
        self.store_retry_for = patience;
        self
    }

    /// Adds an [`Observer`] that hears of every task's transitions
    /// (received, started, succeeded, failed, retried, revoked, rejected,
    /// requeued).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Requires every message to be signed with `secret` (see
    /// [`celeriac_core::sign`]): an unsigned message, or one whose name,
    /// arguments or scheduling headers were changed after signing, is
    /// dead-lettered with the reason and never runs, and no result is
    /// stored for it. The retries the worker publishes are signed with it.
    /// Without a secret (the default) the signature header is ignored, as
    /// Python Celery workers ignore it.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// The largest result stored, in bytes of JSON: the returned value
    /// (or a failure's exception document and traceback). A larger one is
    /// not stored; a FAILURE `ResultTooLarge` that names both sizes takes
    /// its place. Default: no limit.
    pub fn max_result(mut self, bytes: usize) -> Self {
        self.max_result = Some(bytes);
        self
    }

    /// Builds the worker. It starts consuming when [`Worker::run`] is
    /// awaited.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.queues.is_empty() {
            return Err(WorkerError::NoQueues);
        }
        if self.queues.iter().any(String::is_empty) {
            return Err(WorkerError::EmptyQueueName);
        }
        for q in &self.queues {
            celeriac_core::validate_queue_name(q)?;
        }
        if self.max_body == 0 {
            return Err(WorkerError::ZeroMaxBody);
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
        let threads = crate::execute::thread_count(self.kind, concurrency);
        let threads = match self.pool {
            Some(p) => {
                p.set_threads(threads)
                    .map_err(|_| WorkerError::ZeroConcurrency)?;
                p
            }
            None => ThreadPool::builder()
                .thread_name("celeriac-task")
                .threads(threads)
                .build()
                .map_err(|e| WorkerError::Pool(Box::new(e)))?,
        };
        let host = celeriac_core::message::hostname();
        let nodename = self.nodename.map_or_else(
            || format!("celeriac@{host}"),
            |n| celeriac_core::expand_nodename(&n, &host, "celeriac"),
        );
        Worker::from_parts(Parts {
            broker: self.broker,
            backend: self.backend,
            registry: self.registry,
            config: Config {
                queues: self.queues,
                nodename,
                max_body: self.max_body,
                heartbeat: self.heartbeat,
                renew_every: self.renew_every,
                result_extended: self.result_extended,
                max_deliveries: self.max_deliveries,
                rate_limits: self.rate_limits,
                time_limit: self.time_limit,
                soft_time_limit: self.soft_time_limit,
                autoscale: self.autoscale,
                autoscale_keepalive: self.autoscale_keepalive,
                store_retry_for: self.store_retry_for,
                secret: self.secret,
                max_result: self.max_result,
                events_enabled: self.events_enabled,
                mingle: self.mingle,
            },
            kind: self.kind,
            threads,
            procs: self.procs,
            concurrency,
            prefetch: self.prefetch_multiplier,
            observers: self.observers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use celeriac_core::Registry;
    use celeriac_embedded::{MemoryBackend, MemoryBroker};

    use crate::{Worker, WorkerError};

    #[test]
    fn a_worker_refuses_to_consume_the_brokers_own_keys() {
        for q in ["unacked", "celeriac.dlq", "_kombu.binding.celery"] {
            let built = Worker::builder(
                Arc::new(MemoryBroker::new()),
                Arc::new(MemoryBackend::new()),
                Arc::new(Registry::new()),
            )
            .queues(["celery", q])
            .build();
            assert!(
                matches!(built, Err(WorkerError::ReservedQueue(_))),
                "{q}: {built:?}"
            );
        }
    }
}
