//! The Redis result backend, as Celery's `celery.backends.redis` stores
//! results.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{BackendError, ResultBackend, ResultMeta, ResultWatch, Waiters};
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSubSink};
use redis::{AsyncCommands, Script};
use tokio::sync::OnceCell;

use crate::conn::MAX_BATCH;
use crate::url::{RedisOptions, parse_redis_url};

/// Writes each result unless a SUCCESS is already stored under its key, and
/// publishes it on the channel of the same name. The stored documents are
/// read with one `MGET` (a `redis.call` costs several microseconds in a
/// script); a key written earlier in the same batch counts as stored.
/// KEYS: meta keys. ARGV: ttl, then one json per key. Returns how many
/// were written.
const STORE: &str = r#"
local ttl = tonumber(ARGV[1])
local current = redis.call('MGET', unpack(KEYS))
local written = {}
local n = 0
for i, key in ipairs(KEYS) do
  local json = ARGV[i + 1]
  local cur = written[key] or current[i]
  local done = false
  if cur then
    local ok, d = pcall(cjson.decode, cur)
    done = ok and type(d) == 'table' and d.status == 'SUCCESS'
  end
  if not done then
    if ttl > 0 then
      redis.call('SETEX', key, ttl, json)
    else
      redis.call('SET', key, json)
    end
    redis.call('PUBLISH', key, json)
    written[key] = json
    n = n + 1
  end
end
return n
"#;

const META_PREFIX: &str = "celery-task-meta-";

/// The backend's result subscription, shared with the listener task: the
/// pub/sub sink, the waiters it wakes, and what it needs to rebuild itself
/// after a reconnect (options and client).
#[derive(Debug)]
struct ResultListener {
    opts: RedisOptions,
    client: redis::Client,
    waiters: Waiters,
    sink: Mutex<Option<PubSubSink>>,
    /// Channels of delivered results to unsubscribe from, and whether a
    /// task is already sending them (one UNSUBSCRIBE per batch, not one
    /// per result).
    unsubscribe: Mutex<(Vec<String>, bool)>,
    /// Told when the backend is dropped: the listener stops, and its
    /// subscription closes, without a word.
    closed: tokio::sync::Notify,
}

impl ResultListener {
    fn key(&self, task_id: &str) -> String {
        format!("{}{META_PREFIX}{task_id}", self.opts.prefix)
    }

    fn task_id<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.opts.prefix.as_str())?
            .strip_prefix(META_PREFIX)
    }
}

/// Celery's Redis result backend: `celery-task-meta-<id>` keys written with
/// `SETEX` and `PUBLISH`ed on a channel of the same name.
#[derive(Debug)]
pub struct RedisBackend {
    shared: Arc<ResultListener>,
    conn: OnceCell<ConnectionManager>,
    listener: OnceCell<()>,
    store: Script,
}

pub(crate) fn backend_err(e: redis::RedisError) -> BackendError {
    err(e)
}

fn err(e: redis::RedisError) -> BackendError {
    if crate::conn::is_connection_error(&e) {
        BackendError::connection(e)
    } else {
        BackendError::storage(e)
    }
}

impl RedisBackend {
    /// A backend for a `redis://` URL; connects on first use.
    pub fn open(url: &str) -> Result<Arc<Self>, BackendError> {
        let opts = parse_redis_url(url).map_err(|reason| BackendError::InvalidUrl {
            url: url.split('@').next_back().unwrap_or(url).to_string(),
            reason,
        })?;
        let client = opts.client().map_err(|reason| BackendError::InvalidUrl {
            url: opts.redacted.clone(),
            reason,
        })?;
        Ok(Arc::new(RedisBackend {
            shared: Arc::new(ResultListener {
                opts,
                client,
                waiters: Waiters::default(),
                sink: Mutex::new(None),
                unsubscribe: Mutex::new((Vec::new(), false)),
                closed: tokio::sync::Notify::new(),
            }),
            conn: OnceCell::new(),
            listener: OnceCell::new(),
            store: Script::new(STORE),
        }))
    }

