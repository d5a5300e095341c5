//! [`Transport`]: moving messages. Publishing, claiming under a lease,
//! renewing, acknowledging and requeueing: the part of a broker every
//! producer and worker needs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Delivery, Outgoing, ResultBackend, SettleTogether};
use crate::error::BrokerError;

/// The message-moving capability of a broker: publish, claim, renew, ack
/// and requeue. See the [module docs](super) for the contract.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    /// The broker's URL, with any password redacted.
    fn url(&self) -> String;

    /// How long a claim holds a message without renewal before the broker
    /// makes it claimable again. Workers renew at a third of it.
    fn lease(&self) -> Duration;

    /// Publishes one message.
    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError>;

    /// Publishes several messages, in order. Brokers override this to use one
    /// round trip or transaction.
    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        for m in msgs {
            self.publish(m).await?;
        }
        Ok(())
    }

    /// Claims up to `max` messages from `queues` for `consumer`, waiting up
    /// to `timeout` for the first. Returns an empty list on timeout. Queues
    /// are served in the order given; within a queue, higher priority first,
    /// then oldest first.
    async fn claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError>;

    /// Acknowledges a delivery: the message is done and removed.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError>;

    /// Tells a broker whose server pushes messages to its consumers (AMQP's
    /// `basic.qos`) how many messages a worker may hold before it starts
    /// them: its concurrency × prefetch multiplier (Celery's
    /// `worker_prefetch_multiplier`). The worker calls it before it
    /// claims. By default nothing: the other brokers hand out only what a
    /// claim asks for.
    fn set_prefetch(&self, messages: usize) {
        let _ = messages;
    }

    /// The prefetch the broker's server applies (for `inspect stats`), or
    /// `None` where a claim takes only what it asks for.
    fn prefetch(&self) -> Option<usize> {
        None
    }

    /// Acknowledges several deliveries, in one round trip or transaction
    /// where the broker allows. Returns, in order, whether each delivery
    /// was still held (`false` is [`BrokerError::NotHeld`] for that one: its
    /// lease lapsed and it was given to someone else). An `Err` means the
    /// broker could not be asked; some of the acks may have been applied.
    async fn ack_many(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, BrokerError> {
        let mut held = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match self.ack(d).await {
                Ok(()) => held.push(true),
                Err(BrokerError::NotHeld(_)) => held.push(false),
                Err(e) => return Err(e),
            }
        }
        Ok(held)
    }

    /// Whether workers should store results and ack messages in batches
    /// ([`ack_many`](Self::ack_many) with
    /// [`ResultBackend::store_many`](super::ResultBackend::store_many)):
    /// true for brokers where a batch saves round trips or transactions.
    /// The in-process default is false: each task is settled on its own,
    /// without waiting for the others.
    fn batch_settles(&self) -> bool {
        false
    }

    /// The way to settle finished tasks together with `backend`
    /// ([`SettleTogether`]: their results stored, chord parts joined and
    /// messages acknowledged in one step), if this broker keeps its
    /// messages in the same store as `backend` (the same Redis server and
    /// database, say). `None`, the default, for every other pairing: the
    /// worker stores through the backend, then acknowledges here, in
    /// separate calls.
    fn settle_with(&self, backend: &dyn ResultBackend) -> Option<Arc<dyn SettleTogether>> {
        let _ = backend;
        None
    }

    /// Extends the leases of deliveries still being worked on.
    async fn renew(&self, deliveries: &[Delivery]) -> Result<(), BrokerError>;

    /// Puts a delivery back on its queue, claimable again at once or from
    /// unix time `not_before`.
    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError>;

    /// Number of messages waiting on `queue` (not claimed, including
    /// delayed ones).
    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError>;

    /// The messages [`queue_len`](Self::queue_len) counts, by priority:
    /// `(priority, count)` pairs in the order they are served (priority 0
    /// first), levels without messages left out. A broker that keeps
    /// priorities in coarser levels reports each level under its lowest
    /// priority (Redis: kombu's lists for 0, 3, 6 and 9). The default, for
    /// a broker that cannot tell levels apart, reports the whole queue
    /// under priority 0.
    async fn queue_len_by_priority(&self, queue: &str) -> Result<Vec<(u8, usize)>, BrokerError> {
        let n = self.queue_len(queue).await?;
        Ok(if n == 0 { Vec::new() } else { vec![(0, n)] })
    }
}
