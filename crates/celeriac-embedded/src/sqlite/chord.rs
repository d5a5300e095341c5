//! Chord joins in the SQLite file: each call is one `BEGIN IMMEDIATE`
//! transaction (the parts of a settle batch included: one transaction for
//! all of them), so workers in several processes join one chord safely.
//!
//! The same rules as Celery 5.x's Redis join (see `celeriac_redis`'s
//! `chord.rs`): a part is counted once per `<id>:<index>` (the primary key
//! of `chord_parts`), the part that brings the count to the size claims the
//! chord for a few seconds and gets every part in `group_index` order, and
//! a finished chord stays marked done for five minutes so that a late or
//! redelivered part triggers nothing.

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{BackendError, ChordJoin, PartReturn};
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::SqliteBackend;
use super::backend::backend_storage;
use super::db::{batched, blocking};

/// The tables of the join (created with the rest of the schema).
pub(crate) const CHORD_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chords (
    group_id TEXT PRIMARY KEY,
    size INTEGER,
    claimed_until REAL,
    done_until REAL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chords_expires ON chords(expires_at);
CREATE TABLE IF NOT EXISTS chord_parts (
    group_id TEXT NOT NULL,
    member TEXT NOT NULL,
    idx INTEGER,
    part TEXT NOT NULL,
    PRIMARY KEY (group_id, member)
);
";

/// How long the winner's claim holds before another part may take over
/// (as on Redis).
const CLAIM_TTL_SECS: f64 = 6.0;

/// How long a finished chord stays marked done (as Celery: 300 s).
const DONE_TTL_SECS: f64 = 300.0;

/// Makes sure `group_id` has a row, and pushes its expiry to `expires`.
fn touch(tx: &rusqlite::Connection, group_id: &str, expires: f64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO chords (group_id, expires_at) VALUES (?1, ?2)
         ON CONFLICT(group_id) DO UPDATE SET expires_at = excluded.expires_at",
        params![group_id, expires],
    )?;
    Ok(())
}

/// Drops the chords whose time is up, with their parts.
fn sweep(tx: &rusqlite::Connection, now: f64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM chord_parts WHERE group_id IN
           (SELECT group_id FROM chords WHERE expires_at <= ?1)",
        params![now],
    )?;
    tx.execute("DELETE FROM chords WHERE expires_at <= ?1", params![now])?;
    Ok(())
}

