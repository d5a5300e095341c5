//! The liveness lease of a consumer: how the Redis broker tells a dead
//! worker from a slow one in seconds, instead of after the visibility
//! timeout (an hour by default).
//!
//! Each broker handle (in a worker, one per process) has a consumer id, a
//! random token that starts every claim token it hands out. While it
//! claims, it keeps the key `celeriac.alive.<id>` alive with a TTL of
//! [`LEASE`], renewed every [`RENEW_EVERY`] by a task of its own, and is a
//! member of `celeriac.consumers`. A process killed with SIGKILL stops
//! renewing, its key expires, and the next restore pass of any live
//! consumer puts its claimed messages back on their queues
//! (`lua/restore.lua`). The id is new in each process, so a worker
//! restarted with the same node name does not inherit the dead one's
//! claims: they are restored as the dead one's.
//!
//! Two rules keep a live consumer from being judged dead:
//!
//! - a consumer claims only while its own lease is fresh (renewed within
//!   half a [`LEASE`]); otherwise it renews first;
//! - a consumer judges others only after its own renewals have succeeded
//!   for a whole [`LEASE`]: after a Redis outage (or at its start) every
//!   live consumer has had time to renew before anyone is judged.
//!
//! kombu's `unacked`/`unacked_index` are untouched by this: Python workers
//! keep restoring by the visibility timeout, and celeriac keeps renewing
//! the `unacked_index` scores of the messages it runs.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a consumer's liveness lease lasts without renewal. A killed
/// worker's messages run again about this long after its death (plus one
/// restore pass, at most [`RENEW_EVERY`]).
pub(crate) const LEASE: Duration = Duration::from_secs(10);

/// How often a consumer renews its lease (five chances per lease).
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(2);

/// One consumer's liveness state.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// The consumer id: the first part of every claim token.
    id: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last successful renewal was sent.
    renewed: Option<Instant>,
    /// Since when renewals have succeeded without a failure.
    healthy_since: Option<Instant>,
    /// The renewal task, once started.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Liveness {
    pub(crate) fn new() -> Self {
        Liveness {
            id: uuid::Uuid::new_v4().simple().to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// The consumer id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The key of the lease, without the key prefix.
    pub(crate) fn key(&self) -> String {
        format!("celeriac.alive.{}", self.id)
    }

    /// Whether the lease was renewed recently enough to claim under it: it
    /// has at least half a [`LEASE`] left.
    pub(crate) fn fresh(&self) -> bool {
        self.state
            .lock()
            .renewed
            .is_some_and(|t| t.elapsed() < LEASE / 2)
    }

    /// Whether this consumer may judge others dead: its own renewals have
    /// succeeded for a whole [`LEASE`].
    pub(crate) fn may_judge(&self) -> bool {
        self.state
            .lock()
            .healthy_since
            .is_some_and(|t| t.elapsed() >= LEASE)
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        let mut s = self.state.lock();
        s.renewed = Some(sent);
        s.healthy_since.get_or_insert(sent);
    }

    /// A renewal failed. Returns whether renewals were succeeding until
    /// now (so that an outage is logged once).
    pub(crate) fn failed(&self) -> bool {
        self.state.lock().healthy_since.take().is_some()
    }

    /// Starts the renewal task with `spawn` unless it runs already (it
    /// stops with the runtime it was spawned on: a handle used from a new
    /// runtime starts another).
    pub(crate) fn ensure_task(&self, spawn: impl FnOnce() -> tokio::task::JoinHandle<()>) {
        let mut s = self.state.lock();
        if s.task.as_ref().is_none_or(|t| t.is_finished()) {
            s.task = Some(spawn());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_judges_others_only_after_a_whole_lease_of_good_renewals() {
        let l = Liveness::new();
        assert!(!l.fresh() && !l.may_judge(), "nothing renewed yet");
        let now = Instant::now();
        l.renewed(now);
        assert!(l.fresh());
        assert!(!l.may_judge(), "just started");
        l.renewed(now - LEASE);
        assert!(!l.fresh(), "the last renewal is a lease old");
        // healthy since the first renewal, which is recent
        assert!(!l.may_judge());
        let l = Liveness::new();
        l.renewed(now - LEASE - Duration::from_secs(1));
        l.renewed(now);
        assert!(l.fresh() && l.may_judge());
        assert!(l.failed(), "an outage starts");
        assert!(!l.failed(), "and is reported once");
        assert!(!l.may_judge(), "after a failure, a whole lease again");
        l.renewed(now);
        assert!(!l.may_judge());
    }

    #[test]
    fn ids_differ_per_handle_and_name_the_lease_key() {
        let (a, b) = (Liveness::new(), Liveness::new());
        assert_ne!(a.id(), b.id());
        assert!(!a.id().contains(':') && !a.id().contains('#'));
        assert_eq!(a.key(), format!("celeriac.alive.{}", a.id()));
    }

    #[tokio::test]
    async fn one_renewal_task_per_runtime() {
        let l = Liveness::new();
        let spawns = std::sync::atomic::AtomicUsize::new(0);
        let spawn = || {
            spawns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(std::future::pending())
        };
        l.ensure_task(spawn);
        l.ensure_task(spawn);
        assert_eq!(spawns.load(std::sync::atomic::Ordering::SeqCst), 1);
        l.state.lock().task.as_ref().unwrap().abort();
        tokio::task::yield_now().await;
        l.ensure_task(spawn);
        assert_eq!(
            spawns.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a stopped task is replaced"
        );
    }
}
