//! Typed [`Call`] handles: a task's name, its arguments and the
//! [`CallOptions`] of one call, as a client sends them.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::TaskError;
use crate::message::Message;
use crate::task::*;

/// Options of one call: routing, timing and identity.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Queue to route to (default `celery`).
    pub queue: Option<String>,
    /// Run no earlier than this many seconds after sending.
    pub countdown: Option<Duration>,
    /// Run no earlier than this unix time.
    pub eta: Option<f64>,
    /// Expire (become REVOKED) after this unix time.
    pub expires: Option<f64>,
    /// Priority 0-9.
    pub priority: Option<u8>,
    /// Use this task id instead of a fresh UUID.
    pub task_id: Option<String>,
    /// Do not store the result.
    pub ignore_result: Option<bool>,
    /// Hard time limit in seconds.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds.
    pub soft_time_limit: Option<f64>,
    /// Idempotency key: tasks sharing one run once; see
    /// [`Call::idempotency_key`].
    pub idempotency_key: Option<String>,
}

/// A call of a task: its name, arguments and options, typed by the output
/// `T` that a client decodes from the result.
///
/// `#[celeriac::task]` generates `add::call(2, 3) -> Call<i64>`; a call of a
/// task known only by name is built with [`Call::new`].
///
/// # Examples
///
/// ```
/// use celeriac_core::Call;
///
/// let call: Call<i64> = Call::new("celeriac.add").arg(2).arg(3).queue("math");
/// let msg = call.to_message().unwrap();
/// assert_eq!(msg.task(), "celeriac.add");
/// assert_eq!(msg.queue(), "math");
/// assert_eq!(msg.headers.argsrepr.as_deref(), Some("(2, 3)"));
/// ```
pub struct Call<T> {
    name: Cow<'static, str>,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    error: Option<String>,
    options: CallOptions,
    _out: PhantomData<fn() -> T>,
}

