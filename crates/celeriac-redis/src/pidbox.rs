//! Celery's remote control (kombu's pidbox) on Redis, as envelopes: the
//! requests broadcast on the `celery.pidbox` fanout (a `revoke` that Python
//! Celery workers act on exactly as on `app.control.revoke(...)`, and any
//! other [`ControlRequest`]), and the replies workers push onto the
//! client's `<oid>.reply.celery.pidbox` list.
//!
//! On Redis, kombu emulates the fanout exchange `celery.pidbox` with
//! `PUBLISH <global_keyprefix>/<db>.celery.pidbox`; each worker subscribes
//! to that channel. The envelope and its base64 body are written field for
//! field, in Celery's order and with Python's `json.dumps` separators, as
//! observed from Celery 5.7:
//!
//! ```text
//! {"body": "<base64>", "content-encoding": "utf-8", "content-type": "application/json",
//!  "headers": {"clock": 1, "expires": <now + 1>},
//!  "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
//!                 "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
//! body: {"method": "revoke", "arguments": {"task_id": "<id>" or ["<id>", ...], "terminate": false,
//!        "signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}
//! ```
//!
//! A revoke is a cast: it has no `ticket` or `reply_to`, and nobody
//! answers. A request that wants replies adds `"ticket": "<uuid4>",
//! "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "<oid>"}`
//! to the body; each reply is `LPUSH`ed as
//!
//! ```text
//! {"body": "<base64 of {node: value}>", "content-encoding": "utf-8", "content-type": "application/json",
//!  "headers": {"ticket": "<ticket>", "clock": <n>},
//!  "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "reply.celery.pidbox", "routing_key": "<oid>"},
//!                 "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
//! ```

use base64::Engine as _;
use celeriac_core::broker::{ControlReply, ControlRequest, REPLY_EXCHANGE, ReplyTo};
use serde::Serialize;
use serde_json::{Map, Value};

/// The signal Celery names in every revoke unless told otherwise.
pub(crate) const TERM_SIGNAME: &str = "SIGTERM";

/// The pub/sub channel of the `celery.pidbox` fanout exchange.
pub(crate) fn channel(prefix: &str, db: i64) -> String {
    format!("{prefix}/{db}.celery.pidbox")
}

/// The `revoke` broadcast of `task_ids`, with `terminate` and the
/// terminating `signal` (an upper-case name such as `SIGKILL`), sent at
/// unix time `now`.
pub(crate) fn revoke(task_ids: &[String], terminate: bool, signal: &str, now: f64) -> Vec<u8> {
    let body = Command {
        method: "revoke",
        arguments: RevokeArguments {
            task_id: match task_ids {
                [one] => TaskIds::One(one),
                many => TaskIds::Many(many),
            },
            terminate,
            signal,
        },
        destination: None,
        pattern: None,
        matcher: None,
    };
    let envelope = Envelope {
        body: base64::engine::general_purpose::STANDARD.encode(python_json(&body)),
        content_encoding: "utf-8",
        content_type: "application/json",
        headers: Headers {
            // A fresh client's first Lamport clock value; workers only
            // move their own clock past it.
            clock: 1,
            // `app.control.broadcast`'s default timeout is one second.
            expires: now + 1.0,
        },
        properties: Properties {
            delivery_mode: 2,
            delivery_info: DeliveryInfo {
                exchange: "celery.pidbox",
                routing_key: "",
            },
            priority: 0,
            body_encoding: "base64",
            delivery_tag: uuid::Uuid::new_v4().to_string(),
        },
    };
    python_json(&envelope)
}

/// The exchange requests are broadcast on.
pub(crate) const EXCHANGE: &str = "celery.pidbox";

/// The envelope of `request`, sent at unix time `now`: its clock and
/// expiry headers are the request's own (an expiry of 0 stays 0).
pub(crate) fn request(request: &ControlRequest, clock: u64) -> Vec<u8> {
    let envelope = Envelope {
        body: base64::engine::general_purpose::STANDARD.encode(python_json(request)),
        content_encoding: "utf-8",
        content_type: "application/json",
        headers: Headers {
            clock,
            expires: request.expires,
        },
        properties: Properties {
            delivery_mode: 2,
            delivery_info: DeliveryInfo {
                exchange: EXCHANGE,
                routing_key: "",
            },
            priority: 0,
            body_encoding: "base64",
            delivery_tag: uuid::Uuid::new_v4().to_string(),
        },
    };
    python_json(&envelope)
}

