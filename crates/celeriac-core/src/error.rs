//! Typed errors for the codec, brokers, result backends, the registry and
//! task execution.

use std::fmt;

use serde_json::Value;

use crate::result::ExceptionInfo;

/// A message could not be decoded or encoded.
///
/// Every variant names what was wrong, so that a worker can log it and
/// dead-letter the message with that reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The envelope is not JSON, or a required part has the wrong shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The content type is not accepted (celeriac never unpickles).
    #[error("content type {0:?} is not accepted (accepted: application/json)")]
    ContentDisallowed(String),
    /// A `compression` header names a scheme we do not implement.
    #[error("compression {0:?} is not supported")]
    UnsupportedCompression(String),
    /// The body is larger than the configured maximum.
    #[error("message body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the body in bytes.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// JSON (de)serialization failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// A broker operation failed.
///
/// `Connection` and `Storage` keep the underlying error as their
/// [`source`](std::error::Error::source), and show its text too.
///
/// # Examples
///
/// ```
/// use std::error::Error;
/// use celeriac_core::BrokerError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "read-only");
/// let err = BrokerError::storage_in("cannot open /tmp/q.db", io);
/// assert_eq!(err.to_string(), "broker storage: cannot open /tmp/q.db: read-only");
/// assert!(err.source().unwrap().downcast_ref::<std::io::Error>().is_some());
///
/// let plain = BrokerError::connection_msg("no connection");
/// assert_eq!(plain.to_string(), "broker connection: no connection");
/// assert!(plain.source().is_none());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker URL could not be understood.
    #[error("invalid broker url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials redacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker could not be reached or dropped the connection. Build it
    /// with [`BrokerError::connection`], [`BrokerError::connection_in`] or
    /// [`BrokerError::connection_msg`].
    #[error("broker connection: {}", Cause(context, source))]
    Connection {
        /// What was being done (empty if the underlying error says it all),
        /// or the whole message when there is no underlying error.
        context: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The broker's storage reported an error. Build it with
    /// [`BrokerError::storage`], [`BrokerError::storage_in`] or
    /// [`BrokerError::storage_msg`].
    #[error("broker storage: {}", Cause(context, source))]
    Storage {
        /// What was being done (empty if the underlying error says it all),
        /// or the whole message when there is no underlying error.
        context: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The delivery is no longer held by this consumer (its lease expired
    /// and another consumer claimed it, or it was already acknowledged).
    #[error("delivery {0} is not held by this consumer")]
    NotHeld(String),
    /// The queue name cannot be used: it is empty or one of the broker's
    /// bookkeeping keys (see [`validate_queue_name`](crate::validate_queue_name)).
    #[error(transparent)]
    InvalidQueue(#[from] crate::names::QueueNameError),
    /// The broker has been closed.
    #[error("broker is closed")]
    Closed,
    /// The broker cannot do this (yet): for example revocations on AMQP,
    /// which has no shared store for them. The text names the broker and
    /// the capability.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// A result backend operation failed.
///
/// `Connection` and `Storage` keep the underlying error as their
/// [`source`](std::error::Error::source), and show its text too.
///
/// # Examples
///
/// ```
/// use std::error::Error;
/// use celeriac_core::BackendError;
///
/// let io = std::io::Error::other("disk full");
/// let err = BackendError::storage(io);
/// assert_eq!(err.to_string(), "result backend storage: disk full");
/// assert!(err.source().is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend URL could not be understood.
    #[error("invalid result backend url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials redacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend could not be reached. Build it with
    /// [`BackendError::connection`], [`BackendError::connection_in`] or
    /// [`BackendError::connection_msg`].
    #[error("result backend connection: {}", Cause(context, source))]
    Connection {
        /// What was being done (empty if the underlying error says it all),
        /// or the whole message when there is no underlying error.
        context: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend's storage reported an error. Build it with
    /// [`BackendError::storage`], [`BackendError::storage_in`] or
    /// [`BackendError::storage_msg`].
    #[error("result backend storage: {}", Cause(context, source))]
    Storage {
        /// What was being done (empty if the underlying error says it all),
        /// or the whole message when there is no underlying error.
        context: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A stored result could not be decoded.
    #[error("stored result is malformed: {0}")]
    Malformed(String),
    /// The backend has been closed, so a watch can never complete.
    #[error("result backend is closed")]
    Closed,
    /// This backend does not do what was asked (e.g. save a group result).
    #[error("not supported by this result backend: {0}")]
    Unsupported(String),
}

/// An underlying error kept as the [`source`](std::error::Error::source) of
/// a [`BrokerError`] or [`BackendError`] (a rusqlite, redis or io error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Displays a cause as `context: source`, or whichever of the two there
/// is. The source's text is part of the message, not only of the
/// `source()` chain, because logs print errors with `%e`.
struct Cause<'a>(&'a String, &'a Option<BoxError>);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.is_empty(), self.1) {
            (_, None) => f.write_str(self.0),
            (true, Some(source)) => write!(f, "{source}"),
            (false, Some(source)) => write!(f, "{}: {source}", self.0),
        }
    }
}

/// The constructors of the `Connection` and `Storage` variants, the same for
/// both error types.
macro_rules! cause_constructors {
    ($ty:ident, $what:literal) => {
        impl $ty {
            #[doc = concat!("A ", $what, " connection error caused by `source`.")]
            pub fn connection(source: impl Into<BoxError>) -> Self {
                $ty::Connection {
                    context: String::new(),
                    source: Some(source.into()),
                }
            }

            #[doc = concat!("A ", $what, " connection error caused by `source` while doing `context`.")]
            pub fn connection_in(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
                $ty::Connection {
                    context: context.into(),
                    source: Some(source.into()),
                }
            }

            #[doc = concat!("A ", $what, " connection error with a message and no underlying error.")]
            pub fn connection_msg(message: impl Into<String>) -> Self {
                $ty::Connection {
                    context: message.into(),
                    source: None,
                }
            }

            #[doc = concat!("A ", $what, " storage error caused by `source`.")]
            pub fn storage(source: impl Into<BoxError>) -> Self {
                $ty::Storage {
                    context: String::new(),
                    source: Some(source.into()),
                }
            }

            #[doc = concat!("A ", $what, " storage error caused by `source` while doing `context`.")]
            pub fn storage_in(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
                $ty::Storage {
                    context: context.into(),
                    source: Some(source.into()),
                }
            }

            #[doc = concat!("A ", $what, " storage error with a message and no underlying error.")]
            pub fn storage_msg(message: impl Into<String>) -> Self {
                $ty::Storage {
                    context: message.into(),
                    source: None,
                }
            }
        }
    };
}

cause_constructors!(BrokerError, "broker");
cause_constructors!(BackendError, "result backend");

/// The task registry rejected a registration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two tasks share one name. Names are the wire identity of a task, so
    /// this is refused at startup.
    #[error("task name {0:?} is registered twice")]
    Duplicate(String),
    /// The name is empty or contains whitespace.
    #[error("invalid task name {0:?}")]
    InvalidName(String),
}

/// What kind of failure a [`TaskError`] is.
///
/// New kinds may be added; match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// The task returned an error.
    Failed,
    /// The arguments did not match the task's parameters (arity or types).
    InvalidArguments,
    /// No task of that name is registered on the worker.
    NotRegistered,
    /// The task panicked; the message carries the panic payload.
    Panicked,
    /// The task exceeded its hard time limit.
    TimedOut,
    /// The task observed its soft time limit and gave up.
    SoftTimedOut,
    /// The process running the task died.
    WorkerLost,
    /// The task was revoked or had expired.
    Revoked,
    /// The task asked to be retried.
    Retry,
}

