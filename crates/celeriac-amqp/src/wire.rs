//! The message as it travels on AMQP, and back.
//!
//! celeriac's brokers move the JSON envelope of
//! [`Message::encode`](celeriac_core::Message::encode) (kombu's Redis
//! format: body base64-encoded inside a JSON document). On AMQP, kombu
//! sends the parts as the protocol has them (reference §4.2):
//!
//! - the **body** is the raw UTF-8 JSON `[args, kwargs, embed]`;
//! - the **headers** are AMQP application headers;
//! - `content_type`, `content_encoding`, `delivery_mode` (2), `priority`,
//!   `correlation_id` and `reply_to` are real AMQP properties.
//!
//! [`to_amqp`] turns an envelope into that, and [`to_envelope`] turns a
//! delivery back into an envelope. celeriac's own per-publish
//! `delivery_tag` travels as the AMQP `message_id` (kombu ignores it), so a
//! celeriac message comes back byte for byte.
//!
//! Headers this crate adds for its own bookkeeping start with
//! `x-celeriac-`; they, and RabbitMQ's dead-letter headers (`x-death`,
//! `x-first-death-*`, `x-last-death-*`), are removed again on the way back.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use celeriac_core::{BrokerError, Message};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Value, json};

/// Header: how many times the message was delivered before it was
/// requeued with a delay (a delayed requeue is a new publish, so the
/// redelivered flag alone would forget it).
pub(crate) const H_DELIVERIES: &str = "x-celeriac-deliveries";
/// Header: why a message was dead-lettered.
pub(crate) const H_REASON: &str = "x-celeriac-reason";
/// Header: the queue a dead letter came from.
pub(crate) const H_QUEUE: &str = "x-celeriac-queue";
/// Header: unix time a message was dead-lettered.
pub(crate) const H_FAILED_AT: &str = "x-celeriac-failed-at";
/// Header: the identity of a dead letter.
pub(crate) const H_DL_ID: &str = "x-celeriac-dead-letter-id";

/// A message ready for `basic.publish`.
#[derive(Debug)]
pub(crate) struct AmqpMessage {
    /// The raw body.
    pub(crate) body: Vec<u8>,
    /// The properties, with the application headers.
    pub(crate) properties: BasicProperties,
}

fn bad(what: &str) -> BrokerError {
    BrokerError::storage_msg(format!("cannot send this envelope on AMQP: {what}"))
}

/// Converts celeriac's JSON envelope into an AMQP message, adding `extra`
/// headers (this crate's bookkeeping).
pub(crate) fn to_amqp(
    envelope: &[u8],
    extra: &[(&str, AMQPValue)],
) -> Result<AmqpMessage, BrokerError> {
    let env: Value =
        serde_json::from_slice(envelope).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let env = env.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let empty = Map::new();
    let props = env
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let base64_body = props.get("body_encoding").and_then(Value::as_str) == Some("base64");
    let body = match env.get("body") {
        Some(Value::String(s)) if base64_body => B64
            .decode(s.as_bytes())
            .map_err(|e| bad(&format!("body is not base64: {e}")))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => serde_json::to_vec(other).map_err(|e| bad(&e.to_string()))?,
        None => return Err(bad("no body")),
    };
    let mut headers = FieldTable::default();
    if let Some(h) = env.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            headers.insert(ShortString::from(k.as_str()), json_to_amqp(v));
        }
    }
    for (k, v) in extra {
        headers.insert(ShortString::from(*k), v.clone());
    }
    let text =
        |v: Option<&Value>, default: &str| v.and_then(Value::as_str).unwrap_or(default).to_string();
    let mut properties = BasicProperties::default()
        .with_content_type(text(env.get("content-type"), "application/json").into())
        .with_content_encoding(text(env.get("content-encoding"), "utf-8").into())
        .with_delivery_mode(
            props
                .get("delivery_mode")
                .and_then(Value::as_u64)
                .unwrap_or(2)
                .min(2) as u8,
        )
        .with_priority(
            props
                .get("priority")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(255) as u8,
        )
        .with_headers(headers);
    if let Some(c) = props.get("correlation_id").and_then(Value::as_str) {
        properties = properties.with_correlation_id(c.into());
    }
    if let Some(r) = props.get("reply_to").and_then(Value::as_str) {
        properties = properties.with_reply_to(r.into());
    }
    if let Some(t) = props.get("delivery_tag").and_then(Value::as_str)
        && !t.is_empty()
    {
        properties = properties.with_message_id(t.into());
    }
    Ok(AmqpMessage { body, properties })
}

