//! The broker contract of `celeriac-testkit` on a private RabbitMQ, each
//! test in its own vhost, with a SQLite result backend whose file is also
//! the broker's registry (revocations, rate limits, nodes), as
//! `celeriac-connect` pairs them. Contracts that do not apply to AMQP are
//! listed at the end with the reason.

use std::sync::Arc;
use std::time::Duration;

use celeriac_amqp::AmqpBroker;
use celeriac_core::Broker;
use celeriac_embedded::{SqliteBackend, SqliteBroker};
use celeriac_testkit::{Fixture, rabbit_server};

fn make(_lease: Duration) -> Fixture {
    let url = rabbit_server::vhost_url();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let registry = SqliteBroker::open(&db).unwrap();
    let broker: Arc<dyn Broker> = AmqpBroker::open_with_registry(&url, registry).unwrap();
    // One handle: on AMQP a delivery belongs to the channel it came on, so
    // another connection cannot ack it. Tests below use two connections
    // where that is the point.
    let other = broker.clone();
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

macro_rules! control_on_rabbit {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if !rabbit_server::available() {
                    return;
                }
                celeriac_testkit::control::$name(make).await
            }
        )*
    };
}

control_on_rabbit!(
    control_calls_reach_every_listener_and_collect_their_replies,
    control_casts_arrive_and_stray_replies_are_dropped,
    a_broadcast_revoke_is_recorded,
);

on_rabbit!(
    publish_claim_ack,
    empty_claim_times_out_empty,
    renewed_lease_is_not_redelivered,
    requeue_with_delay,
    dead_letters_keep_payload_and_reason,
    concurrent_claims_take_each_message_once,
    results_store_get_watch_forget,
    success_is_never_overwritten,
    heartbeats_list_nodes,
    revoked_ids_are_flagged_at_claim_until_they_expire,
    terminations_are_recorded_with_their_revoke,
    revokes_are_listed_for_messages_already_claimed,
    rate_limit_buckets_are_shared,
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
// - purge_deletes_waiting_messages_and_keeps_held_ones: `queue.purge`
//   leaves messages waiting in delay queues.

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
    let (o, id) = out("celery", 0, Some(unix_now() + 3.0));
    b.publish(o).await.unwrap();
    assert!(
        b.claim("w", &q(&["celery"]), 1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty(),
        "not delivered before its eta"
    );
    let got = b
        .claim("w", &q(&["celery"]), 1, Duration::from_secs(15))
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
async fn without_a_registry_revokes_live_in_the_process_and_nodes_say_so() {
    if !rabbit_server::available() {
        return;
    }
    let url = rabbit_server::vhost_url();
    let b: Arc<dyn Broker> = AmqpBroker::open(&url).unwrap();
    let listener: Arc<dyn Broker> = AmqpBroker::open(&url).unwrap();
    let mut inbox = listener.listen("w@h").await.unwrap();
    let ids = vec!["x".to_string()];
    b.revoke(&ids, Duration::from_secs(60)).await.unwrap();
    assert_eq!(b.revoked(&ids).await.unwrap(), ids, "the revoker remembers");
    // Another process learns it from Celery's broadcast, as a Python
    // worker would.
    let got = tokio::time::timeout(LONG * 5, inbox.recv())
        .await
        .expect("the revoke broadcast arrives")
        .unwrap();
    assert_eq!(got.revoke(), Some((ids.clone(), false)));
    assert_eq!(listener.revoked(&ids).await.unwrap(), ids);
    assert!(matches!(
        b.nodes(Duration::from_secs(1)).await,
        Err(BrokerError::Unsupported(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_subscriber_as_celery_sends_them() {
    use celeriac_core::broker::{EventMessage, Events};
    use futures::StreamExt as _;
    if !rabbit_server::available() {
        return;
    }
    let url = rabbit_server::vhost_url();
    let sender = AmqpBroker::open(&url).unwrap();
    let receiver = AmqpBroker::open(&url).unwrap();
    let mut a = receiver.subscribe_events().await.unwrap();
    let mut b = receiver.subscribe_events().await.unwrap();
    let sent = vec![
        EventMessage {
            routing_key: "worker.online".into(),
            hostname: "w@h".into(),
            body: br#"{"type": "worker-online"}"#.to_vec(),
        },
        EventMessage {
            routing_key: "task.multi".into(),
            hostname: "w@h".into(),
            body: br#"[{"type": "task-received"}]"#.to_vec(),
        },
    ];
    sender.send_events(&sent).await.unwrap();
    for stream in [&mut a, &mut b] {
        for want in &sent {
            let got = tokio::time::timeout(LONG * 5, stream.next())
                .await
                .expect("the event arrives")
                .unwrap()
                .unwrap();
            assert_eq!(&got, want);
        }
    }
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