/// A task's failure: what Celery stores as `exc_type`, `exc_message` and
/// `exc_module`, plus a traceback text.
///
/// # Examples
///
/// ```
/// use celeriac_core::{TaskError, TaskErrorKind};
///
/// let err = TaskError::new("boom");
/// assert_eq!(err.kind(), TaskErrorKind::Failed);
/// assert_eq!(err.message(), "boom");
/// let info = err.to_exception_info();
/// assert_eq!(info.exc_type, "TaskError");
/// assert_eq!(TaskError::from_exception_info(&info, None).message(), "boom");
/// ```
///
/// It serializes (with serde) to a private, lossless form that process
/// pools use to carry it between processes; what a result store keeps is
/// [`TaskError::to_exception_info`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TaskError(Box<Repr>);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Repr {
    kind: TaskErrorKind,
    exc_type: String,
    exc_module: Option<String>,
    message: String,
    exc_args: Option<Vec<Value>>,
    traceback: Option<String>,
    retryable: bool,
    countdown: Option<f64>,
}

impl TaskError {
    fn with(kind: TaskErrorKind, exc_type: &str, module: &str, message: impl Into<String>) -> Self {
        TaskError(Box::new(Repr {
            kind,
            exc_type: exc_type.to_string(),
            exc_module: Some(module.to_string()),
            message: message.into(),
            exc_args: None,
            traceback: None,
            retryable: false,
            countdown: None,
        }))
    }

