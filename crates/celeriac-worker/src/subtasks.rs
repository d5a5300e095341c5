//! Subtasks: the worker's side of [`TaskContext::submit`] and
//! [`TaskContext::wait`] (see `celeriac_core::subtask`).
//!
//! A task that waits gives its execution slot (and its reservation) up
//! while it waits ([`Reservations::suspend`]), so that the claim loop
//! claims and runs other messages, its subtasks among them, in its place.
//! A task on the thread pool also enters a
//! [`BlockingSection`](celeriac_pool::BlockingSection), so the pool runs
//! one more thread while this one blocks. When the results are in, the
//! task takes the next free slot back, before any message waiting in line
//! ([`Reservations::resume`]). A wait that is abandoned (an async task
//! aborted at its hard time limit) takes its slot back at once, so the
//! slot counts always balance when the task's handler releases its slot.
//!
//! [`TaskContext::submit`]: celeriac_core::TaskContext::submit
//! [`TaskContext::wait`]: celeriac_core::TaskContext::wait
//! [`Reservations::suspend`]: crate::line::Reservations::suspend
//! [`Reservations::resume`]: crate::line::Reservations::resume

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::escape::Escaped;
use celeriac_core::{
    BrokerError, CancelToken, Message, ResultBackend, ResultMeta, SubtaskError, Subtasks,
};
use parking_lot::Mutex;
use serde_json::json;

use crate::decide::Decision;
use crate::worker::Inner;

/// How often a blocked wait looks at its task's cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Tasks of a worker waiting on subtasks now; beyond
/// [`MANY_WAITING`] per slot a warning says each holds a thread.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Waiting blocking tasks per execution slot above which a warning is
/// logged: each holds an OS thread.
const MANY_WAITING: usize = 64;

/// One task's subtasks: publishes them, waits for them, and remembers
/// their ids for the task's `children`.
#[derive(Debug)]
pub(crate) struct TaskSubtasks {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
    children: Mutex<Vec<String>>,
    /// A wait of this task has given its slot up: waits from other threads
    /// of the same task meanwhile do not give it up again.
    suspended: Arc<AtomicBool>,
    /// The task's run has ended: its slot is no longer its to give up.
    finished: AtomicBool,
}

/// Why a task that has finished cannot submit or wait any more.
const FINISHED: &str = "the task that owns this context has finished running";

impl TaskSubtasks {
    /// The subtasks of a task about to run on `inner`'s worker; must be
    /// called on the worker's runtime.
    pub(crate) fn new(inner: &Arc<Inner>) -> Arc<Self> {
        Self::on(inner, tokio::runtime::Handle::current())
    }

    /// The subtasks of a task about to run on `inner`'s worker, whose
    /// runtime is `runtime` (a job on the local lane starts off it).
    pub(crate) fn on(inner: &Arc<Inner>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(TaskSubtasks {
            inner: inner.clone(),
            runtime,
            children: Mutex::new(Vec::new()),
            suspended: Arc::new(AtomicBool::new(false)),
            finished: AtomicBool::new(false),
        })
    }

    /// The task's run has ended (called by its handler): a context kept
    /// past it can no longer submit or wait.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    fn check_running(&self) -> Result<(), SubtaskError> {
        if self.finished.load(Ordering::SeqCst) {
            Err(SubtaskError::Unavailable(FINISHED))
        } else {
            Ok(())
        }
    }

    /// Lists the subtasks the task sent as the first `children` of its
    /// stored result, as Celery does for `apply_async` inside a task.
    pub(crate) fn add_children(&self, decision: &mut Decision) {
        if let Decision::Succeeded { result, .. } | Decision::Failed { result, .. } = decision {
            self.list_children(result);
        }
    }

    /// The ids of the subtasks the task sent, taken.
    pub(crate) fn take_children(&self) -> Vec<String> {
        std::mem::take(&mut *self.children.lock())
    }

    /// Lists the subtasks the task sent as the first `children` of `result`.
    pub(crate) fn list_children(&self, result: &mut ResultMeta) {
        let children = self.take_children();
        if children.is_empty() {
            return;
        }
        let mut listed: Vec<_> = children
            .iter()
            .map(|id| json!([[id, null], null]))
            .collect();
        listed.append(&mut result.children);
        result.children = listed;
    }

    async fn send(inner: Arc<Inner>, msgs: Vec<Message>) -> Result<(), SubtaskError> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in &msgs {
            out.push(
                crate::settle::outgoing(&inner, m)
                    .map_err(|e| SubtaskError::Publish(e.to_string()))?,
            );
        }
        inner
            .broker
            .publish_batch(out)
            .await
            .map_err(|e: BrokerError| SubtaskError::Publish(e.to_string()))
    }

    fn record(&self, msgs: &[Message]) {
        self.children
            .lock()
            .extend(msgs.iter().map(|m| m.id().to_string()));
    }

    /// Runs `fut` on the worker's runtime and blocks this thread until it
    /// ends; `None` if the runtime dropped it (it is shutting down).
    fn block_on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

