//! Subtasks: a running task submits other tasks on its worker's broker
//! ([`TaskContext::submit`]) and waits for their results
//! ([`TaskContext::wait`]) without the deadlock Celery warns about.
//!
//! Celery forbids `result.get()` inside a task: when every slot of every
//! worker holds a task that waits, nothing is left to run the subtasks. A
//! celeriac task that waits **gives its execution slot up** for as long as
//! it waits, so the worker claims and runs other messages (the subtasks
//! among them) in its place; a task waiting on a thread of the thread pool
//! also lends that thread's place to a new one (see
//! `ThreadPool::blocking_section` in `celeriac-pool`). When the results are
//! in, the task takes the next free slot back, before any message waiting
//! in line. This is how Dask's `secede`/`rejoin` and Ray's blocked `get`
//! work. A worker at concurrency 1 can thus run a task that fans out to
//! subtasks and joins them, and subtasks that wait in turn.
//!
//! The worker's side is the [`Subtasks`] trait; a worker gives each task's
//! context one. Subtask messages carry `parent_id` (the submitting task)
//! and `root_id` (its root, or itself) as Celery's `apply_async` inside a
//! task does, and the submitting task's stored result lists them as its
//! `children`.
//!
//! **Where it works:** tasks on a worker's thread pool and `async fn`
//! tasks (use the `_async` forms there). A task running in a child process
//! of the process pool, or one called directly with a detached context,
//! gets [`SubtaskError::Unavailable`], and so does a context kept past the
//! end of its task's run. Several threads of one task that wait at once
//! give its slot up once.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::error::TaskError;
use crate::message::Message;
use crate::result::ResultMeta;
use crate::task::{Call, CancelToken, TaskContext};

/// A task submitted from inside a task, typed by its output; wait for it
/// with [`TaskContext::wait`] (or [`TaskContext::wait_async`]).
pub struct Subtask<T> {
    id: String,
    name: String,
    _out: PhantomData<fn() -> T>,
}