    /// A request to run the task again later with the same id (Celery's
    /// `self.retry()`): in `countdown`, or, without one, after the task's
    /// retry delay or backoff. Return it from the task:
    /// `return Err(TaskError::retry(None))`.
    pub fn retry(countdown: Option<std::time::Duration>) -> Self {
        let message = match countdown {
            Some(c) => format!("Retry in {}s", c.as_secs_f64()),
            None => "Retry".to_string(),
        };
        let mut e = Self::with(TaskErrorKind::Retry, "Retry", "celery.exceptions", message);
        e.0.countdown = countdown.map(|c| c.as_secs_f64());
        e
    }

    /// Marks this failure as transient: the worker retries the task under
    /// its retry policy instead of failing it.
    pub fn retryable(mut self) -> Self {
        self.0.retryable = true;
        self
    }

    /// Whether the failure was marked [`retryable`](Self::retryable).
    pub fn is_retryable(&self) -> bool {
        self.0.retryable
    }

    /// The countdown of a retry request, in seconds.
    pub fn countdown(&self) -> Option<f64> {
        self.0.countdown
    }

    /// A plain task failure with a message (`exc_type` `TaskError`).
    pub fn new(message: impl Into<String>) -> Self {
        Self::with(TaskErrorKind::Failed, "TaskError", "celeriac", message)
    }

    /// A failure with an explicit exception type and module, e.g. to raise a
    /// `ValueError` that Python clients rebuild as the builtin class.
    pub fn typed(exc_type: &str, exc_module: &str, message: impl Into<String>) -> Self {
        Self::with(TaskErrorKind::Failed, exc_type, exc_module, message)
    }

    /// Arguments did not fit the task's parameters. Stored as a Python
    /// `TypeError`, as Celery does for a wrong call.
    pub fn invalid_arguments(message: impl Into<String>) -> Self {
        Self::with(
            TaskErrorKind::InvalidArguments,
            "TypeError",
            "builtins",
            message,
        )
    }

    /// No task of this name is registered (Celery's `NotRegistered`).
    pub fn not_registered(name: &str) -> Self {
        Self::with(
            TaskErrorKind::NotRegistered,
            "NotRegistered",
            "celery.exceptions",
            format!("'{name}'"),
        )
    }

    /// The task panicked with this message.
    pub fn panicked(message: impl Into<String>) -> Self {
        Self::with(TaskErrorKind::Panicked, "Panic", "celeriac", message)
    }

    /// The task was revoked (or expired, with message `"expired"`).
    pub fn revoked(message: impl Into<String>) -> Self {
        Self::with(
            TaskErrorKind::Revoked,
            "TaskRevokedError",
            "celery.exceptions",
            message,
        )
    }

