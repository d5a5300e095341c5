//! The message a client sends for one task of a canvas, from the task
//! and Celery's `apply_async` options (`task_id`, `group_id`,
//! `group_index`, `root_id`, `parent_id`, `chain`, `chord`, `link`,
//! `link_error`, `queue`, `priority`, `countdown`, `eta`, `expires`, time
//! limits, `reply_to`).

use serde_json::{Map, Value};

use super::CanvasError;
use super::node::TaskNode;
use crate::message::{DEFAULT_QUEUE, Embed, Message};

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// The message a client sends for a task with Celery's `apply_async`
/// options `o`.
pub(crate) fn message(t: &TaskNode, o: &Map<String, Value>) -> Result<Message, CanvasError> {
    let id = string(o.get("task_id")).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut msg = Message::with_id(&t.name, &id, t.args.clone(), t.kwargs.clone());
    if let Some(root) = string(o.get("root_id")) {
        msg.headers.root_id = Some(root);
    }
    msg.headers.parent_id = string(o.get("parent_id"));
    msg.headers.group = string(o.get("group_id"));
    msg.headers.group_index = o.get("group_index").and_then(Value::as_u64);
    let now = crate::time::unix_now();
    msg.headers.eta = match (o.get("eta"), o.get("countdown").and_then(Value::as_f64)) {
        (Some(Value::String(eta)), _) => Some(eta.clone()),
        (_, Some(c)) if c.is_finite() && c > 0.0 => {
            Some(crate::time::try_iso_from_unix(now + c).ok_or_else(|| {
                CanvasError::InvalidArguments(format!("{}: countdown {c} is out of range", t.name))
            })?)
        }
        _ => None,
    };
    msg.headers.expires = match o.get("expires") {
        Some(Value::String(at)) => Some(at.clone()),
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite())
            .and_then(|s| crate::time::try_iso_from_unix(now + s)),
        None => None,
    };
    msg.headers.timelimit = (
        o.get("time_limit").and_then(Value::as_f64),
        o.get("soft_time_limit").and_then(Value::as_f64),
    );
    msg.headers.ignore_result = o.get("ignore_result").and_then(Value::as_bool);
    if let Some(p) = o.get("priority").and_then(Value::as_u64) {
        msg.properties.priority = p.min(255) as u8;
    }
    let queue = o
        .get("queue")
        .and_then(|q| match q {
            Value::String(s) => Some(s.as_str()),
            Value::Object(m) => m.get("name").and_then(Value::as_str),
            _ => None,
        })
        .unwrap_or(DEFAULT_QUEUE);
    msg.set_queue(queue);
    msg.properties.reply_to = string(o.get("reply_to"));
    msg.embed = Embed {
        callbacks: list(o.get("link")),
        errbacks: list(o.get("link_error")),
        chain: match o.get("chain") {
            Some(Value::Array(a)) => Some(a.clone()),
            _ => None,
        },
        chord: o.get("chord").filter(|c| !c.is_null()).cloned(),
        extra: Map::new(),
    };
    for (k, v) in &t.headers {
        msg.headers.extra.insert(k.clone(), v.clone());
    }
    Ok(msg)
}

fn list(v: Option<&Value>) -> Option<Vec<Value>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a.clone()),
        Some(one) => Some(vec![one.clone()]),
    }
}
