//! `celeriac-bench report`: merges JSON lines (celeriac's, the Python
//! peers', `redis_ceiling.sh`'s) into one Markdown table per workload, with
//! celeriac beside the peers and the ratios that mean something.
//!
//! When a figure appears more than once (files concatenated from several
//! runs), the last line wins. A missing figure is shown as `–`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::emit::fmt_value;

/// Parsed JSON lines.
#[derive(Debug, Default)]
struct Rows(Vec<Value>);

/// A filter on one row: workload, system, metric, then `key = value` pairs.
type Extra<'a> = &'a [(&'a str, Value)];

impl Rows {
    fn load(files: &[impl AsRef<Path>]) -> Result<Self> {
        let mut rows = Vec::new();
        for f in files {
            let f = f.as_ref();
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            rows.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with('{'))
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
        }
        Ok(Rows(rows))
    }

    /// The last row matching the filter.
    fn find(&self, workload: &str, system: &str, metric: &str, extra: Extra<'_>) -> Option<&Value> {
        self.0.iter().rev().find(|r| {
            r["workload"] == workload
                && r["system"] == system
                && r["metric"] == metric
                && extra.iter().all(|(k, v)| &r[*k] == v)
        })
    }

    /// The value of the last matching row.
    fn value(&self, workload: &str, system: &str, metric: &str, extra: Extra<'_>) -> Option<f64> {
        self.find(workload, system, metric, extra)?["value"].as_f64()
    }

    /// Systems with lines for `workload`, in first-seen order, celeriac's
    /// first.
    fn systems(&self, workload: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.0 {
            if r["workload"] == workload
                && let Some(s) = r["system"].as_str()
                && !out.iter().any(|o| o == s)
            {
                out.push(s.to_string());
            }
        }
        out.sort_by_key(|s| !s.starts_with("celeriac") && !s.starts_with("rust"));
        out
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), fmt_value)
}

fn ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}×")
            } else {
                format!("{r:.2}×")
            }
        }
        _ => "–".into(),
    }
}

fn percent(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}%", 100.0 * a / b),
        _ => "–".into(),
    }
}