/// The ready results of `ids`, in order.
async fn results(
    backend: Arc<dyn ResultBackend>,
    ids: Vec<String>,
) -> Result<Vec<ResultMeta>, SubtaskError> {
    let watches = backend
        .watch_many(&ids)
        .await
        .map_err(|e| SubtaskError::Backend(e.to_string()))?;
    let mut out = Vec::with_capacity(watches.len());
    for w in watches {
        out.push(w.await.map_err(|e| SubtaskError::Backend(e.to_string()))?);
    }
    Ok(out)
}

/// A task's execution slot, given up for a wait; taken back at once if
/// dropped before [`Suspended::resume`] (so that the counts balance).
struct Suspended {
    inner: Arc<Inner>,
    flag: Arc<AtomicBool>,
    resumed: bool,
}

impl Suspended {
    /// Gives the slot of the task of `subtasks` up, unless another wait of
    /// the same task already did.
    fn try_new(subtasks: &TaskSubtasks) -> Option<Self> {
        subtasks
            .suspended
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        subtasks.inner.slots.suspend();
        WAITING.fetch_add(1, Ordering::Relaxed);
        Some(Suspended {
            inner: subtasks.inner.clone(),
            flag: subtasks.suspended.clone(),
            resumed: false,
        })
    }

    async fn resume(mut self) {
        self.inner.slots.resume().await;
        self.resumed = true;
    }
}

impl Drop for Suspended {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
        if !self.resumed {
            self.inner.slots.resume_now();
        }
        self.flag.store(false, Ordering::SeqCst);
    }
}

fn on_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

#[async_trait]
impl Subtasks for TaskSubtasks {
    fn publish(&self, msgs: Vec<Message>) -> Result<(), SubtaskError> {
        if on_runtime() {
            return Err(SubtaskError::WouldBlock("submit"));
        }
        self.check_running()?;
        self.record(&msgs);
        self.block_on(Self::send(self.inner.clone(), msgs))
            .unwrap_or_else(|| Err(SubtaskError::Publish("the worker is shutting down".into())))
    }

    async fn publish_async(&self, msgs: Vec<Message>) -> Result<(), SubtaskError> {
        self.check_running()?;
        self.record(&msgs);
        Self::send(self.inner.clone(), msgs).await
    }

    fn wait(
        &self,
        ids: &[String],
        cancel: &CancelToken,
        timeout: Option<Duration>,
    ) -> Result<Vec<ResultMeta>, SubtaskError> {
        if on_runtime() {
            return Err(SubtaskError::WouldBlock("wait"));
        }
        self.check_running()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let (tx, rx) = mpsc::sync_channel(1);
        let fetch = results(self.inner.backend.clone(), ids.to_vec());
        let job = self.runtime.spawn(async move {
            let _ = tx.send(fetch.await);
        });
        // This thread blocks: the pool starts one in its place, and the
        // slot goes to the next message.
        let section = match self.inner.executors.threads().blocking_section() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to stand in for a task waiting on subtasks; the pool runs one thread short meanwhile");
                None
            }
        };
        let suspended = Suspended::try_new(self);
        warn_if_many(&self.inner);
        let out = loop {
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(SubtaskError::Backend(
                        "the worker's runtime stopped while waiting".into(),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.is_cancelled() {
                        break Err(SubtaskError::Cancelled(celeriac_core::TaskError::revoked(
                            "cancelled",
                        )));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break Err(SubtaskError::Timeout);
                    }
                }
            }
        };
        job.abort();
        // Take a slot back (waiting, if need be, while the stand-in thread
        // still runs), then end the blocking section.
        if let Some(s) = suspended {
            let _ = self.block_on(s.resume());
        }
        drop(section);
        out
    }

    async fn wait_async(
        &self,
        ids: &[String],
        cancel: &CancelToken,
        timeout: Option<Duration>,
    ) -> Result<Vec<ResultMeta>, SubtaskError> {
        self.check_running()?;
        let suspended = Suspended::try_new(self);
        let fetch = results(self.inner.backend.clone(), ids.to_vec());
        tokio::pin!(fetch);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut poll = tokio::time::interval(CANCEL_POLL);
        let out = loop {
            tokio::select! {
                r = &mut fetch => break r,
                _ = poll.tick() => {
                    if cancel.is_cancelled() {
                        break Err(SubtaskError::Cancelled(celeriac_core::TaskError::revoked("cancelled")));
                    }
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        break Err(SubtaskError::Timeout);
                    }
                }
            }
        };
        if let Some(s) = suspended {
            s.resume().await;
        }
        out
    }
}

/// Warns (at most once a minute) when many blocking tasks wait at once:
/// each holds a thread.
fn warn_if_many(inner: &Inner) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let waiting = WAITING.load(Ordering::Relaxed);
    if waiting <= MANY_WAITING * inner.slots.target() {
        return;
    }
    let mut last = LAST.lock();
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(node = %Escaped(&inner.config.nodename), waiting,
        "many tasks wait on subtasks at once; each blocking one holds a thread (async tasks do not)");
}
