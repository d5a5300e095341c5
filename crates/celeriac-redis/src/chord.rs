//! Celery 5.x's native chord join on Redis, key for key, so that a chord a
//! Python client sends completes whether its header parts ran on Python or
//! celeriac workers. For a group `<G>`, with `K` = `celery-taskset-meta-<G>`:
//!
//! - `K.s`: the chord's size, written by the client before its last header;
//! - `K.t`: parts added later (`add_to_chord`), counted with `K.s`;
//! - `K.j`: a sorted set of the finished parts (`[1, id, state, result]`),
//!   scored by `group_index`;
//! - `K.d`: the `<id>:<index>` of every part counted, so a redelivered part
//!   (its worker died after it finished) is not counted twice;
//! - `K.c`: the claim of the one worker that sends the body (`SET NX` with
//!   a short TTL, so a winner that dies is replaced by the next part that
//!   comes back), then `"done"`.

use std::sync::LazyLock;

use async_trait::async_trait;
use celeriac_core::{BackendError, ChordJoin, PartReturn};
use redis::Script;
use serde_json::Value;

use crate::backend::RedisBackend;

/// The script, hashed once.
static PART_RETURN_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/chord_part_return.lua")));

/// How long the winner's claim holds before another part may take over.
const CLAIM_TTL_SECS: u64 = 6;

/// How long `K.c = "done"` outlives the chord (as Celery: 300 s).
const DONE_TTL_SECS: u64 = 300;

impl RedisBackend {
    fn chord_keys(&self, group_id: &str) -> [String; 5] {
        let k = format!("{}celery-taskset-meta-{group_id}", self.prefix());
        ["j", "t", "s", "d", "c"].map(|suffix| format!("{k}.{suffix}"))
    }
}

#[async_trait]
impl ChordJoin for RedisBackend {
    async fn set_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        let [_, _, s, _, c] = self.chord_keys(group_id);
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic().del(c).ignore();
        match self.result_expires_secs() {
            // Results that never expire: neither does the size.
            0 => pipe.set(s, size).ignore(),
            ttl => pipe.set_ex(s, size, ttl).ignore(),
        };
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(crate::backend::backend_err)
    }

    async fn part_return(
        &self,
        group_id: &str,
        task_id: &str,
        group_index: Option<u64>,
        part: &Value,
    ) -> Result<Option<Vec<Value>>, BackendError> {
        let one = PartReturn {
            task_id,
            group_index,
            part,
        };
        self.part_return_many(group_id, &[one]).await
    }

    /// One script call for all of `parts` (`lua/chord_part_return.lua`).
    async fn part_return_many(
        &self,
        group_id: &str,
        parts: &[PartReturn<'_>],
    ) -> Result<Option<Vec<Value>>, BackendError> {
        if parts.is_empty() {
            return Ok(None);
        }
        let keys = self.chord_keys(group_id);
        let mut inv = PART_RETURN_SCRIPT.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(self.result_expires_secs())
            .arg(CLAIM_TTL_SECS)
            .arg(uuid::Uuid::new_v4().to_string());
        for p in parts {
            let score = p
                .group_index
                .map_or_else(|| "+inf".to_string(), |i| i.to_string());
            inv.arg(p.task_id).arg(p.part.to_string()).arg(score);
        }
        let mut conn = self.connection().await?;
        let all: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(crate::backend::backend_err)?;
        if all.is_empty() {
            return Ok(None);
        }
        all.iter()
            .map(|p| {
                serde_json::from_str(p)
                    .map_err(|e| BackendError::Malformed(format!("chord part {p:?}: {e}")))
            })
            .collect::<Result<Vec<Value>, _>>()
            .map(Some)
    }

    async fn finish(&self, group_id: &str) -> Result<(), BackendError> {
        let [j, t, s, d, c] = self.chord_keys(group_id);
        let mut conn = self.connection().await?;
        redis::pipe()
            .atomic()
            .del(&[j, t, s, d])
            .ignore()
            .set_ex(c, "done", DONE_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(crate::backend::backend_err)
    }

    async fn abandon(&self, group_id: &str) -> Result<(), BackendError> {
        let [_, _, s, _, _] = self.chord_keys(group_id);
        let mut conn = self.connection().await?;
        redis::cmd("DEL")
            .arg(s)
            .query_async::<()>(&mut conn)
            .await
            .map_err(crate::backend::backend_err)
    }
}
