//! The claim loop, and what makes claimed messages come back when their
//! holder is gone.
//!
//! - **Resumable claims.** Each claim has a token, `<consumer id>:<n>`,
//!   and the claim script records the batch it took (tags, queues and
//!   lengths, not payloads) in the claim table `celeriac.claims`, under the
//!   consumer name's field `\0celeriac-batch:<consumer id>.<slot>` (the
//!   next claim overwrites it; a dead consumer's are removed with its
//!   claims). When a claim fails (a broker restart or a network cut lost
//!   the reply after the script ran), the next claim of that consumer
//!   reuses the token and asks to resume: the script then returns the
//!   recorded batch, the messages still held under that token, instead of
//!   taking new ones. Without it the batch sat in `unacked` with no owner
//!   until the visibility timeout (an hour).
//! - **Liveness.** See [`crate::liveness`]: the consumer's lease is
//!   renewed by a task of its own; claims need a fresh lease.
//! - **Restore.** At most every [`RENEW_EVERY`] (sooner with a short
//!   visibility timeout), a claim first gives back messages whose lease
//!   lapsed and the messages of consumers whose liveness lease lapsed.
//!
//! Per claim, this costs the script four `TYPE` calls (the bookkeeping
//! keys it writes: `unacked`, `unacked_index`, `celeriac.claims`,
//! `celeriac.deliveries`; the delayed set is checked by its read and each
//! list by its pop) and, when it took messages, one more field in the claim
//! table's `HSET` (the batch record, encoded with cjson). No extra round
//! trip, no extra key. A resumed claim costs one `HGET` more.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, Delivery, validate_queue_name};
use redis::aio::ConnectionManager;

use super::{MAX_BATCH, PRIORITY_STEPS, RedisBroker, SEP, conn_err, payload_redelivered};
use crate::liveness::{LEASE, RENEW_EVERY};

/// A consumer name's claim state in one broker handle.
#[derive(Debug)]
pub(super) struct Claimer {
    /// Its batch key's number, unique within the handle.
    slot: usize,
    /// The token of a claim that failed (its reply may have been lost):
    /// the next claim resumes it.
    pending: Option<String>,
}

/// The prefix of the claim table's fields that hold batch records (a
/// delivery tag never starts with a NUL).
const BATCH_FIELD: &str = "\0celeriac-batch:";

/// The token of one claim, whether it resumes a failed one, and the field
/// of its batch record.
struct Attempt {
    token: String,
    resume: bool,
    record: String,
}

impl RedisBroker {
    pub(super) async fn claim_from(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        for q in queues {
            validate_queue_name(q)?;
        }
        let mut conn = self.conn().await?;
        for q in queues {
            self.bind(&mut conn, q).await?;
        }
        self.ensure_pidbox(&conn);
        let deadline = Instant::now() + timeout;
        // The first queue's default list is watched with a blocking wait;
        // the others are checked by the claim after each wait.
        let watched = queues.first().map(|q| self.list_key(q, 0));
        loop {
            self.ensure_alive(&mut conn).await?;
            self.maybe_restore(&mut conn).await?;
            let attempt = self.attempt(consumer);
            let mut inv = self.scripts.claim.prepare_invoke();
            for k in self.bookkeeping() {
                inv.key(k);
            }
            inv.arg(unix_now())
                .arg(max.clamp(1, MAX_BATCH))
                .arg(&attempt.token)
                .arg(&self.opts.prefix)
                .arg(if attempt.resume { "1" } else { "0" })
                .arg(&attempt.record)
                .arg(SEP);
            for s in PRIORITY_STEPS {
                for q in queues {
                    inv.key(self.list_key(q, s));
                    inv.arg(q);
                }
            }
            // On an error the attempt stays pending: the next claim of this
            // consumer resumes it.
            let raw: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
            self.settled(consumer);
            let (resumed, out) = parse_claim(&raw, &attempt.token)?;
            if resumed {
                tracing::info!(
                    count = out.len(),
                    "resumed a claim whose reply was lost: its batch is delivered now"
                );
            }
            if !out.is_empty() {
                return Ok(self.defer_early(out).await);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wait = (deadline - now).min(crate::conn::BLOCK_FOR);
            match &watched {
                Some(list) => self.wait_for(list, wait).await?,
                None => tokio::time::sleep(wait).await,
            }
        }
    }

    /// The token for the next claim of `consumer`: the pending one (a
    /// claim that failed) to resume, or a new one, now pending until its
    /// reply arrives.
    fn attempt(&self, consumer: &str) -> Attempt {
        let mut claimers = self.claimers.lock();
        let slot = claimers.len();
        let c = claimers.entry(consumer.to_string()).or_insert(Claimer {
            slot,
            pending: None,
        });
        let record = format!("{BATCH_FIELD}{}.{}", self.liveness.id(), c.slot);
        if let Some(token) = &c.pending {
            return Attempt {
                token: token.clone(),
                resume: true,
                record,
            };
        }
        let n = self.next_claim.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}:{n}", self.liveness.id());
        c.pending = Some(token.clone());
        Attempt {
            token,
            resume: false,
            record,
        }
    }

