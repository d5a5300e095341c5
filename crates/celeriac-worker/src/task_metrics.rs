//! Prometheus-style metrics of a worker, through the [`metrics`] facade:
//! an [`Observer`] ([`TaskMetrics`]) for the per-task counters and
//! histograms, and [`TaskMetrics::sample`] for the gauges read from the
//! worker itself. Nothing here exports: the program installs a recorder
//! (`celeriac worker --metrics-addr` installs the Prometheus exporter);
//! without one every call is a no-op.
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `celeriac_tasks_total` | counter | `task`, `state` | tasks by the state their handling on this worker ended in: `SUCCESS`, `FAILURE`, `RETRY` (a retry was published), `REVOKED` (revoked or expired), `REJECTED` (dead-lettered) |
//! | `celeriac_task_runtime_seconds` | histogram | `task` | how long the task ran on its executor (successes and failures) |
//! | `celeriac_task_queue_wait_seconds` | histogram | `task` | from the moment this worker claimed and decoded the message to the moment the task started on it: time spent reserved (prefetch) and in rate limits; time on the broker's queue before the claim is not included (Celery messages carry no publish time) |
//! | `celeriac_worker_reserved` | gauge | | messages claimed and waiting for an execution slot (Celery's `inspect reserved`) |
//! | `celeriac_worker_active` | gauge | | tasks running now |
//! | `celeriac_worker_concurrency` | gauge | | execution slots |
//! | `celeriac_pool_children` | gauge | | live children of the process pool (0 without one) |
//! | `celeriac_pool_child_restarts_total` | counter | | children replaced: lost, killed at a time limit or a terminate, or recycled by `max_tasks_per_child`/`max_memory_per_child` |
//! | `celeriac_broker_errors_total` | counter | `op` | broker operations that failed in the claim loop (`op="claim"`) |
//! | `celeriac_broker_reconnects_total` | counter | | times the claim loop got through to the broker again after failing |

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use celeriac_core::{Delivery, Message, Registry, TaskError};
use metrics::{counter, gauge, histogram};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::Worker;
use crate::observe::{Observer, RevokedBy, TaskEvent};

/// The `task` label of a task name the worker does not know (see
/// [`TaskMetrics::for_registry`]).
pub const UNREGISTERED: &str = "<unregistered>";

/// The most messages whose receipt time is remembered at once (a bound on
/// memory should a transition go unreported).
const MAX_WAITING: usize = 100_000;

/// Emits the per-task metrics of a worker (`celeriac_tasks_total`, the
/// runtime and queue-wait histograms, the gauges) through the [`metrics`]
/// facade; add it with
/// [`WorkerBuilder::observer`](crate::WorkerBuilder::observer), and call
/// [`TaskMetrics::sample`] now and then for the gauges.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use celeriac_core::Registry;
/// use celeriac_embedded::{MemoryBackend, MemoryBroker};
/// use celeriac_worker::{TaskMetrics, Worker};
///
/// let registry = Arc::new(Registry::new());
/// let metrics = Arc::new(TaskMetrics::for_registry(&registry));
/// let worker = Worker::builder(
///     Arc::new(MemoryBroker::new()),
///     Arc::new(MemoryBackend::new()),
///     registry,
/// )
/// .observer(metrics.clone())
/// .build()
/// .unwrap();
/// metrics.sample(&worker);
/// ```
#[derive(Debug, Default)]
pub struct TaskMetrics {
    /// Task names used as labels as they are; others become
    /// [`UNREGISTERED`]. `None`: every name.
    known: Option<RwLock<HashSet<String>>>,
    /// When each message held now was received, by delivery tag.
    received: Mutex<HashMap<String, Instant>>,
}

impl TaskMetrics {
    /// Metrics labelled with every task name a message carries. Use
    /// [`TaskMetrics::for_registry`] where clients are not trusted to
    /// keep the number of names small.
    pub fn new() -> Self {
        TaskMetrics::default()
    }

    /// Metrics whose `task` label is a name in `registry`, or one of the
    /// worker's built-in tasks (`celery.map`, ...) once it has started;
    /// any other name (a message for an unknown task) is counted as
    /// [`UNREGISTERED`], so clients cannot grow the label set without
    /// bound.
    pub fn for_registry(registry: &Registry) -> Self {
        let names = registry.names().into_iter().map(str::to_string).collect();
        TaskMetrics {
            known: Some(RwLock::new(names)),
            received: Mutex::default(),
        }
    }

