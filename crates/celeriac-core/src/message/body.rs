//! The body of a task message: splitting protocol v2's `[args, kwargs,
//! embed]`, converting a protocol v1 dict, decoding kombu's `__type__` JSON
//! tags, and finding integer literals that 64-bit integers cannot hold.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use super::Embed;
use super::repr::{args_repr, kwargs_repr};
use crate::error::CodecError;

/// Whether `v` holds a float of 2^63 or more in magnitude: what an integer
/// literal outside the 64-bit range becomes (and what a float literal that
/// large is), so that only then are the bytes scanned.
pub(super) fn has_wide_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= 9.2e18),
        Value::Array(items) => items.iter().any(has_wide_float),
        Value::Object(map) => map.values().any(has_wide_float),
        _ => false,
    }
}

/// The first integer literal in the JSON text `json` (outside its
/// strings) that a 64-bit integer cannot hold: below -2^63 or above
/// 2^64 - 1. JSON parsers without arbitrary precision read it as a float,
/// losing its exact value.
///
/// # Examples
///
/// ```
/// use celeriac_core::message::out_of_range_integer;
/// assert_eq!(out_of_range_integer(b"[18446744073709551615, -9223372036854775808, 1e300]"), None);
/// assert_eq!(out_of_range_integer(br#"{"a": "12345678901234567890123", "b": [18446744073709551616]}"#),
///            Some("18446744073709551616"));
/// assert_eq!(out_of_range_integer(b"[-9223372036854775809]"), Some("-9223372036854775809"));
/// ```
pub fn out_of_range_integer(json: &[u8]) -> Option<&str> {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                while i < json.len() {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < json.len()
                    && matches!(json[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&json[start..i]).ok()?;
                if token.contains(['.', 'e', 'E']) {
                    continue;
                }
                let fits = if token.starts_with('-') {
                    token.parse::<i64>().is_ok()
                } else {
                    token.parse::<u64>().is_ok()
                };
                if !fits {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

type Body = (Vec<Value>, Map<String, Value>, Embed);

/// The size of `v` as compact JSON, counted without building it.
pub(super) fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

pub(super) fn split_v2_body(body: Value) -> Result<Body, CodecError> {
    let Value::Array(mut parts) = body else {
        return Err(CodecError::Malformed(
            "v2 body must be a list [args, kwargs, embed]".into(),
        ));
    };
    if parts.is_empty() || parts.len() > 3 {
        return Err(CodecError::Malformed(format!(
            "v2 body must have 2 or 3 elements, found {}",
            parts.len()
        )));
    }
    let embed = if parts.len() == 3 {
        match parts.pop() {
            Some(Value::Null) | None => Embed::default(),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| CodecError::Malformed(format!("bad embed: {e}")))?,
        }
    } else {
        Embed::default()
    };
    let kwargs = match parts.pop() {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            return Err(CodecError::Malformed(format!(
                "kwargs must be an object, found {}",
                type_name(&other)
            )));
        }
    };
    let args = match parts.pop() {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => {
            return Err(CodecError::Malformed(format!(
                "args must be a list, found {}",
                type_name(&other)
            )));
        }
    };
    Ok((args, kwargs, embed))
}

/// Protocol v1: everything lives in a body dict. Converted the way Celery's
/// `proto1_to_proto2` does.
pub(super) fn convert_v1(
    body: Value,
    headers: &mut Map<String, Value>,
) -> Result<Body, CodecError> {
    let Value::Object(mut b) = body else {
        return Err(CodecError::Malformed(
            "message has no `task` header and its body is not a v1 dict".into(),
        ));
    };
    let task = b
        .remove("task")
        .and_then(|t| t.as_str().map(str::to_string))
        .ok_or_else(|| CodecError::Malformed("v1 body has no `task`".into()))?;
    let id = b
        .remove("id")
        .and_then(|t| t.as_str().map(str::to_string))
        .ok_or_else(|| CodecError::Malformed("v1 body has no `id`".into()))?;
    let args = match b.remove("args") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => {
            return Err(CodecError::Malformed(format!(
                "v1 args must be a list, found {}",
                type_name(&other)
            )));
        }
    };
    let kwargs = match b.remove("kwargs") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(other) => {
            return Err(CodecError::Malformed(format!(
                "v1 kwargs must be an object, found {}",
                type_name(&other)
            )));
        }
    };
    headers.insert("lang".into(), Value::String("py".into()));
    headers.insert("task".into(), Value::String(task));
    headers.insert("id".into(), Value::String(id.clone()));
    headers.insert("root_id".into(), Value::String(id));
    for key in [
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
    ] {
        if let Some(v) = b.remove(key).filter(|v| !v.is_null()) {
            headers.insert(key.into(), v);
        }
    }
    if let Some(Value::String(ts)) = b.remove("taskset") {
        headers
            .entry("group")
            .or_insert_with(|| Value::String(ts.clone()));
    }
    headers.insert("argsrepr".into(), Value::String(args_repr(&args)));
    headers.insert("kwargsrepr".into(), Value::String(kwargs_repr(&kwargs)));
    let embed = Embed {
        callbacks: b.remove("callbacks").and_then(list_or_none),
        errbacks: b.remove("errbacks").and_then(list_or_none),
        chain: None,
        chord: b.remove("chord").filter(|c| !c.is_null()),
        extra: Map::new(),
    };
    Ok((args, kwargs, embed))
}

