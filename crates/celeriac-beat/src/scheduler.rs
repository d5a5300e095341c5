//! The scheduler loop: hold (or wait for) the group's lease, and while
//! leader, publish each due slot through the fenced publish.
//!
//! Every beat of a group runs this loop. A standby asks for the lease
//! every [`standby_poll`] (an eighth of the TTL, at most 0.5 s), so it
//! takes over at most that long after the leader's lease lapses. The
//! leader renews at a third of the TTL. Its last-run state is read from the
//! store when it becomes leader and kept up to date from the fenced
//! publish's answers; only the token holder can change it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::broker::{BeatRun, BeatStore, Fenced};
use celeriac_core::escape::Escaped;
use celeriac_core::{Broker, Outgoing};
use tokio::sync::watch;

use crate::catch_up::{self, CatchUp};
use crate::message::{now_ms, outgoing};
use crate::schedule::Schedule;

/// How late a slot may be published and still count as on time (for
/// [`CatchUp::None`]).
pub const ON_TIME: Duration = Duration::from_secs(1);

/// The most runs one fenced publish carries (a long backlog under
/// [`CatchUp::All`] goes out in several).
const MAX_BATCH: usize = 500;

/// How long to wait after the broker failed before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// What a running beat shows its handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The fencing token held, 0 while standing by.
    pub(crate) token: AtomicU64,
    /// Messages published by this beat.
    pub(crate) published: AtomicU64,
}

/// The settings of one beat.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) group: String,
    pub(crate) lock_ttl: Duration,
    pub(crate) catch_up: CatchUp,
    pub(crate) schedule: Schedule,
}

/// How often a standby asks for the lease.
pub(crate) fn standby_poll(ttl: Duration) -> Duration {
    (ttl / 8).clamp(Duration::from_millis(20), Duration::from_millis(500))
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    cfg: Config,
    store: Arc<dyn BeatStore>,
    /// On AMQP: where messages go, after the store recorded their runs.
    relay: Option<Arc<dyn Broker>>,
    shared: Arc<Shared>,
    /// The token held, and when the lease was last taken or renewed.
    lease: Option<(u64, Instant)>,
    /// When the lease was last asked for.
    asked: Option<Instant>,
    /// Each entry's last run, known while leader.
    last: Option<HashMap<String, i64>>,
    /// No broker calls before this (after a failure).
    quiet_until: Option<Instant>,
    said_standby: bool,
}

impl Scheduler {
    pub(crate) fn new(
        cfg: Config,
        store: Arc<dyn BeatStore>,
        relay: Option<Arc<dyn Broker>>,
        shared: Arc<Shared>,
    ) -> Self {
        Scheduler {
            cfg,
            store,
            relay,
            shared,
            lease: None,
            asked: None,
            last: None,
            quiet_until: None,
            said_standby: false,
        }
    }

