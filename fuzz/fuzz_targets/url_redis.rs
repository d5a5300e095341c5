//! `parse_redis_url` on arbitrary text: no panic; what it accepts has a
//! positive visibility timeout; and the redacted form never shows a
//! password the Redis client would use (the client itself is the
//! oracle: it parses the redacted URL and must find no password but the
//! mask).
#![no_main]

use celeriac_redis::parse_redis_url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(o) = parse_redis_url(url) else {
        return;
    };
    assert!(
        !o.visibility_timeout.is_zero(),
        "zero visibility_timeout from {url:?}"
    );
    let Ok(client) = redis::Client::open(o.client_url.as_str()) else {
        return;
    };
    let Some(password) = client.get_connection_info().redis_settings().password() else {
        return;
    };
    if password.is_empty() || password == "***" {
        return;
    }
    // The client's view of the redacted URL: no password, or the mask.
    if let Ok(shown) = redis::Client::open(o.redacted.as_str()) {
        let shown = shown
            .get_connection_info()
            .redis_settings()
            .password()
            .map(str::to_string);
        assert!(
            matches!(shown.as_deref(), None | Some("***")),
            "the redacted {:?} of {url:?} shows the password {shown:?}",
            o.redacted
        );
    }
});
