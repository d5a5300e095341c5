//! `SqliteBackend`: the result store in the SQLite file. Results stored
//! in this process wake their waiters directly; those stored by other
//! processes reach a poller that reads only the rows written since its
//! last look (woken sooner by the file's watch, `wake.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{BackendError, BoxError, ResultBackend, ResultMeta, ResultWatch, Waiters};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::db::{Db, batched, blocking};
use super::open::OpenError;
use crate::url::parse_sqlite_url;

/// Results to store, encoded, with their expiry: what
/// [`ResultBackend::store_many`] and the joint settle (`settle.rs`) write.
#[derive(Debug)]
pub(super) struct ResultRows {
    rows: Vec<(String, String, String)>,
    expires: f64,
}

impl ResultRows {
    /// Encodes `metas`, to expire `ttl` from now.
    pub(super) fn of<'a>(
        metas: impl Iterator<Item = &'a ResultMeta>,
        ttl: Duration,
    ) -> Result<Self, BackendError> {
        let mut rows = Vec::new();
        for meta in metas {
            let json =
                serde_json::to_string(meta).map_err(|e| BackendError::Malformed(e.to_string()))?;
            rows.push((meta.task_id.clone(), meta.status.to_string(), json));
        }
        Ok(ResultRows {
            rows,
            expires: unix_now() + ttl.as_secs_f64(),
        })
    }

    /// Writes the rows inside the caller's transaction, numbered in the
    /// order of the file's commits (`seq`, which pollers follow). A stored
    /// SUCCESS is kept until it expires.
    pub(super) fn write(&self, tx: &Connection) -> rusqlite::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let first: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM results", [], |r| {
                r.get(0)
            })?;
        let mut put = tx.prepare_cached(
            "INSERT INTO results (task_id, status, meta, expires_at, seq) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, meta = excluded.meta,
               expires_at = excluded.expires_at, seq = excluded.seq
             WHERE results.status <> 'SUCCESS' OR results.expires_at < ?6",
        )?;
        let now = unix_now();
        for (seq, (task_id, status, json)) in (first..).zip(&self.rows) {
            put.execute(params![task_id, status, json, self.expires, seq, now])?;
        }
        Ok(())
    }
}

/// How often the result poller drops the waiters nobody waits on any
/// more.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

pub(super) fn backend_storage(context: &str, e: BoxError) -> BackendError {
    BackendError::storage_in(context, e)
}

#[derive(Debug)]
pub(super) struct BackendShared {
    pub(super) db: Arc<Db>,
    pub(super) waiters: Waiters,
    poller_running: AtomicBool,
    last_seq: Mutex<i64>,
}

/// A durable result store in a SQLite file (`sqlite:///path/to/file.db`),
/// usually the broker's own file.
///
/// Waiting clients in the storing process are woken directly; results
/// stored by other processes are picked up by a poller that reads only rows
/// written since its last look.
///
/// # Examples
///
/// ```
/// use celeriac_core::{ResultBackend, ResultMeta};
/// use celeriac_embedded::SqliteBackend;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("sqlite://{}/r.db", dir.path().display());
/// let a = SqliteBackend::open(&url).unwrap();
/// let b = SqliteBackend::open(&url).unwrap();
/// let watch = b.watch("t1").await.unwrap();
/// a.store(&ResultMeta::success("t1", 5.into())).await.unwrap();
/// assert_eq!(watch.await.unwrap().result, 5);
/// # });
/// ```
#[derive(Debug)]
pub struct SqliteBackend {
    pub(super) shared: Arc<BackendShared>,
    pub(super) ttl: Duration,
}

