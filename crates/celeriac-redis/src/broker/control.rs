//! Remote control and the shared registries: revokes (also from Celery's
//! pidbox broadcasts), rate-limit buckets and the node registry.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::REVOKE_TTL;
use celeriac_core::time::unix_now;
use celeriac_core::{BrokerError, NodeInfo, Nodes, RateLimits, Revocations};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::{RedisBroker, conn_err};

impl RedisBroker {
    /// The channel of Celery's remote-control broadcasts (kombu's
    /// `celery.pidbox` fanout exchange) for this broker's database and key
    /// prefix.
    pub(super) fn pidbox_channel(&self) -> String {
        let db = self.client.get_connection_info().redis_settings().db();
        crate::pidbox::channel(&self.opts.prefix, db)
    }

    /// Revokes `task_ids` for every worker, in one round trip: the durable
    /// keys celeriac workers check (for `ttl`, also by workers started
    /// later), then Celery's `revoke` broadcast, which Python workers act
    /// on (`terminate` with `signal` kills the task where it runs).
    async fn revoke_everywhere(
        &self,
        task_ids: &[String],
        ttl: Duration,
        terminate: Option<&str>,
    ) -> Result<(), BrokerError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let prefix = &self.opts.prefix;
        revoke_keys_into(&mut pipe, prefix, task_ids, ttl, terminate.is_some(), false);
        let signal = terminate.unwrap_or(crate::pidbox::TERM_SIGNAME);
        let broadcast = crate::pidbox::revoke(task_ids, terminate.is_some(), signal, unix_now());
        pipe.publish(self.pidbox_channel(), broadcast).ignore();
        pipe.query_async::<()>(&mut self.conn().await?)
            .await
            .map_err(conn_err)
    }
}

#[async_trait]
impl Revocations for RedisBroker {
    /// Records the revoke for celeriac workers and broadcasts it to Python
    /// workers, as `app.control.revoke(ids)` does.
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.revoke_everywhere(task_ids, ttl, None).await
    }

    /// As [`revoke`](Self::revoke), with `terminate=True` and Celery's
    /// default signal, `SIGTERM`.
    async fn revoke_terminate(
        &self,
        task_ids: &[String],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.revoke_everywhere(task_ids, ttl, Some(crate::pidbox::TERM_SIGNAME))
            .await
    }

    /// As [`revoke_terminate`](Self::revoke_terminate); Python workers
    /// terminate with `signal`.
    async fn revoke_terminate_with_signal(
        &self,
        task_ids: &[String],
        ttl: Duration,
        signal: &str,
    ) -> Result<(), BrokerError> {
        self.revoke_everywhere(task_ids, ttl, Some(signal)).await
    }

    /// Only the durable keys celeriac workers check (no broadcast: the
    /// Python workers that told us know already); existing keys are kept.
    async fn merge_revoked(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        revoke_keys(
            &mut self.conn().await?,
            &self.opts.prefix,
            task_ids,
            ttl,
            false,
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

/// Adds to `pipe` the durable revoke keys of `task_ids` (and their
/// terminate keys), each living `ttl`. With `keep_existing`, a key that
/// exists already is left as it is (`SET NX`), with its own TTL.
pub(super) fn revoke_keys_into(
    pipe: &mut redis::Pipeline,
    prefix: &str,
    task_ids: &[String],
    ttl: Duration,
    terminate: bool,
    keep_existing: bool,
) {
    let kinds: &[&str] = if terminate {
        &["celeriac.revoked.", "celeriac.terminate."]
    } else {
        &["celeriac.revoked."]
    };
    for id in task_ids {
        for kind in kinds {
            let set = pipe
                .cmd("SET")
                .arg(format!("{prefix}{kind}{id}"))
                .arg(1)
                .arg("EX")
                .arg(ttl.as_secs().max(1));
            if keep_existing {
                set.arg("NX");
            }
            set.ignore();
        }
    }
}

/// Records a revoke received by remote control. A revoke that celeriac
/// itself broadcast has written its keys already, with the TTL asked for:
/// those are kept.
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
    revoke_keys_into(&mut pipe, prefix, task_ids, ttl, terminate, true);
    pipe.query_async::<()>(conn).await.map_err(conn_err)
}

/// Listens for Celery's pidbox broadcasts and records revokes durably.
/// Reconnects when the subscription drops.
pub(super) async fn pidbox(
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
            let Some(request) = crate::pidbox::decode_request(&payload) else {
                tracing::warn!("ignoring a malformed remote-control message");
                continue;
            };
            if let Some((ids, terminate)) = request.revoke() {
                match revoke_keys(&mut conn, &prefix, &ids, REVOKE_TTL, terminate).await {
                    Ok(()) => tracing::info!(?ids, "revoked by remote control"),
                    Err(e) => tracing::error!(error = %e, ?ids, "could not record a revoke"),
                }
            }
        }
        tracing::warn!("remote-control subscription lost; reconnecting");
    }
}
