//! [`BeatStore`] in memory: the leases and last runs of `celeriac beat`
//! beside the queues, so that a fenced publish is one critical section.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::broker::{BeatRun, BeatStore, Fenced};
use celeriac_core::{BrokerError, validate_queue_name};

use super::MemoryBroker;

/// The beat groups of one broker.
#[derive(Debug, Default)]
pub(super) struct Tables {
    /// Group → (latest token, end of its lease).
    leases: HashMap<String, (u64, Instant)>,
    /// (group, entry) → last-run slot in ms.
    runs: HashMap<(String, String), i64>,
}

impl Tables {
    fn holds(&self, group: &str, token: u64) -> bool {
        self.leases
            .get(group)
            .is_some_and(|(t, ends)| *t == token && *ends > Instant::now())
    }
}

#[async_trait]
impl BeatStore for MemoryBroker {
    async fn acquire_lease(
        &self,
        group: &str,
        held: Option<u64>,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(BrokerError::Closed);
        }
        let now = Instant::now();
        let token = match st.beat.leases.get(group) {
            Some((token, ends)) if *ends > now => {
                if held != Some(*token) {
                    return Ok(None);
                }
                *token
            }
            Some((token, _)) => token + 1,
            None => 1,
        };
        st.beat.leases.insert(group.to_string(), (token, now + ttl));
        Ok(Some(token))
    }

    async fn release_lease(&self, group: &str, token: u64) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        if let Some((t, ends)) = st.beat.leases.get_mut(group)
            && *t == token
        {
            *ends = Instant::now();
        }
        Ok(())
    }

    async fn last_runs(&self, group: &str) -> Result<HashMap<String, i64>, BrokerError> {
        let st = self.state.lock();
        Ok(st
            .beat
            .runs
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, entry), slot)| (entry.clone(), *slot))
            .collect())
    }

    async fn publish_fenced(
        &self,
        group: &str,
        token: u64,
        runs: Vec<BeatRun>,
    ) -> Result<Fenced, BrokerError> {
        for m in runs.iter().filter_map(|r| r.message.as_ref()) {
            validate_queue_name(&m.queue)?;
        }
        let applied = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(BrokerError::Closed);
            }
            if !st.beat.holds(group, token) {
                return Ok(Fenced::Refused);
            }
            let mut applied = Vec::with_capacity(runs.len());
            for run in runs {
                let key = (group.to_string(), run.entry);
                let fresh = st
                    .beat
                    .runs
                    .get(&key)
                    .is_none_or(|last| run.slot_ms > *last);
                if fresh {
                    st.beat.runs.insert(key, run.slot_ms);
                    if let Some(m) = run.message {
                        st.push_outgoing(m);
                    }
                }
                applied.push(fresh);
            }
            applied
        };
        self.notify.notify_waiters();
        Ok(Fenced::Applied(applied))
    }
}
