//! [`SettleTogether`]: storing results, joining chord header parts and
//! acknowledging messages in one step, which a broker offers
//! ([`Transport::settle_with`](super::Transport::settle_with)) when it
//! keeps its messages in the same store as the result backend (the same
//! Redis server and database, the same SQLite file). The trait's docs
//! state the guarantees.

use std::fmt;

use async_trait::async_trait;

use super::{Delivery, PartReturn};
use crate::error::BrokerError;
use crate::result::ResultMeta;

/// One finished task to settle together: its result, its chord part and
/// its message.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// Its result to store; `None` for a task whose result is ignored.
    pub meta: Option<&'a ResultMeta>,
    /// For a chord header part: the chord's group id and the part, joined
    /// once the result is stored.
    pub part: Option<(&'a str, PartReturn<'a>)>,
    /// Its message, acknowledged once the result is stored and the part
    /// joined.
    pub delivery: &'a Delivery,
}

/// What became of one task's message in [`SettleTogether::settle_together`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fate {
    /// Its result is stored (and its part joined) and it is acknowledged.
    Acked,
    /// Its result is stored (and its part joined), but the message was no
    /// longer held under this claim (its lease lapsed and another claim
    /// holds it, or nobody does): not acknowledged here.
    NotHeld,
    /// Its result is stored and its part joined, and its chord is complete
    /// with this batch: the message is left held, for the worker to
    /// acknowledge once the chord's body is sent.
    HeldBack,
}

/// The outcome of [`SettleTogether::settle_together`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settled {
    /// For each task, in the order given, what became of its message.
    pub fates: Vec<Fate>,
    /// The chords this batch completes: their group id, and every part in
    /// `group_index` order (as [`ChordJoin::part_return_many`] returns
    /// them to its winner).
    ///
    /// [`ChordJoin::part_return_many`]: super::ChordJoin::part_return_many
    pub completed: Vec<(String, Vec<serde_json::Value>)>,
}

impl Settled {
    /// An outcome, for implementations.
    pub fn new(fates: Vec<Fate>, completed: Vec<(String, Vec<serde_json::Value>)>) -> Self {
        Settled { fates, completed }
    }
}

/// Stores results, joins chord header parts and acknowledges messages in
/// one step, for a broker that shares its store with the result backend.
///
/// Without it a worker settles a batch of finished tasks in two or three
/// calls: [`ResultBackend::store_many`](super::ResultBackend::store_many),
/// [`ChordJoin::part_return_many`](super::ChordJoin::part_return_many) for
/// each chord in the batch, then
/// [`Transport::ack_many`](super::Transport::ack_many). Together they are
/// one request, with the same order and the same guarantees:
///
/// - a result is stored **before** its message is acknowledged (in one
///   atomic step here, so nothing can happen in between);
/// - a chord header part is joined after its result is stored and before
///   its message is acknowledged, and counted once however often it is
///   joined (the backend's dedupe);
/// - the parts of a chord that this batch completes are **held back**, not
///   acknowledged ([`Fate::HeldBack`]): the worker sends the chord's body
///   first, then acknowledges them, so that a worker killed before the
///   body is sent leaves a part to come back and complete the chord;
/// - the stored results, their keys and their notification are what the
///   result backend itself writes.
///
/// A call that fails may have done all, part or none of this: every step
/// is safe to run again (a stored SUCCESS is never overwritten, a part is
/// counted once, an ack of a message nobody holds changes nothing), so a
/// caller falls back to the separate calls for the same batch.
///
/// # Examples
///
/// ```
/// use celeriac_core::broker::{Finished, SettleTogether};
///
/// // A worker settles a batch this way when its broker offers it.
/// async fn settle(joint: &dyn SettleTogether, batch: &[Finished<'_>]) -> usize {
///     match joint.settle_together(batch).await {
///         Ok(settled) => settled.fates.len(),
///         Err(_) => 0, // fall back to store_many, part_return_many, ack_many
///     }
/// }
/// # let _ = settle;
/// ```
#[async_trait]
pub trait SettleTogether: Send + Sync + fmt::Debug {
    /// Stores the results of `batch`, joins its chord header parts (the
    /// parts of one chord in the order given: the last of them is the
    /// body's parent when they complete it), and acknowledges its messages,
    /// in one step. On `Err`, any of it may have been done; every step is
    /// safe to repeat with the separate calls.
    async fn settle_together(&self, batch: &[Finished<'_>]) -> Result<Settled, BrokerError>;
}