fn list_or_none(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Decodes kombu's JSON type tags (`{"__type__": ..., "__value__": ...}`)
/// into plain JSON, recursively:
///
/// | tag | becomes |
/// |---|---|
/// | `datetime`, `date`, `time` | the ISO-8601 string |
/// | `decimal` | the decimal's string (lossless) |
/// | `uuid` (`{"hex": ...}`) | the hyphenated UUID string |
/// | `bytes` | the UTF-8 string |
/// | `base64` | a list of byte values (so `Vec<u8>` parameters accept it) |
///
/// Unknown tags are left as they are. Like kombu's `object_hook`, objects
/// are decoded innermost first, so a tag whose parts are tags is decoded
/// too, and decoding twice changes nothing.
///
/// # Examples
///
/// ```
/// use celeriac_core::message::decode_kombu_tags;
/// use serde_json::json;
/// let v = decode_kombu_tags(json!({"when": {"__type__": "datetime", "__value__": "2026-11-26T10:00:00+00:00"},
///     "id": {"__type__": "uuid", "__value__": {"hex": "f2b687d9fe7d46fc9a4051f8d40bb0b2"}}}));
/// assert_eq!(v, json!({"when": "2026-11-26T10:00:00+00:00", "id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2"}));
/// ```
pub fn decode_kombu_tags(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(decode_kombu_tags).collect()),
        Value::Object(mut map) => {
            for (_, item) in map.iter_mut() {
                let taken = std::mem::take(item);
                *item = decode_kombu_tags(taken);
            }
            match kombu_tagged(&map) {
                Some(v) => v,
                None => Value::Object(map),
            }
        }
        other => other,
    }
}

/// The value of a kombu tag object (whose parts are already decoded), or
/// `None` if `map` is not a tag kombu would decode.
fn kombu_tagged(map: &Map<String, Value>) -> Option<Value> {
    if map.len() != 2 {
        return None;
    }
    let ty = map.get("__type__")?.as_str()?;
    let value = map.get("__value__")?;
    match ty {
        "datetime" | "date" | "time" | "decimal" | "bytes" => {
            value.is_string().then(|| value.clone())
        }
        "uuid" => value
            .get("hex")
            .or(Some(value))
            .and_then(Value::as_str)
            .and_then(|hex| uuid::Uuid::parse_str(hex).ok())
            .map(|u| Value::String(u.hyphenated().to_string())),
        "base64" => value
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .map(|bytes| Value::Array(bytes.into_iter().map(Value::from).collect())),
        _ => None,
    }
}