    /// The key prefix (`global_keyprefix`).
    pub(crate) fn prefix(&self) -> &str {
        &self.shared.opts.prefix
    }

    /// How long results are kept, in seconds.
    pub(crate) fn result_expires_secs(&self) -> u64 {
        self.shared.opts.result_expires
    }

    /// The shared connection.
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        self.conn().await
    }

    async fn conn(&self) -> Result<ConnectionManager, BackendError> {
        self.conn
            .get_or_try_init(|| crate::conn::manager(&self.shared.client))
            .await
            .cloned()
            .map_err(
                |e| match crate::conn::not_redis(&e, &self.shared.opts.redacted) {
                    Some(what) => BackendError::connection_in(what, e),
                    None => err(e),
                },
            )
    }

    /// Starts the subscriber task once: it delivers published results to
    /// waiters and, when its connection drops, reconnects, resubscribes to
    /// every pending id and reads their keys, so no result is missed.
    async fn ensure_listener(&self) -> Result<(), BackendError> {
        self.listener
            .get_or_try_init(|| async {
                let (sink, stream) = self
                    .shared
                    .client
                    .get_async_pubsub()
                    .await
                    .map_err(err)?
                    .split();
                *self.shared.sink.lock() = Some(sink);
                tokio::spawn(listen(self.shared.clone(), stream, self.conn().await?));
                Ok::<(), BackendError>(())
            })
            .await
            .map(|_| ())
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // A permit is kept if the listener is not waiting right now.
        self.shared.closed.notify_one();
    }
}

/// Delivers published results to waiters. Two safety nets keep a lost or
/// silently dead subscription from stranding a waiter: every 2 s the keys of
/// all pending ids are read (a watchdog, as Celery's subscriptions can go
/// silent after reconnects), and when the connection drops it reconnects,
/// resubscribes and reads the pending keys at once.
///
/// When the backend is dropped, it serves the watches still waiting, then
/// stops. The loss of the subscription is reported only after a first
/// pause: when the runtime is shutting down (the connection closes with
/// it), the task is dropped during that pause, so a clean exit logs
/// nothing.
async fn listen(
    shared: Arc<ResultListener>,
    stream: redis::aio::PubSubStream,
    conn: ConnectionManager,
) {
    let serve = serve(&shared, stream, conn);
    tokio::pin!(serve);
    tokio::select! {
        _ = shared.closed.notified() => {
            let mut check = tokio::time::interval(Duration::from_millis(200));
            while !shared.waiters.pending_ids().is_empty() {
                tokio::select! {
                    _ = &mut serve => break,
                    _ = check.tick() => {}
                }
            }
        }
        _ = &mut serve => {}
    }
    // Dropping the sink (and the stream, with `serve`) closes the
    // subscription's connection.
    shared.sink.lock().take();
}

