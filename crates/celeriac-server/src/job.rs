//! Job handles.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::canvas::ResultNode;
use celeriac_core::{BackendError, BrokerError, CancelToken, ResultMeta, TaskError};
use celeriac_worker::LocalSuccess;
use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;

/// Why a job produced no value.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The task failed: returned an error, panicked, got wrong arguments,
    /// was not registered, timed out or was revoked. The [`TaskError`]
    /// carries the kind, the exception type and the message.
    #[error("task failed: {0}")]
    Task(TaskError),
    /// The result did not arrive in time (the job may still finish).
    #[error("timed out waiting for the result")]
    Timeout,
    /// The result arrived but does not decode as the expected type.
    #[error("result does not decode as the expected type: {0}")]
    Decode(String),
    /// The job could not be published.
    #[error("could not publish the job: {0}")]
    Publish(String),
    /// The result backend failed while waiting.
    #[error("result backend: {0}")]
    Backend(String),
    /// The server was shut down before the job finished.
    #[error("the server was shut down before the job finished")]
    Destroyed,
    /// The canvas cannot be run here: e.g. a chord on a result backend
    /// without a chord join, or a shape Celery refuses.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl JobError {
    /// The task's error, for [`JobError::Task`].
    pub fn task_error(&self) -> Option<&TaskError> {
        match self {
            JobError::Task(t) => Some(t),
            _ => None,
        }
    }
}

impl From<BrokerError> for JobError {
    fn from(e: BrokerError) -> Self {
        JobError::Publish(e.to_string())
    }
}

impl From<BackendError> for JobError {
    fn from(e: BackendError) -> Self {
        JobError::Backend(e.to_string())
    }
}

/// How a job ended, before decoding: the stored result document, or why
/// there is none.
#[derive(Debug, Clone)]
pub(crate) enum JobEnd {
    Meta(Box<ResultMeta>),
    /// A success on the local lane: the value, its document on demand.
    Local(Box<LocalSuccess>),
    Error(JobError),
}

impl JobEnd {
    /// The result document, if the job has one.
    pub(crate) fn meta(&self) -> Option<ResultMeta> {
        match self {
            JobEnd::Meta(m) => Some((**m).clone()),
            JobEnd::Local(s) => Some(s.meta()),
            JobEnd::Error(_) => None,
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        match self {
            JobEnd::Error(e) => Err(e.clone()),
            JobEnd::Local(s) => {
                let v = s.value();
                T::deserialize(v).map_err(|e| JobError::Decode(format!("{e} (value: {v})")))
            }
            JobEnd::Meta(meta) => match meta.outcome() {
                Some(Ok(v)) => {
                    T::deserialize(v).map_err(|e| JobError::Decode(format!("{e} (value: {v})")))
                }
                Some(Err(te)) => Err(JobError::Task(te)),
                None => Err(JobError::Backend(format!(
                    "result in state {} is not final",
                    meta.status
                ))),
            },
        }
    }
}

/// How long a waiter polls for its job's outcome before it sleeps.
const SPIN: Duration = Duration::from_micros(20);

/// A job's callback, decoding the outcome to the job's type.
pub(crate) type Callback = Box<dyn FnOnce(&JobEnd) + Send>;

pub(crate) struct JobState {
    pub(crate) id: String,
    pub(crate) group: String,
    /// Set by whoever starts finishing the job (its result watcher, or the
    /// server's shutdown), so that it is finished exactly once.
    claimed: AtomicBool,
    callback: Mutex<Option<Callback>>,
    slot: Mutex<Option<JobEnd>>,
    /// Set once `slot` holds the outcome: a waiter polls it briefly before
    /// it sleeps.
    done: AtomicBool,
    cv: Condvar,
    /// The cancel token of a job run on the local lane (a terminate
    /// cancels it); `None` for a job sent through the broker.
    pub(crate) cancel: Option<CancelToken>,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("id", &self.id)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl JobState {
    pub(crate) fn new(id: String, group: String, callback: Option<Callback>) -> Arc<Self> {
        Self::with_cancel(id, group, callback, None)
    }

    /// A job state holding the cancel token of a job on the local lane.
    pub(crate) fn with_cancel(
        id: String,
        group: String,
        callback: Option<Callback>,
        cancel: Option<CancelToken>,
    ) -> Arc<Self> {
        Arc::new(JobState {
            id,
            group,
            claimed: AtomicBool::new(false),
            callback: Mutex::new(callback),
            slot: Mutex::new(None),
            done: AtomicBool::new(false),
            cv: Condvar::new(),
            cancel,
        })
    }

    /// Claims the right to finish the job; returns its callback. `None`
    /// if someone else already claimed it.
    pub(crate) fn claim(&self) -> Option<Option<Callback>> {
        if self.claimed.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(self.callback.lock().take())
    }

    /// Whether someone has started finishing the job.
    pub(crate) fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::SeqCst)
    }

    /// Records the outcome once; later calls are ignored.
    pub(crate) fn complete(&self, outcome: JobEnd) -> bool {
        let mut slot = self.slot.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(outcome);
        self.done.store(true, Ordering::Release);
        self.cv.notify_all();
        true
    }

