//! Chores that run beside the claim loop for the worker's whole life: the
//! heartbeat (the node registry), lease renewal of every held message, and
//! autoscale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::NodeInfo;
use celeriac_core::time::unix_now;

use crate::worker::{Inner, Worker};

/// How often autoscale looks at the queues.
const AUTOSCALE_EVERY: Duration = Duration::from_millis(500);

/// Announces the worker every `heartbeat` interval.
pub(crate) async fn heartbeat(inner: Arc<Inner>) {
    loop {
        let node = NodeInfo {
            name: inner.config.nodename.clone(),
            concurrency: inner.slots.target(),
            pid: std::process::id(),
            last_seen: unix_now(),
        };
        if let Err(e) = inner.broker.heartbeat(&node).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::time::sleep(inner.config.heartbeat).await;
    }
}

/// Renews the leases of every held message, at least three times per
/// broker lease.
pub(crate) async fn renew(inner: Arc<Inner>) {
    let every = inner
        .config
        .renew_every
        .min(inner.broker.lease() / 3)
        .max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let held = inner.ledger.held();
        if held.is_empty() {
            continue;
        }
        if let Err(e) = inner.broker.renew(&held).await {
            tracing::warn!(error = %e, count = held.len(), "lease renewal failed");
        }
    }
}

/// Follows queue depth: grows at once to what is running plus waiting
/// (within `max`), shrinks after `keepalive` of lower demand (within
/// `min`). The bounds are read each time: remote control's `autoscale`
/// changes them.
pub(crate) async fn autoscale(worker: Worker) {
    let inner = worker.inner();
    let mut low_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(AUTOSCALE_EVERY).await;
        let Some((min, max)) = inner.control.autoscale() else {
            continue;
        };
        let mut waiting = 0usize;
        for q in inner.control.queues().iter() {
            match inner.broker.queue_len(q).await {
                Ok(n) => waiting += n,
                Err(e) => {
                    tracing::debug!(queue = %q, error = %e, "autoscale: queue length unknown")
                }
            }
        }
        let busy = inner.slots.reserved();
        let want = (busy + waiting).clamp(min, max);
        let current = worker.concurrency();
        if want > current {
            low_since = None;
            tracing::info!(from = current, to = want, waiting, "autoscale: growing");
            if let Err(e) = worker.set_concurrency(want) {
                tracing::warn!(error = %e, "autoscale: could not grow");
            }
        } else if want < current {
            let since = *low_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= inner.config.autoscale_keepalive {
                tracing::info!(from = current, to = want, "autoscale: shrinking");
                if let Err(e) = worker.set_concurrency(want) {
                    tracing::warn!(error = %e, "autoscale: could not shrink");
                }
                low_since = None;
            }
        } else {
            low_since = None;
        }
    }
}