async fn serve(
    shared: &Arc<ResultListener>,
    mut stream: redis::aio::PubSubStream,
    mut conn: ConnectionManager,
) {
    let mut watchdog = tokio::time::interval(Duration::from_secs(2));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    deliver(shared, &msg);
                }
                _ = watchdog.tick() => catch_up(shared, &mut conn).await,
            }
        }
        let mut backoff = Duration::from_millis(100);
        let mut reported = false;
        loop {
            tokio::time::sleep(backoff).await;
            if !reported {
                tracing::warn!("result subscription lost; reconnecting");
                reported = true;
            }
            match resubscribe(shared).await {
                Ok(new_stream) => {
                    stream = new_stream;
                    catch_up(shared, &mut conn).await;
                    tracing::info!("result subscription restored");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "result subscriber cannot reconnect");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn deliver(shared: &Arc<ResultListener>, msg: &redis::Msg) {
    let channel = msg.get_channel_name().to_string();
    let Some(id) = shared.task_id(&channel).map(str::to_string) else {
        return;
    };
    let Ok(payload) = msg.get_payload::<String>() else {
        return;
    };
    match serde_json::from_str::<ResultMeta>(&payload) {
        Ok(meta) if meta.status.is_ready() => {
            shared.waiters.notify(&meta);
            let mut pending = shared.unsubscribe.lock();
            pending.0.push(channel);
            if !pending.1 {
                pending.1 = true;
                tokio::spawn(unsubscribe_delivered(shared.clone()));
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(task_id = %celeriac_core::escape::Escaped(&id), error = %e, "malformed result published")
        }
    }
}

/// Unsubscribes from the channels of delivered results, a batch per
/// request, until none are left.
async fn unsubscribe_delivered(shared: Arc<ResultListener>) {
    loop {
        let batch = {
            let mut pending = shared.unsubscribe.lock();
            if pending.0.is_empty() {
                pending.1 = false;
                return;
            }
            std::mem::take(&mut pending.0)
        };
        let sink = shared.sink.lock().clone();
        if let Some(mut sink) = sink {
            // A failure leaves the subscriptions in place: harmless, and the
            // reconnect path resubscribes only to pending ids.
            let _ = sink.unsubscribe(batch).await;
        }
    }
}

/// Reads the stored results of every pending id and wakes their waiters.
async fn catch_up(shared: &ResultListener, conn: &mut ConnectionManager) {
    let pending = shared.waiters.pending_ids();
    if pending.is_empty() {
        return;
    }
    let keys: Vec<String> = pending.iter().map(|id| shared.key(id)).collect();
    let docs: Result<Vec<Option<String>>, _> = conn.mget(&keys).await;
    if let Ok(docs) = docs {
        for raw in docs.into_iter().flatten() {
            if let Ok(meta) = serde_json::from_str::<ResultMeta>(&raw) {
                shared.waiters.notify(&meta);
            }
        }
    }
}

async fn resubscribe(
    shared: &ResultListener,
) -> Result<redis::aio::PubSubStream, redis::RedisError> {
    let (mut sink, stream) = shared.client.get_async_pubsub().await?.split();
    for id in shared.waiters.pending_ids() {
        sink.subscribe(shared.key(&id)).await?;
    }
    *shared.sink.lock() = Some(sink);
    Ok(stream)
}

#[async_trait]
impl ResultBackend for RedisBackend {
    fn url(&self) -> String {
        self.shared.opts.redacted.clone()
    }

    /// False: other processes read results through the Redis server.
    fn is_private(&self) -> bool {
        false
    }

    /// Celery 5.x's native join (see the `chord` module).
    fn chord_join(&self) -> Option<&dyn celeriac_core::ChordJoin> {
        Some(self)
    }

    async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        self.store_many(std::slice::from_ref(meta)).await
    }

    async fn store_many(&self, metas: &[ResultMeta]) -> Result<(), BackendError> {
        if metas.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for chunk in metas.chunks(MAX_BATCH) {
            let mut inv = self.store.prepare_invoke();
            inv.arg(self.shared.opts.result_expires);
            for meta in chunk {
                let json = serde_json::to_string(meta)
                    .map_err(|e| BackendError::Malformed(e.to_string()))?;
                inv.key(self.shared.key(&meta.task_id)).arg(json);
            }
            let _: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        }
        // Waiters in this process are woken through the subscription too,
        // but a direct wake saves the round trip.
        for meta in metas {
            self.shared.waiters.notify(meta);
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = conn.get(self.shared.key(task_id)).await.map_err(err)?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| BackendError::Malformed(e.to_string())))
            .transpose()
    }

    /// Registers the waiter and returns at once: the `SUBSCRIBE` and the
    /// read of the key that closes the race with a result stored before
    /// the subscription run on a task of their own, while the caller
    /// publishes. Neither is a round trip on the caller's path (W2 in
    /// BENCHMARKS.md): whatever order they land in, a result is either
    /// published after the subscription or stored before the read. If
    /// either fails, the listener's watchdog reads the key within 2 s.
    async fn watch(&self, task_id: &str) -> Result<ResultWatch, BackendError> {
        self.ensure_listener().await?;
        let Some(mut sink) = self.shared.sink.lock().clone() else {
            return Err(BackendError::connection_msg(
                "result subscriber is reconnecting",
            ));
        };
        let mut conn = self.conn().await?;
        let rx = self.shared.waiters.register(task_id);
        let key = self.shared.key(task_id);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = sink.subscribe(&key).await {
                tracing::debug!(error = %e, "result subscription failed; the watchdog reads the key");
                return;
            }
            match conn.get::<_, Option<String>>(&key).await {
                Ok(Some(raw)) => match serde_json::from_str::<ResultMeta>(&raw) {
                    Ok(meta) => shared.waiters.notify(&meta),
                    Err(e) => {
                        tracing::warn!(key = %celeriac_core::escape::Escaped(&key), error = %e, "malformed result stored")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "result read failed; the watchdog reads the key")
                }
            }
        });
        Ok(ResultWatch::new(async move {
            rx.await.map_err(|_| BackendError::Closed)
        }))
    }

    async fn watch_many(&self, task_ids: &[String]) -> Result<Vec<ResultWatch>, BackendError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_listener().await?;
        let receivers: Vec<_> = task_ids
            .iter()
            .map(|id| self.shared.waiters.register(id))
            .collect();
        let keys: Vec<String> = task_ids.iter().map(|id| self.shared.key(id)).collect();
        // One SUBSCRIBE for all channels, then one MGET closes the race.
        let sink = self.shared.sink.lock().clone();
        match sink {
            Some(mut s) => s.subscribe(&keys).await.map_err(err)?,
            None => {
                return Err(BackendError::connection_msg(
                    "result subscriber is reconnecting",
                ));
            }
        }
        let mut conn = self.conn().await?;
        let stored: Vec<Option<String>> = conn.mget(&keys).await.map_err(err)?;
        Ok(receivers
            .into_iter()
            .zip(stored)
            .map(|(rx, raw)| {
                let ready = raw
                    .and_then(|r| serde_json::from_str::<ResultMeta>(&r).ok())
                    .filter(|m| m.status.is_ready());
                match ready {
                    Some(meta) => ResultWatch::new(async move { Ok(meta) }),
                    None => {
                        ResultWatch::new(async move { rx.await.map_err(|_| BackendError::Closed) })
                    }
                }
            })
            .collect())
    }

    async fn claim_key(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BackendError> {
        let mut conn = self.conn().await?;
        let k = format!("{}celeriac-idempotency-{key}", self.shared.opts.prefix);
        // SET NX GET: sets the key if absent, and returns the old holder.
        let holder: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(task_id)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(holder)
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let mut conn = self.conn().await?;
        let _: i64 = conn.del(self.shared.key(task_id)).await.map_err(err)?;
        Ok(())
    }

    /// `SETEX celery-taskset-meta-<gid> <result_expires> <meta>` (`SET`
    /// when results never expire) and a `PUBLISH` of it on the same
    /// channel, as Celery's `GroupResult.save`.
    async fn save_group(
        &self,
        group_id: &str,
        meta: &serde_json::Value,
    ) -> Result<(), BackendError> {
        let mut conn = self.conn().await?;
        let k = format!("{}celery-taskset-meta-{group_id}", self.shared.opts.prefix);
        let json = meta.to_string();
        let mut pipe = redis::pipe();
        match self.shared.opts.result_expires {
            0 => pipe.cmd("SET").arg(&k).arg(&json).ignore(),
            ttl => pipe.cmd("SETEX").arg(&k).arg(ttl).arg(&json).ignore(),
        };
        pipe.cmd("PUBLISH")
            .arg(&k)
            .arg(&json)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)
    }

    async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        let mut conn = self.conn().await?;
        let k = format!("{}celery-taskset-meta-{group_id}", self.shared.opts.prefix);
        let raw: Option<String> = conn.get(&k).await.map_err(err)?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| BackendError::Malformed(e.to_string())))
            .transpose()
    }
}
