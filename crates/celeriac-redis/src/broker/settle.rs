//! Settling together with the result backend
//! ([`SettleTogether`]): when the backend is a [`RedisBackend`] on this
//! broker's own server and database, a worker's settle batch is one
//! script (`lua/settle.lua`) instead of a store script, a chord join per
//! chord and an ack script: the results stored as the backend stores them
//! (`lua/store.lua`: Celery's keys, `SETEX`, `PUBLISH` on the result
//! channel, a stored SUCCESS never overwritten), the chord parts joined as
//! the backend joins them (`lua/chord_join.lua`: Celery's keys, the `.d`
//! dedupe), then the messages acked as `lua/ack.lua` does. Any other
//! backend (another server, another database, another kind) is settled
//! with separate calls.
//!
//! The call is retried as an ack is, after a lost connection, with the
//! same chord claim token: a run whose reply was lost and the run after it
//! agree on which chords the batch completed.

use std::sync::Arc;

use async_trait::async_trait;
use celeriac_core::broker::{Fate, Finished, SettleTogether, Settled};
use celeriac_core::{BrokerError, ResultBackend};
use redis::Value;

use super::{MAX_BATCH, RedisBroker, settled, split_tag};
use crate::backend::{RedisBackend, Results};
use crate::chord::CLAIM_TTL_SECS;

/// A Redis broker and a result backend on the same server and database.
#[derive(Debug)]
pub(crate) struct Joint {
    broker: Arc<RedisBroker>,
    results: Results,
}

/// Whether two clients reach the same server and database.
fn same_store(a: &redis::Client, b: &redis::Client) -> bool {
    let (a, b) = (a.get_connection_info(), b.get_connection_info());
    a.addr() == b.addr() && a.redis_settings().db() == b.redis_settings().db()
}

impl RedisBroker {
    /// The joint settle with `backend`, if it is a [`RedisBackend`] on this
    /// broker's server and database (the same address as written in the
    /// URLs: `localhost` and `127.0.0.1` are not taken for one server).
    pub(super) fn joint_with(
        &self,
        backend: &dyn ResultBackend,
    ) -> Option<Arc<dyn SettleTogether>> {
        let backend = backend.as_any()?.downcast_ref::<RedisBackend>()?;
        if !same_store(&self.client, backend.client()) {
            return None;
        }
        Some(Arc::new(Joint {
            broker: self.me.upgrade()?,
            results: backend.results(),
        }))
    }
}

#[async_trait]
impl SettleTogether for Joint {
    async fn settle_together(&self, batch: &[Finished<'_>]) -> Result<Settled, BrokerError> {
        let mut fates = Vec::with_capacity(batch.len());
        let mut completed = Vec::new();
        for chunk in batch.chunks(MAX_BATCH) {
            let (f, c) = self.settle_chunk(chunk).await?;
            fates.extend(f);
            completed.extend(c);
        }
        for meta in batch.iter().filter_map(|f| f.meta) {
            self.results.notify(meta);
        }
        Ok(Settled::new(fates, completed))
    }
}

impl Joint {
    /// One script call for `chunk`: its fates, and the chords it completes.
    async fn settle_chunk(
        &self,
        chunk: &[Finished<'_>],
    ) -> Result<(Vec<Fate>, Completed), BrokerError> {
        let broker = &self.broker;
        let [unacked, index, claims, deliveries, _] = broker.bookkeeping();
        // The acks: each message's number among them (1-based), none for a
        // tag that was never a claim of ours (not held).
        let mut acks: Vec<(&str, &str)> = Vec::with_capacity(chunk.len());
        let numbers: Vec<Option<usize>> = chunk
            .iter()
            .map(|f| {
                split_tag(&f.delivery.tag).ok().map(|t| {
                    acks.push(t);
                    acks.len()
                })
            })
            .collect();
        // The chords, in the order of their first part.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, f) in chunk.iter().enumerate() {
            let Some((group, _)) = &f.part else { continue };
            match groups.iter_mut().find(|(g, _)| g == group) {
                Some((_, members)) => members.push(i),
                None => groups.push((group, vec![i])),
            }
        }
        let results: Vec<_> = chunk.iter().filter_map(|f| f.meta).collect();
        let mut inv = broker.scripts.settle.prepare_invoke();
        for meta in &results {
            inv.key(self.results.key(&meta.task_id));
        }
        for (group, _) in &groups {
            for k in self.results.chord_keys(group) {
                inv.key(k);
            }
        }
        inv.key(&unacked).key(&index).key(&claims).key(&deliveries);
        inv.arg(self.results.expires_secs())
            .arg(CLAIM_TTL_SECS)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(results.len())
            .arg(groups.len());
        for meta in &results {
            let json = serde_json::to_string(meta).map_err(BrokerError::storage)?;
            inv.arg(json);
        }
        for (_, members) in &groups {
            inv.arg(members.len());
            for &i in members {
                let Some((_, p)) = &chunk[i].part else {
                    continue;
                };
                let score = p
                    .group_index
                    .map_or_else(|| "+inf".to_string(), |i| i.to_string());
                inv.arg(p.task_id)
                    .arg(p.part.to_string())
                    .arg(score)
                    .arg(numbers[i].unwrap_or(0));
            }
        }
        for (tag, token) in &acks {
            inv.arg(*tag).arg(*token);
        }
        let (reply, retried): (Value, bool) = broker.settle(&inv).await?;
        let (codes, parts): (Vec<i64>, Vec<Vec<String>>) =
            redis::from_redis_value(reply).map_err(BrokerError::storage)?;
        if codes.len() != acks.len() || parts.len() != groups.len() {
            return Err(BrokerError::storage_msg(format!(
                "the settle script answered for {} messages and {} chords, not {} and {}",
                codes.len(),
                parts.len(),
                acks.len(),
                groups.len()
            )));
        }
        let fates = numbers
            .iter()
            .map(|n| match n.map(|n| codes[n - 1]) {
                Some(3) => Fate::HeldBack,
                Some(code) if settled(code, retried) => Fate::Acked,
                _ => Fate::NotHeld,
            })
            .collect();
        let mut completed = Vec::new();
        for ((group, _), all) in groups.iter().zip(parts) {
            if all.is_empty() {
                continue;
            }
            let all = all
                .iter()
                .map(|p| {
                    serde_json::from_str(p).map_err(|e| {
                        BrokerError::storage_in(format!("chord {group}: part {p:?}"), e)
                    })
                })
                .collect::<Result<Vec<serde_json::Value>, _>>()?;
            completed.push((group.to_string(), all));
        }
        Ok((fates, completed))
    }
}

/// The chords a chunk completes: group id, every part.
type Completed = Vec<(String, Vec<serde_json::Value>)>;
