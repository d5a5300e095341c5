//! The remote-control commands (Celery's `Panel`), each answering with
//! the value Celery's worker answers with: `{"ok": ...}` or
//! `{"error": ...}` for control commands, the bare value for inspect
//! commands, and `{"error": "KeyError('name')"}` for a command this worker
//! does not have.

use std::time::Duration;

use celeriac_core::{ControlRequest, RateLimit, ResultMeta, State, TaskError};
use serde_json::{Map, Value, json};

use super::info;
use super::requests::Phase;
use crate::worker::Worker;

/// What the worker does with a request.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Reply with this value (if a reply is wanted); `null` for commands
    /// that return nothing.
    Reply(Value),
    /// Stop warm, without replying (Celery's `WorkerShutdown`).
    Shutdown,
}

fn ok(text: impl Into<String>) -> Outcome {
    Outcome::Reply(json!({"ok": text.into()}))
}

fn nok(text: impl Into<String>) -> Outcome {
    Outcome::Reply(json!({"error": text.into()}))
}

/// Python's `repr()` of a string.
pub(crate) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Argument readers, lenient as Python's handlers are: numbers may come as
/// strings (`celery control` sends what it parsed).
fn arg<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    args.get(name).filter(|v| !v.is_null())
}

fn arg_f64(args: &Map<String, Value>, name: &str) -> Option<f64> {
    match arg(args, name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn arg_usize(args: &Map<String, Value>, name: &str) -> Option<usize> {
    arg_f64(args, name)
        .filter(|n| *n >= 0.0)
        .map(|n| n as usize)
}

fn arg_str(args: &Map<String, Value>, name: &str) -> Option<String> {
    match arg(args, name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn arg_bool(args: &Map<String, Value>, name: &str) -> bool {
    match arg(args, name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        }
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        _ => false,
    }
}

/// A string or a list of strings (Celery's `maybe_list`).
fn arg_list(args: &Map<String, Value>, name: &str) -> Vec<String> {
    match arg(args, name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Carries out one request addressed to this worker.
pub(crate) async fn dispatch(worker: &Worker, req: &ControlRequest) -> Outcome {
    let inner = worker.inner();
    let args = &req.arguments;
    let node = inner.config.nodename.as_str();
    match req.method.as_str() {
        "ping" => ok("pong"),
        "stats" => Outcome::Reply(info::stats(worker)),
        "active" | "dump_active" => Outcome::Reply(json!(inner.control.requests.infos(
            Phase::Active,
            arg_bool(args, "safe"),
            node
        ))),
        "reserved" | "dump_reserved" => Outcome::Reply(json!(inner.control.requests.infos(
            Phase::Reserved,
            false,
            node
        ))),
        "scheduled" | "dump_schedule" => scheduled(worker).await,
        "revoked" | "dump_revoked" => Outcome::Reply(json!(inner.control.revoked_ids())),
        "registered" | "dump_tasks" => Outcome::Reply(info::registered(
            inner,
            &arg_list(args, "taskinfoitems"),
            arg_bool(args, "builtins"),
        )),
        "active_queues" => Outcome::Reply(info::active_queues(inner)),
        "conf" | "dump_conf" => Outcome::Reply(info::conf(worker)),
        "report" => ok(info::report(inner)),
        "clock" => Outcome::Reply(json!({"clock": inner.control.clock()})),
        "query_task" => query_task(worker, &arg_list(args, "ids")).await,
        "hello" => {
            let from = arg_str(args, "from_node").unwrap_or_default();
            if from == node {
                return Outcome::Reply(Value::Null);
            }
            tracing::info!(from = %celeriac_core::escape::Escaped(&from), "sync with node");
            inner.control.remember_revoked(&arg_list(args, "revoked"));
            Outcome::Reply(json!({
                "revoked": inner.control.revoked_ids(),
                "clock": inner.control.forward(),
            }))
        }
        "heartbeat" => {
            // A permit is kept if the events chore is busy (publishing task
            // events) rather than waiting: the heartbeat follows as soon as
            // it is free, instead of at the next interval.
            inner.control.heartbeat_wanted.notify_one();
            Outcome::Reply(Value::Null)
        }
        "enable_events" => {
            let was = inner
                .config
                .events_enabled
                .swap(true, std::sync::atomic::Ordering::SeqCst);
            if was {
                ok("task events already enabled")
            } else {
                tracing::info!("Events of group {{task}} enabled by remote.");
                ok("task events enabled")
            }
        }
        "disable_events" => {
            let was = inner
                .config
                .events_enabled
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            if was {
                tracing::info!("Events of group {{task}} disabled by remote.");
                ok("task events disabled")
            } else {
                ok("task events already disabled")
            }
        }
        "rate_limit" => rate_limit(worker, args),
        "time_limit" => time_limit(worker, args),
        "pool_grow" | "pool_shrink" => pool_resize(worker, &req.method, args),
        "autoscale" => autoscale(worker, args),
        "add_consumer" => {
            let Some(queue) = arg_str(args, "queue") else {
                return nok("add_consumer needs a queue");
            };
            if let Err(e) = celeriac_core::validate_queue_name(&queue) {
                return nok(e.to_string());
            }
            if inner.control.add_queue(&queue) {
                tracing::info!(queue = %celeriac_core::escape::Escaped(&queue), "started consuming from a queue (remote control)");
            }
            ok(format!("add consumer {queue}"))
        }
        "cancel_consumer" => {
            let queue = arg_str(args, "queue").unwrap_or_default();
            if inner.control.remove_queue(&queue) {
                tracing::info!(queue = %celeriac_core::escape::Escaped(&queue), "stopped consuming from a queue (remote control)");
            }
            ok(format!("no longer consuming from {queue}"))
        }
        "shutdown" => {
            tracing::warn!(
                "{}",
                arg_str(args, "msg").unwrap_or_else(|| "Got shutdown from remote".into())
            );
            Outcome::Shutdown
        }
        "revoke" => {
            revoke(
                worker,
                &arg_list(args, "task_id"),
                arg_bool(args, "terminate"),
            )
            .await
        }
        "terminate" => revoke(worker, &arg_list(args, "task_id"), true).await,
        "election" => Outcome::Reply(Value::Null),
        "pool_restart" => nok_exception("ValueError", "Pool restarts not enabled"),
        other => nok_exception("KeyError", other),
    }
}

/// The most entries `scheduled` lists.
const SCHEDULED_MAX: usize = 10_000;

/// `scheduled`: a celeriac worker never holds an eta message in memory
/// (the broker keeps it until due), so it lists the delayed messages of
/// the queues it consumes, in Celery's shape. Every worker consuming a
/// queue lists the same ones: whichever claims one when due runs it.
async fn scheduled(worker: &Worker) -> Outcome {
    let inner = worker.inner();
    let queues = inner.control.queues();
    match inner.broker.delayed(&queues, SCHEDULED_MAX).await {
        Ok(found) => Outcome::Reply(Value::Array(
            found
                .into_iter()
                .filter_map(|(eta, queue, payload)| {
                    super::requests::scheduled(eta, &queue, payload, &inner.config.nodename)
                })
                .collect(),
        )),
        Err(e) => nok(format!("could not list the delayed messages: {e}")),
    }
}

/// `query_task`: `{id: [state, request]}` for the ids held here (`active`,
/// `reserved`), then for those waiting in the broker on this worker's
/// queues (`scheduled`, as `scheduled` lists them).
async fn query_task(worker: &Worker, ids: &[String]) -> Outcome {
    let inner = worker.inner();
    let node = inner.config.nodename.as_str();
    let mut found = inner.control.requests.query(ids, node);
    if found.len() < ids.len() {
        let queues = inner.control.queues();
        if let Ok(delayed) = inner.broker.delayed(&queues, SCHEDULED_MAX).await {
            for (eta, queue, payload) in delayed {
                let Some(entry) = super::requests::scheduled(eta, &queue, payload, node) else {
                    continue;
                };
                let Some(id) = entry["request"]["id"].as_str().map(str::to_string) else {
                    continue;
                };
                if ids.contains(&id) && !found.contains_key(&id) {
                    found.insert(id, json!(["scheduled", entry["request"]]));
                }
            }
        }
    }
    Outcome::Reply(Value::Object(found))
}

/// The reply Celery's dispatcher gives when a handler raises.
fn nok_exception(kind: &str, what: &str) -> Outcome {
    nok(format!("{kind}({})", py_repr(what)))
}

fn known(worker: &Worker, name: &str) -> bool {
    let inner = worker.inner();
    inner.registry.contains(name) || inner.celery_tasks.contains(name)
}

/// `rate_limit`: a new rate for a task name, read as celeriac reads rates
/// (`"10/m"` shared by the workers on the broker, `"10/m/w"` per worker);
/// an empty or zero rate removes the limit.
fn rate_limit(worker: &Worker, args: &Map<String, Value>) -> Outcome {
    let name = arg_str(args, "task_name").unwrap_or_default();
    let text = arg_str(args, "rate_limit").unwrap_or_default();
    let off = text.trim().is_empty()
        || text
            .split('/')
            .next()
            .and_then(|n| n.trim().parse::<f64>().ok())
            == Some(0.0);
    let limit = if off {
        None
    } else {
        match text.parse::<RateLimit>() {
            Ok(l) => Some(l),
            Err(e) => {
                return nok(format!(
                    "Invalid rate limit string: ValueError({})",
                    py_repr(&e)
                ));
            }
        }
    };
    if !known(worker, &name) {
        tracing::error!(task = %celeriac_core::escape::Escaped(&name), "Rate limit attempt for unknown task");
        return nok("unknown task");
    }
    worker.inner().control.set_rate_limit(&name, limit, &text);
    if off {
        tracing::info!(task = %celeriac_core::escape::Escaped(&name), "rate limits disabled");
        ok("rate limit disabled successfully")
    } else {
        tracing::info!(task = %celeriac_core::escape::Escaped(&name), rate = %celeriac_core::escape::Escaped(&text), "new rate limit");
        ok("new rate limit set successfully")
    }
}

/// `time_limit`: new soft and hard limits for a task name (a message's own
/// `timelimit` still wins).
fn time_limit(worker: &Worker, args: &Map<String, Value>) -> Outcome {
    let name = arg_str(args, "task_name").unwrap_or_default();
    if !known(worker, &name) {
        tracing::error!(task = %celeriac_core::escape::Escaped(&name), "Change time limit attempt for unknown task");
        return nok("unknown task");
    }
    let secs = |v: Option<f64>| {
        v.filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    };
    let soft = secs(arg_f64(args, "soft"));
    let hard = secs(arg_f64(args, "hard"));
    worker.inner().control.set_time_limits(&name, soft, hard);
    tracing::info!(task = %celeriac_core::escape::Escaped(&name), ?soft, ?hard, "new time limits");
    ok("time limits set successfully")
}

fn pool_resize(worker: &Worker, method: &str, args: &Map<String, Value>) -> Outcome {
    if worker.inner().control.autoscale().is_some() {
        return nok(format!(
            "{method} is not supported with autoscale. Adjust autoscale range instead."
        ));
    }
    let n = arg_usize(args, "n").unwrap_or(1);
    let now = worker.concurrency();
    let (want, text) = if method == "pool_grow" {
        (now.saturating_add(n), "pool will grow")
    } else {
        if n >= now {
            return nok_exception("ValueError", "Can't shrink pool below one slot");
        }
        (now - n, "pool will shrink")
    };
    match worker.set_concurrency(want) {
        Ok(()) => ok(text),
        Err(e) => nok_exception("ValueError", &e.to_string()),
    }
}

fn autoscale(worker: &Worker, args: &Map<String, Value>) -> Outcome {
    let inner = worker.inner();
    let Some((min, max)) = inner.control.autoscale() else {
        return nok_exception("ValueError", "Autoscale not enabled");
    };
    let max = arg_usize(args, "max").unwrap_or(max);
    let min = arg_usize(args, "min").unwrap_or(min);
    if min == 0 || min > max {
        return nok_exception(
            "ValueError",
            &format!("autoscale needs 1 <= min <= max (got min {min}, max {max})"),
        );
    }
    inner.control.set_autoscale(min, max);
    ok(format!("autoscale now max={max} min={min}"))
}

/// `revoke`, as Celery 5.7 does it: the ids are remembered; each one not
/// running here whose result is still PENDING, RECEIVED, RETRY or
/// REJECTED is stored as REVOKED; with `terminate`, the ones running here
/// are stopped. (The broker records the revoke itself, so reserved and
/// future deliveries are skipped.)
async fn revoke(worker: &Worker, ids: &[String], terminate: bool) -> Outcome {
    let inner = worker.inner();
    inner.control.remember_revoked(ids);
    let running = inner.control.requests.running_ids();
    for id in ids.iter().filter(|id| !running.contains(id)) {
        let state = match inner.backend.get(id).await {
            Ok(meta) => meta.map_or(State::Pending, |m| m.status),
            Err(e) => {
                tracing::warn!(task_id = %celeriac_core::escape::Escaped(id), error = %e, "Failed to mark task as revoked in backend");
                continue;
            }
        };
        if !matches!(
            state,
            State::Pending | State::Received | State::Retry | State::Rejected
        ) {
            continue;
        }
        let mut meta = ResultMeta::failure(id, &TaskError::revoked("revoked"));
        meta.traceback = None;
        if let Err(e) = inner.backend.store(&meta).await {
            tracing::warn!(task_id = %celeriac_core::escape::Escaped(id), error = %e, "Failed to mark task as revoked in backend");
        }
    }
    if terminate {
        let mut done: Vec<&str> = Vec::new();
        for id in ids.iter().filter(|id| running.contains(id)) {
            tracing::info!(task_id = %celeriac_core::escape::Escaped(id), "Terminating task (remote control)");
            inner.executors.terminate(id);
            done.push(id);
        }
        return if done.is_empty() {
            ok("terminate: tasks unknown")
        } else {
            ok(format!("terminate: {}", done.join(", ")))
        };
    }
    tracing::info!(ids = %celeriac_core::escape::Escaped(&ids.join(", ")), "Tasks flagged as revoked");
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    let set = if sorted.is_empty() {
        "set()".to_string()
    } else {
        format!(
            "{{{}}}",
            sorted
                .iter()
                .map(|s| py_repr(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    ok(format!("tasks {set} flagged as revoked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_repr_quotes_as_python() {
        assert_eq!(py_repr("abc"), "'abc'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr("a\\b\n"), "'a\\\\b\\n'");
    }

    #[test]
    fn lenient_arguments() {
        let args: Map<String, Value> =
            serde_json::from_str(r#"{"n": "3", "safe": "true", "ids": "x", "m": null}"#).unwrap();
        assert_eq!(arg_usize(&args, "n"), Some(3));
        assert!(arg_bool(&args, "safe"));
        assert_eq!(arg_list(&args, "ids"), vec!["x".to_string()]);
        assert_eq!(arg_str(&args, "m"), None);
    }
}
