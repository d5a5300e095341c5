//! `memory://`: a broker and result store inside one process.

mod backend;
mod beat;
mod chord;
mod control;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{
    BrokerError, DeadLetter, DeadLetters, Delivery, NodeInfo, Nodes, Outgoing, RateLimits,
    Revocations, Transport,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

mod events;

pub use backend::MemoryBackend;

#[derive(Debug)]
struct Entry {
    queue: String,
    priority: u8,
    task_id: String,
    payload: Vec<u8>,
    deliveries: u32,
}

#[derive(Debug)]
struct Held {
    entry: Entry,
    lease_until: Instant,
}

#[derive(Debug, Default)]
struct Queue {
    // index = priority, 0 highest
    levels: [VecDeque<Entry>; 10],
    len: usize,
}

#[derive(Debug, Default)]
struct BrokerState {
    queues: HashMap<String, Queue>,
    // (eta as ordered bits, seq) -> entry
    delayed: BTreeMap<(u64, u64), Entry>,
    held: HashMap<String, Held>,
    dead: BTreeMap<u64, DeadLetter>,
    nodes: HashMap<String, NodeInfo>,
    revoked: HashMap<String, Instant>,
    terminate: HashMap<String, Instant>,
    rate: HashMap<String, f64>,
    /// Beat leases and last runs (`beat.rs`).
    beat: beat::Tables,
    seq: u64,
    closed: bool,
}

fn eta_key(eta: f64) -> u64 {
    // unix times are positive, so the IEEE bit pattern orders them.
    eta.max(0.0).to_bits()
}

impl BrokerState {
    fn push_ready(&mut self, entry: Entry, front: bool) {
        let q = self.queues.entry(entry.queue.clone()).or_default();
        let level = &mut q.levels[usize::from(entry.priority.min(9))];
        if front {
            level.push_front(entry);
        } else {
            level.push_back(entry);
        }
        q.len += 1;
    }

    fn push_outgoing(&mut self, m: Outgoing) {
        let entry = Entry {
            queue: m.queue,
            priority: m.priority,
            task_id: m.task_id,
            payload: m.payload,
            deliveries: 0,
        };
        self.push(entry, m.eta);
    }

    fn push(&mut self, entry: Entry, eta: Option<f64>) {
        match eta {
            Some(at) if at > unix_now() => {
                self.seq += 1;
                self.delayed.insert((eta_key(at), self.seq), entry);
            }
            _ => self.push_ready(entry, false),
        }
    }

