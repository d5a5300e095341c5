//! `celeriac inspect`, `celeriac control` and `celeriac status`: Celery's
//! remote control from the command line. Requests go to every worker on
//! the broker (celeriac or Python Celery), and the replies are printed as
//! `celery inspect` prints them, or as JSON with `--json`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use celeriac::escape::EscapedLines;
use celeriac::{Broker, ControlRequest};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{Map, Value, json};

use crate::Conn;
use crate::parse::{parse_seconds, queue_name};

/// Exit code when no worker replied (Celery's `EX_UNAVAILABLE`).
const NO_REPLY: u8 = 69;

/// Who is asked, how long to wait, and how replies are printed.
#[derive(Debug, ClapArgs)]
pub(crate) struct Remote {
    /// Only these nodes, comma-separated (e.g. celeriac@host1,w2@host2).
    #[arg(short = 'd', long, value_delimiter = ',', global = true)]
    destination: Vec<String>,
    /// Seconds to wait for the next reply.
    #[arg(short = 't', long, default_value_t = 1.0, value_parser = parse_seconds, global = true)]
    timeout: f64,
    /// Print the replies as one JSON object, `{node: reply}`.
    #[arg(short = 'j', long, global = true)]
    json: bool,
}

/// `celeriac inspect COMMAND`.
#[derive(Debug, ClapArgs)]
pub(crate) struct InspectArgs {
    #[command(subcommand)]
    command: Inspect,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Inspect {
    /// Ping the workers.
    Ping,
    /// Statistics: tasks run, pool, broker, prefetch, resource usage.
    Stats,
    /// The tasks running now.
    Active {
        /// Show the arguments as their repr strings.
        #[arg(long)]
        safe: bool,
    },
    /// The tasks reserved (claimed, waiting for a slot).
    Reserved,
    /// The tasks waiting for their ETA (celeriac workers: the delayed
    /// messages of their queues, which wait in the broker, not in a worker)
    Scheduled,
    /// The registered tasks.
    Registered {
        /// Also show these task attributes (default: rate_limit).
        #[arg(value_name = "ATTR")]
        taskinfoitems: Vec<String>,
    },
    /// The revoked task ids the workers know of.
    Revoked,
    /// The queues consumed.
    ActiveQueues,
    /// The workers' configuration.
    Conf,
    /// Software and settings, for bug reports.
    Report,
    /// The logical clock.
    Clock,
    /// Where these task ids are (active, reserved, scheduled).
    QueryTask {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `celeriac control COMMAND`.
#[derive(Debug, ClapArgs)]
pub(crate) struct ControlArgs {
    #[command(subcommand)]
    command: Control,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Control {
    /// Add N execution slots.
    PoolGrow {
        /// How many.
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Remove N execution slots.
    PoolShrink {
        /// How many.
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Change the autoscale bounds of autoscaling workers.
    Autoscale {
        /// Most slots.
        max: usize,
        /// Fewest slots.
        min: usize,
    },
    /// Set a task's rate limit (10/s, 10/m, 10/h; /w per worker); "" or
    /// 0 removes it.
    RateLimit {
        /// Task name.
        task_name: String,
        /// The rate.
        rate_limit: String,
    },
    /// Set a task's soft and hard time limits, in seconds.
    TimeLimit {
        /// Task name.
        task_name: String,
        /// Soft limit.
        #[arg(value_parser = parse_seconds)]
        soft: f64,
        /// Hard limit.
        #[arg(value_parser = parse_seconds)]
        hard: Option<f64>,
    },
    /// Start consuming a queue.
    AddConsumer {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        queue: String,
    },
    /// Stop consuming a queue.
    CancelConsumer {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        queue: String,
    },
    /// Send task events.
    EnableEvents,
    /// Stop sending task events.
    DisableEvents,
    /// Stop the workers (warm: running tasks finish). They do not reply.
    Shutdown,
}

/// `celeriac status`.
#[derive(Debug, ClapArgs)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    remote: Remote,
}

impl Inspect {
    fn request(&self) -> ControlRequest {
        match self {
            Inspect::Ping => ControlRequest::new("ping"),
            Inspect::Stats => ControlRequest::new("stats"),
            Inspect::Active { safe } => ControlRequest::new("active").arg("safe", *safe),
            Inspect::Reserved => ControlRequest::new("reserved"),
            Inspect::Scheduled => ControlRequest::new("scheduled"),
            Inspect::Registered { taskinfoitems } => {
                ControlRequest::new("registered").arg("taskinfoitems", json!(taskinfoitems))
            }
            Inspect::Revoked => ControlRequest::new("revoked"),
            Inspect::ActiveQueues => ControlRequest::new("active_queues"),
            Inspect::Conf => ControlRequest::new("conf").arg("with_defaults", false),
            Inspect::Report => ControlRequest::new("report"),
            Inspect::Clock => ControlRequest::new("clock"),
            Inspect::QueryTask { ids } => ControlRequest::new("query_task").arg("ids", json!(ids)),
        }
    }
}

impl Control {
    fn request(&self) -> ControlRequest {
        match self {
            Control::PoolGrow { n } => ControlRequest::new("pool_grow").arg("n", *n),
            Control::PoolShrink { n } => ControlRequest::new("pool_shrink").arg("n", *n),
            Control::Autoscale { max, min } => ControlRequest::new("autoscale")
                .arg("max", *max)
                .arg("min", *min),
            Control::RateLimit {
                task_name,
                rate_limit,
            } => ControlRequest::new("rate_limit")
                .arg("task_name", task_name.as_str())
                .arg("rate_limit", rate_limit.as_str()),
            Control::TimeLimit {
                task_name,
                soft,
                hard,
            } => ControlRequest::new("time_limit")
                .arg("task_name", task_name.as_str())
                .arg("soft", *soft)
                .arg("hard", json!(hard)),
            Control::AddConsumer { queue } => ControlRequest::new("add_consumer")
                .arg("queue", queue.as_str())
                .arg("exchange", Value::Null)
                .arg("exchange_type", "direct")
                .arg("routing_key", Value::Null),
            Control::CancelConsumer { queue } => {
                ControlRequest::new("cancel_consumer").arg("queue", queue.as_str())
            }
            Control::EnableEvents => ControlRequest::new("enable_events"),
            Control::DisableEvents => ControlRequest::new("disable_events"),
            Control::Shutdown => ControlRequest::new("shutdown"),
        }
    }
}

pub(crate) fn inspect(conn: &Conn, args: InspectArgs) -> Result<ExitCode> {
    ask(conn, args.command.request(), &args.remote, true)
}

pub(crate) fn control(conn: &Conn, args: ControlArgs) -> Result<ExitCode> {
    ask(conn, args.command.request(), &args.remote, true)
}

pub(crate) fn status(conn: &Conn, args: StatusArgs) -> Result<ExitCode> {
    ask(conn, ControlRequest::new("ping"), &args.remote, false)
}

/// Sends `req`, prints the replies (with their bodies if `show`) and the
/// count of nodes that answered.
fn ask(conn: &Conn, mut req: ControlRequest, remote: &Remote, show: bool) -> Result<ExitCode> {
    check(remote)?;
    if !remote.destination.is_empty() {
        req = req.to_nodes(remote.destination.iter().cloned());
    }
    let timeout = Duration::from_secs_f64(remote.timeout);
    let method = req.method.clone();
    let replies = crate::runtime()?.block_on(async {
        let (broker, _) = conn.open()?;
        let broker: std::sync::Arc<dyn Broker> = broker;
        Ok::<_, anyhow::Error>(broker.call(req, timeout, None).await?)
    })?;
    if replies.is_empty() {
        if method == "shutdown" {
            // Workers do not answer a shutdown.
            println!("shutdown sent");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("Error: No nodes replied within time constraint");
        return Ok(ExitCode::from(NO_REPLY));
    }
    let mut merged = Map::new();
    for r in replies {
        merged.extend(r);
    }
    let failed = merged.values().any(|v| v.get("error").is_some());
    if remote.json {
        println!("{}", Value::Object(merged));
    } else {
        for (node, reply) in &merged {
            let (status, text) = pretty(reply);
            let body = if show {
                format!("\n{}", indent(&text, 4))
            } else {
                String::new()
            };
            println!(
                "->  {}: {status}{}",
                EscapedLines(node),
                EscapedLines(&body)
            );
        }
        let n = merged.len();
        println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Celery's `CLI.pretty`: the status and text of one reply.
fn pretty(reply: &Value) -> (&'static str, String) {
    match reply {
        Value::Array(items) if items.is_empty() => ("OK", "- empty -".into()),
        Value::Array(items) => (
            "OK",
            items
                .iter()
                .map(|i| format!("* {}", scalar(i)))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Object(m) if m.contains_key("ok") => ("OK", indent(&pretty(&m["ok"]).1, 4)),
        Value::Object(m) if m.contains_key("error") => ("ERROR", indent(&pretty(&m["error"]).1, 4)),
        Value::Object(_) => (
            "OK",
            serde_json::to_string_pretty(reply).unwrap_or_default(),
        ),
        other => ("OK", scalar(other)),
    }
}

/// A string as itself, anything else as JSON; `null` as Python's `None`.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Refuses an empty node name in `-d`.
fn check(remote: &Remote) -> Result<()> {
    if remote.destination.iter().any(|d| d.trim().is_empty()) {
        bail!("-d/--destination: a node name is empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_print_as_celery_prints_them() {
        assert_eq!(pretty(&json!({"ok": "pong"})), ("OK", "    pong".into()));
        assert_eq!(
            pretty(&json!({"error": "unknown task"})),
            ("ERROR", "    unknown task".into())
        );
        assert_eq!(pretty(&json!([])), ("OK", "- empty -".into()));
        assert_eq!(pretty(&json!(["a", "b"])), ("OK", "* a\n* b".into()));
        assert_eq!(indent("a\nb", 2), "  a\n  b");
    }
}