fn int(r: Option<&Value>, key: &str) -> String {
    r.and_then(|r| r[key].as_u64())
        .map_or_else(|| "–".into(), |v| v.to_string())
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

/// The Celery figure a system is compared with: Celery prefork on the
/// same broker (`-amqp` systems ran on RabbitMQ).
fn peer(system: &str, redis: Option<f64>, amqp: Option<f64>) -> Option<f64> {
    if system.ends_with("-amqp") {
        amqp
    } else {
        redis
    }
}

/// Whether a W1/W2 system ran on the SQLite file broker (it gets a table of
/// its own: the Redis ratios mean nothing for it).
fn on_sqlite(system: &str) -> bool {
    system.contains("-sqlite-")
}

fn w1(rows: &Rows, out: &mut String) {
    let systems: Vec<String> = rows
        .systems("W1")
        .into_iter()
        .filter(|s| !on_sqlite(s))
        .collect();
    if systems.is_empty() {
        return;
    }
    let lpush = |p: u64| {
        rows.value(
            "W5",
            "redis",
            "ops_per_s",
            &[("command", "LPUSH".into()), ("pipeline", p.into())],
        )
    };
    let (p1, p32) = (lpush(1), lpush(32));
    let celery = rows.value("W1", "celery-prefork", "throughput", &[]);
    let celery_amqp = rows.value("W1", "celery-prefork-amqp", "throughput", &[]);
    let _ = writeln!(
        out,
        "## W1: broker throughput through Redis\n\n\
         No-op `celeriac.add` tasks with results stored, through one private \
         Redis, to a worker process of concurrency 2. End-to-end is first send \
         to last result present. RSS is the worker's process tree (parent and \
         children): idle after warm-up, peak sampled during W1 (celeriac also \
         reports the summed VmHWM in its JSON line). Systems ending in \
         `-amqp` use a private RabbitMQ as the broker (results still in \
         Redis) and are compared with `celery-prefork-amqp`; the LPUSH \
         columns are Redis's and do not apply to them.\n"
    );
    let body: Vec<Vec<String>> = systems
        .iter()
        .map(|s| {
            let tp = rows.find("W1", s, "throughput", &[]);
            let e2e = rows.value("W1", s, "throughput", &[]);
            vec![
                format!("`{s}`"),
                int(tp, "n"),
                cell(rows.value("W1", s, "enqueue_rate", &[])),
                cell(e2e),
                ratio(e2e, peer(s, celery, celery_amqp)),
                percent(e2e, p1),
                percent(e2e, p32),
                cell(rows.value("W1", s, "rss_idle", &[])),
                cell(rows.value("W1", s, "rss_peak", &[])),
            ]
        })
        .collect();
    table(
        out,
        &[
            "system",
            "n",
            "enqueue tasks/s",
            "end-to-end tasks/s",
            "÷ celery-prefork",
            "% of LPUSH -P 1",
            "% of LPUSH -P 32",
            "idle RSS MiB",
            "peak RSS MiB",
        ],
        &body,
    );
}

fn w2(rows: &Rows, out: &mut String) {
    let systems: Vec<String> = rows
        .systems("W2")
        .into_iter()
        .filter(|s| !on_sqlite(s))
        .collect();
    if systems.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## W2: round-trip latency\n\n\
         Sequential send → result of one `celeriac.add` at a time, same worker \
         as W1. `celery-prefork p50 ÷ p50` is Celery prefork's p50 divided \
         by this system's (higher is faster); `p50 ÷ RTT` is the p50 in \
         units of one Redis round trip (a single client's `PING`, W5), the \
         machine's floor: a task's round trip needs several.\n"
    );
    let celery = rows.value("W2", "celery-prefork", "latency_p50", &[]);
    let celery_amqp = rows.value("W2", "celery-prefork-amqp", "latency_p50", &[]);
    let rtt = rows.value("W5", "redis", "ping_rtt_p50", &[]);
    let body: Vec<Vec<String>> = systems
        .iter()
        .map(|s| {
            let p50 = rows.value("W2", s, "latency_p50", &[]);
            vec![
                format!("`{s}`"),
                int(rows.find("W2", s, "latency_p50", &[]), "n"),
                cell(p50),
                cell(rows.value("W2", s, "latency_p90", &[])),
                cell(rows.value("W2", s, "latency_p99", &[])),
                ratio(peer(s, celery, celery_amqp), p50),
                ratio(p50, rtt),
            ]
        })
        .collect();
    table(
        out,
        &[
            "system",
            "n",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "celery-prefork p50 ÷ p50",
            "p50 ÷ RTT",
        ],
        &body,
    );
}

/// W1 and W2 through the default `sqlite://` broker, beside the same
/// worker on Redis.
fn sqlite(rows: &Rows, out: &mut String) {
    let systems: Vec<String> = rows
        .systems("W1")
        .into_iter()
        .chain(rows.systems("W2"))
        .filter(|s| on_sqlite(s))
        .fold(Vec::new(), |mut v, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        });
    if systems.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## W1 and W2 on the default broker, `sqlite://`\n\n\
         The same no-op `celeriac.add` tasks and worker as W1/W2, through \
         one SQLite file (the CLI's default broker and result store): the \
         worker is one process, the client (publisher and result watcher) \
         another. `÷ Redis` compares with the same pool on Redis in this \
         run.\n"
    );
    let body: Vec<Vec<String>> = systems
        .iter()
        .map(|s| {
            let redis_twin = format!("celeriac-{}", s.rsplit('-').next().unwrap_or_default());
            let e2e = rows.value("W1", s, "throughput", &[]);
            let p50 = rows.value("W2", s, "latency_p50", &[]);
            vec![
                format!("`{s}`"),
                int(rows.find("W1", s, "throughput", &[]), "n"),
                cell(rows.value("W1", s, "enqueue_rate", &[])),
                cell(e2e),
                ratio(e2e, rows.value("W1", &redis_twin, "throughput", &[])),
                cell(p50),
                cell(rows.value("W2", s, "latency_p99", &[])),
                cell(rows.value("W1", s, "rss_peak", &[])),
            ]
        })
        .collect();
    table(
        out,
        &[
            "system",
            "n",
            "enqueue tasks/s",
            "end-to-end tasks/s",
            "÷ Redis",
            "W2 p50 ms",
            "W2 p99 ms",
            "peak RSS MiB",
        ],
        &body,
    );
}

