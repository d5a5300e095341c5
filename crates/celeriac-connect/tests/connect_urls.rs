//! URL → broker and backend on any text: never a panic, and an error
//! never shows a password. (`sqlite://` is left out: opening one creates
//! the file; `parse_sqlite_url` has its own properties.)

use celeriac_connect::{open_backend, open_broker};
use proptest::prelude::*;

#[test]
fn an_unsupported_scheme_is_an_error_without_the_password() {
    let err = open_broker("sqs://guest:hunter2@queue:443//").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unsupported scheme \"sqs\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // amqp:// opens the RabbitMQ broker (connecting on first use); results
    // are not stored in RabbitMQ (rpc:// sends them as messages).
    let b = open_broker("amqp://guest:hunter2@rabbit:5672//").unwrap();
    assert!(!b.url().contains("hunter2"), "{}", b.url());
    let err = open_backend("amqp://guest:hunter2@rabbit:5672//").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = open_backend("db+postgresql://u:p@ss@db/celery").unwrap_err();
    assert!(!err.to_string().contains("p@ss"), "{err}");
}

#[test]
fn rpc_results_ride_on_the_amqp_broker_this_thread_opened() {
    std::thread::spawn(|| {
        let err = open_backend("rpc://").unwrap_err();
        assert!(err.to_string().contains("no amqp:// broker open"), "{err}");
        let _b = celeriac_connect::open_broker_for("amqp://127.0.0.1:1/v", "rpc://").unwrap();
        let backend = open_backend("rpc://").unwrap();
        assert_eq!(backend.url(), "rpc://");
        assert!(backend.chord_join().is_none());
    })
    .join()
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_url_opens_or_is_an_error_without_panicking(
        scheme in r"(memory|redis|rediss|redis\+unix|amqp|[a-z+]{0,6})",
        rest in "\\PC{0,40}",
    ) {
        let url = format!("{scheme}://{rest}");
        if let Ok(b) = open_broker(&url) {
            prop_assert!(!b.url().is_empty());
        }
        let _ = open_backend(&url);
    }

    #[test]
    fn errors_never_show_the_password(
        scheme in "(redis|amqp|memory|[a-z]{1,6})",
        password in "[A-Za-z0-9@:/!$]{6,16}",
        host in "[a-z]{1,8}",
        query in prop_oneof![Just(""), Just("?visibility_timeout=1e30"), Just("?visibility_timeout=x")],
    ) {
        // A password no other part of the URL contains.
        prop_assume!(!host.contains(&password) && !scheme.contains(&password));
        let url = format!("{scheme}://user:{password}@{host}:1/0{query}");
        if let Err(e) = open_broker(&url) {
            prop_assert!(!e.to_string().contains(&password), "{}", e);
        }
        if let Err(e) = open_backend(&url) {
            prop_assert!(!e.to_string().contains(&password), "{}", e);
        }
    }
}