/// A delivery turned back into celeriac's envelope, with the bookkeeping
/// headers taken out (returned as the second value).
///
/// A message celeriac can decode is re-encoded the way
/// [`Message::encode`] writes it; any other (a foreign or malformed
/// message) is wrapped as it is, so that the worker's decoder reports the
/// problem and the message is dead-lettered, not lost.
pub(crate) fn to_envelope(
    body: &[u8],
    props: &BasicProperties,
    exchange: &str,
    routing_key: &str,
) -> (Vec<u8>, Map<String, Value>) {
    let mut headers = Map::new();
    let mut ours = Map::new();
    if let Some(table) = props.headers() {
        for (k, v) in table {
            let k = k.as_str();
            if k.starts_with("x-celeriac-") {
                ours.insert(k.to_string(), amqp_to_json(v));
            } else if k == "x-death"
                || k.starts_with("x-first-death-")
                || k.starts_with("x-last-death-")
            {
                continue;
            } else {
                headers.insert(k.to_string(), amqp_to_json(v));
            }
        }
    }
    let mut properties = Map::new();
    properties.insert(
        "correlation_id".into(),
        json!(
            props
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str())
                .unwrap_or_default()
        ),
    );
    if let Some(r) = props.reply_to() {
        properties.insert("reply_to".into(), json!(r.as_str()));
    }
    properties.insert(
        "delivery_mode".into(),
        json!(props.delivery_mode().unwrap_or(2)),
    );
    properties.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
    );
    properties.insert("priority".into(), json!(props.priority().unwrap_or(0)));
    properties.insert("body_encoding".into(), json!("base64"));
    let tag = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    properties.insert("delivery_tag".into(), json!(tag));
    let envelope = json!({
        "body": B64.encode(body),
        "content-encoding": props.content_encoding().as_ref().map(|c| c.as_str()).unwrap_or("utf-8"),
        "content-type": props.content_type().as_ref().map(|c| c.as_str()).unwrap_or("application/json"),
        "headers": headers,
        "properties": properties,
    });
    let raw = serde_json::to_vec(&envelope).unwrap_or_default();
    let bytes = match Message::decode(&raw).and_then(|m| m.encode()) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, routing_key, "AMQP message is not a task celeriac can decode; passing it on as it is");
            raw
        }
    };
    (bytes, ours)
}

/// A JSON value as an AMQP field value (as py-amqp encodes Python values).
pub(crate) fn json_to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => {
            let mut t = FieldTable::default();
            for (k, v) in map {
                t.insert(ShortString::from(k.as_str()), json_to_amqp(v));
            }
            AMQPValue::FieldTable(t)
        }
    }
}

/// An AMQP field value as JSON.
pub(crate) fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), amqp_to_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_celeriac_message_round_trips_byte_for_byte() {
        let mut m = Message::new("t.add", vec![json!(2), json!("ü")], Default::default());
        m.properties.priority = 3;
        let env = m.encode().unwrap();
        let a = to_amqp(&env, &[]).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&a.body).unwrap(),
            json!([[2, "ü"], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]),
            "the body is raw JSON"
        );
        assert_eq!(a.properties.priority(), &Some(3));
        assert_eq!(a.properties.delivery_mode(), &Some(2));
        let (back, ours) = to_envelope(&a.body, &a.properties, "", "celery");
        assert_eq!(back, env);
        assert!(ours.is_empty());
    }

    #[test]
    fn undecodable_bodies_are_passed_on_not_dropped() {
        let (env, _) = to_envelope(b"not json", &BasicProperties::default(), "", "q");
        assert!(Message::decode(&env).is_err());
        let v: Value = serde_json::from_slice(&env).unwrap();
        assert_eq!(
            B64.decode(v["body"].as_str().unwrap()).unwrap(),
            b"not json"
        );
    }
}