fn w3(rows: &Rows, out: &mut String) {
    let systems = rows.systems("W3");
    if systems.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## W3: CPU-bound speedup\n\n\
         Naive `fib(k)` × n tasks with 1 and 2 workers, median of runs. \
         Speedup is t(1 worker) ÷ t(2 workers); the target is ≥ 1.9 on 2 \
         cores. The serial rows run in the calling thread. The last \
         column is the ratio of the fastest runs (from the samples), which a \
         busy neighbour skews less; celeriac alternates its 1- and 2-worker \
         runs, the peers run them one after the other. `fib(27)` takes \
         about 0.5 ms in Rust, so celeriac also runs a heavier `fib(32)`.\n"
    );
    // One row per system and fib argument, in first-seen order of the args.
    let mut fibs: Vec<u64> = Vec::new();
    for r in rows.0.iter().filter(|r| r["workload"] == "W3") {
        if let Some(f) = r["fib"].as_u64()
            && !fibs.contains(&f)
        {
            fibs.push(f);
        }
    }
    let mut body = Vec::new();
    for f in &fibs {
        for s in &systems {
            let fib = [("fib", Value::from(*f))];
            let Some(first) = rows.find("W3", s, "seconds", &fib) else {
                continue;
            };
            let w = |n: u64| {
                rows.value(
                    "W3",
                    s,
                    "seconds",
                    &[("fib", Value::from(*f)), ("workers", n.into())],
                )
            };
            // The fastest of the runs' samples.
            let best = |n: u64| {
                rows.find(
                    "W3",
                    s,
                    "seconds",
                    &[("fib", Value::from(*f)), ("workers", n.into())],
                )?["samples"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_f64)
                    .reduce(f64::min)
            };
            body.push(vec![
                format!("`{s}`"),
                format!("fib({f}) × {}", int(Some(first), "n")),
                cell(w(1).map(|t| t * 1e3)),
                cell(w(2).map(|t| t * 1e3)),
                cell(rows.value("W3", s, "speedup", &fib)),
                cell(best(1).zip(best(2)).map(|(a, b)| a / b)),
            ]);
        }
    }
    table(
        out,
        &[
            "system",
            "work",
            "1 worker ms",
            "2 workers ms",
            "speedup (medians)",
            "best-of-runs speedup",
        ],
        &body,
    );
}

/// W4 comparisons: (celeriac system, mode) against (peer system, mode).
const W4_PAIRS: &[(&str, &str, &str, &str)] = &[
    (
        "celeriac-threads",
        "sequential",
        "ThreadPoolExecutor",
        "sequential",
    ),
    (
        "celeriac-threads",
        "pipelined",
        "ThreadPoolExecutor",
        "pipelined",
    ),
    (
        "celeriac-processes",
        "sequential",
        "ProcessPoolExecutor",
        "sequential",
    ),
    ("celeriac-processes", "sequential", "ppft", "sequential"),
    (
        "celeriac-processes",
        "pipelined",
        "multiprocessing.Pool",
        "map_chunksize_1",
    ),
    (
        "celeriac-processes",
        "pipelined",
        "ProcessPoolExecutor",
        "pipelined",
    ),
    ("celeriac-processes", "pipelined", "ppft", "pipelined"),
    (
        "celeriac-processes",
        "pipelined_prefetch8",
        "multiprocessing.Pool",
        "map_chunksize_1",
    ),
    (
        "celeriac-processes",
        "map_chunk_1",
        "multiprocessing.Pool",
        "map_chunksize_1",
    ),
    (
        "celeriac-processes",
        "map_default_chunk",
        "multiprocessing.Pool",
        "map_default_chunksize",
    ),
    ("celeriac-server", "sequential", "ppft", "sequential"),
    ("celeriac-server", "pipelined", "ppft", "pipelined"),
];

