//! `celery.chord_unlock`: how a chord is joined on a result backend
//! without a native join (Celery's `celery/app/builtins.py`
//! `unlock_chord`, and `fallback_chord_unlock` in
//! `celery/backends/base.py`).
//!
//! The client publishes it before the header, due in one second, with
//! `args = [group_id, body]` and `kwargs.result` = the header's result
//! tuples. The worker that runs it reads every header result:
//!
//! - one is not ready yet: the same message again (same id, `retries + 1`,
//!   due in `interval`, 1 s by default), through the worker's ordinary
//!   retry;
//! - all are ready and one failed: the body fails with `ChordError`
//!   (`Dependency <id> raised ...`, the first failure in header order),
//!   stored under the body's id, and the body's errbacks are called;
//! - all succeeded: the body is published with the results, in header
//!   order, as its first argument (`parent_id` = the unlock, which is also
//!   its root for a chord sent by a client).
//!
//! The task returns the results; [`on_success`] and [`on_failure`] turn
//! its outcome into what the worker sends on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use celeriac_core::{
    Args, CodecError, Message, PoolKind, Registry, ResultBackend, ResultMeta, Signature,
    TaskContext, TaskError, TaskOptions,
};
use serde_json::{Value, json};

use super::Continuation;
use super::apply::{Call, Sends, apply};

/// The task's name.
pub(crate) const CHORD_UNLOCK: &str = "celery.chord_unlock";

/// Celery's `result_chord_retry_interval`.
const DEFAULT_INTERVAL: f64 = 1.0;

/// The `celery.chord_unlock` message a worker publishes, before the
/// header, for a chord it starts on a backend without a join.
pub(crate) fn unlock_message(
    parent: &Message,
    group_id: &str,
    body: &Value,
    results: Vec<Value>,
) -> Result<Message, CodecError> {
    let b = Signature::from_value(body)?;
    let mut s = Signature::new(CHORD_UNLOCK, vec![json!(group_id), body.clone()]);
    s.kwargs.insert("interval".into(), Value::Null);
    s.kwargs.insert("max_retries".into(), Value::Null);
    s.kwargs.insert("result".into(), Value::Array(results));
    s.kwargs
        .insert("_chord_unlock_exchange_type".into(), json!("direct"));
    s.options.insert("countdown".into(), json!(1));
    s.options.insert("ignore_result".into(), json!(true));
    s.options.insert(
        "priority".into(),
        b.options.get("priority").cloned().unwrap_or(json!(0)),
    );
    if let Some(q) = b.queue() {
        s.options.insert("queue".into(), json!(q));
    }
    let mut m = s.call_after(parent, None, Vec::new())?;
    m.embed.chain = None;
    Ok(m)
}

/// Registers the task, reading results from `backend`.
pub(crate) fn register(r: &mut Registry, backend: Arc<dyn ResultBackend>) {
    // Retried as long as the header runs (Celery: max_retries=None); the
    // message's own max_retries is checked by the task.
    let opts = TaskOptions::new()
        .max_retries(None)
        .default_retry_delay(DEFAULT_INTERVAL)
        .pool(PoolKind::Async);
    r.register_async_fn(CHORD_UNLOCK, opts, move |ctx, args| {
        let backend = backend.clone();
        async move { run(&*backend, &ctx, args).await }
    })
    .expect("a fresh registry");
}

/// What the task was given.
struct Unlock {
    interval: f64,
    max_retries: Option<u32>,
    results: Vec<Value>,
}

fn parse(args: Args) -> Result<Unlock, TaskError> {
    let bad = |why: &str| TaskError::invalid_arguments(format!("{CHORD_UNLOCK}: {why}"));
    let Args { args, mut kwargs } = args;
    let mut positional = args.into_iter().skip(2);
    let mut take = |name: &str| positional.next().or_else(|| kwargs.remove(name));
    let interval = match take("interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL,
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| bad("interval must be a number of seconds"))?,
    };
    let max_retries = match take("max_retries") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .map(|n| n.min(u64::from(u32::MAX)) as u32)
                .ok_or_else(|| bad("max_retries must be an integer"))?,
        ),
    };
    let results = match take("result") {
        Some(Value::Array(r)) => r,
        _ => return Err(bad("result must be the list of the header's result tuples")),
    };
    Ok(Unlock {
        interval,
        max_retries,
        results,
    })
}

/// A result tuple's state: not ready, its value, or its failure.
enum Ready {
    Not,
    Value(Value),
    Failed(TaskError),
}

