//! Admit: the gates a claimed message passes before it runs. Each gate
//! either lets it through or says what becomes of it instead
//! ([`Admission::Skip`] with a [`Disposition`]):
//!
//! 1. poison: delivered more than `max_deliveries` times → dead letter;
//! 2. malformed or too large → dead letter; with a secret, unsigned or
//!    forged → dead letter ([`unsigned`]);
//! 3. revoked (checked by the broker at claim time) → REVOKED;
//! 4. an `eta` or `expires` that is not a time → FAILURE `ValueError`
//!    and dead letter;
//! 5. expired → REVOKED;
//! 6. an `eta` in the future → back to the broker's delayed store;
//! 7. an idempotency key another task holds → that task's result;
//! 8. redelivered but already finished → acknowledged, not run again;
//! 9. no task of that name → FAILURE `NotRegistered` and dead letter;
//! 10. an integer argument outside the 64-bit range → FAILURE
//!     `OverflowError` and dead letter (it arrived as a rounded float);
//!
//! then, once the message has its place: the rate limit ([`rate`]), and
//! after the wait for a slot, a revoke or expiry that came meanwhile
//! ([`after_wait`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::escape::Escaped;
use celeriac_core::time::unix_now;
use celeriac_core::{Delivery, Message, RateLimit, RegisteredTask, ResultMeta, TaskError};
use parking_lot::Mutex;

use crate::decide::{Disposition, result_meta};
use crate::line::Slot;
use crate::observe::{RevokedBy, TaskEvent};
use crate::worker::Inner;

/// How long an idempotency key is remembered (as long as results are).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400);

/// A rate-limit wait longer than this gives the message back to the
/// broker (delayed) instead of holding a slot.
const MAX_RATE_WAIT: f64 = 2.0;

/// What the gates say of a message.
#[derive(Debug)]
pub(crate) enum Admission {
    /// It may run.
    Run(Admitted),
    /// It will not run; `msg` is the message if it could be decoded.
    Skip {
        /// The decoded message.
        msg: Option<Message>,
        /// What becomes of it (boxed: skips are the rare path).
        disposition: Box<Disposition>,
    },
}

/// A message the gates let through, with its task.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) msg: Message,
    pub(crate) task: Arc<RegisteredTask>,
}

fn skip(msg: Option<Message>, disposition: Disposition) -> Admission {
    Admission::Skip {
        msg,
        disposition: Box::new(disposition),
    }
}

