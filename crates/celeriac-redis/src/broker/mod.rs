//! The Redis broker. See the crate docs for the design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac_core::time::unix_now;
use celeriac_core::{
    BrokerError, DeadLetter, DeadLetters, Delivery, NodeInfo, Nodes, Outgoing, RateLimits,
    Revocations, Transport,
};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::OnceCell;

use crate::conn::MAX_BATCH;
use crate::url::{RedisOptions, parse_redis_url};

/// kombu's priority steps and separator.
const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
const SEP: &str = "\x06\x16";

/// Pops from the lists in order and records every message in kombu's
/// `unacked`/`unacked_index` and celeriac's claim table, atomically. Due
/// delayed messages are moved onto their lists first.
///
/// The bookkeeping is written with one multi-field command per structure
/// for the whole batch (`RPOP key count`, `HSET` with many fields, ...):
/// inside a script each `redis.call` costs several microseconds, so the
/// per-message cost is what matters (see BENCHMARKS.md, W1).
///
/// KEYS: unacked, unacked_index, claims, deliveries, delayed, list...
/// ARGV: now, max, token, key prefix, queue-name-for-each-list...
/// Returns queue, message, tag, delivery count and a revoked flag for each
/// message claimed.
const CLAIM: &str = r#"
local unacked, index, claims, deliveries, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local token = ARGV[3]
local prefix = ARGV[4]
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
for _, d in ipairs(due) do
  redis.call('ZREM', delayed, d)
  local ok, item = pcall(cjson.decode, d)
  if ok and type(item) == 'table' and type(item.k) == 'string' and type(item.m) == 'string' then
    redis.call('RPUSH', item.k, item.m)
  end
end
-- Up to n messages from the tail of a list (oldest first).
local function pop(key, n)
  local ok, got = pcall(redis.call, 'RPOP', key, n)
  if ok then return got or {} end
  -- Redis before 6.2: no count.
  local out = {}
  for _ = 1, n do
    local m = redis.call('RPOP', key)
    if not m then break end
    table.insert(out, m)
  end
  return out
end
-- The value of the string field `name` of the envelope, found without
-- decoding it (a plain search is far cheaper than cjson or a pattern):
-- nil unless `"name"` occurs exactly once in the envelope, as a key
-- (followed by a colon) whose value is a string without escapes. The
-- caller then decodes the envelope in full.
local function field(m, name)
  local key = '"' .. name .. '"'
  local s, e = string.find(m, key, 1, true)
  if not s or string.find(m, key, e + 1, true) then return nil end
  return string.match(m, '^%s*:%s*"([^"\]*)"', e + 1)
end
-- tag, task id (or false) and kombu's unacked entry of a message.
local function describe(m, queue, j)
  local tag, id, ex, rk = field(m, 'delivery_tag'), field(m, 'id'), field(m, 'exchange'), field(m, 'routing_key')
  local entry
  if tag and id and ex and rk then
    entry = '[' .. m .. ',"' .. ex .. '","' .. rk .. '"]'
  else
    tag, id, ex, rk = nil, false, '', queue
    local ok, env = pcall(cjson.decode, m)
    if ok and type(env) == 'table' and type(env.headers) == 'table' and type(env.headers.id) == 'string' then
      id = env.headers.id
    end
    if ok and type(env) == 'table' and type(env.properties) == 'table' then
      tag = env.properties.delivery_tag
      local di = env.properties.delivery_info
      if type(di) == 'table' then
        if type(di.exchange) == 'string' then ex = di.exchange end
        if type(di.routing_key) == 'string' then rk = di.routing_key end
      end
      entry = '[' .. m .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']'
    else
      entry = cjson.encode({m, ex, rk})
    end
  end
  if type(tag) ~= 'string' or tag == '' then
    tag = 'celeriac-malformed-' .. token .. '-' .. j
  end
  return tag, id, entry
