//! Settle: carries out a [`Disposition`], and is the only module of the
//! worker that changes a message's fate in the broker or stores a result
//! (`ack`, `ack_many`, `requeue`, `dead_letter`, `store`, `store_many`, and
//! publishing a retry).
//!
//! It also keeps the ledger of held messages ([`Ledger`]): every message
//! from its claim until it is settled, whose leases the renewal chore
//! extends. A message leaves the ledger *before* an operation that gives
//! it up (a requeue, a dead-letter, a retry's publish, an early ack), so
//! its lease is never renewed after it is back in the broker's hands, and
//! *after* a store-and-ack, so its lease holds while its result is stored.
//!
//! Results are stored and messages acknowledged in batches where the
//! broker says a batch saves round trips
//! ([`Transport::batch_settles`](celeriac_core::Transport::batch_settles)):
//! the handler that finds no batch in flight writes one, its own task and
//! every one queued meanwhile included. When the broker shares its store
//! with the result backend
//! ([`Transport::settle_with`](celeriac_core::Transport::settle_with)), a
//! batch is stored, joined and acked in one call (`together.rs`);
//! otherwise in two or three: results, chord joins, acks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::escape::Escaped;
use celeriac_core::time::unix_now;
use celeriac_core::{
    BrokerError, ChordJoin, CodecError, Delivery, Message, Outgoing, PartReturn, ResultMeta,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::canvas::{ChordPart, Completion, NewChord};
use crate::decide::Disposition;
use crate::observe::TaskEvent;
use crate::worker::Inner;

mod together;

/// The most finished tasks whose results are stored and acks sent in one
/// round trip each.
const SETTLE_BATCH: usize = 512;

/// A message the worker holds, as its handler carries it to settlement.
#[derive(Debug)]
pub(crate) struct Held {
    delivery: Delivery,
    /// Acknowledged as the task started (`acks_late = false`): only its
    /// result is left to store, and giving it back means publishing it
    /// again.
    acked: bool,
}

impl Held {
    pub(crate) fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub(crate) fn is_acked(&self) -> bool {
        self.acked
    }
}

/// Messages held and not yet settled, by delivery tag.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    held: Mutex<HashMap<String, Delivery>>,
    /// Handlers that have not finished (their message held, or being
    /// settled); a warm shutdown waits for 0.
    open: AtomicUsize,
}

impl Ledger {
    /// Holds a message just claimed, until its handler [`close`]s it.
    ///
    /// [`close`]: Self::close
    pub(crate) fn hold(&self, d: Delivery) -> Held {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.held.lock().insert(d.tag.clone(), d.clone());
        Held {
            delivery: d,
            acked: false,
        }
    }

    /// The handler of `tag` is done: whatever happened, it is no longer
    /// held.
    pub(crate) fn close(&self, tag: &str) {
        self.held.lock().remove(tag);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    /// The messages whose leases are to be renewed now.
    pub(crate) fn held(&self) -> Vec<Delivery> {
        self.held.lock().values().cloned().collect()
    }

    /// Handlers not finished.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn forget(&self, tag: &str) {
        self.held.lock().remove(tag);
    }
}

/// ToSettle tasks waiting to be settled in a batch.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    queue: Mutex<Vec<ToSettle>>,
    /// Whether a handler is writing batches.
    combining: AtomicBool,
}

/// A finished task to settle: its result to store (none with
/// `ignore_result`), its chord to join, then its message to ack.
#[derive(Debug)]
struct ToSettle {
    meta: Option<ResultMeta>,
    delivery: Delivery,
    /// A chord header part: joined once its result is stored, before its
    /// message is acked.
    join: Option<Box<Join>>,
    /// Told when it is settled, with its result back if that could not be
    /// stored (none when its own handler settles it).
    done: Option<oneshot::Sender<Option<Unstored>>>,
}

/// A chord header part to join, and the message that ran it (the body's
/// parent, if this part completes the chord).
#[derive(Debug)]
struct Join {
    chord: ChordPart,
    msg: Message,
}

