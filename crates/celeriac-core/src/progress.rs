//! Custom states and progress: a running task stores a state of its own
//! with a document of its own ([`TaskContext::update_state`]), as Celery's
//! `self.update_state(state="PROGRESS", meta={...})`. A client reading the
//! result sees the state and the document until the task finishes: Python's
//! `AsyncResult.state` and `.info`, `celeriac result --meta`.
//!
//! The worker's side is the [`TaskStates`] trait; a worker gives each
//! task's context one. **Where it works:** every task a worker runs: on
//! its thread pool, in `async fn` tasks (use
//! [`TaskContext::update_state_async`] there), and in the process pool's
//! children, which send the state to the worker to store. A task called
//! directly with a detached context, or run by a pool that has no result
//! store (the job server), gets [`StateError::Unavailable`].

use std::fmt;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::TaskError;
use crate::result::State;
use crate::task::TaskContext;

/// Why a state could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// SUCCESS, FAILURE and REVOKED are a task's outcome, set by what it
    /// returns: storing one early would hide the real result.
    #[error("{0} is a final state, set by the task's return value, not by update_state")]
    Final(String),
    /// This task has no way to store states; why.
    #[error("update_state is unavailable here: {0}")]
    Unavailable(&'static str),
    /// The blocking form was called on an async runtime's thread, which it
    /// would block.
    #[error(
        "`update_state` would block the async runtime: in an `async fn` task use `update_state_async(...).await`"
    )]
    WouldBlock,
    /// The result backend refused or failed.
    #[error("result backend: {0}")]
    Backend(String),
}

impl From<StateError> for TaskError {
    fn from(e: StateError) -> Self {
        TaskError::typed("RuntimeError", "builtins", e.to_string())
    }
}

/// What a worker gives each task's [`TaskContext`] so that it can store
/// states of its own; see the [module docs](self).
#[async_trait]
pub trait TaskStates: Send + Sync + fmt::Debug {
    /// Stores `state` with `meta` as the task's result document, blocking
    /// the calling thread; refuses ([`StateError::WouldBlock`]) on an async
    /// runtime's thread.
    fn store(&self, state: &State, meta: Value) -> Result<(), StateError>;

    /// [`store`](Self::store) for async tasks.
    async fn store_async(&self, state: &State, meta: Value) -> Result<(), StateError>;
}

/// The state to store, refused if final.
fn custom(state: &str) -> Result<State, StateError> {
    let s: State = state.parse().unwrap_or(State::Pending);
    if s.is_ready() {
        return Err(StateError::Final(state.to_string()));
    }
    Ok(s)
}

impl TaskContext {
    /// Stores `state` (e.g. `"PROGRESS"`, or Celery's `STARTED`) with
    /// `meta` as this task's result until it finishes, as Celery's
    /// `update_state`. Blocks until the backend has it; in an `async fn`
    /// task use [`update_state_async`](Self::update_state_async).
    ///
    /// ```
    /// use celeriac_core::{StateError, TaskContext};
    /// // Outside a worker there is nowhere to store it.
    /// let ctx = TaskContext::detached("docs.report");
    /// let e = ctx.update_state("PROGRESS", serde_json::json!({"done": 1})).unwrap_err();
    /// assert!(matches!(e, StateError::Unavailable(_)));
    /// // The outcome is what the task returns.
    /// let e = ctx.update_state("SUCCESS", serde_json::json!(1)).unwrap_err();
    /// assert!(matches!(e, StateError::Final(_)));
    /// ```
    pub fn update_state(&self, state: &str, meta: Value) -> Result<(), StateError> {
        let s = custom(state)?;
        match self.states() {
            Some(sink) => sink.store(&s, meta),
            None => Err(StateError::Unavailable(UNAVAILABLE)),
        }
    }

    /// [`update_state`](Self::update_state) for `async fn` tasks.
    pub async fn update_state_async(&self, state: &str, meta: Value) -> Result<(), StateError> {
        let s = custom(state)?;
        match self.states() {
            Some(sink) => sink.store_async(&s, meta).await,
            None => Err(StateError::Unavailable(UNAVAILABLE)),
        }
    }
}

/// Why a context has no [`TaskStates`].
const UNAVAILABLE: &str = "this task is not running on a worker with a result backend (a detached context, or the job server)";
