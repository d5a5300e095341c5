//! Celery's `rpc://` result backend: results travel as messages to the
//! client's own reply queue, as `celery.backends.rpc.RPCBackend` sends
//! them on RabbitMQ.
//!
//! - **The client** has a mailbox id (`oid`, a uuid) and declares the
//!   queue of that name (durable, auto-deleted, `x-expires` = Celery's
//!   `result_expires`, a day) before it sends a task; every task message
//!   it publishes carries `reply_to` = `oid` and `correlation_id` = task id
//!   (the broker stamps `reply_to` on task messages that have none, as
//!   Celery's `app.thread_oid`). It consumes the queue without acks and
//!   keeps the latest state of each task it hears of.
//! - **The worker** publishes each state it stores to the default exchange
//!   `""` with routing key = the message's `reply_to`, `correlation_id` =
//!   the message's `correlation_id` (or the task id), `delivery_mode` 1
//!   (`result_persistent` off), and the result document as the JSON body:
//!   exactly the document a Redis backend stores. The broker remembers
//!   `reply_to` and `correlation_id` of the deliveries it hands out
//!   (bounded: [`DESTINATIONS`] tasks) so that the backend finds them when
//!   the worker stores the state; a task that came without `reply_to` has
//!   no result message, as in Celery.
//!
//! As in Celery, results are not stored anywhere else: only the client
//! that sent a task learns its result, a result sent while that client is
//! not connected is lost, and there are no chords, group results or
//! idempotency keys on this backend.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{BackendError, ChordJoin, ResultBackend, ResultMeta, ResultWatch, Waiters};
use lapin::BasicProperties;
use lapin::types::ShortString;
use parking_lot::Mutex;
use serde_json::Value;

use crate::broker::AmqpBroker;
use crate::subscribe::Binding;
use crate::wire::{AmqpMessage, amqp_to_json};

/// How many deliveries' reply destinations a worker remembers until their
/// task stores a ready state (the oldest are forgotten first).
pub const DESTINATIONS: usize = 200_000;

/// How many task states a client keeps (the oldest are forgotten first;
/// a watch registered before its task was sent never misses its result).
const RESULTS: usize = 100_000;

/// Celery's `result_expires` (a day), the reply queue's `x-expires`.
const REPLY_QUEUE_EXPIRES_MS: i64 = 86_400_000;

/// What a broker with an `rpc://` backend keeps: the client's mailbox,
/// the states it has heard of, and (on a worker) where each delivered
/// task's result goes.
#[derive(Debug)]
pub(crate) struct RpcState {
    /// The client's mailbox id: its reply queue, and `reply_to` of the
    /// task messages it sends.
    pub(crate) oid: String,
    destinations: Mutex<Bounded<(String, String)>>,
    results: Mutex<Bounded<ResultMeta>>,
    waiters: Waiters,
    consuming: tokio::sync::OnceCell<()>,
}

/// A map that forgets its oldest entries beyond `cap`.
#[derive(Debug)]
struct Bounded<T> {
    cap: usize,
    map: HashMap<String, T>,
    order: VecDeque<String>,
}

impl<T> Bounded<T> {
    fn new(cap: usize) -> Self {
        Bounded {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, key: String, value: T) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
        // Keys removed by `remove` stay in `order` until they come up.
        if self.order.len() > 2 * self.cap.max(1) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

impl RpcState {
    fn new() -> Self {
        RpcState {
            oid: uuid::Uuid::new_v4().to_string(),
            destinations: Mutex::new(Bounded::new(DESTINATIONS)),
            results: Mutex::new(Bounded::new(RESULTS)),
            waiters: Waiters::default(),
            consuming: tokio::sync::OnceCell::new(),
        }
    }

    /// Remembers where the result of a delivered task goes (its
    /// `reply_to` and `correlation_id`), if it says.
    pub(crate) fn record(&self, props: &BasicProperties) {
        let Some(reply_to) = props.reply_to().as_ref().map(|r| r.as_str().to_string()) else {
            return;
        };
        let id = props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("id"))
            .map(amqp_to_json);
        let Some(Value::String(id)) = id else { return };
        let correlation = props
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| id.clone());
        self.destinations.lock().insert(id, (reply_to, correlation));
    }

