//! The wake-up of an idle consumer, and the claim that follows it in the
//! same round trip.
//!
//! An idle consumer waits on its first queue's default list with a
//! blocking command on a connection of its own, and the claim script is
//! sent right behind it in one pipeline. Redis holds a blocked client's
//! later commands until the block ends, then runs them at once: the claim
//! runs as soon as a message arrives (or the wait times out), with no
//! round trip between the wake-up and the claim.
//!
//! The wait is `BLMOVE list inbox RIGHT LEFT`: it moves the message it
//! waited for into the consumer's **inbox**,
//! `celeriac.inbox.<consumer id>.<slot>`, a list nobody else pops. Every
//! claim of the consumer takes the inbox first, with the lists, so the
//! message is recorded in `unacked` as any other. `BLMOVE` returns the
//! element it moved, so the claim that follows (when the inbox holds just
//! that one message) leaves its payload out of the reply: a big message
//! crosses the network once, not twice (BENCHMARKS.md, session 6). And
//! one message wakes one consumer, not all the idle ones.
//!
//! Safety:
//!
//! - The inbox is registered (`celeriac.inboxes`: `<consumer id>.<slot>` →
//!   the list it is fed from) in the same pipeline, before the wait. A
//!   message is in an inbox, not yet in `unacked`, only between the wait's
//!   end and the claim's start, which Redis runs back to back; a process
//!   killed right then leaves it there, and once its liveness lease lapses
//!   any live consumer's restore puts it back on its list
//!   (`lua/restore.lua`). A Python worker does not look in inboxes: a
//!   message stranded so would wait for a celeriac consumer.
//! - A wait that failed (or was dropped) may have left a message in the
//!   inbox: until a claim has emptied it again, waits do not use it (they
//!   wait with `BLMOVE list list RIGHT RIGHT`, a rotation that takes
//!   nothing, as before). Neither does a second wait of the same consumer
//!   while one holds it. So a claim that follows a wait through the inbox
//!   finds there either that wait's message alone, or (when another claim
//!   of the consumer took it first) not it; the script leaves a payload out
//!   only when the inbox held exactly one message.

use std::time::Duration;

use celeriac_core::BrokerError;

use super::claim::Attempt;
use super::{RedisBroker, conn_err};

/// The registry of inboxes (without the key prefix).
pub(super) const INBOXES: &str = "celeriac.inboxes";

/// The prefix of an inbox's key (without the key prefix).
pub(super) const INBOX_PREFIX: &str = "celeriac.inbox.";

/// A consumer's inbox: who holds it and whether it may hold a message.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    /// The queue its messages came from: the first queue of the last wait
    /// that used it.
    queue: Option<String>,
    /// A wait holds it now.
    busy: bool,
    /// A wait that used it failed: it may hold a message until a claim
    /// empties it.
    dirty: bool,
    /// Bumped when it becomes dirty: only a claim made after that clears
    /// it.
    epoch: u64,
}

impl Inbox {
    /// Takes the inbox for a wait on `queue`'s list, if it is free and
    /// empty.
    pub(super) fn take(&mut self, queue: Option<&str>) -> bool {
        let Some(queue) = queue else {
            return false;
        };
        if self.busy || self.dirty {
            return false;
        }
        self.busy = true;
        self.queue = Some(queue.to_string());
        true
    }

    /// The queue of the inbox's messages for a claim on `first` (its first
    /// queue) when no wait has used the inbox.
    pub(super) fn queue(&self, first: Option<&str>) -> String {
        self.queue
            .as_deref()
            .or(first)
            .unwrap_or_default()
            .to_string()
    }

    /// The inbox's epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A claim made at `epoch` emptied the inbox.
    pub(super) fn drained(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.dirty = false;
        }
    }

    /// The wait that held the inbox ended; `ok`: with its claim's reply.
    fn release(&mut self, ok: bool) {
        self.busy = false;
        if !ok {
            self.dirty = true;
            self.epoch += 1;
        }
    }
}

/// Gives the inbox back when the wait ends, however it ends (an error, or
/// the claim dropped).
struct Held<'a> {
    broker: &'a RedisBroker,
    consumer: &'a str,
    ok: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.broker.claimers.lock().get_mut(self.consumer) {
            c.inbox.release(self.ok);
        }
    }
}

/// What a wait and its claim got: the claim script's reply, and the
/// message the wait's reply carried into the inbox.
pub(super) type Woken = (Vec<redis::Value>, Option<Vec<u8>>);

impl RedisBroker {
    /// Waits up to `timeout` for a message on `list`, then claims with
    /// `inv`, in one round trip on a dedicated connection (see the module
    /// docs). `None` when the claim script was not loaded (a `SCRIPT
    /// FLUSH`): the caller claims again at once, which loads it.
    pub(super) async fn wait_then_claim(
        &self,
        consumer: &str,
        attempt: &Attempt,
        list: &str,
        timeout: Duration,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<Option<Woken>, BrokerError> {
        let mut held = attempt.wake.then_some(Held {
            broker: self,
            consumer,
            ok: false,
        });
        let mut conn = self.blocker().await?;
        let secs = timeout.as_secs_f64().max(0.01);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if attempt.wake {
            pipe.hset(self.key(INBOXES), &attempt.inbox_field, list)
                .cmd("BLMOVE")
                .arg(list)
                .arg(&attempt.inbox)
                .arg("RIGHT")
                .arg("LEFT");
        } else {
            // A rotation of the last element onto itself: it takes nothing.
            pipe.cmd("BLMOVE")
                .arg(list)
                .arg(list)
                .arg("RIGHT")
                .arg("RIGHT");
        }
        pipe.arg(secs).invoke_script(inv);
        // A failed or silent wait drops its connection; the next wait opens
        // a fresh one.
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.map_err(conn_err)?;
        self.blockers.lock().push(conn);
        let claimed = replies.pop().map(redis::Value::extract_error);
        let woke = replies.pop().map(redis::Value::extract_error);
        let registered = replies.pop().map(redis::Value::extract_error);
        if let Some(Err(e)) = registered {
            return Err(conn_err(e));
        }
        let woke = match woke {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(conn_err(e)),
            None => return Err(BrokerError::storage_msg("a wait's pipeline lost a reply")),
        };
        let raw = match claimed {
            Some(Ok(v)) => redis::from_redis_value(v).map_err(BrokerError::storage)?,
            Some(Err(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                return Ok(None);
            }
            Some(Err(e)) => return Err(conn_err(e)),
            None => return Err(BrokerError::storage_msg("a wait's pipeline lost a reply")),
        };
        if let Some(h) = held.as_mut() {
            h.ok = true;
        }
        let woke = if attempt.wake {
            redis::from_redis_value::<Option<Vec<u8>>>(woke).map_err(BrokerError::storage)?
        } else {
            None
        };
        Ok(Some((raw, woke)))
    }
}
