//! What a worker tells about itself over remote control, in the shapes
//! `celery inspect` and Flower read: `stats` (with `rusage` from
//! `/proc/self`), `conf`, `report`, `active_queues` and `registered`.

use celeriac_core::PoolKind;
use serde_json::{Map, Value, json};

use crate::worker::{Inner, Worker};

/// Celery's `stats` reply.
pub(crate) fn stats(worker: &Worker) -> Value {
    let inner = worker.inner();
    let concurrency = worker.concurrency();
    let mut total = Map::new();
    let mut totals: Vec<(String, u64)> = inner.control.requests.totals().into_iter().collect();
    totals.sort();
    for (name, n) in totals {
        total.insert(name, json!(n));
    }
    json!({
        "total": total,
        "pid": std::process::id(),
        "clock": inner.control.clock().to_string(),
        "uptime": inner.control.uptime().as_secs_f64().round() as u64,
        "pool": pool(worker, concurrency),
        "broker": broker(&inner.broker.url()),
        "prefetch_count": inner.broker.prefetch().unwrap_or(concurrency * inner.slots.prefetch()),
        "rusage": rusage(),
    })
}

fn pool(worker: &Worker, concurrency: usize) -> Value {
    let inner = worker.inner();
    let kind = worker.pool_kind();
    let implementation = match kind {
        PoolKind::Processes => "celeriac.pool:ProcessPool",
        PoolKind::Async => "celeriac.pool:AsyncExecutor",
        _ => "celeriac.pool:ThreadPool",
    };
    let mut processes: Vec<u32> = worker.child_pids();
    if processes.is_empty() {
        processes.push(std::process::id());
    }
    let secs = |d: Option<std::time::Duration>| d.map_or(json!(0), |d| json!(d.as_secs_f64()));
    let mut out = json!({
        "implementation": implementation,
        "max-concurrency": concurrency,
        "processes": processes,
        "max-tasks-per-child": inner.executors.max_tasks_per_child().map_or(json!("N/A"), |n| json!(n)),
        "put-guarded-by-semaphore": false,
        "timeouts": [secs(inner.config.soft_time_limit), secs(inner.config.time_limit)],
    });
    if kind != PoolKind::Processes {
        out["threads"] = json!(concurrency);
    }
    out
}

/// kombu's `Connection.info()` of a broker URL (whose password is already
/// redacted).
pub(crate) fn broker(url: &str) -> Value {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let transport = match scheme {
        "rediss" | "redis+unix" => "redis",
        s => s,
    };
    let (authority, path) = match scheme {
        "sqlite" | "memory" => ("", rest),
        _ => rest.split_once('/').unwrap_or((rest, "")),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.split(':').next().filter(|u| !u.is_empty()), h),
        None => (None, authority),
    };
    let (hostname, port) = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
        _ => (host, None),
    };
    let path = path.split('?').next().unwrap_or_default();
    json!({
        "hostname": if hostname.is_empty() { Value::Null } else { json!(hostname) },
        "userid": user,
        "virtual_host": match scheme {
            "sqlite" | "memory" => json!(path),
            // kombu's default vhost is "/", written `%2F` in a URL.
            "amqp" | "amqps" if path.is_empty() => json!("/"),
            "amqp" | "amqps" => json!(path.replace("%2F", "/").replace("%2f", "/")),
            _ if path.is_empty() => json!("0"),
            _ => json!(path),
        },
        "port": port,
        "insist": false,
        "ssl": scheme == "rediss" || scheme == "amqps",
        "transport": transport,
        "connect_timeout": 4,
        "transport_options": {},
        "login_method": null,
        "uri_prefix": null,
        "heartbeat": 120.0,
        "failover_strategy": "round-robin",
        "alternates": [],
        "credential_provider": null,
    })
}

/// `getrusage(RUSAGE_SELF)` as Celery reports it, read from `/proc/self`
/// (zeros where the platform has no such file).
fn rusage() -> Value {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // state is field 3; minflt 10, majflt 12, utime 14, stime 15.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = 100.0; // USER_HZ on Linux
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let status_kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let io_blocks = |key: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(0, |b| b / 512)
    };
    json!({
        "utime": field(14) as f64 / ticks,
        "stime": field(15) as f64 / ticks,
        "maxrss": status_kb("VmHWM:"),
        "ixrss": 0,
        "idrss": 0,
        "isrss": 0,
        "minflt": field(10),
        "majflt": field(12),
        "nswap": 0,
        "inblock": io_blocks("read_bytes:"),
        "oublock": io_blocks("write_bytes:"),
        "msgsnd": 0,
        "msgrcv": 0,
        "nsignals": 0,
        "nvcsw": status_kb("voluntary_ctxt_switches:"),
        "nivcsw": status_kb("nonvoluntary_ctxt_switches:"),
    })
}

