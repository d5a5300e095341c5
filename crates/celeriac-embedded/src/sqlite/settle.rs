//! Settling finished tasks together ([`SettleTogether`]) when the broker
//! and the result backend are the same SQLite file: a batch's results
//! stored, its chord header parts joined and its messages acked in one
//! transaction, in that order, instead of three.
//!
//! The rows written are those of the separate calls
//! ([`ResultBackend::store_many`](celeriac_core::ResultBackend::store_many),
//! [`ChordJoin::part_return_many`](celeriac_core::ChordJoin::part_return_many),
//! [`Transport::ack_many`](celeriac_core::Transport::ack_many)), so every reader (another process's poller,
//! a Python-free `celeriac result`) sees the same file either way.

use std::sync::Arc;

use async_trait::async_trait;
use celeriac_core::broker::{Fate, Finished, SettleTogether, Settled};
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, ResultBackend};
use rusqlite::params;

use super::backend::{BackendShared, ResultRows};
use super::chord::{PartRow, decode_parts, join_parts};
use super::db::{Db, batched};
use super::{SqliteBackend, SqliteBroker, split_tag, storage};

/// The joint settle of a broker and a backend on one file.
#[derive(Debug)]
pub(super) struct JointSettle {
    /// The broker's connection: the transaction runs there.
    db: Arc<Db>,
    /// The backend's waiters, woken once the results are stored.
    backend: Arc<BackendShared>,
    /// The backend's result expiry.
    ttl: std::time::Duration,
}

/// Whether two handles name the same file.
fn same_file(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The joint settle of `broker` with `backend`, if that is a
/// [`SqliteBackend`] on the broker's own file.
pub(super) fn joint(
    broker: &SqliteBroker,
    backend: &dyn ResultBackend,
) -> Option<Arc<dyn SettleTogether>> {
    let backend = backend.as_any()?.downcast_ref::<SqliteBackend>()?;
    if !same_file(&broker.db.path, &backend.shared.db.path) {
        return None;
    }
    Some(Arc::new(JointSettle {
        db: broker.db.clone(),
        backend: backend.shared.clone(),
        ttl: backend.ttl,
    }))
}

#[async_trait]
impl SettleTogether for JointSettle {
    async fn settle_together(&self, batch: &[Finished<'_>]) -> Result<Settled, BrokerError> {
        let results = ResultRows::of(batch.iter().filter_map(|f| f.meta), self.ttl)
            .map_err(BrokerError::storage)?;
        // The chords of the batch in order of first appearance, each with
        // the batch positions of its parts and their rows.
        let mut chords: Vec<(String, Vec<usize>, Vec<PartRow>)> = Vec::new();
        for (i, f) in batch.iter().enumerate() {
            let Some((group, part)) = &f.part else {
                continue;
            };
            let row = PartRow::of(part);
            match chords.iter_mut().find(|(g, _, _)| g == group) {
                Some((_, at, rows)) => {
                    at.push(i);
                    rows.push(row);
                }
                None => chords.push((group.to_string(), vec![i], vec![row])),
            }
        }
        let tags: Vec<Option<(i64, String)>> = batch
            .iter()
            .map(|f| split_tag(&f.delivery.tag).ok())
            .collect();
        let ttl = self.ttl.as_secs_f64();
        let (fates, won) = batched(
            &self.db,
            move |tx| {
                // Stored first, then joined, then acked.
                results.write(tx)?;
                let mut fates = vec![Fate::Acked; tags.len()];
                let mut won = Vec::new();
                let now = unix_now();
                for (group, at, rows) in &chords {
                    if let Some(all) = join_parts(tx, group, rows, now, ttl)? {
                        // These parts complete the chord: held until the
                        // worker has sent its body.
                        for &i in at {
                            fates[i] = Fate::HeldBack;
                        }
                        won.push((group.clone(), all));
                    }
                }
                let mut del =
                    tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND claim_token = ?2")?;
                for (fate, tag) in fates.iter_mut().zip(&tags) {
                    if *fate == Fate::HeldBack {
                        continue;
                    }
                    let held = match tag {
                        Some((id, token)) => del.execute(params![id, token])? == 1,
                        None => false,
                    };
                    if !held {
                        *fate = Fate::NotHeld;
                    }
                }
                Ok((fates, won))
            },
            storage,
        )
        .await?;
        for meta in batch.iter().filter_map(|f| f.meta) {
            self.backend.waiters.notify(meta);
        }
        let completed = won
            .into_iter()
            .map(|(group, parts)| Ok((group, decode_parts(&parts)?)))
            .collect::<Result<Vec<_>, celeriac_core::BackendError>>()
            .map_err(BrokerError::storage)?;
        Ok(Settled::new(fates, completed))
    }
}
