//! [`BeatStore`] on SQLite: the leader lease of `celeriac beat` is a row of
//! `beat_leases` (the group's latest fencing token and when its lease
//! ends), each entry's last run a row of `beat_runs`. The fenced publish
//! checks the lease, inserts the messages and records the slots in one
//! `BEGIN IMMEDIATE` transaction, so beats in several processes on one
//! file publish each slot once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::{BeatRun, BeatStore, Fenced};
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, validate_queue_name};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteBroker, blocking, insert_messages, storage};

const SCHEMA: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS beat_leases (
    grp TEXT PRIMARY KEY,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS beat_runs (
    grp TEXT NOT NULL,
    entry TEXT NOT NULL,
    slot_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, entry)
);
COMMIT;
";

impl SqliteBroker {
    /// Creates the beat tables, once per handle.
    async fn beat_schema(&self) -> Result<(), BrokerError> {
        self.check_open()?;
        if self.beat_ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        blocking(&self.db, |conn| conn.execute_batch(SCHEMA), storage).await?;
        self.beat_ready.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The group's token and lease end, if it ever had a lease.
fn lease_row(tx: &rusqlite::Transaction<'_>, group: &str) -> rusqlite::Result<Option<(u64, f64)>> {
    tx.query_row(
        "SELECT token, expires_at FROM beat_leases WHERE grp = ?1",
        params![group],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
    .optional()
}

#[async_trait]
impl BeatStore for SqliteBroker {
    async fn acquire_lease(
        &self,
        group: &str,
        held: Option<u64>,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        self.beat_schema().await?;
        let group = group.to_string();
        blocking(
            &self.db,
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = unix_now();
                let until = now + ttl.as_secs_f64();
                let token = match lease_row(&tx, &group)? {
                    Some((token, ends)) if ends > now => {
                        if held != Some(token) {
                            return Ok(None);
                        }
                        token
                    }
                    // Free or lapsed: a new, larger token.
                    Some((token, _)) => token + 1,
                    None => 1,
                };
                tx.execute(
                    "INSERT INTO beat_leases (grp, token, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(grp) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at",
                    params![group, token as i64, until],
                )?;
                tx.commit()?;
                Ok(Some(token))
            },
            storage,
        )
        .await
    }

    async fn release_lease(&self, group: &str, token: u64) -> Result<(), BrokerError> {
        self.beat_schema().await?;
        let group = group.to_string();
        blocking(
            &self.db,
            move |conn| {
                // The token stays, so the next one is still larger.
                conn.execute(
                    "UPDATE beat_leases SET expires_at = 0 WHERE grp = ?1 AND token = ?2",
                    params![group, token as i64],
                )
                .map(drop)
            },
            storage,
        )
        .await
    }

    async fn last_runs(&self, group: &str) -> Result<HashMap<String, i64>, BrokerError> {
        self.beat_schema().await?;
        let group = group.to_string();
        blocking(
            &self.db,
            move |conn| {
                let mut q =
                    conn.prepare_cached("SELECT entry, slot_ms FROM beat_runs WHERE grp = ?1")?;
                let rows = q.query_map(params![group], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            },
            storage,
        )
        .await
    }

    async fn publish_fenced(
        &self,
        group: &str,
        token: u64,
        runs: Vec<BeatRun>,
    ) -> Result<Fenced, BrokerError> {
        for m in runs.iter().filter_map(|r| r.message.as_ref()) {
            validate_queue_name(&m.queue)?;
        }
        self.beat_schema().await?;
        let group = group.to_string();
        let outcome = blocking(
            &self.db,
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                match lease_row(&tx, &group)? {
                    Some((t, ends)) if t == token && ends > unix_now() => {}
                    _ => return Ok(Fenced::Refused),
                }
                let mut applied = Vec::with_capacity(runs.len());
                let mut publish = Vec::new();
                {
                    let mut last = tx.prepare_cached(
                        "SELECT slot_ms FROM beat_runs WHERE grp = ?1 AND entry = ?2",
                    )?;
                    let mut record = tx.prepare_cached(
                        "INSERT INTO beat_runs (grp, entry, slot_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT(grp, entry) DO UPDATE SET slot_ms = excluded.slot_ms",
                    )?;
                    for run in runs {
                        let prev: Option<i64> = last
                            .query_row(params![group, run.entry], |r| r.get(0))
                            .optional()?;
                        let fresh = prev.is_none_or(|p| run.slot_ms > p);
                        if fresh {
                            record.execute(params![group, run.entry, run.slot_ms])?;
                            publish.extend(run.message);
                        }
                        applied.push(fresh);
                    }
                }
                insert_messages(&tx, &publish)?;
                tx.commit()?;
                Ok(Fenced::Applied(applied))
            },
            storage,
        )
        .await?;
        self.notify.notify_waiters();
        Ok(outcome)
    }
}
