//! What the dashboard gathers in the background: every event into the
//! shared [`Monitor`], a chart sample each second (tasks per second,
//! successes, failures, runtime percentiles) pushed to the live streams,
//! and each worker's pool and queues from `stats` and `active_queues`
//! replies every few seconds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use celeriac_core::ControlRequest;
use celeriac_core::monitor::{self, Monitor, STATES};
use celeriac_core::time::unix_now;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::server::Hub;

/// Chart samples kept (one a second: ten minutes).
const SAMPLES: usize = 600;

/// Runtime percentiles are over the tasks finished in this many seconds.
const RUNTIME_WINDOW: f64 = 10.0;

/// How often `stats` and `active_queues` are asked.
const POLL_EVERY: Duration = Duration::from_secs(3);

/// How long a poll waits for the next reply.
const POLL_WAIT: Duration = Duration::from_millis(800);

/// How often `enable_events` is broadcast to every worker (Flower's
/// habit); a worker is also asked when it first answers a poll.
const ENABLE_EVERY: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One second of the charts.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    /// Unix time at the end of the second.
    pub(crate) t: f64,
    /// Tasks finished (succeeded or failed) in it.
    pub(crate) finished: u64,
    /// Tasks succeeded in it.
    pub(crate) succeeded: u64,
    /// Tasks failed in it.
    pub(crate) failed: u64,
    /// Runtime percentiles in seconds over the last ten seconds, `None`
    /// without finished tasks.
    pub(crate) p50: Option<f64>,
    /// 95th percentile.
    pub(crate) p95: Option<f64>,
    /// 99th percentile.
    pub(crate) p99: Option<f64>,
}

/// What a worker said about itself in remote-control replies.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct NodeInfo {
    /// The pool implementation (`celery.concurrency.prefork:TaskPool`).
    pub(crate) pool: String,
    /// Its `max-concurrency`.
    pub(crate) concurrency: Option<u64>,
    /// The queues it consumes.
    pub(crate) queues: Vec<String>,
    /// Unix time of its latest reply.
    pub(crate) replied: f64,
}

/// Counts since the last sample.
#[derive(Debug, Default)]
struct Tick {
    succeeded: u64,
    failed: u64,
    /// (local time, runtime) of recent finished tasks.
    runtimes: VecDeque<(f64, f64)>,
}

/// Everything gathered, behind locks held only briefly.
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) monitor: Mutex<Monitor>,
    pub(crate) nodes: Mutex<BTreeMap<String, NodeInfo>>,
    pub(crate) series: Mutex<VecDeque<Sample>>,
    /// Every queue seen consumed or holding dead letters, so that a queue
    /// stays listed when its consumers go away.
    pub(crate) queues: Mutex<std::collections::BTreeSet<String>>,
    tick: Mutex<Tick>,
    /// Wakes the poller early when a worker is seen for the first time.
    new_worker: tokio::sync::Notify,
}

impl Collected {
    pub(crate) fn new(monitor: Monitor) -> Self {
        Collected {
            monitor: Mutex::new(monitor),
            nodes: Mutex::new(BTreeMap::new()),
            series: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            queues: Mutex::new(std::collections::BTreeSet::from(["celery".to_string()])),
            tick: Mutex::new(Tick::default()),
            new_worker: tokio::sync::Notify::new(),
        }
    }

    /// Takes in the events of one message.
    fn take(&self, evs: &[celeriac_core::events::Event], now: f64) {
        let mut tick = lock(&self.tick);
        let mut m = lock(&self.monitor);
        let workers = m.workers().count();
        for ev in evs {
            m.apply(ev, now);
            match ev.get("type").and_then(Value::as_str) {
                Some("task-succeeded") => tick.succeeded += 1,
                Some("task-failed") => tick.failed += 1,
                _ => continue,
            }
            if let Some(r) = ev.get("runtime").and_then(Value::as_f64) {
                tick.runtimes.push_back((now, r));
            }
        }
        if m.workers().count() > workers {
            self.new_worker.notify_one();
        }
    }

