//! The broker and result-backend extension traits, and the types they
//! exchange.
//!
//! A broker moves encoded messages (the JSON envelope of
//! [`Message::encode`](crate::Message::encode)) between producers and
//! workers. Its contract is the one celeriac promises users:
//!
//! - **claims are atomic**: a claimed message is recorded as held by its
//!   consumer, with a lease, in the same step that takes it off the queue, so
//!   it is never only in a worker's memory;
//! - **leases are renewed** ([`Transport::renew`]) while a task runs; a
//!   message whose lease lapses (its worker died) becomes claimable again
//!   and is delivered with `redelivered` set;
//! - **nothing is dropped**: a message leaves the broker only by
//!   [`Transport::ack`], or moves to the dead-letter store with a reason by
//!   [`DeadLetters::dead_letter`];
//! - **delayed messages** (an `eta` in the future) are stored by the broker
//!   and become claimable when due; they are never held by a worker.
//!
//! A broker is made of small capability traits, one file each:
//!
//! | Trait | File | Job |
//! |---|---|---|
//! | [`Transport`] | `transport.rs` | publish, claim, renew, ack, requeue |
//! | [`DeadLetters`] | `dead_letters.rs` | the dead-letter store |
//! | [`Revocations`] | `revocations.rs` | revoked (and terminated) task ids |
//! | [`RateLimits`] | `rate_limits.rs` | rate-limit buckets shared by workers |
//! | [`Nodes`] | `nodes.rs` | the node registry (heartbeats) |
//! | [`Control`] | `control.rs` | remote control (Celery's pidbox), purge |
//! | [`Events`] | `events.rs` | Celery's monitoring events (`celeryev`) |
//!
//! Two capabilities stand apart from [`Broker`]: [`SettleTogether`]
//! (`settle_together.rs`), storing results and acknowledging messages in
//! one step, which a broker offers through [`Transport::settle_with`] when
//! it shares its store with the result backend; and [`BeatStore`] (`beat.rs`),
//! the leader lease and fenced publish of `celeriac beat`, which brokers
//! with a shared store implement (AMQP keeps it in its result store).
//!
//! [`Broker`] is all seven together, implemented for every type that
//! implements them, so workers hold an `Arc<dyn Broker>`. A backend that
//! lacks a capability does not compile as a `Broker`: no method has a
//! default that silently does nothing. Methods on `dyn Broker` are callable
//! without imports; on a concrete broker type, bring the traits into scope
//! with [`prelude`].
//!
//! A result backend ([`ResultBackend`], in `result_backend.rs`) stores
//! [`ResultMeta`](crate::ResultMeta) documents and lets clients wait for
//! them without polling where the backend allows
//! ([`ResultBackend::watch`]).
//!
//! This file holds the types brokers exchange ([`Outgoing`], [`Delivery`],
//! [`DeadLetter`], [`NodeInfo`]) and [`Broker`] itself.

mod beat;
mod control;
mod dead_letters;
mod events;
mod nodes;
mod rate_limits;
mod result_backend;
mod revocations;
mod settle_together;
mod transport;

use std::time::Duration;

pub use beat::{BeatRun, BeatStore, Fenced};
pub use control::{
    Control, ControlInbox, ControlReply, ControlRequest, DEFAULT_REPLY_TIMEOUT, REPLY_EXCHANGE,
    ReplyTo, glob_match,
};
pub use dead_letters::DeadLetters;
pub use events::{EventMessage, EventStream, Events};
pub use nodes::Nodes;
pub use rate_limits::RateLimits;
pub use result_backend::{ChordJoin, PartReturn, ResultBackend, ResultWatch, Waiters};
pub use revocations::Revocations;
pub use settle_together::{Fate, Finished, SettleTogether, Settled};
pub use transport::Transport;

/// How long a revoke is remembered by default (Celery keeps revoked ids
/// for 3 hours).
pub const REVOKE_TTL: Duration = Duration::from_secs(3 * 3600);

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Destination queue.
    pub queue: String,
    /// Priority 0-9. On the embedded brokers and Redis, **0 is the highest**
    /// (kombu's Redis convention).
    pub priority: u8,
    /// Unix time before which the message must not be delivered.
    pub eta: Option<f64>,
    /// The publisher's unique delivery tag.
    pub tag: String,
    /// The task id, so the broker can honour revokes (empty if unknown).
    pub task_id: String,
    /// The encoded envelope.
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// The outgoing form of a message: its queue, priority, eta and delivery
    /// tag are read from the message itself.
    pub fn from_message(msg: &crate::Message) -> Result<Self, crate::CodecError> {
        Ok(Outgoing {
            queue: msg.queue().to_string(),
            priority: msg.properties.priority.min(9),
            eta: msg.eta_unix(),
            tag: msg.properties.delivery_tag.clone(),
            task_id: msg.id().to_string(),
            payload: msg.encode()?,
        })
    }
}

/// A message claimed by a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Broker-assigned identity of this claim, used to ack, renew, requeue
    /// or dead-letter it.
    pub tag: String,
    /// The queue it was claimed from.
    pub queue: String,
    /// The encoded envelope, exactly as published.
    pub payload: Vec<u8>,
    /// How many times it has been claimed, this claim included.
    pub deliveries: u32,
    /// Whether it was delivered before (a lapsed lease or a requeue).
    pub redelivered: bool,
    /// Whether its task id was revoked (checked by the broker at claim
    /// time); the worker records REVOKED instead of running it.
    pub revoked: bool,
}

/// A message set aside in the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Identity within the dead-letter store.
    pub id: String,
    /// The queue it came from.
    pub queue: String,
    /// Why it was set aside.
    pub reason: String,
    /// Unix time it was set aside.
    pub failed_at: f64,
    /// The envelope, exactly as it was published.
    pub payload: Vec<u8>,
}

/// A worker node as it announces itself through the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// Node name, e.g. `celeriac@host`.
    pub name: String,
    /// Execution slots.
    pub concurrency: usize,
    /// Operating system process id.
    pub pid: u32,
    /// Unix time of the last heartbeat.
    pub last_seen: f64,
}

/// A message broker: every capability a worker needs. See the
/// [module docs](self) for the contract.
///
/// It has no methods of its own and is implemented for every type that
/// implements the seven capability traits, so implement those; an
/// `Arc<dyn Broker>` then offers all their methods.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use celeriac_core::Broker;
///
/// fn lease_secs(broker: &Arc<dyn Broker>) -> u64 {
///     // Capability methods are callable on `dyn Broker` without imports.
///     broker.lease().as_secs()
/// }
/// # let _ = lease_secs;
/// ```
pub trait Broker:
    Transport + DeadLetters + Revocations + RateLimits + Nodes + Control + Events
{
}

impl<T> Broker for T where
    T: Transport + DeadLetters + Revocations + RateLimits + Nodes + Control + Events
{
}

/// Brings every broker and result-backend trait into scope, for calling
/// their methods on concrete types (`Arc<MemoryBroker>`, ...).
///
/// # Examples
///
/// ```
/// use celeriac_core::broker::prelude::*;
///
/// // Generic code names the capabilities it needs.
/// async fn backlog<B: Transport + ?Sized>(broker: &B, queue: &str) -> usize {
///     broker.queue_len(queue).await.unwrap_or(0)
/// }
/// # let _ = backlog::<dyn Broker>;
/// ```
pub mod prelude {
    pub use super::{
        Broker, Control, DeadLetters, Events, Nodes, RateLimits, ResultBackend, Revocations,
        Transport,
    };
}
