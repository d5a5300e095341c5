//! Control: the revoke and terminate watcher. Every second it asks the
//! broker which reserved messages were revoked since their claim (they are
//! marked, and recorded as REVOKED instead of running), and which running
//! tasks were revoked with terminate (their executor stops them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::worker::Inner;

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
