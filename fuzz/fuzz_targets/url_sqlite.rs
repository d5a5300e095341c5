//! `parse_sqlite_url` on arbitrary text: no panic, and what it accepts has
//! a positive lease.
#![no_main]

use celeriac_embedded::parse_sqlite_url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(o) = parse_sqlite_url(url) {
        assert!(!o.lease.is_zero(), "zero lease from {url:?}");
        assert!(!o.path.as_os_str().is_empty(), "empty path from {url:?}");
    }
});
