//! Shared-secret message signing (opt-in), in the spirit of pp's `secret`:
//! every producer and worker that knows the secret signs what it publishes,
//! and a worker given the secret runs only messages whose signature checks.
//!
//! The signature is an HMAC-SHA256 carried in the header
//! [`SIGNATURE_HEADER`] as `v1:<64 hex digits>`. It covers:
//!
//! - the body exactly as it travels (the bytes of `[args, kwargs, embed]`
//!   after base64 decoding), so no argument, keyword argument, callback or
//!   chain step can change;
//! - the headers that decide what runs, when and how often: `task`, `id`,
//!   `shadow`, `eta`, `expires`, `group`, `group_index`, `retries`,
//!   `timelimit`, `root_id`, `parent_id`, `ignore_result` and
//!   `idempotency_key`.
//!
//! It does not cover the headers that are only shown (`lang`, `origin`,
//! `argsrepr`, `kwargsrepr`, stamps) nor the properties (queue, priority,
//! delivery tag, `reply_to`): a message moved to another queue or given
//! another priority still runs as it was signed.
//!
//! What it protects is **integrity**: whoever can write to the broker but
//! lacks the secret cannot make a worker run a task of their choosing, nor
//! change the name, arguments, eta or retries of a signed one. It does not
//! hide anything (the body is as readable as before), and it does not stop
//! a verbatim replay of a signed message (same task id: pair it with an
//! idempotency key where running twice matters). Revokes, control
//! broadcasts and stored results are not signed.
//!
//! Python Celery's `auth` serializer (`task_serializer = 'auth'`, with
//! `security_key`, `security_certificate` and `security_cert_store`) is a
//! different scheme: per-node X.509 certificates and a signed serializer
//! that wraps the body. This header is not that: a Python worker ignores
//! the header and runs the message unchecked, and a celeriac worker with a
//! secret refuses Python's signed messages as unsigned.
//!
//! # Examples
//!
//! ```
//! use celeriac_core::{Message, Secret};
//! use serde_json::json;
//!
//! let secret = Secret::new("correct horse battery staple").unwrap();
//! let mut msg = Message::new("tasks.add", vec![json!(2), json!(3)], Default::default());
//! secret.sign(&mut msg).unwrap();
//! let wire = msg.encode().unwrap();
//!
//! let got = Message::decode(&wire).unwrap();
//! assert!(secret.verify(&got, &wire).is_ok());
//!
//! // The same message with other arguments no longer verifies.
//! let mut forged = got.clone();
//! forged.args = vec![json!(2), json!(4)];
//! let forged_wire = forged.encode().unwrap();
//! assert!(secret.verify(&forged, &forged_wire).is_err());
//! ```

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::error::CodecError;
use crate::message::Message;

/// The header that carries a message's signature.
pub const SIGNATURE_HEADER: &str = "celeriac_signature";

/// The version prefix of the header's value.
const VERSION: &str = "v1:";

/// Separates this MAC from any other use of the same key.
const DOMAIN: &[u8] = b"celeriac-task-message-v1\n";

type HmacSha256 = Hmac<Sha256>;

/// A shared secret that signs and verifies task messages; see the
/// [module docs](self). Cheap to clone; its `Debug` output hides the key.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A signing secret was empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret must not be empty")]
pub struct EmptySecret;

/// Why a message's signature was refused. Each variant is a reason to
/// dead-letter the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The message carries no signature.
    #[error(
        "unsigned message: it has no {SIGNATURE_HEADER} header and this worker requires signed messages"
    )]
    Missing,
    /// The signature header is not `v1:` and 64 hex digits.
    #[error("malformed {SIGNATURE_HEADER} header: {0}")]
    Malformed(String),
    /// The signature does not match: the message was forged, altered after
    /// signing, or signed with another secret.
    #[error("forged or altered message: its {SIGNATURE_HEADER} does not match its content")]
    Mismatch,
    /// The body could not be read back from the envelope.
    #[error("cannot check the signature: {0}")]
    Body(String),
}