/// A result the batch could not store, handed back to its handler with
/// its message (still held, not acked) and its chord join (not joined), to
/// store again on its own.
#[derive(Debug)]
struct Unstored {
    meta: ResultMeta,
    delivery: Delivery,
    join: Option<Box<Join>>,
}

/// Carries out `disposition` for `held`; `msg` is the decoded message, if
/// it could be decoded (for a retry's log line and an early-acked give-back).
pub(crate) async fn apply(
    inner: &Inner,
    held: Held,
    msg: Option<&Message>,
    disposition: Disposition,
) {
    let d = held.delivery;
    match disposition {
        Disposition::Done { result } => finish(inner, held.acked, result, d).await,
        Disposition::Continue { result, mut canvas } => {
            let id = msg.map(Message::id).unwrap_or_default();
            // As Celery does: the next steps are published before this
            // task's result is stored (its `children` names them), and the
            // chords they start are recorded first.
            let sent = match start_chords(inner, &canvas.chords).await {
                Ok(()) => publish_all(inner, &canvas.before).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                if held.acked {
                    tracing::error!(task_id = %Escaped(id), error = %Escaped(&e), "could not publish the next steps of a task acked early (acks_late = false); its canvas stops here");
                } else {
                    tracing::error!(task_id = %Escaped(id), error = %Escaped(&e), "could not publish the next steps of the canvas; the task goes back to run again");
                    inner.ledger.forget(&d.tag);
                    if let Err(e) = inner.broker.requeue(&d, Some(unix_now() + 1.0)).await {
                        tracing::error!(task_id = %Escaped(id), error = %Escaped(&e), "could not requeue task; it returns when its lease lapses");
                    }
                    return;
                }
            }
            let result = store_beside(inner, result, &canvas.also_store).await;
            let part = canvas.chord.take().zip(msg);
            match part {
                // A chord header part joins once its own result is stored
                // and before its message is acked: a worker that dies in
                // between leaves the message to come back, and it joins
                // again (the join counts a part once). In the settle
                // batch: the parts of one chord that finish together join
                // in one call.
                Some((chord, m)) if !held.acked => {
                    let join = Box::new(Join {
                        chord,
                        msg: m.clone(),
                    });
                    if let Some(back) = settle(inner, result, d, Some(join)).await {
                        // Its result could not be stored: stored again,
                        // joined, then acked, in that order too.
                        keep_storing(inner, back.meta, Some(back.delivery), back.join.as_deref())
                            .await;
                    }
                }
                Some((chord, m)) => {
                    // Acked as it started: stored (again until it is),
                    // then joined.
                    finish(inner, true, result, d).await;
                    join_chord(inner, m, &chord).await;
                }
                None => finish(inner, held.acked, result, d).await,
            }
            // Errbacks, once the FAILURE is stored: those called inline,
            // then those published (Celery's `_call_task_errbacks`).
            crate::errbacks::call_inline(inner, &canvas.inline).await;
            if let Err(e) = publish_all(inner, &canvas.after).await {
                tracing::error!(task_id = %Escaped(id), error = %Escaped(&e), "could not publish the errbacks of a failed task");
            }
        }
        Disposition::Requeue { not_before, why } => {
            inner.ledger.forget(&d.tag);
            let back = match msg {
                // Acked as it started: the broker no longer has it.
                Some(m) if held.acked => match outgoing(inner, m) {
                    Ok(o) => inner.broker.publish(o).await,
                    Err(e) => Err(BrokerError::storage(e)),
                },
                _ => inner.broker.requeue(&d, not_before).await,
            };
            match back {
                Ok(()) => inner.notify.requeued(&d, not_before),
                Err(e) => {
                    let task_id = msg.map(Message::id).unwrap_or_default();
                    tracing::error!(task_id = %Escaped(task_id), error = %e, why, "could not requeue task; it returns when its lease lapses");
                }
            }
        }
        Disposition::DeadLetter { reason, result } => {
            if let Some(meta) = result {
                store(inner, &meta).await;
            }
            inner.ledger.forget(&d.tag);
            inner.notify.rejected(&d, msg, &reason);
            if let Err(e) = inner.broker.dead_letter(&d, &reason).await {
                // Not acked, so the lease lapses and the message comes back.
                tracing::error!(error = %e, reason = %Escaped(&reason), "could not dead-letter message; it stays in the broker");
            }
        }
        Disposition::Retry {
            result,
            next,
            countdown,
            error,
        } => {
            // RETRY first: stored after the next attempt, it could
            // overwrite that attempt's final state. None for a task that
            // ignores its result.
            if let Some(result) = &result {
                store(inner, result).await;
            }
            inner.ledger.forget(&d.tag);
            let published = match outgoing(inner, &next) {
                Ok(out) => inner.broker.publish(out).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let id = next.id();
            match published {
                Ok(()) => {
                    if let Some(m) = msg {
                        let ev = TaskEvent {
                            message: m,
                            delivery: &d,
                            hostname: &inner.config.nodename,
                        };
                        inner.notify.retried(&ev, &error, countdown);
                    }
                    tracing::info!(task_id = %Escaped(id), task = %Escaped(next.task()), retries = next.headers.retries, countdown, "task retry");
                    if !held.acked {
                        ack(inner, &d).await;
                    }
                }
                Err(e) if held.acked => {
                    tracing::error!(task_id = %Escaped(id), error = %Escaped(&e), "could not publish the retry of a task acked early (acks_late = false); it is lost");
                }
                Err(e) => {
                    // Keep the original instead, delayed the same way:
                    // nothing lost.
                    tracing::error!(task_id = %Escaped(id), error = %Escaped(&e), "could not publish the retry; requeueing the original");
                    if let Err(e) = inner.broker.requeue(&d, Some(unix_now() + countdown)).await {
                        tracing::error!(task_id = %Escaped(id), error = %e, "could not requeue task");
                    }
                }
            }
        }
    }
}

/// The outgoing form of a message the worker publishes again (a retry,
/// or a message acked early given back): signed anew when the worker has a
/// secret, since its headers (retries, eta) or its body's bytes changed.
pub(crate) fn outgoing(inner: &Inner, msg: &Message) -> Result<Outgoing, CodecError> {
    match &inner.config.secret {
        None => Outgoing::from_message(msg),
        Some(secret) => {
            let mut signed = msg.clone();
            secret.sign(&mut signed)?;
            Outgoing::from_message(&signed)
        }
    }
}

/// Stores a finished task's result and acks its message (only stores, when
/// it was acked as the task started); a refused result is stored again,
/// never recomputed.
async fn finish(inner: &Inner, acked: bool, result: Option<ResultMeta>, d: Delivery) {
    if acked {
        inner.ledger.forget(&d.tag);
        if let Some(meta) = result
            && !store(inner, &meta).await
        {
            keep_storing(inner, meta, None, None).await;
        }
    } else if let Some(back) = settle(inner, result, d, None).await {
        keep_storing(inner, back.meta, Some(back.delivery), None).await;
    }
}

/// Joins a finished chord header part (see [`ChordJoin`]): the part that
/// completes the chord publishes the body with every header result, or,
/// if a part failed, stores the body's ChordError and calls its errbacks
/// (Celery 5.x's Redis backend does the same). Without a join on this
/// backend, the chord's `celery.chord_unlock` joins it, and a part does
/// nothing here (as Celery's base backend). Says whether the part is
/// recorded (or there is nothing to record): only then may its message be
/// acked.
async fn join_chord(inner: &Inner, msg: &Message, chord: &ChordPart) -> bool {
    let id = msg.id();
    let group = chord.group_id.as_str();
    let Some(join) = inner.backend.chord_join() else {
        tracing::debug!(task_id = %Escaped(id), group = %Escaped(group), backend = %inner.backend.url(),
            "a chord header part finished; this backend has no chord join, so the chord's celery.chord_unlock joins it");
        return true;
    };
    match join.part_return(group, id, chord.index, &chord.part).await {
        Ok(Some(parts)) => {
            complete_chord(inner, join, msg, chord, &parts).await;
            true
        }
        Ok(None) => true,
        Err(e) => {
            tracing::error!(task_id = %Escaped(id), group = %Escaped(group), error = %Escaped(&e), "could not record a chord header part");
            false
        }
    }
}

/// Completes a chord whose last part is in (`parts`, in header order), as
/// the part `msg` that completed it: publishes the body with every header
/// result, or, if a part failed, stores the body's ChordError and calls
/// its errbacks.
async fn complete_chord(
    inner: &Inner,
    join: &dyn ChordJoin,
    msg: &Message,
    chord: &ChordPart,
    parts: &[serde_json::Value],
) {
    let id = msg.id();
    let group = chord.group_id.as_str();
    match crate::canvas::chord_complete(chord, msg, parts, inner) {
        Ok(Completion::Body(body)) => {
            let sent = match start_chords(inner, &body.chords).await {
                Ok(()) => publish_all(inner, &body.messages).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    if let Err(e) = join.finish(group).await {
                        tracing::warn!(group = %Escaped(group), error = %Escaped(&e), "could not clear a finished chord's join");
                    }
                }
                // The claim lapses in seconds: the next part that comes
                // back (a redelivery) completes the chord again.
                Err(e) => {
                    tracing::error!(group = %Escaped(group), error = %Escaped(&e), "could not publish the chord's body")
                }
            }
        }
        Ok(Completion::Failed(failure)) => {
            tracing::warn!(task_id = %Escaped(id), group = %Escaped(group),
                "a chord header part failed; the chord's body fails with ChordError");
            for meta in &failure.metas {
                store(inner, meta).await;
            }
            crate::errbacks::call_inline(inner, &failure.inline).await;
            if let Err(e) = join.abandon(group).await {
                tracing::error!(group = %Escaped(group), error = %Escaped(&e), "could not abandon the chord's join");
            }
            let sent = match start_chords(inner, &failure.errbacks.chords).await {
                Ok(()) => publish_all(inner, &failure.errbacks.messages).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::error!(group = %Escaped(group), error = %Escaped(&e), "could not publish the chord body's errbacks");
            }
        }
        Err(e) => {
            tracing::error!(group = %Escaped(group), error = %Escaped(&e), "the chord's body cannot be sent; it will not run");
            if let Err(e) = join.abandon(group).await {
                tracing::error!(group = %Escaped(group), error = %Escaped(&e), "could not abandon the chord's join");
            }
        }
    }
}

