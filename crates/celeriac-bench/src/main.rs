//! `celeriac-bench`: the Rust side of celeriac's benchmark suite (issue 6).
//!
//! ```text
//! celeriac-bench run [--quick] [--redis URL | --broker sqlite://PATH] [--only W1,W2,W3,W4] [--pools threads,processes] ...
//! celeriac-bench report FILE.jsonl... [--markdown OUT.md]
//! celeriac-bench canvas-client --redis URL --queue Q --n N --kind group|chord
//! ```
//!
//! `run` prints one JSON line per measurement on stdout, with the keys of
//! the Python peers' lines (`workload, system, metric, value, unit`, then
//! parameters), and a readable log and table on stderr:
//!
//! - **W1** broker throughput through Redis: N `celeriac.add` tasks to a
//!   `celeriac worker -c 2` process, enqueue rate, end-to-end tasks/s, idle
//!   and peak RSS of the worker's process tree; with `--broker
//!   sqlite://PATH`, the same through the default SQLite file broker (the
//!   worker and this client are two processes sharing the file);
//! - **W2** sequential send → result round trips (p50/p90/p99);
//! - **W3** `celeriac.fib(27)` × 32 with 1 and 2 workers, thread and process
//!   pools, seconds and speedup;
//! - **W4** per-task overhead of no-op tasks on the thread pool, the job
//!   server and the process pool.
//!
//! `canvas-client` is W6's celeriac client: a group or chord of n adds
//! sent through the Rust canvas API to the workers of a queue (see
//! `bench/peers/canvas_bench.py`, which runs the Python client's W6).
//!
//! `report` merges JSON lines (ours, the peers', `redis_ceiling.sh`'s) into
//! a Markdown table with celeriac beside the peers. `bench/run.sh` runs the
//! whole suite against one private `redis-server`.

