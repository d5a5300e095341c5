//! Reading `celeriac.delayed` (eta messages waiting in the broker) a page
//! at a time, soonest first: counting a queue's waiting messages, listing
//! them (`inspect scheduled`) and purging them must not pull a set of a
//! million entries into one reply.

use std::ops::ControlFlow;

use celeriac_core::BrokerError;
use redis::aio::ConnectionManager;

use super::conn_err;

/// Entries read per `ZRANGE`.
const PAGE: isize = 1000;

/// One entry of `celeriac.delayed`: the list the message moves to when due
/// (`k`), the message (`m`), its eta and the member as stored.
pub(super) struct DelayedEntry<'a> {
    /// The list key the message moves to.
    pub(super) list: &'a str,
    /// The message's envelope.
    pub(super) message: &'a str,
    /// When it is due, in unix seconds.
    pub(super) eta: f64,
    /// The sorted set's member, verbatim (for `ZREM`).
    pub(super) member: &'a str,
}

/// Calls `each` on every well-formed entry of the sorted set `key`,
/// soonest first, reading [`PAGE`] entries at a time, until it breaks.
/// Entries that other clients add or remove meanwhile may be seen twice or
/// not at all: this is a listing, not a snapshot.
pub(super) async fn each_delayed(
    conn: &mut ConnectionManager,
    key: &str,
    mut each: impl FnMut(DelayedEntry<'_>) -> ControlFlow<()>,
) -> Result<(), BrokerError> {
    let mut start: isize = 0;
    loop {
        let page: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(start)
            .arg(start + PAGE - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await
            .map_err(conn_err)?;
        for (member, eta) in &page {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(member) else {
                continue;
            };
            let (Some(list), Some(message)) = (v["k"].as_str(), v["m"].as_str()) else {
                continue;
            };
            let entry = DelayedEntry {
                list,
                message,
                eta: *eta,
                member,
            };
            if each(entry).is_break() {
                return Ok(());
            }
        }
        if (page.len() as isize) < PAGE {
            return Ok(());
        }
        start += PAGE;
    }
}