end
local queues, msgs = {}, {}
for i = 6, #KEYS do
  if #msgs >= max then break end
  for _, m in ipairs(pop(KEYS[i], max - #msgs)) do
    table.insert(queues, ARGV[i - 1])
    table.insert(msgs, m)
  end
end
if #msgs == 0 then return {} end
local tags, entries, claimed, leases, revkeys, revidx = {}, {}, {}, {}, {}, {}
for j, m in ipairs(msgs) do
  local tag, id, entry = describe(m, queues[j], j)
  tags[j] = tag
  table.insert(entries, tag)
  table.insert(entries, entry)
  table.insert(leases, now)
  table.insert(leases, tag)
  table.insert(claimed, tag)
  table.insert(claimed, token)
  if id then
    table.insert(revkeys, prefix .. 'celeriac.revoked.' .. id)
    table.insert(revidx, j)
  end
end
redis.call('HSET', unacked, unpack(entries))
redis.call('ZADD', index, unpack(leases))
redis.call('HSET', claims, unpack(claimed))
local counts = redis.call('HMGET', deliveries, unpack(tags))
local newcounts = {}
for j, tag in ipairs(tags) do
  counts[j] = (tonumber(counts[j]) or 0) + 1
  table.insert(newcounts, tag)
  table.insert(newcounts, counts[j])
end
redis.call('HSET', deliveries, unpack(newcounts))
local revoked = {}
if #revkeys > 0 then
  for k, v in ipairs(redis.call('MGET', unpack(revkeys))) do
    if v then revoked[revidx[k]] = 1 end
  end
end
local out = {}
for j, m in ipairs(msgs) do
  table.insert(out, queues[j])
  table.insert(out, m)
  table.insert(out, tags[j])
  table.insert(out, counts[j])
  table.insert(out, revoked[j] or 0)
end
return out
"#;

/// Removes each claimed message whose claim token still matches.
/// KEYS: unacked, unacked_index, claims, deliveries.
/// ARGV: tag1, token1, tag2, token2, ...
/// Returns 1 for each message removed and 0 for one no longer held, in
/// order.
const ACK: &str = r#"
local tags = {}
for i = 1, #ARGV, 2 do table.insert(tags, ARGV[i]) end
local holders = redis.call('HMGET', KEYS[3], unpack(tags))
local mine, out = {}, {}
for j, tag in ipairs(tags) do
  if holders[j] == ARGV[2 * j] then
    table.insert(mine, tag)
    out[j] = 1
  else
    out[j] = 0
  end
end
if #mine > 0 then
  redis.call('HDEL', KEYS[1], unpack(mine))
  redis.call('ZREM', KEYS[2], unpack(mine))
  redis.call('HDEL', KEYS[3], unpack(mine))
  redis.call('HDEL', KEYS[4], unpack(mine))
end
return out
"#;

/// Moves the lease of each (tag, token) pair still held to now.
/// KEYS: unacked_index, claims. ARGV: now, tag1, token1, tag2, token2, ...
const RENEW: &str = r#"
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// Gives a claimed message back: onto the back of its list now, or into
/// the delayed set until `not_before`.
/// KEYS: unacked, unacked_index, claims, delayed, list.
/// ARGV: tag, token, payload, not_before (0 = now).
const REQUEUE: &str = r#"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local at = tonumber(ARGV[4])
if at > 0 then
  redis.call('ZADD', KEYS[4], at, cjson.encode({k = KEYS[5], m = ARGV[3]}))
else
  redis.call('LPUSH', KEYS[5], ARGV[3])
end
return 1
"#;

/// Moves a claimed message to the dead-letter store.
/// KEYS: unacked, unacked_index, claims, deliveries, dlq, dlq payloads.
/// ARGV: tag, token, record json, id, payload.
const DEAD_LETTER: &str = r#"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[5])
return 1
"#;

/// kombu's restore of messages whose lease lapsed: back to the front of
/// their queue (RPUSH), marked redelivered. Skipped while a Python worker
/// holds `unacked_mutex`.
/// KEYS: unacked, unacked_index, claims, mutex.
/// ARGV: cutoff, limit, key prefix, separator.
const RESTORE: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local prefix, sep = ARGV[3], ARGV[4]
local restored = 0
for _, tag in ipairs(tags) do
  local raw = redis.call('HGET', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  redis.call('HDEL', KEYS[1], tag)
  redis.call('HDEL', KEYS[3], tag)
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' then
      local msg, ex, rk = entry[1], entry[2], entry[3]
      local body
      local pri = 0
      if type(msg) == 'table' then
        if type(msg.headers) == 'table' then msg.headers.redelivered = true end
        if type(msg.properties) == 'table' then
          if type(msg.properties.delivery_info) == 'table' then msg.properties.delivery_info.redelivered = true end
          pri = tonumber(msg.properties.priority) or 0
        end
        body = cjson.encode(msg)
      else
        body = msg
      end
      local queues = {}
      if ex == nil or ex == '' then
        queues = {rk}
      else
        for _, b in ipairs(redis.call('SMEMBERS', prefix .. '_kombu.binding.' .. ex)) do
          local brk, _, bq = string.match(b, '^(.-)' .. sep .. '(.-)' .. sep .. '(.*)$')
          if bq and (brk == rk or brk == '') then table.insert(queues, bq) end
        end
        if #queues == 0 then queues = {rk} end
      end
      local step = 0
      if pri >= 9 then step = 9 elseif pri >= 6 then step = 6 elseif pri >= 3 then step = 3 end
      for _, q in ipairs(queues) do
        local key = prefix .. q
        if step > 0 then key = key .. sep .. step end
        redis.call('RPUSH', key, body)
      end
      restored = restored + 1
    end
  end
end
return restored
"#;

/// A GCRA step (see `celeriac_core::rate::gcra`), atomic across workers.
/// KEYS: bucket. ARGV: now, interval. Returns the wait in seconds as a
/// string (Lua numbers would be truncated to integers).
const RATE: &str = r#"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat and tat > now then
  return tostring(tat - now)
end
local ttl = math.ceil(interval * 1000) + 1000
redis.call('SET', KEYS[1], tostring(now + interval), 'PX', ttl)
return '0'
"#;

#[derive(Debug)]
struct Scripts {
    claim: Script,
    ack: Script,
    renew: Script,
    requeue: Script,
    dead_letter: Script,
    restore: Script,
    rate: Script,
}

/// A broker on Redis, compatible with kombu's Redis transport.
#[derive(Debug)]
pub struct RedisBroker {
    opts: RedisOptions,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    scripts: Scripts,
    last_restore: Mutex<Option<Instant>>,
    bound: Mutex<Vec<String>>,
    /// Idle dedicated connections for blocking waits, one per concurrent
    /// claim.
    blockers: Mutex<Vec<redis::aio::MultiplexedConnection>>,
    pidbox_started: std::sync::atomic::AtomicBool,
}

use celeriac_core::broker::REVOKE_TTL;

async fn revoke_keys(
    conn: &mut ConnectionManager,
    prefix: &str,
    task_ids: &[String],
    ttl: Duration,
    terminate: bool,
) -> Result<(), BrokerError> {
    if task_ids.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for id in task_ids {
        pipe.set_ex(
            format!("{prefix}celeriac.revoked.{id}"),
            1,
            ttl.as_secs().max(1),
        )
        .ignore();
        if terminate {
            pipe.set_ex(
                format!("{prefix}celeriac.terminate.{id}"),
                1,
                ttl.as_secs().max(1),
            )
            .ignore();
        }
    }
    pipe.query_async::<()>(conn).await.map_err(conn_err)
}

/// Listens for Celery's pidbox broadcasts and records revokes durably.
/// Reconnects when the subscription drops.
async fn pidbox(
    client: redis::Client,
    mut conn: ConnectionManager,
    channel: String,
    prefix: String,
) {
    use futures::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        }
        .await;
        let mut ps = match subscribed {
            Ok(ps) => ps,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "remote-control subscription failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut stream = ps.on_message();
        while let Some(msg) = stream.next().await {
            let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                continue;
            };
            let Some((method, args)) = control_command(&payload) else {
                tracing::warn!("ignoring a malformed remote-control message");
                continue;
            };
            match method.as_str() {
                "revoke" => {
                    let ids: Vec<String> = match &args["task_id"] {
                        serde_json::Value::String(s) => vec![s.clone()],
                        serde_json::Value::Array(a) => a
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let terminate = args["terminate"] == serde_json::Value::Bool(true);
                    match revoke_keys(&mut conn, &prefix, &ids, REVOKE_TTL, terminate).await {
                        Ok(()) => tracing::info!(?ids, "revoked by remote control"),
                        Err(e) => tracing::error!(error = %e, ?ids, "could not record a revoke"),
                    }
                }
                other => tracing::debug!(method = other, "remote-control command not handled"),
            }
        }
        tracing::warn!("remote-control subscription lost; reconnecting");
    }
}

/// `(method, arguments)` of a kombu pidbox envelope.
fn control_command(payload: &[u8]) -> Option<(String, serde_json::Value)> {
    use base64::Engine as _;
    let env: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let body = env["body"].as_str()?;
    let bytes = if env["properties"]["body_encoding"] == "base64" {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?
    } else {
        body.as_bytes().to_vec()
    };
    let cmd: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        cmd["method"].as_str()?.to_string(),
        cmd["arguments"].clone(),
    ))
}