mod canvas_client;
mod emit;
mod local;
mod procfs;
mod redis_bench;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// celeriac's benchmark suite: W1–W4 measurements and the combined report.
#[derive(Debug, Parser)]
#[command(name = "celeriac-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the workloads; JSON lines on stdout, progress on stderr.
    Run(Box<RunArgs>),
    /// Merge JSON lines into a Markdown table (stdout, or --markdown FILE).
    Report {
        /// JSON-lines files (ours, the peers', redis_ceiling.sh's).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write the table to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// W6 with celeriac's client: one group or chord of n adds to the
    /// workers of a queue; one JSON line on stdout.
    CanvasClient {
        /// Broker and result backend URL.
        #[arg(long)]
        redis: String,
        /// The queue the workers consume.
        #[arg(long)]
        queue: String,
        /// Canvas size.
        #[arg(long, default_value_t = 10_000)]
        n: i64,
        /// `group` or `chord`.
        #[arg(long)]
        kind: String,
        /// The system label of the JSON line.
        #[arg(long, default_value = "celeriac+rust-client")]
        system: String,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Small task counts and one run each (a smoke test of the suite).
    #[arg(long)]
    quick: bool,
    /// Redis URL for W1/W2 (use a private server: keys are written).
    #[arg(long, env = "CELERIAC_BENCH_REDIS")]
    redis: Option<String>,
    /// The broker for W1/W2 (default: the --redis URL): `sqlite://PATH`
    /// measures the default file broker (results in the same file, systems
    /// reported as `celeriac-sqlite-<pool>`); an `amqp://` URL measures
    /// RabbitMQ (results in --redis, systems `celeriac-<pool>-amqp`).
    #[arg(long)]
    broker: Option<String>,
    /// Workloads to run, comma-separated (default W1,W2,W3,W4; W1/W2 need
    /// --redis).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Worker pools for W1/W2, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "threads,processes")]
    pools: Vec<String>,
    /// An extra argument for the W1/W2 `celeriac worker` (repeatable), e.g.
    /// `--worker-arg=--prefetch-multiplier=1`.
    #[arg(long, allow_hyphen_values = true)]
    worker_arg: Vec<String>,
    /// W1/W2 worker concurrency (-c).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// The `celeriac` CLI binary (default: next to this binary).
    #[arg(long)]
    celeriac_bin: Option<PathBuf>,
    /// W1 tasks per run (default 20000, quick 5000).
    #[arg(long)]
    n: Option<usize>,
    /// W1 runs (default 3, quick 1).
    #[arg(long)]
    w1_repeat: Option<usize>,
    /// W2 round trips (default 2000, quick 500).
    #[arg(long)]
    latency_n: Option<usize>,
    /// W3 fib argument.
    #[arg(long, default_value_t = 27)]
    fib: u64,
    /// W3: a heavier fib argument also measured (0: none), since fib(27)
    /// takes about 0.5 ms in Rust and a run of 32 only ~15 ms.
    #[arg(long, default_value_t = 32)]
    heavy_fib: u64,
    /// W3 tasks per run (default 32, quick 16).
    #[arg(long)]
    tasks: Option<usize>,
    /// W3 runs per configuration (default 7, quick 3).
    #[arg(long)]
    w3_repeat: Option<usize>,
    /// W4 runs per figure (default 3, quick 1).
    #[arg(long)]
    w4_repeat: Option<usize>,
    /// Write the W1/W2 worker's pid here while it runs (for cleanup by a
    /// wrapper script: the worker leads its own process group).
    #[arg(long)]
    worker_pidfile: Option<PathBuf>,
}

fn main() -> ExitCode {
    // The process pools of W3/W4 re-execute this binary: serve tasks there.
    celeriac::init();
    let cli = Cli::parse();
    let res = match cli.command {
        Cmd::Run(args) => run(*args),
        Cmd::Report { files, markdown } => report::run(&files, markdown.as_deref()),
        Cmd::CanvasClient {
            redis,
            queue,
            n,
            kind,
            system,
        } => canvas_client::run(&canvas_client::CanvasConfig {
            url: redis,
            queue,
            n,
            kind,
            system,
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celeriac-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// On SIGINT/SIGTERM: kill the worker's process group, then exit. The
/// in-process pools' children die with us (`PR_SET_PDEATHSIG`).
fn install_signal_handler(pidfile: Option<PathBuf>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let code = rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return None;
                };
                tokio::select! {
                    _ = term.recv() => Some(143),
                    _ = int.recv() => Some(130),
                }
            });
            let Some(code) = code else { return };
            let pgid = redis_bench::WORKER_PGID.load(Ordering::SeqCst);
            if pgid != 0 {
                emit::log(&format!("interrupted: killing worker group {pgid}"));
                redis_bench::send_signal("KILL", -i64::from(pgid));
            }
            let log = redis_bench::WORKER_LOG
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(p) = log {
                let _ = std::fs::remove_file(p);
            }
            if let Some(p) = pidfile {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(code);
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    install_signal_handler(args.worker_pidfile.clone())?;
    let q = args.quick;
    let pick =
        |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
    let wanted =
        |w: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(w));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    emit::log(&format!(
        "celeriac {} ({} run), {cpus} CPUs, load {:.2}",
        env!("CARGO_PKG_VERSION"),
        if q { "quick" } else { "full" },
        emit::loadavg_1m()
    ));
    let t0 = std::time::Instant::now();
    let mut failed = Vec::new();

    let (w1, w2) = (wanted("W1"), wanted("W2"));
    if w1 || w2 {
        match args.broker.as_ref().or(args.redis.as_ref()) {
            None => {
                emit::log("W1/W2 skipped: no --redis URL");
                if !args.only.is_empty() {
                    failed.push("W1/W2 (no --redis)".to_string());
                }
            }
            Some(broker) => {
                // Results: in --redis for RabbitMQ (it stores none), else in
                // the broker's own store.
                let url = if broker.starts_with("amqp") {
                    args.redis.clone().unwrap_or_default()
                } else {
                    celeriac::default_backend_url(broker)
                };
                let cfg = redis_bench::RedisConfig {
                    url,
                    broker: broker.clone(),
                    celeriac_bin: args
                        .celeriac_bin
                        .clone()
                        .unwrap_or_else(redis_bench::default_celeriac_bin),
                    pools: args.pools.clone(),
                    concurrency: args.concurrency,
                    n: pick(args.n, 20_000, 5_000),
                    repeat: pick(args.w1_repeat, 3, 1),
                    latency_n: pick(args.latency_n, 2_000, 500),
                    w1,
                    w2,
                    worker_pidfile: args.worker_pidfile.clone(),
                    worker_args: args.worker_arg.clone(),
                };
                if let Err(e) = redis_bench::run(&cfg) {
                    emit::log(&format!("FAILED: {e:#}"));
                    failed.push("W1/W2".to_string());
                }
            }
        }
    }

    let local = local::LocalConfig {
        fib: args.fib,
        heavy_fib: args.heavy_fib,
        tasks: pick(args.tasks, 32, 16),
        w3_repeat: pick(args.w3_repeat, 7, 3),
        w4_repeat: pick(args.w4_repeat, 3, 1),
        scale: if q { 10 } else { 1 },
    };
    if wanted("W3")
        && let Err(e) = local::run_w3(&local)
    {
        emit::log(&format!("W3 FAILED: {e:#}"));
        failed.push("W3".to_string());
    }
    if wanted("W4")
        && let Err(e) = local::run_w4(&local)
    {
        emit::log(&format!("W4 FAILED: {e:#}"));
        failed.push("W4".to_string());
    }

    emit::print_summary();
    emit::log(&format!(
        "done in {:.1}s, load {:.2}",
        t0.elapsed().as_secs_f64(),
        emit::loadavg_1m()
    ));
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}
