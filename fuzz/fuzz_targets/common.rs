//! Checks shared by the message targets.

use celeriac_core::message::decode_kombu_tags;
use celeriac_core::sign::SIGNATURE_HEADER;
use celeriac_core::{Message, Secret, SignatureError};

/// Whatever decodes re-encodes, and the re-encoded envelope decodes to the
/// same message (so a retry or a requeue that publishes a decoded message
/// again never changes it, nor makes it undecodable).
#[allow(dead_code)]
pub fn round_trips(m: &Message) {
    if m.out_of_range_integer().is_some() {
        // Read as a rounded float: the worker dead-letters it rather than
        // run or republish it, so it need not survive a round trip.
        return;
    }
    let bytes = m.encode().expect("a decoded message encodes");
    let back = Message::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(&back, m, "decode(encode(m)) differs from m");
}

/// kombu's tags are decoded once and for all: decoding again changes
/// nothing.
#[allow(dead_code)]
pub fn tags_are_idempotent(v: serde_json::Value) {
    let once = decode_kombu_tags(v);
    let twice = decode_kombu_tags(once.clone());
    assert_eq!(once, twice, "decode_kombu_tags is not idempotent");
}

/// Signing: whatever decodes can be signed, and its signature checks after
/// the trip through the wire; checking `payload` (which `m` came from)
/// never panics, and an unsigned one is refused as unsigned.
#[allow(dead_code)]
pub fn signs_and_verifies(m: &Message, payload: &[u8]) {
    let secret = Secret::new("fuzz").expect("a secret");
    let checked = secret.verify(m, payload);
    if !m.headers.extra.contains_key(SIGNATURE_HEADER) {
        assert_eq!(checked, Err(SignatureError::Missing));
    }
    let mut signed = m.clone();
    secret.sign(&mut signed).expect("a decoded message signs");
    let wire = signed.encode().expect("a signed message encodes");
    let back = Message::decode(&wire).expect("a signed message decodes");
    assert_eq!(
        secret.verify(&back, &wire),
        Ok(()),
        "a signed message does not verify"
    );
}