/// Stores the results a canvas stores beside a task's own (the FAILURE of
/// the remaining chain steps), after the task's own result, as Celery's
/// `mark_as_failure` does: a client that sees the last step fail must find
/// the failed step failed too. Returns the task's own result if it is
/// still to store (nothing beside it, or the batch failed), `None` when
/// it is stored and only the ack is left.
async fn store_beside(
    inner: &Inner,
    own: Option<ResultMeta>,
    beside: &[ResultMeta],
) -> Option<ResultMeta> {
    if beside.is_empty() {
        return own;
    }
    let mut metas: Vec<ResultMeta> = own.iter().cloned().collect();
    metas.extend(beside.iter().cloned());
    match inner.backend.store_many(&metas).await {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(error = %e, "could not store a failed chain's results in one batch; storing them one by one");
            if let Some(meta) = &own {
                store(inner, meta).await;
            }
            for meta in beside {
                store(inner, meta).await;
            }
            own
        }
    }
}

/// Records the chords a canvas starts before their headers are published:
/// each chord's size in the backend's join, or, on a backend without one,
/// its `celery.chord_unlock` published first (as Celery's base backend).
async fn start_chords(inner: &Inner, chords: &[NewChord]) -> Result<(), BrokerError> {
    if chords.is_empty() {
        return Ok(());
    }
    match inner.backend.chord_join() {
        Some(join) => {
            for c in chords {
                join.set_size(&c.group_id, c.size)
                    .await
                    .map_err(BrokerError::storage)?;
            }
            Ok(())
        }
        None => {
            let unlocks: Vec<Message> = chords.iter().map(|c| c.unlock.clone()).collect();
            publish_all(inner, &unlocks).await
        }
    }
}

