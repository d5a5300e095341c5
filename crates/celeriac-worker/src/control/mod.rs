//! Control: remote control of the worker, and the revoke and terminate
//! watcher.
//!
//! - **Remote control** (Celery's pidbox): [`start`] listens for the
//!   requests broadcast on the broker ([`Control`](celeriac_core::Control))
//!   and answers those addressed to this node (`panel.rs`), in Celery's
//!   reply shapes; `requests.rs` tracks the requests held (`active`,
//!   `reserved`), `info.rs` tells `stats`, `conf` and the rest.
//!   [`ControlState`] holds what the commands change while the worker
//!   runs: the queues consumed, rate and time limits, autoscale bounds,
//!   the revoked ids seen, the Lamport clock.
//! - **Mingle** (`mingle.rs`): as the worker starts, `hello` to the other
//!   workers, and the revoked ids they answer with.
//! - **The watcher** ([`watch`]): every second it asks the broker which
//!   reserved messages were revoked since their claim (they are marked, and
//!   recorded as REVOKED instead of running), and which running tasks were
//!   revoked with terminate (their executor stops them).

mod info;
mod mingle;
mod panel;
mod requests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::broker::REVOKE_TTL;
use celeriac_core::escape::Escaped;
use celeriac_core::{ControlInbox, ControlReply, ControlRequest, RateLimit};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use requests::Requests;

use crate::worker::{Inner, Worker};

/// The most revoked ids remembered (Celery's `REVOKES_MAX`).
const REVOKES_MAX: usize = 50_000;

/// How long the listener may take to subscribe before the worker starts
/// without it (it keeps trying in the background).
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// A task's soft and hard time limits, as `time_limit` sets them.
type TimeLimits = (Option<Duration>, Option<Duration>);

/// What remote control changes while the worker runs.
#[derive(Debug)]
pub(crate) struct ControlState {
    started: Instant,
    /// The Lamport clock of control messages.
    clock: AtomicU64,
    /// Requests held now (`active`, `reserved`), and started counts.
    pub(crate) requests: Requests,
    /// The queues consumed (`add_consumer`, `cancel_consumer`).
    queues: RwLock<Arc<Vec<String>>>,
    /// Rate limits set by `rate_limit` (`None`: removed), with the text
    /// they were given as.
    rate_limits: RwLock<HashMap<String, (Option<RateLimit>, String)>>,
    /// Soft and hard time limits set by `time_limit`.
    time_limits: RwLock<HashMap<String, TimeLimits>>,
    /// Autoscale bounds `(min, max)`, if the worker autoscales.
    autoscale: Mutex<Option<(usize, usize)>>,
    /// Revoked ids this worker heard of (`revoke`, `hello`), oldest first.
    revoked: Mutex<VecDeque<(String, Instant)>>,
    /// Told when a monitor asks for a heartbeat now (`heartbeat`): the
    /// events emitter sends `worker-heartbeat` at once.
    pub(crate) heartbeat_wanted: Notify,
}

impl ControlState {
    pub(crate) fn new(queues: &[String], autoscale: Option<(usize, usize)>) -> Self {
        ControlState {
            started: Instant::now(),
            clock: AtomicU64::new(0),
            requests: Requests::default(),
            queues: RwLock::new(Arc::new(queues.to_vec())),
            rate_limits: RwLock::new(HashMap::new()),
            time_limits: RwLock::new(HashMap::new()),
            autoscale: Mutex::new(autoscale),
            revoked: Mutex::new(VecDeque::new()),
            heartbeat_wanted: Notify::new(),
        }
    }

    /// The queues consumed now, in priority order.
    pub(crate) fn queues(&self) -> Arc<Vec<String>> {
        self.queues.read().clone()
    }

    /// Starts consuming `queue`; false if it was consumed already.
    fn add_queue(&self, queue: &str) -> bool {
        let mut q = self.queues.write();
        if q.iter().any(|x| x == queue) {
            return false;
        }
        let mut next = q.as_ref().clone();
        next.push(queue.to_string());
        *q = Arc::new(next);
        true
    }

    /// Stops consuming `queue`; false if it was not consumed.
    fn remove_queue(&self, queue: &str) -> bool {
        let mut q = self.queues.write();
        if !q.iter().any(|x| x == queue) {
            return false;
        }
        *q = Arc::new(q.iter().filter(|x| *x != queue).cloned().collect());
        true
    }

    /// The rate limit remote control set for task `name`: `Some(None)` when
    /// it removed the limit, `None` when it never set one.
    pub(crate) fn rate_limit(&self, name: &str) -> Option<Option<RateLimit>> {
        let map = self.rate_limits.read();
        if map.is_empty() {
            return None;
        }
        map.get(name).map(|(l, _)| *l)
    }

    fn rate_limit_text(&self, name: &str) -> Option<String> {
        match self.rate_limits.read().get(name) {
            Some((Some(_), text)) => Some(text.clone()),
            _ => None,
        }
    }

    fn set_rate_limit(&self, name: &str, limit: Option<RateLimit>, text: &str) {
        self.rate_limits
            .write()
            .insert(name.to_string(), (limit, text.to_string()));
    }

    /// The soft and hard time limits remote control set for task `name`.
    pub(crate) fn time_limits(&self, name: &str) -> Option<TimeLimits> {
        let map = self.time_limits.read();
        if map.is_empty() {
            return None;
        }
        map.get(name).copied()
    }

    fn set_time_limits(&self, name: &str, soft: Option<Duration>, hard: Option<Duration>) {
        self.time_limits
            .write()
            .insert(name.to_string(), (soft, hard));
    }