/// Runs the gates up to the task's lookup and its arguments (1 to 10
/// above).
pub(crate) async fn admit(inner: &Inner, d: &Delivery) -> Admission {
    let cfg = &inner.config;
    if cfg.max_deliveries > 0 && d.deliveries > cfg.max_deliveries {
        let reason = format!(
            "poison message: delivered {} times without being acknowledged (its worker crashed or was killed each time)",
            d.deliveries - 1
        );
        tracing::error!(queue = %Escaped(&d.queue), deliveries = d.deliveries, "{reason}; moving it to the dead-letter queue");
        return skip(
            None,
            Disposition::DeadLetter {
                reason,
                result: None,
            },
        );
    }
    let msg = match Message::decode_with_limit(&d.payload, cfg.max_body) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(queue = %Escaped(&d.queue), error = %Escaped(&e), bytes = d.payload.len(),
                "malformed message; moving it to the dead-letter queue");
            return skip(
                None,
                Disposition::DeadLetter {
                    reason: e.to_string(),
                    result: None,
                },
            );
        }
    };
    crate::worker::name_span(&msg);
    if let Some(disposition) = unsigned(inner, d, &msg) {
        return skip(Some(msg), disposition);
    }
    let ev = TaskEvent {
        message: &msg,
        delivery: d,
        hostname: &cfg.nodename,
    };
    inner.notify.received(&ev);
    let id = msg.id();
    let name = msg.task();
    // For logs: both come from the message.
    let (shown_id, shown_name) = (Escaped(id), Escaped(name));
    let now = unix_now();

    if d.revoked {
        tracing::info!(task_id = %shown_id, task = %shown_name, "task revoked; marking REVOKED");
        let disposition = revoked(inner, &ev, RevokedBy::Revoke);
        return skip(Some(msg), disposition);
    }
    if let Err(e) = msg.check_times() {
        tracing::error!(task_id = %shown_id, task = %shown_name, error = %Escaped(&e),
            "task with a bad eta or expires; moving it to the dead-letter queue");
        let err = TaskError::typed("ValueError", "builtins", e.to_string());
        let disposition = refused(inner, &ev, &err, e.to_string());
        return skip(Some(msg), disposition);
    }
    if let Some(exp) = msg.expires_unix().filter(|&e| e < now) {
        tracing::info!(task_id = %shown_id, task = %shown_name, expired_at = exp, "task expired; marking REVOKED");
        let disposition = revoked(inner, &ev, RevokedBy::Expiry);
        return skip(Some(msg), disposition);
    }
    if let Some(eta) = msg.eta_unix().filter(|&e| e > now + 0.005) {
        // A delayed message the broker did not hold back (e.g. from a
        // foreign producer): put it in the broker's delayed store.
        return skip(
            Some(msg),
            Disposition::Requeue {
                not_before: Some(eta),
                why: "deferring an eta task",
            },
        );
    }
    if let Some(key) = msg.idempotency_key() {
        match inner.backend.claim_key(key, id, IDEMPOTENCY_TTL).await {
            Ok(None) => {}
            Ok(Some(holder)) if holder == id => {}
            Ok(Some(holder)) => {
                let disposition = duplicate_of(inner, &msg, key, &holder).await;
                return skip(Some(msg), disposition);
            }
            Err(e) => {
                tracing::error!(task_id = %shown_id, error = %e, "could not claim the idempotency key; retrying later");
                return skip(
                    Some(msg),
                    requeue_in(now, 1.0, "idempotency key unavailable"),
                );
            }
        }
    }
    if d.redelivered {
        // A worker that died after storing the result but before the ack
        // leaves a finished task to be delivered again: skip it (a chord
        // header part joins again, which counts it once).
        if let Ok(Some(meta)) = inner.backend.get(id).await
            && meta.status.is_ready()
        {
            tracing::info!(task_id = %shown_id, task = %shown_name, status = %meta.status,
                "redelivered task already finished; skipping it");
            inner.notify.duplicate();
            let disposition = match crate::canvas::rejoin(&msg, &meta) {
                Some(canvas) => Disposition::Continue {
                    result: None,
                    canvas: Box::new(canvas),
                },
                None => Disposition::Done { result: None },
            };
            return skip(Some(msg), disposition);
        }
    }
    let found = inner
        .registry
        .get(name)
        .or_else(|| inner.celery_tasks.get(name));
    let Some(task) = found.cloned() else {
        tracing::error!(task_id = %shown_id, task = %shown_name, "received unregistered task; moving it to the dead-letter queue");
        let err = TaskError::not_registered(name);
        let meta = result_meta(
            cfg.meta_facts(),
            &msg,
            &d.queue,
            ResultMeta::failure(id, &err),
            None,
        );
        inner.notify.failed(&ev, &err, None);
        let reason = format!("unknown task {name:?}");
        return skip(
            Some(msg),
            Disposition::DeadLetter {
                reason,
                result: Some(meta),
            },
        );
    };
    if let Some(int) = msg.out_of_range_integer() {
        tracing::error!(task_id = %shown_id, task = %shown_name, integer = %Escaped(int),
            "integer argument outside the 64-bit range; failing the task and moving it to the dead-letter queue");
        let reason = format!(
            "integer {int} is outside the 64-bit range (-2^63 to 2^64-1) that celeriac carries exactly"
        );
        let err = TaskError::typed("OverflowError", "builtins", reason.clone());
        let disposition = refused(inner, &ev, &err, reason);
        return skip(Some(msg), disposition);
    }
    Admission::Run(Admitted { msg, task })
}

