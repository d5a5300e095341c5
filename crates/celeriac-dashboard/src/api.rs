//! The JSON API under `/api` (documented in `docs/dashboard-api.md`):
//! reads from what the collectors gathered, the live stream, and the
//! actions, each a POST that the auth layer has checked for its CSRF
//! token.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use celeriac_core::ControlRequest;
use celeriac_core::monitor::{Monitor, TaskRow};
use celeriac_core::time::unix_now;
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;

use crate::server::Hub;

/// Tasks `/api/tasks` lists unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;

/// How long an action waits for the workers' replies.
const ACTION_WAIT: Duration = Duration::from_secs(2);

/// How long a revoke is remembered (the CLI's default).
const REVOKE_TTL: Duration = Duration::from_secs(3 * 3600);

type Reply = Result<Json<Value>, (StatusCode, Json<Value>)>;

fn fail(code: StatusCode, error: impl std::fmt::Display) -> (StatusCode, Json<Value>) {
    (code, Json(json!({ "error": error.to_string() })))
}

fn broker_failed(e: impl std::fmt::Display) -> (StatusCode, Json<Value>) {
    tracing::warn!(error = %e, "dashboard: broker");
    fail(StatusCode::BAD_GATEWAY, e)
}

fn monitor(hub: &Hub) -> MutexGuard<'_, Monitor> {
    hub.collected
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn task_json(t: &TaskRow) -> Value {
    json!({
        "id": t.uuid,
        "name": t.name,
        "state": t.state,
        "worker": t.worker,
        "timestamp": t.timestamp,
        "received": t.received,
        "started": t.started,
        "args": t.args,
        "kwargs": t.kwargs,
        "runtime": t.runtime,
        "outcome": t.outcome,
        "retries": t.retries,
        "parent_id": t.parent_id,
        "root_id": t.root_id,
    })
}

fn brief(t: &TaskRow) -> Value {
    json!({"id": t.uuid, "name": t.name, "state": t.state})
}

/// `GET /api/summary`: the broker, counts per state, tasks remembered and
/// the bound, and the chart samples so far.
pub(crate) async fn summary(State(hub): State<Arc<Hub>>) -> Json<Value> {
    let mut out = hub.collected.totals();
    let series: Vec<_> = hub
        .collected
        .series
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    out["broker"] = json!(hub.broker.url());
    out["series"] = json!(series);
    Json(out)
}

/// `GET /api/workers`: every worker seen, by node name.
pub(crate) async fn workers(State(hub): State<Arc<Hub>>) -> Json<Value> {
    let now = unix_now();
    let nodes = hub
        .collected
        .nodes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let m = monitor(&hub);
    let mut names: BTreeSet<&str> = m.workers().map(|w| w.hostname.as_str()).collect();
    names.extend(nodes.keys().map(String::as_str));
    let out: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let w = m.worker(name);
            let n = nodes.get(name);
            json!({
                "hostname": name,
                "online": w.map_or_else(|| n.is_some_and(|n| now - n.replied < 10.0), |w| w.alive(now)),
                "software": w.map(|w| w.software.as_str()),
                "pid": w.map(|w| w.pid),
                "pool": n.map(|n| n.pool.as_str()),
                "concurrency": n.and_then(|n| n.concurrency),
                "queues": n.map(|n| n.queues.clone()).unwrap_or_default(),
                "active": w.map(|w| w.active),
                "processed": w.map(|w| w.processed),
                "loadavg": w.map(|w| w.loadavg.as_str()),
                "heartbeat_freq": w.map(|w| w.freq),
                "last_heartbeat": w.map(|w| w.last_seen),
            })
        })
        .collect();
    Json(json!(out))
}

