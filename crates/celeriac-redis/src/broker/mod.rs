//! The Redis broker. See the crate docs for the design; one file per job:
//!
//! - `mod.rs`: the broker handle, publishing, and the [`Transport`] methods
//!   that settle a claimed message (ack, renew, requeue);
//! - `claim.rs`: the claim loop, resumable claims, the liveness lease and
//!   the restore of messages whose holder is gone;
//! - `dead_letters.rs`: the dead-letter store;
//! - `control.rs`: revokes (and Celery's pidbox broadcasts), rate-limit
//!   buckets, the node registry;
//! - `remote.rs`: remote control ([`Control`](celeriac_core::Control)) on
//!   Celery's pidbox wire, and purge.
//! - `events.rs`: Celery's events ([`Events`](celeriac_core::Events)) on
//!   kombu's `celeryev` fanout.
//! - `beat.rs`: the leader lease and fenced publish of `celeriac beat`
//!   ([`BeatStore`](celeriac_core::broker::BeatStore)).
//!
//! The Lua scripts are in `../lua/`, one file per operation.

mod beat;
mod claim;
mod control;
mod dead_letters;
mod delayed;
mod events;
mod remote;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, Delivery, Outgoing, Transport, validate_queue_name};
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::conn::MAX_BATCH;
use crate::liveness::Liveness;
use crate::scripts::Scripts;
use crate::url::{RedisOptions, parse_redis_url};

/// kombu's priority steps and separator.
const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
const SEP: &str = "\x06\x16";

/// A broker on Redis, compatible with kombu's Redis transport.
#[derive(Debug)]
pub struct RedisBroker {
    opts: RedisOptions,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    scripts: Scripts,
    /// This handle itself, for the tasks it spawns (they end with it).
    me: Weak<RedisBroker>,
    /// The consumer's liveness lease.
    liveness: Liveness,
    /// Claim ids and batch records, per consumer name.
    claimers: Mutex<HashMap<String, claim::Claimer>>,
    /// The number of the next claim token.
    next_claim: AtomicU64,
    last_restore: Mutex<Option<Instant>>,
    bound: Mutex<Vec<String>>,
    /// Idle dedicated connections for blocking waits, one per concurrent
    /// claim.
    blockers: Mutex<Vec<redis::aio::MultiplexedConnection>>,
    pidbox_started: AtomicBool,
}

/// A Redis error as a broker error: a connection error, a refused type
/// check (a key holding the wrong kind of value), or a storage error.
fn conn_err(e: redis::RedisError) -> BrokerError {
    if crate::conn::is_connection_error(&e) {
        BrokerError::connection(e)
    } else if let Some(what) = crate::scripts::wrong_type(&e) {
        BrokerError::storage_in(format!("refused: {what}"), e)
    } else {
        BrokerError::storage(e)
    }
}

/// The kombu priority step of a priority (Redis: 0 is the highest).
fn step(priority: u8) -> u8 {
    PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|s| *s <= priority.min(9))
        .unwrap_or(0)
}

/// How long a settle (ack, requeue, dead-letter) keeps trying while Redis
/// restarts or the connection is re-established. A message whose settle
/// fails stays claimed by a live worker, and would wait for the visibility
/// timeout.
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Whether a settle script's code for one message means it is settled: 1
/// (done now), or 2 (held by nobody) when an earlier attempt may have run
/// and lost its reply (that attempt did it).
fn settled(code: i64, retried: bool) -> bool {
    code == 1 || (code == 2 && retried)
}

fn split_tag(tag: &str) -> Result<(&str, &str), BrokerError> {
    tag.rsplit_once('#')
        .ok_or_else(|| BrokerError::NotHeld(tag.to_string()))
}

impl RedisBroker {
    /// A broker for a `redis://` URL. The connection is made on first use
    /// and re-established automatically when it drops.
    pub fn open(url: &str) -> Result<Arc<Self>, BrokerError> {
        let opts = parse_redis_url(url).map_err(|reason| BrokerError::InvalidUrl {
            url: url.split('@').next_back().unwrap_or(url).to_string(),
            reason,
        })?;
        let client = opts.client().map_err(|reason| BrokerError::InvalidUrl {
            url: opts.redacted.clone(),
            reason,
        })?;
        Ok(Arc::new_cyclic(|me| RedisBroker {
            opts,
            client,
            conn: OnceCell::new(),
            scripts: Scripts::new(),
            me: me.clone(),
            liveness: Liveness::new(),
            claimers: Mutex::new(HashMap::new()),
            next_claim: AtomicU64::new(1),
            last_restore: Mutex::new(None),
            bound: Mutex::new(Vec::new()),
            blockers: Mutex::new(Vec::new()),
            pidbox_started: AtomicBool::new(false),
        }))
    }

