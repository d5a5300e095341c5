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
//! - **Waits.** An idle consumer's blocking wait and the claim after it
//!   go in one round trip; see `wake.rs`.
//!
//! Per claim, this costs the script four `TYPE` calls (the bookkeeping
//! keys it writes: `unacked`, `unacked_index`, `celeriac.claims`,
//! `celeriac.deliveries`; the delayed set is checked by its read and each
//! list by its pop), one pop of the consumer's inbox (usually empty; one
//! `LLEN` more after a wait that moved a message there) and, when it took
//! messages, one more field in the claim table's `HSET` (the batch record,
//! encoded with cjson). No extra round trip. A resumed claim costs one
//! `HGET` more.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, Delivery, validate_queue_name};
use redis::aio::ConnectionManager;

use super::wake::INBOX_PREFIX;
use super::{MAX_BATCH, PRIORITY_STEPS, RedisBroker, SEP, conn_err, payload_redelivered};
use crate::liveness::{LEASE, RENEW_EVERY};

/// A consumer name's claim state in one broker handle.
#[derive(Debug)]
pub(super) struct Claimer {
    /// Its batch key's and its inbox's number, unique within the handle.
    slot: usize,
    /// The token of a claim that failed (its reply may have been lost):
    /// the next claim resumes it.
    pending: Option<String>,
    /// Its inbox (see `wake.rs`).
    pub(super) inbox: super::wake::Inbox,
    /// When its last claim found every list empty (it took fewer than it
    /// could).
    emptied: Option<Instant>,
}

/// How soon after a claim that found every list empty the next claim of
/// the consumer starts with its wait instead of a claim of its own.
const JUST_EMPTIED: Duration = Duration::from_millis(2);

/// The prefix of the claim table's fields that hold batch records (a
/// delivery tag never starts with a NUL).
const BATCH_FIELD: &str = "\0celeriac-batch:";

