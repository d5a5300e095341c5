//! Events: Celery's monitoring events, sent as Celery's prefork workers
//! send them, so that `celery events`, Flower and `celeriac events` follow
//! celeriac workers.
//!
//! - **Worker events, always**: `worker-online` as the worker starts,
//!   `worker-heartbeat` every [`WorkerBuilder::heartbeat`] (2 s), and
//!   `worker-offline` when it stops.
//! - **Task events**, when they are switched on ([`WorkerBuilder::events`],
//!   `celeriac worker -E`, or a monitor's `enable_events`):
//!   `task-received`, `task-started`, `task-succeeded`, `task-failed`,
//!   `task-retried`, `task-revoked` and `task-rejected`.
//!
//! Task events come from the lifecycle's observer points: [`Events`] is an
//! [`Observer`]. On the hot path it only formats the event's JSON and
//! pushes it on a buffer; a chore beside the claim loop publishes the
//! buffer as `task.multi` lists, in batches, off the hot path, and sends
//! the heartbeats. Events are for monitoring, as in Celery: those the
//! broker refuses are logged and dropped, never retried at the tasks'
//! expense.
//!
//! [`WorkerBuilder::heartbeat`]: crate::WorkerBuilder::heartbeat
//! [`WorkerBuilder::events`]: crate::WorkerBuilder::events

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use celeriac_core::broker::EventMessage;
use celeriac_core::events::{self, EventBuilder, TASK_MULTI};
use celeriac_core::message::{args_repr, kwargs_repr, value_repr};
use celeriac_core::time::unix_now;
use celeriac_core::{Delivery, Message, TaskError, TaskErrorKind};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::observe::{Observer, RevokedBy, TaskEvent};
use crate::worker::Inner;

/// How long the publisher waits after the first buffered task event, so
/// that one message carries the events of many tasks.
const LINGER: Duration = Duration::from_millis(20);

/// The most task events in one `task.multi` message.
const BATCH: usize = 200;

/// The most task events waiting to be published; more are dropped (and
/// counted in the log) while the broker is slow or away.
const MAX_PENDING: usize = 20_000;

/// How long the last events wait for the broker at shutdown.
const OFFLINE_WAIT: Duration = Duration::from_secs(2);

/// The signal Celery reports for a terminated task (`SIGTERM`).
const SIGTERM: u64 = 15;

/// The worker's event state: the task-events switch, the Lamport clock,
/// the `processed` counter and the buffer of task events.
#[derive(Debug)]
pub(crate) struct Events {
    hostname: String,
    pid: u32,
    /// Task events on or off; shared with whoever switches them (remote
    /// control's `enable_events`).
    enabled: Arc<AtomicBool>,
    /// Hours west of UTC, as f64 bits; refreshed at each heartbeat.
    utcoffset: AtomicU64,
    clock: AtomicU64,
    /// Tasks started (Celery's `processed`).
    processed: AtomicU64,
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    events: Vec<String>,
    dropped: u64,
}

