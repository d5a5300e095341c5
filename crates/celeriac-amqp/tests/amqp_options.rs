//! The AMQP broker's options on a real RabbitMQ: the consumer prefetch
//! (`basic.qos`) a worker sets or the URL fixes, quorum queues, TLS with a
//! CA of the test's own, and countdowns longer than RabbitMQ's
//! `consumer_timeout` (a node of the test's own, with a shortened timeout).

use std::time::Duration;

use celeriac_amqp::AmqpBroker;
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, Transport};
use celeriac_testkit::rabbit_server::{self, PrivateNode};
use celeriac_testkit::{LONG, id_of, out, q};
use futures::StreamExt as _;

fn pair(q: &str, v: &str) -> (String, String) {
    (q.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_is_the_workers_unless_the_url_sets_it() {
    if !rabbit_server::available() {
        return;
    }
    let url = rabbit_server::vhost_url();
    let b = AmqpBroker::open(&url).unwrap();
    // What a worker with -c 3 and a prefetch multiplier of 2 sets.
    b.set_prefetch(6);
    assert_eq!(b.prefetch(), Some(6));
    assert!(b.claim("w", &q(&["a"]), 1, LONG).await.unwrap().is_empty());
    assert_eq!(rabbit_server::consumer_prefetch(&url), vec![pair("a", "6")]);

    let fixed = format!("{url}?prefetch_count=5");
    let b = AmqpBroker::open(&fixed).unwrap();
    b.set_prefetch(6);
    assert_eq!(b.prefetch(), Some(5), "the URL's prefetch_count wins");
    assert!(b.claim("w", &q(&["b"]), 1, LONG).await.unwrap().is_empty());
    assert!(
        rabbit_server::consumer_prefetch(&url).contains(&pair("b", "5")),
        "{:?}",
        rabbit_server::consumer_prefetch(&url)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_type_quorum_declares_quorum_queues() {
    if !rabbit_server::available() {
        return;
    }
    assert!(matches!(
        AmqpBroker::open("amqp://h/v?queue_type=quorum&max_priority=10"),
        Err(BrokerError::InvalidUrl { .. })
    ));
    assert!(AmqpBroker::open("amqp://h/v?queue_type=stream").is_err());
    let url = rabbit_server::vhost_url();
    let b = AmqpBroker::open(&format!("{url}?queue_type=quorum")).unwrap();
    let (o, id) = out("qq", 0, None);
    b.publish(o).await.unwrap();
    let got = b.claim("w", &q(&["qq"]), 1, LONG).await.unwrap();
    assert_eq!(id_of(&got[0]), id);
    b.ack(&got[0]).await.unwrap();
    // A countdown on a quorum queue waits in a (classic) delay queue.
    let (o, id) = out("qq", 0, Some(unix_now() + 1.0));
    b.publish(o).await.unwrap();
    let got = b
        .claim("w", &q(&["qq"]), 1, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(id_of(&got[0]), id);
    b.ack(&got[0]).await.unwrap();
    let queues = rabbit_server::queue_types(&url);
    assert!(queues.contains(&pair("qq", "quorum")), "{queues:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_trusts_the_ca_it_is_given_and_no_other() {
    if !rabbit_server::available() {
        return;
    }
    let node = PrivateNode::start_tls();
    let ca = node.ca_path();
    let url = format!("{}?ssl_ca_certs={}", node.tls_url(), ca.display());
    let b = AmqpBroker::open(&url).unwrap();
    let (o, id) = out("celery", 0, None);
    b.publish(o).await.unwrap();
    let got = b.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    assert_eq!(id_of(&got[0]), id);
    b.ack(&got[0]).await.unwrap();

    // Without the CA the server's certificate is not trusted.
    let b = AmqpBroker::open(&node.tls_url()).unwrap();
    let err = b.queue_len("celery").await.unwrap_err();
    assert!(matches!(err, BrokerError::Connection { .. }), "{err}");
    // A CA file that cannot be read is a bad URL, and so is one on amqp://.
    let missing = format!("{}?ssl_ca_certs=/nonexistent/ca.pem", node.tls_url());
    assert!(matches!(
        AmqpBroker::open(&missing),
        Err(BrokerError::InvalidUrl { .. })
    ));
    let plain = format!("{}?ssl_ca_certs={}", node.url, ca.display());
    assert!(AmqpBroker::open(&plain).is_err());
}

/// RabbitMQ closes the channel of a consumer that holds a delivery
/// unacked for longer than `consumer_timeout` (Celery's ETA messages
/// meet this). celeriac keeps a countdown in a delay queue, so a
/// countdown several times the timeout is delivered on the channel that
/// was open all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_countdown_longer_than_consumer_timeout_keeps_its_channel() {
    if !rabbit_server::available() {
        return;
    }
    let node =
        PrivateNode::start_configured("{consumer_timeout, 2000}, {channel_tick_interval, 500}");

    // The timeout is real: a consumer that holds a delivery is cut off.
    let conn = lapin::Connection::connect(&node.url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("held".into(), Default::default(), Default::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "held".into(),
        Default::default(),
        b"x",
        Default::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "held".into(),
            "holder".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    assert!(!first.redelivered);
    let ended = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await;
    let ended = ended.expect("RabbitMQ cut off a consumer holding a delivery");
    assert!(
        !matches!(ended, Some(Ok(_))),
        "no other delivery: {ended:?}"
    );
    assert!(!ch.status().connected(), "the holder's channel is closed");

    // A celeriac countdown of 6 s (three times the timeout).
    let b = AmqpBroker::open(&node.url).unwrap();
    assert!(
        b.claim("w", &q(&["celery"]), 1, LONG)
            .await
            .unwrap()
            .is_empty()
    );
    let (o, id) = out("celery", 0, Some(unix_now() + 6.0));
    b.publish(o).await.unwrap();
    let mut got = Vec::new();
    while got.is_empty() {
        got = b
            .claim("w", &q(&["celery"]), 1, Duration::from_secs(1))
            .await
            .unwrap();
    }
    assert_eq!(id_of(&got[0]), id);
    assert_eq!((got[0].deliveries, got[0].redelivered), (1, false));
    assert!(
        got[0].tag.starts_with("1."),
        "delivered on the first connection and channel, never replaced: {}",
        got[0].tag
    );
    b.ack(&got[0]).await.unwrap();
}
