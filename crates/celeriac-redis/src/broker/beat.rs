//! [`BeatStore`] on Redis: the leader lease of `celeriac beat` and its
//! fenced publish, each one Lua script (`lua/beat_*.lua`).
//!
//! Keys, per beat group `G`: `celeriac.beat.G.lock` (the fencing token
//! holding the lease, with the lease's TTL), `celeriac.beat.G.fence` (the
//! last token handed out; `INCR`ed on each takeover) and
//! `celeriac.beat.G.state` (HASH entry → last-run slot in milliseconds).
//! The publish script checks the lock against the token, pushes the
//! messages onto the queue lists as kombu does (Python workers consume
//! them) and records the slots, atomically.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::{BeatRun, BeatStore, Fenced};
use celeriac_core::{BrokerError, validate_queue_name};
use redis::{AsyncCommands, Script};

use super::{RedisBroker, conn_err};
use crate::scripts::PRELUDE;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

static LEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("../lua/beat_lease.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("../lua/beat_release.lua")));
static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("../lua/beat_publish.lua")));

impl RedisBroker {
    fn beat_key(&self, group: &str, what: &str) -> String {
        self.key(&format!("celeriac.beat.{group}.{what}"))
    }
}

#[async_trait]
impl BeatStore for RedisBroker {
    async fn acquire_lease(
        &self,
        group: &str,
        held: Option<u64>,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let mut conn = self.conn().await?;
        let held = held.map(|t| t.to_string()).unwrap_or_default();
        LEASE
            .key(self.beat_key(group, "lock"))
            .key(self.beat_key(group, "fence"))
            .arg(held)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(conn_err)
    }

    async fn release_lease(&self, group: &str, token: u64) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let _: i64 = RELEASE
            .key(self.beat_key(group, "lock"))
            .arg(token)
            .invoke_async(&mut conn)
            .await
            .map_err(conn_err)?;
        Ok(())
    }

    async fn last_runs(&self, group: &str) -> Result<HashMap<String, i64>, BrokerError> {
        let mut conn = self.conn().await?;
        conn.hgetall(self.beat_key(group, "state"))
            .await
            .map_err(conn_err)
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
        let mut conn = self.conn().await?;
        let mut inv = PUBLISH.prepare_invoke();
        inv.key(self.beat_key(group, "lock"))
            .key(self.beat_key(group, "state"))
            .arg(token);
        // KEYS[1] and KEYS[2] are the lock and the state; lists follow.
        let mut lists: Vec<String> = Vec::new();
        for run in &runs {
            let index = match &run.message {
                Some(m) => {
                    let list = self.list_key(&m.queue, m.priority);
                    let at = match lists.iter().position(|l| *l == list) {
                        Some(i) => i,
                        None => {
                            lists.push(list.clone());
                            inv.key(list);
                            lists.len() - 1
                        }
                    };
                    at + 3
                }
                None => 0,
            };
            let payload: &[u8] = run.message.as_ref().map_or(&[], |m| &m.payload);
            inv.arg(&run.entry).arg(run.slot_ms).arg(index).arg(payload);
        }
        let done: Option<Vec<i64>> = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
        Ok(match done {
            None => Fenced::Refused,
            Some(done) => Fenced::Applied(done.into_iter().map(|d| d == 1).collect()),
        })
    }
}
