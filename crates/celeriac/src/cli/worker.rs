//! `celeriac worker`: its arguments (with the config file's settings
//! under them), building the [`Worker`] they describe, running it with
//! its broker probe, embedded beat and metrics endpoint, and the signals
//! that stop it (warm on SIGINT/SIGTERM, cold on SIGQUIT, as in Celery).

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use celeriac::{Registry, Worker};
use clap::Args as ClapArgs;

use super::parse::{parse_seconds, queue_name};
use super::{Conn, Signing, banner, config, probe, telemetry, worker_runtime};

#[derive(Debug, ClapArgs)]
pub(super) struct WorkerArgs {
    /// At startup, wait for an unreachable broker or backend (retrying with
    /// a warning) instead of failing after 2 s (Celery's
    /// broker_connection_retry_on_startup).
    #[arg(long)]
    retry_on_startup: bool,
    /// Concurrency (threads, child processes, or async tasks at once).
    /// Default: `worker.concurrency` in celeriac.toml, else the number of
    /// CPUs (100 for -P async).
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Pool kind: threads, processes (alias prefork) or async. `async fn`
    /// tasks always run on the async executor. Default: `worker.pool`,
    /// else threads.
    #[arg(short = 'P', long)]
    pool: Option<String>,
    /// Scale concurrency with the queue depth: MAX,MIN (as Celery).
    #[arg(long, value_name = "MAX,MIN")]
    autoscale: Option<String>,
    /// Messages reserved per slot (Celery's worker_prefetch_multiplier);
    /// 1 for long tasks, so that waiting messages go to idle workers.
    /// Default: `worker.prefetch_multiplier`, else 4.
    #[arg(long)]
    prefetch_multiplier: Option<usize>,
    /// Process pool: retire a child after this many tasks.
    #[arg(long)]
    max_tasks_per_child: Option<u64>,
    /// Process pool: retire a child whose peak resident memory exceeds this
    /// many KiB after a task (Celery's unit).
    #[arg(long, value_name = "KIB")]
    max_memory_per_child: Option<u64>,
    /// Default hard time limit in seconds (the message's `timelimit` wins):
    /// the child is killed and the task fails with TimeLimitExceeded.
    #[arg(long, value_parser = parse_seconds)]
    time_limit: Option<f64>,
    /// Default soft time limit in seconds: the task's context is cancelled.
    #[arg(long, value_parser = parse_seconds)]
    soft_time_limit: Option<f64>,
    /// Queues to consume, comma-separated, in priority order. Default:
    /// `worker.queues`, else celery.
    #[arg(short = 'Q', long, value_delimiter = ',', value_parser = queue_name)]
    queues: Vec<String>,
    /// Store the STARTED state when a task starts, for every task (Celery's
    /// task_track_started; `#[task(track_started)]` asks it for one task).
    #[arg(long)]
    track_started: bool,
    /// Node name. Default: `celeriac@HOSTNAME`.
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// Also register celeriac.fail, .panic, .crash, .alloc and .flaky.
    #[arg(long)]
    diagnostic_tasks: bool,
    /// Send Celery's task events (task-received, task-succeeded, ...) for
    /// monitors: `celeriac events`, `celery events`, Flower.
    #[arg(short = 'E', long)]
    events: bool,
    /// Do not sync with the other workers at startup (Celery's
    /// `--without-mingle`): no `hello`, so the task ids they hold as
    /// revoked are not merged.
    #[arg(long)]
    without_mingle: bool,
    /// Largest message body accepted, in bytes; larger ones are dead-lettered.
    #[arg(long, default_value = "67108864")]
    max_body: NonZeroUsize,
    /// Dead-letter a message delivered more than this many times without an
    /// ack (its worker crashed each time); 0 disables.
    #[arg(long, default_value_t = 5)]
    max_deliveries: u32,
    /// Rate-limit a task: NAME=RATE, e.g. celeriac.echo=20/s (shared by all
    /// workers on the broker) or =20/s/w (per worker). Repeatable.
    #[arg(long, value_name = "NAME=RATE")]
    rate_limit: Vec<String>,
    /// Store each task's args and kwargs with its result, as Celery's
    /// `result_extended` (name, worker, queue and retries are always
    /// stored).
    #[arg(long, env = "CELERIAC_RESULT_EXTENDED")]
    result_extended: bool,
    #[command(flatten)]
    signing: Signing,
    /// Largest result stored, in bytes of JSON; a larger one is replaced by
    /// a FAILURE ResultTooLarge that names its size.
    #[arg(long, value_name = "BYTES")]
    max_result: Option<usize>,
    /// Serve Prometheus metrics (`celeriac_*`) at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT", env = "CELERIAC_METRICS_ADDR")]
    metrics_addr: Option<String>,
    #[command(flatten)]
    beat: celeriac_beat::cli::WorkerBeat,
}

