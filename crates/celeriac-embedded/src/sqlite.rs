//! `sqlite://`: a durable broker and result store in one SQLite file (WAL),
//! shared safely by several processes on one machine. See the crate docs
//! for the design.

mod backend;
mod beat;
mod control;
mod db;
mod open;
mod records;
mod settle;
mod wake;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{BoxError, BrokerError, Delivery, Outgoing, ResultBackend, Transport};
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::Notify;

use self::db::{Db, batched, blocking};
use self::open::OpenError;
use crate::url::{SqliteOptions, parse_sqlite_url};

mod chord;
mod events;

pub use self::backend::SqliteBackend;

/// The claim's pick: the first visible messages of a queue, in claim
/// order (priority, then id), with their revoked flag. It walks
/// `messages_ready` in that order and stops at the LIMIT. The `+` keeps the
/// planner off `messages_visible`: through it, every visible row of the
/// queue, payload included, was read and sorted on each claim, so a drain
/// of n messages cost O(n²) (BENCHMARKS.md, the default broker).
const PICK: &str = "SELECT m.id, m.queue, m.payload, m.deliveries,
       EXISTS (SELECT 1 FROM revoked r
               WHERE r.task_id = m.task_id AND r.expires_at > ?2)
     FROM messages m
     WHERE m.queue = ?1 AND +m.visible_at <= ?2
     ORDER BY m.priority ASC, m.id ASC LIMIT ?3";

fn storage(context: &str, e: BoxError) -> BrokerError {
    BrokerError::storage_in(context, e)
}

fn split_tag(tag: &str) -> Result<(i64, String), BrokerError> {
    let (id, token) = tag
        .split_once(':')
        .ok_or_else(|| BrokerError::NotHeld(tag.to_string()))?;
    let id = id
        .parse::<i64>()
        .map_err(|_| BrokerError::NotHeld(tag.to_string()))?;
    Ok((id, token.to_string()))
}

/// Inserts messages to publish, inside the caller's transaction.
fn insert_messages(tx: &Connection, msgs: &[Outgoing]) -> rusqlite::Result<()> {
    let now = unix_now();
    let mut ins = tx.prepare_cached(
        "INSERT INTO messages (queue, priority, visible_at, tag, task_id, payload, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for m in msgs {
        let visible = m.eta.map_or(now, |e| e.max(now));
        ins.execute(params![
            m.queue,
            m.priority.min(9),
            visible,
            m.tag,
            m.task_id,
            m.payload,
            now
        ])?;
    }
    Ok(())
}

/// The longest wait between two idle looks at the file.
const POLL_MAX: Duration = Duration::from_millis(20);

/// The same, while the file's watch is armed (`wake.rs`): another
/// process's commit wakes the claim at once, and the polls only cover a
/// write the kernel does not report (a network file system).
const WATCHED_POLL_MAX: Duration = Duration::from_millis(100);

/// What an empty claim saw: the database's version and the earliest time
/// a waiting message becomes visible. Until one of them moves, claiming
/// again would find nothing.
#[derive(Debug, Clone, Copy)]
struct Idle {
    version: i64,
    next_visible: f64,
}

/// A durable broker in a SQLite file (`sqlite:///path/to/file.db`).
///
/// # Examples
///
/// ```
/// use celeriac_core::{Message, Outgoing, Transport};
/// use celeriac_embedded::SqliteBroker;
/// use std::time::Duration;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("sqlite://{}/q.db", dir.path().display());
/// let broker = SqliteBroker::open(&url).unwrap();
/// let msg = Message::new("celeriac.add", vec![2.into(), 3.into()], Default::default());
/// broker.publish(Outgoing::from_message(&msg).unwrap()).await.unwrap();
/// // Another handle on the same file, as another process would open it.
/// let other = SqliteBroker::open(&url).unwrap();
/// let got = other.claim("w1", &["celery".into()], 1, Duration::from_secs(1)).await.unwrap();
/// assert_eq!(Message::decode(&got[0].payload).unwrap().id(), msg.id());
/// other.ack(&got[0]).await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct SqliteBroker {
    db: Arc<Db>,
    lease: Duration,
    notify: Notify,
    closed: AtomicBool,
    /// Whether the remote-control tables were created (`control.rs`).
    control_ready: AtomicBool,
    /// Whether the beat tables were created (`beat.rs`).
    beat_ready: AtomicBool,
}