/// The signature gate: a worker with a secret runs only messages signed
/// with it. The others are dead-lettered with the reason, and no result is
/// stored (a forged message must not overwrite the result of the task
/// whose id it borrows).
fn unsigned(inner: &Inner, d: &Delivery, msg: &Message) -> Option<Disposition> {
    let secret = inner.config.secret.as_ref()?;
    let err = secret.verify(msg, &d.payload).err()?;
    tracing::error!(queue = %Escaped(&d.queue), task_id = %Escaped(msg.id()), task = %Escaped(msg.task()), error = %err,
        "refusing a message whose signature does not check; moving it to the dead-letter queue");
    Some(Disposition::DeadLetter {
        reason: err.to_string(),
        result: None,
    })
}

/// A message that cannot run as it is: FAILURE `err` stored for its task,
/// and the message dead-lettered with `reason`.
fn refused(inner: &Inner, ev: &TaskEvent<'_>, err: &TaskError, reason: String) -> Disposition {
    let msg = ev.message;
    let meta = result_meta(
        inner.config.meta_facts(),
        msg,
        &ev.delivery.queue,
        ResultMeta::failure(msg.id(), err),
        None,
    );
    inner.notify.failed(ev, err, None);
    Disposition::DeadLetter {
        reason,
        result: Some(meta),
    }
}

/// REVOKED (`by` a revoke or expiry) for a task that will not run.
fn revoked(inner: &Inner, ev: &TaskEvent<'_>, by: RevokedBy) -> Disposition {
    inner.notify.revoked(ev, by);
    let why = match by {
        RevokedBy::Revoke => "revoked",
        RevokedBy::Expiry => "expired",
    };
    let msg = ev.message;
    let meta = result_meta(
        inner.config.meta_facts(),
        msg,
        &ev.delivery.queue,
        ResultMeta::failure(msg.id(), &TaskError::revoked(why)),
        None,
    );
    // A revoked chord header part still joins its chord, as REVOKED, so
    // that the chord fails with ChordError instead of waiting forever
    // (Celery's `mark_as_revoked` calls `on_chord_part_return`).
    match crate::canvas::rejoin(msg, &meta) {
        Some(canvas) => Disposition::Continue {
            result: Some(meta),
            canvas: Box::new(canvas),
        },
        None => Disposition::Done { result: Some(meta) },
    }
}

fn requeue_in(now: f64, secs: f64, why: &'static str) -> Disposition {
    Disposition::Requeue {
        not_before: Some(now + secs),
        why,
    }
}

/// A task whose idempotency key another task holds: it gets that task's
/// result once there is one, without running.
async fn duplicate_of(inner: &Inner, msg: &Message, key: &str, holder: &str) -> Disposition {
    let id = msg.id();
    match inner.backend.get(holder).await {
        Ok(Some(meta)) if meta.status.is_ready() => {
            tracing::info!(task_id = %Escaped(id), key = %Escaped(key), first = %Escaped(holder), "duplicate of an idempotent task; reusing its result");
            inner.notify.duplicate();
            let mut copy = meta;
            copy.task_id = id.to_string();
            Disposition::Done { result: Some(copy) }
        }
        // The first task has not finished yet: look again shortly.
        Ok(_) => requeue_in(unix_now(), 0.5, "waiting for the first idempotent task"),
        Err(e) => {
            tracing::error!(task_id = %Escaped(id), error = %e, "could not read the first task's result; retrying later");
            requeue_in(unix_now(), 1.0, "waiting for the first idempotent task")
        }
    }
}

/// Per-worker (not global) rate-limit buckets: each task name's
/// theoretical arrival time (GCRA).
#[derive(Debug, Default)]
pub(crate) struct LocalRates(Mutex<HashMap<String, f64>>);

