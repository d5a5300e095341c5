//! The Celery task message, protocol v2: celeriac's native format on every
//! broker.
//!
//! A [`Message`] is what a task call is on the wire: [`Headers`] (task name,
//! id, eta, retries, ...), [`Properties`] (correlation id, delivery info,
//! priority, delivery tag) and the body `[args, kwargs, embed]`.
//!
//! [`Message::decode`] reads the JSON envelope that kombu's Redis transport
//! (and celeriac's embedded brokers) store, accepts protocol v1 messages and
//! converts them, and decodes kombu's `__type__` JSON tags.
//! [`Message::encode`] writes the same envelope, byte-compatible with what
//! Python Celery 5.x produces.
//!
//! # Examples
//!
//! ```
//! use celeriac_core::Message;
//! use serde_json::json;
//!
//! let msg = Message::new("tasks.add", vec![json!(2), json!(3)], Default::default());
//! let bytes = msg.encode().unwrap();
//! let back = Message::decode(&bytes).unwrap();
//! assert_eq!(back.headers.task, "tasks.add");
//! assert_eq!(back.args, vec![json!(2), json!(3)]);
//! assert_eq!(back.properties.delivery_info.routing_key, "celery");
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CodecError;

mod body;
mod repr;

use body::{convert_v1, has_wide_float, json_size, split_v2_body};
pub use body::{decode_kombu_tags, out_of_range_integer};
pub use repr::{args_repr, kwargs_repr, value_repr};

/// The JSON content type, the only one accepted by default.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The default queue and routing key, as in Celery.
pub const DEFAULT_QUEUE: &str = "celery";

/// Default upper bound for a decoded body (64 MiB).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

/// Protocol v2 headers (`celery/app/amqp.py` `as_task_v2`).
///
/// Unknown headers are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headers {
    /// Client language; ignored by workers.
    #[serde(default)]
    pub lang: Option<String>,
    /// The task name. Its presence marks a v2 message.
    pub task: String,
    /// The task id (a UUID), equal to `correlation_id`.
    pub id: String,
    /// An alias name for logs.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Earliest run time, ISO-8601.
    #[serde(default)]
    pub eta: Option<String>,
    /// Expiry time, ISO-8601.
    #[serde(default)]
    pub expires: Option<String>,
    /// Group id for group and chord-header members.
    #[serde(default)]
    pub group: Option<String>,
    /// Index within the group.
    #[serde(default)]
    pub group_index: Option<u64>,
    /// Number of retries so far.
    #[serde(default)]
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds.
    #[serde(default)]
    pub timelimit: (Option<f64>, Option<f64>),
    /// First task of the workflow.
    #[serde(default)]
    pub root_id: Option<String>,
    /// The task that sent this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Repr of the args, for logs.
    #[serde(default)]
    pub argsrepr: Option<String>,
    /// Repr of the kwargs, for logs.
    #[serde(default)]
    pub kwargsrepr: Option<String>,
    /// Who sent it: `gen<pid>@<host>` or a worker node name.
    #[serde(default)]
    pub origin: Option<String>,
    /// Whether the result is not stored; null means "task default".
    #[serde(default)]
    pub ignore_result: Option<bool>,
    /// Celery 5.3+ nesting counter.
    #[serde(default)]
    pub replaced_task_nesting: Option<u32>,
    /// Celery 5.3+ stamping.
    #[serde(default)]
    pub stamped_headers: Option<Value>,
    /// Celery 5.3+ stamps.
    #[serde(default)]
    pub stamps: Option<Value>,
    /// Headers this struct does not name (e.g. `redelivered`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `delivery_info`: required by kombu on restore and reject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// The exchange; `""` for the default direct publish.
    #[serde(default)]
    pub exchange: String,
    /// The routing key; for exchange `""` it is the queue name.
    #[serde(default)]
    pub routing_key: String,
    /// Other fields, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Message properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// The task id.
    #[serde(default)]
    pub correlation_id: String,
    /// Client oid (used by the RPC backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// 2 for persistent task messages.
    #[serde(default = "default_delivery_mode")]
    pub delivery_mode: u8,
    /// Exchange and routing key.
    #[serde(default = "default_delivery_info")]
    pub delivery_info: DeliveryInfo,
    /// Priority 0-9.
    #[serde(default)]
    pub priority: u8,
    /// `"base64"` on Redis and the embedded brokers.
    #[serde(default = "default_body_encoding")]
    pub body_encoding: String,
    /// Unique per publish; the key of kombu's `unacked` hash.
    #[serde(default)]
    pub delivery_tag: String,
    /// Other properties, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_delivery_mode() -> u8 {
    2
}
fn default_body_encoding() -> String {
    "base64".to_string()
}
fn default_delivery_info() -> DeliveryInfo {
    DeliveryInfo {
        exchange: String::new(),
        routing_key: DEFAULT_QUEUE.to_string(),
        extra: Map::new(),
    }
}