impl SqliteBroker {
    /// The ids of `task_ids` recorded in `table` (`revoked` or
    /// `terminations`) and not yet expired.
    async fn live_ids(
        &self,
        table: &'static str,
        task_ids: &[String],
    ) -> Result<Vec<String>, BrokerError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = task_ids.to_vec();
        blocking(
            &self.db,
            move |conn| {
                let mut q = conn.prepare_cached(&format!(
                    "SELECT 1 FROM {table} WHERE task_id = ?1 AND expires_at > ?2"
                ))?;
                let now = unix_now();
                let mut out = Vec::new();
                for id in ids {
                    if q.exists(params![id, now])? {
                        out.push(id);
                    }
                }
                Ok(out)
            },
            storage,
        )
        .await
    }

    /// Records revokes (and, with `terminate`, termination requests).
    async fn record_revokes(
        &self,
        task_ids: &[String],
        ttl: Duration,
        terminate: bool,
    ) -> Result<(), BrokerError> {
        let ids = task_ids.to_vec();
        let until = unix_now() + ttl.as_secs_f64();
        blocking(
            &self.db,
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "DELETE FROM revoked WHERE expires_at <= ?1",
                    params![unix_now()],
                )?;
                tx.execute(
                    "DELETE FROM terminations WHERE expires_at <= ?1",
                    params![unix_now()],
                )?;
                {
                    let mut ins = tx.prepare_cached(
                        "INSERT INTO revoked (task_id, expires_at) VALUES (?1, ?2)
                         ON CONFLICT(task_id) DO UPDATE SET expires_at = excluded.expires_at",
                    )?;
                    let mut term = tx.prepare_cached(
                        "INSERT INTO terminations (task_id, expires_at) VALUES (?1, ?2)
                         ON CONFLICT(task_id) DO UPDATE SET expires_at = excluded.expires_at",
                    )?;
                    for id in &ids {
                        ins.execute(params![id, until])?;
                        if terminate {
                            term.execute(params![id, until])?;
                        }
                    }
                }
                tx.commit()
            },
            storage,
        )
        .await
    }

    /// Opens (creating if needed) the file named by a `sqlite://` URL.
    pub fn open(url: &str) -> Result<Arc<Self>, BrokerError> {
        let opts = parse_sqlite_url(url)?;
        Self::open_with(&opts)
    }

    /// Opens with parsed options.
    pub fn open_with(opts: &SqliteOptions) -> Result<Arc<Self>, BrokerError> {
        Ok(Arc::new(SqliteBroker {
            db: Db::open(opts).map_err(OpenError::into_broker)?,
            lease: opts.lease,
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            control_ready: AtomicBool::new(false),
            beat_ready: AtomicBool::new(false),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        Path::new(&self.db.path)
    }

    /// Makes waiting claims return and later calls fail.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    /// Claims what is visible now. When nothing is, also says when to look
    /// again ([`Idle`]), read in the same transaction.
    async fn try_claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<Idle>), BrokerError> {
        let consumer = consumer.to_string();
        let queues = queues.to_vec();
        let lease = self.lease.as_secs_f64();
        batched(
            &self.db,
            move |tx| {
                let now = unix_now();
                let mut out = Vec::new();
                {
                    let mut pick = tx.prepare_cached(PICK)?;
                    let mut mark = tx.prepare_cached(
                        "UPDATE messages SET visible_at = ?2, consumer = ?3, claim_token = ?4,
                         deliveries = deliveries + 1 WHERE id = ?1",
                    )?;
                    for q in &queues {
                        let want = max - out.len();
                        if want == 0 {
                            break;
                        }
                        let rows: Vec<(i64, String, Vec<u8>, u32, bool)> = pick
                            .query_map(params![q, now, want as i64], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                            })?
                            .collect::<Result<_, _>>()?;
                        for (id, queue, payload, deliveries, revoked) in rows {
                            let token = uuid::Uuid::new_v4().simple().to_string();
                            mark.execute(params![id, now + lease, consumer, token])?;
                            out.push(Delivery {
                                tag: format!("{id}:{token}"),
                                queue,
                                payload,
                                deliveries: deliveries + 1,
                                redelivered: deliveries > 0,
                                revoked,
                            });
                        }
                    }
                }
                let idle = if out.is_empty() {
                    // Read inside the write transaction: no other process
                    // can commit until it ends, so any commit after it
                    // changes the version we keep.
                    let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
                    let mut next =
                        tx.prepare_cached("SELECT MIN(visible_at) FROM messages WHERE queue = ?1")?;
                    let mut next_visible = f64::INFINITY;
                    for q in &queues {
                        let at: Option<f64> = next.query_row(params![q], |r| r.get(0))?;
                        next_visible = next_visible.min(at.unwrap_or(f64::INFINITY));
                    }
                    Some(Idle {
                        version,
                        next_visible,
                    })
                } else {
                    None
                };
                Ok((out, idle))
            },
            storage,
        )
        .await
    }

    /// `PRAGMA data_version` of this handle's connection: it changes when
    /// another connection (another process) commits. It reads no table and
    /// takes no database lock.
    async fn data_version(&self) -> Result<i64, BrokerError> {
        blocking(
            &self.db,
            |conn| conn.query_row("PRAGMA data_version", [], |r| r.get(0)),
            storage,
        )
        .await
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        sql: &'static str,
        extra: Option<f64>,
    ) -> Result<(), BrokerError> {
        self.check_open()?;
        let (id, token) = split_tag(&delivery.tag)?;
        let tag = delivery.tag.clone();
        let changed = batched(
            &self.db,
            move |conn| match extra {
                Some(x) => conn.execute(sql, params![id, token, x]),
                None => conn.execute(sql, params![id, token]),
            },
            storage,
        )
        .await?;
        if changed == 0 {
            return Err(BrokerError::NotHeld(tag));
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for SqliteBroker {
    fn url(&self) -> String {
        format!("sqlite://{}", self.db.path)
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn batch_settles(&self) -> bool {
        true
    }

    /// Results stored, chord parts joined and messages acked in one
    /// transaction, with a [`SqliteBackend`] on this same file
    /// (`settle.rs`).
    fn settle_with(
        &self,
        backend: &dyn ResultBackend,
    ) -> Option<Arc<dyn celeriac_core::broker::SettleTogether>> {
        settle::joint(self, backend)
    }

    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError> {
        self.publish_batch(vec![msg]).await
    }

    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        self.check_open()?;
        batched(&self.db, move |tx| insert_messages(tx, &msgs), storage).await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = Instant::now() + timeout;
        // This process's publishes and requeues wake us, and so, where the
        // file can be watched, do other processes' commits. Otherwise poll,
        // backing off from 1 ms to 20 ms while idle (100 ms when watched). An idle look only
        // reads `PRAGMA data_version`, and claims again (a write
        // transaction) only when another process has committed or a
        // waiting message (eta, lapsed lease) has become visible.
        let mut backoff = Duration::from_millis(1);
        let mut idle: Option<Idle> = None;
        loop {
            self.check_open()?;
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let changed = self.db.watch.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Armed before an idle look, so that a write after it wakes
            // us; not before a claim, which a busy worker makes often and
            // whose every armed watch would cost a wake-up.
            let watched = idle.is_some() && self.db.watch.arm();
            let due = match &idle {
                None => true,
                Some(i) => unix_now() >= i.next_visible || self.data_version().await? != i.version,
            };
            if due {
                let (got, now_idle) = self.try_claim(consumer, queues, max.max(1)).await?;
                if !got.is_empty() {
                    return Ok(got);
                }
                let first = idle.is_none();
                idle = now_idle;
                if first && idle.is_some() {
                    // Found nothing: arm the watch and look again at once
                    // (the cheap look), rather than wait unarmed.
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wait = backoff.min(deadline - now);
            if let Some(i) = &idle {
                // A waiting message (eta, lapsed lease) due sooner.
                let due_in = (i.next_visible - unix_now()).max(0.0);
                if due_in < wait.as_secs_f64() {
                    wait = Duration::from_secs_f64(due_in);
                }
            }
            tokio::select! {
                _ = &mut notified => {
                    backoff = Duration::from_millis(1);
                    idle = None;
                }
                // Some process wrote: look at the version again.
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {
                    // Watched, the polls are only a fallback, and an idle
                    // worker makes fewer of them.
                    let most = if watched { WATCHED_POLL_MAX } else { POLL_MAX };
                    backoff = (backoff * 2).min(most);
                }
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.settle(
            delivery,
            "DELETE FROM messages WHERE id = ?1 AND claim_token = ?2",
            None,
        )
        .await
    }

    async fn ack_many(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, BrokerError> {
        self.check_open()?;
        let tags: Vec<Option<(i64, String)>> =
            deliveries.iter().map(|d| split_tag(&d.tag).ok()).collect();
        batched(
            &self.db,
            move |tx| {
                let mut held = Vec::with_capacity(tags.len());
                {
                    let mut del = tx.prepare_cached(
                        "DELETE FROM messages WHERE id = ?1 AND claim_token = ?2",
                    )?;
                    for tag in &tags {
                        held.push(match tag {
                            Some((id, token)) => del.execute(params![id, token])? == 1,
                            None => false,
                        });
                    }
                }
                Ok(held)
            },
            storage,
        )
        .await
    }

    async fn renew(&self, deliveries: &[Delivery]) -> Result<(), BrokerError> {
        self.check_open()?;
        let tags: Vec<(i64, String)> = deliveries
            .iter()
            .filter_map(|d| split_tag(&d.tag).ok())
            .collect();
        let lease = self.lease.as_secs_f64();
        batched(
            &self.db,
            move |tx| {
                let until = unix_now() + lease;
                let mut up = tx.prepare_cached(
                    "UPDATE messages SET visible_at = ?3 WHERE id = ?1 AND claim_token = ?2",
                )?;
                for (id, token) in &tags {
                    up.execute(params![id, token, until])?;
                }
                Ok(())
            },
            storage,
        )
        .await
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError> {
        let at = not_before.unwrap_or_else(unix_now);
        self.settle(
            delivery,
            "UPDATE messages SET visible_at = ?3, consumer = NULL, claim_token = NULL
             WHERE id = ?1 AND claim_token = ?2",
            Some(at),
        )
        .await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        let queue = queue.to_string();
        blocking(
            &self.db,
            move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND claim_token IS NULL",
                    params![queue],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as usize)
            },
            storage,
        )
        .await
    }

    async fn queue_len_by_priority(&self, queue: &str) -> Result<Vec<(u8, usize)>, BrokerError> {
        let queue = queue.to_string();
        blocking(
            &self.db,
            move |conn| {
                let mut st = conn.prepare_cached(
                    "SELECT priority, COUNT(*) FROM messages
                     WHERE queue = ?1 AND claim_token IS NULL
                     GROUP BY priority ORDER BY priority",
                )?;
                st.query_map(params![queue], |r| {
                    Ok((
                        r.get::<_, i64>(0)?.clamp(0, 9) as u8,
                        r.get::<_, i64>(1)? as usize,
                    ))
                })?
                .collect()
            },
            storage,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim's pick must walk `messages_ready` in claim order and stop
    /// at its LIMIT; a plan that sorts (a temporary B-tree) reads every
    /// visible message of the queue on each claim.
    #[test]
    fn the_pick_walks_the_ready_index_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::url::parse_sqlite_url(&format!(
            "sqlite://{}",
            dir.path().join("q.db").display()
        ))
        .unwrap();
        let mut conn = open::open_connection(&opts).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..2000 {
            tx.execute(
                "INSERT INTO messages (queue, priority, visible_at, tag, task_id, payload, created_at)
                 VALUES ('q', ?1, ?2, ?3, ?3, x'7b7d', 0)",
                params![i % 3, if i % 2 == 0 { 0.0 } else { 1e12 }, format!("t{i}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        // With statistics too: the planner must not be tempted away.
        for analyzed in [false, true] {
            if analyzed {
                conn.execute_batch("ANALYZE").unwrap();
            }
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {PICK}"))
                .unwrap()
                .query_map(params!["q", 1.0, 8], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("messages_ready"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