    async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        self.conn
            .get_or_try_init(|| crate::conn::manager(&self.client))
            .await
            .cloned()
            .map_err(|e| match crate::conn::not_redis(&e, &self.opts.redacted) {
                Some(what) => BrokerError::connection_in(what, e),
                None => conn_err(e),
            })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.opts.prefix)
    }

    /// The list key of `queue` for `priority`.
    fn list_key(&self, queue: &str, priority: u8) -> String {
        match step(priority) {
            0 => self.key(queue),
            s => format!("{}{queue}{SEP}{s}", self.opts.prefix),
        }
    }

    fn bookkeeping(&self) -> [String; 5] {
        [
            self.key("unacked"),
            self.key("unacked_index"),
            self.key("celeriac.claims"),
            self.key("celeriac.deliveries"),
            self.key("celeriac.delayed"),
        ]
    }

    /// Runs a settle script, and runs it again (for up to
    /// [`SETTLE_RETRY_FOR`]) after errors a restart or a reconnect causes:
    /// a lost connection, or a server still loading its data. Returns the
    /// reply and whether an earlier attempt may have run (its reply lost).
    async fn settle<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<(T, bool), BrokerError> {
        let mut conn = self.conn().await?;
        let deadline = Instant::now() + SETTLE_RETRY_FOR;
        let mut delay = Duration::from_millis(50);
        let mut retried = false;
        loop {
            match inv.invoke_async(&mut conn).await {
                Ok(v) => return Ok((v, retried)),
                Err(e) => {
                    let lost = crate::conn::is_connection_error(&e);
                    let busy = matches!(e.retry_method(), redis::RetryMethod::WaitAndRetry);
                    if !(lost || busy) || Instant::now() + delay > deadline {
                        return Err(conn_err(e));
                    }
                    retried |= lost;
                    tracing::debug!(error = %e, retry_in = ?delay, "settling failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Declares `queue` as kombu does, so that Python publishers using the
    /// queue's own exchange route to it.
    async fn bind(&self, conn: &mut ConnectionManager, queue: &str) -> Result<(), BrokerError> {
        if self.bound.lock().iter().any(|q| q == queue) {
            return Ok(());
        }
        let member = format!("{queue}{SEP}{SEP}{queue}");
        let _: i64 = conn
            .sadd(self.key(&format!("_kombu.binding.{queue}")), member)
            .await
            .map_err(conn_err)?;
        self.bound.lock().push(queue.to_string());
        Ok(())
    }

    /// Starts, once, the listener for Celery's remote-control broadcasts
    /// (`app.control.revoke(...)` from Python), which turns revokes into
    /// durable keys that every worker honours, including ones started later.
    fn ensure_pidbox(&self, conn: &ConnectionManager) {
        if self.pidbox_started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(control::pidbox(
            self.client.clone(),
            conn.clone(),
            self.pidbox_channel(),
            self.opts.prefix.clone(),
        ));
    }

    /// Blocks until `list` is non-empty or `timeout` passes, without taking
    /// anything: `BLMOVE list list RIGHT RIGHT` moves the last element to the
    /// end of the same list, which leaves the list as it was. The claim
    /// script runs afterwards, so messages still leave the list only
    /// atomically with their `unacked` record.
    async fn wait_for(&self, list: &str, timeout: Duration) -> Result<(), BrokerError> {
        let pooled = self.blockers.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => crate::conn::blocking(&self.client)
                .await
                .map_err(conn_err)?,
        };
        let secs = timeout.as_secs_f64().max(0.01);
        let r: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
            .arg(list)
            .arg(list)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(secs)
            .query_async(&mut conn)
            .await;
        match r {
            Ok(_) => {
                self.blockers.lock().push(conn);
                Ok(())
            }
            // A failed or silent wait drops its connection; the next wait
            // opens a fresh one.
            Err(e) => Err(conn_err(e)),
        }
    }

    /// Which of `task_ids` have a live key `<prefix><kind><id>` (revokes
    /// and terminations are keys with a TTL).
    async fn live_ids(&self, kind: &str, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = task_ids
            .iter()
            .map(|id| format!("{}{kind}{id}", self.opts.prefix))
            .collect();
        let mut conn = self.conn().await?;
        let found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        Ok(task_ids
            .iter()
            .zip(found)
            .filter(|(_, v)| v.is_some())
            .map(|(id, _)| id.clone())
            .collect())
    }
}

#[async_trait]
impl Transport for RedisBroker {
    fn url(&self) -> String {
        self.opts.redacted.clone()
    }

    fn lease(&self) -> Duration {
        self.opts.visibility_timeout
    }

    fn batch_settles(&self) -> bool {
        true
    }

    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError> {
        self.publish_batch(vec![msg]).await
    }

    /// Publishes as kombu does: `LPUSH` onto the queue's list, also a
    /// message with a future eta when its envelope carries the `eta`
    /// header, so that Python workers get it too (see the `eta` module for
    /// what a celeriac consumer does with it). Only a message whose eta is
    /// known to the broker alone (not in its headers) waits in the
    /// `celeriac.delayed` set instead. All in one pipeline; a queue name
    /// reserved for the broker's bookkeeping ([`validate_queue_name`]) fails
    /// the whole batch with [`BrokerError::InvalidQueue`] before anything is
    /// sent.
    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        if msgs.is_empty() {
            return Ok(());
        }
        for m in &msgs {
            validate_queue_name(&m.queue)?;
        }
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        let now = unix_now();
        for m in &msgs {
            let list = self.list_key(&m.queue, m.priority);
            match m.eta {
                Some(at) if at > now && crate::eta::payload_eta(&m.payload).is_none() => {
                    let payload = String::from_utf8_lossy(&m.payload);
                    let item = serde_json::json!({"k": list, "m": payload}).to_string();
                    pipe.zadd(self.key("celeriac.delayed"), item, at).ignore();
                }
                _ => {
                    pipe.lpush(list, &m.payload).ignore();
                }
            }
        }
        pipe.query_async::<()>(&mut conn).await.map_err(conn_err)
    }

    /// Claims atomically (see `claim.rs`). A queue name reserved for the
    /// broker's bookkeeping fails with [`BrokerError::InvalidQueue`].
    async fn claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.claim_from(consumer, queues, max, timeout).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        match self.ack_many(std::slice::from_ref(delivery)).await?[..] {
            [true] => Ok(()),
            _ => Err(BrokerError::NotHeld(delivery.tag.clone())),
        }
    }

    async fn ack_many(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, BrokerError> {
        let mut held = Vec::with_capacity(deliveries.len());
        if deliveries.is_empty() {
            return Ok(held);
        }
        let [unacked, index, claims, deliveries_key, _] = self.bookkeeping();
        for chunk in deliveries.chunks(MAX_BATCH) {
            // A tag without a token was never ours: it is not held.
            let tags: Vec<Option<(&str, &str)>> =
                chunk.iter().map(|d| split_tag(&d.tag).ok()).collect();
            let mut inv = self.scripts.ack.prepare_invoke();
            inv.key(&unacked)
                .key(&index)
                .key(&claims)
                .key(&deliveries_key);
            for (tag, token) in tags.iter().flatten() {
                inv.arg(*tag).arg(*token);
            }
            let (done, retried): (Vec<i64>, bool) = if tags.iter().any(Option::is_some) {
                self.settle(&inv).await?
            } else {
                (Vec::new(), false)
            };
            let mut done = done.into_iter();
            held.extend(
                tags.iter()
                    .map(|t| t.is_some() && settled(done.next().unwrap_or(0), retried)),
            );
        }
        Ok(held)
    }

    async fn renew(&self, deliveries: &[Delivery]) -> Result<(), BrokerError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        // The liveness lease too, if its task could not renew it lately.
        self.ensure_alive(&mut conn).await?;
        let [_, index, claims, _, _] = self.bookkeeping();
        let mut inv = self.scripts.renew.key(index);
        inv.key(claims).arg(unix_now());
        for d in deliveries {
            let (tag, token) = split_tag(&d.tag)?;
            inv.arg(tag).arg(token);
        }
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
        Ok(())
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError> {
        let (tag, token) = split_tag(&delivery.tag)?;
        let [unacked, index, claims, _, delayed] = self.bookkeeping();
        let priority = payload_priority(&delivery.payload);
        let at = not_before.filter(|t| *t > unix_now()).unwrap_or(0.0);
        let mut inv = self.scripts.requeue.prepare_invoke();
        inv.key(unacked)
            .key(index)
            .key(claims)
            .key(delayed)
            .key(self.list_key(&delivery.queue, priority))
            .arg(tag)
            .arg(token)
            .arg(&delivery.payload)
            .arg(at);
        let (done, retried): (i64, bool) = self.settle(&inv).await?;
        if !settled(done, retried) {
            return Err(BrokerError::NotHeld(delivery.tag.clone()));
        }
        Ok(())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        Ok(self
            .queue_len_by_priority(queue)
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum())
    }

    /// By kombu's priority lists (`Q`, `Q\x06\x163`, `Q\x06\x166`,
    /// `Q\x06\x169`), delayed messages under the list they will move to.
    async fn queue_len_by_priority(&self, queue: &str) -> Result<Vec<(u8, usize)>, BrokerError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for s in PRIORITY_STEPS {
            pipe.llen(self.list_key(queue, s));
        }
        let mut lens: Vec<usize> = pipe.query_async(&mut conn).await.map_err(conn_err)?;
        let keys: Vec<String> = PRIORITY_STEPS
            .iter()
            .map(|s| self.list_key(queue, *s))
            .collect();
        delayed::each_delayed(&mut conn, &self.key("celeriac.delayed"), |d| {
            if let Some(i) = keys.iter().position(|x| x == d.list) {
                lens[i] += 1;
            }
            std::ops::ControlFlow::Continue(())
        })
        .await?;
        Ok(PRIORITY_STEPS
            .into_iter()
            .zip(lens)
            .filter(|(_, n)| *n > 0)
            .collect())
    }
}

/// `properties.priority` of an envelope, or 0.
fn payload_priority(payload: &[u8]) -> u8 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["properties"]["priority"].as_u64())
        .map_or(0, |p| p.min(9) as u8)
}

/// Whether kombu marked the envelope `redelivered` when restoring it.
fn payload_redelivered(payload: &[u8]) -> bool {
    // Cheap pre-check before parsing.
    if !payload.windows(11).any(|w| w == b"redelivered") {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .is_some_and(|v| v["headers"]["redelivered"] == serde_json::Value::Bool(true))
}
