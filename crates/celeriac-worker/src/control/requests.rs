//! The requests a worker holds, as remote control shows them (`active`,
//! `reserved`, `query_task`) and counts them (`stats.total`): each handler
//! tracks its message from admission to settlement with a [`Tracked`]
//! guard. The message is decoded again only when someone asks.

use std::collections::HashMap;

use celeriac_core::time::unix_now;
use celeriac_core::{Delivery, Message};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// One request held by the worker.
#[derive(Debug)]
struct Entry {
    id: String,
    name: String,
    delivery: Delivery,
    /// Unix time it started running; `None` while it waits (reserved).
    time_start: Option<f64>,
    acknowledged: bool,
}

/// The requests held now, by delivery tag, and the started count per task
/// name.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    held: Mutex<HashMap<String, Entry>>,
    total: Mutex<HashMap<String, u64>>,
}

/// What a request is doing now, as Celery's `query_task` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Active,
    Reserved,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Reserved => "reserved",
        }
    }
}

impl Requests {
    /// Tracks `msg` (delivered as `d`) until the guard is dropped.
    pub(crate) fn track<'a>(&'a self, msg: &Message, d: &Delivery) -> Tracked<'a> {
        self.held.lock().insert(
            d.tag.clone(),
            Entry {
                id: msg.id().to_string(),
                name: msg.task().to_string(),
                delivery: d.clone(),
                time_start: None,
                acknowledged: false,
            },
        );
        Tracked {
            requests: self,
            tag: d.tag.clone(),
        }
    }

    /// The started count per task name (`stats.total`).
    pub(crate) fn totals(&self) -> HashMap<String, u64> {
        self.total.lock().clone()
    }

    /// Celery's `Request.info()` of every request in `phase`, oldest first.
    pub(crate) fn infos(&self, phase: Phase, safe: bool, hostname: &str) -> Vec<Value> {
        let mut picked: Vec<(Option<f64>, Delivery, bool)> = self
            .held
            .lock()
            .values()
            .filter(|e| phase_of(e) == phase)
            .map(|e| (e.time_start, e.delivery.clone(), e.acknowledged))
            .collect();
        picked.sort_by(|a, b| {
            let (x, y) = (a.0.unwrap_or(0.0), b.0.unwrap_or(0.0));
            x.total_cmp(&y).then_with(|| a.1.tag.cmp(&b.1.tag))
        });
        picked
            .into_iter()
            .filter_map(|(start, d, acked)| info(&d, start, acked, safe, hostname))
            .collect()
    }

    /// `{id: [phase, info]}` of the requests among `ids` held here.
    pub(crate) fn query(&self, ids: &[String], hostname: &str) -> serde_json::Map<String, Value> {
        let found: Vec<(String, Phase, Delivery, Option<f64>, bool)> = self
            .held
            .lock()
            .values()
            .filter(|e| ids.contains(&e.id))
            .map(|e| {
                (
                    e.id.clone(),
                    phase_of(e),
                    e.delivery.clone(),
                    e.time_start,
                    e.acknowledged,
                )
            })
            .collect();
        found
            .into_iter()
            .filter_map(|(id, phase, d, start, acked)| {
                let info = info(&d, start, acked, false, hostname)?;
                Some((id, json!([phase.as_str(), info])))
            })
            .collect()
    }

    /// Task ids running now.
    pub(crate) fn running_ids(&self) -> Vec<String> {
        self.held
            .lock()
            .values()
            .filter(|e| e.time_start.is_some())
            .map(|e| e.id.clone())
            .collect()
    }
}

/// Celery's `scheduled` entry for a message waiting in the broker until
/// `eta` (unix time) on `queue`: `{"eta", "priority", "request"}`, the
/// request as `reserved` shows it. The outer `priority` is Celery's timer
/// priority, always 6; the message's own is in the request's
/// `delivery_info`. The eta is the message's `eta` header when it has one.
pub(crate) fn scheduled(eta: f64, queue: &str, payload: Vec<u8>, hostname: &str) -> Option<Value> {
    let d = Delivery {
        tag: String::new(),
        queue: queue.to_string(),
        payload,
        deliveries: 0,
        redelivered: false,
        revoked: false,
    };
    let request = info(&d, None, false, false, hostname)?;
    let header = Message::decode(&d.payload).ok()?.headers.eta;
    Some(json!({
        "eta": header.unwrap_or_else(|| celeriac_core::time::iso_from_unix(eta)),
        "priority": 6,
        "request": request,
    }))
}

