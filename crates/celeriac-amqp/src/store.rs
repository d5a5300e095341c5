//! The capabilities that need storage: dead letters (the `celeriac.dlq`
//! queue), and revocations, shared rate limits and the node registry,
//! which RabbitMQ has no place for: they live in the broker's
//! [`Registry`](crate::Registry) (the result store's Redis or SQLite,
//! wired by `celeriac-connect`), or, without one, in this process, as
//! Celery keeps them.

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

impl AmqpBroker {
    /// Records revokes of `ids` for `ttl` in the registry, or in this
    /// process without one.
    pub(crate) async fn store_revoke(
        &self,
        ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        match &self.inner.registry {
            Some(r) => r.revoke(ids, ttl).await,
            None => {
                self.remember(ids, ttl, false);
                Ok(())
            }
        }
    }

    /// As [`store_revoke`](Self::store_revoke), with terminate.
    pub(crate) async fn store_revoke_terminate(
        &self,
        ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        match &self.inner.registry {
            Some(r) => r.revoke_terminate(ids, ttl).await,
            None => {
                self.remember(ids, ttl, true);
                Ok(())
            }
        }
    }

    fn remember(&self, ids: &[String], ttl: Duration, terminate: bool) {
        let until = unix_now() + ttl.as_secs_f64();
        let mut local = self.inner.revoked.lock();
        local.retain(|_, (t, _)| *t > unix_now());
        for id in ids {
            let e = local.entry(id.clone()).or_insert((until, false));
            e.0 = e.0.max(until);
            e.1 |= terminate;
        }
    }

    fn remembered(&self, ids: &[String], terminate: bool) -> Vec<String> {
        let now = unix_now();
        let local = self.inner.revoked.lock();
        ids.iter()
            .filter(|id| {
                local
                    .get(*id)
                    .is_some_and(|(until, t)| *until > now && (*t || !terminate))
            })
            .cloned()
            .collect()
    }

    /// Broadcasts Celery's `revoke` (Python workers act on it; celeriac
    /// workers, and this broadcast, record it).
    async fn revoke_broadcast(
        &self,
        ids: &[String],
        ttl: Duration,
        terminate: Option<&str>,
    ) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        if terminate.is_some() {
            self.store_revoke_terminate(ids, ttl).await?;
        } else {
            self.store_revoke(ids, ttl).await?;
        }
        let task_id = match ids {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        let mut req = celeriac_core::ControlRequest::new("revoke")
            .arg("task_id", task_id)
            .arg("terminate", terminate.is_some())
            .arg("signal", terminate.unwrap_or("SIGTERM"));
        req.expires = unix_now() + 1.0;
        // Recorded above with `ttl`; the broadcast only informs.
        self.publish_request(&req).await
    }
}

#[async_trait]
impl Revocations for AmqpBroker {
    /// Records the revoke (registry, or this process) and broadcasts
    /// Celery's `revoke` on `celery.pidbox`, as `app.control.revoke` does.
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.revoke_broadcast(task_ids, ttl, None).await
    }

    async fn revoke_terminate(
        &self,
        task_ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.revoke_broadcast(task_ids, ttl, Some("SIGTERM")).await
    }

    async fn revoke_terminate_with_signal(
        &self,
        task_ids: &[String],
        ttl: Duration,
        signal: &str,
    ) -> Result<(), BrokerError> {
        self.revoke_broadcast(task_ids, ttl, Some(signal)).await
    }

    async fn terminations(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        match &self.inner.registry {
            Some(r) => r.terminations(task_ids).await,
            None => Ok(self.remembered(task_ids, true)),
        }
    }

    async fn revoked(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        match &self.inner.registry {
            Some(r) => r.revoked(task_ids).await,
            None => Ok(self.remembered(task_ids, false)),
        }
    }
}

#[async_trait]
impl RateLimits for AmqpBroker {
    /// Shared through the registry; without one, per process (as in
    /// Celery): RabbitMQ has no store for the buckets.
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError> {
        if let Some(r) = &self.inner.registry {
            return r.rate_wait(key, interval).await;
        }
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
    /// Recorded in the registry; without one, accepted and not stored.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        match &self.inner.registry {
            Some(r) => r.heartbeat(node).await,
            None => {
                tracing::trace!(node = %node.name, "AMQP broker without a registry: heartbeat not stored");
                Ok(())
            }
        }
    }

    async fn node_gone(&self, name: &str) -> Result<(), BrokerError> {
        match &self.inner.registry {
            Some(r) => r.node_gone(name).await,
            None => Ok(()),
        }
    }

    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError> {
        match &self.inner.registry {
            Some(r) => r.nodes(max_age).await,
            None => Err(BrokerError::Unsupported(
                "listing worker nodes on an AMQP broker without a registry (pair the \
                 amqp:// broker with a redis:// or sqlite:// result backend, or ask the \
                 workers with `inspect ping`)"
                    .to_string(),
            )),
        }
    }
}
