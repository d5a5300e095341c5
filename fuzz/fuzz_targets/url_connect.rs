//! `open_broker` and `open_backend` on arbitrary text: no panic. `sqlite`
//! URLs are left out (they create files); `parse_sqlite_url` has its own
//! target. Opening a Redis broker does not connect, so no traffic is sent.
//! Watch its RSS: a map that only grew with each `memory://NAME` opened was
//! found this way.
#![no_main]

use celeriac_connect::{open_backend, open_broker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    if url.trim_start().starts_with("sqlite") {
        return;
    }
    if let Ok(b) = open_broker(url) {
        let _ = b.url();
    }
    if let Ok(b) = open_backend(url) {
        let _ = b.url();
    }
});
