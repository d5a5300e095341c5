//! Chord joins in memory: the state of every chord in one map behind one
//! lock, so each call is one critical section.
//!
//! The same rules as Celery 5.x's Redis join (see
//! `celeriac_redis`'s `chord.rs`): a part is counted once per
//! `<id>:<index>`, the part that brings the count to the size claims the
//! chord for a few seconds and gets every part in `group_index` order, and
//! a finished chord stays marked done for five minutes so that a late or
//! redelivered part triggers nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::{BackendError, ChordJoin};
use serde_json::Value;

use super::MemoryBackend;

/// How long the winner's claim holds before another part may take over
/// (as on Redis).
pub(crate) const CLAIM_TTL: Duration = Duration::from_secs(6);

/// How long a finished chord stays marked done (as Celery: 300 s).
pub(crate) const DONE_TTL: Duration = Duration::from_secs(300);

/// One chord's join.
#[derive(Debug)]
pub(crate) struct Chord {
    /// The header's size, once the client recorded it.
    size: Option<u64>,
    /// The parts, by (`group_index`, none last; the part's JSON), as
    /// Redis's sorted set orders them.
    parts: BTreeMap<(u64, String), Value>,
    /// `<id>:<index>` of every part counted.
    seen: HashSet<String>,
    /// Until when a winner holds the chord.
    claimed_until: Option<Instant>,
    /// Until when the chord is marked done.
    done_until: Option<Instant>,
    /// When this entry is dropped.
    expires: Instant,
}

impl Chord {
    fn new(expires: Instant) -> Self {
        Chord {
            size: None,
            parts: BTreeMap::new(),
            seen: HashSet::new(),
            claimed_until: None,
            done_until: None,
            expires,
        }
    }
}

/// Every chord of a backend.
#[derive(Debug, Default)]
pub(crate) struct Chords(HashMap<String, Chord>);

impl Chords {
    /// Drops the chords whose time is up.
    fn sweep(&mut self, now: Instant) {
        self.0.retain(|_, c| c.expires > now);
    }

    fn entry(&mut self, group_id: &str, now: Instant, ttl: Duration) -> &mut Chord {
        let c = self
            .0
            .entry(group_id.to_string())
            .or_insert_with(|| Chord::new(now + ttl));
        if c.expires <= now {
            *c = Chord::new(now + ttl);
        }
        c
    }
}

#[async_trait]
impl ChordJoin for MemoryBackend {
    async fn set_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut chords = self.chords.lock();
        chords.sweep(now);
        let c = chords.entry(group_id, now, self.ttl);
        c.size = Some(size);
        c.claimed_until = None;
        c.done_until = None;
        c.expires = now + self.ttl;
        Ok(())
    }

    async fn part_return(
        &self,
        group_id: &str,
        task_id: &str,
        group_index: Option<u64>,
        part: &Value,
    ) -> Result<Option<Vec<Value>>, BackendError> {
        let now = Instant::now();
        let mut chords = self.chords.lock();
        let c = chords.entry(group_id, now, self.ttl);
        if c.done_until.is_some_and(|until| until > now) {
            return Ok(None);
        }
        let member = match group_index {
            Some(i) => format!("{task_id}:{i}"),
            None => format!("{task_id}:inf"),
        };
        if c.seen.insert(member) {
            c.parts.insert(
                (group_index.unwrap_or(u64::MAX), part.to_string()),
                part.clone(),
            );
        }
        c.expires = now + self.ttl;
        let complete = c.size.is_some_and(|size| c.parts.len() as u64 >= size);
        if !complete || c.claimed_until.is_some_and(|until| until > now) {
            return Ok(None);
        }
        c.claimed_until = Some(now + CLAIM_TTL);
        Ok(Some(c.parts.values().cloned().collect()))
    }

    async fn finish(&self, group_id: &str) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut chords = self.chords.lock();
        let c = chords.entry(group_id, now, DONE_TTL);
        *c = Chord::new(now + DONE_TTL);
        c.done_until = Some(now + DONE_TTL);
        Ok(())
    }

    async fn abandon(&self, group_id: &str) -> Result<(), BackendError> {
        if let Some(c) = self.chords.lock().0.get_mut(group_id) {
            c.size = None;
        }
        Ok(())
    }
}