/// Publishes the messages a canvas sends on, in one batch (signed when
/// the worker has a secret).
async fn publish_all(inner: &Inner, msgs: &[Message]) -> Result<(), BrokerError> {
    if msgs.is_empty() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(msgs.len());
    for m in msgs {
        out.push(outgoing(inner, m).map_err(BrokerError::storage)?);
    }
    inner.broker.publish_batch(out).await
}

/// Acknowledges a message as its task starts (`acks_late = false`): from
/// here a crash loses it, as the task asked.
pub(crate) async fn ack_early(inner: &Inner, held: &mut Held) {
    inner.ledger.forget(&held.delivery.tag);
    held.acked = true;
    ack(inner, &held.delivery).await;
}

/// Gives a message back at shutdown before it was handled (claimed as the
/// worker stopped).
pub(crate) async fn give_back(inner: &Inner, d: &Delivery) {
    if let Err(e) = inner.broker.requeue(d, None).await {
        tracing::error!(error = %e, "could not give a message back at shutdown; it returns when its lease lapses");
    }
}

async fn ack(inner: &Inner, d: &Delivery) {
    if let Err(e) = inner.broker.ack(d).await {
        tracing::warn!(error = %e, "ack failed; the message may be delivered again");
    }
}

async fn store(inner: &Inner, meta: &ResultMeta) -> bool {
    match inner.backend.store(meta).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(task_id = %Escaped(&meta.task_id), error = %e, "could not store result");
            false
        }
    }
}