    /// Describes every metric to the installed recorder (Prometheus'
    /// `# HELP` lines) and sets the broker counters to exist at 0, so a
    /// scrape shows them before the first error. Call it once, after
    /// installing the recorder.
    pub fn describe() {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "celeriac_tasks_total",
            "Tasks by name and the state their handling ended in on this worker"
        );
        describe_histogram!(
            "celeriac_task_runtime_seconds",
            Unit::Seconds,
            "How long tasks ran on their executor"
        );
        describe_histogram!(
            "celeriac_task_queue_wait_seconds",
            Unit::Seconds,
            "From the claim of a message by this worker to the start of its task"
        );
        describe_gauge!(
            "celeriac_worker_reserved",
            "Messages claimed and waiting for an execution slot"
        );
        describe_gauge!("celeriac_worker_active", "Tasks running now");
        describe_gauge!("celeriac_worker_concurrency", "Execution slots");
        describe_gauge!(
            "celeriac_pool_children",
            "Live children of the process pool"
        );
        describe_counter!(
            "celeriac_pool_child_restarts_total",
            "Process-pool children replaced (lost, killed, recycled)"
        );
        describe_counter!(
            "celeriac_broker_errors_total",
            "Broker operations of the claim loop that failed"
        );
        describe_counter!(
            "celeriac_broker_reconnects_total",
            "Times the claim loop got through to the broker again after failing"
        );
        counter!("celeriac_broker_errors_total", "op" => "claim").increment(0);
        counter!("celeriac_broker_reconnects_total").increment(0);
    }

    /// Sets the gauges from `worker`'s state now: reserved, active,
    /// concurrency, process-pool children and restarts.
    pub fn sample(&self, worker: &Worker) {
        let inner = worker.inner();
        let reserved = inner.slots.reserved();
        let active = inner.slots.executing();
        gauge!("celeriac_worker_reserved").set(reserved.saturating_sub(active) as f64);
        gauge!("celeriac_worker_active").set(active as f64);
        gauge!("celeriac_worker_concurrency").set(inner.slots.target() as f64);
        let pool = inner.executors.pool_stats().unwrap_or_default();
        gauge!("celeriac_pool_children").set(pool.live as f64);
        counter!("celeriac_pool_child_restarts_total")
            .absolute(pool.lost + pool.timed_out + pool.recycled + pool.terminated);
    }

    /// The `task` label for `name`.
    fn label(&self, name: &str) -> String {
        match &self.known {
            Some(known) if !known.read().contains(name) => UNREGISTERED.to_string(),
            _ => name.to_string(),
        }
    }

    fn finished(&self, name: &str, state: &'static str) {
        counter!("celeriac_tasks_total", "task" => self.label(name), "state" => state).increment(1);
    }

    fn forget(&self, d: &Delivery) {
        self.received.lock().remove(&d.tag);
    }
}

impl Observer for TaskMetrics {
    fn received(&self, task: &TaskEvent<'_>) {
        let mut received = self.received.lock();
        if received.len() >= MAX_WAITING {
            received.clear();
        }
        received.insert(task.delivery.tag.clone(), Instant::now());
    }

    fn started(&self, task: &TaskEvent<'_>) {
        let name = task.message.task();
        // It started, so some registry of the worker's has it.
        if let Some(known) = &self.known
            && !known.read().contains(name)
        {
            known.write().insert(name.to_string());
        }
        if let Some(at) = self.received.lock().remove(&task.delivery.tag) {
            histogram!("celeriac_task_queue_wait_seconds", "task" => self.label(name))
                .record(at.elapsed().as_secs_f64());
        }
    }

    fn succeeded(&self, task: &TaskEvent<'_>, _result: &Value, runtime: Duration) {
        let name = task.message.task();
        histogram!("celeriac_task_runtime_seconds", "task" => self.label(name))
            .record(runtime.as_secs_f64());
        self.finished(name, "SUCCESS");
    }

    fn failed(&self, task: &TaskEvent<'_>, _error: &TaskError, runtime: Option<Duration>) {
        let name = task.message.task();
        match runtime {
            Some(r) => histogram!("celeriac_task_runtime_seconds", "task" => self.label(name))
                .record(r.as_secs_f64()),
            None => self.forget(task.delivery),
        }
        self.finished(name, "FAILURE");
    }

    fn retried(&self, task: &TaskEvent<'_>, _error: &TaskError, _countdown: f64) {
        self.finished(task.message.task(), "RETRY");
    }

    fn revoked(&self, task: &TaskEvent<'_>, _by: RevokedBy) {
        self.forget(task.delivery);
        self.finished(task.message.task(), "REVOKED");
    }

    fn rejected(&self, delivery: &Delivery, task: Option<&Message>, _reason: &str) {
        self.forget(delivery);
        let name = task.map_or(UNREGISTERED, Message::task);
        self.finished(name, "REJECTED");
    }

    fn requeued(&self, delivery: &Delivery, _not_before: Option<f64>) {
        self.forget(delivery);
    }
}

/// Counts a failed broker operation of the claim loop.
pub(crate) fn broker_error(op: &'static str) {
    counter!("celeriac_broker_errors_total", "op" => op).increment(1);
}

/// Counts the claim loop getting through to the broker after failing.
pub(crate) fn broker_reconnected() {
    counter!("celeriac_broker_reconnects_total").increment(1);
}