    /// Runs until `stop` turns true (or its sender is dropped), then gives
    /// the lease up.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(
            group = %Escaped(&self.cfg.group),
            entries = self.cfg.schedule.entries().len(),
            lock_ttl = ?self.cfg.lock_ttl,
            "beat: starting"
        );
        loop {
            if *stop.borrow() {
                break;
            }
            self.tick().await;
            let wait = self.next_wait();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        if let Some((token, _)) = self.lease.take() {
            self.shared.token.store(0, Ordering::SeqCst);
            match self.store.release_lease(&self.cfg.group, token).await {
                Ok(()) => {
                    tracing::info!(group = %Escaped(&self.cfg.group), token, "beat: released the lease")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "beat: could not release the lease; it lapses after its TTL")
                }
            }
        }
    }

    fn renew_every(&self) -> Duration {
        self.cfg.lock_ttl / 3
    }

    /// One turn: the lease, then whatever is due.
    async fn tick(&mut self) {
        if self.quiet_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.quiet_until = None;
        self.hold_lease().await;
        let Some((token, _)) = self.lease else { return };
        if self.last.is_none() {
            match self.store.last_runs(&self.cfg.group).await {
                Ok(last) => self.last = Some(last),
                Err(e) => {
                    tracing::warn!(error = %e, "beat: cannot read the last runs; retrying");
                    self.quiet_until = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
        // Several rounds only while a backlog fills whole batches.
        while self.lease.is_some() && self.publish_due(token).await {}
    }

    /// Takes or renews the lease when it is time to.
    async fn hold_lease(&mut self) {
        let now = Instant::now();
        let time = match (self.lease, self.asked) {
            (Some((_, at)), _) => now >= at + self.renew_every(),
            (None, Some(asked)) => now >= asked + standby_poll(self.cfg.lock_ttl),
            (None, None) => true,
        };
        if !time {
            return;
        }
        self.asked = Some(now);
        let held = self.lease.map(|(t, _)| t);
        let group = Escaped(&self.cfg.group);
        match self
            .store
            .acquire_lease(&self.cfg.group, held, self.cfg.lock_ttl)
            .await
        {
            Ok(Some(token)) => {
                if held != Some(token) {
                    tracing::info!(%group, token, "beat: leader of group {group} (fencing token {token})");
                    self.last = None;
                    self.said_standby = false;
                }
                self.lease = Some((token, now));
            }
            Ok(None) => {
                if held.is_some() {
                    tracing::warn!(%group, "beat: lost the lease of group {group} to another beat; standing by");
                } else if !self.said_standby {
                    tracing::info!(%group, "beat: standing by; another beat leads group {group}");
                }
                self.said_standby = true;
                self.lease = None;
                self.last = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "beat: cannot reach the broker for the lease");
                // Past its TTL the lease may be someone else's: stop
                // counting on it (the fenced publish would refuse anyway).
                if self
                    .lease
                    .is_some_and(|(_, at)| now >= at + self.cfg.lock_ttl)
                {
                    self.lease = None;
                    self.last = None;
                }
            }
        }
        let token = self.lease.map_or(0, |(t, _)| t);
        self.shared.token.store(token, Ordering::SeqCst);
    }

    /// Publishes what is due now through one fenced publish. Returns
    /// whether to go again at once (a full batch of a backlog).
    async fn publish_due(&mut self, token: u64) -> bool {
        let Some(last) = &self.last else { return false };
        let now = now_ms();
        let on_time = ON_TIME.as_millis() as i64;
        let mut runs: Vec<BeatRun> = Vec::new();
        let mut full = false;
        for entry in self.cfg.schedule.entries() {
            if runs.len() >= MAX_BATCH {
                full = true;
                break;
            }
            let policy = entry.catch_up_policy().unwrap_or(self.cfg.catch_up);
            let room = MAX_BATCH - runs.len();
            let due = catch_up::due(
                entry.timing(),
                last.get(entry.name()).copied(),
                now,
                policy,
                on_time,
                room,
            );
            full |= due.publish.len() == room;
            for slot in due.publish {
                let message = match outgoing(entry, slot) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        // Recorded without a message, so it is not tried
                        // forever; the log says which run was lost.
                        tracing::error!(error = %e, slot, "beat: skipping a run whose message cannot be built");
                        None
                    }
                };
                runs.push(BeatRun {
                    entry: entry.name().to_string(),
                    slot_ms: slot,
                    message,
                });
            }
            if let Some(slot) = due.record {
                runs.push(BeatRun {
                    entry: entry.name().to_string(),
                    slot_ms: slot,
                    message: None,
                });
            }
        }
        if runs.is_empty() {
            return false;
        }
        let shown: Vec<(String, i64, Option<Outgoing>)> = runs
            .iter()
            .map(|r| (r.entry.clone(), r.slot_ms, r.message.clone()))
            .collect();
        let result = match &self.relay {
            None => {
                self.store
                    .publish_fenced(&self.cfg.group, token, runs)
                    .await
            }
            Some(_) => {
                let records = runs
                    .into_iter()
                    .map(|r| BeatRun { message: None, ..r })
                    .collect();
                self.store
                    .publish_fenced(&self.cfg.group, token, records)
                    .await
            }
        };
        match result {
            Ok(Fenced::Refused) => {
                tracing::warn!(group = %Escaped(&self.cfg.group), token, "beat: the lease was lost before publishing; nothing was sent");
                self.lease = None;
                self.last = None;
                self.shared.token.store(0, Ordering::SeqCst);
                false
            }
            Ok(Fenced::Applied(applied)) => {
                self.applied(shown, applied).await;
                full
            }
            Err(e) => {
                // The publish may or may not have happened; the store
                // knows, so read it back before the next try.
                tracing::warn!(error = %e, "beat: publishing failed; retrying");
                self.last = None;
                self.quiet_until = Some(Instant::now() + RETRY);
                false
            }
        }
    }

    /// Records what a fenced publish applied, relays it on AMQP, and logs
    /// each sent task as Python's beat does.
    async fn applied(&mut self, runs: Vec<(String, i64, Option<Outgoing>)>, applied: Vec<bool>) {
        let mut stale = false;
        let mut relay = Vec::new();
        for ((entry, slot, message), done) in runs.into_iter().zip(applied) {
            if !done {
                // Another leader recorded this slot or a later one.
                stale = true;
                continue;
            }
            if let Some(last) = &mut self.last {
                last.insert(entry.clone(), slot);
            }
            let Some(message) = message else { continue };
            let task = self
                .cfg
                .schedule
                .entries()
                .iter()
                .find(|e| e.name() == entry)
                .map(|e| e.call().name().to_string())
                .unwrap_or_default();
            tracing::info!(
                entry = %Escaped(&entry),
                task_id = %Escaped(&message.task_id),
                slot,
                "Scheduler: Sending due task {} ({})",
                Escaped(&entry),
                Escaped(&task)
            );
            self.shared.published.fetch_add(1, Ordering::SeqCst);
            relay.push(message);
        }
        if stale {
            self.last = None;
        }
        if let Some(broker) = &self.relay
            && !relay.is_empty()
            && let Err(e) = broker.publish_batch(relay).await
        {
            // The runs are recorded: sending them again could double them
            // if this publish did go through. They are lost instead, and
            // said so.
            tracing::error!(error = %e, "beat: runs recorded in the result store could not be published to the broker; they are lost");
        }
    }

    /// How long to sleep: until the next slot, lease renewal or standby
    /// poll, whichever is first.
    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        if let Some(t) = self.quiet_until {
            return t.saturating_duration_since(now);
        }
        let mut wait = match (self.lease, self.asked) {
            (Some((_, at)), _) => (at + self.renew_every()).saturating_duration_since(now),
            (None, Some(asked)) => {
                (asked + standby_poll(self.cfg.lock_ttl)).saturating_duration_since(now)
            }
            (None, None) => Duration::ZERO,
        };
        if let (Some(_), Some(last)) = (self.lease, &self.last) {
            let now_ms = now_ms();
            for e in self.cfg.schedule.entries() {
                let from = last.get(e.name()).copied().unwrap_or(now_ms);
                if let Some(next) = e.timing().next_after(from) {
                    let until = Duration::from_millis((next - now_ms).max(0) as u64);
                    wait = wait.min(until);
                }
            }
        }
        wait
    }
}
