//! The broker contract of `celeriac-testkit` on a private RabbitMQ, each
//! test in its own vhost, with a SQLite result backend (AMQP has none of
//! its own yet). Contracts that do not apply to AMQP are listed at the end
//! with the reason.

use std::sync::Arc;
use std::time::Duration;

use celeriac_amqp::AmqpBroker;
use celeriac_core::Broker;
use celeriac_embedded::SqliteBackend;
use celeriac_testkit::{Fixture, rabbit_server};

fn make(_lease: Duration) -> Fixture {
    let url = rabbit_server::vhost_url();
    let broker: Arc<dyn Broker> = AmqpBroker::open(&url).unwrap();
    // One handle: on AMQP a delivery belongs to the channel it came on, so
    // another connection cannot ack it. Tests below use two connections
    // where that is the point.
    let other = broker.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let backend = SqliteBackend::open(&db).unwrap();
    let other_backend = SqliteBackend::open(&db).unwrap();
    Fixture {
        broker,
        other,
        backend,
        other_backend,
        keep: Some(Box::new(dir)),
    }
}

macro_rules! on_rabbit {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if !rabbit_server::available() {
                    return;
                }
                celeriac_testkit::$name(make).await
            }
        )*
    };
}

on_rabbit!(
    publish_claim_ack,
    empty_claim_times_out_empty,
    renewed_lease_is_not_redelivered,
    requeue_with_delay,
    dead_letters_keep_payload_and_reason,
    concurrent_claims_take_each_message_once,
    results_store_get_watch_forget,
    success_is_never_overwritten,
);

// Not run on AMQP, and why:
// - priority_zero_first_then_fifo: AMQP priorities need `x-max-priority`
//   queues (not declared yet, as Celery's default), and 9 is the highest.
// - queues_served_in_given_order_and_max_respected and
//   batch_acks_report_each_delivery: deliveries of several
//   consumers arrive concurrently; claims serve the buffered ones in queue
//   order, but cannot wait for ones still in flight (a claim of 3 may
//   return the 2 that arrived).
// - lapsed_lease_redelivers_and_old_claim_cannot_ack: no leases on AMQP; a
//   delivery comes back when its holder's channel closes (tested below).
// - eta_messages_wait_in_the_broker: the delay queue holds the message, so
//   `queue_len` of its queue does not count it (tested below without that).
// - heartbeats_list_nodes, revoked_ids_..., terminations_...,
//   revokes_are_listed_...: no node registry or revocations on AMQP yet
//   (typed `Unsupported` errors, tested below).
// - rate_limit_buckets_are_shared: rate limits are per process on AMQP.

use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, Message, Transport};
use celeriac_testkit::{LONG, id_of, out, q};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_gives_its_deliveries_back() {
    if !rabbit_server::available() {
        return;
    }
    let url = rabbit_server::vhost_url();
    let dead = AmqpBroker::open(&url).unwrap();
    let alive = AmqpBroker::open(&url).unwrap();
    let (o, id) = out("celery", 0, None);
    alive.publish(o).await.unwrap();
    let first = dead.claim("w1", &q(&["celery"]), 1, LONG).await.unwrap();
    assert_eq!((first.len(), first[0].redelivered), (1, false));
    // The holder "dies": its connection closes without an ack.
    dead.close().await;
    let again = alive
        .claim("w2", &q(&["celery"]), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(id_of(&again[0]), id);
    assert!(again[0].redelivered);
    assert_eq!(again[0].deliveries, 2);
    assert!(matches!(
        dead.ack(&first[0]).await,
        Err(BrokerError::NotHeld(_))
    ));
    alive.ack(&again[0]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_messages_wait_in_a_delay_queue() {
    if !rabbit_server::available() {
        return;
    }
    let url = rabbit_server::vhost_url();
    let b = AmqpBroker::open(&url).unwrap();
    let (o, id) = out("celery", 0, Some(unix_now() + 0.6));
    b.publish(o).await.unwrap();
    assert!(
        b.claim("w", &q(&["celery"]), 1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty(),
        "not delivered before its eta"
    );
    let got = b
        .claim("w", &q(&["celery"]), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(id_of(&got[0]), id);
    assert!(!got[0].redelivered);
    b.ack(&got[0]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_connection_serves_again() {
    if !rabbit_server::available() {
        return;
    }
    let url = rabbit_server::vhost_url();
    let b = AmqpBroker::open(&url).unwrap();
    let (o, _) = out("celery", 0, None);
    b.publish(o).await.unwrap();
    let held = b.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    // Every connection of this vhost is closed by the server.
    let vhost = url.rsplit('/').next().unwrap();
    rabbit_server::rabbitmqctl(&["close_all_connections", "-p", vhost, "test"]);
    let again = b
        .claim("w", &q(&["celery"]), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the unacked message is delivered again");
    assert!(again[0].redelivered);
    assert!(matches!(
        b.ack(&held[0]).await,
        Err(BrokerError::NotHeld(_))
    ));
    b.ack(&again[0]).await.unwrap();
    let (o, _) = out("celery", 0, None);
    b.publish(o).await.unwrap();
    assert_eq!(
        b.claim("w", &q(&["celery"]), 1, LONG).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_without_storage_say_so() {
    if !rabbit_server::available() {
        return;
    }
    let b: Arc<dyn Broker> = AmqpBroker::open(&rabbit_server::vhost_url()).unwrap();
    let ids = vec!["x".to_string()];
    assert!(matches!(
        b.revoke(&ids, Duration::from_secs(1)).await,
        Err(BrokerError::Unsupported(_))
    ));
    assert!(matches!(
        b.nodes(Duration::from_secs(1)).await,
        Err(BrokerError::Unsupported(_))
    ));
    assert!(b.revoked(&ids).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_shaped_delivery_is_decoded() {
    // What kombu sends (reference §4.2) decodes as a task message.
    if !rabbit_server::available() {
        return;
    }
    let b = AmqpBroker::open(&rabbit_server::vhost_url()).unwrap();
    let m = Message::new("tasks.add", vec![serde_json::json!(2)], Default::default());
    b.publish(celeriac_core::Outgoing::from_message(&m).unwrap())
        .await
        .unwrap();
    let got = b.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    let back = Message::decode(&got[0].payload).unwrap();
    assert_eq!(back.task(), "tasks.add");
    assert_eq!(back.properties.delivery_info.routing_key, "celery");
    b.ack(&got[0]).await.unwrap();
}
