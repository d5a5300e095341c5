//! [`BeatStore`]: the leader lease and fenced publish of a periodic
//! scheduler (`celeriac beat`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::Outgoing;
use crate::error::BrokerError;

/// One run of a schedule entry for [`BeatStore::publish_fenced`].
#[derive(Debug, Clone, PartialEq)]
pub struct BeatRun {
    /// The entry's name, unique within its group.
    pub entry: String,
    /// The slot: the unix time, in milliseconds, the run was due.
    pub slot_ms: i64,
    /// The message to publish, or `None` to record the slot only (an entry
    /// seen for the first time, or a run skipped by its catch-up policy).
    pub message: Option<Outgoing>,
}

/// What [`BeatStore::publish_fenced`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// The token no longer holds the lease: nothing was published or
    /// recorded.
    Refused,
    /// The token holds the lease. For each run, in order, whether it was
    /// applied (published, if it had a message, and recorded); `false`
    /// means its entry already had this slot or a later one.
    Applied(Vec<bool>),
}

/// Leader election and fenced publishing for periodic schedulers: what
/// `celeriac beat` needs from a broker so that it is safe to run on every
/// node.
///
/// - Only one holder has a group's lease at a time. Taking a free or lapsed
///   lease hands out a **fencing token** larger than every token handed out
///   before for that group; renewing keeps it.
/// - [`publish_fenced`](Self::publish_fenced) does nothing unless the token
///   still holds the lease, checked **in the same atomic step** as the
///   publish, so a beat that lost the lease (paused, cut off, or replaced
///   after its lease lapsed) cannot publish.
/// - Each entry's last run is a slot time in milliseconds, recorded in that
///   same step. A run whose slot is not later than the recorded one is
///   skipped, so a slot is published at most once, across leaders and
///   restarts.
///
/// Redis does it in one Lua script, SQLite in one `BEGIN IMMEDIATE`
/// transaction, `memory://` in one critical section.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::broker::{BeatStore, Fenced};
///
/// // One beat's turn: keep the lease, then publish through it.
/// async fn turn(store: &dyn BeatStore, held: Option<u64>) -> Option<u64> {
///     let token = store
///         .acquire_lease("default", held, Duration::from_secs(4))
///         .await
///         .ok()??;
///     match store.publish_fenced("default", token, Vec::new()).await {
///         Ok(Fenced::Applied(_)) => Some(token),
///         _ => None,
///     }
/// }
/// # let _ = turn;
/// ```
#[async_trait]
pub trait BeatStore: Send + Sync + fmt::Debug {
    /// Renews the lease of `group` for `ttl` if `held` is its current
    /// token, or takes it with a new, larger token if it is free or lapsed.
    /// Returns the token now held, or `None` if another holder has it.
    async fn acquire_lease(
        &self,
        group: &str,
        held: Option<u64>,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError>;

    /// Gives the lease up if `token` still holds it, so that a standby
    /// takes over at once instead of after the lease's TTL.
    async fn release_lease(&self, group: &str, token: u64) -> Result<(), BrokerError>;

    /// The recorded last-run slot (unix milliseconds) of each entry of
    /// `group`.
    async fn last_runs(&self, group: &str) -> Result<HashMap<String, i64>, BrokerError>;

    /// If `token` holds the lease of `group`: publishes each run's message
    /// and records its slot as its entry's last run, in one atomic step,
    /// skipping runs whose entry already has this slot or a later one.
    async fn publish_fenced(
        &self,
        group: &str,
        token: u64,
        runs: Vec<BeatRun>,
    ) -> Result<Fenced, BrokerError>;
}