impl SqliteBackend {
    /// Opens (creating if needed) the file named by a `sqlite://` URL.
    pub fn open(url: &str) -> Result<Arc<Self>, BackendError> {
        let opts = parse_sqlite_url(url).map_err(|e| BackendError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let (db, last_seq) = Db::open_with_init(&opts, |conn| {
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM results", [], |r| {
                r.get(0)
            })
        })
        .map_err(OpenError::into_backend)?;
        Ok(Arc::new(SqliteBackend {
            shared: Arc::new(BackendShared {
                db,
                waiters: Waiters::default(),
                poller_running: AtomicBool::new(false),
                last_seq: Mutex::new(last_seq),
            }),
            ttl: crate::DEFAULT_RESULT_TTL,
        }))
    }

    fn ensure_poller(&self) {
        let shared = self.shared.clone();
        if shared.poller_running.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(1);
            // Dropped waiters are pruned (a walk over all of them) at most
            // this often, not on every look.
            let mut pruned = Instant::now();
            // Whether the watch is armed for the next look.
            let mut armed = false;
            loop {
                let empty = if pruned.elapsed() >= PRUNE_EVERY {
                    pruned = Instant::now();
                    shared.waiters.pending_ids().is_empty()
                } else {
                    shared.waiters.is_empty()
                };
                if empty {
                    shared.poller_running.store(false, Ordering::SeqCst);
                    // A watcher registered after the emptiness check but
                    // before the flag was cleared would have no poller.
                    if shared.waiters.is_empty()
                        || shared.poller_running.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                }
                let since = *shared.last_seq.lock();
                // Set before the look, so that a write after it wakes us;
                // armed only after a look found nothing (a busy poller
                // would pay a wake-up per look).
                let changed = shared.db.watch.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if armed {
                    shared.db.watch.arm();
                }
                let rows = blocking(
                    &shared.db,
                    move |conn| {
                        let mut st = conn.prepare_cached(
                            "SELECT seq, meta FROM results WHERE seq > ?1 ORDER BY seq LIMIT 10000",
                        )?;
                        st.query_map(params![since], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    },
                    backend_storage,
                )
                .await;
                match rows {
                    Ok(rows) if !rows.is_empty() => {
                        backoff = Duration::from_millis(1);
                        armed = false;
                        let mut last = shared.last_seq.lock();
                        for (seq, meta) in rows {
                            *last = (*last).max(seq);
                            if let Ok(meta) = serde_json::from_str::<ResultMeta>(&meta) {
                                shared.waiters.notify(&meta);
                            }
                        }
                    }
                    // Nothing new: arm the watch and look again at once.
                    Ok(_) if !armed => {
                        armed = true;
                        continue;
                    }
                    Ok(_) => backoff = (backoff * 2).min(Duration::from_millis(20)),
                    Err(e) => {
                        tracing::warn!(error = %e, "result poller failed; retrying");
                        backoff = Duration::from_millis(200);
                    }
                }
                // Woken sooner by a write to the file (another process
                // storing a result).
                tokio::select! {
                    _ = &mut changed => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        });
    }

    /// The JSON document of the one row that `sql` selects by `key` (`?1`)
    /// and that has not expired at the time passed as `?2`, decoded.
    async fn read_live<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<T>, BackendError> {
        let key = key.to_string();
        let raw: Option<String> = blocking(
            &self.shared.db,
            move |conn| {
                conn.query_row(sql, params![key, unix_now()], |r| r.get(0))
                    .optional()
            },
            backend_storage,
        )
        .await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| BackendError::Malformed(e.to_string())))
            .transpose()
    }
}

#[async_trait]
impl ResultBackend for SqliteBackend {
    fn url(&self) -> String {
        format!("sqlite://{}", self.shared.db.path)
    }

    /// False: other processes read results through the file.
    fn is_private(&self) -> bool {
        false
    }