impl Events {
    pub(crate) fn new(hostname: &str, enabled: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Events {
            hostname: hostname.to_string(),
            pid: std::process::id(),
            enabled,
            utcoffset: AtomicU64::new(events::utcoffset().to_bits()),
            clock: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        })
    }

    fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// An event from this worker, its clock moved forward.
    fn event(&self) -> EventBuilder {
        let clock = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let utcoffset = f64::from_bits(self.utcoffset.load(Ordering::Relaxed));
        EventBuilder::new(&self.hostname, utcoffset, self.pid, clock)
    }

    /// A task event for task `id`.
    fn task(&self, id: &str) -> EventBuilder {
        self.event().str("uuid", id)
    }

    /// Buffers a finished task event for the publisher.
    fn push(&self, kind: &str, ev: EventBuilder) {
        let json = ev.finish(unix_now(), kind);
        let mut p = self.pending.lock();
        if p.events.len() >= MAX_PENDING {
            p.dropped += 1;
            return;
        }
        p.events.push(json);
        if p.events.len() == 1 {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> (Vec<String>, u64) {
        let mut p = self.pending.lock();
        (
            std::mem::take(&mut p.events),
            std::mem::take(&mut p.dropped),
        )
    }

    fn failed_or_revoked(&self, id: &str, error: &TaskError) {
        if error.kind() == TaskErrorKind::Revoked {
            // Terminated where it ran (revoke with terminate).
            let ev = self
                .task(id)
                .bool("terminated", true)
                .u64("signum", SIGTERM)
                .bool("expired", false);
            self.push("task-revoked", ev);
        } else {
            let ev = self
                .task(id)
                .str("exception", &events::exception_repr(error))
                .str("traceback", &traceback(error));
            self.push("task-failed", ev);
        }
    }
}

/// The traceback text of an error, as Celery's events carry it.
fn traceback(error: &TaskError) -> String {
    error
        .traceback()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{error}\n"))
}

impl Observer for Events {
    fn received(&self, task: &TaskEvent<'_>) {
        if !self.on() {
            return;
        }
        let m = task.message;
        let h = &m.headers;
        let args = match &h.argsrepr {
            Some(r) => Cow::Borrowed(r.as_str()),
            None => Cow::Owned(args_repr(&m.args)),
        };
        let kwargs = match &h.kwargsrepr {
            Some(r) => Cow::Borrowed(r.as_str()),
            None => Cow::Owned(kwargs_repr(&m.kwargs)),
        };
        let ev = self
            .task(m.id())
            .str("name", m.task())
            .str("args", &args)
            .str("kwargs", &kwargs)
            .opt_str("root_id", h.root_id.as_deref())
            .opt_str("parent_id", h.parent_id.as_deref())
            .u64("retries", u64::from(h.retries))
            .opt_str("eta", h.eta.as_deref())
            .opt_str("expires", h.expires.as_deref());
        self.push("task-received", ev);
    }

    fn started(&self, task: &TaskEvent<'_>) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if self.on() {
            self.push("task-started", self.task(task.message.id()));
        }
    }

    fn succeeded(&self, task: &TaskEvent<'_>, result: &Value, runtime: Duration) {
        if self.on() {
            let ev = self
                .task(task.message.id())
                .str("result", &value_repr(result))
                .f64("runtime", runtime.as_secs_f64());
            self.push("task-succeeded", ev);
        }
    }

    fn failed(&self, task: &TaskEvent<'_>, error: &TaskError, _runtime: Option<Duration>) {
        if self.on() {
            self.failed_or_revoked(task.message.id(), error);
        }
    }

    fn retried(&self, task: &TaskEvent<'_>, error: &TaskError, _countdown: f64) {
        if self.on() {
            let ev = self
                .task(task.message.id())
                .str("exception", &events::exception_repr(error))
                .str("traceback", &traceback(error));
            self.push("task-retried", ev);
        }
    }

    fn revoked(&self, task: &TaskEvent<'_>, by: RevokedBy) {
        if self.on() {
            let ev = self
                .task(task.message.id())
                .bool("terminated", false)
                .opt_u64("signum", None)
                .bool("expired", by == RevokedBy::Expiry);
            self.push("task-revoked", ev);
        }
    }

    fn rejected(&self, _delivery: &Delivery, task: Option<&Message>, _reason: &str) {
        if let Some(m) = task.filter(|_| self.on()) {
            self.push("task-rejected", self.task(m.id()).bool("requeue", false));
        }
    }

    fn requeued(&self, delivery: &Delivery, not_before: Option<f64>) {
        // A message given back to run again now (a lost process with
        // reject_on_worker_lost, or a reservation at shutdown); eta and
        // rate-limit deferrals are not rejections.
        if not_before.is_some() || !self.on() {
            return;
        }
        if let Ok(m) = Message::decode(&delivery.payload) {
            self.push("task-rejected", self.task(m.id()).bool("requeue", true));
        }
    }
}

/// The worker's events chore: `worker-online`, then a heartbeat every
/// `heartbeat` interval, and the task events published as they come.
pub(crate) async fn run(inner: Arc<Inner>) {
    let every = inner.config.heartbeat.max(Duration::from_millis(10));
    send_worker_event(&inner, "worker-online").await;
    let mut beat = Instant::now() + every;
    let mut failing = false;
    loop {
        tokio::select! {
            () = inner.events.wake.notified() => {
                tokio::time::sleep(LINGER).await;
                failing = flush(&inner, failing).await;
            }
            () = beat_at(beat, &inner.control.heartbeat_wanted) => {
                failing = flush(&inner, failing).await;
                inner.events.utcoffset.store(events::utcoffset().to_bits(), Ordering::Relaxed);
                send_worker_event(&inner, "worker-heartbeat").await;
                beat = Instant::now() + every;
            }
        }
    }
}

/// Until the heartbeat is due at `at`, or asked for now (remote control's
/// `heartbeat`, which monitors broadcast as they start).
async fn beat_at(at: Instant, now: &Notify) {
    tokio::select! {
        () = tokio::time::sleep_until(at) => {}
        () = now.notified() => {}
    }
}