/// Waits until the rate limit lets task `name` start. A wait longer than a
/// couple of seconds gives the message back to the broker (delayed) instead
/// of holding a slot: then the disposition is returned.
pub(crate) async fn rate(
    inner: &Inner,
    name: &str,
    limit: RateLimit,
    slot: &mut Slot<'_>,
) -> Option<Disposition> {
    let key = format!("celeriac.rate.{name}");
    loop {
        let wait = if limit.is_global() {
            match inner.broker.rate_wait(&key, limit.interval()).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(task = %Escaped(name), error = %e, "rate limit bucket unavailable; waiting");
                    1.0
                }
            }
        } else {
            let mut local = inner.rates.0.lock();
            match celeriac_core::rate::gcra(local.get(name).copied(), unix_now(), limit.interval())
            {
                Ok(tat) => {
                    local.insert(name.to_string(), tat);
                    0.0
                }
                Err(w) => w,
            }
        };
        if wait.is_nan() || wait <= 0.0 {
            return None;
        }
        if wait > MAX_RATE_WAIT {
            return Some(requeue_in(unix_now(), wait, "rate limited"));
        }
        // Out of line while it waits: the messages behind it start.
        slot.step_aside();
        tokio::time::sleep(celeriac_core::time::saturating_seconds(wait)).await;
    }
}