/// The token of one claim, whether it resumes a failed one, the field of
/// its batch record, and its consumer's inbox.
pub(super) struct Attempt {
    token: String,
    resume: bool,
    record: String,
    /// The inbox's field in the registry (`<consumer id>.<slot>`).
    pub(super) inbox_field: String,
    /// The inbox's key.
    pub(super) inbox: String,
    /// The queue the inbox's messages came from.
    inbox_queue: String,
    /// Whether the wait before this claim moves its message into the
    /// inbox (it holds the inbox; see `wake.rs`).
    pub(super) wake: bool,
    /// The inbox's epoch when the attempt was made.
    pub(super) epoch: u64,
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
        let max = max.clamp(1, MAX_BATCH);
        // The first queue's default list is watched with a blocking wait;
        // the others are checked by the claim after each wait.
        let watched = queues.first().map(|q| self.list_key(q, 0));
        // How long the next claim waits first (none: it claims at once).
        // Right after a claim that found every list empty, the claim starts
        // with the wait (which returns at once if the watched list has a
        // message): a claim of its own would find nothing, and would run
        // on the shared connection ahead of the settles of the tasks just
        // claimed.
        let mut wait = self
            .just_emptied(consumer)
            .then(|| timeout.min(crate::conn::BLOCK_FOR))
            .filter(|w| *w >= Duration::from_millis(10));
        loop {
            self.ensure_alive(&mut conn).await?;
            self.maybe_restore(&mut conn).await?;
            let waiting = wait.take().zip(watched.as_deref());
            let attempt = self.attempt(consumer, queues, waiting.is_some());
            let inv = self.claim_invocation(&attempt, queues, max);
            // On an error the attempt stays pending: the next claim of this
            // consumer resumes it.
            let (raw, woke) = match waiting {
                Some((block, list)) => match self
                    .wait_then_claim(consumer, &attempt, list, block, &inv)
                    .await?
                {
                    Some(got) => got,
                    // The script was not loaded: claim at once, which loads
                    // it (and takes what the wait moved to the inbox).
                    None => continue,
                },
                None => (inv.invoke_async(&mut conn).await.map_err(conn_err)?, None),
            };
            let (resumed, out) = parse_claim(&raw, &attempt.token, woke)?;
            // A new claim that took fewer than it could emptied the inbox.
            self.settled(consumer, &attempt, !resumed && out.len() < max);
            if !out.is_empty() && !resumed && out.len() < max {
                self.set_emptied(consumer);
            }
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
            let pause = (deadline - now).min(crate::conn::BLOCK_FOR);
            if watched.is_some() {
                wait = Some(pause);
            } else {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// The claim script's invocation for `attempt`: the bookkeeping keys,
    /// the inbox, then every queue's lists in priority order.
    fn claim_invocation<'a>(
        &'a self,
        attempt: &Attempt,
        queues: &[String],
        max: usize,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = self.scripts.claim.prepare_invoke();
        for k in self.bookkeeping() {
            inv.key(k);
        }
        inv.arg(unix_now())
            .arg(max)
            .arg(&attempt.token)
            .arg(&self.opts.prefix)
            .arg(if attempt.resume { "1" } else { "0" })
            .arg(&attempt.record)
            .arg(SEP)
            .arg(if attempt.wake { "1" } else { "0" });
        inv.key(&attempt.inbox).arg(&attempt.inbox_queue);
        for s in PRIORITY_STEPS {
            for q in queues {
                inv.key(self.list_key(q, s));
                inv.arg(q);
            }
        }
        inv
    }

    /// The next claim of `consumer`: the pending token (a claim that
    /// failed) to resume, or a new one, now pending until its reply
    /// arrives. `waiting`: a blocking wait goes first, which takes the
    /// consumer's inbox if it is free and empty.
    fn attempt(&self, consumer: &str, queues: &[String], waiting: bool) -> Attempt {
        let mut claimers = self.claimers.lock();
        let slot = claimers.len();
        let c = claimers.entry(consumer.to_string()).or_insert(Claimer {
            slot,
            pending: None,
            inbox: Default::default(),
            emptied: None,
        });
        let id = self.liveness.id();
        let record = format!("{BATCH_FIELD}{id}.{}", c.slot);
        let inbox_field = format!("{id}.{}", c.slot);
        let wake = waiting && c.inbox.take(queues.first().map(String::as_str));
        let (token, resume) = match &c.pending {
            Some(token) => (token.clone(), true),
            None => {
                let n = self.next_claim.fetch_add(1, Ordering::Relaxed);
                let token = format!("{id}:{n}");
                c.pending = Some(token.clone());
                (token, false)
            }
        };
        Attempt {
            token,
            resume,
            record,
            inbox: self.key(&format!("{INBOX_PREFIX}{inbox_field}")),
            inbox_field,
            inbox_queue: c.inbox.queue(queues.first().map(String::as_str)),
            wake,
            epoch: c.inbox.epoch(),
        }
    }

    /// Whether the last claim of `consumer` found every list empty just
    /// now (within [`JUST_EMPTIED`]).
    fn just_emptied(&self, consumer: &str) -> bool {
        self.claimers
            .lock()
            .get(consumer)
            .and_then(|c| c.emptied)
            .is_some_and(|t| t.elapsed() < JUST_EMPTIED)
    }

    fn set_emptied(&self, consumer: &str) {
        if let Some(c) = self.claimers.lock().get_mut(consumer) {
            c.emptied = Some(Instant::now());
        }
    }

    /// The claim of `consumer` got its reply: nothing to resume; `drained`:
    /// it emptied the inbox.
    fn settled(&self, consumer: &str, attempt: &Attempt, drained: bool) {
        if let Some(c) = self.claimers.lock().get_mut(consumer) {
            c.pending = None;
            if drained {
                c.inbox.drained(attempt.epoch);
            }
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
            .key(self.key(super::wake::INBOXES))
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
/// deliveries. `woke`: the message the wait's reply carried, which the
/// script leaves out (it sends its length instead).
fn parse_claim(
    raw: &[redis::Value],
    token: &str,
    mut woke: Option<Vec<u8>>,
) -> Result<(bool, Vec<Delivery>), BrokerError> {
    let Some((flag, rest)) = raw.split_first() else {
        return Ok((false, Vec::new()));
    };
    let resumed: i64 = redis::from_redis_value_ref(flag).map_err(BrokerError::storage)?;
    let mut out = Vec::with_capacity(rest.len() / 5);
    for chunk in rest.chunks_exact(5) {
        let queue: String = redis::from_redis_value_ref(&chunk[0]).map_err(BrokerError::storage)?;
        let payload: Vec<u8> = match &chunk[1] {
            // The message the wait's reply carried. Anything else is a
            // reply this handle cannot read: the claim fails, and the next
            // one resumes its batch (with every payload).
            redis::Value::Int(len) => woke
                .take()
                .filter(|m| i64::try_from(m.len()) == Ok(*len))
                .ok_or_else(|| {
                    BrokerError::storage_msg("the claim left out a message the wait did not carry")
                })?,
            v => redis::from_redis_value_ref(v).map_err(BrokerError::storage)?,
        };
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
