//! The capabilities that need storage: dead letters (the `celeriac.dlq`
//! queue), and, not yet on AMQP, revocations, the node registry and shared
//! rate limits.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{
    BrokerError, DeadLetter, DeadLetters, Delivery, NodeInfo, Nodes, RateLimits, Revocations,
};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

use crate::broker::AmqpBroker;
use crate::wire::{self, H_DL_ID, H_FAILED_AT, H_QUEUE, H_REASON};

/// The durable queue that holds dead letters.
pub const DEAD_LETTER_QUEUE: &str = "celeriac.dlq";

/// How many dead letters `requeue_dead_letter` looks through.
const DLQ_SCAN: usize = 100_000;

fn unsupported(what: &str) -> BrokerError {
    BrokerError::Unsupported(format!(
        "{what} on an AMQP broker (not implemented yet; use a Redis or SQLite broker for it)"
    ))
}

impl AmqpBroker {
    /// Reads up to `limit` dead letters on a channel of their own, calling
    /// `pick` on each until it returns true; that one is acked (removed),
    /// the others go back to the queue in their order when the channel
    /// closes.
    async fn scan_dlq(
        &self,
        limit: usize,
        mut pick: impl FnMut(&DeadLetter) -> bool,
    ) -> Result<(Vec<DeadLetter>, Option<DeadLetter>), BrokerError> {
        let link = self.link().await?;
        let err = |e| self.amqp_err("read the dead-letter queue", e);
        let ch = link.conn.create_channel().await.map_err(err)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(DEAD_LETTER_QUEUE.into(), durable, FieldTable::default())
            .await
            .map_err(err)?;
        let mut seen = Vec::new();
        let mut picked = None;
        while seen.len() < limit {
            let Some(got) = ch
                .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(err)?
            else {
                break;
            };
            let d = got.delivery;
            let from = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(H_QUEUE))
                .map(wire::amqp_to_json)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let (payload, ours) = wire::to_envelope(&d.data, &d.properties, "", &from);
            let text = |k: &str| {
                ours.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let dl = DeadLetter {
                id: text(H_DL_ID),
                queue: text(H_QUEUE),
                reason: text(H_REASON),
                failed_at: ours.get(H_FAILED_AT).and_then(Value::as_f64).unwrap_or(0.0),
                payload,
            };
            if pick(&dl) {
                picked = Some((dl, d.delivery_tag));
                break;
            }
            seen.push(dl);
        }
        let picked = match picked {
            Some((dl, tag)) => {
                // Republished (confirmed) before it leaves the DLQ: a crash in
                // between duplicates it, never loses it.
                let copy = wire::to_amqp(&dl.payload, &[])?;
                self.publish_amqp(&[(dl.queue.clone(), None, copy)]).await?;
                ch.basic_ack(tag, BasicAckOptions::default())
                    .await
                    .map_err(err)?;
                Some(dl)
            }
            None => None,
        };
        let _ = ch.close(200, "done".into()).await;
        Ok((seen, picked))
    }
}

#[async_trait]
impl DeadLetters for AmqpBroker {
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let link = self.link().await?;
        self.check_held(&link, delivery)?;
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        let id = uuid::Uuid::new_v4().to_string();
        let copy = wire::to_amqp(
            &delivery.payload,
            &[
                (H_DL_ID, s(&id)),
                (H_REASON, s(reason)),
                (H_QUEUE, s(&delivery.queue)),
                (H_FAILED_AT, AMQPValue::Double(unix_now())),
            ],
        )?;
        self.publish_amqp(&[(DEAD_LETTER_QUEUE.to_string(), None, copy)])
            .await?;
        tracing::warn!(queue = %delivery.queue, reason, dead_letter = %id, "message dead-lettered to {DEAD_LETTER_QUEUE}");
        celeriac_core::Transport::ack(self, delivery).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        Ok(self.scan_dlq(limit, |_| false).await?.0)
    }

    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError> {
        let (_, picked) = self.scan_dlq(DLQ_SCAN, |dl| dl.id == id).await?;
        Ok(picked.is_some())
    }
}

#[async_trait]
impl Revocations for AmqpBroker {
    async fn revoke(&self, _task_ids: &[String], _ttl: Duration) -> Result<(), BrokerError> {
        Err(unsupported("revoke"))
    }

    async fn revoke_terminate(
        &self,
        _task_ids: &[String],
        _ttl: Duration,
    ) -> Result<(), BrokerError> {
        Err(unsupported("revoke with terminate"))
    }

    /// None: nothing can be revoked on AMQP yet.
    async fn terminations(&self, _task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        Ok(Vec::new())
    }

    /// None: nothing can be revoked on AMQP yet.
    async fn revoked(&self, _task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl RateLimits for AmqpBroker {
    /// Per process, not shared between workers (as in Celery): RabbitMQ has
    /// no store for the buckets.
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError> {
        let now = unix_now();
        let mut rates = self.inner.rates.lock();
        let next = rates.entry(key.to_string()).or_insert(0.0);
        if *next <= now {
            *next = now + interval;
            Ok(0.0)
        } else {
            Ok(*next - now)
        }
    }
}

#[async_trait]
impl Nodes for AmqpBroker {
    /// Accepted and not stored: there is no node registry on AMQP yet.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        tracing::trace!(node = %node.name, "AMQP broker: heartbeat not stored (no node registry yet)");
        Ok(())
    }

    async fn node_gone(&self, _name: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn nodes(&self, _max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError> {
        Err(unsupported("listing worker nodes"))
    }
}
