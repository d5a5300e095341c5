//! [`ResultBackend`]: where task results are stored and waited for, with
//! [`ResultWatch`] (a pending wait) and [`Waiters`] (the in-process
//! bookkeeping backends share to wake watchers).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::error::BackendError;
use crate::result::ResultMeta;

/// A future that resolves when a task's result reaches a ready state.
///
/// Returned by [`ResultBackend::watch`], which registers interest *before*
/// it returns, so that a client can watch, then publish, without a race.
pub struct ResultWatch(BoxFuture<'static, Result<ResultMeta, BackendError>>);

impl ResultWatch {
    /// Wraps a future.
    pub fn new(
        fut: impl Future<Output = Result<ResultMeta, BackendError>> + Send + 'static,
    ) -> Self {
        ResultWatch(Box::pin(fut))
    }
}

impl fmt::Debug for ResultWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResultWatch")
    }
}

impl Future for ResultWatch {
    type Output = Result<ResultMeta, BackendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// A result backend.
#[async_trait]
pub trait ResultBackend: Send + Sync + fmt::Debug {
    /// The backend's URL, with any password redacted.
    fn url(&self) -> String;

    /// Whether the results stored here can be read only through this
    /// backend value and its clones: a private in-process store, such as
    /// `memory://` without a name. Nobody else can ask for such a result,
    /// so a client that has received one may [`forget`](Self::forget) it at
    /// once (the job server does, to keep memory flat). False for any store
    /// that other processes, or other handles in this process, can read
    /// (`memory://NAME`, SQLite, Redis).
    ///
    /// Every backend states it explicitly; there is no default.
    fn is_private(&self) -> bool;

    /// The backend as [`Any`](std::any::Any), so that a broker can tell a
    /// backend it can settle together with
    /// ([`Transport::settle_with`](super::Transport::settle_with)). `None`,
    /// the default: no broker recognises it, and results are stored
    /// through this trait alone.
    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        None
    }

    /// The backend's chord join, if it has one ([`ChordJoin`]); `None`
    /// means chords cannot be joined through this backend (yet), and a
    /// worker says so when a chord header finishes.
    fn chord_join(&self) -> Option<&dyn ChordJoin>;

    /// Stores a result document. A stored SUCCESS is never overwritten
    /// (as in Celery 5.x).
    async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError>;

    /// Stores several result documents, in one round trip where the
    /// backend allows. On `Err`, some of them may have been stored (storing
    /// again is harmless: a stored SUCCESS is never overwritten).
    async fn store_many(&self, metas: &[ResultMeta]) -> Result<(), BackendError> {
        for m in metas {
            self.store(m).await?;
        }
        Ok(())
    }

    /// Reads a result document; `None` means PENDING (never stored).
    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError>;

    /// Starts watching `task_id`: the returned future resolves with the
    /// first ready document (SUCCESS, FAILURE or REVOKED), including one
    /// stored before the watch began.
    async fn watch(&self, task_id: &str) -> Result<ResultWatch, BackendError>;

    /// Starts watching several tasks at once, in order; backends override
    /// it to use one round trip.
    async fn watch_many(&self, task_ids: &[String]) -> Result<Vec<ResultWatch>, BackendError> {
        let mut out = Vec::with_capacity(task_ids.len());
        for id in task_ids {
            out.push(self.watch(id).await?);
        }
        Ok(out)
    }

    /// Deletes a stored result.
    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Stores a group's result tree, as Celery's `GroupResult.save()` does:
    /// `meta` is `{"result": <as_tuple>}`
    /// ([`ResultNode::group_meta`](crate::canvas::ResultNode::group_meta)),
    /// kept under `celery-taskset-meta-<group_id>` for the result TTL.
    /// The default refuses with [`BackendError::Unsupported`].
    async fn save_group(
        &self,
        group_id: &str,
        meta: &serde_json::Value,
    ) -> Result<(), BackendError> {
        let _ = meta;
        Err(BackendError::Unsupported(format!(
            "saving group {group_id} ({} keeps no group results)",
            self.url()
        )))
    }

    /// Reads what [`save_group`](Self::save_group) stored (Celery's
    /// `GroupResult.restore`); `None` if nothing is stored. The default
    /// refuses with [`BackendError::Unsupported`].
    async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        Err(BackendError::Unsupported(format!(
            "restoring group {group_id} ({} keeps no group results)",
            self.url()
        )))
    }

    /// Claims an idempotency key for `task_id`, atomically, for `ttl`.
    /// Returns `None` if the key is now this task's, or the id of the task
    /// that holds it.
    async fn claim_key(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BackendError>;
}