impl Secret {
    /// A secret from bytes (a passphrase's UTF-8 bytes, or key material).
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self, EmptySecret> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Secret(Arc::from(key)))
    }

    /// Signs `msg`: sets its [`SIGNATURE_HEADER`] over its body as
    /// [`Message::encode`] writes it and its signed headers. Sign last:
    /// any later change to a covered part invalidates the signature.
    pub fn sign(&self, msg: &mut Message) -> Result<(), CodecError> {
        let body = msg.body_json()?;
        let tag = self.mac(msg, &body)?.finalize().into_bytes();
        msg.headers.extra.insert(
            SIGNATURE_HEADER.to_string(),
            Value::String(format!("{VERSION}{}", hex(&tag))),
        );
        Ok(())
    }

    /// Checks the signature of `msg`, decoded from `payload` (the envelope
    /// as it came from the broker, whose body bytes are the signed ones).
    /// The comparison takes the same time wherever the signatures differ.
    pub fn verify(&self, msg: &Message, payload: &[u8]) -> Result<(), SignatureError> {
        let header = msg
            .headers
            .extra
            .get(SIGNATURE_HEADER)
            .ok_or(SignatureError::Missing)?;
        let text = header
            .as_str()
            .ok_or_else(|| SignatureError::Malformed("not a string".into()))?;
        let digits = text.strip_prefix(VERSION).ok_or_else(|| {
            SignatureError::Malformed(format!("unknown scheme (expected {VERSION:?})"))
        })?;
        let tag = unhex(digits)
            .filter(|t| t.len() == 32)
            .ok_or_else(|| SignatureError::Malformed("expected 64 hex digits".into()))?;
        let body = wire_body(payload)?;
        let mac = self
            .mac(msg, &body)
            .map_err(|e| SignatureError::Body(e.to_string()))?;
        mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
    }

    /// The MAC over the domain, the signed headers and `body`.
    fn mac(&self, msg: &Message, body: &[u8]) -> Result<HmacSha256, CodecError> {
        let h = &msg.headers;
        let signed = serde_json::to_vec(&(
            &h.task,
            &h.id,
            &h.shadow,
            &h.eta,
            &h.expires,
            &h.group,
            &h.group_index,
            h.retries,
            h.timelimit,
            &h.root_id,
            &h.parent_id,
            h.ignore_result,
            h.extra.get(crate::task::IDEMPOTENCY_HEADER),
        ))?;
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .map_err(|e| CodecError::Malformed(format!("signing key: {e}")))?;
        mac.update(DOMAIN);
        mac.update(&(signed.len() as u64).to_be_bytes());
        mac.update(&signed);
        mac.update(body);
        Ok(mac)
    }
}

/// The parts of an envelope that say what its body bytes are.
#[derive(Deserialize)]
struct WireBody {
    body: Value,
    #[serde(default)]
    properties: Option<WireProperties>,
}

#[derive(Deserialize)]
struct WireProperties {
    #[serde(default)]
    body_encoding: Option<Value>,
}

