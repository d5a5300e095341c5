//! `Message::decode_with_limit` on arbitrary bytes: the first two bytes
//! choose the body limit, the rest is the envelope.
#![no_main]

use celeriac_core::Message;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (limit, payload) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    if let Ok(m) = Message::decode_with_limit(payload, limit) {
        common::round_trips(&m);
    }
    if let Ok(m) = Message::decode(payload) {
        common::round_trips(&m);
        common::signs_and_verifies(&m, payload);
    }
});