impl<T> Subtask<T> {
    /// The subtask's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The subtask's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> Clone for Subtask<T> {
    fn clone(&self) -> Self {
        Subtask {
            id: self.id.clone(),
            name: self.name.clone(),
            _out: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Subtask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subtask")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

/// Why a subtask could not be submitted or gave no value.
///
/// It converts into the [`TaskError`] a task returns, so `ctx.wait(&s)?`
/// fails the waiting task with the subtask's own error (its exception type
/// and message), as a Python task that calls `result.get()` re-raises the
/// subtask's exception.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubtaskError {
    /// The subtask failed (or was revoked): its error.
    #[error("subtask failed: {0}")]
    Failed(TaskError),
    /// The waiting task was cancelled while it waited: its soft time limit
    /// passed or it was revoked with terminate.
    #[error("cancelled while waiting for subtasks: {0}")]
    Cancelled(TaskError),
    /// The results did not all arrive in time (the subtasks may still run).
    #[error("timed out waiting for subtasks")]
    Timeout,
    /// The call cannot be sent (an argument that is not JSON, an empty
    /// name or queue, an impossible time).
    #[error("the subtask cannot be sent: {0}")]
    Call(TaskError),
    /// This task cannot submit or wait for subtasks; why.
    #[error("subtasks are unavailable here: {0}")]
    Unavailable(&'static str),
    /// A blocking form (`submit`, `wait`) was called on an async runtime's
    /// thread, which it would block; use the `_async` form.
    #[error(
        "`{0}` would block the async runtime: in an `async fn` task use `{0}_async(...).await`"
    )]
    WouldBlock(&'static str),
    /// The broker refused the subtask's message.
    #[error("could not publish the subtask: {0}")]
    Publish(String),
    /// The result backend failed while waiting.
    #[error("result backend: {0}")]
    Backend(String),
    /// The result does not decode as the subtask's output type.
    #[error("the subtask's result does not decode as the expected type: {0}")]
    Decode(String),
}

impl From<SubtaskError> for TaskError {
    fn from(e: SubtaskError) -> Self {
        match e {
            SubtaskError::Failed(t) | SubtaskError::Cancelled(t) | SubtaskError::Call(t) => t,
            SubtaskError::Decode(m) => TaskError::typed("TypeError", "builtins", m),
            SubtaskError::Timeout => {
                TaskError::typed("TimeoutError", "celery.exceptions", e.to_string())
            }
            other => TaskError::typed("RuntimeError", "builtins", other.to_string()),
        }
    }
}

/// What a worker gives each task's [`TaskContext`] so that it can submit
/// subtasks and wait for them; see the [module docs](self).
///
/// Implementations publish on the worker's broker and watch its result
/// backend. The waits give the caller's execution slot up while they last
/// and take it back before they return.
#[async_trait]
pub trait Subtasks: Send + Sync + fmt::Debug {
    /// Publishes subtask messages (already carrying `parent_id` and
    /// `root_id`), blocking the calling thread; refuses
    /// ([`SubtaskError::WouldBlock`]) on an async runtime's thread.
    fn publish(&self, msgs: Vec<Message>) -> Result<(), SubtaskError>;

    /// Publishes subtask messages from an async task.
    async fn publish_async(&self, msgs: Vec<Message>) -> Result<(), SubtaskError>;

    /// Waits for the ready results of `ids`, in order, blocking the calling
    /// thread; gives up with [`SubtaskError::Cancelled`] once `cancel` is
    /// cancelled, or [`SubtaskError::Timeout`] after `timeout`.
    fn wait(
        &self,
        ids: &[String],
        cancel: &CancelToken,
        timeout: Option<Duration>,
    ) -> Result<Vec<ResultMeta>, SubtaskError>;

    /// [`wait`](Self::wait), from an async task.
    async fn wait_async(
        &self,
        ids: &[String],
        cancel: &CancelToken,
        timeout: Option<Duration>,
    ) -> Result<Vec<ResultMeta>, SubtaskError>;
}

/// Why a context has no [`Subtasks`].
const UNAVAILABLE: &str = "the task is not running on a worker's thread pool or async executor \
     (it was called directly, or runs in a child process of the process pool, \
     which cannot submit or wait yet)";

impl TaskContext {
    fn subtasks_or_err(&self) -> Result<&dyn Subtasks, SubtaskError> {
        self.subtasks()
            .ok_or(SubtaskError::Unavailable(UNAVAILABLE))
    }

    /// The message of `call` as a subtask of this task: `parent_id` is this
    /// task, `root_id` its root (or itself).
    pub fn child_message<T>(&self, call: &Call<T>) -> Result<Message, SubtaskError> {
        let mut msg = call.to_message().map_err(SubtaskError::Call)?;
        msg.headers.parent_id = Some(self.id().to_string());
        msg.headers.root_id = Some(self.root_id().unwrap_or(self.id()).to_string());
        Ok(msg)
    }

    fn child_messages<T>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Result<(Vec<Message>, Vec<Subtask<T>>), SubtaskError> {
        let mut msgs = Vec::new();
        let mut subs = Vec::new();
        for call in calls {
            let msg = self.child_message(&call)?;
            subs.push(Subtask {
                id: msg.id().to_string(),
                name: msg.task().to_string(),
                _out: PhantomData,
            });
            msgs.push(msg);
        }
        Ok((msgs, subs))
    }

    /// Sends `call` as a subtask of this task, on the worker's broker, and
    /// returns its handle. For a task on the thread pool; an `async fn`
    /// task uses [`submit_async`](Self::submit_async).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use celeriac_core::{Call, SubtaskError, TaskContext};
    ///
    /// fn total(ctx: &TaskContext, n: i64) -> Result<i64, SubtaskError> {
    ///     let parts = ctx.submit_all((0..n).map(|i| Call::<i64>::new("celeriac.add").arg(i).arg(i)))?;
    ///     Ok(ctx.wait_all(&parts)?.into_iter().sum())
    /// }
    /// ```
    pub fn submit<T>(&self, call: Call<T>) -> Result<Subtask<T>, SubtaskError> {
        Ok(self.submit_all([call])?.remove(0))
    }

    /// Sends several subtasks in one batch.
    pub fn submit_all<T>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Result<Vec<Subtask<T>>, SubtaskError> {
        let subtasks = self.subtasks_or_err()?;
        let (msgs, subs) = self.child_messages(calls)?;
        if !msgs.is_empty() {
            subtasks.publish(msgs)?;
        }
        Ok(subs)
    }

    /// [`submit`](Self::submit), from an `async fn` task.
    pub async fn submit_async<T>(&self, call: Call<T>) -> Result<Subtask<T>, SubtaskError> {
        Ok(self.submit_all_async([call]).await?.remove(0))
    }

    /// [`submit_all`](Self::submit_all), from an `async fn` task.
    pub async fn submit_all_async<T>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Result<Vec<Subtask<T>>, SubtaskError> {
        let subtasks = self.subtasks_or_err()?;
        let (msgs, subs) = self.child_messages(calls)?;
        if !msgs.is_empty() {
            subtasks.publish_async(msgs).await?;
        }
        Ok(subs)
    }

    /// Waits for a subtask's result, giving this task's execution slot up
    /// meanwhile (see the [module docs](crate::subtask)). A failed subtask
    /// is [`SubtaskError::Failed`] with its error.
    pub fn wait<T: DeserializeOwned>(&self, sub: &Subtask<T>) -> Result<T, SubtaskError> {
        Ok(self
            .wait_all_timeout(std::slice::from_ref(sub), None)?
            .remove(0))
    }

    /// Waits for every subtask of `subs`; their results in order. When
    /// several fail, the error is the first one's in `subs` order, once all
    /// have finished.
    pub fn wait_all<T: DeserializeOwned>(
        &self,
        subs: &[Subtask<T>],
    ) -> Result<Vec<T>, SubtaskError> {
        self.wait_all_timeout(subs, None)
    }

    /// [`wait_all`](Self::wait_all), giving up with
    /// [`SubtaskError::Timeout`] after `timeout` when it is `Some`.
    pub fn wait_all_timeout<T: DeserializeOwned>(
        &self,
        subs: &[Subtask<T>],
        timeout: Option<Duration>,
    ) -> Result<Vec<T>, SubtaskError> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        let subtasks = self.subtasks_or_err()?;
        let ids: Vec<String> = subs.iter().map(|s| s.id.clone()).collect();
        let metas = subtasks
            .wait(&ids, self.cancel_token(), timeout)
            .map_err(|e| self.cancelled(e))?;
        decode_all(metas)
    }

    /// [`wait`](Self::wait), from an `async fn` task.
    pub async fn wait_async<T: DeserializeOwned>(
        &self,
        sub: &Subtask<T>,
    ) -> Result<T, SubtaskError> {
        Ok(self
            .wait_all_timeout_async(std::slice::from_ref(sub), None)
            .await?
            .remove(0))
    }

    /// [`wait_all`](Self::wait_all), from an `async fn` task.
    pub async fn wait_all_async<T: DeserializeOwned>(
        &self,
        subs: &[Subtask<T>],
    ) -> Result<Vec<T>, SubtaskError> {
        self.wait_all_timeout_async(subs, None).await
    }

    /// [`wait_all_timeout`](Self::wait_all_timeout), from an `async fn`
    /// task.
    pub async fn wait_all_timeout_async<T: DeserializeOwned>(
        &self,
        subs: &[Subtask<T>],
        timeout: Option<Duration>,
    ) -> Result<Vec<T>, SubtaskError> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        let subtasks = self.subtasks_or_err()?;
        let ids: Vec<String> = subs.iter().map(|s| s.id.clone()).collect();
        let metas = subtasks
            .wait_async(&ids, self.cancel_token(), timeout)
            .await
            .map_err(|e| self.cancelled(e))?;
        decode_all(metas)
    }

