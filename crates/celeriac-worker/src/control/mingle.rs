//! Mingle: as it starts, before it claims anything, the worker says
//! `hello` to the other workers on the broker, as Celery's `Mingle`
//! bootstep does, and takes from their replies the task ids they hold as
//! revoked and their Lamport clocks. The ids are recorded in the broker
//! ([`Revocations::merge_revoked`]), so that this worker skips them as it
//! skips ids revoked while it ran. Python Celery workers answer with their
//! own revoked set; celeriac workers answer Python ones the same way
//! (`panel.rs`).
//!
//! Celery always waits a second for replies. This worker waits only for
//! the nodes the broker knows: those in its node registry
//! ([`Nodes`](celeriac_core::Nodes)) and, on Redis, those bound to the
//! remote-control fanout (Python workers too), and at most a second; with
//! nobody else there it does not wait at all.
//!
//! [`Revocations::merge_revoked`]: celeriac_core::Revocations::merge_revoked

use std::collections::BTreeSet;
use std::time::Duration;

use celeriac_core::broker::REVOKE_TTL;
use celeriac_core::escape::Escaped;
use celeriac_core::{BrokerError, ControlRequest};
use serde_json::{Map, Value};

use crate::worker::Inner;

/// How long the worker waits for the replies (Celery's mingle timeout).
const HELLO_WAIT: Duration = Duration::from_secs(1);

/// Says `hello` and merges what the other workers answer. Failures are
/// logged: a worker that cannot mingle still starts, as in Celery.
pub(crate) async fn sync(inner: &Inner) {
    let me = inner.config.nodename.as_str();
    let peers = match peers(inner).await {
        Ok(p) => p,
        Err(BrokerError::Unsupported(_)) => return,
        Err(e) => {
            tracing::warn!(error = %e, "mingle: could not tell which workers are there");
            return;
        }
    };
    if peers.is_empty() {
        tracing::info!("mingle: all alone");
        return;
    }
    tracing::info!(peers = peers.len(), "mingle: searching for neighbors");
    let hello = ControlRequest::new("hello")
        .arg("from_node", me)
        .arg("revoked", inner.control.revoked_ids());
    // Its own listener answers too (with null), as a Celery worker does.
    let replies = match inner
        .broker
        .call(hello, HELLO_WAIT, Some(peers.len() + 1))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "mingle: hello failed");
            return;
        }
    };
    let (nodes, revoked, clock) = merge(&replies, me);
    if nodes == 0 {
        tracing::info!("mingle: all alone");
        return;
    }
    if let Some(c) = clock {
        inner.control.adjust(c);
    }
    if !revoked.is_empty() {
        inner.control.remember_revoked(&revoked);
        if let Err(e) = inner.broker.merge_revoked(&revoked, REVOKE_TTL).await {
            tracing::error!(error = %e, count = revoked.len(), "mingle: could not record the revoked ids");
        }
    }
    tracing::info!(
        nodes,
        revoked = revoked.len(),
        "mingle: sync with {nodes} nodes complete"
    );
}

/// The other nodes the broker knows to be there now.
async fn peers(inner: &Inner) -> Result<BTreeSet<String>, BrokerError> {
    let me = &inner.config.nodename;
    // A node whose heartbeats stopped three beats ago is gone.
    let max_age = (inner.config.heartbeat * 3).max(Duration::from_secs(6));
    let mut peers: BTreeSet<String> = inner
        .broker
        .nodes(max_age)
        .await?
        .into_iter()
        .map(|n| n.name)
        .collect();
    match inner.broker.listeners().await {
        Ok(l) => peers.extend(l),
        Err(BrokerError::Unsupported(_)) => {}
        Err(e) => return Err(e),
    }
    peers.remove(me);
    Ok(peers)
}

/// From the `{node: reply}` maps: how many other nodes replied, the
/// revoked ids they sent (each once, in the order received), and the
/// highest clock. A reply's `revoked` is a list of ids (Celery 5.7, and
/// celeriac) or a mapping of them (older Celery sends its `LimitedSet`'s
/// data, id to stamp); this node's own reply and malformed ones are
/// skipped.
fn merge(replies: &[Map<String, Value>], me: &str) -> (usize, Vec<String>, Option<u64>) {
    let mut nodes = 0;
    let mut seen = BTreeSet::new();
    let mut revoked = Vec::new();
    let mut clock: Option<u64> = None;
    for (node, reply) in replies.iter().flatten() {
        if node == me {
            continue;
        }
        let Value::Object(reply) = reply else {
            tracing::debug!(node = %Escaped(node), "mingle: no sync data in the reply");
            continue;
        };
        nodes += 1;
        let ids: Vec<&str> = match reply.get("revoked") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::Object(m)) => m.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        for id in ids {
            if seen.insert(id.to_string()) {
                revoked.push(id.to_string());
            }
        }
        if let Some(c) = reply.get("clock").and_then(Value::as_u64) {
            clock = Some(clock.map_or(c, |x| x.max(c)));
        }
    }
    (nodes, revoked, clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_merge_as_celery_merges_them() {
        let replies: Vec<Map<String, Value>> = serde_json::from_str(
            r#"[
              {"py@h": {"revoked": ["a", "b"], "clock": 7}},
              {"old@h": {"revoked": {"b": [1.0, 0, "b"], "c": [2.0, 1, "c"]}, "clock": 9}},
              {"me@h": {"revoked": ["mine"], "clock": 99}},
              {"odd@h": null}
            ]"#,
        )
        .unwrap();
        let (nodes, revoked, clock) = merge(&replies, "me@h");
        assert_eq!(nodes, 2, "own and empty replies do not count");
        assert_eq!(revoked, ["a", "b", "c"]);
        assert_eq!(clock, Some(9));
        assert_eq!(merge(&[], "me@h"), (0, Vec::new(), None));
    }
}
