//! A task's options ([`TaskOptions`]): its retry policy (Celery's
//! `max_retries`, `default_retry_delay`, `retry_backoff`,
//! `retry_backoff_max`, `retry_jitter` and `autoretry_for`), its
//! `rate_limit`, its acknowledgement policy and the pool it runs on
//! ([`PoolKind`], the one pool enum of the workspace).

use crate::error::{TaskError, TaskErrorKind};
use crate::rate::RateLimit;

/// A task's retry policy. Built with `const fn`s, so `#[task(...)]` can
/// store it in a static.
///
/// # Examples
///
/// ```
/// use celeriac_core::{TaskError, TaskOptions, RetryDecision};
///
/// const OPTS: TaskOptions = TaskOptions::new()
///     .max_retries(Some(3))
///     .retry_backoff(2.0)
///     .retry_jitter(false)
///     .autoretry_for(&["ConnectionError"]);
///
/// let err = TaskError::typed("ConnectionError", "builtins", "refused");
/// assert_eq!(OPTS.decide(&err, 0, 0.5), RetryDecision::Retry { countdown: 2.0 });
/// assert_eq!(OPTS.decide(&err, 2, 0.5), RetryDecision::Retry { countdown: 8.0 });
/// assert_eq!(OPTS.decide(&err, 3, 0.5), RetryDecision::GiveUp);
/// assert_eq!(OPTS.decide(&TaskError::new("other"), 0, 0.5), RetryDecision::NoRetry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskOptions {
    max_retries: Option<u32>,
    default_retry_delay: f64,
    retry_backoff: Option<f64>,
    retry_backoff_max: f64,
    retry_jitter: bool,
    autoretry_for: &'static [&'static str],
    rate_limit: Option<RateLimit>,
    pool: Option<PoolKind>,
    reject_on_worker_lost: bool,
    acks_late: bool,
    track_started: bool,
    cheap: bool,
}

/// Which pool runs tasks: the worker's pool (`celeriac worker -P ...`), or
/// a task's own choice (`#[task(pool = "...")]`), which wins for that task.
///
/// Without a choice, `async fn` tasks run on the async executor and other
/// tasks on the worker's pool (threads by default). A blocking task never
/// runs on the async executor: on a `-P async` worker it goes to threads.
///
/// # Examples
///
/// ```
/// use celeriac_core::PoolKind;
/// assert_eq!("threads".parse::<PoolKind>().unwrap(), PoolKind::Threads);
/// assert_eq!("prefork".parse::<PoolKind>().unwrap(), PoolKind::Processes);
/// assert_eq!("async".parse::<PoolKind>().unwrap(), PoolKind::Async);
/// assert!("gevent".parse::<PoolKind>().is_err());
/// assert_eq!(PoolKind::default(), PoolKind::Threads);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PoolKind {
    /// A thread pool (shared memory, cheapest hand-off; the default).
    #[default]
    Threads,
    /// A pool of child processes: crash isolation, hard time limits,
    /// memory limits and recycling. The program must call
    /// `celeriac::init()` first thing in `main`.
    Processes,
    /// The async executor, for `async fn` tasks at high concurrency;
    /// blocking tasks still run on threads.
    Async,
}

/// The name of a pool that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pool {0:?}: use threads, processes or async")]
pub struct UnknownPool(pub String);

impl PoolKind {
    /// Parses `threads`, `processes` (or `prefork`) and `async`.
    pub const fn parse(s: &str) -> Option<PoolKind> {
        match s.as_bytes() {
            b"threads" => Some(PoolKind::Threads),
            b"processes" | b"prefork" => Some(PoolKind::Processes),
            b"async" => Some(PoolKind::Async),
            _ => None,
        }
    }

    /// The pool's name as `-P` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            PoolKind::Threads => "threads",
            PoolKind::Processes => "processes",
            PoolKind::Async => "async",
        }
    }
}

impl std::str::FromStr for PoolKind {
    type Err = UnknownPool;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PoolKind::parse(s).ok_or_else(|| UnknownPool(s.to_string()))
    }
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    /// Not a retry request: the task failed.
    NoRetry,
    /// Retry in `countdown` seconds, with the same task id.
    Retry {
        /// Seconds until the next attempt.
        countdown: f64,
    },
    /// A retry was asked for, but `max_retries` is reached.
    GiveUp,
}

impl TaskOptions {
    /// Celery's defaults: 3 retries, 180 s apart, no backoff, jitter on,
    /// nothing retried automatically.
    pub const DEFAULT: TaskOptions = TaskOptions {
        max_retries: Some(3),
        default_retry_delay: 180.0,
        retry_backoff: None,
        retry_backoff_max: 600.0,
        retry_jitter: true,
        autoretry_for: &[],
        rate_limit: None,
        pool: None,
        reject_on_worker_lost: false,
        acks_late: true,
        track_started: false,
        cheap: false,
    };

    /// The defaults.
    pub const fn new() -> Self {
        Self::DEFAULT
    }

    /// At most this many retries; `None` retries without limit.
    pub const fn max_retries(mut self, n: Option<u32>) -> Self {
        self.max_retries = n;
        self
    }

    /// Delay of a retry without a countdown when there is no backoff.
    pub const fn default_retry_delay(mut self, secs: f64) -> Self {
        self.default_retry_delay = secs;
        self
    }

    /// Exponential backoff: retry `n` waits `factor · 2ⁿ` seconds, capped
    /// by [`retry_backoff_max`](Self::retry_backoff_max).
    pub const fn retry_backoff(mut self, factor: f64) -> Self {
        self.retry_backoff = Some(factor);
        self
    }

    /// The backoff cap in seconds (default 600).
    pub const fn retry_backoff_max(mut self, secs: f64) -> Self {
        self.retry_backoff_max = secs;
        self
    }

