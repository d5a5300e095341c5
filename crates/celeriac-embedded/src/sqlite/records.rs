//! The records the SQLite broker keeps beside its messages: dead letters,
//! revocations, rate-limit buckets and the node registry.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{
    BrokerError, DeadLetter, DeadLetters, Delivery, NodeInfo, Nodes, RateLimits, Revocations,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::db::blocking;
use super::{SqliteBroker, split_tag, storage};

#[async_trait]
impl DeadLetters for SqliteBroker {
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let (id, token) = split_tag(&delivery.tag)?;
        let reason = reason.to_string();
        let moved = blocking(
            &self.db,
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(
                    "INSERT INTO dead_letters (queue, reason, failed_at, payload)
                     SELECT queue, ?3, ?4, payload FROM messages WHERE id = ?1 AND claim_token = ?2",
                    params![id, token, reason, unix_now()],
                )?;
                tx.execute(
                    "DELETE FROM messages WHERE id = ?1 AND claim_token = ?2",
                    params![id, token],
                )?;
                tx.commit()?;
                Ok(n)
            },
            storage,
        )
        .await?;
        if moved == 0 {
            return Err(BrokerError::NotHeld(delivery.tag.clone()));
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        blocking(
            &self.db,
            move |conn| {
                let mut st = conn.prepare_cached(
                    "SELECT id, queue, reason, failed_at, payload FROM dead_letters ORDER BY id LIMIT ?1",
                )?;
                st.query_map(params![limit as i64], |r| {
                    Ok(DeadLetter {
                        id: r.get::<_, i64>(0)?.to_string(),
                        queue: r.get(1)?,
                        reason: r.get(2)?,
                        failed_at: r.get(3)?,
                        payload: r.get(4)?,
                    })
                })?
                .collect()
            },
            storage,
        )
        .await
    }

    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError> {
        let Ok(id) = id.parse::<i64>() else {
            return Ok(false);
        };
        let moved = blocking(
            &self.db,
            move |conn| {
                let now = unix_now();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let row: Option<(String, Vec<u8>)> = tx
                    .query_row(
                        "SELECT queue, payload FROM dead_letters WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((queue, payload)) = row else {
                    return Ok(false);
                };
                let task_id = crate::memory::task_id_of(&payload);
                tx.execute(
                    "INSERT INTO messages (queue, priority, visible_at, tag, task_id, payload, created_at)
                     VALUES (?1, 0, ?2, ?3, ?4, ?5, ?2)",
                    params![queue, now, format!("dlq-{id}"), task_id, payload],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])?;
                tx.commit()?;
                Ok(true)
            },
            storage,
        )
        .await?;
        self.notify.notify_waiters();
        Ok(moved)
    }
}

#[async_trait]
impl Revocations for SqliteBroker {
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.record_revokes(task_ids, ttl, false).await
    }

    async fn revoke_terminate(
        &self,
        task_ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.record_revokes(task_ids, ttl, true).await
    }

    async fn terminations(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        self.live_ids("terminations", task_ids).await
    }

    async fn revoked(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        self.live_ids("revoked", task_ids).await
    }
}

#[async_trait]
impl RateLimits for SqliteBroker {
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError> {
        let key = key.to_string();
        blocking(
            &self.db,
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let tat: Option<f64> = tx
                    .query_row(
                        "SELECT tat FROM rate_limits WHERE key = ?1",
                        params![key],
                        |r| r.get(0),
                    )
                    .optional()?;
                let wait = match celeriac_core::rate::gcra(tat, unix_now(), interval) {
                    Ok(new_tat) => {
                        tx.execute(
                            "INSERT INTO rate_limits (key, tat) VALUES (?1, ?2)
                             ON CONFLICT(key) DO UPDATE SET tat = excluded.tat",
                            params![key, new_tat],
                        )?;
                        0.0
                    }
                    Err(wait) => wait,
                };
                tx.commit()?;
                Ok(wait)
            },
            storage,
        )
        .await
    }
}

#[async_trait]
impl Nodes for SqliteBroker {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        let node = node.clone();
        blocking(
            &self.db,
            move |conn| {
                conn.execute(
                    "INSERT INTO nodes (name, concurrency, pid, last_seen) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(name) DO UPDATE SET concurrency = excluded.concurrency,
                     pid = excluded.pid, last_seen = excluded.last_seen",
                    params![node.name, node.concurrency as i64, node.pid, node.last_seen],
                )
                .map(|_| ())
            },
            storage,
        )
        .await
    }

    async fn node_gone(&self, name: &str) -> Result<(), BrokerError> {
        let name = name.to_string();
        blocking(
            &self.db,
            move |conn| {
                conn.execute("DELETE FROM nodes WHERE name = ?1", params![name])
                    .map(|_| ())
            },
            storage,
        )
        .await
    }

    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError> {
        let cutoff = unix_now() - max_age.as_secs_f64();
        blocking(
            &self.db,
            move |conn| {
                let mut st = conn.prepare_cached(
                    "SELECT name, concurrency, pid, last_seen FROM nodes WHERE last_seen >= ?1 ORDER BY name",
                )?;
                st.query_map(params![cutoff], |r| {
                    Ok(NodeInfo {
                        name: r.get(0)?,
                        concurrency: r.get::<_, i64>(1)? as usize,
                        pid: r.get(2)?,
                        last_seen: r.get(3)?,
                    })
                })?
                .collect()
            },
            storage,
        )
        .await
    }
}