/// The body bytes of an envelope, read the way [`Message::decode`] reads
/// them: a base64 string decoded, another string as its UTF-8 bytes, and
/// an inline JSON body as its compact serialization.
fn wire_body(payload: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let wire: WireBody = serde_json::from_slice(payload)
        .map_err(|e| SignatureError::Body(format!("envelope: {e}")))?;
    let base64 = wire
        .properties
        .and_then(|p| p.body_encoding)
        .is_some_and(|e| e == "base64");
    match wire.body {
        Value::String(s) if base64 => B64
            .decode(s.as_bytes())
            .map_err(|e| SignatureError::Body(format!("body is not valid base64: {e}"))),
        Value::String(s) => Ok(s.into_bytes()),
        other => serde_json::to_vec(&other).map_err(|e| SignatureError::Body(e.to_string())),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn secret() -> Secret {
        Secret::new("s3cret").unwrap()
    }

    fn signed() -> (Message, Vec<u8>) {
        let mut m = Message::new("t.add", vec![json!(1), json!(2)], Default::default());
        m.headers.eta = Some("2026-01-01T00:00:00+00:00".into());
        secret().sign(&mut m).unwrap();
        let wire = m.encode().unwrap();
        (Message::decode(&wire).unwrap(), wire)
    }

    /// Re-encodes `m` after `change` without signing it again.
    fn altered(change: impl FnOnce(&mut Message)) -> (Message, Vec<u8>) {
        let (mut m, _) = signed();
        change(&mut m);
        let wire = m.encode().unwrap();
        (Message::decode(&wire).unwrap(), wire)
    }

    #[test]
    fn a_signed_message_verifies_after_the_round_trip() {
        let (m, wire) = signed();
        assert_eq!(secret().verify(&m, &wire), Ok(()));
        let header = m.headers.extra[SIGNATURE_HEADER].as_str().unwrap();
        assert!(header.starts_with("v1:") && header.len() == 67, "{header}");
    }

    type Change = Box<dyn FnOnce(&mut Message)>;

    #[test]
    fn every_covered_part_changed_after_signing_is_a_mismatch() {
        let changes: Vec<(&str, Change)> = vec![
            ("name", Box::new(|m| m.headers.task = "t.other".into())),
            ("args", Box::new(|m| m.args[1] = json!(3))),
            (
                "kwargs",
                Box::new(|m| {
                    m.kwargs.insert("x".into(), json!(1));
                }),
            ),
            ("id", Box::new(|m| m.headers.id = "other".into())),
            ("eta", Box::new(|m| m.headers.eta = None)),
            (
                "expires",
                Box::new(|m| m.headers.expires = Some("2030-01-01T00:00:00".into())),
            ),
            ("retries", Box::new(|m| m.headers.retries = 7)),
            (
                "timelimit",
                Box::new(|m| m.headers.timelimit = (Some(1.0), None)),
            ),
            (
                "ignore_result",
                Box::new(|m| m.headers.ignore_result = Some(true)),
            ),
            (
                "idempotency_key",
                Box::new(|m| {
                    m.headers.extra.insert("idempotency_key".into(), json!("k"));
                }),
            ),
            (
                "callbacks",
                Box::new(|m| m.embed.callbacks = Some(vec![json!({"task": "x"})])),
            ),
        ];
        for (what, change) in changes {
            let (m, wire) = altered(change);
            assert_eq!(
                secret().verify(&m, &wire),
                Err(SignatureError::Mismatch),
                "{what}"
            );
        }
        // Not covered: where it is routed.
        let (m, wire) = altered(|m| m.set_queue("elsewhere"));
        assert_eq!(secret().verify(&m, &wire), Ok(()));
    }

    #[test]
    fn unsigned_malformed_and_foreign_signatures_are_refused() {
        let m = Message::new("t.add", vec![], Default::default());
        let wire = m.encode().unwrap();
        assert_eq!(secret().verify(&m, &wire), Err(SignatureError::Missing));

        for bad in [json!(1), json!("v2:00"), json!("v1:zz"), json!("v1:abcd")] {
            let mut m = m.clone();
            m.headers.extra.insert(SIGNATURE_HEADER.into(), bad.clone());
            let wire = m.encode().unwrap();
            assert!(
                matches!(
                    secret().verify(&m, &wire),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad}"
            );
        }

        let (m, wire) = signed();
        let other = Secret::new("another").unwrap();
        assert_eq!(other.verify(&m, &wire), Err(SignatureError::Mismatch));
    }

    #[test]
    fn the_body_bytes_on_the_wire_are_what_is_checked() {
        // A body re-serialized by another producer (same values, other
        // bytes) is not what was signed.
        let (m, wire) = signed();
        let mut env: Value = serde_json::from_slice(&wire).unwrap();
        let body = B64.decode(env["body"].as_str().unwrap()).unwrap();
        let spaced = String::from_utf8(body).unwrap().replace(',', ", ");
        env["body"] = json!(B64.encode(spaced));
        let respaced = serde_json::to_vec(&env).unwrap();
        assert_eq!(
            secret().verify(&Message::decode(&respaced).unwrap(), &respaced),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(secret().verify(&m, &wire), Ok(()));
    }

    #[test]
    fn an_empty_secret_is_refused_and_debug_hides_the_key() {
        assert_eq!(Secret::new("").unwrap_err(), EmptySecret);
        assert_eq!(format!("{:?}", secret()), "Secret(***)");
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("g0"), None);
    }
}
