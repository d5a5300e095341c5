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
use celeriac_core::{BackendError, ChordJoin};
use redis::Script;
use serde_json::Value;

use crate::backend::RedisBackend;

/// Records a part and says whether it completes the chord.
/// KEYS: K.j, K.t, K.s, K.d, K.c. ARGV: id, part, index score, expires,
/// claim ttl, claim token. Returns the parts in index order to the winner,
/// an empty list to everyone else.
const PART_RETURN: &str = r#"
if redis.call('GET', KEYS[5]) == 'done' then return {} end
local member = ARGV[1] .. ':' .. ARGV[3]
if redis.call('SISMEMBER', KEYS[4], member) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], member)
end
local count = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
local size = tonumber(redis.call('GET', KEYS[3]))
local extra = tonumber(redis.call('GET', KEYS[2])) or 0
if size and count >= size + extra then
  if redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', tonumber(ARGV[5])) then
    return redis.call('ZRANGE', KEYS[1], 0, -1)
  end
end
return {}
"#;

/// The script, hashed once.
static PART_RETURN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PART_RETURN));

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
        redis::pipe()
            .atomic()
            .del(c)
            .ignore()
            .set_ex(s, size, self.result_expires_secs())
            .ignore()
            .query_async::<()>(&mut conn)
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
        let keys = self.chord_keys(group_id);
        let score = group_index.map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let mut conn = self.connection().await?;
        let mut inv = PART_RETURN_SCRIPT.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(task_id)
            .arg(part.to_string())
            .arg(&score)
            .arg(self.result_expires_secs())
            .arg(CLAIM_TTL_SECS)
            .arg(uuid::Uuid::new_v4().to_string());
        let parts: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(crate::backend::backend_err)?;
        if parts.is_empty() {
            return Ok(None);
        }
        parts
            .iter()
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
