//! The [`Registry`]: the tasks a worker runs, by wire name, with their
//! options and parameters, from `#[celeriac::task]` registrations linked
//! into the binary or registered by hand.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{RegistryError, TaskError};
use crate::options::TaskOptions;
use crate::task::*;

/// A link-time task registration, submitted by `#[celeriac::task]` and
/// collected by [`Registry::linked`].
#[derive(Debug)]
pub struct TaskDef {
    /// The task's wire name.
    pub name: fn() -> &'static str,
    /// Runs the task (for an async task: refuses, see `run_async`).
    pub run: RunFn,
    /// Starts an async task; `None` for a blocking one.
    pub run_async: Option<AsyncRunFn>,
    /// Diagnostic tasks are registered only on request (e.g. a worker's
    /// `--diagnostic-tasks`).
    pub diagnostic: bool,
    /// The retry policy.
    pub options: TaskOptions,
    /// Parameter names, in order (the context not among them).
    pub params: &'static [&'static str],
    /// Whether the function takes the [`TaskContext`].
    pub takes_context: bool,
}

inventory::collect!(TaskDef);

type DynRun = dyn Fn(&TaskContext, Args) -> Result<Value, TaskError> + Send + Sync;
type DynAsyncRun = dyn Fn(TaskContext, Args) -> TaskFuture + Send + Sync;

#[derive(Clone)]
enum Runner {
    Blocking(Arc<DynRun>),
    Async(Arc<DynAsyncRun>),
}

/// A task known to a [`Registry`].
#[derive(Clone)]
pub struct RegisteredTask {
    name: String,
    run: Runner,
    options: TaskOptions,
    /// Its parameters, when known (`#[task]`, [`Registry::register`]);
    /// `None` for a closure, whose arguments are its own business.
    params: Option<&'static [&'static str]>,
    takes_context: bool,
}

impl RegisteredTask {
    fn new(name: &str, run: Runner, options: TaskOptions) -> Self {
        RegisteredTask {
            name: name.to_string(),
            run,
            options,
            params: None,
            takes_context: false,
        }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task's retry policy.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// The task's parameter names, in order, when they are known: for a
    /// `#[task]` function or a [`Task`] type, not for a closure
    /// ([`Registry::register_fn`]). A worker uses them for Celery's
    /// errback rule: an errback that takes more than one argument is
    /// called inline with `(request, exc, traceback)`.
    ///
    /// ```
    /// use celeriac_core::{Registry, Task};
    /// # use celeriac_core::{Args, TaskContext, TaskError};
    /// # use serde_json::Value;
    /// struct OnError;
    /// impl Task for OnError {
    ///     type Args = (Value, Value, Option<String>);
    ///     type Output = ();
    ///     const PARAMS: &'static [&'static str] = &["request", "exc", "traceback"];
    ///     fn name() -> &'static str { "tasks.on_error" }
    ///     fn run(_: &TaskContext, _: Args) -> Result<Value, TaskError> { Ok(Value::Null) }
    /// }
    /// let mut reg = Registry::new();
    /// reg.register::<OnError>().unwrap();
    /// reg.register_fn("tasks.any", |_, _| Ok(Value::Null)).unwrap();
    /// assert_eq!(reg.get("tasks.on_error").unwrap().params(), Some(&["request", "exc", "traceback"][..]));
    /// assert_eq!(reg.get("tasks.any").unwrap().params(), None);
    /// ```
    pub fn params(&self) -> Option<&'static [&'static str]> {
        self.params
    }

    /// Whether the task's function takes the [`TaskContext`] (Celery's
    /// `bind=True`).
    pub fn takes_context(&self) -> bool {
        self.takes_context
    }

    /// Whether it is an async task, run on the async executor.
    pub fn is_async(&self) -> bool {
        matches!(self.run, Runner::Async(_))
    }

    /// Runs a blocking task with `args`. Panics are not caught here;
    /// executors catch them. An async task is refused with a typed error:
    /// it must run on an async executor ([`RegisteredTask::invoke_async`]).
    pub fn invoke(&self, ctx: &TaskContext, args: Args) -> Result<Value, TaskError> {
        match &self.run {
            Runner::Blocking(run) => run(ctx, args),
            Runner::Async(_) => Err(TaskError::typed(
                "NotImplementedError",
                "builtins",
                format!("{} is an async task: it runs on the async pool", self.name),
            )),
        }
    }

    /// Starts the task as a future: an async task's own future, or, for a
    /// blocking task, a future that runs it when first polled (executors
    /// should not do that on an async executor's threads).
    pub fn invoke_async(&self, ctx: TaskContext, args: Args) -> TaskFuture {
        match &self.run {
            Runner::Async(run) => run(ctx, args),
            Runner::Blocking(run) => {
                let run = Arc::clone(run);
                Box::pin(async move { run(&ctx, args) })
            }
        }
    }
}