    /// The claim of `consumer` got its reply: nothing to resume.
    fn settled(&self, consumer: &str) {
        if let Some(c) = self.claimers.lock().get_mut(consumer) {
            c.pending = None;
        }
    }

    /// Makes sure the liveness lease is fresh before claiming under it,
    /// and that the task renewing it runs.
    pub(super) async fn ensure_alive(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<(), BrokerError> {
        if !self.liveness.fresh() {
            self.keep_alive(conn).await?;
        }
        self.liveness
            .ensure_task(|| tokio::spawn(keep_alive_loop(self.me.clone())));
        Ok(())
    }

    /// Renews the liveness lease: `celeriac.alive.<id>` with a TTL of
    /// [`LEASE`], and membership of `celeriac.consumers`.
    async fn keep_alive(&self, conn: &mut ConnectionManager) -> Result<(), BrokerError> {
        let sent = Instant::now();
        let r = redis::pipe()
            .atomic()
            .pset_ex(self.key(&self.liveness.key()), 1, LEASE.as_millis() as u64)
            .ignore()
            .sadd(self.key("celeriac.consumers"), self.liveness.id())
            .ignore()
            .query_async::<()>(conn)
            .await;
        match r {
            Ok(()) => {
                self.liveness.renewed(sent);
                Ok(())
            }
            Err(e) => {
                let e = conn_err(e);
                if self.liveness.failed() {
                    tracing::warn!(error = %e, "could not renew the consumer's liveness lease; retrying");
                }
                Err(e)
            }
        }
    }

    /// Restores messages whose holder is gone (see `lua/restore.lua`), at
    /// most every [`RENEW_EVERY`], or a quarter of the visibility timeout
    /// when that is shorter.
    async fn maybe_restore(&self, conn: &mut ConnectionManager) -> Result<(), BrokerError> {
        let every =
            (self.opts.visibility_timeout / 4).clamp(Duration::from_millis(50), RENEW_EVERY);
        {
            let mut last = self.last_restore.lock();
            if last.is_some_and(|t| t.elapsed() < every) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let [unacked, index, claims, _, _] = self.bookkeeping();
        let now = unix_now();
        let cutoff = now - self.opts.visibility_timeout.as_secs_f64();
        let judge = self.liveness.may_judge();
        let (lapsed, orphaned, dead): (i64, i64, i64) = self
            .scripts
            .restore
            .key(unacked)
            .key(index)
            .key(claims)
            .key(self.key("unacked_mutex"))
            .key(self.key("celeriac.consumers"))
            .arg(cutoff)
            .arg(1000)
            .arg(&self.opts.prefix)
            .arg(SEP)
            .arg(if judge { "1" } else { "0" })
            .arg(now)
            .arg(BATCH_FIELD)
            .invoke_async(conn)
            .await
            .map_err(conn_err)?;
        if lapsed > 0 {
            tracing::warn!(
                restored = lapsed,
                "restored messages whose lease lapsed (their worker died or stalled)"
            );
        }
        if orphaned > 0 {
            tracing::warn!(
                restored = orphaned,
                consumers = dead,
                "restored messages of consumers whose liveness lease lapsed (killed, or cut off from Redis)"
            );
        }
        Ok(())
    }
}

/// Renews the lease every [`RENEW_EVERY`] while the broker handle lives.
async fn keep_alive_loop(me: std::sync::Weak<RedisBroker>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Some(broker) = me.upgrade() else {
            return;
        };
        let Ok(mut conn) = broker.conn().await else {
            broker.liveness.failed();
            continue;
        };
        // A failure is logged once per outage by keep_alive.
        let _ = broker.keep_alive(&mut conn).await;
    }
}

/// The claim script's reply: whether it resumed a batch, and the
/// deliveries.
fn parse_claim(raw: &[redis::Value], token: &str) -> Result<(bool, Vec<Delivery>), BrokerError> {
    let Some((flag, rest)) = raw.split_first() else {
        return Ok((false, Vec::new()));
    };
    let resumed: i64 = redis::from_redis_value_ref(flag).map_err(BrokerError::storage)?;
    let mut out = Vec::with_capacity(rest.len() / 5);
    for chunk in rest.chunks_exact(5) {
        let queue: String = redis::from_redis_value_ref(&chunk[0]).map_err(BrokerError::storage)?;
        let payload: Vec<u8> =
            redis::from_redis_value_ref(&chunk[1]).map_err(BrokerError::storage)?;
        let tag: String = redis::from_redis_value_ref(&chunk[2]).map_err(BrokerError::storage)?;
        let count: u32 = redis::from_redis_value_ref(&chunk[3]).map_err(BrokerError::storage)?;
        let revoked: i64 = redis::from_redis_value_ref(&chunk[4]).map_err(BrokerError::storage)?;
        let redelivered = count > 1 || payload_redelivered(&payload);
        out.push(Delivery {
            tag: format!("{tag}#{token}"),
            queue,
            payload,
            deliveries: count,
            redelivered,
            revoked: revoked == 1,
        });
    }
    Ok((resumed == 1, out))
}
