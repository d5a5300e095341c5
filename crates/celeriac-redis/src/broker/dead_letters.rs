//! The dead-letter store: `celeriac.dlq` (a list of JSON records: id,
//! queue, reason, time) and `celeriac.dlq.payloads` (id → the envelope).

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, DeadLetter, DeadLetters, Delivery, validate_queue_name};
use redis::AsyncCommands;

use super::{RedisBroker, conn_err, payload_priority, settled, split_tag};

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let (tag, token) = split_tag(&delivery.tag)?;
        let [unacked, index, claims, deliveries, _] = self.bookkeeping();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = serde_json::json!({
            "id": id, "queue": delivery.queue, "reason": reason, "failed_at": unix_now(),
        })
        .to_string();
        let mut inv = self.scripts.dead_letter.prepare_invoke();
        inv.key(unacked)
            .key(index)
            .key(claims)
            .key(deliveries)
            .key(self.key("celeriac.dlq"))
            .key(self.key("celeriac.dlq.payloads"))
            .arg(tag)
            .arg(token)
            .arg(record)
            .arg(&id)
            .arg(&delivery.payload);
        let (done, retried): (i64, bool) = self.settle(&inv).await?;
        if !settled(done, retried) {
            return Err(BrokerError::NotHeld(delivery.tag.clone()));
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut conn = self.conn().await?;
        let records: Vec<String> = conn
            .lrange(
                self.key("celeriac.dlq"),
                0,
                limit.saturating_sub(1) as isize,
            )
            .await
            .map_err(conn_err)?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r) else {
                continue;
            };
            let id = v["id"].as_str().unwrap_or_default().to_string();
            let payload: Option<Vec<u8>> = conn
                .hget(self.key("celeriac.dlq.payloads"), &id)
                .await
                .map_err(conn_err)?;
            out.push(DeadLetter {
                id,
                queue: v["queue"].as_str().unwrap_or_default().to_string(),
                reason: v["reason"].as_str().unwrap_or_default().to_string(),
                failed_at: v["failed_at"].as_f64().unwrap_or_default(),
                payload: payload.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn().await?;
        let records: Vec<String> = conn
            .lrange(self.key("celeriac.dlq"), 0, -1)
            .await
            .map_err(conn_err)?;
        for r in records {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r) else {
                continue;
            };
            if v["id"].as_str() != Some(id) {
                continue;
            }
            // Refuse a queue the broker may not push to (a dead letter of a
            // reserved queue name), before anything changes.
            let queue = v["queue"].as_str().unwrap_or("celery");
            validate_queue_name(queue)?;
            let payloads = self.key("celeriac.dlq.payloads");
            let payload: Option<Vec<u8>> = conn.hget(&payloads, id).await.map_err(conn_err)?;
            let priority = payload.as_deref().map_or(0, payload_priority);
            let moved: i64 = self
                .scripts
                .requeue_dead_letter
                .key(self.key("celeriac.dlq"))
                .key(payloads)
                .key(self.list_key(queue, priority))
                .arg(&r)
                .arg(id)
                .invoke_async(&mut conn)
                .await
                .map_err(conn_err)?;
            return match moved {
                1 => Ok(true),
                0 => Ok(false),
                _ => Err(BrokerError::storage_msg(format!(
                    "dead letter {id} has no payload; it was left in place"
                ))),
            };
        }
        Ok(false)
    }
}