    /// Moves due delayed messages and lapsed leases back to the ready lists.
    fn promote(&mut self) {
        let now = unix_now();
        while let Some(entry) = self.delayed.first_entry() {
            if f64::from_bits(entry.key().0) > now {
                break;
            }
            let e = entry.remove();
            self.push_ready(e, false);
        }
        let now = Instant::now();
        let lapsed: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.lease_until <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for tag in lapsed {
            if let Some(h) = self.held.remove(&tag) {
                tracing::warn!(queue = %celeriac_core::escape::Escaped(&h.entry.queue), "lease lapsed; message is claimable again");
                self.push_ready(h.entry, true);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let delayed = self.delayed.keys().next().map(|(bits, _)| {
            let wait = celeriac_core::time::saturating_seconds(f64::from_bits(*bits) - unix_now());
            let now = Instant::now();
            now.checked_add(wait)
                .unwrap_or(now + Duration::from_secs(86_400))
        });
        let lease = self.held.values().map(|h| h.lease_until).min();
        match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A broker inside one process (`memory://`).
///
/// Messages are kept in memory, so they do not survive the process; use
/// [`SqliteBroker`](crate::SqliteBroker) for durability.
///
/// # Examples
///
/// ```
/// use celeriac_core::{Message, Outgoing, Transport};
/// use celeriac_embedded::MemoryBroker;
/// use std::time::Duration;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let broker = MemoryBroker::new();
/// let msg = Message::new("celeriac.add", vec![2.into(), 3.into()], Default::default());
/// broker.publish(Outgoing::from_message(&msg).unwrap()).await.unwrap();
/// let got = broker.claim("w1", &["celery".into()], 1, Duration::from_secs(1)).await.unwrap();
/// assert_eq!(Message::decode(&got[0].payload).unwrap().id(), msg.id());
/// broker.ack(&got[0]).await.unwrap();
/// assert_eq!(broker.queue_len("celery").await.unwrap(), 0);
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryBroker {
    name: String,
    lease: Duration,
    state: Mutex<BrokerState>,
    notify: Notify,
    control: control::Mailboxes,
    events: events::Bus,
}

fn named<T, F: FnOnce() -> Arc<T>>(
    registry: &'static OnceLock<Mutex<HashMap<String, Weak<T>>>>,
    name: &str,
    make: F,
) -> Arc<T> {
    let mut map = registry.get_or_init(Default::default).lock();
    if let Some(existing) = map.get(name).and_then(Weak::upgrade) {
        return existing;
    }
    let fresh = make();
    // Forget the names whose instances are gone, so that opening many
    // names over time does not grow the map for good.
    map.retain(|_, instance| instance.strong_count() > 0);
    map.insert(name.to_string(), Arc::downgrade(&fresh));
    fresh
}

fn memory_name(url: &str) -> Result<Option<String>, String> {
    let rest = url
        .strip_prefix("memory://")
        .ok_or_else(|| "expected memory:// or memory://NAME".to_string())?;
    let rest = rest.trim_end_matches('/');
    Ok((!rest.is_empty()).then(|| rest.to_string()))
}

impl MemoryBroker {
    /// A private instance.
    pub fn new() -> Self {
        Self::with_lease("", crate::DEFAULT_LEASE)
    }

    /// A private instance with a given lease.
    pub fn with_lease(name: &str, lease: Duration) -> Self {
        MemoryBroker {
            name: name.to_string(),
            lease,
            state: Mutex::new(BrokerState::default()),
            notify: Notify::new(),
            control: control::Mailboxes::default(),
            events: events::Bus::default(),
        }
    }

    /// Opens `memory://` (a private instance) or `memory://NAME` (the
    /// process-wide instance of that name, created on first use).
    pub fn open(url: &str) -> Result<Arc<Self>, BrokerError> {
        static NAMED: OnceLock<Mutex<HashMap<String, Weak<MemoryBroker>>>> = OnceLock::new();
        match memory_name(url).map_err(|reason| BrokerError::InvalidUrl {
            url: url.to_string(),
            reason,
        })? {
            None => Ok(Arc::new(Self::new())),
            Some(name) => Ok(named(&NAMED, &name, || {
                Arc::new(Self::with_lease(&name, crate::DEFAULT_LEASE))
            })),
        }
    }

    /// Closes the broker: waiting claims return at once and later calls
    /// fail with [`BrokerError::Closed`].
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_waiters();
    }

    fn try_claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<Instant>), BrokerError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(BrokerError::Closed);
        }
        st.promote();
        let mut out = Vec::new();
        for qname in queues {
            while out.len() < max {
                let Some(q) = st.queues.get_mut(qname) else {
                    break;
                };
                let Some(mut entry) = q.levels.iter_mut().find_map(VecDeque::pop_front) else {
                    break;
                };
                q.len -= 1;
                entry.deliveries += 1;
                st.seq += 1;
                let tag = format!("{}:{}", st.seq, consumer);
                let revoked = st
                    .revoked
                    .get(&entry.task_id)
                    .is_some_and(|until| *until > Instant::now());
                out.push(Delivery {
                    tag: tag.clone(),
                    queue: entry.queue.clone(),
                    payload: entry.payload.clone(),
                    deliveries: entry.deliveries,
                    redelivered: entry.deliveries > 1,
                    revoked,
                });
                st.held.insert(
                    tag,
                    Held {
                        entry,
                        lease_until: Instant::now() + self.lease,
                    },
                );
            }
        }
        let wake = st.next_wakeup();
        Ok((out, wake))
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Transport for MemoryBroker {
    fn url(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError> {
        self.publish_batch(vec![msg]).await
    }

    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        {
            let mut st = self.state.lock();
            if st.closed {
                return Err(BrokerError::Closed);
            }
            for m in msgs {
                st.push_outgoing(m);
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, wake) = self.try_claim(consumer, queues, max.max(1))?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            let until = wake.map_or(deadline, |w| w.min(deadline));
            let _ = tokio::time::timeout(until.saturating_duration_since(now), notified).await;
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        match self.state.lock().held.remove(&delivery.tag) {
            Some(_) => Ok(()),
            None => Err(BrokerError::NotHeld(delivery.tag.clone())),
        }
    }

    async fn renew(&self, deliveries: &[Delivery]) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        let until = Instant::now() + self.lease;
        for d in deliveries {
            if let Some(h) = st.held.get_mut(&d.tag) {
                h.lease_until = until;
            }
        }
        Ok(())
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError> {
        {
            let mut st = self.state.lock();
            let held = st
                .held
                .remove(&delivery.tag)
                .ok_or_else(|| BrokerError::NotHeld(delivery.tag.clone()))?;
            st.push(held.entry, not_before);
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        let st = self.state.lock();
        let ready = st.queues.get(queue).map_or(0, |q| q.len);
        let delayed = st.delayed.values().filter(|e| e.queue == queue).count();
        Ok(ready + delayed)
    }

    async fn queue_len_by_priority(&self, queue: &str) -> Result<Vec<(u8, usize)>, BrokerError> {
        let st = self.state.lock();
        let mut levels = [0usize; 10];
        if let Some(q) = st.queues.get(queue) {
            for (n, level) in levels.iter_mut().zip(&q.levels) {
                *n = level.len();
            }
        }
        for e in st.delayed.values().filter(|e| e.queue == queue) {
            levels[usize::from(e.priority.min(9))] += 1;
        }
        Ok((0u8..).zip(levels).filter(|(_, n)| *n > 0).collect())
    }
}

#[async_trait]
impl DeadLetters for MemoryBroker {
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        let held = st
            .held
            .remove(&delivery.tag)
            .ok_or_else(|| BrokerError::NotHeld(delivery.tag.clone()))?;
        st.seq += 1;
        let id = st.seq;
        st.dead.insert(
            id,
            DeadLetter {
                id: id.to_string(),
                queue: held.entry.queue,
                reason: reason.to_string(),
                failed_at: unix_now(),
                payload: held.entry.payload,
            },
        );
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        Ok(self
            .state
            .lock()
            .dead
            .values()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError> {
        let Ok(key) = id.parse::<u64>() else {
            return Ok(false);
        };
        let found = {
            let mut st = self.state.lock();
            match st.dead.remove(&key) {
                Some(d) => {
                    st.push(
                        Entry {
                            queue: d.queue,
                            priority: 0,
                            task_id: task_id_of(&d.payload),
                            payload: d.payload,
                            deliveries: 0,
                        },
                        None,
                    );
                    true
                }
                None => false,
            }
        };
        self.notify.notify_waiters();
        Ok(found)
    }
}

#[async_trait]
impl Revocations for MemoryBroker {
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        let now = Instant::now();
        st.revoked.retain(|_, until| *until > now);
        for id in task_ids {
            st.revoked.insert(id.clone(), now + ttl);
        }
        Ok(())
    }

    async fn revoke_terminate(
        &self,
        task_ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.revoke(task_ids, ttl).await?;
        let mut st = self.state.lock();
        let now = Instant::now();
        st.terminate.retain(|_, until| *until > now);
        for id in task_ids {
            st.terminate.insert(id.clone(), now + ttl);
        }
        Ok(())
    }

    async fn terminations(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        Ok(live_ids(&self.state.lock().terminate, task_ids))
    }

    async fn revoked(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        Ok(live_ids(&self.state.lock().revoked, task_ids))
    }
}

#[async_trait]
impl RateLimits for MemoryBroker {
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError> {
        let mut st = self.state.lock();
        let now = unix_now();
        match celeriac_core::rate::gcra(st.rate.get(key).copied(), now, interval) {
            Ok(tat) => {
                st.rate.insert(key.to_string(), tat);
                Ok(0.0)
            }
            Err(wait) => Ok(wait),
        }
    }
}

#[async_trait]
impl Nodes for MemoryBroker {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        self.state
            .lock()
            .nodes
            .insert(node.name.clone(), node.clone());
        Ok(())
    }

    async fn node_gone(&self, name: &str) -> Result<(), BrokerError> {
        self.state.lock().nodes.remove(name);
        Ok(())
    }

    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError> {
        let cutoff = unix_now() - max_age.as_secs_f64();
        let mut out: Vec<NodeInfo> = self
            .state
            .lock()
            .nodes
            .values()
            .filter(|n| n.last_seen >= cutoff)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The task id of an envelope, or empty.
pub(crate) fn task_id_of(payload: &[u8]) -> String {
    celeriac_core::Message::decode(payload)
        .map(|m| m.id().to_string())
        .unwrap_or_default()
}

/// The ids of `task_ids` recorded in `set` and not yet expired.
fn live_ids(set: &HashMap<String, Instant>, task_ids: &[String]) -> Vec<String> {
    let now = Instant::now();
    task_ids
        .iter()
        .filter(|id| set.get(*id).is_some_and(|until| *until > now))
        .cloned()
        .collect()
}

#[cfg(test)]
mod named_tests {
    use super::*;

    #[test]
    fn names_whose_instances_are_gone_are_forgotten() {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<u32>>>> = OnceLock::new();
        let kept = named(&REGISTRY, "kept", || Arc::new(0));
        for i in 0..1000 {
            drop(named(&REGISTRY, &format!("gone-{i}"), || Arc::new(i)));
        }
        let again = named(&REGISTRY, "kept", || Arc::new(99));
        assert!(Arc::ptr_eq(&kept, &again), "a live instance is shared");
        let size = REGISTRY.get().unwrap().lock().len();
        assert!(size <= 2, "{size} names remembered");
    }
}