fn w4(rows: &Rows, out: &mut String) {
    let systems = rows.systems("W4");
    if systems.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## W4: local per-task overhead\n\n\
         Wall time ÷ n for no-op tasks on 2 workers (µs/task, median of runs). \
         `celeriac-threads` runs raw closures on `ThreadPool`; \
         `celeriac-server` is the pp-style `Server` (whole task path through \
         the in-process broker, `celeriac.echo`); `celeriac-processes` is \
         `ProcessPool` running `celeriac.echo` in child processes.\n"
    );
    let mode = |r: &Value| r["mode"].as_str().unwrap_or("").to_string();
    let us = |s: &str, m: &str| rows.value("W4", s, "per_task_overhead", &[("mode", m.into())]);
    let mut body = Vec::new();
    for (c_sys, c_mode, p_sys, p_mode) in W4_PAIRS {
        let (c, p) = (us(c_sys, c_mode), us(p_sys, p_mode));
        if c.is_none() && p.is_none() {
            continue;
        }
        body.push(vec![
            format!("`{c_sys}` {c_mode}"),
            cell(c),
            format!("`{p_sys}` {p_mode}"),
            cell(p),
            ratio(p, c),
        ]);
    }
    table(
        out,
        &["celeriac", "µs/task", "peer", "µs/task", "peer ÷ celeriac"],
        &body,
    );
    let mut all = Vec::new();
    for s in &systems {
        let mut seen: Vec<String> = Vec::new();
        for r in rows
            .0
            .iter()
            .filter(|r| r["workload"] == "W4" && r["system"] == s.as_str())
        {
            let m = mode(r);
            if seen.contains(&m) {
                continue;
            }
            seen.push(m.clone());
            let last = rows.find("W4", s, "per_task_overhead", &[("mode", m.as_str().into())]);
            all.push(vec![
                format!("`{s}`"),
                m.clone(),
                cell(last.and_then(|r| r["value"].as_f64())),
                int(last, "n"),
            ]);
        }
    }
    let _ = writeln!(out, "All W4 figures:\n");
    table(out, &["system", "mode", "µs/task", "n"], &all);
}

fn w5(rows: &Rows, out: &mut String) {
    if rows.systems("W5").is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## W5: Redis ceiling\n\n\
         `redis-benchmark` against the same private server (50 clients).\n"
    );
    if let Some(rtt) = rows.value("W5", "redis", "ping_rtt_p50", &[]) {
        let _ = writeln!(
            out,
            "One client, one `PING` at a time: p50 round trip {} ms.\n",
            cell(Some(rtt))
        );
    }
    let body: Vec<Vec<String>> = ["LPUSH", "RPOP", "SET", "GET"]
        .iter()
        .map(|cmd| {
            let at = |p: u64| {
                rows.value(
                    "W5",
                    "redis",
                    "ops_per_s",
                    &[("command", (*cmd).into()), ("pipeline", p.into())],
                )
            };
            vec![cmd.to_string(), cell(at(1)), cell(at(32))]
        })
        .collect();
    table(out, &["command", "-P 1 ops/s", "-P 32 ops/s"], &body);
}