    /// Closes the second ending at `now` into a sample.
    fn sample(&self, now: f64) -> Sample {
        let mut tick = lock(&self.tick);
        while tick
            .runtimes
            .front()
            .is_some_and(|(t, _)| *t < now - RUNTIME_WINDOW)
        {
            tick.runtimes.pop_front();
        }
        let mut rs: Vec<f64> = tick.runtimes.iter().map(|(_, r)| *r).collect();
        rs.sort_by(f64::total_cmp);
        let s = Sample {
            t: now,
            finished: tick.succeeded + tick.failed,
            succeeded: tick.succeeded,
            failed: tick.failed,
            p50: percentile(&rs, 0.50),
            p95: percentile(&rs, 0.95),
            p99: percentile(&rs, 0.99),
        };
        tick.succeeded = 0;
        tick.failed = 0;
        drop(tick);
        let mut series = lock(&self.series);
        if series.len() == SAMPLES {
            series.pop_front();
        }
        series.push_back(s);
        s
    }

    /// Counts per state, tasks remembered and the bound, events taken in.
    pub(crate) fn totals(&self) -> Value {
        let m = lock(&self.monitor);
        let counts: serde_json::Map<String, Value> = STATES
            .iter()
            .map(|s| ((*s).to_string(), json!(m.count(s))))
            .collect();
        json!({
            "counts": counts,
            "remembered": m.remembered(),
            "max_tasks": m.max_tasks(),
            "events": m.events(),
        })
    }
}

/// The nearest-rank percentile `q` of sorted `v`.
fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The live streams' sender: each sample with the totals, as JSON.
#[derive(Debug)]
pub(crate) struct Live {
    tx: Mutex<Option<broadcast::Sender<Arc<str>>>>,
}

impl Live {
    pub(crate) fn new() -> Self {
        Live {
            tx: Mutex::new(Some(broadcast::channel(64).0)),
        }
    }

    /// A new stream of samples; `None` once the dashboard stopped.
    pub(crate) fn subscribe(&self) -> Option<broadcast::Receiver<Arc<str>>> {
        lock(&self.tx).as_ref().map(broadcast::Sender::subscribe)
    }

    fn send(&self, data: Arc<str>) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send(data);
        }
    }

    /// Ends every stream (so that a graceful shutdown does not wait on
    /// them).
    pub(crate) fn close(&self) {
        lock(&self.tx).take();
    }
}

/// Starts the collectors; the subscription to events is in place when
/// this returns.
pub(crate) async fn start(hub: Arc<Hub>) -> Vec<JoinHandle<()>> {
    let stream = subscribe(&hub).await;
    vec![
        tokio::spawn(events(hub.clone(), stream)),
        tokio::spawn(ticks(hub.clone())),
        tokio::spawn(poll(hub)),
    ]
}

async fn subscribe(hub: &Hub) -> Option<celeriac_core::broker::EventStream> {
    match hub.broker.subscribe_events().await {
        Ok(s) => {
            // As Celery's receiver (wakeup=True): every worker heartbeats
            // now instead of at its next interval.
            if let Err(e) = hub
                .broker
                .broadcast(&ControlRequest::new("heartbeat"))
                .await
            {
                tracing::warn!(error = %e, "dashboard: could not ask the workers for a heartbeat");
            }
            Some(s)
        }
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: subscribing to events");
            None
        }
    }
}

