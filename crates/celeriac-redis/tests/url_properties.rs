//! `parse_redis_url`: generated URLs give back their options, any text is
//! parsed or refused without a panic, and the redacted URL never shows a
//! password the Redis client would use (the client itself is the oracle).

use std::time::Duration;

use celeriac_redis::parse_redis_url;
use proptest::prelude::*;

/// The password the Redis client finds in `url`, if it parses.
fn client_password(url: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    client
        .get_connection_info()
        .redis_settings()
        .password()
        .map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn options_round_trip(
        host in "[a-z][a-z0-9.-]{0,12}",
        port in 1u16..,
        db in 0u8..16,
        millis in 1u64..10_000_000,
        prefix in "[a-zA-Z0-9:_.-]{0,12}",
        expires in 0u64..=3_000_000_000,
    ) {
        let secs = millis as f64 / 1000.0;
        let url = format!("redis://{host}:{port}/{db}?visibility_timeout={secs}&global_keyprefix={prefix}&result_expires={expires}");
        let o = parse_redis_url(&url).unwrap();
        prop_assert_eq!(o.client_url, format!("redis://{host}:{port}/{db}"));
        prop_assert_eq!(o.visibility_timeout, Duration::from_secs_f64(secs));
        prop_assert_eq!(o.prefix, prefix);
        prop_assert_eq!(o.result_expires, expires);
    }

    #[test]
    fn any_text_is_parsed_or_refused(rest in "\\PC{0,60}") {
        if let Ok(o) = parse_redis_url(&format!("redis://{rest}")) {
            prop_assert!(!o.visibility_timeout.is_zero());
        }
    }

    #[test]
    fn the_redacted_url_never_shows_the_password(
        user in "[a-z]{0,6}",
        password in "[A-Za-z0-9@:/%!$*]{1,16}",
        host in "[a-z]{1,8}",
        tail in prop_oneof![Just(""), Just(":6379"), Just(":6379/1"), Just("/2?visibility_timeout=5")],
    ) {
        let url = format!("redis://{user}:{password}@{host}{tail}");
        let Ok(o) = parse_redis_url(&url) else { return Ok(()) };
        if let Some(p) = client_password(&o.client_url).filter(|p| p != "***") {
            let shown = client_password(&o.redacted);
            prop_assert!(matches!(shown.as_deref(), None | Some("***")),
                "{} shows {:?} of {:?}", o.redacted, shown, p);
        }
        // (A password of "***" is the mask itself: nothing to leak.)
        if password != "***" {
            prop_assert!(!o.redacted.contains(&format!(":{password}@")), "{}", o.redacted);
        }
    }
}
