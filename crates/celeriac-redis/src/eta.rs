//! Messages with an `eta`, published as Celery publishes them: `LPUSH`ed
//! on their queue with the `eta` header set, where a Python worker takes
//! them and holds them until due. A celeriac consumer that claims one
//! before it is due moves it at once to the `celeriac.delayed` set (in
//! Redis, durably: the requeue script takes it out of `unacked` and puts it
//! in the set in one step), from which a claim takes it when due. So
//! [`claim`](celeriac_core::Transport::claim) never returns a message
//! early, and a worker never holds one in memory until its eta.

use celeriac_core::time::{parse_iso, unix_now};
use celeriac_core::{Delivery, Transport};

use crate::broker::RedisBroker;

/// The `eta` header of an envelope, as unix time, if it has one.
///
/// Nearly every envelope says `"eta": null`; a scan of the bytes rules
/// that out without parsing, so only an envelope where `"eta"` is followed
/// by a string value is decoded.
pub(crate) fn payload_eta(payload: &[u8]) -> Option<f64> {
    const KEY: &[u8] = b"\"eta\"";
    let mut rest = payload;
    loop {
        let at = rest.windows(KEY.len()).position(|w| w == KEY)?;
        rest = &rest[at + KEY.len()..];
        let mut after = rest.iter().copied().filter(|b| !b.is_ascii_whitespace());
        if after.next() == Some(b':') && after.next() == Some(b'"') {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        headers: Headers,
    }
    #[derive(serde::Deserialize)]
    struct Headers {
        eta: Option<String>,
    }
    let env: Envelope = serde_json::from_slice(payload).ok()?;
    parse_iso(&env.headers.eta?)
}

impl RedisBroker {
    /// Moves every claimed message whose eta is still ahead (and that is
    /// not revoked: a revoked one goes to its worker at once, to be
    /// recorded REVOKED) to the delayed set, and returns the others.
    ///
    /// A message that cannot be moved now (Redis is unreachable) is
    /// returned as well: the worker's own eta gate defers it then, so it
    /// neither runs early nor is lost.
    pub(crate) async fn defer_early(&self, claimed: Vec<Delivery>) -> Vec<Delivery> {
        let now = unix_now();
        let mut ready = Vec::with_capacity(claimed.len());
        for d in claimed {
            let eta = (!d.revoked)
                .then(|| payload_eta(&d.payload))
                .flatten()
                .filter(|&at| at > now);
            let Some(at) = eta else {
                ready.push(d);
                continue;
            };
            match self.requeue(&d, Some(at)).await {
                Ok(()) => {
                    tracing::debug!(queue = %celeriac_core::escape::Escaped(&d.queue), eta = at, "eta message held in the delayed set until due")
                }
                Err(e) => {
                    tracing::warn!(queue = %celeriac_core::escape::Escaped(&d.queue), error = %e, "could not move an eta message to the delayed set; its worker defers it");
                    ready.push(d);
                }
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_string_eta_header_is_read() {
        let python = br#"{"body": "W10=", "headers": {"lang": "py", "task": "t", "id": "1", "eta": "2026-11-28T21:48:07.727318+00:00", "expires": null}}"#;
        let at = payload_eta(python).unwrap();
        assert!((at - 1_795_902_487.727_318).abs() < 1e-6, "{at}");
        let compact = br#"{"headers":{"eta":"2026-11-28T21:48:07+00:00"}}"#;
        assert_eq!(payload_eta(compact), Some(1_795_902_487.0));
        assert_eq!(payload_eta(br#"{"headers": {"eta": null}}"#), None);
        assert_eq!(payload_eta(br#"{"headers": {}}"#), None);
        // Another field named "eta" first, then the header.
        let nested = br#"{"properties": {"x": {"eta": 5}}, "headers": {"eta": "2026-11-28T21:48:07+00:00"}}"#;
        assert_eq!(payload_eta(nested), Some(1_795_902_487.0));
        // Not JSON, or an eta that is not a date: none (the worker's own
        // gates judge the message).
        assert_eq!(payload_eta(br#"{"eta": "x"#), None);
        assert_eq!(payload_eta(br#"{"headers": {"eta": "not-a-date"}}"#), None);
    }
}
