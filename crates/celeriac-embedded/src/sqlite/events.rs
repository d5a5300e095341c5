//! Events on `sqlite://`: a capped table (the last [`KEEP`] event
//! messages) that subscribers tail, so that `celeriac events` in one
//! process sees the workers of the others.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::BrokerError;
use celeriac_core::broker::{EventMessage, EventStream, Events};
use celeriac_core::time::unix_now;
use rusqlite::{TransactionBehavior, params};

use super::{Db, SqliteBroker, blocking, storage};

/// Event messages kept; older ones are deleted as new ones come.
pub(super) const KEEP: i64 = 10_000;

/// How often a subscriber looks for new event messages.
const POLL: Duration = Duration::from_millis(200);

/// Event messages read per look.
const PAGE: i64 = 1_000;

#[async_trait]
impl Events for SqliteBroker {
    async fn send_events(&self, messages: &[EventMessage]) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let messages = messages.to_vec();
        blocking(
            &self.db,
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut ins = tx.prepare_cached(
                        "INSERT INTO events (sent_at, routing_key, hostname, body) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    let now = unix_now();
                    for m in &messages {
                        ins.execute(params![now, m.routing_key, m.hostname, m.body])?;
                    }
                }
                let last = tx.last_insert_rowid();
                tx.prepare_cached("DELETE FROM events WHERE id <= ?1")?
                    .execute(params![last - KEEP])?;
                tx.commit()
            },
            storage,
        )
        .await
    }

    async fn subscribe_events(&self) -> Result<EventStream, BrokerError> {
        let after: i64 = blocking(
            &self.db,
            |conn| conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0)),
            storage,
        )
        .await?;
        let tail = Tail {
            db: self.db.clone(),
            after,
            ready: std::collections::VecDeque::new(),
            first: true,
        };
        Ok(Box::pin(futures::stream::unfold(
            tail,
            |mut t| async move {
                loop {
                    if let Some(m) = t.ready.pop_front() {
                        return Some((Ok(m), t));
                    }
                    if !std::mem::take(&mut t.first) {
                        tokio::time::sleep(POLL).await;
                    }
                    if let Err(e) = t.read().await {
                        return Some((Err(e), t));
                    }
                }
            },
        )))
    }
}

/// A subscriber's place in the table.
struct Tail {
    db: Arc<Db>,
    /// The id of the last event message read.
    after: i64,
    ready: std::collections::VecDeque<EventMessage>,
    /// Whether the first look is still to come (it does not wait).
    first: bool,
}

impl Tail {
    /// Reads the event messages after `after`.
    async fn read(&mut self) -> Result<(), BrokerError> {
        let after = self.after;
        let rows: Vec<(i64, EventMessage)> = blocking(
            &self.db,
            move |conn| {
                let mut q = conn.prepare_cached(
                    "SELECT id, routing_key, hostname, body FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                q.query_map(params![after, PAGE], |r| {
                    Ok((
                        r.get(0)?,
                        EventMessage {
                            routing_key: r.get(1)?,
                            hostname: r.get(2)?,
                            body: r.get(3)?,
                        },
                    ))
                })?
                .collect()
            },
            storage,
        )
        .await?;
        for (id, m) in rows {
            self.after = id;
            self.ready.push_back(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn msg(i: i64) -> EventMessage {
        EventMessage {
            routing_key: "worker.heartbeat".into(),
            hostname: format!("w{i}@h"),
            body: format!("{{\"n\": {i}}}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn another_handle_tails_what_is_sent_after_it_subscribes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ev.db", dir.path().display());
        let sender = SqliteBroker::open(&url).unwrap();
        let monitor = SqliteBroker::open(&url).unwrap();
        sender.send_events(&[msg(0)]).await.unwrap();
        let mut s = monitor.subscribe_events().await.unwrap();
        sender.send_events(&[msg(1), msg(2)]).await.unwrap();
        sender.send_events(&[msg(3)]).await.unwrap();
        for i in 1..=3 {
            let got = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .unwrap();
            assert_eq!(got, msg(i));
        }
    }

    #[tokio::test]
    async fn the_table_keeps_only_the_most_recent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ev.db", dir.path().display());
        let broker = SqliteBroker::open(&url).unwrap();
        let batch: Vec<_> = (0..KEEP + 50).map(msg).collect();
        broker.send_events(&batch).await.unwrap();
        broker.send_events(&[msg(-1)]).await.unwrap();
        let (count, min): (i64, i64) = blocking(
            &broker.db,
            |c| {
                c.query_row("SELECT COUNT(*), MIN(id) FROM events", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            },
            storage,
        )
        .await
        .unwrap();
        assert_eq!(count, KEEP);
        assert_eq!(min, 52, "the oldest 51 are gone");
    }
}