/// Stores the result of a finished task and acks its message, batched with
/// the other tasks finishing at the same time; returns once both are done,
/// or with the result and the message (still held, not acked) when the
/// result could not be stored.
///
/// Whoever finds no batch being written writes one itself: its own task and
/// every one queued meanwhile, and again until none is left. So a lone task
/// is settled by its own handler without a hand-off to another task, and a
/// busy worker makes two round trips per batch instead of two per task.
async fn settle(
    inner: &Inner,
    meta: Option<ResultMeta>,
    delivery: Delivery,
    join: Option<Box<Join>>,
) -> Option<Unstored> {
    if !inner.broker.batch_settles() {
        // In-process: a batch saves no round trip, and waiting for another
        // handler's batch would add a wake-up.
        let one = ToSettle {
            meta,
            delivery,
            join,
            done: None,
        };
        return settle_batch(inner, vec![one]).await.pop();
    }
    let batches = &inner.batches;
    let (done, mut rx) = oneshot::channel();
    batches.queue.lock().push(ToSettle {
        meta,
        delivery,
        join,
        done: Some(done),
    });
    loop {
        if batches.combining.swap(true, Ordering::AcqRel) {
            // Another handler is writing batches; ours is queued, and it
            // checks the queue once more after clearing the flag.
            return (&mut rx).await.unwrap_or(None);
        }
        {
            // Cleared however this ends, a panicking backend included (the
            // unsettled messages then come back when their leases lapse).
            let _combining = ClearOnDrop(&batches.combining);
            loop {
                let batch: Vec<ToSettle> = {
                    let mut queue = batches.queue.lock();
                    let n = queue.len().min(SETTLE_BATCH);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                // Every task of a batch written here has a `done` channel:
                // nothing comes back from settle_batch itself.
                settle_batch(inner, batch).await;
            }
        }
        // A task queued after the last drain and before the flag cleared
        // saw the flag set and is waiting: take it over.
        if batches.queue.lock().is_empty() {
            // Ours was in a batch written above (or by the handler that
            // held the flag before us).
            return rx.await.unwrap_or(None);
        }
    }
}

/// How long the first retry of a failed result store waits; each next one
/// waits twice as long, up to [`STORE_RETRY_MAX_DELAY`].
const STORE_RETRY_FIRST_DELAY: Duration = Duration::from_millis(500);
const STORE_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// A result the backend refused: stores it again with back-off, never
/// running the task again, for up to the worker's
/// [`store_retry_for`](crate::WorkerBuilder::store_retry_for). The message
/// (`d`, none when it was acked as the task started) stays held, its lease
/// renewed, and is acked once the result is stored and, for a chord header
/// part, once its `join` is recorded (as on the first attempt: a worker
/// killed in between leaves the message to come back and join; one whose
/// join fails is not acked, and joins again when it comes back). Past the bound, or at
/// shutdown, the message is dead-lettered with the result attached to the
/// reason, so that neither is lost and nothing is computed twice.
async fn keep_storing(inner: &Inner, meta: ResultMeta, d: Option<Delivery>, join: Option<&Join>) {
    let started = Instant::now();
    let mut delay = STORE_RETRY_FIRST_DELAY;
    let mut attempts = 1u32;
    loop {
        let patience = inner
            .config
            .store_retry_for
            .saturating_sub(started.elapsed());
        if patience.is_zero() {
            break;
        }
        // At shutdown: one last attempt at once, then the dead-letter queue.
        let stopping = inner.slots.is_stopping();
        if !stopping {
            tracing::warn!(task_id = %Escaped(&meta.task_id), attempts, retry_in = ?delay.min(patience),
                "the result could not be stored; storing it again (the task is not run again)");
            inner.slots.sleep_unless_stopping(delay.min(patience)).await;
        }
        attempts += 1;
        if store(inner, &meta).await {
            tracing::info!(task_id = %Escaped(&meta.task_id), attempts, "result stored after a failed store");
            let joined = match join {
                Some(j) => join_chord(inner, &j.msg, &j.chord).await,
                None => true,
            };
            if let Some(d) = &d
                && joined
            {
                ack(inner, d).await;
            }
            return;
        }
        if stopping {
            break;
        }
        delay = (delay * 2).min(STORE_RETRY_MAX_DELAY);
    }
    let result = serde_json::to_string(&meta).unwrap_or_else(|e| format!("<unencodable: {e}>"));
    let Some(d) = d else {
        tracing::error!(task_id = %Escaped(&meta.task_id), attempts, %result,
            "the result could not be stored and the message was acked early (acks_late = false); the result is only in this log line");
        return;
    };
    let reason = format!(
        "the result could not be stored after {attempts} attempts in {:.0?}; the task ran and is not run again. Result: {result}",
        started.elapsed()
    );
    inner.ledger.forget(&d.tag);
    inner.notify.rejected(&d, None, &reason);
    tracing::error!(task_id = %Escaped(&meta.task_id), attempts, "the result could not be stored; moving the message to the dead-letter queue with the result attached");
    if let Err(e) = inner.broker.dead_letter(&d, &reason).await {
        // Not acked, so the lease lapses and the message comes back: the
        // one way left to keep the task.
        tracing::error!(task_id = %Escaped(&meta.task_id), error = %e, "could not dead-letter the message either; it stays in the broker");
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Stores a batch's results, joins the chord header parts among them, and
/// acks the messages whose result is stored and whose part (if any) is
/// joined. A task whose result could not be stored is neither joined nor
/// acked: it gets its result, message and join back, through its `done`
/// channel, or in the returned list when it has none. A part whose join
/// failed is not acked either: its message comes back when its lease
/// lapses, and joins again (counted once).
async fn settle_batch(inner: &Inner, batch: Vec<ToSettle>) -> Vec<Unstored> {
    let batch = match &inner.joint {
        // One call; if it fails, the separate calls below settle the same
        // batch (every step is safe to repeat).
        Some(joint) => match together::settle_batch(inner, joint.as_ref(), batch).await {
            Ok(()) => return Vec::new(),
            Err(batch) => batch,
        },
        None => batch,
    };
    // Taken apart without copies: the results to store, and for each task
    // whether it had one, its delivery, its join and whom to tell.
    let mut metas = Vec::with_capacity(batch.len());
    let mut tasks = Vec::with_capacity(batch.len());
    for s in batch {
        tasks.push((s.meta.is_some(), s.delivery, s.join, s.done));
        metas.extend(s.meta);
    }
    // Whether each result is stored.
    let stored: Vec<bool> = match inner.backend.store_many(&metas).await {
        Ok(()) => vec![true; metas.len()],
        Err(e) => {
            tracing::warn!(error = %e, count = metas.len(), "could not store a batch of results; storing them one by one");
            let mut stored = Vec::with_capacity(metas.len());
            for meta in &metas {
                stored.push(store(inner, meta).await);
            }
            stored
        }
    };
    let mut metas = metas.into_iter().zip(stored);
    let mut settled = Vec::with_capacity(tasks.len());
    let mut unstored = Vec::new();
    for (has_meta, delivery, join, done) in tasks {
        let failed = if has_meta {
            metas.next().and_then(|(m, ok)| (!ok).then_some(m))
        } else {
            None
        };
        let Some(meta) = failed else {
            settled.push((delivery, join, done));
            continue;
        };
        let back = Unstored {
            meta,
            delivery,
            join,
        };
        match done {
            Some(done) => {
                let _ = done.send(Some(back));
            }
            None => unstored.push(back),
        }
    }
    let joined = join_batch(
        inner,
        settled.iter().map(|(_, j, _)| j.as_deref()).collect(),
    )
    .await;
    let mut acks = Vec::with_capacity(settled.len());
    let mut dones = Vec::with_capacity(settled.len());
    for ((delivery, _, done), joined) in settled.into_iter().zip(joined) {
        if joined {
            acks.push(delivery);
        }
        dones.extend(done);
    }
    ack_all(inner, &acks).await;
    for done in dones {
        let _ = done.send(None);
    }
    unstored
}

/// Acks the messages of settled tasks in one call, and logs those refused.
async fn ack_all(inner: &Inner, acks: &[Delivery]) {
    if acks.is_empty() {
        return;
    }
    match inner.broker.ack_many(acks).await {
        Ok(held) => {
            for (d, held) in acks.iter().zip(held) {
                if !held {
                    not_held(d);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, count = acks.len(), "ack failed; the messages may be delivered again (their stored results make a redelivery skip them)");
        }
    }
}

/// Logs an ack the broker refused.
fn not_held(d: &Delivery) {
    tracing::warn!(tag = %Escaped(&d.tag), "ack refused: the message's lease had lapsed; it may be delivered again (its stored result makes a redelivery skip it)");
}

/// Joins the chord header parts of a settle batch (`None` for a task that
/// is no part), the parts of each chord in one call, and completes the
/// chords they complete. Says, for each task, whether its message may be
/// acked: not when its join failed.
async fn join_batch(inner: &Inner, joins: Vec<Option<&Join>>) -> Vec<bool> {
    let mut ok = vec![true; joins.len()];
    if joins.iter().all(Option::is_none) {
        return ok;
    }
    let Some(join) = inner.backend.chord_join() else {
        tracing::debug!(backend = %inner.backend.url(),
            "chord header parts finished; this backend has no chord join, so their chords' celery.chord_unlock joins them");
        return ok;
    };
    // By chord, in the order of the batch.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, j) in joins.iter().enumerate() {
        let Some(j) = j else { continue };
        let group = j.chord.group_id.as_str();
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push(i),
            None => groups.push((group, vec![i])),
        }
    }
    for (group, members) in groups {
        let parts: Vec<&Join> = members.iter().filter_map(|&i| joins[i]).collect();
        let records: Vec<PartReturn<'_>> = parts
            .iter()
            .map(|j| PartReturn {
                task_id: j.msg.id(),
                group_index: j.chord.index,
                part: &j.chord.part,
            })
            .collect();
        match join.part_return_many(group, &records).await {
            Ok(None) => {}
            Ok(Some(all)) => {
                // These parts complete the chord: the last of them is the
                // body's parent.
                let last = parts.last().expect("a chord's parts in the batch");
                complete_chord(inner, join, &last.msg, &last.chord, &all).await;
            }
            Err(e) => {
                tracing::error!(group = %Escaped(group), parts = members.len(), error = %Escaped(&e),
                    "could not record chord header parts; their messages are not acked, and join again when they come back");
                for i in members {
                    ok[i] = false;
                }
            }
        }
    }
    ok
}