    /// For the broker of the same file, which settles together with it
    /// ([`Transport::settle_with`](celeriac_core::Transport::settle_with)).
    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(self)
    }

    /// Joins in one SQLite transaction per call, across processes (see
    /// [`ChordJoin`](celeriac_core::ChordJoin)).
    fn chord_join(&self) -> Option<&dyn celeriac_core::ChordJoin> {
        Some(self)
    }

    async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        self.store_many(std::slice::from_ref(meta)).await
    }

    async fn store_many(&self, metas: &[ResultMeta]) -> Result<(), BackendError> {
        let rows = ResultRows::of(metas.iter(), self.ttl)?;
        batched(&self.shared.db, move |tx| rows.write(tx), backend_storage).await?;
        for meta in metas {
            self.shared.waiters.notify(meta);
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        self.read_live(
            "SELECT meta FROM results WHERE task_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
            task_id,
        )
        .await
    }

    async fn watch(&self, task_id: &str) -> Result<ResultWatch, BackendError> {
        if let Some(meta) = self.get(task_id).await?.filter(|m| m.status.is_ready()) {
            return Ok(ResultWatch::new(async move { Ok(meta) }));
        }
        let rx = self.shared.waiters.register(task_id);
        if let Some(meta) = self.get(task_id).await?.filter(|m| m.status.is_ready()) {
            return Ok(ResultWatch::new(async move { Ok(meta) }));
        }
        self.ensure_poller();
        Ok(ResultWatch::new(async move {
            rx.await.map_err(|_| BackendError::Closed)
        }))
    }

    /// Registers every waiter, then reads the stored results of all in one
    /// call: a result stored in between is in that read, or reaches the
    /// poller.
    async fn watch_many(&self, task_ids: &[String]) -> Result<Vec<ResultWatch>, BackendError> {
        let waits: Vec<_> = task_ids
            .iter()
            .map(|id| self.shared.waiters.register(id))
            .collect();
        let ids = task_ids.to_vec();
        let stored: Vec<Option<String>> = blocking(
            &self.shared.db,
            move |conn| {
                let mut q = conn.prepare_cached(
                    "SELECT meta FROM results WHERE task_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                )?;
                let now = unix_now();
                ids.iter()
                    .map(|id| q.query_row(params![id, now], |r| r.get(0)).optional())
                    .collect()
            },
            backend_storage,
        )
        .await?;
        let mut out = Vec::with_capacity(waits.len());
        let mut waiting = false;
        for (rx, raw) in waits.into_iter().zip(stored) {
            let meta = raw
                .map(|s| {
                    serde_json::from_str::<ResultMeta>(&s)
                        .map_err(|e| BackendError::Malformed(e.to_string()))
                })
                .transpose()?
                .filter(|m| m.status.is_ready());
            out.push(match meta {
                Some(meta) => ResultWatch::new(async move { Ok(meta) }),
                None => {
                    waiting = true;
                    ResultWatch::new(async move { rx.await.map_err(|_| BackendError::Closed) })
                }
            });
        }
        if waiting {
            self.ensure_poller();
        }
        Ok(out)
    }

    async fn claim_key(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BackendError> {
        let key = key.to_string();
        let task_id = task_id.to_string();
        let ttl = ttl.as_secs_f64();
        blocking(
            &self.shared.db,
            move |conn| {
                let now = unix_now();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let holder: Option<String> = tx
                    .query_row(
                        "SELECT task_id FROM idempotency_keys WHERE key = ?1 AND expires_at > ?2",
                        params![key, now],
                        |r| r.get(0),
                    )
                    .optional()?;
                if holder.is_none() {
                    tx.execute(
                        "INSERT INTO idempotency_keys (key, task_id, expires_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT(key) DO UPDATE SET task_id = excluded.task_id, expires_at = excluded.expires_at",
                        params![key, task_id, now + ttl],
                    )?;
                }
                tx.commit()?;
                Ok(holder)
            },
            backend_storage,
        )
        .await
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let task_id = task_id.to_string();
        blocking(
            &self.shared.db,
            move |conn| {
                conn.execute("DELETE FROM results WHERE task_id = ?1", params![task_id])
                    .map(|_| ())
            },
            backend_storage,
        )
        .await
    }

    /// One row of `group_results`, kept for the result TTL (Celery's
    /// `GroupResult.save`).
    async fn save_group(
        &self,
        group_id: &str,
        meta: &serde_json::Value,
    ) -> Result<(), BackendError> {
        let group_id = group_id.to_string();
        let json = meta.to_string();
        let expires = unix_now() + self.ttl.as_secs_f64();
        blocking(
            &self.shared.db,
            move |conn| {
                let now = unix_now();
                conn.execute(
                    "DELETE FROM group_results WHERE expires_at <= ?1",
                    params![now],
                )?;
                conn.execute(
                    "INSERT INTO group_results (group_id, meta, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(group_id) DO UPDATE SET meta = excluded.meta, expires_at = excluded.expires_at",
                    params![group_id, json, expires],
                )
                .map(|_| ())
            },
            backend_storage,
        )
        .await
    }

    async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        self.read_live(
            "SELECT meta FROM group_results WHERE group_id = ?1 AND expires_at > ?2",
            group_id,
        )
        .await
    }
}