    /// With jitter (the default), a backoff delay is drawn uniformly from
    /// `[0, delay]`, so that retries of many tasks spread out.
    pub const fn retry_jitter(mut self, on: bool) -> Self {
        self.retry_jitter = on;
        self
    }

    /// Errors retried automatically, by `exc_type` (e.g. `"ConnectionError"`).
    pub const fn autoretry_for(mut self, exc_types: &'static [&'static str]) -> Self {
        self.autoretry_for = exc_types;
        self
    }

    /// Limits how often the task starts (see [`RateLimit`]).
    pub const fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Runs the task on this pool rather than the worker's default.
    pub const fn pool(mut self, pool: PoolKind) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Celery's `reject_on_worker_lost`: when the process running the task
    /// dies, put the message back to run again instead of storing FAILURE
    /// `WorkerLostError` (default off, as Celery). A message that keeps
    /// killing its process becomes a poison message after the worker's
    /// `max_deliveries`.
    pub const fn reject_on_worker_lost(mut self, on: bool) -> Self {
        self.reject_on_worker_lost = on;
        self
    }

    /// When the message is acknowledged. `true` (celeriac's default): after
    /// the result is stored, so a crash or kill at any moment redelivers
    /// the task (at least once; idempotency keys and the redelivery check
    /// make the effect once). `false` (Celery's default): as the task
    /// starts, so a task is never run twice but is lost if its worker dies
    /// mid-run; for tasks that must not repeat and may be dropped.
    pub const fn acks_late(mut self, on: bool) -> Self {
        self.acks_late = on;
        self
    }

    /// Celery's `track_started`: store the STARTED state (with the worker's
    /// pid and host name) when the task starts, so that a client sees it
    /// running rather than PENDING (default off, as Celery; a worker's
    /// `--track-started` turns it on for every task).
    pub const fn track_started(mut self, on: bool) -> Self {
        self.track_started = on;
        self
    }

    /// Marks the task as cheap: it returns within microseconds and never
    /// blocks (no IO, no sleep, no waiting on subtasks), like
    /// `celeriac.add`. A worker whose pool is threads runs a cheap task on
    /// the thread that handles its message, without the hand-off to a
    /// pool thread and back, which costs more than such a task itself. A
    /// panic is still a typed `Panicked` failure and a terminate still
    /// cancels its context; a call with a time limit (its own or the
    /// worker's) runs on the pool, where the soft limit is watched. While
    /// it runs, that thread serves nothing else, so a slow task marked
    /// cheap delays others. Ignored on the process pool and for async
    /// tasks.
    pub const fn cheap(mut self, on: bool) -> Self {
        self.cheap = on;
        self
    }

    /// Whether the task is marked [`cheap`](Self::cheap).
    pub fn is_cheap(&self) -> bool {
        self.cheap
    }

    /// Whether the task asked for `track_started`.
    pub fn tracks_started(&self) -> bool {
        self.track_started
    }

    /// Whether the message is acknowledged after the task (the default).
    pub fn is_acks_late(&self) -> bool {
        self.acks_late
    }

    /// Whether the task asked for `reject_on_worker_lost`.
    pub fn rejects_on_worker_lost(&self) -> bool {
        self.reject_on_worker_lost
    }

    /// The pool the task asked for, if any.
    pub fn pool_choice(&self) -> Option<PoolKind> {
        self.pool
    }

    /// The rate limit, if any.
    pub fn rate(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// The retry limit.
    pub fn retry_limit(&self) -> Option<u32> {
        self.max_retries
    }

    /// Decides what a failed attempt means. `retries` is how many retries
    /// came before it; `random` is a number in `[0, 1)` for the jitter.
    pub fn decide(&self, err: &TaskError, retries: u32, random: f64) -> RetryDecision {
        let wanted = err.kind() == TaskErrorKind::Retry
            || err.is_retryable()
            || self.autoretry_for.contains(&err.exc_type());
        if !wanted {
            return RetryDecision::NoRetry;
        }
        if self.max_retries.is_some_and(|max| retries >= max) {
            return RetryDecision::GiveUp;
        }
        let countdown = match (err.countdown(), self.retry_backoff) {
            (Some(c), _) => c,
            (None, Some(factor)) => {
                let exp = 2f64.powi(retries.min(60) as i32);
                let delay = (factor * exp).min(self.retry_backoff_max);
                if self.retry_jitter {
                    delay * random.clamp(0.0, 1.0)
                } else {
                    delay
                }
            }
            (None, None) => self.default_retry_delay,
        };
        // NaN (from a NaN delay) is "now"; a countdown beyond what an eta
        // can say (e.g. `retry(Duration::MAX)`) is the longest one.
        let countdown = if countdown.is_nan() {
            0.0
        } else {
            countdown.clamp(0.0, crate::time::MAX_SECONDS)
        };
        RetryDecision::Retry { countdown }
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::time::{MAX_SECONDS, try_iso_from_unix, unix_now};

    #[test]
    fn a_retry_countdown_too_long_for_an_eta_is_the_longest_one() {
        let err = TaskError::retry(Some(Duration::MAX));
        let RetryDecision::Retry { countdown } = TaskOptions::DEFAULT.decide(&err, 0, 0.5) else {
            panic!("no retry")
        };
        assert_eq!(countdown, MAX_SECONDS);
        assert!(try_iso_from_unix(unix_now() + countdown).is_some());
        let nan = TaskOptions::DEFAULT.default_retry_delay(f64::NAN);
        assert_eq!(
            nan.decide(&TaskError::retry(None), 0, 0.5),
            RetryDecision::Retry { countdown: 0.0 }
        );
    }
}