    /// Where the result of `task_id` goes; forgotten after a ready state.
    fn destination(&self, task_id: &str, ready: bool) -> Option<(String, String)> {
        let mut d = self.destinations.lock();
        if ready {
            d.map.remove(task_id)
        } else {
            d.map.get(task_id).cloned()
        }
    }

    /// A result message arrived.
    fn on_reply(&self, d: &lapin::message::Delivery) {
        let meta: ResultMeta = match serde_json::from_slice(&d.data) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed rpc:// result message");
                return;
            }
        };
        let id = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| meta.task_id.clone());
        let mut meta = meta;
        if meta.task_id.is_empty() {
            meta.task_id = id.clone();
        }
        {
            let mut results = self.results.lock();
            // A late non-ready state never hides a ready one.
            if results.map.get(&id).is_some_and(|m| m.status.is_ready()) {
                return;
            }
            results.insert(id, meta.clone());
        }
        self.waiters.notify(&meta);
    }
}

impl AmqpBroker {
    /// The broker's `rpc://` state, made on first use.
    pub(crate) fn rpc_state(&self) -> Arc<RpcState> {
        self.inner
            .rpc
            .get_or_init(|| Arc::new(RpcState::new()))
            .clone()
    }
}

/// Celery's `rpc://` result backend on an [`AmqpBroker`] (see the module
/// docs of this file, and the crate docs). Every backend made on one
/// broker shares that broker's mailbox.
///
/// # Examples
///
/// ```
/// use celeriac_core::ResultBackend;
/// let broker = celeriac_amqp::AmqpBroker::open("amqp://127.0.0.1:1/v").unwrap();
/// let backend = celeriac_amqp::RpcBackend::new(&broker);
/// assert_eq!(backend.url(), "rpc://");
/// assert!(backend.chord_join().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct RpcBackend {
    broker: AmqpBroker,
    state: Arc<RpcState>,
}

impl RpcBackend {
    /// The `rpc://` backend of `broker`: results of tasks this process
    /// sends on `broker` come back to it, and a worker consuming from
    /// `broker` sends results to the clients that sent its tasks.
    pub fn new(broker: &Arc<AmqpBroker>) -> Arc<Self> {
        let state = broker.rpc_state();
        Arc::new(RpcBackend {
            broker: (**broker).clone(),
            state,
        })
    }

    /// This client's mailbox id: the reply queue's name, and `reply_to` of
    /// the task messages it sends.
    pub fn oid(&self) -> &str {
        &self.state.oid
    }

    /// Declares the reply queue and starts consuming it, once.
    async fn consume(&self) -> Result<(), BackendError> {
        self.state
            .consuming
            .get_or_try_init(|| async {
                let binding = Binding {
                    exchange: None,
                    queue: self.state.oid.clone(),
                    routing_key: self.state.oid.clone(),
                    message_ttl_ms: None,
                    expires_ms: REPLY_QUEUE_EXPIRES_MS,
                    exclusive: false,
                };
                let first = self
                    .broker
                    .subscribe(&binding)
                    .await
                    .map_err(|e| BackendError::connection_in("rpc:// reply queue", e))?;
                let state: Weak<RpcState> = Arc::downgrade(&self.state);
                tokio::spawn(self.broker.clone().keep_subscribed(
                    binding,
                    first,
                    move |d| match state.upgrade() {
                        Some(s) => {
                            s.on_reply(&d);
                            true
                        }
                        None => false,
                    },
                    |why| {
                        tracing::warn!(
                            reason = why,
                            "rpc:// reply queue lost; results sent meanwhile are lost, as in Celery"
                        );
                    },
                    std::future::pending::<()>(),
                ));
                Ok(())
            })
            .await
            .map(|_| ())
    }

