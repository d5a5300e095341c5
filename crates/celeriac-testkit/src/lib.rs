//! The contracts every celeriac broker, result backend and executor keep,
//! as async test functions. Each executor runs
//! [`executor::run_contract`]; each broker crate runs the broker contract
//! against its own fixtures with [`broker_contract!`]:
//!
//! ```ignore
//! celeriac_testkit::broker_contract!(memory_broker, make_memory_fixture);
//! ```

pub mod beat_store;
pub mod chord_join;
pub mod control;
pub mod executor;
pub mod process;
pub mod proxy;
pub mod python;
pub mod rabbit_server;
pub mod redis_server;
pub mod settle_together;
pub mod site;
pub mod tls;

mod queueing;
mod records;

pub use queueing::*;
pub use records::*;

pub use control::{
    a_broadcast_revoke_is_recorded, control_calls_reach_every_listener_and_collect_their_replies,
    control_casts_arrive_and_stray_replies_are_dropped, delayed_messages_are_listed_by_queue,
    purge_deletes_waiting_messages_and_keeps_held_ones,
};

/// Publishes `calls` in batches of 500; returns their task ids in order.
pub async fn send_calls(
    broker: &dyn celeriac_core::Broker,
    calls: Vec<celeriac_core::Call<serde_json::Value>>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for c in calls {
        let m = c.to_message().expect("a call encodes");
        ids.push(m.id().to_string());
        batch.push(celeriac_core::Outgoing::from_message(&m).expect("a message encodes"));
        if batch.len() == 500 {
            broker
                .publish_batch(std::mem::take(&mut batch))
                .await
                .expect("publish");
        }
    }
    broker.publish_batch(batch).await.expect("publish");
    ids
}

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{Broker, Message, Outgoing, ResultBackend};
use serde_json::json;

/// A generous wait.
pub const LONG: Duration = Duration::from_secs(2);
/// A short wait.
pub const SHORT: Duration = Duration::from_millis(50);

/// An outgoing message on `queue` with a priority and an eta, and its id.
pub fn out(queue: &str, priority: u8, eta: Option<f64>) -> (Outgoing, String) {
    let mut m = Message::new("t.x", vec![json!(priority)], Default::default());
    m.set_queue(queue);
    m.properties.priority = priority;
    let mut o = Outgoing::from_message(&m).unwrap();
    o.eta = eta;
    (o, m.id().to_string())
}

/// The task id of a delivery.
pub fn id_of(d: &celeriac_core::Delivery) -> String {
    Message::decode(&d.payload).unwrap().id().to_string()
}

/// Queue names.
pub fn q(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Two handles on one broker and one result store (two processes'
/// view, for brokers that have one), made with a given claim lease.
#[allow(missing_debug_implementations)]
pub struct Fixture {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// A second handle on the same broker.
    pub other: Arc<dyn Broker>,
    /// The result backend.
    pub backend: Arc<dyn ResultBackend>,
    /// A second handle on the same result backend.
    pub other_backend: Arc<dyn ResultBackend>,
    /// Anything the fixture must keep alive (a temporary directory, ...).
    pub keep: Option<Box<dyn std::any::Any + Send>>,
}

/// Runs every contract function against fixtures made by `$make`, one
/// `#[tokio::test]` each, in a module called `$module`.
#[macro_export]
macro_rules! broker_contract {
    ($module:ident, $make:path) => {
        mod $module {
            $crate::broker_contract!(@tests $make;
                publish_claim_ack,
                empty_claim_times_out_empty,
                priority_zero_first_then_fifo,
                depth_by_priority_counts_each_level,
                queues_served_in_given_order_and_max_respected,
                lapsed_lease_redelivers_and_old_claim_cannot_ack,
                renewed_lease_is_not_redelivered,
                requeue_with_delay,
                eta_messages_wait_in_the_broker,
                dead_letters_keep_payload_and_reason,
                concurrent_claims_take_each_message_once,
                heartbeats_list_nodes,
                results_store_get_watch_forget,
                success_is_never_overwritten,
                revoked_ids_are_flagged_at_claim_until_they_expire,
                terminations_are_recorded_with_their_revoke,
                batch_acks_report_each_delivery,
                batch_stores_keep_success_and_wake_watchers,
                revokes_are_listed_for_messages_already_claimed,
                idempotency_keys_are_claimed_once_until_they_expire,
                rate_limit_buckets_are_shared,
                control_calls_reach_every_listener_and_collect_their_replies,
                control_casts_arrive_and_stray_replies_are_dropped,
                a_broadcast_revoke_is_recorded,
                purge_deletes_waiting_messages_and_keeps_held_ones,
                delayed_messages_are_listed_by_queue,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name($make).await
            }
        )*
    };
}
