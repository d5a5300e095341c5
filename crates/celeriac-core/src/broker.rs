//! The [`Broker`] and [`ResultBackend`] extension traits.
//!
//! A broker moves encoded messages (the JSON envelope of
//! [`Message::encode`](crate::Message::encode)) between producers and
//! workers. Its contract is the one celeriac promises users:
//!
//! - **claims are atomic**: a claimed message is recorded as held by its
//!   consumer, with a lease, in the same step that takes it off the queue, so
//!   it is never only in a worker's memory;
//! - **leases are renewed** ([`Broker::renew`]) while a task runs; a message
//!   whose lease lapses (its worker died) becomes claimable again and is
//!   delivered with `redelivered` set;
//! - **nothing is dropped**: a message leaves the broker only by
//!   [`Broker::ack`], or moves to the dead-letter store with a reason by
//!   [`Broker::dead_letter`];
//! - **delayed messages** (an `eta` in the future) are stored by the broker
//!   and become claimable when due; they are never held by a worker.
//!
//! A result backend stores [`ResultMeta`] documents and lets clients wait for
//! them without polling where the backend allows ([`ResultBackend::watch`]).

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

use crate::error::{BackendError, BrokerError};
use crate::result::ResultMeta;

/// How long a revoke is remembered by default (Celery keeps revoked ids
/// for 3 hours).
pub const REVOKE_TTL: Duration = Duration::from_secs(3 * 3600);

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Destination queue.
    pub queue: String,
    /// Priority 0-9. On the embedded brokers and Redis, **0 is the highest**
    /// (kombu's Redis convention).
    pub priority: u8,
    /// Unix time before which the message must not be delivered.
    pub eta: Option<f64>,
    /// The publisher's unique delivery tag.
    pub tag: String,
    /// The task id, so the broker can honour revokes (empty if unknown).
    pub task_id: String,
    /// The encoded envelope.
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// The outgoing form of a message: its queue, priority, eta and delivery
    /// tag are read from the message itself.
    pub fn from_message(msg: &crate::Message) -> Result<Self, crate::CodecError> {
        Ok(Outgoing {
            queue: msg.queue().to_string(),
            priority: msg.properties.priority.min(9),
            eta: msg.eta_unix(),
            tag: msg.properties.delivery_tag.clone(),
            task_id: msg.id().to_string(),
            payload: msg.encode()?,
        })
    }
}

/// A message claimed by a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Broker-assigned identity of this claim, used to ack, renew, requeue
    /// or dead-letter it.
    pub tag: String,
    /// The queue it was claimed from.
    pub queue: String,
    /// The encoded envelope, exactly as published.
    pub payload: Vec<u8>,
    /// How many times it has been claimed, this claim included.
    pub deliveries: u32,
    /// Whether it was delivered before (a lapsed lease or a requeue).
    pub redelivered: bool,
    /// Whether its task id was revoked (checked by the broker at claim
    /// time); the worker records REVOKED instead of running it.
    pub revoked: bool,
}

/// A message set aside in the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Identity within the dead-letter store.
    pub id: String,
    /// The queue it came from.
    pub queue: String,
    /// Why it was set aside.
    pub reason: String,
    /// Unix time it was set aside.
    pub failed_at: f64,
    /// The envelope, exactly as it was published.
    pub payload: Vec<u8>,
}

/// A worker node as it announces itself through the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// Node name, e.g. `celeriac@host`.
    pub name: String,
    /// Execution slots.
    pub concurrency: usize,
    /// Operating system process id.
    pub pid: u32,
    /// Unix time of the last heartbeat.
    pub last_seen: f64,
}

/// A message broker. See the [module docs](self) for the contract.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug {
    /// The broker's URL, with any password redacted.
    fn url(&self) -> String;

    /// How long a claim holds a message without renewal before the broker
    /// makes it claimable again. Workers renew at a third of it.
    fn lease(&self) -> Duration;

    /// Publishes one message.
    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError>;

    /// Publishes several messages, in order. Brokers override this to use one
    /// round trip or transaction.
    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        for m in msgs {
            self.publish(m).await?;
        }
        Ok(())
    }

    /// Claims up to `max` messages from `queues` for `consumer`, waiting up
    /// to `timeout` for the first. Returns an empty list on timeout. Queues
    /// are served in the order given; within a queue, higher priority first,
    /// then oldest first.
    async fn claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError>;

    /// Acknowledges a delivery: the message is done and removed.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError>;

    /// Acknowledges several deliveries, in one round trip or transaction
    /// where the broker allows. Returns, in order, whether each delivery
    /// was still held (`false` is [`BrokerError::NotHeld`] for that one: its
    /// lease lapsed and it was given to someone else). An `Err` means the
    /// broker could not be asked; some of the acks may have been applied.
    async fn ack_many(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, BrokerError> {
        let mut held = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match self.ack(d).await {
                Ok(()) => held.push(true),
                Err(BrokerError::NotHeld(_)) => held.push(false),
                Err(e) => return Err(e),
            }
        }
        Ok(held)
    }

    /// Whether workers should store results and ack messages in batches
    /// ([`ack_many`](Self::ack_many) with
    /// [`ResultBackend::store_many`]): true for brokers where a batch saves
    /// round trips or transactions. The in-process default is false: each
    /// task is settled on its own, without waiting for the others.
    fn batch_settles(&self) -> bool {
        false
    }

    /// Extends the leases of deliveries still being worked on.
    async fn renew(&self, deliveries: &[Delivery]) -> Result<(), BrokerError>;

    /// Puts a delivery back on its queue, claimable again at once or from
    /// unix time `not_before`.
    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError>;

    /// Moves a delivery to the dead-letter store with a reason.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError>;

    /// Lists up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Moves a dead letter back onto its queue. Returns `false` if no dead
    /// letter has that id.
    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError>;

    /// Number of messages waiting on `queue` (not claimed, including
    /// delayed ones).
    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError>;

    /// Revokes task ids for `ttl`: every worker, including one started
    /// later, records them as REVOKED instead of running them.
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError>;

    /// Revokes task ids like [`revoke`](Self::revoke), and also asks the
    /// workers running them to terminate them (Celery's
    /// `revoke(terminate=True)`): a process-pool worker kills the child, an
    /// async one cancels the future, and a thread-pool one cancels the
    /// task's context (a thread cannot be killed). The default, for brokers
    /// without it, only revokes.
    async fn revoke_terminate(
        &self,
        task_ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.revoke(task_ids, ttl).await
    }

    /// Which of `task_ids` were revoked with terminate (and have not
    /// expired). Workers ask for the tasks they are running.
    async fn terminations(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        let _ = task_ids;
        Ok(Vec::new())
    }

    /// Which of `task_ids` are revoked now (and have not expired). Workers
    /// ask for the messages they hold but have not started, since a revoke
    /// can arrive after the claim that checked it. The default, for
    /// brokers that cannot tell, is none.
    async fn revoked(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        let _ = task_ids;
        Ok(Vec::new())
    }

    /// Takes a start from the rate-limit bucket `key` (one task per
    /// `interval` seconds, shared by everyone using this broker). Returns
    /// 0 if the task may start now, or how many seconds to wait.
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError>;

    /// Records a worker heartbeat.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError>;

    /// Removes a worker's record (clean shutdown).
    async fn node_gone(&self, name: &str) -> Result<(), BrokerError>;

    /// Worker nodes whose last heartbeat is younger than `max_age`.
    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError>;
}

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
