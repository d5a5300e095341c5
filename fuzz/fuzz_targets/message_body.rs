//! The body decoders behind a valid envelope: the input is a body, which
//! the target wraps in an envelope (base64 or inline, v2 headers or a v1
//! message without them), so the fuzzer spends its time in
//! `split_v2_body`, the v1 conversion, the kombu tags and the base64 body
//! path rather than in the envelope's JSON.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use celeriac_core::Message;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let headers = if mode & 1 == 0 {
        json!({"task": "t.fuzz", "id": "00000000-0000-0000-0000-000000000001"})
    } else {
        // No `task` header: a protocol v1 message, everything in the body.
        json!({})
    };
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (body_field, encoding) = match (mode >> 1) & 7 {
        // Inline JSON body, as some producers send it.
        1 if parsed.is_some() => (parsed.clone().unwrap_or_default(), None),
        // A plain string body without body_encoding.
        2 => (
            Value::String(String::from_utf8_lossy(body).into_owned()),
            None,
        ),
        // An invalid base64 body, from the same bytes.
        3 => (
            Value::String(String::from_utf8_lossy(body).into_owned()),
            Some("base64"),
        ),
        // A plain string body that names another encoding.
        4 => (
            Value::String(String::from_utf8_lossy(body).into_owned()),
            Some("utf-8"),
        ),
        _ => (Value::String(B64.encode(body)), Some("base64")),
    };
    let mut properties = json!({"delivery_tag": "t"});
    if let Some(e) = encoding {
        properties["body_encoding"] = json!(e);
    }
    let envelope = json!({
        "body": body_field,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": headers,
        "properties": properties,
    });
    let bytes = serde_json::to_vec(&envelope).expect("an envelope encodes");
    let limit = if mode & 0x80 != 0 { 64 } else { 1 << 20 };
    if let Ok(m) = Message::decode_with_limit(&bytes, limit) {
        common::round_trips(&m);
        common::signs_and_verifies(&m, &bytes);
    }
    if let Some(v) = parsed {
        common::tags_are_idempotent(v);
    }
});