/// A chord whose row expired is a new chord: its old state goes.
fn forget_expired(tx: &rusqlite::Connection, group_id: &str, now: f64) -> rusqlite::Result<()> {
    let expired = tx
        .query_row(
            "SELECT 1 FROM chords WHERE group_id = ?1 AND expires_at <= ?2",
            params![group_id, now],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if expired {
        tx.execute(
            "DELETE FROM chord_parts WHERE group_id = ?1",
            params![group_id],
        )?;
        tx.execute("DELETE FROM chords WHERE group_id = ?1", params![group_id])?;
    }
    Ok(())
}

/// A part as its row in `chord_parts`.
#[derive(Debug)]
pub(super) struct PartRow {
    /// `<task id>:<group index>` (`inf` without one): counted once.
    member: String,
    index: Option<i64>,
    part: String,
}

impl PartRow {
    pub(super) fn of(p: &PartReturn<'_>) -> Self {
        PartRow {
            member: match p.group_index {
                Some(i) => format!("{}:{i}", p.task_id),
                None => format!("{}:inf", p.task_id),
            },
            index: p.group_index.map(|i| i64::try_from(i).unwrap_or(i64::MAX)),
            part: p.part.to_string(),
        }
    }
}

/// Records `rows` in the join of `group_id`, in the caller's transaction:
/// nothing once the chord is done; the parts of the chord (in header
/// order) when these complete it and no other part holds the claim, which
/// they then take.
pub(super) fn join_parts(
    tx: &rusqlite::Connection,
    group_id: &str,
    rows: &[PartRow],
    now: f64,
    ttl: f64,
) -> rusqlite::Result<Option<Vec<String>>> {
    forget_expired(tx, group_id, now)?;
    touch(tx, group_id, now + ttl)?;
    let (size, claimed_until, done_until): (Option<i64>, Option<f64>, Option<f64>) = tx.query_row(
        "SELECT size, claimed_until, done_until FROM chords WHERE group_id = ?1",
        params![group_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if done_until.is_some_and(|until| until > now) {
        return Ok(None);
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO chord_parts (group_id, member, idx, part) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(group_id, member) DO NOTHING",
        )?;
        for r in rows {
            insert.execute(params![group_id, r.member, r.index, r.part])?;
        }
    }
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM chord_parts WHERE group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    let complete = size.is_some_and(|size| count >= size);
    if !complete || claimed_until.is_some_and(|until| until > now) {
        return Ok(None);
    }
    tx.execute(
        "UPDATE chords SET claimed_until = ?2 WHERE group_id = ?1",
        params![group_id, now + CLAIM_TTL_SECS],
    )?;
    let mut q = tx.prepare_cached(
        "SELECT part FROM chord_parts WHERE group_id = ?1
         ORDER BY idx IS NULL, idx, part",
    )?;
    let parts = q
        .query_map(params![group_id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(parts))
}

/// The parts a winning join returned, decoded.
pub(super) fn decode_parts(parts: &[String]) -> Result<Vec<Value>, BackendError> {
    parts
        .iter()
        .map(|p| {
            serde_json::from_str(p)
                .map_err(|e| BackendError::Malformed(format!("chord part {p:?}: {e}")))
        })
        .collect()
}

#[async_trait]
impl ChordJoin for SqliteBackend {
    async fn set_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        let group_id = group_id.to_string();
        let ttl = self.ttl.as_secs_f64();
        let size = i64::try_from(size)
            .map_err(|_| BackendError::Malformed(format!("chord size {size} is out of range")))?;
        batched(
            &self.shared.db,
            move |tx| {
                let now = unix_now();
                sweep(tx, now)?;
                touch(tx, &group_id, now + ttl)?;
                tx.execute(
                    "UPDATE chords SET size = ?2, claimed_until = NULL, done_until = NULL
                     WHERE group_id = ?1",
                    params![group_id, size],
                )?;
                Ok(())
            },
            backend_storage,
        )
        .await
    }

    async fn part_return(
        &self,
        group_id: &str,
        task_id: &str,
        group_index: Option<u64>,
        part: &Value,
    ) -> Result<Option<Vec<Value>>, BackendError> {
        let one = PartReturn {
            task_id,
            group_index,
            part,
        };
        self.part_return_many(group_id, std::slice::from_ref(&one))
            .await
    }

    /// Every part in one transaction: counted as one by one, and the chord
    /// claimed if they complete it.
    async fn part_return_many(
        &self,
        group_id: &str,
        parts: &[PartReturn<'_>],
    ) -> Result<Option<Vec<Value>>, BackendError> {
        if parts.is_empty() {
            return Ok(None);
        }
        let group_id = group_id.to_string();
        let rows: Vec<PartRow> = parts.iter().map(PartRow::of).collect();
        let ttl = self.ttl.as_secs_f64();
        let won: Option<Vec<String>> = batched(
            &self.shared.db,
            move |tx| join_parts(tx, &group_id, &rows, unix_now(), ttl),
            backend_storage,
        )
        .await?;
        won.map(|parts| decode_parts(&parts)).transpose()
    }

    async fn finish(&self, group_id: &str) -> Result<(), BackendError> {
        let group_id = group_id.to_string();
        batched(
            &self.shared.db,
            move |tx| {
                let now = unix_now();
                tx.execute(
                    "DELETE FROM chord_parts WHERE group_id = ?1",
                    params![group_id],
                )?;
                touch(tx, &group_id, now + DONE_TTL_SECS)?;
                tx.execute(
                    "UPDATE chords SET size = NULL, claimed_until = NULL, done_until = ?2
                     WHERE group_id = ?1",
                    params![group_id, now + DONE_TTL_SECS],
                )?;
                Ok(())
            },
            backend_storage,
        )
        .await
    }

    async fn abandon(&self, group_id: &str) -> Result<(), BackendError> {
        let group_id = group_id.to_string();
        blocking(
            &self.shared.db,
            move |conn| {
                conn.execute(
                    "UPDATE chords SET size = NULL WHERE group_id = ?1",
                    params![group_id],
                )
                .map(|_| ())
            },
            backend_storage,
        )
        .await
    }
}