/// Reads the result of tuple `t` (`[[id, parent], null]`, or a group's
/// `[[gid, parent], [tuples]]`).
fn read<'a>(backend: &'a dyn ResultBackend, t: &'a Value) -> BoxedReady<'a> {
    Box::pin(async move {
        if let Some(Value::Array(members)) = t.get(1) {
            let mut values = Vec::with_capacity(members.len());
            for m in members {
                match read(backend, m).await? {
                    Ready::Value(v) => values.push(v),
                    other => return Ok(other),
                }
            }
            return Ok(Ready::Value(Value::Array(values)));
        }
        let id = t.pointer("/0/0").and_then(Value::as_str).ok_or_else(|| {
            TaskError::invalid_arguments(format!("{CHORD_UNLOCK}: bad result tuple {t}"))
        })?;
        let meta = backend
            .get(id)
            .await
            .map_err(|e| TaskError::typed("BackendError", "celeriac", e.to_string()).retryable())?;
        Ok(match meta.as_ref().and_then(ResultMeta::outcome) {
            None => Ready::Not,
            Some(Ok(v)) => Ready::Value(v.clone()),
            Some(Err(_)) => {
                let meta = meta.expect("an outcome comes from a document");
                Ready::Failed(super::dependency_error(id, &meta.result))
            }
        })
    })
}

/// A boxed future of a tuple's state (the read recurses into groups).
type BoxedReady<'a> = Pin<Box<dyn Future<Output = Result<Ready, TaskError>> + Send + 'a>>;

async fn run(
    backend: &dyn ResultBackend,
    ctx: &TaskContext,
    args: Args,
) -> Result<Value, TaskError> {
    let u = parse(args)?;
    let retry = || {
        if u.max_retries.is_some_and(|max| ctx.retries() >= max) {
            TaskError::typed(
                "ChordError",
                "celery.exceptions",
                format!(
                    "chord_unlock could not be retried: MaxRetriesExceededError(\"Can't retry {CHORD_UNLOCK}[{}]\")",
                    ctx.id()
                ),
            )
        } else {
            TaskError::retry(Some(std::time::Duration::from_secs_f64(u.interval)))
        }
    };
    // All ready first (a not-ready part means wait, even after a failure),
    // then the first failure in header order.
    let mut states = Vec::with_capacity(u.results.len());
    for t in &u.results {
        match read(backend, t).await {
            Ok(Ready::Not) => return Err(retry()),
            Ok(state) => states.push(state),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "chord_unlock could not read a header result; retrying");
                return Err(retry());
            }
            Err(e) => return Err(e),
        }
    }
    let mut values = Vec::with_capacity(states.len());
    for s in states {
        match s {
            Ready::Value(v) => values.push(v),
            Ready::Failed(e) => return Err(e),
            Ready::Not => unreachable!("returned above"),
        }
    }
    Ok(Value::Array(values))
}

/// The body signature of an unlock message.
fn body_of(msg: &Message) -> Result<&Value, CodecError> {
    msg.args
        .get(1)
        .or_else(|| msg.kwargs.get("callback"))
        .filter(|b| b.is_object())
        .ok_or_else(|| CodecError::Malformed(format!("{CHORD_UNLOCK} without a callback")))
}

/// After the header succeeded: the body, with the results.
pub(crate) fn on_success(msg: &Message, result: &ResultMeta, c: &mut Continuation) {
    let sent = body_of(msg).and_then(|body| {
        let mut out = Sends::default();
        apply(body, Call::new(msg, vec![result.result.clone()]), &mut out)?;
        Ok(out)
    });
    match sent {
        Ok(out) => c.send_before(out),
        Err(e) => c.problems.push(format!("the chord's body: {e}")),
    }
}

/// After the header failed (or the unlock gave up): the body's failure
/// and its errbacks.
pub(crate) fn on_failure(
    msg: &Message,
    result: &ResultMeta,
    known: &dyn super::Known,
    c: &mut Continuation,
) {
    let failed = body_of(msg).and_then(|body| {
        let group_id = msg.args.first().and_then(Value::as_str);
        super::body_failed(body, group_id, &result.error(), known)
    });
    match failed {
        Ok(f) => {
            c.also_store.extend(f.metas);
            c.inline.extend(f.inline);
            c.send_after(f.errbacks);
        }
        Err(e) => c.problems.push(format!("the chord's body: {e}")),
    }
}
