//! [`MemoryBackend`]: the `memory://` result store, with its TTLs, its
//! waiters, saved groups and idempotency keys (chord joins are in
//! `chord.rs`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::{BackendError, ResultBackend, ResultMeta, ResultWatch, State, Waiters};
use parking_lot::Mutex;

use super::{chord, memory_name, named};

/// A result store inside one process (`memory://`).
///
/// Results expire after a TTL (one day by default), checked lazily.
///
/// # Examples
///
/// ```
/// use celeriac_core::{ResultBackend, ResultMeta};
/// use celeriac_embedded::MemoryBackend;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let backend = MemoryBackend::new();
/// let watch = backend.watch("t1").await.unwrap();
/// backend.store(&ResultMeta::success("t1", 5.into())).await.unwrap();
/// assert_eq!(watch.await.unwrap().result, 5);
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryBackend {
    name: String,
    pub(super) ttl: Duration,
    results: Mutex<HashMap<String, (ResultMeta, Instant)>>,
    keys: Mutex<HashMap<String, (String, Instant)>>,
    pub(super) chords: Mutex<chord::Chords>,
    /// Saved group results (`GroupResult.save`), with their expiry.
    groups: Mutex<HashMap<String, (serde_json::Value, Instant)>>,
    waiters: Waiters,
}

impl MemoryBackend {
    /// A private instance with the default TTL.
    pub fn new() -> Self {
        Self::with_ttl("", crate::DEFAULT_RESULT_TTL)
    }

    /// A private instance with a given result TTL.
    pub fn with_ttl(name: &str, ttl: Duration) -> Self {
        MemoryBackend {
            name: name.to_string(),
            ttl,
            results: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            chords: Mutex::new(chord::Chords::default()),
            groups: Mutex::new(HashMap::new()),
            waiters: Waiters::default(),
        }
    }

    /// Opens `memory://` (private) or `memory://NAME` (process-wide).
    pub fn open(url: &str) -> Result<Arc<Self>, BackendError> {
        static NAMED: OnceLock<Mutex<HashMap<String, Weak<MemoryBackend>>>> = OnceLock::new();
        match memory_name(url).map_err(|reason| BackendError::InvalidUrl {
            url: url.to_string(),
            reason,
        })? {
            None => Ok(Arc::new(Self::new())),
            Some(name) => Ok(named(&NAMED, &name, || {
                Arc::new(Self::with_ttl(&name, crate::DEFAULT_RESULT_TTL))
            })),
        }
    }

    /// Number of stored results.
    pub fn len(&self) -> usize {
        self.results.lock().len()
    }

    /// Whether no result is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ResultBackend for MemoryBackend {
    fn url(&self) -> String {
        format!("memory://{}", self.name)
    }

    /// True for a private instance (`memory://`); a named one
    /// (`memory://NAME`) is shared by every handle in the process.
    fn is_private(&self) -> bool {
        self.name.is_empty()
    }

    /// Joins in one critical section (see [`ChordJoin`](celeriac_core::ChordJoin)).
    fn chord_join(&self) -> Option<&dyn celeriac_core::ChordJoin> {
        Some(self)
    }

    async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        {
            let mut results = self.results.lock();
            if let Some((old, exp)) = results.get(&meta.task_id)
                && old.status == State::Success
                && *exp > Instant::now()
            {
                return Ok(());
            }
            results.insert(
                meta.task_id.clone(),
                (meta.clone(), Instant::now() + self.ttl),
            );
        }
        self.waiters.notify(meta);
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let mut results = self.results.lock();
        match results.get(task_id) {
            Some((_, exp)) if *exp <= Instant::now() => {
                results.remove(task_id);
                Ok(None)
            }
            Some((meta, _)) => Ok(Some(meta.clone())),
            None => Ok(None),
        }
    }

    async fn watch(&self, task_id: &str) -> Result<ResultWatch, BackendError> {
        if let Some(meta) = self.get(task_id).await?.filter(|m| m.status.is_ready()) {
            return Ok(ResultWatch::new(async move { Ok(meta) }));
        }
        let rx = self.waiters.register(task_id);
        // A store between the first look and the registration is seen here.
        if let Some(meta) = self.get(task_id).await?.filter(|m| m.status.is_ready()) {
            return Ok(ResultWatch::new(async move { Ok(meta) }));
        }
        Ok(ResultWatch::new(async move {
            rx.await.map_err(|_| BackendError::Closed)
        }))
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.results.lock().remove(task_id);
        Ok(())
    }

    /// Kept for the result TTL (Celery's `GroupResult.save`).
    async fn save_group(
        &self,
        group_id: &str,
        meta: &serde_json::Value,
    ) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        groups.retain(|_, (_, exp)| *exp > now);
        groups.insert(group_id.to_string(), (meta.clone(), now + self.ttl));
        Ok(())
    }

    async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        let groups = self.groups.lock();
        Ok(groups
            .get(group_id)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(meta, _)| meta.clone()))
    }

    async fn claim_key(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BackendError> {
        let mut keys = self.keys.lock();
        let now = Instant::now();
        match keys.get(key) {
            Some((holder, until)) if *until > now => Ok(Some(holder.clone())),
            _ => {
                keys.insert(key.to_string(), (task_id.to_string(), now + ttl));
                Ok(None)
            }
        }
    }
}