    /// A cancelled wait carries the reason the task sees in
    /// [`check`](TaskContext::check).
    fn cancelled(&self, e: SubtaskError) -> SubtaskError {
        match e {
            SubtaskError::Cancelled(_) => match self.check() {
                Err(why) => SubtaskError::Cancelled(why),
                Ok(()) => e,
            },
            other => other,
        }
    }
}

/// The values of ready results, or the first failure among them.
fn decode_all<T: DeserializeOwned>(metas: Vec<ResultMeta>) -> Result<Vec<T>, SubtaskError> {
    let mut out = Vec::with_capacity(metas.len());
    for meta in &metas {
        match meta.outcome() {
            Some(Ok(v)) => out.push(
                T::deserialize(v).map_err(|e| SubtaskError::Decode(format!("{e} (value: {v})")))?,
            ),
            Some(Err(err)) => return Err(SubtaskError::Failed(err)),
            None => {
                return Err(SubtaskError::Backend(format!(
                    "the result of {} is {}, not final",
                    meta.task_id, meta.status
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_child_message_names_its_parent_and_root() {
        let parent = Message::new("p", vec![], Default::default());
        let ctx = TaskContext::from_message(&parent, "w");
        let child = ctx.child_message(&Call::<i64>::new("c").arg(1)).unwrap();
        assert_eq!(child.headers.parent_id.as_deref(), Some(parent.id()));
        assert_eq!(child.headers.root_id.as_deref(), Some(parent.id()));
        let ctx2 = TaskContext::from_message(&child, "w");
        let grandchild = ctx2.child_message(&Call::<i64>::new("g")).unwrap();
        assert_eq!(grandchild.headers.parent_id.as_deref(), Some(child.id()));
        assert_eq!(grandchild.headers.root_id.as_deref(), Some(parent.id()));
    }

    #[test]
    fn without_a_worker_subtasks_are_a_typed_error() {
        let ctx = TaskContext::detached("t");
        let e = ctx.submit(Call::<i64>::new("c")).unwrap_err();
        assert!(matches!(e, SubtaskError::Unavailable(_)), "{e}");
        let te = TaskError::from(e);
        assert_eq!(te.exc_type(), "RuntimeError");
        assert!(te.message().contains("process pool"), "{te}");
    }

    #[test]
    fn a_failed_subtask_fails_the_waiter_with_its_own_error() {
        let err = TaskError::typed("ValueError", "builtins", "boom");
        let metas = vec![
            ResultMeta::success("a", json!(1)),
            ResultMeta::failure("b", &err),
        ];
        let e = decode_all::<i64>(metas).unwrap_err();
        let te = TaskError::from(e);
        assert_eq!((te.exc_type(), te.message()), ("ValueError", "boom"));
        let e = decode_all::<i64>(vec![ResultMeta::success("a", json!("x"))]).unwrap_err();
        assert!(matches!(e, SubtaskError::Decode(_)), "{e}");
        assert_eq!(
            decode_all::<i64>(vec![ResultMeta::success("a", json!(3))]).unwrap(),
            vec![3]
        );
    }

    #[test]
    fn a_subtask_error_returned_by_a_task_keeps_the_subtasks_type() {
        let err = SubtaskError::Failed(TaskError::typed("KeyError", "builtins", "k"));
        assert_eq!(TaskError::from_error(err).exc_type(), "KeyError");
    }
}
