//! Remote control on AMQP: kombu's pidbox, as Celery 5.7 uses it on
//! RabbitMQ (reference §3.1), so `celery inspect`/`celery control` reach
//! celeriac workers and `celeriac inspect` reaches Python ones.
//!
//! - **Requests** are published to the `celery.pidbox` fanout exchange
//!   (not durable), routing key `""`, raw JSON body (kombu's request
//!   document), headers `{clock, expires}`, `delivery_mode` 2.
//! - **A node** listens on its queue `<node>.celery.pidbox` (exclusive,
//!   auto-deleted, `x-message-ttl` 300 s, `x-expires` 10 s), bound to
//!   `celery.pidbox`, consumed without acks on a channel of its own, and
//!   declared again after a reconnect.
//! - **Replies** go to the `reply.celery.pidbox` direct exchange with the
//!   client's mailbox id (`oid`) as routing key, headers `{ticket, clock}`,
//!   `delivery_mode` 1; the client's mailbox is the queue
//!   `<oid>.reply.celery.pidbox`, bound by `oid`.
//!
//! A `revoke` seen on the pidbox (sent by Python's `app.control.revoke` or
//! by celeriac) is recorded in the broker's revocation store (see the
//! crate docs), so celeriac workers honour it, also after a restart.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::{REPLY_EXCHANGE, REVOKE_TTL, ReplyTo};
use celeriac_core::events::python_json;
use celeriac_core::{BrokerError, Control, ControlInbox, ControlReply, ControlRequest};
use lapin::BasicProperties;
use lapin::options::QueuePurgeOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::broker::AmqpBroker;
use crate::subscribe::{Binding, Exchange, PIDBOX, REPLIES};
use crate::wire::{AmqpMessage, amqp_to_json};

/// kombu's pidbox queues: `x-message-ttl` 300 s.
const PIDBOX_TTL_MS: i64 = 300_000;
/// kombu's pidbox queues: `x-expires` 10 s.
const PIDBOX_EXPIRES_MS: i64 = 10_000;

/// An open reply mailbox: its replies, and the switch that ends its
/// subscription.
#[derive(Debug)]
pub(crate) struct Mailbox {
    replies: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<ControlReply>>>,
    stop: oneshot::Sender<()>,
    /// The subscription; it has deleted the queue when it ends.
    task: tokio::task::JoinHandle<()>,
}

/// A JSON document as an AMQP message of kombu's form.
fn message(body: Vec<u8>, headers: FieldTable, delivery_mode: u8) -> AmqpMessage {
    AmqpMessage {
        body,
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(delivery_mode)
            .with_priority(0)
            .with_headers(headers),
    }
}

/// A header of a delivery, as JSON.
fn header(props: &BasicProperties, name: &str) -> Value {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .map(amqp_to_json)
        .unwrap_or(Value::Null)
}

/// The request a pidbox delivery carries.
fn decode_request(d: &lapin::message::Delivery) -> Option<ControlRequest> {
    let mut r: ControlRequest = serde_json::from_slice(&d.data).ok()?;
    r.clock = header(&d.properties, "clock").as_u64().unwrap_or(0);
    r.expires = header(&d.properties, "expires").as_f64().unwrap_or(0.0);
    Some(r)
}