/// At shutdown: the last task events, then `worker-offline`.
pub(crate) async fn offline(inner: &Inner) {
    let last = async {
        flush(inner, false).await;
        send_worker_event(inner, "worker-offline").await;
    };
    if tokio::time::timeout(OFFLINE_WAIT, last).await.is_err() {
        tracing::warn!("the broker did not take the last events in time; worker-offline not sent");
    }
}

/// Publishes the buffered task events; returns whether publishing failed
/// (so that a broker that stays away is logged once, not at every flush).
async fn flush(inner: &Inner, failing: bool) -> bool {
    let ev = &inner.events;
    let (pending, dropped) = ev.take();
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "task events dropped: more were waiting than the broker took"
        );
    }
    if pending.is_empty() {
        return failing;
    }
    let messages: Vec<EventMessage> = pending
        .chunks(BATCH)
        .map(|chunk| EventMessage {
            routing_key: TASK_MULTI.to_string(),
            hostname: ev.hostname.clone(),
            body: events::list(chunk),
        })
        .collect();
    match inner.broker.send_events(&messages).await {
        Ok(()) => {
            if failing {
                tracing::info!("task events are published again");
            }
            false
        }
        Err(e) => {
            if !failing {
                tracing::warn!(error = %e, lost = pending.len(), "could not publish task events; dropping them");
            }
            true
        }
    }
}

/// Sends `worker-online`, `worker-heartbeat` or `worker-offline`, with the
/// fields Celery's heartbeat carries.
async fn send_worker_event(inner: &Inner, kind: &str) {
    let ev = &inner.events;
    let json = ev
        .event()
        .f64("freq", inner.config.heartbeat.as_secs_f64())
        .u64("active", inner.slots.executing() as u64)
        .u64("processed", ev.processed.load(Ordering::Relaxed))
        .f64s("loadavg", &loadavg())
        .str("sw_ident", SW_IDENT)
        .str("sw_ver", env!("CARGO_PKG_VERSION"))
        .str("sw_sys", sw_sys())
        .finish(unix_now(), kind);
    let message = EventMessage {
        routing_key: events::routing_key(kind),
        hostname: ev.hostname.clone(),
        body: json.into_bytes(),
    };
    if let Err(e) = inner.broker.send_events(&[message]).await {
        tracing::debug!(error = %e, event = kind, "could not send a worker event");
    }
}

/// What a celeriac worker calls itself in `sw_ident` (Celery: `py-celery`).
const SW_IDENT: &str = "celeriac";

/// The system's name as Python's `platform.system()` gives it.
fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// The 1, 5 and 15 minute load averages, rounded up to hundredths as
/// Celery rounds them (zeros where the system does not tell).
fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
            if let Ok(v) = field.parse::<f64>() {
                *slot = (v * 100.0).ceil() / 100.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_and_system_are_what_celery_reports() {
        let l = loadavg();
        assert!(
            l.iter()
                .all(|v| *v >= 0.0 && ((v * 100.0).round() - v * 100.0).abs() < 1e-6),
            "{l:?}"
        );
        if cfg!(target_os = "linux") {
            assert_eq!(sw_sys(), "Linux");
        }
    }

    #[tokio::test]
    async fn a_heartbeat_can_be_asked_for_now() {
        let asked = Arc::new(Notify::new());
        let far = Instant::now() + Duration::from_secs(3600);
        // As remote control asks, while the chore is busy elsewhere (not
        // waiting yet): the request is kept, not lost.
        asked.notify_one();
        let waiting = tokio::spawn({
            let asked = asked.clone();
            async move { beat_at(far, &asked).await }
        });
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the heartbeat is due at once")
            .unwrap();
        // And while it waits.
        let waiting = tokio::spawn({
            let asked = asked.clone();
            async move { beat_at(far, &asked).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        asked.notify_one();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the heartbeat is due at once")
            .unwrap();
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let ev = Events::new("w@h", Arc::new(AtomicBool::new(true)));
        for i in 0..MAX_PENDING + 3 {
            ev.push("task-started", ev.task(&i.to_string()));
        }
        let (taken, dropped) = ev.take();
        assert_eq!((taken.len(), dropped), (MAX_PENDING, 3));
        assert!(ev.take().0.is_empty());
        let first = &events::decode(taken[0].as_bytes()).unwrap()[0];
        assert_eq!(first["clock"], 1);
        assert_eq!(first["uuid"], "0");
        assert_eq!(first["hostname"], "w@h");
    }
}
