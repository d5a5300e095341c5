//! Connecting: `rediss://` (the broker and the result backend over TLS,
//! against a private redis-server that speaks only TLS, with a CA made for
//! the test), and a server on the port that is not Redis at all.

use std::time::Duration;

use celeriac_core::{Message, Outgoing, ResultBackend, ResultMeta, State, Transport};
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_testkit::redis_server::RedisServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_backend_work_over_tls_with_the_ca_from_the_url() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start_tls();
    let url = server.tls_url(&format!("?ssl_ca_certs={}", server.ca_path().display()));

    let broker = RedisBroker::open(&url).unwrap();
    let msg = Message::new("tasks.add", vec![json!(2), json!(3)], Default::default());
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();
    assert_eq!(broker.queue_len("celery").await.unwrap(), 1);
    let got = broker
        .claim("c1", &["celery".to_string()], 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let again = Message::decode(&got[0].payload).unwrap();
    assert_eq!(again.id(), msg.id());
    broker.ack(&got[0]).await.unwrap();
    assert_eq!(broker.queue_len("celery").await.unwrap(), 0);

    let backend = RedisBackend::open(&url).unwrap();
    let watch = backend.watch(msg.id()).await.unwrap();
    backend
        .store(&ResultMeta::success(msg.id(), json!(5)))
        .await
        .unwrap();
    let meta = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the result arrives over the TLS subscription")
        .unwrap();
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result, json!(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    if !RedisServer::available() {
        return;
    }
    let server = RedisServer::start_tls();
    // The system roots do not know the test's CA.
    let broker = RedisBroker::open(&server.tls_url("")).unwrap();
    let msg = Message::new("tasks.add", vec![], Default::default());
    let err = broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .expect_err("an unverified server must not get the message");
    let text = format!("{err:#} {err:?}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "the error says why: {text}"
    );
    // ssl_cert_reqs=none skips verification, as kombu's CERT_NONE does.
    let insecure = RedisBroker::open(&server.tls_url("?ssl_cert_reqs=none")).unwrap();
    insecure
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();
    assert_eq!(insecure.queue_len("celery").await.unwrap(), 1);
}

#[test]
fn tls_options_are_checked() {
    for (url, want) in [
        (
            "redis://127.0.0.1/0?ssl_ca_certs=/x.pem",
            "needs a rediss:// URL",
        ),
        (
            "rediss://127.0.0.1/0?ssl_cert_reqs=optional",
            "ssl_cert_reqs must be required or none",
        ),
        ("rediss://127.0.0.1/0?ssl_ca_certs=", "needs a file path"),
    ] {
        let err = celeriac_redis::parse_redis_url(url).unwrap_err();
        assert!(err.contains(want), "{url}: {err}");
    }
    let err = RedisBroker::open("rediss://127.0.0.1/0?ssl_ca_certs=/no/such/ca.pem").unwrap_err();
    assert!(
        err.to_string().contains("ssl_ca_certs /no/such/ca.pem"),
        "{err}"
    );
    let o =
        celeriac_redis::parse_redis_url("rediss://127.0.0.1/0?ssl_cert_reqs=CERT_NONE").unwrap();
    assert_eq!(o.client_url, "rediss://127.0.0.1/0#insecure");
}

/// A server that answers anything with an HTTP error, like a web server on
/// the port a user thought was Redis's.
fn http_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_redis_is_named_as_such() {
    let port = http_server();
    let url = format!("redis://127.0.0.1:{port}/0");
    let broker = RedisBroker::open(&url).unwrap();
    let msg = Message::new("tasks.add", vec![], Default::default());
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        broker.publish(Outgoing::from_message(&msg).unwrap()),
    )
    .await
    .expect("fails promptly")
    .expect_err("not a Redis server");
    let text = err.to_string();
    assert!(
        text.contains("does not speak the Redis protocol") && text.contains(&format!(":{port}")),
        "{text}"
    );
    let backend = RedisBackend::open(&url).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), backend.get("x"))
        .await
        .expect("fails promptly")
        .expect_err("not a Redis server");
    assert!(
        err.to_string()
            .contains("does not speak the Redis protocol"),
        "{err}"
    );
}