    /// Waits for the outcome (until `deadline`) and reads it with `read`,
    /// under the slot's lock: a typed value is decoded from the document
    /// where it lies, not from a copy of it.
    fn wait_until<R>(
        &self,
        deadline: Option<Instant>,
        read: impl FnOnce(&JobEnd) -> R,
    ) -> Option<R> {
        // A job on the local lane finishes within microseconds: poll for
        // a moment before sleeping (a wake-up from a futex costs more).
        if !self.done.load(Ordering::Acquire) {
            let spin_until = Instant::now() + SPIN;
            while !self.done.load(Ordering::Acquire) && Instant::now() < spin_until {
                std::thread::yield_now();
            }
        }
        let mut slot = self.slot.lock();
        loop {
            if let Some(o) = slot.as_ref() {
                return Some(read(o));
            }
            match deadline {
                None => self.cv.wait(&mut slot),
                Some(d) => {
                    if self.cv.wait_until(&mut slot, d).timed_out() {
                        return slot.as_ref().map(read);
                    }
                }
            }
        }
    }
}

/// A submitted job: a handle on its future result, typed by the task's
/// output `T`.
///
/// `wait` can be called any number of times, from any thread; a job's
/// callback, if any, has run before `wait` returns.
///
/// A job from a canvas knows where it comes from, as Celery's
/// `AsyncResult` does: [`Job::parent`] is the step before it (a chain's
/// previous step, a chord's header), [`Job::children`] what it sent on (the
/// next step, its callbacks), read from the stored result.
pub struct Job<T> {
    pub(crate) state: Arc<JobState>,
    /// The result tree the client knows, rooted at this job.
    pub(crate) tree: Option<Arc<ResultNode>>,
    /// The server, for reading results and watching related jobs.
    pub(crate) link: Option<crate::canvas::ServerLink>,
    pub(crate) _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.state.id)
            .field("group", &self.state.group)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Job<T> {
    fn clone(&self) -> Self {
        Job {
            state: self.state.clone(),
            tree: self.tree.clone(),
            link: self.link.clone(),
            _out: PhantomData,
        }
    }
}

impl<T> Job<T> {
    pub(crate) fn new(
        state: Arc<JobState>,
        tree: Option<ResultNode>,
        link: Option<crate::canvas::ServerLink>,
    ) -> Self {
        Job {
            state,
            tree: tree.map(Arc::new),
            link,
            _out: PhantomData,
        }
    }

    /// The same job, its result decoded as `U`.
    pub fn cast<U>(self) -> Job<U> {
        Job {
            state: self.state,
            tree: self.tree,
            link: self.link,
            _out: PhantomData,
        }
    }

    /// The stored result document, once the job has finished: state,
    /// result, `parent_id`, `group_id`, `children`, the worker, ...
    pub fn meta(&self) -> Option<ResultMeta> {
        self.state.slot.lock().as_ref().and_then(JobEnd::meta)
    }

    /// The stored document: the finished job's, or else what the backend
    /// holds now (`None`: PENDING).
    fn stored(&self) -> Result<Option<ResultMeta>, JobError> {
        if let Some(m) = self.meta() {
            return Ok(Some(m));
        }
        let Some(link) = &self.link else {
            return Ok(None);
        };
        link.get(&self.state.id)
    }

    /// The result this job follows, as Celery's `AsyncResult.parent`: from
    /// the canvas it was sent in (a chain's previous step, a chord's
    /// header group), or else the `parent_id` its worker stored. `None`
    /// for a job nothing came before, or whose result is not stored yet.
    pub fn parent(&self) -> Result<Option<crate::ResultRef>, JobError> {
        let Some(link) = &self.link else {
            return Ok(None);
        };
        if let Some(parent) = self.tree.as_ref().and_then(|t| t.parent()) {
            return Ok(Some(link.related(parent)));
        }
        Ok(self
            .stored()?
            .and_then(|m| m.parent_id)
            .map(|id| link.related(&ResultNode::task(id))))
    }

    /// What the job sent on, as Celery's `AsyncResult.children`: the
    /// stored `children` (a chain's next step, callbacks, groups it sent).
    /// Empty until the job's result is stored.
    pub fn children(&self) -> Result<Vec<crate::ResultRef>, JobError> {
        let Some(link) = &self.link else {
            return Ok(Vec::new());
        };
        Ok(self
            .stored()?
            .map(|m| ResultNode::from_children(&m.children))
            .unwrap_or_default()
            .iter()
            .map(|c| link.related(c))
            .collect())
    }
}

impl<T: DeserializeOwned> Job<T> {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The job's group.
    pub fn group(&self) -> &str {
        &self.state.group
    }

    /// Blocks until the job has finished and returns its value or error.
    pub fn wait(&self) -> Result<T, JobError> {
        self.state
            .wait_until(None, JobEnd::decode)
            .unwrap_or(Err(JobError::Destroyed))
    }

    /// Like [`Job::wait`], giving up after `timeout` with
    /// [`JobError::Timeout`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<T, JobError> {
        self.state
            .wait_until(Some(Instant::now() + timeout), JobEnd::decode)
            .unwrap_or(Err(JobError::Timeout))
    }

    /// Whether the job has finished.
    pub fn ready(&self) -> bool {
        self.state.done.load(Ordering::Acquire)
    }

    /// The result if the job has finished, without blocking.
    pub fn try_result(&self) -> Option<Result<T, JobError>> {
        self.state.slot.lock().as_ref().map(JobEnd::decode)
    }
}