impl fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredTask")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The tasks a worker can run, by name.
///
/// [`Registry::linked`] collects every `#[celeriac::task]` linked into the
/// binary; [`Registry::register`] and [`Registry::register_fn`] add tasks
/// explicitly. A duplicate name is an error.
///
/// # Examples
///
/// ```
/// use celeriac_core::{Args, Registry, TaskContext};
/// use serde_json::json;
///
/// let mut reg = Registry::new();
/// reg.register_fn("tasks.double", |_ctx, args: Args| {
///     let mut b = args.bind("double", &["x"])?;
///     let x: i64 = b.take(0)?;
///     Ok(json!(x * 2))
/// }).unwrap();
/// assert!(reg.register_fn("tasks.double", |_, _| Ok(json!(null))).is_err());
/// let task = reg.get("tasks.double").unwrap();
/// let out = task.invoke(&TaskContext::detached("tasks.double"), Args::new(vec![json!(21)], Default::default()));
/// assert_eq!(out.unwrap(), json!(42));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: HashMap<String, Arc<RegisteredTask>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every task linked into the binary with `#[celeriac::task]`;
    /// diagnostic tasks only when `diagnostic` is true.
    pub fn linked(diagnostic: bool) -> Result<Self, RegistryError> {
        let mut reg = Registry::new();
        for def in inventory::iter::<TaskDef> {
            if def.diagnostic && !diagnostic {
                continue;
            }
            reg.register_def(def)?;
        }
        Ok(reg)
    }

    /// Registers a link-time definition.
    pub fn register_def(&mut self, def: &TaskDef) -> Result<&mut Self, RegistryError> {
        let runner = match def.run_async {
            Some(run) => Runner::Async(Arc::new(run)),
            None => Runner::Blocking(Arc::new(def.run)),
        };
        let task = RegisteredTask {
            params: Some(def.params),
            takes_context: def.takes_context,
            ..RegisteredTask::new((def.name)(), runner, def.options)
        };
        self.insert(task)
    }

    /// Registers task type `T` (the escape hatch when link-time registration
    /// is not wanted, e.g. a task defined in a test).
    pub fn register<T: Task>(&mut self) -> Result<&mut Self, RegistryError> {
        let runner = if T::IS_ASYNC {
            Runner::Async(Arc::new(T::run_async))
        } else {
            Runner::Blocking(Arc::new(T::run))
        };
        let task = RegisteredTask {
            params: Some(T::PARAMS),
            takes_context: T::TAKES_CONTEXT,
            ..RegisteredTask::new(T::name(), runner, T::OPTIONS)
        };
        self.insert(task)
    }

    /// Registers a closure under `name`.
    pub fn register_fn<F>(&mut self, name: &str, f: F) -> Result<&mut Self, RegistryError>
    where
        F: Fn(&TaskContext, Args) -> Result<Value, TaskError> + Send + Sync + 'static,
    {
        self.insert(RegisteredTask::new(
            name,
            Runner::Blocking(Arc::new(f)),
            TaskOptions::DEFAULT,
        ))
    }

    /// Registers an async closure under `name`: it runs on the async
    /// executor, with `options`.
    ///
    /// ```
    /// use celeriac_core::{Args, Registry, TaskContext, TaskOptions};
    /// use serde_json::json;
    ///
    /// let mut reg = Registry::new();
    /// reg.register_async_fn("tasks.later", TaskOptions::DEFAULT, |_ctx, args: Args| async move {
    ///     Ok(json!(args.args.len()))
    /// }).unwrap();
    /// let task = reg.get("tasks.later").unwrap();
    /// assert!(task.is_async());
    /// let fut = task.invoke_async(TaskContext::detached("tasks.later"), Args::default());
    /// assert_eq!(futures::executor::block_on(fut).unwrap(), json!(0));
    /// ```
    pub fn register_async_fn<F, Fut>(
        &mut self,
        name: &str,
        options: TaskOptions,
        f: F,
    ) -> Result<&mut Self, RegistryError>
    where
        F: Fn(TaskContext, Args) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        let run = move |ctx: TaskContext, args: Args| -> TaskFuture { Box::pin(f(ctx, args)) };
        self.insert(RegisteredTask::new(
            name,
            Runner::Async(Arc::new(run)),
            options,
        ))
    }

    /// Registers a closure under `name` with a retry policy.
    pub fn register_fn_with<F>(
        &mut self,
        name: &str,
        options: TaskOptions,
        f: F,
    ) -> Result<&mut Self, RegistryError>
    where
        F: Fn(&TaskContext, Args) -> Result<Value, TaskError> + Send + Sync + 'static,
    {
        self.insert(RegisteredTask::new(
            name,
            Runner::Blocking(Arc::new(f)),
            options,
        ))
    }

    fn insert(&mut self, task: RegisteredTask) -> Result<&mut Self, RegistryError> {
        let name = task.name.as_str();
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(RegistryError::InvalidName(task.name));
        }
        if self.tasks.contains_key(name) {
            return Err(RegistryError::Duplicate(task.name));
        }
        self.tasks.insert(task.name.clone(), Arc::new(task));
        Ok(self)
    }

    /// Looks a task up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<RegisteredTask>> {
        self.tasks.get(name)
    }

    /// Whether a task of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of registered tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is registered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
