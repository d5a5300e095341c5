//! The task model: the [`Task`] trait that `#[celeriac::task]` implements,
//! typed [`Call`] handles, argument binding and the [`Registry`].
//!
//! A task has a stable string name on the wire. Arguments arrive as JSON:
//! positional args map to parameters in order and kwargs map by name. A call
//! that does not fit (too many or missing arguments, unknown keywords, wrong
//! types) becomes a typed [`TaskError`] of kind
//! [`TaskErrorKind::InvalidArguments`](crate::TaskErrorKind::InvalidArguments),
//! stored as a FAILURE; it never panics the worker.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::TaskError;
use crate::message::Message;
use crate::options::TaskOptions;

pub use crate::call::{Call, CallOptions};
pub use crate::registry::{RegisteredTask, Registry, TaskDef};

/// The header that carries an idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency_key";

/// The arguments of one task call, as they came off the wire.
///
/// # Examples
///
/// ```
/// use celeriac_core::Args;
/// use serde_json::json;
///
/// let args = Args::new(vec![json!(2)], [("y".to_string(), json!(3))].into_iter().collect());
/// let mut bound = args.bind("add", &["x", "y"]).unwrap();
/// let x: i64 = bound.take(0).unwrap();
/// let y: i64 = bound.take(1).unwrap();
/// assert_eq!(x + y, 5);
///
/// let err = Args::new(vec![json!(1), json!(2), json!(3)], Default::default())
///     .bind("add", &["x", "y"])
///     .unwrap_err();
/// assert_eq!(err.message(), "add() takes 2 positional arguments but 3 were given");
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Args {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl Args {
    /// Arguments from positional and keyword parts.
    pub fn new(args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Args { args, kwargs }
    }

    /// Binds the arguments to parameter names, Python style: positional
    /// first, then keywords by name.
    pub fn bind(self, task: &str, params: &'static [&'static str]) -> Result<BoundArgs, TaskError> {
        Ok(BoundArgs {
            slots: self.slots(task, params)?,
            task: Cow::Owned(task.to_string()),
            params,
        })
    }

    /// The arguments in parameter order (see [`bind`](Self::bind)).
    fn slots(
        self,
        task: &str,
        params: &'static [&'static str],
    ) -> Result<Vec<Option<Value>>, TaskError> {
        if self.args.len() > params.len() {
            return Err(TaskError::invalid_arguments(format!(
                "{task}() takes {} positional argument{} but {} {} given",
                params.len(),
                if params.len() == 1 { "" } else { "s" },
                self.args.len(),
                if self.args.len() == 1 { "was" } else { "were" },
            )));
        }
        // In place: the arguments' vector becomes the slots' (same layout).
        let mut slots: Vec<Option<Value>> = self.args.into_iter().map(Some).collect();
        slots.resize(params.len(), None);
        for (key, value) in self.kwargs {
            match params.iter().position(|p| *p == key) {
                Some(i) if slots[i].is_some() => {
                    return Err(TaskError::invalid_arguments(format!(
                        "{task}() got multiple values for argument '{key}'"
                    )));
                }
                Some(i) => slots[i] = Some(value),
                None => {
                    return Err(TaskError::invalid_arguments(format!(
                        "{task}() got an unexpected keyword argument '{key}'"
                    )));
                }
            }
        }
        Ok(slots)
    }

    /// [`bind`](Self::bind) for a task whose name is a `&'static str`
    /// (what `#[task]` generates): the bound arguments borrow the name
    /// instead of copying it.
    pub fn bind_static(
        self,
        task: &'static str,
        params: &'static [&'static str],
    ) -> Result<BoundArgs, TaskError> {
        Ok(BoundArgs {
            slots: self.slots(task, params)?,
            task: Cow::Borrowed(task),
            params,
        })
    }
}

/// Arguments bound to parameter slots; see [`Args::bind`].
#[derive(Debug)]
pub struct BoundArgs {
    task: Cow<'static, str>,
    params: &'static [&'static str],
    slots: Vec<Option<Value>>,
}

impl BoundArgs {
    /// Takes parameter `i` and deserializes it as `T`. A missing argument is
    /// accepted only for `Option` parameters (it becomes `None`).
    pub fn take<T: DeserializeOwned>(&mut self, i: usize) -> Result<T, TaskError> {
        let name = self.params.get(i).copied().unwrap_or("?");
        match self.slots.get_mut(i).and_then(Option::take) {
            Some(v) => serde_json::from_value(v).map_err(|e| {
                TaskError::invalid_arguments(format!("{}() argument '{name}': {e}", self.task))
            }),
            None => serde_json::from_value(Value::Null).map_err(|_| self.missing(name)),
        }
    }