/// Bookkeeping for in-process watchers of results, shared by backend
/// implementations: `register` before publishing, `notify` when a ready
/// result is stored.
///
/// # Examples
///
/// ```
/// use celeriac_core::{ResultMeta, Waiters};
/// let waiters = Waiters::default();
/// let rx = waiters.register("t1");
/// waiters.notify(&ResultMeta::success("t1", serde_json::json!(1)));
/// let meta = futures::executor::block_on(rx).unwrap();
/// assert_eq!(meta.task_id, "t1");
/// ```
#[derive(Debug, Default)]
pub struct Waiters {
    inner: Mutex<HashMap<String, Vec<oneshot::Sender<ResultMeta>>>>,
}

impl Waiters {
    /// Registers a waiter for `task_id`.
    pub fn register(&self, task_id: &str) -> oneshot::Receiver<ResultMeta> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .lock()
            .entry(task_id.to_string())
            .or_default()
            .push(tx);
        rx
    }

    /// Wakes every waiter of `meta.task_id` if `meta` is ready.
    pub fn notify(&self, meta: &ResultMeta) {
        if !meta.status.is_ready() {
            return;
        }
        let senders = self.inner.lock().remove(&meta.task_id);
        for tx in senders.into_iter().flatten() {
            let _ = tx.send(meta.clone());
        }
    }

    /// Task ids with live waiters (waiters whose receiver was dropped are
    /// pruned).
    pub fn pending_ids(&self) -> Vec<String> {
        let mut inner = self.inner.lock();
        inner.retain(|_, senders| {
            senders.retain(|s| !s.is_canceled());
            !senders.is_empty()
        });
        inner.keys().cloned().collect()
    }

    /// Whether anyone is waiting.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().is_empty()
    }

    /// Drops every waiter; their futures resolve with a cancellation.
    pub fn clear(&self) {
        self.inner.lock().clear();
    }
}

/// One finished chord header part, as
/// [`ChordJoin::part_return_many`] records it.
#[derive(Debug, Clone, Copy)]
pub struct PartReturn<'a> {
    /// The part's task id.
    pub task_id: &'a str,
    /// Its place in the header (`group_index`).
    pub group_index: Option<u64>,
    /// Celery's part record: `[1, task_id, state, result]`.
    pub part: &'a serde_json::Value,
}

/// Joins chords the way Celery 5.x does on this backend: each finished
/// header part is recorded once (a redelivered part is not counted twice),
/// and exactly one caller learns that the last part is in.
#[async_trait]
pub trait ChordJoin: Send + Sync + fmt::Debug {
    /// The client's side: records that chord `group_id` has `size` header
    /// parts, and clears a `done` mark left by an earlier chord of the same
    /// id. Celery's client does this just before it sends the last header
    /// (`DEL K.c`, `SET K.s <size>` on Redis), so the size is known before
    /// the last part can finish.
    async fn set_size(&self, group_id: &str, size: u64) -> Result<(), BackendError>;

    /// Records that header part `task_id`, at `group_index` of group
    /// `group_id`, finished with `part` (Celery's `[1, task_id, state,
    /// result]`). Returns every part, in `group_index` order, to the one
    /// caller whose part completes the chord (the chord's size is what the
    /// client recorded when it sent the header); `None` to everyone else.
    async fn part_return(
        &self,
        group_id: &str,
        task_id: &str,
        group_index: Option<u64>,
        part: &serde_json::Value,
    ) -> Result<Option<Vec<serde_json::Value>>, BackendError>;

    /// Records several finished parts of chord `group_id` at once, each as
    /// [`part_return`](Self::part_return) does (a redelivered part counted
    /// once). Returns every part of the chord, in `group_index` order, to
    /// the one caller whose parts complete it; `None` to everyone else.
    ///
    /// A backend that can records them in one round trip (Redis: one
    /// script call); the default records them one by one. After an error,
    /// some of the parts may be recorded: returning them again counts each
    /// once, so a caller that does not acknowledge their messages stays
    /// correct.
    async fn part_return_many(
        &self,
        group_id: &str,
        parts: &[PartReturn<'_>],
    ) -> Result<Option<Vec<serde_json::Value>>, BackendError> {
        let mut all = None;
        for p in parts {
            if let Some(won) = self
                .part_return(group_id, p.task_id, p.group_index, p.part)
                .await?
            {
                all = Some(won);
            }
        }
        Ok(all)
    }

    /// The chord's body was sent (or its failure stored): drops the join's
    /// state and marks the chord done, so a late or redelivered part
    /// triggers nothing.
    async fn finish(&self, group_id: &str) -> Result<(), BackendError>;

    /// A header part failed: the body will never run, and no later part
    /// may complete the chord.
    async fn abandon(&self, group_id: &str) -> Result<(), BackendError>;
}