/// The third body element: callbacks, errbacks, chain and chord.
///
/// Signatures are kept as JSON objects so that every canvas Python can send
/// is accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Embed {
    /// Signatures to call with the result on success (`link`).
    #[serde(default)]
    pub callbacks: Option<Vec<Value>>,
    /// Signatures to call on failure (`link_error`).
    #[serde(default)]
    pub errbacks: Option<Vec<Value>>,
    /// Remaining chain steps, in reverse order.
    #[serde(default)]
    pub chain: Option<Vec<Value>>,
    /// Chord body, when this task is a chord-header member.
    #[serde(default)]
    pub chord: Option<Value>,
    /// Other fields, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A task message, protocol v2.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The headers.
    pub headers: Headers,
    /// The properties.
    pub properties: Properties,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
    /// The first integer literal of the body that JSON could read only as
    /// a float; see [`Message::out_of_range_integer`].
    out_of_range: Option<String>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    body: Value,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct OutEnvelope<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'static str,
    #[serde(rename = "content-type")]
    content_type: &'static str,
    headers: &'a Headers,
    properties: &'a Properties,
}

/// This process's anonymous node name, `gen<pid>@<host>` (Celery's
/// `anon_nodename()`): the `origin` header of the messages it publishes,
/// and the `hostname` of the `task-sent` events it sends.
pub fn origin() -> String {
    static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(|| format!("gen{}@{}", std::process::id(), hostname()))
        .clone()
}

/// This machine's host name.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

impl Message {
    /// A new message for task `name`, with a fresh id, routed to the default
    /// queue `celery`, as `app.send_task(name, args, kwargs)` would build it.
    pub fn new(name: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        Self::with_id(name, &id, args, kwargs)
    }

    /// Like [`Message::new`] with a given task id.
    pub fn with_id(name: &str, id: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let headers = Headers {
            lang: Some("rs".to_string()),
            task: name.to_string(),
            id: id.to_string(),
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: (None, None),
            root_id: Some(id.to_string()),
            parent_id: None,
            argsrepr: Some(args_repr(&args)),
            kwargsrepr: Some(kwargs_repr(&kwargs)),
            origin: Some(origin()),
            ignore_result: None,
            replaced_task_nesting: Some(0),
            stamped_headers: None,
            stamps: Some(Value::Object(Map::new())),
            extra: Map::new(),
        };
        let properties = Properties {
            correlation_id: id.to_string(),
            reply_to: None,
            delivery_mode: 2,
            delivery_info: default_delivery_info(),
            priority: 0,
            body_encoding: "base64".to_string(),
            delivery_tag: uuid::Uuid::new_v4().to_string(),
            extra: Map::new(),
        };
        Message {
            headers,
            properties,
            args,
            kwargs,
            embed: Embed::default(),
            out_of_range: None,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.headers.id
    }

    /// The task name.
    pub fn task(&self) -> &str {
        &self.headers.task
    }

    /// The queue the message is routed to (its routing key for the default
    /// exchange).
    pub fn queue(&self) -> &str {
        &self.properties.delivery_info.routing_key
    }

    /// Routes the message to `queue` through the default exchange.
    pub fn set_queue(&mut self, queue: &str) {
        self.properties.delivery_info.exchange = String::new();
        self.properties.delivery_info.routing_key = queue.to_string();
    }

    /// The first integer of the body outside the 64-bit range (below
    /// -2^63 or above 2^64 - 1), as it was written, if the message was
    /// decoded from bytes that hold one.
    ///
    /// JSON numbers are read as 64-bit integers or floats, so such an
    /// integer (a Python int is unbounded) arrives in `args` as a float
    /// that has lost its exact value. A worker fails the task with
    /// `OverflowError` instead of running it with a rounded number.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_core::Message;
    /// // What a Python client sends for add.delay(2**70, 1).
    /// let envelope = br#"{"body": "[[1180591620717411303424, 1], {}, {}]",
    ///     "content-type": "application/json", "content-encoding": "utf-8",
    ///     "headers": {"task": "tasks.add", "id": "6c3c"}, "properties": {"body_encoding": "utf-8"}}"#;
    /// let msg = Message::decode(envelope).unwrap();
    /// assert_eq!(msg.out_of_range_integer(), Some("1180591620717411303424"));
    /// assert!(msg.args[0].is_f64());
    ///
    /// let small = Message::new("tasks.add", vec![u64::MAX.into(), i64::MIN.into()], Default::default());
    /// let back = Message::decode(&small.encode().unwrap()).unwrap();
    /// assert_eq!(back.out_of_range_integer(), None);
    /// ```
    pub fn out_of_range_integer(&self) -> Option<&str> {
        self.out_of_range.as_deref()
    }

    /// Checks that `eta` and `expires`, when set, are ISO-8601 times that
    /// [`parse_iso`](crate::time::parse_iso) reads ([`Message::eta_unix`]
    /// and [`Message::expires_unix`] say `None` for a value that is not
    /// one). A worker dead-letters a message that fails this check, as
    /// Celery rejects it, instead of running it at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_core::Message;
    /// let mut msg = Message::new("tasks.add", vec![], Default::default());
    /// assert!(msg.check_times().is_ok());
    /// msg.headers.eta = Some("2026-11-26T10:00:00+00:00".into());
    /// assert!(msg.check_times().is_ok());
    /// msg.headers.expires = Some("yesterday".into());
    /// assert_eq!(
    ///     msg.check_times().unwrap_err().to_string(),
    ///     "malformed message: header `expires` is not an ISO-8601 time: \"yesterday\""
    /// );
    /// ```
    pub fn check_times(&self) -> Result<(), CodecError> {
        for (name, value) in [
            ("eta", &self.headers.eta),
            ("expires", &self.headers.expires),
        ] {
            if let Some(v) = value
                && crate::time::parse_iso(v).is_none()
            {
                return Err(CodecError::Malformed(format!(
                    "header `{name}` is not an ISO-8601 time: {v:?}"
                )));
            }
        }
        Ok(())
    }

    /// `eta` as unix seconds, if set and parseable.
    pub fn eta_unix(&self) -> Option<f64> {
        self.headers.eta.as_deref().and_then(crate::time::parse_iso)
    }

    /// The idempotency key (header `idempotency_key`), if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.headers
            .extra
            .get(crate::task::IDEMPOTENCY_HEADER)
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
    }