    /// Takes parameter `i`, which must be present: unlike [`take`], a
    /// missing argument is an error even when `T` would accept `null`
    /// (a `serde_json::Value` parameter). `#[task]` uses this for every
    /// parameter not spelled `Option<...>`.
    ///
    /// [`take`]: BoundArgs::take
    pub fn take_required<T: DeserializeOwned>(&mut self, i: usize) -> Result<T, TaskError> {
        let present = self.slots.get(i).is_some_and(Option::is_some);
        if !present {
            let name = self.params.get(i).copied().unwrap_or("?");
            return Err(self.missing(name));
        }
        self.take(i)
    }

    fn missing(&self, name: &str) -> TaskError {
        TaskError::invalid_arguments(format!(
            "{}() missing 1 required positional argument: '{name}'",
            self.task
        ))
    }
}

/// Conversion of a tuple of Rust values into positional JSON arguments.
///
/// Implemented for tuples of up to 12 `Serialize` values and for
/// `Vec<Value>`.
pub trait IntoArgs {
    /// The positional arguments, or a message saying which could not be
    /// serialized.
    fn into_args(self) -> Result<Vec<Value>, String>;
}

impl IntoArgs for Vec<Value> {
    fn into_args(self) -> Result<Vec<Value>, String> {
        Ok(self)
    }
}

macro_rules! tuple_into_args {
    ($($name:ident),*) => {
        impl<$($name: Serialize),*> IntoArgs for ($($name,)*) {
            #[allow(non_snake_case)]
            fn into_args(self) -> Result<Vec<Value>, String> {
                let ($($name,)*) = self;
                Ok(vec![$(serde_json::to_value($name).map_err(|e| e.to_string())?),*])
            }
        }
    };
}
impl IntoArgs for () {
    fn into_args(self) -> Result<Vec<Value>, String> {
        Ok(Vec::new())
    }
}
tuple_into_args!(A);
tuple_into_args!(A, B);
tuple_into_args!(A, B, C);
tuple_into_args!(A, B, C, D);
tuple_into_args!(A, B, C, D, E);
tuple_into_args!(A, B, C, D, E, F);
tuple_into_args!(A, B, C, D, E, F, G);
tuple_into_args!(A, B, C, D, E, F, G, H);
tuple_into_args!(A, B, C, D, E, F, G, H, I);
tuple_into_args!(A, B, C, D, E, F, G, H, I, J);
tuple_into_args!(A, B, C, D, E, F, G, H, I, J, K);
tuple_into_args!(A, B, C, D, E, F, G, H, I, J, K, L);

/// A cooperative cancellation flag shared by a running task and the
/// executor that runs it. The executor cancels it when the task's soft time
/// limit passes; the task looks at it with [`TaskContext::is_cancelled`] or
/// [`TaskContext::check`].
///
/// ```
/// use celeriac_core::CancelToken;
///
/// let token = CancelToken::new();
/// let seen_by_task = token.clone();
/// assert!(!seen_by_task.is_cancelled());
/// token.cancel();
/// assert!(seen_by_task.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels it; every clone sees it.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What a running task knows about its own call.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskContext {
    id: String,
    name: String,
    retries: u32,
    hostname: String,
    root_id: Option<String>,
    parent_id: Option<String>,
    group: Option<String>,
    /// Hard and soft time limits in seconds, as the `timelimit` header.
    #[serde(default)]
    timelimit: (Option<f64>, Option<f64>),
    #[serde(skip)]
    cancel: CancelToken,
    /// How this task submits and waits for subtasks (set by the worker).
    #[serde(skip)]
    subtasks: Option<Arc<dyn crate::subtask::Subtasks>>,
    /// Where this task's custom states go (set by the worker).
    #[serde(skip)]
    states: Option<Arc<dyn crate::progress::TaskStates>>,
}

impl TaskContext {
    /// The context for executing `msg` on worker node `hostname`.
    pub fn from_message(msg: &Message, hostname: &str) -> Self {
        TaskContext {
            id: msg.headers.id.clone(),
            name: msg.headers.task.clone(),
            retries: msg.headers.retries,
            hostname: hostname.to_string(),
            root_id: msg.headers.root_id.clone(),
            parent_id: msg.headers.parent_id.clone(),
            group: msg.headers.group.clone(),
            timelimit: msg.headers.timelimit,
            cancel: CancelToken::new(),
            subtasks: None,
            states: None,
        }
    }