pub(super) fn worker(conn: &Conn, args: WorkerArgs) -> Result<ExitCode> {
    let args = args.under(&conn.settings);
    let pool: celeriac::PoolKind = args.pool.as_deref().unwrap_or("threads").parse()?;
    let registry = Registry::linked(args.diagnostic_tasks).context("building the task registry")?;
    let metrics = telemetry::worker_metrics(args.metrics_addr.as_deref(), &registry)?;
    let rt = worker_runtime(pool)?;
    rt.block_on(async {
        let (broker, backend) = conn.open()?;
        let (bu, ru) = (conn.broker_url(), conn.backend_url());
        let queue = args.queues.first().map_or("celery", String::as_str);
        if args.retry_on_startup {
            probe::wait_until_reachable(&broker, &backend, &bu, &ru, queue).await;
        } else {
            probe::reachable(&broker, &backend, &bu, &ru, queue, probe::STARTUP_DEADLINE).await?;
        }
        let urls = (broker.url(), backend.url());
        let names: Vec<String> = registry.names().into_iter().map(str::to_string).collect();
        let mut b = Worker::builder(broker, backend, Arc::new(registry))
            .queues(args.queues.clone())
            .max_body(args.max_body.get())
            .max_deliveries(args.max_deliveries)
            .prefetch_multiplier(
                args.prefetch_multiplier
                    .unwrap_or(celeriac::DEFAULT_PREFETCH_MULTIPLIER),
            )
            .track_started(args.track_started)
            .result_extended(args.result_extended)
            .events(args.events)
            .mingle(!args.without_mingle)
            .pool_kind(pool);
        if let Some(c) = args.concurrency {
            b = b.concurrency(c);
        }
        if let Some((min, max)) = autoscale_bounds(args.autoscale.as_deref())? {
            b = b.autoscale(min, max);
        }
        if let Some(n) = args.max_tasks_per_child {
            b = b.max_tasks_per_child(n);
        }
        if let Some(kib) = args.max_memory_per_child {
            let bytes = kib
                .checked_mul(1024)
                .context("--max-memory-per-child is too large")?;
            b = b.max_memory_per_child(bytes);
        }
        if let Some(s) = args.time_limit {
            b = b.time_limit(seconds(s, "--time-limit")?);
        }
        if let Some(s) = args.soft_time_limit {
            b = b.soft_time_limit(seconds(s, "--soft-time-limit")?);
        }
        for spec in &args.rate_limit {
            let (name, rate) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--rate-limit takes NAME=RATE, got {spec:?}"))?;
            let limit: celeriac::RateLimit = rate.parse().map_err(anyhow::Error::msg)?;
            b = b.rate_limit(name, limit);
        }
        if let Some(n) = &args.hostname {
            b = b.nodename(n.clone());
        }
        if let Some(secret) = args.signing.secret()? {
            b = b.secret(secret);
        }
        if let Some(bytes) = args.max_result {
            b = b.max_result(bytes);
        }
        // Celery's line per task: received, succeeded in ..., raised ...
        b = b.observer(Arc::new(celeriac::TaskLog));
        if let Some(m) = &metrics {
            b = b.observer(m.clone());
        }
        let worker = b.build()?;
        if let Some(m) = metrics {
            tokio::spawn(telemetry::sample_gauges(worker.clone(), m));
        }
        let facts = banner::Facts {
            broker: &urls.0,
            backend: &urls.1,
            tasks: names.iter().map(String::as_str).collect(),
            autoscale: autoscale_bounds(args.autoscale.as_deref())?,
            prefetch: args
                .prefetch_multiplier
                .unwrap_or(celeriac::DEFAULT_PREFETCH_MULTIPLIER),
        };
        println!("{}", banner::banner(&worker, &facts));
        let w = worker.clone();
        tokio::spawn(async move {
            if shutdown_signal().await == Shutdown::Warm {
                tracing::warn!("warm shutdown: finishing running tasks (signal again for a cold shutdown)");
                w.shutdown();
                shutdown_signal().await;
            }
            tracing::warn!("cold shutdown: exiting now; unfinished tasks are redelivered when their leases lapse");
            std::process::exit(1);
        });
        let beat = args.beat.spawn(&bu, &ru)?;
        worker.run().await;
        if let Some(beat) = beat {
            beat.stop().await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

impl WorkerArgs {
    /// These flags over `settings` (celeriac.toml and the environment): a
    /// flag given wins, a setting fills what no flag gave.
    fn under(mut self, settings: &config::Settings) -> Self {
        let w = &settings.worker;
        self.pool = self.pool.or_else(|| w.pool.clone());
        self.concurrency = self.concurrency.or(w.concurrency);
        self.prefetch_multiplier = self.prefetch_multiplier.or(w.prefetch_multiplier);
        if self.queues.is_empty() {
            self.queues = w.queues.clone().unwrap_or_else(|| vec!["celery".into()]);
        }
        self.time_limit = self.time_limit.or(w.time_limit);
        self.soft_time_limit = self.soft_time_limit.or(w.soft_time_limit);
        self.track_started |= w.track_started == Some(true);
        self.max_tasks_per_child = self.max_tasks_per_child.or(w.max_tasks_per_child);
        self.max_memory_per_child = self.max_memory_per_child.or(w.max_memory_per_child);
        // The file's first, so that a flag for the same task replaces it.
        let mut rates: Vec<String> = settings
            .rate_limits
            .iter()
            .map(|(task, rate)| format!("{task}={rate}"))
            .collect();
        rates.append(&mut self.rate_limit);
        self.rate_limit = rates;
        self
    }
}

/// `--autoscale MAX,MIN` as `(min, max)`.
fn autoscale_bounds(spec: Option<&str>) -> Result<Option<(usize, usize)>> {
    let Some(spec) = spec else { return Ok(None) };
    let (max, min) = spec.split_once(',').unwrap_or((spec, "1"));
    let max: usize = max.trim().parse().context("--autoscale takes MAX,MIN")?;
    let min: usize = min.trim().parse().context("--autoscale takes MAX,MIN")?;
    Ok(Some((min, max)))
}

fn seconds(s: f64, flag: &str) -> Result<Duration> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        anyhow::bail!("{flag} takes a positive number of seconds, got {s}")
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Shutdown {
    Warm,
    Cold,
}

/// SIGINT and SIGTERM ask for a warm shutdown, SIGQUIT for a cold one
/// (as in Celery).
async fn shutdown_signal() -> Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut quit = signal(SignalKind::quit()).expect("install SIGQUIT handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Shutdown::Warm,
        _ = term.recv() => Shutdown::Warm,
        _ = quit.recv() => Shutdown::Cold,
    }
}
