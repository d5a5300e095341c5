//! Celery's monitoring events (`worker-heartbeat`, `task-succeeded`, ...),
//! in Celery's exact shape: what `celery events`, Flower and
//! `app.events.Receiver` read.
//!
//! An event is a flat JSON object. Every one starts with the sender's
//! `hostname`, `utcoffset` (hours **west** of UTC), `pid` and Lamport
//! `clock`, then its own fields, and ends with `timestamp` (unix seconds)
//! and `type`, in the order Celery's `Event()` builds it:
//!
//! ```text
//! {"hostname": "w1@example", "utcoffset": 0.0, "pid": 12815, "clock": 7,
//!  "uuid": "<id>", "result": "5", "runtime": 0.0131, "timestamp": 1795897012.32, "type": "task-succeeded"}
//! ```
//!
//! Worker events (`worker-online`, `worker-heartbeat`, `worker-offline`)
//! travel alone under the routing key of their type (`worker.heartbeat`);
//! task events travel in lists under `task.multi`, as Celery's prefork
//! workers send them. Brokers carry them with
//! [`Events`](crate::broker::Events); this module builds and reads the
//! JSON.
//!
//! # Examples
//!
//! ```
//! use celeriac_core::events::{self, EventBuilder};
//!
//! let ev = EventBuilder::new("w1@example", 0.0, 42, 7)
//!     .str("uuid", "id-1")
//!     .str("result", "5")
//!     .f64("runtime", 0.25)
//!     .finish(1795897012.5, "task-succeeded");
//! assert_eq!(
//!     ev,
//!     r#"{"hostname": "w1@example", "utcoffset": 0.0, "pid": 42, "clock": 7, "uuid": "id-1", "result": "5", "runtime": 0.25, "timestamp": 1795897012.5, "type": "task-succeeded"}"#
//! );
//! let body = events::list(&[ev]);
//! let decoded = events::decode(&body).unwrap();
//! assert_eq!(decoded[0]["type"], "task-succeeded");
//! assert_eq!(events::routing_key("task-succeeded"), "task.succeeded");
//! ```

use std::fmt::Write as _;
use std::io;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{CodecError, TaskError};

/// The exchange events are published on (Celery's `event_exchange`).
pub const EXCHANGE: &str = "celeryev";

/// The routing key of a list of task events, as Celery's prefork workers
/// send them.
pub const TASK_MULTI: &str = "task.multi";

/// One decoded event: a JSON object with at least `type`.
pub type Event = Map<String, Value>;

/// Builds one event's JSON, fields in Celery's order and with Python's
/// `json.dumps` separators.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    buf: String,
}

impl EventBuilder {
    /// An event from `hostname` (its node name), `utcoffset` hours west of
    /// UTC ([`utcoffset`]), process `pid` and Lamport `clock`.
    pub fn new(hostname: &str, utcoffset: f64, pid: u32, clock: u64) -> Self {
        let mut b = EventBuilder {
            buf: String::with_capacity(256),
        };
        b.buf.push('{');
        b.key_first("hostname");
        push_str(&mut b.buf, hostname);
        b = b.f64("utcoffset", utcoffset);
        b.u64("pid", u64::from(pid)).u64("clock", clock)
    }

    fn key_first(&mut self, key: &str) {
        push_str(&mut self.buf, key);
        self.buf.push_str(": ");
    }

    fn key(&mut self, key: &str) {
        self.buf.push_str(", ");
        self.key_first(key);
    }

    /// A string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_str(&mut self.buf, value);
        self
    }

    /// A string field, or `null`.
    pub fn opt_str(mut self, key: &str, value: Option<&str>) -> Self {
        self.key(key);
        match value {
            Some(v) => push_str(&mut self.buf, v),
            None => self.buf.push_str("null"),
        }
        self
    }

    /// An integer field.
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    /// An integer field, or `null`.
    pub fn opt_u64(mut self, key: &str, value: Option<u64>) -> Self {
        match value {
            Some(v) => self.u64(key, v),
            None => {
                self.key(key);
                self.buf.push_str("null");
                self
            }
        }
    }

    /// A number field (written as Python writes a float: `2.0`, `0.0131`).
    pub fn f64(mut self, key: &str, value: f64) -> Self {
        self.key(key);
        push_f64(&mut self.buf, value);
        self
    }

    /// A boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// A list of numbers (`loadavg`).
    pub fn f64s(mut self, key: &str, values: &[f64]) -> Self {
        self.key(key);
        self.buf.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push_str(", ");
            }
            push_f64(&mut self.buf, *v);
        }
        self.buf.push(']');
        self
    }

    /// Ends the event with its `timestamp` (unix seconds) and `type`, and
    /// returns its JSON.
    pub fn finish(self, timestamp: f64, kind: &str) -> String {
        let mut b = self.f64("timestamp", timestamp).str("type", kind);
        b.buf.push('}');
        b.buf
    }
}

