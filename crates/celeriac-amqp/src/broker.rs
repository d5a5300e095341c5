//! [`AmqpBroker`] and its [`Transport`]. The mapping of the transport
//! contract onto AMQP is in the crate docs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, Delivery, Outgoing, Transport};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::Registry;
use crate::link::{Link, Links};
use crate::wire::{self, AmqpMessage, H_DELIVERIES};

mod declare;

/// The consumer prefetch (`basic.qos`, per claimed queue) until a worker
/// sets its own (concurrency × prefetch multiplier) or the URL does.
pub(crate) const DEFAULT_PREFETCH: u16 = 16;

/// A RabbitMQ broker. Cheap to clone; one connection per value made by
/// [`open`](Self::open), opened on first use and reopened when it fails.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) links: Links,
    redacted: String,
    state: Mutex<State>,
    notify: Notify,
    /// Process-local rate-limit buckets (without a registry): key -> unix
    /// time of the next free start.
    pub(crate) rates: Mutex<HashMap<String, f64>>,
    /// `x-max-priority` of the task queues this broker declares
    /// (`?max_priority=N`, Celery's `task_queue_max_priority`).
    max_priority: Option<u8>,
    /// `x-queue-type` of the task queues this broker declares
    /// (`?queue_type=quorum`); `None`: RabbitMQ's default (classic).
    queue_type: Option<String>,
    /// Where revocations, rate limits and nodes are kept, if anywhere.
    pub(crate) registry: Option<Arc<dyn Registry>>,
    /// Process-local revokes (without a registry): id -> (until, terminate).
    pub(crate) revoked: Mutex<HashMap<String, (f64, bool)>>,
    /// Open remote-control reply mailboxes, by oid.
    pub(crate) mailboxes: Mutex<HashMap<String, crate::control::Mailbox>>,
    /// The `rpc://` result backend's state, once one is made on this
    /// broker.
    pub(crate) rpc: std::sync::OnceLock<Arc<crate::rpc::RpcState>>,
}

/// What belongs to one link generation.
#[derive(Debug, Default)]
struct State {
    generation: u64,
    declared: HashSet<String>,
    consuming: HashSet<String>,
    ready: HashMap<String, VecDeque<lapin::message::Delivery>>,
    held: HashSet<u64>,
}

impl AmqpBroker {
    /// Opens a broker for `amqp://` or `amqps://` `url`. Nothing is
    /// connected until the first operation.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_core::Transport;
    /// let b = celeriac_amqp::AmqpBroker::open("amqp://u:secret@127.0.0.1:1/v?prefetch_count=4").unwrap();
    /// assert_eq!(b.url(), "amqp://u:***@127.0.0.1:1/v");
    /// assert!(celeriac_amqp::AmqpBroker::open("amqp://h/?prefetch_count=x").is_err());
    /// ```
    pub fn open(url: &str) -> Result<Arc<Self>, BrokerError> {
        Self::open_with(url, None)
    }

    /// Opens a broker for `url` that keeps revocations, rate-limit buckets
    /// and the node registry in `registry` (RabbitMQ has no place for
    /// them), so they are shared by every worker and survive restarts.
    /// `celeriac-connect` passes the result store's Redis or SQLite
    /// broker.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_core::Transport;
    /// let registry = celeriac_embedded::MemoryBroker::open("memory://amqp-doc").unwrap();
    /// let b = celeriac_amqp::AmqpBroker::open_with_registry("amqp://h/v", registry).unwrap();
    /// assert_eq!(b.url(), "amqp://h/v");
    /// ```
    pub fn open_with_registry(
        url: &str,
        registry: Arc<dyn Registry>,
    ) -> Result<Arc<Self>, BrokerError> {
        Self::open_with(url, Some(registry))
    }