fn phase_of(e: &Entry) -> Phase {
    if e.time_start.is_some() {
        Phase::Active
    } else {
        Phase::Reserved
    }
}

/// Celery's `Request.info(safe)`: with `safe`, the arguments as their
/// repr strings.
fn info(
    d: &Delivery,
    time_start: Option<f64>,
    acknowledged: bool,
    safe: bool,
    hostname: &str,
) -> Option<Value> {
    let msg = Message::decode(&d.payload).ok()?;
    let (args, kwargs) = if safe {
        (
            json!(
                msg.headers
                    .argsrepr
                    .clone()
                    .unwrap_or_else(|| celeriac_core::message::args_repr(&msg.args))
            ),
            json!(
                msg.headers
                    .kwargsrepr
                    .clone()
                    .unwrap_or_else(|| celeriac_core::message::kwargs_repr(&msg.kwargs))
            ),
        )
    } else {
        (json!(msg.args), json!(msg.kwargs))
    };
    let di = &msg.properties.delivery_info;
    Some(json!({
        "id": msg.id(),
        "name": msg.task(),
        "args": args,
        "kwargs": kwargs,
        "type": msg.task(),
        "hostname": hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": di.exchange,
            "routing_key": if di.routing_key.is_empty() { d.queue.as_str() } else { di.routing_key.as_str() },
            "priority": msg.properties.priority,
            "redelivered": d.redelivered,
        },
        "worker_pid": time_start.map(|_| std::process::id()),
    }))
}

/// A request tracked while its handler holds it.
#[derive(Debug)]
pub(crate) struct Tracked<'a> {
    requests: &'a Requests,
    tag: String,
}

impl Tracked<'_> {
    /// It starts running now; counted in `stats.total`.
    pub(crate) fn started(&self) {
        let mut held = self.requests.held.lock();
        let Some(e) = held.get_mut(&self.tag) else {
            return;
        };
        e.time_start = Some(unix_now());
        // Lock order: `held`, then `total`.
        let mut total = self.requests.total.lock();
        match total.get_mut(&e.name) {
            Some(n) => *n += 1,
            None => {
                total.insert(e.name.clone(), 1);
            }
        }
    }

    /// Its message was acknowledged (early ack).
    pub(crate) fn acked(&self) {
        if let Some(e) = self.requests.held.lock().get_mut(&self.tag) {
            e.acknowledged = true;
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.requests.held.lock().remove(&self.tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(msg: &Message, tag: &str) -> Delivery {
        Delivery {
            tag: tag.into(),
            queue: "celery".into(),
            payload: msg.encode().unwrap(),
            deliveries: 1,
            redelivered: false,
            revoked: false,
        }
    }

    #[test]
    fn requests_are_reserved_then_active_then_gone() {
        let r = Requests::default();
        let msg = Message::new("tasks.add", vec![json!(2), json!(3)], Default::default());
        let d = delivery(&msg, "t1");
        {
            let t = r.track(&msg, &d);
            let reserved = r.infos(Phase::Reserved, false, "w@h");
            assert_eq!(reserved.len(), 1);
            assert_eq!(reserved[0]["args"], json!([2, 3]));
            assert_eq!(reserved[0]["time_start"], Value::Null);
            assert_eq!(reserved[0]["worker_pid"], Value::Null);
            assert!(r.infos(Phase::Active, false, "w@h").is_empty());
            t.started();
            t.acked();
            let active = r.infos(Phase::Active, true, "w@h");
            assert_eq!(active[0]["id"], msg.id());
            assert_eq!(active[0]["type"], "tasks.add");
            assert_eq!(active[0]["args"], "(2, 3)", "safe: the repr");
            assert_eq!(active[0]["acknowledged"], true);
            assert_eq!(active[0]["delivery_info"]["routing_key"], "celery");
            assert!(active[0]["time_start"].as_f64().unwrap() > 0.0);
            let q = r.query(&[msg.id().to_string(), "other".into()], "w@h");
            assert_eq!(q[msg.id()][0], "active");
            assert_eq!(q.len(), 1);
            assert_eq!(r.running_ids(), vec![msg.id().to_string()]);
        }
        assert!(r.infos(Phase::Active, false, "w@h").is_empty());
        assert_eq!(r.totals()["tasks.add"], 1);
    }
}