    /// The context for running a call handed over in process (no
    /// message): task `id` of `name`, on node `hostname`, with the
    /// `timelimit` header's hard and soft limits in seconds, and `cancel`
    /// as its cancel token (the caller keeps a clone, to cancel it).
    ///
    /// ```
    /// use celeriac_core::{CancelToken, TaskContext};
    ///
    /// let token = CancelToken::new();
    /// let ctx = TaskContext::for_call("id-1", "tasks.add", "node", (None, Some(2.0)), token.clone());
    /// assert_eq!((ctx.id(), ctx.retries()), ("id-1", 0));
    /// assert_eq!(ctx.soft_time_limit().unwrap().as_secs_f64(), 2.0);
    /// token.cancel();
    /// assert!(ctx.is_cancelled());
    /// ```
    pub fn for_call(
        id: &str,
        name: &str,
        hostname: &str,
        timelimit: (Option<f64>, Option<f64>),
        cancel: CancelToken,
    ) -> Self {
        TaskContext {
            id: id.to_string(),
            name: name.to_string(),
            retries: 0,
            hostname: hostname.to_string(),
            root_id: Some(id.to_string()),
            parent_id: None,
            group: None,
            timelimit,
            cancel,
            subtasks: None,
            states: None,
        }
    }

    /// A context for calling a task directly, outside any worker.
    pub fn detached(name: &str) -> Self {
        TaskContext {
            id: crate::id::fresh_uuid(),
            name: name.to_string(),
            retries: 0,
            hostname: String::new(),
            root_id: None,
            parent_id: None,
            group: None,
            timelimit: (None, None),
            cancel: CancelToken::new(),
            subtasks: None,
            states: None,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// How many times this task has been retried.
    pub fn retries(&self) -> u32 {
        self.retries
    }
    /// The node name of the worker running it.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    /// The first task of the workflow.
    pub fn root_id(&self) -> Option<&str> {
        self.root_id.as_deref()
    }
    /// The task that sent this one.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent_id.as_deref()
    }
    /// The group id, for group members.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The call's hard time limit (the first element of Celery's
    /// `timelimit` header), if any.
    pub fn time_limit(&self) -> Option<Duration> {
        secs(self.timelimit.0)
    }

    /// The call's soft time limit (the second element of `timelimit`).
    pub fn soft_time_limit(&self) -> Option<Duration> {
        secs(self.timelimit.1)
    }

    /// Overrides the limits of this call; executors apply worker-wide
    /// defaults this way when the message has none.
    pub fn set_time_limits(&mut self, hard: Option<Duration>, soft: Option<Duration>) {
        self.timelimit = (hard.map(|d| d.as_secs_f64()), soft.map(|d| d.as_secs_f64()));
    }

    /// The cancellation flag of this run; executors cancel it at the soft
    /// time limit.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Gives this task a way to submit and wait for subtasks; a worker
    /// calls it before running the task (see [`crate::subtask`]).
    pub fn set_subtasks(&mut self, subtasks: Arc<dyn crate::subtask::Subtasks>) {
        self.subtasks = Some(subtasks);
    }

    /// The worker's [`Subtasks`](crate::subtask::Subtasks), if this task
    /// runs where it can submit and wait.
    pub fn subtasks(&self) -> Option<&dyn crate::subtask::Subtasks> {
        self.subtasks.as_deref()
    }

    /// Gives this task a way to store states of its own; a worker calls it
    /// before running the task (see [`crate::progress`]).
    pub fn set_states(&mut self, states: Arc<dyn crate::progress::TaskStates>) {
        self.states = Some(states);
    }

    /// The worker's [`TaskStates`](crate::progress::TaskStates), if this
    /// task runs where it can store states.
    pub fn states(&self) -> Option<&Arc<dyn crate::progress::TaskStates>> {
        self.states.as_ref()
    }

    /// Whether the task should stop now: its soft time limit has passed.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(SoftTimeLimitExceeded)` once the soft time limit has passed, so
    /// that a long task can write `ctx.check()?;` in its loop, as a Python
    /// task sees `SoftTimeLimitExceeded` raised.
    pub fn check(&self) -> Result<(), TaskError> {
        if self.is_cancelled() {
            Err(TaskError::soft_timed_out(format!(
                "SoftTimeLimitExceeded({})",
                self.timelimit.1.map(|s| s.to_string()).unwrap_or_default()
            )))
        } else {
            Ok(())
        }
    }

    /// A request to retry this task with the same id in `countdown`
    /// (Celery's `self.retry(countdown=...)`); return it as the task's
    /// error. [`TaskContext::retry_later`] uses the task's delay or backoff.
    pub fn retry(&self, countdown: Duration) -> TaskError {
        TaskError::retry(Some(countdown))
    }

    /// A request to retry after the task's retry delay or backoff.
    pub fn retry_later(&self) -> TaskError {
        TaskError::retry(None)
    }
}

/// A call's `eta` or `expires` as Celery writes it, or an error when `at`
/// (unix seconds) is not a time Python can read.
pub(crate) fn iso_or_error(header: &str, at: f64) -> Result<String, TaskError> {
    crate::time::try_iso_from_unix(at).ok_or_else(|| {
        TaskError::invalid_arguments(format!(
            "{header} is out of range: {at} s after 1970 is not a time between the years 1 and 9999"
        ))
    })
}

/// A time limit from the `timelimit` header: none unless positive; one
/// longer than [`MAX_SECONDS`](crate::time::MAX_SECONDS) (a message may say
/// `1e30`) is that long, not a panic.
fn secs(s: Option<f64>) -> Option<Duration> {
    s.filter(|s| *s > 0.0).map(crate::time::saturating_seconds)
}

/// The function that decodes arguments and runs a task.
pub type RunFn = fn(&TaskContext, Args) -> Result<Value, TaskError>;

/// A running async task.
pub type TaskFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, TaskError>> + Send + 'static>>;

/// The function that decodes arguments and starts an async task.
pub type AsyncRunFn = fn(TaskContext, Args) -> TaskFuture;

/// A task, as `#[celeriac::task]` implements it for the type it generates
/// with the function's name.
///
/// The name is the task's identity on the wire; Rust type paths never go on
/// the wire.
pub trait Task: 'static {
    /// The positional arguments, as a tuple.
    type Args: IntoArgs;
    /// The return value, as clients decode it.
    type Output: DeserializeOwned;
    /// Parameter names, in order (the task context is not one of them).
    const PARAMS: &'static [&'static str];
    /// The retry policy (Celery's defaults unless the attribute sets it).
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    /// The task's wire name, e.g. `tasks.add`.
    fn name() -> &'static str;
    /// Whether the task is an `async fn` (it runs on the async executor).
    const IS_ASYNC: bool = false;
    /// Whether the function takes the [`TaskContext`] (Celery's
    /// `bind=True`). Celery's worker never calls a bound task inline as an
    /// errback: it publishes it, whatever its arity.
    const TAKES_CONTEXT: bool = false;
    /// Binds `args` and runs the task. An async task refuses to run this
    /// way; see [`Task::run_async`].
    fn run(ctx: &TaskContext, args: Args) -> Result<Value, TaskError>;
    /// Binds `args` and starts the task as a future. The default runs
    /// [`Task::run`] when first polled; async tasks override it.
    fn run_async(ctx: TaskContext, args: Args) -> TaskFuture {
        Box::pin(async move { Self::run(&ctx, args) })
    }
    /// A typed call of this task with `args`.
    fn call(args: Self::Args) -> Call<Self::Output> {
        Call::new(Self::name()).with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_limit_too_large_for_a_duration_is_the_longest_one_not_a_panic() {
        let mut msg = Message::new("t", vec![], Map::new());
        for (limits, hard, soft) in [
            ((Some(1e30), Some(f64::INFINITY)), true, true),
            ((Some(f64::NAN), Some(-1.0)), false, false),
            ((Some(0.0), Some(2.5)), false, true),
        ] {
            msg.headers.timelimit = limits;
            let ctx = TaskContext::from_message(&msg, "w");
            assert_eq!(ctx.time_limit().is_some(), hard, "{limits:?}");
            assert_eq!(ctx.soft_time_limit().is_some(), soft, "{limits:?}");
        }
        msg.headers.timelimit = (Some(1e30), None);
        let limit = TaskContext::from_message(&msg, "w").time_limit().unwrap();
        assert_eq!(limit.as_secs_f64(), crate::time::MAX_SECONDS);
    }

    #[test]
    fn a_call_with_an_empty_name_or_queue_or_an_impossible_time_is_refused() {
        let refused = |c: Call<Value>, what: &str| {
            let e = c.to_message().unwrap_err();
            assert_eq!(e.exc_type(), "TypeError", "{what}: {e}");
            e.to_string()
        };
        assert!(refused(Call::new(""), "name").contains("task name is empty"));
        assert!(refused(Call::new("t").queue(""), "queue").contains("queue name is empty"));
        let e = refused(Call::new("t").countdown(Duration::MAX), "countdown");
        assert!(e.contains("eta is out of range"), "{e}");
        assert!(refused(Call::new("t").eta(f64::NAN), "nan eta").contains("eta"));
        let e = refused(Call::new("t").expires_in(Duration::MAX), "expires");
        assert!(e.contains("expires is out of range"), "{e}");
        // Still fine: a long but possible countdown.
        let far = Call::<Value>::new("t").countdown(Duration::from_secs(50 * 365 * 86_400));
        let msg = far.to_message().unwrap();
        assert!(msg.eta_unix().unwrap() > crate::time::unix_now());
    }
}