fn w6(rows: &Rows, out: &mut String) {
    let systems = rows.systems("W6");
    if systems.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## W6: canvas through Redis\n\n\
         A group of n `celeriac.add`s, and a chord of n adds into one \
         `celeriac.echo` callback, sent by the same Python Celery 5.7 client \
         (`bench/peers/canvas_bench.py`) to a worker of concurrency 2. \
         *drain*: the canvas is published to a queue no worker reads, then \
         moved onto the worker's queue with one `RENAME`; the clock runs from \
         there to the last result (group: every member's; chord: the \
         callback's), so it measures the workers. *live*: the worker \
         consumes while the client publishes, clock from the first send; \
         the Python client's publish rate (last column) bounds it. \
         `celeriac+rust-client` sends the same canvases live with celeriac's \
         own client (the Rust canvas API, `Server::apply`), to the same \
         celeriac worker.\n"
    );
    let celery = |m: &str| rows.value("W6", "celery-prefork", m, &[]);
    let body: Vec<Vec<String>> = systems
        .iter()
        .map(|s| {
            let v = |m: &str| rows.value("W6", s, m, &[]);
            let mut row = vec![
                format!("`{s}`"),
                int(
                    rows.find("W6", s, "group_drain", &[])
                        .or_else(|| rows.find("W6", s, "group_live", &[])),
                    "n",
                ),
            ];
            for m in ["group_drain", "group_live", "chord_drain", "chord_live"] {
                row.push(cell(v(m)));
                row.push(ratio(v(m), celery(m)));
            }
            row.push(cell(
                rows.find("W6", s, "group_live", &[])
                    .and_then(|r| r["client_publish_rate"].as_f64()),
            ));
            row
        })
        .collect();
    table(
        out,
        &[
            "system",
            "n",
            "group drain tasks/s",
            "÷ celery",
            "group live tasks/s",
            "÷ celery",
            "chord drain tasks/s",
            "÷ celery",
            "chord live tasks/s",
            "÷ celery",
            "client publish tasks/s",
        ],
        &body,
    );
}

fn w7(rows: &Rows, out: &mut String) {
    let ours = rows.find("W7", "celeriac-redis", "seconds", &[]);
    let theirs = rows.find("W7", "python-mp-pool", "seconds", &[]);
    if ours.is_none() && theirs.is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "## W7: auto-batched map across the network\n\n\
         n tiny `add`s: `celeriac map --chunk auto` through one private Redis \
         to worker processes (chunk sizes chosen from measured per-item time \
         and round trip), beside Python's local `multiprocessing.Pool(2)\
         .starmap` with default chunks (`bench/peers/automap_bench.py`). \
         Seconds are medians of alternating rounds; the ratio is celeriac's \
         rate over the pool's (issue 17's target: at least 0.3).\n"
    );
    let rate = |r: Option<&Value>| r.and_then(|r| r["rate"].as_f64());
    let secs = |r: Option<&Value>| r.and_then(|r| r["value"].as_f64());
    let chunks = ours
        .and_then(|r| r["chunk_stats"]["chunks"].as_u64())
        .map_or_else(|| "–".into(), |c| c.to_string());
    let body = vec![
        vec![
            "`celeriac-redis`".into(),
            int(ours, "n"),
            int(ours, "worker_processes"),
            chunks,
            cell(secs(ours)),
            cell(rate(ours)),
            ratio(rate(ours), rate(theirs)),
        ],
        vec![
            "`python-mp-pool`".into(),
            int(theirs, "n"),
            "2".into(),
            "default".into(),
            cell(secs(theirs)),
            cell(rate(theirs)),
            "1.00×".into(),
        ],
    ];
    table(
        out,
        &[
            "system",
            "n",
            "processes",
            "chunks",
            "seconds",
            "items/s",
            "÷ Pool.starmap",
        ],
        &body,
    );
}

/// Renders the Markdown report of `rows`.
fn render(rows: &Rows) -> String {
    let mut out = String::new();
    w1(rows, &mut out);
    w2(rows, &mut out);
    sqlite(rows, &mut out);
    w3(rows, &mut out);
    w4(rows, &mut out);
    w5(rows, &mut out);
    w6(rows, &mut out);
    w7(rows, &mut out);
    out
}

/// `celeriac-bench report`: prints the table, and writes it to `markdown`.
pub(crate) fn run(files: &[impl AsRef<Path>], markdown: Option<&Path>) -> Result<()> {
    let rows = Rows::load(files)?;
    let text = render(&rows);
    print!("{text}");
    if let Some(p) = markdown {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