impl<T> Clone for Call<T> {
    fn clone(&self) -> Self {
        Call {
            name: self.name.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            error: self.error.clone(),
            options: self.options.clone(),
            _out: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .field("options", &self.options)
            .finish()
    }
}

impl<T> Call<T> {
    /// A call of task `name` with no arguments yet.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Call {
            name: name.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            error: None,
            options: CallOptions::default(),
            _out: PhantomData,
        }
    }

    fn record<V: Serialize>(&mut self, what: &str, v: V) -> Value {
        serde_json::to_value(v).unwrap_or_else(|e| {
            self.error
                .get_or_insert_with(|| format!("{what} cannot be serialized to JSON: {e}"));
            Value::Null
        })
    }

    /// Appends a positional argument.
    pub fn arg<V: Serialize>(mut self, v: V) -> Self {
        let v = self.record("argument", v);
        self.args.push(v);
        self
    }

    /// Sets a keyword argument.
    pub fn kwarg<V: Serialize>(mut self, key: &str, v: V) -> Self {
        let v = self.record("keyword argument", v);
        self.kwargs.insert(key.to_string(), v);
        self
    }

    /// Replaces the positional arguments.
    pub fn with_args(mut self, args: impl IntoArgs) -> Self {
        match args.into_args() {
            Ok(a) => self.args = a,
            Err(e) => {
                self.error
                    .get_or_insert(format!("argument cannot be serialized to JSON: {e}"));
            }
        }
        self
    }

    /// Replaces the keyword arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Routes the call to `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options.queue = Some(queue.into());
        self
    }

    /// Runs the task no earlier than `delay` from now.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.options.countdown = Some(delay);
        self
    }

    /// Runs the task no earlier than unix time `at`.
    pub fn eta(mut self, at: f64) -> Self {
        self.options.eta = Some(at);
        self
    }

    /// The task expires (becomes REVOKED) if not started within `ttl`.
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        self.options.expires = Some(crate::time::unix_now() + ttl.as_secs_f64());
        self
    }

    /// Sets the priority, 0-9.
    pub fn priority(mut self, priority: u8) -> Self {
        self.options.priority = Some(priority.min(9));
        self
    }

    /// Uses a given task id.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.options.task_id = Some(id.into());
        self
    }

    /// Does not store the result.
    pub fn ignore_result(mut self, ignore: bool) -> Self {
        self.options.ignore_result = Some(ignore);
        self
    }

    /// Gives the call an idempotency key (the `idempotency_key` header).
    /// Workers run at most one task per key (for the result TTL): a second
    /// task with the same key, e.g. a client retrying a submission, gets
    /// the first one's result without running.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.options.idempotency_key = Some(key.into());
        self
    }

    /// Sets hard and soft time limits in seconds (`timelimit` header).
    pub fn time_limits(mut self, hard: Option<f64>, soft: Option<f64>) -> Self {
        self.options.time_limit = hard;
        self.options.soft_time_limit = soft;
        self
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The positional arguments.
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// The keyword arguments.
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.kwargs
    }

    /// The options.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// Why the call cannot be sent, if an argument could not be serialized
    /// to JSON ([`Call::to_message`] refuses it with this message).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Takes the call apart: its name, positional and keyword arguments,
    /// and options (for handing it over in process without building a
    /// message).
    ///
    /// ```
    /// use celeriac_core::Call;
    ///
    /// let (name, args, kwargs, opts) = Call::<i64>::new("tasks.add").arg(2).arg(3).queue("q").into_parts();
    /// assert_eq!((name.as_ref(), args.len(), kwargs.len()), ("tasks.add", 2, 0));
    /// assert_eq!(opts.queue.as_deref(), Some("q"));
    /// ```
    pub fn into_parts(
        self,
    ) -> (
        Cow<'static, str>,
        Vec<Value>,
        Map<String, Value>,
        CallOptions,
    ) {
        (self.name, self.args, self.kwargs, self.options)
    }

    /// The same call with another output type.
    pub fn cast<U>(self) -> Call<U> {
        Call {
            name: self.name,
            args: self.args,
            kwargs: self.kwargs,
            error: self.error,
            options: self.options,
            _out: PhantomData,
        }
    }

    /// Builds the protocol v2 message for this call.
    pub fn to_message(&self) -> Result<Message, TaskError> {
        if let Some(e) = &self.error {
            return Err(TaskError::invalid_arguments(e.clone()));
        }
        if self.name.is_empty() {
            return Err(TaskError::invalid_arguments("the task name is empty"));
        }
        if self.options.queue.as_deref() == Some("") {
            return Err(TaskError::invalid_arguments("the queue name is empty"));
        }
        let mut msg = match &self.options.task_id {
            Some(id) => Message::with_id(&self.name, id, self.args.clone(), self.kwargs.clone()),
            None => Message::new(&self.name, self.args.clone(), self.kwargs.clone()),
        };
        let o = &self.options;
        if let Some(q) = &o.queue {
            msg.set_queue(q);
        }
        let eta = match (o.eta, o.countdown) {
            (Some(at), _) => Some(at),
            (None, Some(d)) => Some(crate::time::unix_now() + d.as_secs_f64()),
            (None, None) => None,
        };
        msg.headers.eta = eta.map(|at| iso_or_error("eta", at)).transpose()?;
        msg.headers.expires = o
            .expires
            .map(|at| iso_or_error("expires", at))
            .transpose()?;
        if let Some(p) = o.priority {
            msg.properties.priority = p;
        }
        msg.headers.ignore_result = o.ignore_result;
        msg.headers.timelimit = (o.time_limit, o.soft_time_limit);
        if let Some(key) = &o.idempotency_key {
            msg.headers
                .extra
                .insert(IDEMPOTENCY_HEADER.to_string(), Value::String(key.clone()));
        }
        Ok(msg)
    }
}