/// The envelope of a node's `reply` for the mailbox `to`.
pub(crate) fn reply(reply: &ControlReply, to: &ReplyTo) -> Vec<u8> {
    #[derive(Serialize)]
    struct ReplyHeaders<'a> {
        ticket: &'a str,
        clock: u64,
    }
    #[derive(Serialize)]
    struct ReplyEnvelope<'a> {
        body: String,
        #[serde(rename = "content-encoding")]
        content_encoding: &'a str,
        #[serde(rename = "content-type")]
        content_type: &'a str,
        headers: ReplyHeaders<'a>,
        properties: Properties<'a>,
    }
    let envelope = ReplyEnvelope {
        body: base64::engine::general_purpose::STANDARD.encode(python_json(&reply.body)),
        content_encoding: "utf-8",
        content_type: "application/json",
        headers: ReplyHeaders {
            ticket: &reply.ticket,
            clock: reply.clock,
        },
        properties: Properties {
            delivery_mode: 1,
            delivery_info: DeliveryInfo {
                exchange: if to.exchange.is_empty() {
                    REPLY_EXCHANGE
                } else {
                    &to.exchange
                },
                routing_key: &to.routing_key,
            },
            priority: 0,
            body_encoding: "base64",
            delivery_tag: uuid::Uuid::new_v4().to_string(),
        },
    };
    python_json(&envelope)
}

/// The headers and decoded body of a kombu envelope.
fn open(payload: &[u8]) -> Option<(Value, Value)> {
    let env: Value = serde_json::from_slice(payload).ok()?;
    let body = env["body"].as_str()?;
    let bytes = if env["properties"]["body_encoding"] == "base64" {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?
    } else {
        body.as_bytes().to_vec()
    };
    let body: Value = serde_json::from_slice(&bytes).ok()?;
    Some((env["headers"].clone(), body))
}

/// The request a `celery.pidbox` envelope carries, with its headers.
pub(crate) fn decode_request(payload: &[u8]) -> Option<ControlRequest> {
    let (headers, body) = open(payload)?;
    let mut r: ControlRequest = serde_json::from_value(body).ok()?;
    r.clock = headers["clock"].as_u64().unwrap_or(0);
    r.expires = headers["expires"].as_f64().unwrap_or(0.0);
    Some(r)
}

/// The reply a reply envelope carries.
pub(crate) fn decode_reply(payload: &[u8]) -> Option<ControlReply> {
    let (headers, body) = open(payload)?;
    Some(ControlReply {
        ticket: headers["ticket"].as_str().unwrap_or_default().to_string(),
        clock: headers["clock"].as_u64().unwrap_or(0),
        body: match body {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    })
}

#[derive(Serialize)]
struct Command<'a> {
    method: &'a str,
    arguments: RevokeArguments<'a>,
    destination: Option<()>,
    pattern: Option<()>,
    matcher: Option<()>,
}

#[derive(Serialize)]
struct RevokeArguments<'a> {
    task_id: TaskIds<'a>,
    terminate: bool,
    signal: &'a str,
}

/// One id goes as a string, several as a list, as `app.control.revoke`
/// sends them.
#[derive(Serialize)]
#[serde(untagged)]
enum TaskIds<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(Serialize)]
struct Envelope<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    headers: Headers,
    properties: Properties<'a>,
}

#[derive(Serialize)]
struct Headers {
    clock: u64,
    expires: f64,
}

#[derive(Serialize)]
struct Properties<'a> {
    delivery_mode: u8,
    delivery_info: DeliveryInfo<'a>,
    priority: u8,
    body_encoding: &'a str,
    delivery_tag: String,
}

#[derive(Serialize)]
struct DeliveryInfo<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

