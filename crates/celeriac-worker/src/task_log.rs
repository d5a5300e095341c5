//! The worker's log line per task, in Celery's words, as an [`Observer`]:
//!
//! ```text
//! INFO  Task tasks.add[6c3e…] received
//! INFO  Task tasks.add[6c3e…] succeeded in 0.0012s: 5
//! ERROR Task tasks.div[91ab…] raised unexpected: ZeroDivisionError('division by zero')
//! INFO  Task tasks.flaky[77f0…] retry: Retry in 2s: ConnectionError('reset')
//! ```
//!
//! Results longer than [`RESULT_REPR_MAX`] characters are cut, as Celery's
//! `resultrepr_maxsize` does; every field from the message is escaped, so
//! nothing a client sends reaches the terminal raw.

use std::fmt::Write as _;
use std::time::Duration;

use celeriac_core::TaskError;
use celeriac_core::escape::Escaped;
use serde_json::Value;

use crate::observe::{Observer, TaskEvent};

/// The most characters of a result a log line shows (Celery's default
/// `resultrepr_maxsize`).
pub const RESULT_REPR_MAX: usize = 1024;

/// Logs each task's receipt, success, failure and retry through `tracing`,
/// at INFO (failures at ERROR), with Celery's wording. `celeriac worker`
/// installs it; add it to your own worker with
/// [`WorkerBuilder::observer`](crate::WorkerBuilder::observer).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use celeriac_core::Registry;
/// use celeriac_embedded::{MemoryBackend, MemoryBroker};
/// use celeriac_worker::{TaskLog, Worker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let worker = Worker::builder(
///     Arc::new(MemoryBroker::new()),
///     Arc::new(MemoryBackend::new()),
///     Arc::new(Registry::new()),
/// )
/// .observer(Arc::new(TaskLog))
/// .build()
/// .unwrap();
/// # drop(worker);
/// # });
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskLog;

/// `name[id]`, escaped.
fn who(task: &TaskEvent<'_>) -> String {
    format!(
        "{}[{}]",
        Escaped(task.message.task()),
        Escaped(task.message.id())
    )
}

/// `ExcType('message')`, as Python's `repr` prints an exception.
fn exc(error: &TaskError) -> String {
    let msg = Escaped(error.message()).to_string();
    let quoted = if msg.contains('\'') && !msg.contains('"') {
        format!("\"{msg}\"")
    } else {
        format!("'{}'", msg.replace('\'', "\\'"))
    };
    format!("{}({quoted})", Escaped(error.exc_type()))
}

/// The result as JSON, cut to [`RESULT_REPR_MAX`] characters.
pub(crate) fn result_repr(result: &Value) -> String {
    let text = result.to_string();
    if text.chars().count() <= RESULT_REPR_MAX {
        return Escaped(&text).to_string();
    }
    let mut cut: String = text.chars().take(RESULT_REPR_MAX).collect();
    let _ = write!(cut, "... ({} bytes)", text.len());
    Escaped(&cut).to_string()
}

impl Observer for TaskLog {
    fn received(&self, task: &TaskEvent<'_>) {
        tracing::info!("Task {} received", who(task));
    }

    fn succeeded(&self, task: &TaskEvent<'_>, result: &Value, runtime: Duration) {
        if tracing::enabled!(tracing::Level::INFO) {
            tracing::info!(
                "Task {} succeeded in {:.6}s: {}",
                who(task),
                runtime.as_secs_f64(),
                result_repr(result)
            );
        }
    }

    fn failed(&self, task: &TaskEvent<'_>, error: &TaskError, runtime: Option<Duration>) {
        let took = runtime.map_or_else(String::new, |r| format!(" in {:.6}s", r.as_secs_f64()));
        tracing::error!("Task {} raised unexpected{took}: {}", who(task), exc(error));
    }

    fn revoked(&self, task: &TaskEvent<'_>, by: crate::observe::RevokedBy) {
        let why = match by {
            crate::observe::RevokedBy::Revoke => "revoked",
            crate::observe::RevokedBy::Expiry => "expired",
        };
        tracing::info!("Discarding {why} task: {}", who(task));
    }

    fn retried(&self, task: &TaskEvent<'_>, error: &TaskError, countdown: f64) {
        tracing::info!(
            "Task {} retry: Retry in {countdown}s: {}",
            who(task),
            exc(error)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_results_are_cut_and_control_characters_escaped() {
        assert_eq!(result_repr(&json!(5)), "5");
        let long = json!("x".repeat(5000));
        let r = result_repr(&long);
        assert!(r.chars().count() < RESULT_REPR_MAX + 40, "{}", r.len());
        assert!(r.ends_with("... (5002 bytes)"), "{r}");
        let r = result_repr(&json!("a\u{1b}[31mred"));
        assert!(!r.contains('\u{1b}'), "{r}");
    }

    #[test]
    fn exceptions_read_like_python() {
        let e = TaskError::typed("ValueError", "builtins", "boom");
        assert_eq!(exc(&e), "ValueError('boom')");
        let e = TaskError::typed("KeyError", "builtins", "it's");
        assert_eq!(exc(&e), "KeyError(\"it's\")");
    }
}