/// The worker's settings under Celery's names (`conf`); passwords are
/// redacted by the broker and backend URLs themselves.
pub(crate) fn conf(worker: &Worker) -> Value {
    let inner = worker.inner();
    let c = &inner.config;
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    json!({
        "broker_url": inner.broker.url(),
        "result_backend": inner.backend.url(),
        "worker_concurrency": worker.concurrency(),
        "worker_pool": worker.pool_kind().to_string(),
        "worker_prefetch_multiplier": inner.slots.prefetch(),
        "worker_max_tasks_per_child": inner.executors.max_tasks_per_child(),
        "task_queues": inner.control.queues().as_slice(),
        "task_time_limit": secs(c.time_limit),
        "task_soft_time_limit": secs(c.soft_time_limit),
        "result_extended": c.result_extended,
        "worker_send_task_events": c.events_enabled.load(std::sync::atomic::Ordering::Relaxed),
        "worker_autoscaler": inner.control.autoscale().map(|(min, max)| format!("{max},{min}")),
    })
}

/// Celery's `report`: a bug-report header.
pub(crate) fn report(inner: &Inner) -> String {
    let url = inner.broker.url();
    let transport = url.split("://").next().unwrap_or_default();
    format!(
        "\nsoftware -> celeriac:{} (rust)\nplatform -> system:{} arch:{}\nloader   -> celeriac\nsettings -> transport:{transport} results:{}\n\nbroker_url: '{url}'\nresult_backend: '{}'\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        inner.backend.url(),
        inner.backend.url(),
    )
}

/// kombu's `Queue.as_dict(recurse=True)` of each queue consumed: a direct
/// exchange of the queue's name, as Celery declares a queue by default.
pub(crate) fn active_queues(inner: &Inner) -> Value {
    Value::Array(
        inner
            .control
            .queues()
            .iter()
            .map(|q| {
                json!({
                    "name": q,
                    "exchange": {
                        "name": q, "type": "direct", "arguments": null, "durable": true,
                        "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false,
                    },
                    "routing_key": q,
                    "queue_arguments": null,
                    "binding_arguments": null,
                    "consumer_arguments": null,
                    "durable": true,
                    "exclusive": false,
                    "auto_delete": false,
                    "no_ack": false,
                    "alias": null,
                    "bindings": [],
                    "no_declare": null,
                    "expires": null,
                    "message_ttl": null,
                    "max_length": null,
                    "max_length_bytes": null,
                    "max_priority": null,
                })
            })
            .collect(),
    )
}

/// The task attributes `registered` shows by default.
const DEFAULT_TASK_INFO_ITEMS: [&str; 3] = ["exchange", "routing_key", "rate_limit"];

/// Celery's `registered`: sorted names, `celery.*` only with `builtins`,
/// each followed by the attributes named in `items` that are set (only
/// `rate_limit` can be), as `"tasks.add [rate_limit=10/m]"`.
pub(crate) fn registered(inner: &Inner, items: &[String], builtins: bool) -> Value {
    let items: Vec<&str> = if items.is_empty() {
        DEFAULT_TASK_INFO_ITEMS.to_vec()
    } else {
        items
            .iter()
            .map(String::as_str)
            .filter(|i| !i.starts_with('_'))
            .collect()
    };
    let mut names: Vec<&str> = inner.registry.names();
    if builtins {
        names.extend(inner.celery_tasks.names());
        names.sort_unstable();
        names.dedup();
    } else {
        names.retain(|n| !n.starts_with("celery."));
    }
    Value::Array(
        names
            .into_iter()
            .map(|name| {
                let rate = inner.control.rate_limit_text(name).or_else(|| {
                    inner
                        .config
                        .rate_limits
                        .get(name)
                        .copied()
                        .or_else(|| inner.registry.get(name).and_then(|t| t.options().rate()))
                        .map(|r| r.to_string())
                });
                match rate.filter(|_| items.contains(&"rate_limit")) {
                    Some(r) => json!(format!("{name} [rate_limit={r}]")),
                    None => json!(name),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_info_reads_the_url_as_kombu_does() {
        let b = broker("redis://:***@127.0.0.1:16399/3");
        assert_eq!(b["hostname"], "127.0.0.1");
        assert_eq!(b["port"], 16399);
        assert_eq!(b["virtual_host"], "3");
        assert_eq!(b["transport"], "redis");
        assert_eq!(b["userid"], Value::Null);
        let b = broker("rediss://user:***@host/0?ssl_cert_reqs=none");
        assert_eq!(
            (b["ssl"].clone(), b["userid"].clone()),
            (json!(true), json!("user"))
        );
        assert_eq!(b["virtual_host"], "0");
        let b = broker("sqlite:///tmp/x.db");
        assert_eq!(b["transport"], "sqlite");
        assert_eq!(b["virtual_host"], "/tmp/x.db");
        assert_eq!(b["hostname"], Value::Null);
        let b = broker("amqps://guest:***@rabbit:5671/t7");
        assert_eq!(
            (
                b["ssl"].clone(),
                b["virtual_host"].clone(),
                b["transport"].clone()
            ),
            (json!(true), json!("t7"), json!("amqps"))
        );
        assert_eq!(broker("amqp://rabbit:5672")["virtual_host"], "/");
        assert_eq!(broker("amqp://rabbit:5672/%2F")["virtual_host"], "/");
        assert_eq!(broker("amqp://rabbit:5672/")["ssl"], false);
    }

    #[test]
    fn rusage_has_every_field_celery_reports() {
        let r = rusage();
        for k in [
            "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap",
            "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
        ] {
            assert!(r.get(k).is_some_and(Value::is_number), "{k}: {r}");
        }
        if cfg!(target_os = "linux") {
            assert!(r["maxrss"].as_u64().unwrap() > 0, "{r}");
        }
    }
}
