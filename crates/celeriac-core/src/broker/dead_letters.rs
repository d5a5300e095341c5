//! [`DeadLetters`]: the dead-letter store, where a message that cannot be
//! run (malformed, poison, out of retries) is set aside with a reason
//! instead of being dropped, and from which an operator can requeue it.

use std::fmt;

use async_trait::async_trait;

use super::{DeadLetter, Delivery};
use crate::error::BrokerError;

/// The dead-letter capability of a broker. See the [module docs](super)
/// for the contract: a message leaves the broker only by
/// [`Transport::ack`](super::Transport::ack) or by
/// [`dead_letter`](Self::dead_letter).
#[async_trait]
pub trait DeadLetters: Send + Sync + fmt::Debug {
    /// Moves a delivery to the dead-letter store with a reason.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError>;

    /// Lists up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Moves a dead letter back onto its queue. Returns `false` if no dead
    /// letter has that id.
    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError>;
}