/// The reply a reply delivery carries.
fn decode_reply(d: &lapin::message::Delivery) -> Option<ControlReply> {
    let body: Value = serde_json::from_slice(&d.data).ok()?;
    Some(ControlReply {
        ticket: header(&d.properties, "ticket")
            .as_str()
            .unwrap_or_default()
            .to_string(),
        clock: header(&d.properties, "clock").as_u64().unwrap_or(0),
        body: match body {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    })
}

fn reply_queue(oid: &str) -> String {
    format!("{oid}.{REPLY_EXCHANGE}")
}

impl AmqpBroker {
    /// Declares `exchange` (once per connection) and publishes `m` to it
    /// with `routing_key`, waiting for the confirm; `None` is the default
    /// exchange (routing key = queue name).
    pub(crate) async fn publish_to(
        &self,
        exchange: Option<Exchange>,
        routing_key: &str,
        m: AmqpMessage,
    ) -> Result<(), BrokerError> {
        let deadline = std::time::Instant::now() + self.inner.links.patience;
        loop {
            let link = self.link().await?;
            let sent = async {
                if let Some(exchange) = exchange
                    && self.first_use(&link, exchange.name)
                {
                    exchange
                        .declare(&link.publish)
                        .await
                        .map_err(|e| self.amqp_err(&format!("declare {}", exchange.name), e))?;
                }
                let confirm = link
                    .publish
                    .basic_publish(
                        exchange.map_or("", |e| e.name).into(),
                        ShortString::from(routing_key),
                        Default::default(),
                        &m.body,
                        m.properties.clone(),
                    )
                    .await
                    .map_err(|e| self.amqp_err("publish", e))?;
                confirm
                    .await
                    .map_err(|e| self.amqp_err("publisher confirm", e))?;
                Ok::<_, BrokerError>(())
            }
            .await;
            match sent {
                Ok(()) => return Ok(()),
                Err(e) if !link.is_open() && std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "AMQP publish interrupted; publishing again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes `request` on the `celery.pidbox` fanout, as kombu's
    /// `Mailbox._publish` does.
    pub(crate) async fn publish_request(
        &self,
        request: &ControlRequest,
    ) -> Result<(), BrokerError> {
        let body = python_json(request)
            .map_err(|e| BrokerError::storage_in("encode a control request", e))?;
        let mut headers = FieldTable::default();
        headers.insert(
            "clock".into(),
            AMQPValue::LongLongInt(request.clock.max(1) as i64),
        );
        headers.insert("expires".into(), AMQPValue::Double(request.expires));
        self.publish_to(Some(PIDBOX), "", message(body, headers, 2))
            .await
    }

    /// Records a revoke seen on the pidbox or made here.
    pub(crate) async fn record_revoke(&self, ids: &[String], terminate: bool) {
        let done = if terminate {
            self.store_revoke_terminate(ids, REVOKE_TTL).await
        } else {
            self.store_revoke(ids, REVOKE_TTL).await
        };
        match done {
            Ok(()) => tracing::info!(?ids, terminate, "revoke recorded"),
            Err(e) => tracing::error!(error = %e, ?ids, "could not record a revoke"),
        }
    }
}

#[async_trait]
impl Control for AmqpBroker {
    /// Publishes `request` on the `celery.pidbox` fanout. A `revoke` is
    /// recorded in the revocation store first.
    async fn broadcast(&self, request: &ControlRequest) -> Result<(), BrokerError> {
        if let Some((ids, terminate)) = request.revoke() {
            if terminate {
                self.store_revoke_terminate(&ids, REVOKE_TTL).await?;
            } else {
                self.store_revoke(&ids, REVOKE_TTL).await?;
            }
        }
        self.publish_request(request).await
    }

    /// Consumes `<node>.celery.pidbox`; a revoke among the requests is
    /// recorded before it is passed on.
    async fn listen(&self, node: &str) -> Result<ControlInbox, BrokerError> {
        let binding = Binding::broadcast(
            PIDBOX,
            format!("{node}.{}", PIDBOX.name),
            String::new(),
            PIDBOX_TTL_MS,
            PIDBOX_EXPIRES_MS,
        );
        let first = self.subscribe(&binding).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<ControlRequest>();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<ControlRequest>();
        let gone = out_tx.clone();
        tokio::spawn(self.clone().keep_subscribed(
            binding,
            first,
            move |d| match decode_request(&d) {
                Some(r) => tx.send(r).is_ok(),
                None => {
                    tracing::warn!("ignoring a malformed remote-control message");
                    true
                }
            },
            |_| {},
            async move { gone.closed().await },
        ));
        // A revoke is recorded (a store round trip) before the worker sees
        // it; requests keep their order.
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    r = rx.recv() => r,
                    () = out_tx.closed() => return,
                };
                let Some(r) = r else { return };
                if let Some((ids, terminate)) = r.revoke() {
                    me.record_revoke(&ids, terminate).await;
                }
                if out_tx.send(r).is_err() {
                    return;
                }
            }
        });
        Ok(ControlInbox::new(futures::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        )))
    }

    /// Publishes the reply to `reply.celery.pidbox` with the mailbox id as
    /// routing key (a mailbox nobody consumes drops it).
    async fn reply(&self, to: &ReplyTo, reply: &ControlReply) -> Result<(), BrokerError> {
        let body = python_json(&reply.body)
            .map_err(|e| BrokerError::storage_in("encode a control reply", e))?;
        let mut headers = FieldTable::default();
        headers.insert(
            "ticket".into(),
            AMQPValue::LongString(LongString::from(reply.ticket.as_str())),
        );
        headers.insert("clock".into(), AMQPValue::LongLongInt(reply.clock as i64));
        if !to.exchange.is_empty() && to.exchange != REPLY_EXCHANGE {
            tracing::debug!(exchange = %to.exchange, "reply exchange other than kombu's; replying on {REPLY_EXCHANGE}");
        }
        self.publish_to(Some(REPLIES), &to.routing_key, message(body, headers, 1))
            .await
    }

    async fn open_replies(&self, oid: &str) -> Result<(), BrokerError> {
        let binding = Binding::broadcast(
            REPLIES,
            reply_queue(oid),
            oid.to_string(),
            PIDBOX_TTL_MS,
            PIDBOX_EXPIRES_MS,
        );
        let first = self.subscribe(&binding).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.clone().keep_subscribed(
            binding,
            first,
            move |d| {
                if let Some(r) = decode_reply(&d) {
                    let _ = tx.send(r);
                }
                true
            },
            |_| {},
            async move {
                let _ = stopped.await;
            },
        ));
        self.inner.mailboxes.lock().insert(
            oid.to_string(),
            Mailbox {
                replies: Arc::new(tokio::sync::Mutex::new(rx)),
                stop,
                task,
            },
        );
        Ok(())
    }

    async fn next_replies(
        &self,
        oid: &str,
        wait: Duration,
    ) -> Result<Vec<ControlReply>, BrokerError> {
        let replies = self
            .inner
            .mailboxes
            .lock()
            .get(oid)
            .map(|m| m.replies.clone())
            .ok_or_else(|| BrokerError::storage_msg(format!("reply mailbox {oid} is not open")))?;
        let mut rx = replies.lock().await;
        let mut out = Vec::new();
        if let Ok(Some(first)) = tokio::time::timeout(wait, rx.recv()).await {
            out.push(first);
            while let Ok(more) = rx.try_recv() {
                out.push(more);
            }
        }
        Ok(out)
    }

    async fn close_replies(&self, oid: &str) -> Result<(), BrokerError> {
        let mailbox = self.inner.mailboxes.lock().remove(oid);
        if let Some(m) = mailbox {
            let _ = m.stop.send(());
            let _ = m.task.await;
        }
        Ok(())
    }

    /// `queue.purge`: the ready messages of `queue`. Messages waiting in
    /// its delay queues (eta, delayed requeues) are not counted or removed
    /// yet.
    async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        let link = self.link().await?;
        let n = link
            .publish
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| self.amqp_err("purge a queue", e))?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_queues_are_kombus() {
        assert_eq!(reply_queue("o1"), "o1.reply.celery.pidbox");
    }
}