    /// The task exceeded its hard time limit.
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self::with(
            TaskErrorKind::TimedOut,
            "TimeLimitExceeded",
            "billiard.exceptions",
            message,
        )
    }

    /// The task gave up at its soft time limit (Celery's
    /// `SoftTimeLimitExceeded`); see [`TaskContext::check`](crate::TaskContext::check).
    pub fn soft_timed_out(message: impl Into<String>) -> Self {
        Self::with(
            TaskErrorKind::SoftTimedOut,
            "SoftTimeLimitExceeded",
            "billiard.exceptions",
            message,
        )
    }

    /// The process executing the task died.
    pub fn worker_lost(message: impl Into<String>) -> Self {
        Self::with(
            TaskErrorKind::WorkerLost,
            "WorkerLostError",
            "billiard.exceptions",
            message,
        )
    }

    /// Converts any displayable error returned by a task. The stored
    /// `exc_type` is the error type's name and `exc_module` its Rust path.
    /// A `TaskError` passes through unchanged; a plain `String` or `&str`
    /// becomes [`TaskError::new`].
    pub fn from_error<E: fmt::Display + 'static>(err: E) -> Self {
        use std::any::TypeId;
        let id = TypeId::of::<E>();
        if id == TypeId::of::<String>() || id == TypeId::of::<&'static str>() {
            return TaskError::new(err.to_string());
        }
        let boxed: Box<dyn std::any::Any> = Box::new(err);
        let boxed = match boxed.downcast::<TaskError>() {
            Ok(te) => return *te,
            Err(other) => other,
        };
        // A subtask's failure keeps the subtask's own error.
        match boxed.downcast::<crate::subtask::SubtaskError>() {
            Ok(se) => (*se).into(),
            Err(other) => {
                // Not a TaskError: we still own it as `E` behind the Any.
                let err = other
                    .downcast::<E>()
                    .map(|b| b.to_string())
                    .unwrap_or_default();
                let full = std::any::type_name::<E>();
                let base = full.split('<').next().unwrap_or(full);
                let (module, ty) = match base.rsplit_once("::") {
                    Some((m, t)) => (m, t),
                    None => ("rust", base),
                };
                Self::with(TaskErrorKind::Failed, ty, module, err)
            }
        }
    }

    /// Rebuilds a failure from a stored Celery exception document.
    pub fn from_exception_info(info: &ExceptionInfo, traceback: Option<&str>) -> Self {
        let message = info.message();
        let kind = match (info.exc_type.as_str(), info.exc_module.as_deref()) {
            ("NotRegistered", _) => TaskErrorKind::NotRegistered,
            ("Panic", Some("celeriac")) => TaskErrorKind::Panicked,
            ("TypeError", Some("builtins")) => TaskErrorKind::InvalidArguments,
            ("TimeLimitExceeded", _) => TaskErrorKind::TimedOut,
            ("SoftTimeLimitExceeded", _) => TaskErrorKind::SoftTimedOut,
            ("WorkerLostError", _) => TaskErrorKind::WorkerLost,
            ("TaskRevokedError", _) => TaskErrorKind::Revoked,
            ("Retry", _) => TaskErrorKind::Retry,
            _ => TaskErrorKind::Failed,
        };
        TaskError(Box::new(Repr {
            kind,
            exc_type: info.exc_type.clone(),
            exc_module: info.exc_module.clone(),
            message,
            exc_args: Some(info.exc_message.clone()),
            traceback: traceback.map(str::to_string),
            retryable: false,
            countdown: None,
        }))
    }

    /// Attaches a traceback text.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.0.traceback = Some(traceback.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> TaskErrorKind {
        self.0.kind
    }

    /// The exception type name, e.g. `ValueError`.
    pub fn exc_type(&self) -> &str {
        &self.0.exc_type
    }

    /// The exception's module, e.g. `builtins`.
    pub fn exc_module(&self) -> Option<&str> {
        self.0.exc_module.as_deref()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The traceback text, if one was recorded.
    pub fn traceback(&self) -> Option<&str> {
        self.0.traceback.as_deref()
    }

    /// The document Celery stores in `result` for a failure.
    pub fn to_exception_info(&self) -> ExceptionInfo {
        ExceptionInfo {
            exc_type: self.0.exc_type.clone(),
            exc_message: self
                .0
                .exc_args
                .clone()
                .unwrap_or_else(|| vec![Value::String(self.0.message.clone())]),
            exc_module: self.0.exc_module.clone(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.exc_type, self.0.message)
    }
}

impl std::error::Error for TaskError {}