    fn open_with(url: &str, registry: Option<Arc<dyn Registry>>) -> Result<Arc<Self>, BrokerError> {
        let invalid = |reason: &str| BrokerError::InvalidUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let (scheme, _) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        if scheme != "amqp" && scheme != "amqps" {
            return Err(invalid("expected amqp:// or amqps://"));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut prefetch = None;
        let mut max_priority = None;
        let mut queue_type = None;
        let mut ca_pem = None;
        let mut keep = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefetch_count", v)) => {
                    prefetch = Some(
                        v.parse::<u16>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| invalid("prefetch_count must be 1-65535"))?,
                    );
                }
                Some(("max_priority", v)) => {
                    max_priority = Some(
                        v.parse::<u8>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| invalid("max_priority must be 1-255"))?,
                    );
                }
                Some(("ssl_ca_certs", path)) => {
                    if scheme != "amqps" {
                        return Err(invalid("ssl_ca_certs needs amqps://"));
                    }
                    let pem = std::fs::read_to_string(path).map_err(|e| {
                        invalid(&format!("cannot read the CA certificates {path:?}: {e}"))
                    })?;
                    ca_pem = Some(pem);
                }
                Some(("queue_type", v)) => match v {
                    "classic" | "quorum" => queue_type = Some(v.to_string()),
                    _ => return Err(invalid("queue_type must be classic or quorum")),
                },
                _ => keep.push(pair),
            }
        }
        if max_priority.is_some() && queue_type.as_deref() == Some("quorum") {
            return Err(invalid(
                "max_priority needs classic queues: quorum queues take no x-max-priority",
            ));
        }
        let uri = if keep.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", keep.join("&"))
        };
        uri.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| invalid(&e.to_string()))?;
        let redacted = redact(base);
        let mut links = Links::new(
            uri,
            redacted.clone(),
            prefetch.unwrap_or(DEFAULT_PREFETCH),
            prefetch.is_some(),
        );
        links.ca_pem = ca_pem;
        Ok(Arc::new(AmqpBroker {
            inner: Arc::new(Inner {
                links,
                redacted,
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                rates: Mutex::new(HashMap::new()),
                registry,
                max_priority,
                queue_type,
                revoked: Mutex::new(HashMap::new()),
                mailboxes: Mutex::new(HashMap::new()),
                rpc: std::sync::OnceLock::new(),
            }),
        }))
    }

    /// Closes the connection (deliveries not acked go back to their
    /// queues). The broker reconnects if used again.
    pub async fn close(&self) {
        self.inner.links.close().await;
    }

    /// The open link; a new one resets the per-generation state.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let inner = &self.inner;
        inner
            .links
            .get(|generation| {
                *inner.state.lock() = State {
                    generation,
                    ..State::default()
                };
                inner.notify.notify_waiters();
            })
            .await
    }

    /// Whether `name` is used for the first time on `link` (then it is
    /// marked used): exchanges are declared once per connection.
    pub(crate) fn first_use(&self, link: &Link, name: &str) -> bool {
        let mut st = self.inner.state.lock();
        if st.generation != link.generation {
            return true;
        }
        st.declared.insert(format!("exchange:{name}"))
    }

    /// A lapin error as a broker error.
    pub(crate) fn amqp_err(&self, what: &str, e: lapin::Error) -> BrokerError {
        BrokerError::connection_in(format!("{what} on {}", self.inner.redacted), e)
    }

    /// Publishes messages (queue or delay queue each) and waits for every
    /// confirm; retried on a new link if the link fails on the way.
    pub(crate) async fn publish_amqp(
        &self,
        msgs: &[(String, Option<f64>, AmqpMessage)],
    ) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.inner.links.patience;
        loop {
            let link = self.link().await?;
            match self.try_publish(&link, msgs).await {
                Ok(()) => return Ok(()),
                Err(e) if !link.is_open() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "AMQP publish interrupted; publishing again on a new connection");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_publish(
        &self,
        link: &Link,
        msgs: &[(String, Option<f64>, AmqpMessage)],
    ) -> Result<(), BrokerError> {
        let mut confirms = Vec::with_capacity(msgs.len());
        for (queue, eta, m) in msgs {
            self.declare(link, queue).await?;
            let delay = eta.map(|t| t - unix_now()).filter(|d| *d > 0.0);
            let key = match delay {
                Some(d) => self.declare_delay(link, queue, round_delay(d)).await?,
                None => queue.clone(),
            };
            let confirm = link
                .publish
                .basic_publish(
                    ShortString::from(""),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &m.body,
                    m.properties.clone(),
                )
                .await
                .map_err(|e| self.amqp_err("publish", e))?;
            confirms.push(confirm);
        }
        for c in confirms {
            match c.await.map_err(|e| self.amqp_err("publisher confirm", e))? {
                Confirmation::Ack(_) | Confirmation::NotRequested => {}
                Confirmation::Nack(_) => {
                    return Err(BrokerError::storage_msg(format!(
                        "RabbitMQ refused a message (publisher nack) on {}",
                        self.inner.redacted
                    )));
                }
            }
        }
        Ok(())
    }

    /// Starts a consumer on `queue` for this link if none runs.
    async fn ensure_consumer(&self, link: &Link, queue: &str) -> Result<(), BrokerError> {
        if self.inner.state.lock().consuming.contains(queue) {
            return Ok(());
        }
        self.declare(link, queue).await?;
        let prefetch = self.inner.links.prefetch.load(Ordering::Relaxed);
        link.apply_prefetch(prefetch)
            .await
            .map_err(|e| self.amqp_err("basic.qos", e))?;
        let consumer = link
            .consume
            .basic_consume(
                queue.into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.amqp_err(&format!("consume {queue:?}"), e))?;
        let generation = link.generation;
        {
            let mut st = self.inner.state.lock();
            if st.generation != generation {
                return Ok(());
            }
            st.consuming.insert(queue.to_string());
        }
        tokio::spawn(pump(
            Arc::downgrade(&self.inner),
            consumer,
            queue.to_string(),
            generation,
        ));
        Ok(())
    }

    /// Takes up to `max` buffered deliveries, queues in order.
    fn take(&self, queues: &[String], max: usize) -> Vec<Delivery> {
        let mut st = self.inner.state.lock();
        let generation = st.generation;
        let rpc = self.inner.rpc.get();
        let mut out = Vec::new();
        for q in queues {
            while out.len() < max {
                let Some(d) = st.ready.get_mut(q).and_then(VecDeque::pop_front) else {
                    break;
                };
                st.held.insert(d.delivery_tag);
                if let Some(rpc) = rpc {
                    rpc.record(&d.properties);
                }
                let (payload, ours) =
                    wire::to_envelope(&d.data, &d.properties, d.exchange.as_str(), q);
                let before = ours
                    .get(H_DELIVERIES)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0) as u32;
                let deliveries = (before + 1).max(1 + u32::from(d.redelivered));
                out.push(Delivery {
                    tag: format!("{generation}.{}", d.delivery_tag),
                    queue: q.clone(),
                    payload,
                    deliveries,
                    redelivered: d.redelivered || before > 0,
                    revoked: false,
                });
            }
        }
        out
    }

    /// Removes `d` from the held set if it belongs to `link`: the channel
    /// and AMQP delivery tag to settle it with.
    pub(crate) fn release<'l>(
        &self,
        link: &'l Link,
        d: &Delivery,
    ) -> Result<(&'l Channel, u64), BrokerError> {
        let not_held = || BrokerError::NotHeld(d.tag.clone());
        let (generation, tag) = d.tag.split_once('.').ok_or_else(not_held)?;
        let generation: u64 = generation.parse().map_err(|_| not_held())?;
        let tag: u64 = tag.parse().map_err(|_| not_held())?;
        let mut st = self.inner.state.lock();
        if generation != link.generation || st.generation != generation || !st.held.remove(&tag) {
            return Err(not_held());
        }
        Ok((&link.consume, tag))
    }
}