/// Appends `s` as a JSON string. Most event strings (ids, names, node
/// names) need no escaping and are copied as they are.
fn push_str(out: &mut String, s: &str) {
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // A `str` always serializes.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

fn push_f64(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        let _ = write!(out, "{v:.1}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The JSON list of events (each one from [`EventBuilder::finish`]), the
/// body of a [`TASK_MULTI`] message.
pub fn list<S: AsRef<str>>(events: &[S]) -> Vec<u8> {
    let len = events.iter().map(|e| e.as_ref().len() + 2).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(e.as_ref().as_bytes());
    }
    out.push(b']');
    out
}

/// The events in a message body: one JSON object, or a list of them (a
/// `*.multi` message). Anything else is [`CodecError::Malformed`].
pub fn decode(body: &[u8]) -> Result<Vec<Event>, CodecError> {
    match serde_json::from_slice::<Value>(body)? {
        Value::Object(ev) if ev.get("type").is_some_and(Value::is_string) => Ok(vec![ev]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(ev) if ev.get("type").is_some_and(Value::is_string) => Ok(ev),
                _ => Err(CodecError::Malformed(
                    "an event list holds a non-event".into(),
                )),
            })
            .collect(),
        _ => Err(CodecError::Malformed(
            "an event is a JSON object with a type, or a list of them".into(),
        )),
    }
}

/// Celery's `task-sent` event for `msg`, as a client sends it when it
/// publishes a task with `task_send_sent_event` on: from this process's
/// anonymous node name ([`origin`](crate::message::origin)), with the
/// client's Lamport `clock`, under routing key `task.sent`. Monitors
/// (Flower, `celery events`, `celeriac events`) show the task as SENT,
/// and its `client`, from it.
///
/// # Examples
///
/// ```
/// use celeriac_core::{Call, events};
///
/// let msg = Call::<i64>::new("tasks.add").arg(2).arg(3).to_message().unwrap();
/// let sent = events::task_sent(&msg, 1, 1795897012.5);
/// assert_eq!(sent.routing_key, "task.sent");
/// let ev = &events::decode(&sent.body).unwrap()[0];
/// assert_eq!(ev["type"], "task-sent");
/// assert_eq!(ev["uuid"], msg.id());
/// assert_eq!(ev["args"], "(2, 3)");
/// assert_eq!(ev["queue"], "celery");
/// ```
pub fn task_sent(msg: &crate::Message, clock: u64, timestamp: f64) -> crate::broker::EventMessage {
    let h = &msg.headers;
    let hostname = crate::message::origin();
    let args = h
        .argsrepr
        .clone()
        .unwrap_or_else(|| crate::message::args_repr(&msg.args));
    let kwargs = h
        .kwargsrepr
        .clone()
        .unwrap_or_else(|| crate::message::kwargs_repr(&msg.kwargs));
    let di = &msg.properties.delivery_info;
    let json = EventBuilder::new(&hostname, utcoffset(), std::process::id(), clock)
        .str("uuid", msg.id())
        .opt_str("root_id", h.root_id.as_deref())
        .opt_str("parent_id", h.parent_id.as_deref())
        .str("name", msg.task())
        .str("args", &args)
        .str("kwargs", &kwargs)
        .u64("retries", u64::from(h.retries))
        .opt_str("eta", h.eta.as_deref())
        .opt_str("expires", h.expires.as_deref())
        .str("queue", msg.queue())
        .str("exchange", &di.exchange)
        .str("routing_key", &di.routing_key)
        .finish(timestamp, "task-sent");
    crate::broker::EventMessage {
        routing_key: routing_key("task-sent"),
        hostname,
        body: json.into_bytes(),
    }
}

/// The routing key of an event type: `task-succeeded` → `task.succeeded`.
pub fn routing_key(kind: &str) -> String {
    kind.replace('-', ".")
}

/// The local offset from UTC in whole hours **west** (Celery's
/// `utcoffset()`: `time.timezone // 3600`, or `time.altzone // 3600`
/// under daylight saving time).
pub fn utcoffset() -> f64 {
    use chrono::Offset as _;
    let east = chrono::Local::now().offset().fix().local_minus_utc();
    f64::from((-east).div_euclid(3600))
}

/// Python's `repr()` of a task's exception, as Celery's events carry it:
/// `ValueError('boom')`.
pub fn exception_repr(err: &TaskError) -> String {
    format!(
        "{}({})",
        err.exc_type(),
        crate::message::value_repr(&Value::String(err.message().to_string()))
    )
}

/// JSON with the separators of Python's `json.dumps` (`", "` and `": "`),
/// as kombu writes envelopes.
pub fn python_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSeparators);
    value.serialize(&mut ser)?;
    Ok(out)
}

struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_has_celerys_fields_in_celerys_order() {
        let ev = EventBuilder::new("w1@example", 0.0, 12815, 1)
            .f64("freq", 2.0)
            .u64("active", 0)
            .u64("processed", 0)
            .f64s("loadavg", &[2.54, 1.6, 0.71])
            .str("sw_ident", "py-celery")
            .str("sw_ver", "5.7.0")
            .str("sw_sys", "Linux")
            .finish(1795897012.32, "worker-online");
        // As observed from Celery 5.7 (shared reference, section 2.4).
        assert_eq!(
            ev,
            r#"{"hostname": "w1@example", "utcoffset": 0.0, "pid": 12815, "clock": 1, "freq": 2.0, "active": 0, "processed": 0, "loadavg": [2.54, 1.6, 0.71], "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": 1795897012.32, "type": "worker-online"}"#
        );
        let back = decode(ev.as_bytes()).unwrap();
        assert_eq!(back[0]["loadavg"][1], 1.6);
    }

    #[test]
    fn nulls_bools_and_escapes() {
        let ev = EventBuilder::new("h\"x", -1.0, 1, 2)
            .opt_str("eta", None)
            .opt_u64("signum", Some(15))
            .opt_u64("none", None)
            .bool("expired", false)
            .str("traceback", "line\nnext")
            .finish(1.0, "task-revoked");
        let back = decode(ev.as_bytes()).unwrap().remove(0);
        assert_eq!(back["hostname"], "h\"x");
        assert_eq!(back["utcoffset"], -1.0);
        assert!(back["eta"].is_null() && back["none"].is_null());
        assert_eq!(back["signum"], 15);
        assert_eq!(back["expired"], false);
        assert_eq!(back["traceback"], "line\nnext");
        assert_eq!(back["timestamp"], 1.0);
    }

    #[test]
    fn a_list_decodes_to_its_events_and_junk_is_refused() {
        let a = EventBuilder::new("h", 0.0, 1, 1).finish(1.0, "task-started");
        let b = EventBuilder::new("h", 0.0, 1, 2).finish(2.0, "task-received");
        let got = decode(&list(&[a, b])).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["clock"], 2);
        assert!(decode(b"[]").unwrap().is_empty());
        for junk in [&b"{}"[..], b"[1]", b"3", b"not json", b"{\"type\": 1}"] {
            assert!(decode(junk).is_err(), "{:?}", String::from_utf8_lossy(junk));
        }
    }

    #[test]
    fn reprs_and_keys() {
        let err = TaskError::typed("ValueError", "builtins", "it's bad");
        assert_eq!(exception_repr(&err), r"ValueError('it\'s bad')");
        assert_eq!(routing_key("worker-heartbeat"), "worker.heartbeat");
        let off = utcoffset();
        assert!(off.fract() == 0.0 && off.abs() <= 24.0, "{off}");
        assert_eq!(
            python_json(&serde_json::json!({"a": [1, 2]})).unwrap(),
            br#"{"a": [1, 2]}"#
        );
    }
}