/// `/api/tasks` filters.
#[derive(Debug, Deserialize)]
pub(crate) struct TaskFilter {
    state: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/tasks?state=FAILURE&name=add&limit=100`: the most recently
/// changed tasks, newest first; `name` matches a part of the name.
pub(crate) async fn tasks(State(hub): State<Arc<Hub>>, Query(f): Query<TaskFilter>) -> Json<Value> {
    let m = monitor(&hub);
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    let state = f.state.filter(|s| !s.is_empty());
    let name = f.name.filter(|s| !s.is_empty());
    let out: Vec<Value> = m
        .recent(usize::MAX)
        .into_iter()
        .filter(|t| {
            state
                .as_deref()
                .is_none_or(|s| t.state.eq_ignore_ascii_case(s))
        })
        .filter(|t| name.as_deref().is_none_or(|n| t.name.contains(n)))
        .take(limit)
        .map(task_json)
        .collect();
    Json(json!(out))
}

/// `GET /api/tasks/{id}`: one task in full: its traceback, parent and
/// children, and the result backend's document when there is a backend.
pub(crate) async fn task(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    let found = {
        let m = monitor(&hub);
        m.task(&id).map(|t| {
            let mut v = task_json(t);
            v["traceback"] = json!(t.traceback);
            v["parent"] = t.parent_id.as_deref().map_or(Value::Null, |p| {
                m.task(p).map_or_else(|| json!({"id": p}), brief)
            });
            v["children"] = json!(m.children(&id).into_iter().map(brief).collect::<Vec<_>>());
            v
        })
    };
    let stored = match &hub.backend {
        Some(b) => match b.get(&id).await {
            Ok(meta) => meta.map(|r| {
                json!({
                    "status": r.status,
                    "result": r.result,
                    "traceback": r.traceback,
                    "date_done": r.date_done,
                    "children": r.children,
                })
            }),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: result backend");
                None
            }
        },
        None => None,
    };
    match (found, stored) {
        (Some(mut v), stored) => {
            v["stored"] = json!(stored);
            Json(v).into_response()
        }
        (None, Some(stored)) => {
            Json(json!({"id": id, "state": stored["status"], "stored": stored})).into_response()
        }
        (None, None) => fail(StatusCode::NOT_FOUND, "no such task").into_response(),
    }
}

/// Queue names remembered at most (the first seen stay).
const MAX_QUEUES: usize = 1000;

/// `GET /api/queues`: each queue seen consumed by a worker or holding
/// dead letters (since the dashboard started), with its depth (waiting
/// and delayed messages) in all and per priority, and its consumers now.
pub(crate) async fn queues(State(hub): State<Arc<Hub>>) -> Reply {
    let mut consumers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, n) in hub
        .collected
        .nodes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        for q in &n.queues {
            consumers.entry(q.clone()).or_default().push(node.clone());
        }
    }
    let dead = hub.broker.dead_letters(1000).await.map_err(broker_failed)?;
    let names: Vec<String> = {
        let mut seen = hub
            .collected
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for q in consumers
            .keys()
            .cloned()
            .chain(dead.into_iter().map(|d| d.queue))
        {
            if seen.len() < MAX_QUEUES {
                seen.insert(q);
            }
        }
        seen.iter().cloned().collect()
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let levels = hub
            .broker
            .queue_len_by_priority(&name)
            .await
            .map_err(broker_failed)?;
        let depth: usize = levels.iter().map(|(_, n)| n).sum();
        let priorities: Vec<Value> = levels
            .into_iter()
            .map(|(p, n)| json!({"priority": p, "depth": n}))
            .collect();
        let nodes = consumers.remove(&name).unwrap_or_default();
        out.push(json!({
            "name": name,
            "depth": depth,
            "priorities": priorities,
            "consumers": nodes,
        }));
    }
    Ok(Json(json!(out)))
}

/// `/api/dlq` options.
#[derive(Debug, Deserialize)]
pub(crate) struct DlqQuery {
    limit: Option<usize>,
}

/// `GET /api/dlq?limit=100`: dead letters, oldest first.
pub(crate) async fn dlq(State(hub): State<Arc<Hub>>, Query(q): Query<DlqQuery>) -> Reply {
    let letters = hub
        .broker
        .dead_letters(q.limit.unwrap_or(DEFAULT_LIMIT))
        .await
        .map_err(broker_failed)?;
    let out: Vec<Value> = letters
        .into_iter()
        .map(|d| {
            let msg = celeriac_core::Message::decode(&d.payload).ok();
            json!({
                "id": d.id,
                "queue": d.queue,
                "reason": d.reason,
                "failed_at": d.failed_at,
                "task": msg.as_ref().map(|m| m.task().to_string()),
                "task_id": msg.as_ref().map(|m| m.id().to_string()),
            })
        })
        .collect();
    Ok(Json(json!(out)))
}

/// `POST /api/dlq/{id}/requeue`.
pub(crate) async fn requeue(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Reply {
    if hub
        .broker
        .requeue_dead_letter(&id)
        .await
        .map_err(broker_failed)?
    {
        tracing::info!(id = %celeriac_core::escape::Escaped(&id), "dashboard: requeued a dead letter");
        Ok(Json(json!({"requeued": id})))
    } else {
        Err(fail(StatusCode::NOT_FOUND, "no dead letter with that id"))
    }
}

/// `POST /api/tasks/{id}/revoke` body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RevokeBody {
    #[serde(default)]
    terminate: bool,
    signal: Option<String>,
}

/// `POST /api/tasks/{id}/revoke`: revoke, or with `terminate` also stop
/// it where it runs.
pub(crate) async fn revoke(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    body: Option<Json<RevokeBody>>,
) -> Reply {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let ids = [id.clone()];
    let done = match (&body.signal, body.terminate) {
        (Some(sig), true) => {
            hub.broker
                .revoke_terminate_with_signal(&ids, REVOKE_TTL, sig)
                .await
        }
        (_, true) => hub.broker.revoke_terminate(&ids, REVOKE_TTL).await,
        (_, false) => hub.broker.revoke(&ids, REVOKE_TTL).await,
    };
    done.map_err(broker_failed)?;
    tracing::info!(id = %celeriac_core::escape::Escaped(&id), terminate = body.terminate, "dashboard: revoked");
    Ok(Json(json!({"revoked": id, "terminate": body.terminate})))
}

/// `POST /api/workers/{node}/pool` body: grow by `grow` or shrink by
/// `shrink` slots.
#[derive(Debug, Deserialize)]
pub(crate) struct PoolBody {
    grow: Option<u64>,
    shrink: Option<u64>,
}

async fn ask(hub: &Hub, req: ControlRequest) -> Reply {
    let method = req.method.clone();
    let replies = hub
        .broker
        .call(req, ACTION_WAIT, None)
        .await
        .map_err(broker_failed)?;
    let mut merged = serde_json::Map::new();
    for r in replies {
        merged.extend(r);
    }
    if merged.is_empty() {
        return Err(fail(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no worker replied to {method}"),
        ));
    }
    Ok(Json(json!({ "replies": merged })))
}

/// `POST /api/workers/{node}/pool`: `pool_grow` or `pool_shrink` on one
/// worker.
pub(crate) async fn pool(
    State(hub): State<Arc<Hub>>,
    Path(node): Path<String>,
    Json(body): Json<PoolBody>,
) -> Reply {
    let req = match (body.grow, body.shrink) {
        (Some(n), None) if n > 0 => ControlRequest::new("pool_grow").arg("n", n),
        (None, Some(n)) if n > 0 => ControlRequest::new("pool_shrink").arg("n", n),
        _ => {
            return Err(fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give one of grow or shrink, a positive count",
            ));
        }
    };
    ask(&hub, req.to_nodes([node])).await
}

/// `POST /api/rate_limit` body.
#[derive(Debug, Deserialize)]
pub(crate) struct RateLimitBody {
    task_name: String,
    rate_limit: String,
    /// Only this worker (default: every worker).
    destination: Option<String>,
}

/// `POST /api/rate_limit`: Celery's `rate_limit` command.
pub(crate) async fn rate_limit(
    State(hub): State<Arc<Hub>>,
    Json(body): Json<RateLimitBody>,
) -> Reply {
    if body.task_name.trim().is_empty() {
        return Err(fail(StatusCode::UNPROCESSABLE_ENTITY, "task_name is empty"));
    }
    let mut req = ControlRequest::new("rate_limit")
        .arg("task_name", body.task_name.as_str())
        .arg("rate_limit", body.rate_limit.as_str());
    if let Some(d) = body.destination.filter(|d| !d.is_empty()) {
        req = req.to_nodes([d]);
    }
    ask(&hub, req).await
}

/// `GET /api/live`: server-sent events, one `sample` a second: the chart
/// sample of that second with counts per state and tasks remembered.
pub(crate) async fn live(
    State(hub): State<Arc<Hub>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, StatusCode> {
    let rx = hub
        .live
        .subscribe()
        .ok_or(StatusCode::SERVICE_UNAVAILABLE)?;
    let stream = BroadcastStream::new(rx).filter_map(|m| {
        // A lagging client skips the samples it missed.
        m.ok()
            .map(|data| Ok(SseEvent::default().event("sample").data(&*data)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