/// Moves a consumer's deliveries into the buffer until it ends (cancelled
/// by RabbitMQ, e.g. its queue was deleted, or the link failed).
async fn pump(inner: Weak<Inner>, mut consumer: lapin::Consumer, queue: String, generation: u64) {
    let mut why = String::from("cancelled by RabbitMQ (queue deleted?)");
    while let Some(item) = consumer.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match item {
            Ok(d) => {
                let mut st = inner.state.lock();
                if st.generation != generation {
                    return;
                }
                st.ready.entry(queue.clone()).or_default().push_back(d);
                drop(st);
                inner.notify.notify_waiters();
            }
            Err(e) => {
                why = e.to_string();
                break;
            }
        }
    }
    let Some(inner) = inner.upgrade() else { return };
    let mut st = inner.state.lock();
    if st.generation == generation {
        st.consuming.remove(&queue);
        st.declared.remove(&queue);
        tracing::warn!(queue, reason = %why, "AMQP consumer ended; the next claim starts it again");
    }
}

/// The task id in an envelope's headers ("" if none).
fn task_id(envelope: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Env {
        #[serde(default)]
        headers: Headers,
    }
    #[derive(serde::Deserialize, Default)]
    struct Headers {
        #[serde(default)]
        id: Option<String>,
    }
    serde_json::from_slice::<Env>(envelope)
        .ok()
        .and_then(|e| e.headers.id)
        .unwrap_or_default()
}

/// A delay in seconds as whole milliseconds rounded up to 3 significant
/// digits (at most 1% late), so nearby delays share a delay queue.
pub(crate) fn round_delay(secs: f64) -> u64 {
    let ms = (secs * 1000.0).ceil().max(1.0) as u64;
    let mut unit = 1;
    while ms / unit >= 1000 {
        unit *= 10;
    }
    ms.div_ceil(unit) * unit
}

/// `url` with its password replaced by `***` and the query removed.
fn redact(url: &str) -> String {
    let url = url.split('?').next().unwrap_or(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://{creds}@{host}"),
    }
}

#[async_trait]
impl Transport for AmqpBroker {
    fn url(&self) -> String {
        self.inner.redacted.clone()
    }

    /// The worker's concurrency × prefetch multiplier becomes the
    /// per-consumer `basic.qos` of consumers started from now on, unless
    /// the URL set `?prefetch_count`.
    fn set_prefetch(&self, messages: usize) {
        if !self.inner.links.explicit {
            let n = messages.clamp(1, usize::from(u16::MAX)) as u16;
            self.inner.links.prefetch.store(n, Ordering::Relaxed);
        }
    }