fn conn_err(e: redis::RedisError) -> BrokerError {
    if crate::conn::is_connection_error(&e) {
        BrokerError::connection(e)
    } else {
        BrokerError::storage(e)
    }
}

/// The kombu priority step of a priority (Redis: 0 is the highest).
fn step(priority: u8) -> u8 {
    PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|s| *s <= priority.min(9))
        .unwrap_or(0)
}

fn split_tag(tag: &str) -> Result<(&str, &str), BrokerError> {
    tag.rsplit_once('#')
        .ok_or_else(|| BrokerError::NotHeld(tag.to_string()))
}

impl RedisBroker {
    /// A broker for a `redis://` URL. The connection is made on first use
    /// and re-established automatically when it drops.
    pub fn open(url: &str) -> Result<Arc<Self>, BrokerError> {
        let opts = parse_redis_url(url).map_err(|reason| BrokerError::InvalidUrl {
            url: url.split('@').next_back().unwrap_or(url).to_string(),
            reason,
        })?;
        let client =
            redis::Client::open(opts.client_url.as_str()).map_err(|e| BrokerError::InvalidUrl {
                url: opts.redacted.clone(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(RedisBroker {
            opts,
            client,
            conn: OnceCell::new(),
            scripts: Scripts {
                claim: Script::new(CLAIM),
                ack: Script::new(ACK),
                renew: Script::new(RENEW),
                requeue: Script::new(REQUEUE),
                dead_letter: Script::new(DEAD_LETTER),
                restore: Script::new(RESTORE),
                rate: Script::new(RATE),
            },
            last_restore: Mutex::new(None),
            bound: Mutex::new(Vec::new()),
            blockers: Mutex::new(Vec::new()),
            pidbox_started: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        self.conn
            .get_or_try_init(|| crate::conn::manager(&self.client))
            .await
            .cloned()
            .map_err(conn_err)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.opts.prefix)
    }

    /// The list key of `queue` for `priority`.
    fn list_key(&self, queue: &str, priority: u8) -> String {
        match step(priority) {
            0 => self.key(queue),
            s => format!("{}{queue}{SEP}{s}", self.opts.prefix),
        }
    }

    fn bookkeeping(&self) -> [String; 5] {
        [
            self.key("unacked"),
            self.key("unacked_index"),
            self.key("celeriac.claims"),
            self.key("celeriac.deliveries"),
            self.key("celeriac.delayed"),
        ]
    }

    /// Declares `queue` as kombu does, so that Python publishers using the
    /// queue's own exchange route to it.
    async fn bind(&self, conn: &mut ConnectionManager, queue: &str) -> Result<(), BrokerError> {
        if self.bound.lock().iter().any(|q| q == queue) {
            return Ok(());
        }
        let member = format!("{queue}{SEP}{SEP}{queue}");
        let _: i64 = conn
            .sadd(self.key(&format!("_kombu.binding.{queue}")), member)
            .await
            .map_err(conn_err)?;
        self.bound.lock().push(queue.to_string());
        Ok(())
    }

    /// Starts, once, the listener for Celery's remote-control broadcasts
    /// (`app.control.revoke(...)` from Python), which turns revokes into
    /// durable keys that every worker honours, including ones started later.
    fn ensure_pidbox(&self, conn: &ConnectionManager) {
        if self
            .pidbox_started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let db = self.client.get_connection_info().redis_settings().db();
        let channel = format!("/{db}.celery.pidbox");
        tokio::spawn(pidbox(
            self.client.clone(),
            conn.clone(),
            channel,
            self.opts.prefix.clone(),
        ));
    }

    /// Blocks until `list` is non-empty or `timeout` passes, without taking
    /// anything: `BLMOVE list list RIGHT RIGHT` moves the last element to the
    /// end of the same list, which leaves the list as it was. The claim
    /// script runs afterwards, so messages still leave the list only
    /// atomically with their `unacked` record.
    async fn wait_for(&self, list: &str, timeout: Duration) -> Result<(), BrokerError> {
        let pooled = self.blockers.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => crate::conn::blocking(&self.client)
                .await
                .map_err(conn_err)?,
        };
        let secs = timeout.as_secs_f64().max(0.01);
        let r: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
            .arg(list)
            .arg(list)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(secs)
            .query_async(&mut conn)
            .await;
        match r {
            Ok(_) => {
                self.blockers.lock().push(conn);
                Ok(())
            }
            // A failed or silent wait drops its connection; the next wait
            // opens a fresh one.
            Err(e) => Err(conn_err(e)),
        }
    }

    /// Which of `task_ids` have a live key `<prefix><kind><id>` (revokes
    /// and terminations are keys with a TTL).
    async fn live_ids(&self, kind: &str, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = task_ids
            .iter()
            .map(|id| format!("{}{kind}{id}", self.opts.prefix))
            .collect();
        let mut conn = self.conn().await?;
        let found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        Ok(task_ids
            .iter()
            .zip(found)
            .filter(|(_, v)| v.is_some())
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// Restores messages whose lease lapsed, at most every few seconds.
    async fn maybe_restore(&self, conn: &mut ConnectionManager) -> Result<(), BrokerError> {
        let every = (self.opts.visibility_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(10));
        {
            let mut last = self.last_restore.lock();
            if last.is_some_and(|t| t.elapsed() < every) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let [unacked, index, claims, _, _] = self.bookkeeping();
        let cutoff = unix_now() - self.opts.visibility_timeout.as_secs_f64();
        let restored: i64 = self
            .scripts
            .restore
            .key(unacked)
            .key(index)
            .key(claims)
            .key(self.key("unacked_mutex"))
            .arg(cutoff)
            .arg(1000)
            .arg(&self.opts.prefix)
            .arg(SEP)
            .invoke_async(conn)
            .await
            .map_err(conn_err)?;
        if restored > 0 {
            tracing::warn!(
                restored,
                "restored messages whose lease lapsed (their worker died or stalled)"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for RedisBroker {
    fn url(&self) -> String {
        self.opts.redacted.clone()
    }

    fn lease(&self) -> Duration {
        self.opts.visibility_timeout
    }

    fn batch_settles(&self) -> bool {
        true
    }

    async fn publish(&self, msg: Outgoing) -> Result<(), BrokerError> {
        self.publish_batch(vec![msg]).await
    }

    async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<(), BrokerError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        let now = unix_now();
        for m in &msgs {
            let list = self.list_key(&m.queue, m.priority);
            match m.eta {
                Some(at) if at > now => {
                    let payload = String::from_utf8_lossy(&m.payload);
                    let item = serde_json::json!({"k": list, "m": payload}).to_string();
                    pipe.zadd(self.key("celeriac.delayed"), item, at).ignore();
                }
                _ => {
                    pipe.lpush(list, &m.payload).ignore();
                }
            }
        }
        pipe.query_async::<()>(&mut conn).await.map_err(conn_err)
    }

    async fn claim(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let mut conn = self.conn().await?;
        for q in queues {
            self.bind(&mut conn, q).await?;
        }
        self.ensure_pidbox(&conn);
        let deadline = Instant::now() + timeout;
        // The first queue's default list is watched with a blocking wait;
        // the others are checked by the claim after each wait.
        let watched = queues.first().map(|q| self.list_key(q, 0));
        loop {
            self.maybe_restore(&mut conn).await?;
            let token = format!("{consumer}:{}", uuid::Uuid::new_v4().simple());
            let mut inv = self.scripts.claim.prepare_invoke();
            for k in self.bookkeeping() {
                inv.key(k);
            }
            inv.arg(unix_now())
                .arg(max.clamp(1, MAX_BATCH))
                .arg(&token)
                .arg(&self.opts.prefix);
            for s in PRIORITY_STEPS {
                for q in queues {
                    inv.key(self.list_key(q, s));
                    inv.arg(q);
                }
            }
            let raw: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
            if !raw.is_empty() {
                let mut out = Vec::with_capacity(raw.len() / 5);
                for chunk in raw.chunks(5) {
                    let queue: String =
                        redis::from_redis_value_ref(&chunk[0]).map_err(BrokerError::storage)?;
                    let payload: Vec<u8> =
                        redis::from_redis_value_ref(&chunk[1]).map_err(BrokerError::storage)?;
                    let tag: String =
                        redis::from_redis_value_ref(&chunk[2]).map_err(BrokerError::storage)?;
                    let count: u32 =
                        redis::from_redis_value_ref(&chunk[3]).map_err(BrokerError::storage)?;
                    let revoked: i64 =
                        redis::from_redis_value_ref(&chunk[4]).map_err(BrokerError::storage)?;
                    let redelivered = count > 1 || payload_redelivered(&payload);
                    out.push(Delivery {
                        tag: format!("{tag}#{token}"),
                        queue,
                        payload,
                        deliveries: count,
                        redelivered,
                        revoked: revoked == 1,
                    });
                }
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wait = (deadline - now).min(crate::conn::BLOCK_FOR);
            match &watched {
                Some(list) => self.wait_for(list, wait).await?,
                None => tokio::time::sleep(wait).await,
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        match self.ack_many(std::slice::from_ref(delivery)).await?[..] {
            [true] => Ok(()),
            _ => Err(BrokerError::NotHeld(delivery.tag.clone())),
        }
    }

    async fn ack_many(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, BrokerError> {
        let mut held = Vec::with_capacity(deliveries.len());
        if deliveries.is_empty() {
            return Ok(held);
        }
        let mut conn = self.conn().await?;
        let [unacked, index, claims, deliveries_key, _] = self.bookkeeping();
        for chunk in deliveries.chunks(MAX_BATCH) {
            // A tag without a token was never ours: it is not held.
            let tags: Vec<Option<(&str, &str)>> =
                chunk.iter().map(|d| split_tag(&d.tag).ok()).collect();
            let mut inv = self.scripts.ack.prepare_invoke();
            inv.key(&unacked)
                .key(&index)
                .key(&claims)
                .key(&deliveries_key);
            for (tag, token) in tags.iter().flatten() {
                inv.arg(*tag).arg(*token);
            }
            let done: Vec<i64> = if tags.iter().any(Option::is_some) {
                inv.invoke_async(&mut conn).await.map_err(conn_err)?
            } else {
                Vec::new()
            };
            let mut done = done.into_iter();
            held.extend(tags.iter().map(|t| t.is_some() && done.next() == Some(1)));
        }
        Ok(held)
    }

    async fn renew(&self, deliveries: &[Delivery]) -> Result<(), BrokerError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let [_, index, claims, _, _] = self.bookkeeping();
        let mut inv = self.scripts.renew.key(index);
        inv.key(claims).arg(unix_now());
        for d in deliveries {
            let (tag, token) = split_tag(&d.tag)?;
            inv.arg(tag).arg(token);
        }
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
        Ok(())
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        not_before: Option<f64>,
    ) -> Result<(), BrokerError> {
        let (tag, token) = split_tag(&delivery.tag)?;
        let mut conn = self.conn().await?;
        let [unacked, index, claims, _, delayed] = self.bookkeeping();
        let priority = payload_priority(&delivery.payload);
        let at = not_before.filter(|t| *t > unix_now()).unwrap_or(0.0);
        let done: i64 = self
            .scripts
            .requeue
            .key(unacked)
            .key(index)
            .key(claims)
            .key(delayed)
            .key(self.list_key(&delivery.queue, priority))
            .arg(tag)
            .arg(token)
            .arg(&delivery.payload)
            .arg(at)
            .invoke_async(&mut conn)
            .await
            .map_err(conn_err)?;
        if done == 0 {
            return Err(BrokerError::NotHeld(delivery.tag.clone()));
        }
        Ok(())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for s in PRIORITY_STEPS {
            pipe.llen(self.list_key(queue, s));
        }
        let lens: Vec<usize> = pipe.query_async(&mut conn).await.map_err(conn_err)?;
        let delayed: Vec<String> = conn
            .zrange(self.key("celeriac.delayed"), 0, -1)
            .await
            .map_err(conn_err)?;
        let keys: Vec<String> = PRIORITY_STEPS
            .iter()
            .map(|s| self.list_key(queue, *s))
            .collect();
        let waiting = delayed
            .iter()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter(|v| v["k"].as_str().is_some_and(|k| keys.iter().any(|x| x == k)))
            .count();
        Ok(lens.iter().sum::<usize>() + waiting)
    }
}

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let (tag, token) = split_tag(&delivery.tag)?;
        let mut conn = self.conn().await?;
        let [unacked, index, claims, deliveries, _] = self.bookkeeping();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = serde_json::json!({
            "id": id, "queue": delivery.queue, "reason": reason, "failed_at": unix_now(),
        })
        .to_string();
        let done: i64 = self
            .scripts
            .dead_letter
            .key(unacked)
            .key(index)
            .key(claims)
            .key(deliveries)
            .key(self.key("celeriac.dlq"))
            .key(self.key("celeriac.dlq.payloads"))
            .arg(tag)
            .arg(token)
            .arg(record)
            .arg(&id)
            .arg(&delivery.payload)
            .invoke_async(&mut conn)
            .await
            .map_err(conn_err)?;
        if done == 0 {
            return Err(BrokerError::NotHeld(delivery.tag.clone()));
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut conn = self.conn().await?;
        let records: Vec<String> = conn
            .lrange(
                self.key("celeriac.dlq"),
                0,
                limit.saturating_sub(1) as isize,
            )
            .await
            .map_err(conn_err)?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r) else {
                continue;
            };
            let id = v["id"].as_str().unwrap_or_default().to_string();
            let payload: Option<Vec<u8>> = conn
                .hget(self.key("celeriac.dlq.payloads"), &id)
                .await
                .map_err(conn_err)?;
            out.push(DeadLetter {
                id,
                queue: v["queue"].as_str().unwrap_or_default().to_string(),
                reason: v["reason"].as_str().unwrap_or_default().to_string(),
                failed_at: v["failed_at"].as_f64().unwrap_or_default(),
                payload: payload.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn requeue_dead_letter(&self, id: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn().await?;
        let records: Vec<String> = conn
            .lrange(self.key("celeriac.dlq"), 0, -1)
            .await
            .map_err(conn_err)?;
        for r in records {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r) else {
                continue;
            };
            if v["id"].as_str() != Some(id) {
                continue;
            }
            let removed: i64 = conn
                .lrem(self.key("celeriac.dlq"), 1, &r)
                .await
                .map_err(conn_err)?;
            if removed == 0 {
                return Ok(false);
            }
            let payloads = self.key("celeriac.dlq.payloads");
            let payload: Option<Vec<u8>> = conn.hget(&payloads, id).await.map_err(conn_err)?;
            let payload = payload.unwrap_or_default();
            let queue = v["queue"].as_str().unwrap_or("celery");
            let list = self.list_key(queue, payload_priority(&payload));
            redis::pipe()
                .lpush(list, &payload)
                .ignore()
                .hdel(payloads, id)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(conn_err)?;
            return Ok(true);
        }
        Ok(false)
    }
}

#[async_trait]
impl Revocations for RedisBroker {
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        revoke_keys(
            &mut self.conn().await?,
            &self.opts.prefix,
            task_ids,
            ttl,
            false,
        )
        .await
    }

    async fn revoke_terminate(
        &self,
        task_ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        revoke_keys(
            &mut self.conn().await?,
            &self.opts.prefix,
            task_ids,
            ttl,
            true,
        )
        .await
    }

    async fn terminations(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        self.live_ids("celeriac.terminate.", task_ids).await
    }

    async fn revoked(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError> {
        self.live_ids("celeriac.revoked.", task_ids).await
    }
}

#[async_trait]
impl RateLimits for RedisBroker {
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError> {
        let mut conn = self.conn().await?;
        let wait: String = self
            .scripts
            .rate
            .key(self.key(key))
            .arg(unix_now())
            .arg(interval)
            .invoke_async(&mut conn)
            .await
            .map_err(conn_err)?;
        Ok(wait.parse().unwrap_or(0.0))
    }
}

#[async_trait]
impl Nodes for RedisBroker {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let doc = serde_json::json!({
            "name": node.name, "concurrency": node.concurrency, "pid": node.pid, "last_seen": node.last_seen,
        })
        .to_string();
        let _: () = conn
            .set_ex(self.key(&format!("celeriac.node.{}", node.name)), doc, 60)
            .await
            .map_err(conn_err)?;
        Ok(())
    }

    async fn node_gone(&self, name: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let _: i64 = conn
            .del(self.key(&format!("celeriac.node.{name}")))
            .await
            .map_err(conn_err)?;
        Ok(())
    }

    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}celeriac.node.*", self.opts.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(conn_err)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<Option<String>> = conn.mget(&keys).await.map_err(conn_err)?;
        let cutoff = unix_now() - max_age.as_secs_f64();
        let mut out: Vec<NodeInfo> = docs
            .into_iter()
            .flatten()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .filter(|v| v["last_seen"].as_f64().unwrap_or(0.0) >= cutoff)
            .map(|v| NodeInfo {
                name: v["name"].as_str().unwrap_or_default().to_string(),
                concurrency: v["concurrency"].as_u64().unwrap_or(0) as usize,
                pid: v["pid"].as_u64().unwrap_or(0) as u32,
                last_seen: v["last_seen"].as_f64().unwrap_or(0.0),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// `properties.priority` of an envelope, or 0.
fn payload_priority(payload: &[u8]) -> u8 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["properties"]["priority"].as_u64())
        .map_or(0, |p| p.min(9) as u8)
}

/// Whether kombu marked the envelope `redelivered` when restoring it.
fn payload_redelivered(payload: &[u8]) -> bool {
    // Cheap pre-check before parsing.
    if !payload.windows(11).any(|w| w == b"redelivered") {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .is_some_and(|v| v["headers"]["redelivered"] == serde_json::Value::Bool(true))
}