/// JSON with the separators of Python's `json.dumps` (`", "` and `": "`),
/// as kombu writes envelopes ([`celeriac_core::events::python_json`]).
fn python_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and bools always serialize.
    celeriac_core::events::python_json(value).expect("a control message serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(envelope: &[u8]) -> (serde_json::Value, String) {
        let env: serde_json::Value = serde_json::from_slice(envelope).unwrap();
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        (env, String::from_utf8(body).unwrap())
    }

    #[test]
    fn a_revoke_is_what_celery_broadcasts() {
        let ids = ["efbb9031-7739-4693-9139-14bcdeef6a1d".to_string()];
        let sent = revoke(&ids, false, TERM_SIGNAME, 1795902485.765219);
        let (env, body) = decode(&sent);
        // The body as Celery 5.7 sent it for app.control.revoke(id).
        assert_eq!(
            body,
            r#"{"method": "revoke", "arguments": {"task_id": "efbb9031-7739-4693-9139-14bcdeef6a1d", "terminate": false, "signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}"#
        );
        let text = String::from_utf8(sent).unwrap();
        let tag = env["properties"]["delivery_tag"].as_str().unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"body": "{}", "content-encoding": "utf-8", "content-type": "application/json", "headers": {{"clock": 1, "expires": 1795902486.765219}}, "properties": {{"delivery_mode": 2, "delivery_info": {{"exchange": "celery.pidbox", "routing_key": ""}}, "priority": 0, "body_encoding": "base64", "delivery_tag": "{tag}"}}}}"#,
                env["body"].as_str().unwrap()
            )
        );
        assert!(uuid::Uuid::parse_str(tag).is_ok());
    }

    #[test]
    fn several_ids_go_as_a_list_with_terminate_and_the_signal() {
        let ids = ["x1".to_string(), "x2".to_string()];
        let (_, body) = decode(&revoke(&ids, true, "SIGKILL", 0.0));
        assert_eq!(
            body,
            r#"{"method": "revoke", "arguments": {"task_id": ["x1", "x2"], "terminate": true, "signal": "SIGKILL"}, "destination": null, "pattern": null, "matcher": null}"#
        );
    }

    #[test]
    fn requests_and_replies_round_trip_in_kombus_envelopes() {
        let mut req = ControlRequest::new("pool_grow")
            .arg("n", 2)
            .to_nodes(["w1@h"]);
        req.ticket = Some("t1".into());
        req.reply_to = Some(ReplyTo {
            exchange: REPLY_EXCHANGE.into(),
            routing_key: "oid1".into(),
        });
        req.expires = 1795902486.5;
        let sent = request(&req, 7);
        let (env, body) = decode(&sent);
        assert_eq!(
            body,
            r#"{"method": "pool_grow", "arguments": {"n": 2}, "destination": ["w1@h"], "pattern": null, "matcher": null, "ticket": "t1", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid1"}}"#
        );
        assert_eq!(
            env["headers"],
            serde_json::json!({"clock": 7, "expires": 1795902486.5})
        );
        let back = decode_request(&sent).unwrap();
        assert_eq!((back.clock, back.expires), (7, 1795902486.5));
        assert_eq!(back.arguments, req.arguments);
        assert_eq!(back.reply_to, req.reply_to);

        let mut body = Map::new();
        body.insert("w1@h".into(), serde_json::json!({"ok": "pong"}));
        let rep = ControlReply {
            ticket: "t1".into(),
            clock: 9,
            body,
        };
        let pushed = reply(&rep, req.reply_to.as_ref().unwrap());
        let (env, body) = decode(&pushed);
        assert_eq!(body, r#"{"w1@h": {"ok": "pong"}}"#);
        assert_eq!(
            env["headers"],
            serde_json::json!({"ticket": "t1", "clock": 9})
        );
        assert_eq!(
            env["properties"]["delivery_info"],
            serde_json::json!({"exchange": "reply.celery.pidbox", "routing_key": "oid1"})
        );
        assert_eq!(env["properties"]["delivery_mode"], 1);
        assert_eq!(decode_reply(&pushed).unwrap(), rep);
    }

    #[test]
    fn a_cast_has_no_ticket_or_reply_to() {
        let (_, body) = decode(&request(&ControlRequest::new("heartbeat"), 1));
        assert_eq!(
            body,
            r#"{"method": "heartbeat", "arguments": {}, "destination": null, "pattern": null, "matcher": null}"#
        );
    }

    #[test]
    fn the_channel_is_kombus_fanout_topic() {
        assert_eq!(channel("", 0), "/0.celery.pidbox");
        assert_eq!(channel("app:", 3), "app:/3.celery.pidbox");
    }
}