    fn prefetch(&self) -> Option<usize> {
        Some(usize::from(
            self.inner.links.prefetch.load(Ordering::Relaxed),
        ))
    }

    fn lease(&self) -> Duration {
        // RabbitMQ holds a delivery for the channel's life; renew is a
        // no-op, so workers renew rarely.
        Duration::from_secs(3600)
    }

    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError> {
        self.publish_batch(vec![msg]).await
    }

    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            celeriac_core::validate_queue_name(&m.queue)?;
            let mut a = wire::to_amqp(&m.payload, &[])?;
            // With an rpc:// backend, results come back to this client's
            // mailbox (Celery sets `reply_to` on every task message).
            if let Some(rpc) = self.inner.rpc.get()
                && a.properties.reply_to().is_none()
            {
                a.properties = a.properties.with_reply_to(rpc.oid.as_str().into());
            }
            out.push((m.queue, m.eta, a));
        }
        self.publish_amqp(&out).await
    }

    async fn claim(
        &self,
        _consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        for q in queues {
            celeriac_core::validate_queue_name(q)?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let link = self.link().await?;
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            for q in queues {
                if let Err(e) = self.ensure_consumer(&link, q).await
                    && link.is_open()
                {
                    return Err(e);
                }
            }
            let mut got = self.take(queues, max.max(1));
            if !got.is_empty() {
                self.mark_revoked(&mut got).await;
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            // Wake at least every second to notice a failed link.
            let until = deadline.min(now + Duration::from_secs(1));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let (ch, tag) = self.release(&link, delivery)?;
        ch.basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.amqp_err("ack", e))
    }

    async fn renew(&self, _deliveries: &[Delivery]) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError> {
        let link = self.link().await?;
        match not_before.filter(|t| *t > unix_now()) {
            None => {
                let (ch, tag) = self.release(&link, delivery)?;
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                ch.basic_nack(tag, requeue)
                    .await
                    .map_err(|e| self.amqp_err("requeue", e))
            }
            Some(t) => {
                // Still held? Checked before the copy is published.
                self.check_held(&link, delivery)?;
                let count = AMQPValue::LongLongInt(i64::from(delivery.deliveries));
                let copy = wire::to_amqp(&delivery.payload, &[(H_DELIVERIES, count)])?;
                self.publish_amqp(&[(delivery.queue.clone(), Some(t), copy)])
                    .await?;
                self.ack(delivery).await
            }
        }
    }

    /// The ready count of `queue`, which is declared first as a worker
    /// declares it (as Celery declares a queue before it publishes to or
    /// consumes from it): a passive declare of a missing queue would be a
    /// channel error.
    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        celeriac_core::validate_queue_name(queue)?;
        let link = self.link().await?;
        self.declare(&link, queue).await?;
        // A throwaway channel: a passive declare of a queue deleted
        // meanwhile closes the channel it runs on.
        let ch = link
            .conn
            .create_channel()
            .await
            .map_err(|e| self.amqp_err("open channel", e))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let n = match ch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => q.message_count() as usize,
            Err(_) if link.is_open() => 0,
            Err(e) => return Err(self.amqp_err("queue length", e)),
        };
        let _ = ch.close(200, "done".into()).await;
        Ok(n)
    }
}

impl AmqpBroker {
    /// Sets `revoked` on deliveries whose task was revoked. A registry
    /// that cannot be asked leaves them unmarked (the worker asks again
    /// before it starts them), with a warning.
    async fn mark_revoked(&self, got: &mut [Delivery]) {
        let ids: Vec<String> = got.iter().map(|d| task_id(&d.payload)).collect();
        let revoked = match celeriac_core::Revocations::revoked(self, &ids).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not check claimed tasks for revokes");
                return;
            }
        };
        if revoked.is_empty() {
            return;
        }
        for (d, id) in got.iter_mut().zip(&ids) {
            d.revoked = !id.is_empty() && revoked.contains(id);
        }
    }

    /// Whether `d` is held on `link`, without releasing it.
    pub(crate) fn check_held(&self, link: &Link, d: &Delivery) -> Result<(), BrokerError> {
        let (ch, tag) = self.release(link, d)?;
        let _ = ch;
        self.inner.state.lock().held.insert(tag);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_three_digits() {
        assert_eq!(round_delay(0.0001), 1);
        assert_eq!(round_delay(0.5), 500);
        assert_eq!(round_delay(1.2345), 1240);
        assert_eq!(round_delay(3600.0), 3_600_000);
        assert!(round_delay(12.3456) >= 12346);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("amqp://a:b@h:1/v?x=1"), "amqp://a:***@h:1/v");
        assert_eq!(redact("amqp://h/v"), "amqp://h/v");
    }
}