async fn events(hub: Arc<Hub>, mut stream: Option<celeriac_core::broker::EventStream>) {
    loop {
        if let Some(s) = stream.as_mut() {
            while let Some(msg) = s.next().await {
                match msg {
                    Ok(msg) => match monitor::received(&msg.body, unix_now()) {
                        Ok(evs) => hub.collected.take(&evs, unix_now()),
                        Err(e) => tracing::warn!(
                            routing_key = %celeriac_core::escape::Escaped(&msg.routing_key),
                            error = %e,
                            "dashboard: ignoring a malformed event message"
                        ),
                    },
                    Err(e) => tracing::warn!(error = %e, "dashboard: event subscription"),
                }
            }
            tracing::warn!("dashboard: the event subscription ended; subscribing again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stream = subscribe(&hub).await;
    }
}

async fn ticks(hub: Arc<Hub>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    every.tick().await;
    loop {
        every.tick().await;
        let sample = hub.collected.sample(unix_now());
        let mut msg = hub.collected.totals();
        msg["sample"] = json!(sample);
        hub.live.send(msg.to_string().into());
    }
}

async fn poll(hub: Arc<Hub>) {
    let mut last_enable: Option<tokio::time::Instant> = None;
    loop {
        let (stats, queues) = tokio::join!(
            hub.broker
                .call(ControlRequest::new("stats"), POLL_WAIT, None),
            hub.broker
                .call(ControlRequest::new("active_queues"), POLL_WAIT, None),
        );
        let stats = stats.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dashboard: stats");
            Vec::new()
        });
        let queues = queues.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dashboard: active_queues");
            Vec::new()
        });
        // A worker that answers for the first time has its control
        // mailbox up: ask it for task events now, before it is shown.
        let new: Vec<String> = {
            let nodes = lock(&hub.collected.nodes);
            stats
                .iter()
                .flat_map(|r| r.keys())
                .filter(|n| !nodes.contains_key(*n))
                .cloned()
                .collect()
        };
        let every = last_enable.is_none_or(|t| t.elapsed() >= ENABLE_EVERY);
        if hub.enable_events && (every || !new.is_empty()) {
            let mut req = ControlRequest::new("enable_events");
            if every {
                last_enable = Some(tokio::time::Instant::now());
            } else {
                req = req.to_nodes(new);
            }
            if let Err(e) = hub.broker.broadcast(&req).await {
                tracing::warn!(error = %e, "dashboard: enable_events");
            }
        }
        record(&hub, stats, queues);
        // A new worker's pool and queues are asked at once.
        let _ = tokio::time::timeout(POLL_EVERY, hub.collected.new_worker.notified()).await;
    }
}

/// Keeps each worker's pool and queues from its replies.
fn record(
    hub: &Hub,
    stats: Vec<serde_json::Map<String, Value>>,
    queues: Vec<serde_json::Map<String, Value>>,
) {
    let now = unix_now();
    let mut nodes = lock(&hub.collected.nodes);
    for (node, reply) in stats.into_iter().flatten() {
        let n = nodes.entry(node).or_default();
        n.replied = now;
        let pool = &reply["pool"];
        n.pool = pool["implementation"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        n.concurrency = pool["max-concurrency"].as_u64();
    }
    for (node, reply) in queues.into_iter().flatten() {
        let n = nodes.entry(node).or_default();
        n.replied = now;
        n.queues = reply
            .as_array()
            .map(|qs| {
                qs.iter()
                    .filter_map(|q| q["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[0.25], 0.99), Some(0.25));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_sample_counts_one_second_and_runtimes_over_ten() {
        let c = Collected::new(Monitor::new(10));
        let ev = |kind: &str, id: &str, rt: f64| {
            json!({"type": kind, "hostname": "w", "uuid": id, "runtime": rt})
                .as_object()
                .unwrap()
                .clone()
        };
        c.take(
            &[ev("task-succeeded", "a", 0.1), ev("task-failed", "b", 0.3)],
            100.0,
        );
        let s = c.sample(100.5);
        assert_eq!((s.finished, s.succeeded, s.failed), (2, 1, 1));
        assert_eq!((s.p50, s.p99), (Some(0.1), Some(0.3)));
        let s = c.sample(101.5);
        assert_eq!(s.finished, 0, "counted once");
        assert_eq!(s.p99, Some(0.3), "runtimes stay ten seconds");
        assert_eq!(c.sample(120.0).p50, None);
        assert_eq!(lock(&c.series).len(), 3);
        assert_eq!(c.totals()["counts"]["FAILURE"], 1);
    }
}