    /// `expires` as unix seconds, if set and parseable.
    pub fn expires_unix(&self) -> Option<f64> {
        self.headers
            .expires
            .as_deref()
            .and_then(crate::time::parse_iso)
    }

    /// Serializes the body `[args, kwargs, embed]` as JSON.
    pub fn body_json(&self) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(&(
            &self.args,
            &self.kwargs,
            &self.embed,
        ))?)
    }

    /// Encodes the JSON envelope as kombu's Redis transport stores it: the
    /// body base64-encoded, `body_encoding: "base64"`.
    ///
    /// The body is always base64-encoded, so `body_encoding` is always
    /// written as `"base64"`, whatever the properties say.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let body = B64.encode(self.body_json()?);
        let fixed;
        let properties = if self.properties.body_encoding == "base64" {
            &self.properties
        } else {
            fixed = Properties {
                body_encoding: "base64".to_string(),
                ..self.properties.clone()
            };
            &fixed
        };
        let env = OutEnvelope {
            body,
            content_encoding: "utf-8",
            content_type: CONTENT_TYPE_JSON,
            headers: &self.headers,
            properties,
        };
        Ok(serde_json::to_vec(&env)?)
    }

    /// Decodes an envelope (protocol v2 or v1) with the default body limit.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Self::decode_with_limit(bytes, DEFAULT_MAX_BODY)
    }

    /// Decodes an envelope, refusing bodies larger than `max_body` bytes.
    pub fn decode_with_limit(bytes: &[u8], max_body: usize) -> Result<Self, CodecError> {
        let raw: RawEnvelope = serde_json::from_slice(bytes)
            .map_err(|e| CodecError::Malformed(format!("envelope is not a JSON object: {e}")))?;
        let mut headers = raw.headers.unwrap_or_default();
        let mut properties = raw.properties.unwrap_or_default();
        if let Some(c) = headers.get("compression").and_then(Value::as_str) {
            return Err(CodecError::UnsupportedCompression(c.to_string()));
        }
        let content_type = raw
            .content_type
            .unwrap_or_else(|| CONTENT_TYPE_JSON.to_string());
        if content_type != CONTENT_TYPE_JSON {
            return Err(CodecError::ContentDisallowed(content_type));
        }
        if let Some(enc) = raw.content_encoding.as_deref()
            && !enc.eq_ignore_ascii_case("utf-8")
            && !enc.eq_ignore_ascii_case("utf8")
        {
            return Err(CodecError::Malformed(format!(
                "unsupported content-encoding {enc:?} for JSON"
            )));
        }
        let base64_body = properties
            .get("body_encoding")
            .and_then(Value::as_str)
            .is_some_and(|e| e == "base64");
        let mut out_of_range = None;
        let body: Value = match raw.body {
            Value::String(s) => {
                let bytes = if base64_body {
                    B64.decode(s.as_bytes()).map_err(|e| {
                        CodecError::Malformed(format!("body is not valid base64: {e}"))
                    })?
                } else {
                    s.into_bytes()
                };
                if bytes.len() > max_body {
                    return Err(CodecError::TooLarge {
                        size: bytes.len(),
                        limit: max_body,
                    });
                }
                let body: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| CodecError::Malformed(format!("body is not JSON: {e}")))?;
                if has_wide_float(&body) {
                    out_of_range = out_of_range_integer(&bytes).map(str::to_string);
                }
                body
            }
            other => {
                // An inline JSON body: measured as compact JSON, when the
                // envelope is larger than the limit (else the body fits).
                if bytes.len() > max_body {
                    let size = json_size(&other);
                    if size > max_body {
                        return Err(CodecError::TooLarge {
                            size,
                            limit: max_body,
                        });
                    }
                }
                if has_wide_float(&other) {
                    out_of_range = out_of_range_integer(bytes).map(str::to_string);
                }
                other
            }
        };
        let body = decode_kombu_tags(body);
        // The body is decoded: encoding it again always uses base64.
        properties.insert("body_encoding".into(), Value::String("base64".into()));

        let is_v2 = headers.get("task").is_some_and(|t| !t.is_null());
        let (args, kwargs, embed) = if is_v2 {
            split_v2_body(body)?
        } else {
            convert_v1(body, &mut headers)?
        };

        // Fill what older or foreign producers leave out.
        let id = headers
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CodecError::Malformed("header `id` is missing".into()))?;
        if !properties.contains_key("correlation_id") {
            properties.insert("correlation_id".into(), Value::String(id.clone()));
        }
        if !headers.contains_key("root_id") {
            headers.insert("root_id".into(), Value::String(id));
        }
        let headers: Headers = serde_json::from_value(Value::Object(headers))
            .map_err(|e| CodecError::Malformed(format!("bad headers: {e}")))?;
        if headers.task.is_empty() {
            return Err(CodecError::Malformed("header `task` is empty".into()));
        }
        let properties: Properties = serde_json::from_value(Value::Object(properties))
            .map_err(|e| CodecError::Malformed(format!("bad properties: {e}")))?;
        Ok(Message {
            headers,
            properties,
            args,
            kwargs,
            embed,
            out_of_range,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_integers_are_found_outside_strings_only() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (b"[]", None),
            (b"[1, -2, 3.5, 1e400, 0]", None),
            (b"[18446744073709551615, -9223372036854775808]", None),
            (b"[18446744073709551616]", Some("18446744073709551616")),
            (b"[-9223372036854775809]", Some("-9223372036854775809")),
            (
                br#"["99999999999999999999", "\"", 99999999999999999999]"#,
                Some("99999999999999999999"),
            ),
            (br#"{"k\\": "x\"1e1 99999999999999999999"}"#, None),
            (
                br#"{"99999999999999999999": 1.0e30, "n": 12345678901234567890.5}"#,
                None,
            ),
            (
                br#"[[], {"a": [true, null, -100000000000000000000]}]"#,
                Some("-100000000000000000000"),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(
                out_of_range_integer(json),
                want,
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn a_big_integer_is_flagged_in_a_string_body_or_an_inline_one() {
        let env = |body: &str| {
            format!(
                r#"{{"body": {body}, "headers": {{"task": "t", "id": "i"}}, "properties": {{"body_encoding": "utf-8"}}}}"#
            )
        };
        let inline = env("[[1, 2, 36893488147419103232], {}, {}]");
        let m = Message::decode(inline.as_bytes()).unwrap();
        assert_eq!(m.out_of_range_integer(), Some("36893488147419103232"));
        let kwargs = env(r#""[[], {\"n\": -36893488147419103232}, {}]""#);
        let m = Message::decode(kwargs.as_bytes()).unwrap();
        assert_eq!(m.out_of_range_integer(), Some("-36893488147419103232"));
        // A float that large is a float: nothing to flag.
        let float = env(r#""[[3.6893488147419103e19], {}, {}]""#);
        assert_eq!(
            Message::decode(float.as_bytes())
                .unwrap()
                .out_of_range_integer(),
            None
        );
    }
}