    fn latest(&self, task_id: &str) -> Option<ResultMeta> {
        self.state.results.lock().map.get(task_id).cloned()
    }
}

#[async_trait]
impl ResultBackend for RpcBackend {
    fn url(&self) -> String {
        "rpc://".to_string()
    }

    /// Results come only to this client.
    fn is_private(&self) -> bool {
        true
    }

    /// Celery's `rpc://` has no chords.
    fn chord_join(&self) -> Option<&dyn ChordJoin> {
        None
    }

    /// Publishes `meta` to the reply queue of the client that sent the
    /// task (nothing if its message had no `reply_to`), waiting for the
    /// publisher confirm.
    async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        let ready = meta.status.is_ready();
        let Some((reply_to, correlation)) = self.state.destination(&meta.task_id, ready) else {
            tracing::debug!(task_id = %meta.task_id, status = ?meta.status, "rpc://: the task's message had no reply_to; no result message");
            return Ok(());
        };
        let body = serde_json::to_vec(meta).map_err(|e| BackendError::Malformed(e.to_string()))?;
        let m = AmqpMessage {
            body,
            properties: BasicProperties::default()
                .with_content_type(ShortString::from("application/json"))
                .with_content_encoding(ShortString::from("utf-8"))
                .with_delivery_mode(1)
                .with_priority(0)
                .with_correlation_id(ShortString::from(correlation)),
        };
        self.broker
            .publish_to(None, &reply_to, m)
            .await
            .map_err(|e| BackendError::connection_in("rpc:// result message", e))
    }

    /// The latest state this client heard of since it began watching
    /// (`None`: PENDING, or the result went to another client); it does
    /// not start the reply queue (a worker needs none), but it connects.
    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        self.broker
            .link()
            .await
            .map_err(|e| BackendError::connection_in("rpc://", e))?;
        Ok(self.latest(task_id))
    }

    async fn watch(&self, task_id: &str) -> Result<ResultWatch, BackendError> {
        self.consume().await?;
        let rx = self.state.waiters.register(task_id);
        if let Some(m) = self.latest(task_id).filter(|m| m.status.is_ready()) {
            return Ok(ResultWatch::new(async move { Ok(m) }));
        }
        Ok(ResultWatch::new(async move {
            rx.await.map_err(|_| BackendError::Closed)
        }))
    }

    /// Forgets what this client heard of `task_id` (nothing is stored
    /// elsewhere).
    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.state.results.lock().map.remove(task_id);
        Ok(())
    }

    async fn claim_key(
        &self,
        key: &str,
        _task_id: &str,
        _ttl: Duration,
    ) -> Result<Option<String>, BackendError> {
        Err(BackendError::Unsupported(format!(
            "idempotency key {key:?}: rpc:// stores nothing to claim it in; use a redis:// or \
             sqlite:// result backend"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_maps_forget_the_oldest() {
        let mut b = Bounded::new(2);
        b.insert("a".into(), 1);
        b.insert("b".into(), 2);
        b.insert("c".into(), 3);
        assert!(!b.map.contains_key("a"));
        assert_eq!(b.map.len(), 2);
        b.map.remove("b");
        for i in 0..10 {
            b.insert(format!("k{i}"), i);
        }
        assert_eq!(b.map.len(), 2);
        assert!(b.order.len() <= 4);
    }

    #[test]
    fn destinations_come_from_reply_to_and_correlation_id() {
        let s = RpcState::new();
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "id".into(),
            lapin::types::AMQPValue::LongString("t1".into()),
        );
        let props = BasicProperties::default()
            .with_headers(headers.clone())
            .with_reply_to("oid-1".into());
        s.record(&props);
        assert_eq!(
            s.destination("t1", false),
            Some(("oid-1".into(), "t1".into()))
        );
        assert!(s.destination("t1", true).is_some());
        assert_eq!(s.destination("t1", false), None, "forgotten once ready");
        s.record(&BasicProperties::default().with_headers(headers));
        assert_eq!(s.destination("t1", false), None, "no reply_to, no result");
    }
}
