//! Task states and the result document, exactly as Celery's result backends
//! store them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::TaskError;

/// A task's state, as stored in `status`.
///
/// Celery allows custom states, which are kept in [`State::Custom`].
///
/// # Examples
///
/// ```
/// use celeriac_core::State;
/// assert_eq!("SUCCESS".parse::<State>().unwrap(), State::Success);
/// assert!(State::Failure.is_ready());
/// assert!(!State::Retry.is_ready());
/// assert_eq!(State::Revoked.to_string(), "REVOKED");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Unknown to the backend (never stored).
    Pending,
    /// Received by a worker (events only).
    Received,
    /// Started (with `track_started`).
    Started,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Failure,
    /// Will be retried.
    Retry,
    /// Revoked or expired.
    Revoked,
    /// Rejected by the worker.
    Rejected,
    /// Result ignored.
    Ignored,
    /// A custom state set by a task.
    Custom(String),
}

impl State {
    /// The state's wire name.
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Retry => "RETRY",
            State::Revoked => "REVOKED",
            State::Rejected => "REJECTED",
            State::Ignored => "IGNORED",
            State::Custom(s) => s,
        }
    }

    /// Whether the state is final: SUCCESS, FAILURE or REVOKED (Celery's
    /// `READY_STATES`).
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// Whether the state carries an exception document in `result`.
    pub fn is_exception(&self) -> bool {
        matches!(self, State::Failure | State::Revoked | State::Retry)
    }
}

impl FromStr for State {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "PENDING" => State::Pending,
            "RECEIVED" => State::Received,
            "STARTED" => State::Started,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "RETRY" => State::Retry,
            "REVOKED" => State::Revoked,
            "REJECTED" => State::Rejected,
            "IGNORED" => State::Ignored,
            other => State::Custom(other.to_string()),
        })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or(State::Pending))
    }
}

/// An exception as Celery serializes it into `result` for a failure.
///
/// # Examples
///
/// ```
/// use celeriac_core::ExceptionInfo;
/// let info: ExceptionInfo = serde_json::from_str(
///     r#"{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}"#,
/// ).unwrap();
/// assert_eq!(info.message(), "boom");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// The exception class's qualified name, e.g. `ValueError`.
    pub exc_type: String,
    /// The exception's args (a list).
    #[serde(default, deserialize_with = "de_exc_message")]
    pub exc_message: Vec<Value>,
    /// The module of the class, e.g. `builtins`, or null.
    #[serde(default)]
    pub exc_module: Option<String>,
}

fn de_exc_message<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    })
}

impl ExceptionInfo {
    /// A readable message built from `exc_message`, the way Python's
    /// `str(exc)` would show it.
    pub fn message(&self) -> String {
        match self.exc_message.as_slice() {
            [] => String::new(),
            [Value::String(s)] => s.clone(),
            [one] => one.to_string(),
            many => Value::Array(many.to_vec()).to_string(),
        }
    }
}

/// The result document stored under `celery-task-meta-<id>`.
///
/// Field order and names follow Celery 5.x; the `result_extended` fields are
/// written when known. `runtime` is celeriac's addition (seconds of
/// execution), which Python clients ignore.
///
/// # Examples
///
/// ```
/// use celeriac_core::{ResultMeta, State};
/// let meta = ResultMeta::success("abc", serde_json::json!(5));
/// assert_eq!(meta.status, State::Success);
/// let json = serde_json::to_value(&meta).unwrap();
/// assert_eq!(json["result"], 5);
/// assert_eq!(json["task_id"], "abc");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// The state.
    pub status: State,
    /// The return value, or an [`ExceptionInfo`] for exception states.
    #[serde(default)]
    pub result: Value,
    /// Traceback text for failures.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Result tuples of child tasks.
    #[serde(default)]
    pub children: Vec<Value>,
    /// ISO-8601 completion time, or null when not ready.
    #[serde(default)]
    pub date_done: Option<String>,
    /// The task id.
    pub task_id: String,
    /// The group this task belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The task that sent this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Task name (`result_extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Positional args (`result_extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Keyword args (`result_extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Value>,
    /// Node name of the worker that ran it (`result_extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Retry count (`result_extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Queue it was consumed from (`result_extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Execution time in seconds (celeriac extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<f64>,
    /// Any other fields, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ResultMeta {
    /// A document in `status` with `result`, stamped now when the state is
    /// ready.
    pub fn new(task_id: &str, status: State, result: Value) -> Self {
        let date_done = status.is_ready().then(crate::time::iso_now);
        ResultMeta {
            status,
            result,
            traceback: None,
            children: Vec::new(),
            date_done,
            task_id: task_id.to_string(),
            group_id: None,
            parent_id: None,
            name: None,
            args: None,
            kwargs: None,
            worker: None,
            retries: None,
            queue: None,
            runtime: None,
            extra: Map::new(),
        }
    }

    /// A SUCCESS document.
    pub fn success(task_id: &str, value: Value) -> Self {
        Self::new(task_id, State::Success, value)
    }

    /// A FAILURE (or, for revocations, REVOKED) document for `err`.
    pub fn failure(task_id: &str, err: &TaskError) -> Self {
        let status = if err.kind() == crate::TaskErrorKind::Revoked {
            State::Revoked
        } else {
            State::Failure
        };
        let info = serde_json::to_value(err.to_exception_info()).unwrap_or(Value::Null);
        let mut meta = Self::new(task_id, status, info);
        meta.traceback = Some(
            err.traceback()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{err}\n")),
        );
        meta
    }

    /// The outcome: `Ok(value)` for SUCCESS, the task's error for exception
    /// states, and `None` while not ready.
    pub fn outcome(&self) -> Option<Result<&Value, TaskError>> {
        match self.status {
            State::Success => Some(Ok(&self.result)),
            State::Failure | State::Revoked => Some(Err(self.error())),
            _ => None,
        }
    }

    /// The stored exception as a [`TaskError`]. For documents that are not
    /// failures, or whose `result` is not an exception document, a generic
    /// error describing the state.
    pub fn error(&self) -> TaskError {
        match serde_json::from_value::<ExceptionInfo>(self.result.clone()) {
            Ok(info) => TaskError::from_exception_info(&info, self.traceback.as_deref()),
            Err(_) => TaskError::new(format!("task is {}: {}", self.status, self.result)),
        }
    }
}