    /// The autoscale bounds `(min, max)` now.
    pub(crate) fn autoscale(&self) -> Option<(usize, usize)> {
        *self.autoscale.lock()
    }

    fn set_autoscale(&self, min: usize, max: usize) {
        *self.autoscale.lock() = Some((min, max));
    }

    fn remember_revoked(&self, ids: &[String]) {
        let mut r = self.revoked.lock();
        let now = Instant::now();
        for id in ids {
            if !r.iter().any(|(x, _)| x == id) {
                r.push_back((id.clone(), now));
            }
        }
        while r.len() > REVOKES_MAX {
            r.pop_front();
        }
    }

    /// Revoked ids remembered and not expired, oldest first.
    fn revoked_ids(&self) -> Vec<String> {
        let mut r = self.revoked.lock();
        while r.front().is_some_and(|(_, at)| at.elapsed() > REVOKE_TTL) {
            r.pop_front();
        }
        r.iter().map(|(id, _)| id.clone()).collect()
    }

    /// The clock now.
    fn clock(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Moves the clock past a received value (Lamport's rule).
    fn adjust(&self, other: u64) -> u64 {
        let mut now = self.clock.load(Ordering::SeqCst);
        loop {
            let next = now.max(other) + 1;
            match self
                .clock
                .compare_exchange(now, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => now = seen,
            }
        }
    }

    /// Ticks the clock for a message sent.
    fn forward(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Subscribes to remote control (waiting up to [`LISTEN_WAIT`], so that a
/// worker that says it is ready answers `inspect` already) and serves the
/// requests on a task of their own.
pub(crate) async fn start(worker: Worker) -> tokio::task::JoinHandle<()> {
    let inner = worker.inner().clone();
    let node = inner.config.nodename.clone();
    let first = match tokio::time::timeout(LISTEN_WAIT, inner.broker.listen(&node)).await {
        Ok(Ok(inbox)) => Some(inbox),
        Ok(Err(e @ celeriac_core::BrokerError::Unsupported(_))) => {
            // Not a fault that passes: this broker has no remote control.
            tracing::info!(error = %e, "running without remote control");
            return tokio::spawn(async {});
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "remote control unavailable for now; retrying");
            None
        }
        Err(_) => {
            tracing::warn!("remote control is slow to subscribe; retrying");
            None
        }
    };
    let served = tokio::spawn(serve(worker, first));
    if inner.config.mingle {
        mingle::sync(&inner).await;
    }
    served
}

async fn serve(worker: Worker, mut first: Option<ControlInbox>) {
    let inner = worker.inner().clone();
    let node = inner.config.nodename.clone();
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut inbox = match first.take() {
            Some(i) => i,
            None => match inner.broker.listen(&node).await {
                Ok(i) => {
                    backoff = Duration::from_secs(1);
                    i
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "remote control unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            },
        };
        while let Some(req) = inbox.recv().await {
            if req.matches(&node) {
                inner.control.adjust(req.clock);
                answer(&worker, &req).await;
            }
        }
        tracing::warn!("remote-control inbox ended; listening again");
        tokio::time::sleep(backoff).await;
    }
}

/// Carries out `req` and replies if a reply is wanted.
async fn answer(worker: &Worker, req: &ControlRequest) {
    let inner = worker.inner();
    tracing::debug!(method = %Escaped(&req.method), "remote-control command");
    let value = match panel::dispatch(worker, req).await {
        panel::Outcome::Reply(v) => v,
        panel::Outcome::Shutdown => {
            worker.shutdown();
            return;
        }
    };
    let (Some(to), Some(ticket)) = (&req.reply_to, &req.ticket) else {
        return;
    };
    let mut body = serde_json::Map::new();
    body.insert(inner.config.nodename.clone(), value);
    let reply = ControlReply {
        ticket: ticket.clone(),
        clock: inner.control.forward(),
        body,
    };
    if let Err(e) = inner.broker.reply(to, &reply).await {
        tracing::warn!(error = %e, method = %Escaped(&req.method), "could not send a remote-control reply");
    }
}

/// How often the broker is asked.
const EVERY: Duration = Duration::from_secs(1);

/// Task ids of reserved messages waiting for a slot, and whether a revoke
/// arrived for them since they were claimed.
#[derive(Debug, Default)]
pub(crate) struct Waiting(Mutex<HashMap<String, bool>>);

impl Waiting {
    /// `id` waits for a slot.
    pub(crate) fn enter(&self, id: &str) {
        self.0.lock().insert(id.to_string(), false);
    }

    /// `id` stops waiting; returns whether it was revoked meanwhile.
    pub(crate) fn leave(&self, id: &str) -> bool {
        self.0.lock().remove(id).unwrap_or(false)
    }
}

pub(crate) async fn watch(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let waiting: Vec<String> = inner.waiting.0.lock().keys().cloned().collect();
        if !waiting.is_empty() {
            match inner.broker.revoked(&waiting).await {
                Ok(revoked) => {
                    let mut waiting = inner.waiting.0.lock();
                    for id in revoked {
                        if let Some(flag) = waiting.get_mut(&id) {
                            *flag = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not check reserved messages for revokes")
                }
            }
        }
        let ids = inner.executors.running();
        if ids.is_empty() {
            continue;
        }
        let doomed = match inner.broker.terminations(&ids).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "could not check for terminations");
                continue;
            }
        };
        for id in doomed {
            inner.executors.terminate(&id);
        }
    }
}