/// The gates again after the wait for a slot: a revoke that arrived while
/// the message was reserved (`revoked_meanwhile`), or an expiry that
/// passed.
pub(crate) fn after_wait(
    inner: &Inner,
    ev: &TaskEvent<'_>,
    revoked_meanwhile: bool,
) -> Option<Disposition> {
    let msg = ev.message;
    if revoked_meanwhile {
        tracing::info!(task_id = %Escaped(msg.id()), task = %Escaped(msg.task()), "task revoked while reserved; marking REVOKED");
        return Some(revoked(inner, ev, RevokedBy::Revoke));
    }
    if let Some(exp) = msg.expires_unix().filter(|&e| e < unix_now()) {
        tracing::info!(task_id = %Escaped(msg.id()), task = %Escaped(msg.task()), expired_at = exp, "task expired while reserved; marking REVOKED");
        return Some(revoked(inner, ev, RevokedBy::Expiry));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use celeriac_core::time::iso_from_unix;
    use celeriac_core::{Call, Delivery, Registry};
    use celeriac_embedded::{MemoryBackend, MemoryBroker};
    use serde_json::json;

    use super::*;
    use crate::Worker;

    fn worker() -> Worker {
        let mut r = Registry::new();
        r.register_fn("t.known", |_, _| Ok(json!(1))).unwrap();
        Worker::builder(
            Arc::new(MemoryBroker::new()),
            Arc::new(MemoryBackend::new()),
            Arc::new(r),
        )
        .concurrency(1)
        .max_deliveries(3)
        .max_body(4096)
        .build()
        .unwrap()
    }

    fn delivery(msg: &Message) -> Delivery {
        Delivery {
            tag: "tag".into(),
            queue: "q".into(),
            payload: msg.encode().unwrap(),
            deliveries: 1,
            redelivered: false,
            revoked: false,
        }
    }

    fn known() -> Message {
        Call::<i64>::new("t.known").to_message().unwrap()
    }

    fn skipped(a: Admission) -> (Option<Message>, Disposition) {
        match a {
            Admission::Skip { msg, disposition } => (msg, *disposition),
            Admission::Run(r) => panic!("{} was let through", r.msg.id()),
        }
    }

    #[tokio::test]
    async fn a_known_task_is_let_through_with_its_task() {
        let w = worker();
        let m = known();
        match admit(w.inner(), &delivery(&m)).await {
            Admission::Run(a) => {
                assert_eq!(a.msg.id(), m.id());
                assert_eq!(a.task.name(), "t.known");
            }
            Admission::Skip { disposition, .. } => panic!("skipped: {disposition:?}"),
        }
    }

    #[tokio::test]
    async fn poison_malformed_and_oversized_messages_are_dead_lettered_undecoded() {
        let w = worker();
        let mut poison = delivery(&known());
        poison.deliveries = 4;
        let mut garbage = delivery(&known());
        garbage.payload = b"\x00 not a message".to_vec();
        let mut huge = known();
        huge.args = vec![json!("x".repeat(8192))];
        for (what, d, reason) in [
            ("poison", poison, "poison message: delivered 3 times"),
            ("garbage", garbage, "malformed message"),
            (
                "oversized",
                delivery(&huge),
                "exceeds the limit of 4096 bytes",
            ),
        ] {
            let (msg, disposition) = skipped(admit(w.inner(), &d).await);
            assert!(msg.is_none(), "{what}: not decoded");
            let Disposition::DeadLetter {
                reason: got,
                result,
            } = disposition
            else {
                panic!("{what}: {disposition:?}")
            };
            assert!(got.contains(reason), "{what}: {got}");
            assert!(result.is_none(), "{what}: no result without a task id");
        }
    }

    #[tokio::test]
    async fn revoked_and_expired_messages_end_as_revoked_results() {
        let w = worker();
        let mut revoked = delivery(&known());
        revoked.revoked = true;
        let mut expired = known();
        expired.headers.expires = Some(iso_from_unix(unix_now() - 1.0));
        for (d, why) in [(revoked, "revoked"), (delivery(&expired), "expired")] {
            let (msg, disposition) = skipped(admit(w.inner(), &d).await);
            assert!(msg.is_some());
            let Disposition::Done { result: Some(meta) } = disposition else {
                panic!("{why}: {disposition:?}")
            };
            assert_eq!(meta.status, celeriac_core::State::Revoked, "{why}");
            assert_eq!(meta.result["exc_message"], json!([why]));
            assert_eq!(meta.queue.as_deref(), Some("q"));
        }
        let stats = w.stats();
        assert_eq!((stats.revoked, stats.expired), (1, 1));
    }

    #[tokio::test]
    async fn a_future_eta_is_requeued_until_due_and_an_unknown_task_fails_and_is_dead_lettered() {
        let w = worker();
        let mut later = known();
        let due = unix_now() + 60.0;
        later.headers.eta = Some(iso_from_unix(due));
        let (_, disposition) = skipped(admit(w.inner(), &delivery(&later)).await);
        let Disposition::Requeue {
            not_before: Some(at),
            ..
        } = disposition
        else {
            panic!("{disposition:?}")
        };
        assert!((at - due).abs() < 0.01, "{at} vs {due}");

        let unknown = Call::<i64>::new("t.unknown").to_message().unwrap();
        let (_, disposition) = skipped(admit(w.inner(), &delivery(&unknown)).await);
        let Disposition::DeadLetter {
            reason,
            result: Some(meta),
        } = disposition
        else {
            panic!("{disposition:?}")
        };
        assert_eq!(reason, "unknown task \"t.unknown\"");
        assert_eq!(meta.result["exc_type"], json!("NotRegistered"));
        assert_eq!(w.stats().failed, 1);
    }

    #[tokio::test]
    async fn a_redelivered_task_with_a_stored_result_is_acked_without_running() {
        let w = worker();
        let m = known();
        w.inner()
            .backend
            .store(&celeriac_core::ResultMeta::success(m.id(), json!(1)))
            .await
            .unwrap();
        let mut d = delivery(&m);
        // Not redelivered: it runs (the result might be a stale one).
        assert!(matches!(admit(w.inner(), &d).await, Admission::Run(_)));
        d.redelivered = true;
        let (_, disposition) = skipped(admit(w.inner(), &d).await);
        assert!(
            matches!(disposition, Disposition::Done { result: None }),
            "{disposition:?}"
        );
        assert_eq!(w.stats().duplicates, 1);
    }
}
