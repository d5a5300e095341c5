//! Remote control through the SQLite file, so that workers and clients in
//! different processes reach each other: a request is a row of
//! `control_requests` that every listener polls for; a reply is a row of
//! `control_replies` for an open mailbox (`control_mailboxes`). Requests
//! are kept one minute, mailboxes (and their replies) one hour at most.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::{REVOKE_TTL, ReplyTo};
use celeriac_core::time::unix_now;
use celeriac_core::{
    BrokerError, Control, ControlInbox, ControlReply, ControlRequest, Revocations,
};
use rusqlite::params;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{SqliteBroker, blocking, storage};

const SCHEMA: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS control_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sent_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control_mailboxes (
    oid TEXT PRIMARY KEY,
    opened_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS control_replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    oid TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS control_replies_oid ON control_replies(oid, id);
COMMIT;
";

/// How often a listener looks for new requests.
const POLL: Duration = Duration::from_millis(200);
/// How often a client looks for replies.
const REPLY_POLL: Duration = Duration::from_millis(25);
/// How long a request is kept for listeners to see.
const KEEP_REQUESTS: f64 = 60.0;
/// How long an abandoned mailbox is kept.
const KEEP_MAILBOXES: f64 = 3600.0;

impl SqliteBroker {
    /// Creates the control tables, once per handle.
    async fn control_schema(&self) -> Result<(), BrokerError> {
        if self.control_ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        blocking(&self.db, |conn| conn.execute_batch(SCHEMA), storage).await?;
        self.control_ready.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn request_row(r: &ControlRequest) -> String {
    json!({"request": r, "clock": r.clock, "expires": r.expires}).to_string()
}

fn request_of(row: &str) -> Option<ControlRequest> {
    let v: Value = serde_json::from_str(row).ok()?;
    let mut r: ControlRequest = serde_json::from_value(v["request"].clone()).ok()?;
    r.clock = v["clock"].as_u64().unwrap_or(0);
    r.expires = v["expires"].as_f64().unwrap_or(0.0);
    Some(r)
}

fn reply_row(r: &ControlReply) -> String {
    json!({"ticket": r.ticket, "clock": r.clock, "body": r.body}).to_string()
}

fn reply_of(row: &str) -> Option<ControlReply> {
    let v: Value = serde_json::from_str(row).ok()?;
    Some(ControlReply {
        ticket: v["ticket"].as_str()?.to_string(),
        clock: v["clock"].as_u64().unwrap_or(0),
        body: v["body"].as_object().cloned().unwrap_or_else(Map::new),
    })
}

#[async_trait]
impl Control for SqliteBroker {
    /// Writes `request` for every listener; a `revoke` is also recorded,
    /// as [`Revocations::revoke`] does.
    async fn broadcast(&self, request: &ControlRequest) -> Result<(), BrokerError> {
        self.check_open()?;
        self.control_schema().await?;
        if let Some((ids, terminate)) = request.revoke() {
            if terminate {
                self.revoke_terminate(&ids, REVOKE_TTL).await?;
            } else {
                self.revoke(&ids, REVOKE_TTL).await?;
            }
        }
        let row = request_row(request);
        blocking(
            &self.db,
            move |conn| {
                let now = unix_now();
                conn.execute(
                    "DELETE FROM control_requests WHERE sent_at < ?1",
                    params![now - KEEP_REQUESTS],
                )?;
                conn.execute(
                    "INSERT INTO control_requests (sent_at, body) VALUES (?1, ?2)",
                    params![now, row],
                )?;
                Ok(())
            },
            storage,
        )
        .await
    }

    async fn listen(&self, _node: &str) -> Result<ControlInbox, BrokerError> {
        self.check_open()?;
        self.control_schema().await?;
        let start: i64 = blocking(
            &self.db,
            |conn| {
                conn.query_row(
                    "SELECT COALESCE(MAX(id), 0) FROM control_requests",
                    [],
                    |r| r.get(0),
                )
            },
            storage,
        )
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let db = self.db.clone();
        tokio::spawn(async move {
            let mut last = start;
            while !tx.is_closed() {
                tokio::time::sleep(POLL).await;
                let rows = blocking(
                    &db,
                    move |conn| {
                        let mut st = conn.prepare_cached(
                            "SELECT id, body FROM control_requests WHERE id > ?1 ORDER BY id",
                        )?;
                        st.query_map(params![last], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    },
                    storage,
                )
                .await;
                match rows {
                    Ok(rows) => {
                        for (id, body) in rows {
                            last = last.max(id);
                            match request_of(&body) {
                                Some(r) => {
                                    let _ = tx.send(r);
                                }
                                None => tracing::warn!(id, "ignoring a malformed control request"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read control requests"),
                }
            }
        });
        Ok(ControlInbox::new(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        )))
    }

    async fn reply(&self, to: &ReplyTo, reply: &ControlReply) -> Result<(), BrokerError> {
        self.control_schema().await?;
        let (oid, row) = (to.routing_key.clone(), reply_row(reply));
        blocking(
            &self.db,
            move |conn| {
                conn.execute(
                    "INSERT INTO control_replies (oid, body)
                     SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM control_mailboxes WHERE oid = ?1)",
                    params![oid, row],
                )?;
                Ok(())
            },
            storage,
        )
        .await
    }

    async fn open_replies(&self, oid: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        self.control_schema().await?;
        let oid = oid.to_string();
        blocking(
            &self.db,
            move |conn| {
                let now = unix_now();
                let tx = conn.transaction()?;
                tx.execute(
                    "DELETE FROM control_replies WHERE oid IN
                     (SELECT oid FROM control_mailboxes WHERE opened_at < ?1)",
                    params![now - KEEP_MAILBOXES],
                )?;
                tx.execute(
                    "DELETE FROM control_mailboxes WHERE opened_at < ?1",
                    params![now - KEEP_MAILBOXES],
                )?;
                tx.execute(
                    "INSERT OR REPLACE INTO control_mailboxes (oid, opened_at) VALUES (?1, ?2)",
                    params![oid, now],
                )?;
                tx.commit()
            },
            storage,
        )
        .await
    }

    async fn next_replies(
        &self,
        oid: &str,
        wait: Duration,
    ) -> Result<Vec<ControlReply>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let key = oid.to_string();
            let rows: Vec<String> = blocking(
                &self.db,
                move |conn| {
                    let tx = conn.transaction()?;
                    let rows = {
                        let mut st = tx.prepare_cached(
                            "SELECT body FROM control_replies WHERE oid = ?1 ORDER BY id",
                        )?;
                        st.query_map(params![key], |r| r.get::<_, String>(0))?
                            .collect::<Result<Vec<_>, _>>()?
                    };
                    if !rows.is_empty() {
                        tx.execute("DELETE FROM control_replies WHERE oid = ?1", params![key])?;
                    }
                    tx.commit()?;
                    Ok(rows)
                },
                storage,
            )
            .await?;
            if !rows.is_empty() {
                return Ok(rows.iter().filter_map(|r| reply_of(r)).collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep(REPLY_POLL.min(deadline - now)).await;
        }
    }

    async fn close_replies(&self, oid: &str) -> Result<(), BrokerError> {
        let oid = oid.to_string();
        blocking(
            &self.db,
            move |conn| {
                conn.execute("DELETE FROM control_mailboxes WHERE oid = ?1", params![oid])?;
                conn.execute("DELETE FROM control_replies WHERE oid = ?1", params![oid])?;
                Ok(())
            },
            storage,
        )
        .await
    }

    async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        self.check_open()?;
        let queue = queue.to_string();
        blocking(
            &self.db,
            move |conn| {
                conn.execute(
                    "DELETE FROM messages WHERE queue = ?1 AND claim_token IS NULL",
                    params![queue],
                )
            },
            storage,
        )
        .await
    }

    /// The unclaimed messages of `queues` not visible yet (an eta, or a
    /// deferral such as a retry's countdown), soonest first.
    async fn delayed(
        &self,
        queues: &[String],
        limit: usize,
    ) -> Result<Vec<(f64, String, Vec<u8>)>, BrokerError> {
        self.check_open()?;
        let queues = queues.to_vec();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        blocking(
            &self.db,
            move |conn| {
                let mut out = Vec::new();
                let mut stmt = conn.prepare_cached(
                    "SELECT visible_at, queue, payload FROM messages
                     WHERE queue = ?1 AND claim_token IS NULL AND visible_at > ?2
                     ORDER BY visible_at LIMIT ?3",
                )?;
                let now = unix_now();
                for q in &queues {
                    let rows = stmt.query_map(params![q, now, limit], |r| {
                        Ok((
                            r.get::<_, f64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    })?;
                    for row in rows {
                        out.push(row?);
                    }
                }
                out.sort_by(|a, b| a.0.total_cmp(&b.0));
                out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                Ok(out)
            },
            storage,
        )
        .await
    }
}
