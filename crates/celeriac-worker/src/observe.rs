//! Observers: who hears of each transition of a task's lifecycle, and the
//! worker's own counters ([`WorkerStats`]), which are kept at the same
//! transitions.
//!
//! Events, metrics and the dashboard subscribe with
//! [`WorkerBuilder::observer`](crate::WorkerBuilder::observer) instead of
//! editing the lifecycle. Every method of [`Observer`] does nothing by
//! default, and a worker without observers pays one empty loop per
//! transition.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use celeriac_core::{Delivery, Message, TaskError};
use serde_json::Value;

/// A task at one of its transitions, as an [`Observer`] sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TaskEvent<'a> {
    /// The decoded message (task id, name, arguments, headers).
    pub message: &'a Message,
    /// The broker's delivery of it (queue, delivery count).
    pub delivery: &'a Delivery,
    /// The worker's node name.
    pub hostname: &'a str,
}

/// Why a task ended as REVOKED without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokedBy {
    /// A `revoke` for its id.
    Revoke,
    /// Its `expires` time passed.
    Expiry,
}

/// Hears of the transitions of every task a worker handles; add one with
/// [`WorkerBuilder::observer`](crate::WorkerBuilder::observer). Every method
/// does nothing by default, and a worker without observers pays nothing for
/// them. Methods are called on the task's handler, in order, and must
/// return quickly (hand slow work to a channel).
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use celeriac_worker::{Observer, TaskEvent};
///
/// #[derive(Debug, Default)]
/// struct Started(AtomicUsize);
///
/// impl Observer for Started {
///     fn started(&self, _task: &TaskEvent<'_>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// ```
#[allow(unused_variables)]
pub trait Observer: Send + Sync + fmt::Debug {
    /// A message was claimed and decoded.
    fn received(&self, task: &TaskEvent<'_>) {}
    /// The task starts running on its executor.
    fn started(&self, task: &TaskEvent<'_>) {}
    /// The task returned `result` after `runtime`.
    fn succeeded(&self, task: &TaskEvent<'_>, result: &Value, runtime: Duration) {}
    /// The task failed (its error, a panic, a time limit, a lost process,
    /// or no task of that name; `runtime` is `None` when it never ran).
    fn failed(&self, task: &TaskEvent<'_>, error: &TaskError, runtime: Option<Duration>) {}
    /// A retry of the task was published, due in `countdown` seconds.
    fn retried(&self, task: &TaskEvent<'_>, error: &TaskError, countdown: f64) {}
    /// The task was revoked or had expired, and will not run.
    fn revoked(&self, task: &TaskEvent<'_>, by: RevokedBy) {}
    /// The message was moved to the dead-letter store (`task` is `None`
    /// when it could not be decoded).
    fn rejected(&self, delivery: &Delivery, task: Option<&Message>, reason: &str) {}
    /// The message was put back on its queue, to be claimed at once or
    /// from unix time `not_before`.
    fn requeued(&self, delivery: &Delivery, not_before: Option<f64>) {}
}

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

/// Tells the counters and every observer of a transition.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    observers: Vec<Arc<dyn Observer>>,
    counters: Counters,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Notifier {
    pub(crate) fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Notifier {
            observers,
            counters: Counters::default(),
        }
    }

    pub(crate) fn received(&self, ev: &TaskEvent<'_>) {
        for o in &self.observers {
            o.received(ev);
        }
    }

    pub(crate) fn started(&self, ev: &TaskEvent<'_>) {
        for o in &self.observers {
            o.started(ev);
        }
    }

    /// Counts a success on the local lane (which runs only where no
    /// observer listens).
    pub(crate) fn count_succeeded(&self) {
        bump(&self.counters.succeeded);
    }

    /// Counts a failure on the local lane.
    pub(crate) fn count_failed(&self) {
        bump(&self.counters.failed);
    }

    /// Counts a retry on the local lane.
    pub(crate) fn count_retried(&self) {
        bump(&self.counters.retried);
    }

    /// Counts a revoke on the local lane.
    pub(crate) fn count_revoked(&self) {
        bump(&self.counters.revoked);
    }

    pub(crate) fn succeeded(&self, ev: &TaskEvent<'_>, result: &Value, runtime: Duration) {
        bump(&self.counters.succeeded);
        for o in &self.observers {
            o.succeeded(ev, result, runtime);
        }
    }

    pub(crate) fn failed(&self, ev: &TaskEvent<'_>, error: &TaskError, runtime: Option<Duration>) {
        bump(&self.counters.failed);
        for o in &self.observers {
            o.failed(ev, error, runtime);
        }
    }

    pub(crate) fn retried(&self, ev: &TaskEvent<'_>, error: &TaskError, countdown: f64) {
        bump(&self.counters.retried);
        for o in &self.observers {
            o.retried(ev, error, countdown);
        }
    }

    pub(crate) fn revoked(&self, ev: &TaskEvent<'_>, by: RevokedBy) {
        match by {
            RevokedBy::Revoke => bump(&self.counters.revoked),
            RevokedBy::Expiry => bump(&self.counters.expired),
        }
        for o in &self.observers {
            o.revoked(ev, by);
        }
    }

    pub(crate) fn rejected(&self, d: &Delivery, msg: Option<&Message>, reason: &str) {
        bump(&self.counters.dead_lettered);
        for o in &self.observers {
            o.rejected(d, msg, reason);
        }
    }

    pub(crate) fn requeued(&self, d: &Delivery, not_before: Option<f64>) {
        for o in &self.observers {
            o.requeued(d, not_before);
        }
    }

    /// A delivery skipped as a duplicate (no observer event: it is neither
    /// run nor given up).
    pub(crate) fn duplicate(&self) {
        bump(&self.counters.duplicates);
    }

    /// The counters, with `active` tasks running now.
    pub(crate) fn stats(&self, active: usize) -> WorkerStats {
        let c = &self.counters;
        WorkerStats {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            revoked: c.revoked.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            active,
        }
    }
}
