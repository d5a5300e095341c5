//! W1 (broker throughput and worker RSS) and W2 (round-trip latency)
//! through a real Redis, through RabbitMQ (`--broker amqp://...`) with
//! results in Redis, or through the default `sqlite://` file broker
//! (worker and client are then two processes sharing one SQLite file).
//!
//! The worker is the `celeriac` CLI binary in its own OS process (and its
//! own process group), `celeriac worker -c 2 -P <pool> -Q <private queue>`,
//! so its resident memory is measured honestly from `/proc`. The producer
//! is this process, using the library as a Rust program would:
//! `Transport::publish_batch` in chunks and [`ResultBackend::watch_many`]
//! (one `SUBSCRIBE` + one `MGET` per chunk) to collect results.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use celeriac::{Broker, Call, Outgoing, ResultBackend, ResultMeta, State};
use serde_json::{Value, json};

use crate::emit::{Measurement, emit, log, median, percentile, round, samples};
use crate::procfs::{RssSampler, mib, tree_cpu_secs, tree_sum};

/// Messages per `publish_batch` call and task ids per `watch_many` call.
const CHUNK: usize = 1000;
/// Warm-up tasks before anything is measured.
const WARMUP: usize = 20;

/// The process group of the running worker (0: none), for the signal
/// handler in `main`.
pub(crate) static WORKER_PGID: AtomicU32 = AtomicU32::new(0);

/// The running worker's log file, for the signal handler to remove.
pub(crate) static WORKER_LOG: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Settings of W1/W2.
#[derive(Debug, Clone)]
pub(crate) struct RedisConfig {
    /// The result store: `redis://host:port/db`, or for a `sqlite://PATH`
    /// broker the same file (as the CLI's default). It is the broker too
    /// unless `broker` says otherwise.
    pub(crate) url: String,
    /// The broker URL: `url`, or an `amqp://` RabbitMQ vhost.
    pub(crate) broker: String,
    /// The `celeriac` CLI binary that runs the worker.
    pub(crate) celeriac_bin: PathBuf,
    /// Worker pools to measure: `threads`, `processes`.
    pub(crate) pools: Vec<String>,
    /// Worker concurrency (`-c`).
    pub(crate) concurrency: usize,
    /// W1 task count per run.
    pub(crate) n: usize,
    /// W1 runs (the median is reported).
    pub(crate) repeat: usize,
    /// W2 round trips.
    pub(crate) latency_n: usize,
    /// Run W1.
    pub(crate) w1: bool,
    /// Run W2.
    pub(crate) w2: bool,
    /// Where to write the worker's pid (for cleanup by a wrapper script).
    pub(crate) worker_pidfile: Option<PathBuf>,
    /// Extra `celeriac worker` arguments (e.g. `--prefetch-multiplier=1`).
    pub(crate) worker_args: Vec<String>,
}

/// Sends `signal` (a name such as `TERM`) to a pid, or to a process group
/// if `target` is negative, with the system's `kill` (no `unsafe` needed).
pub(crate) fn send_signal(signal: &str, target: i64) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(target.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A `celeriac worker` child process, stopped on drop.
#[derive(Debug)]
struct WorkerProc {
    child: Child,
    log: PathBuf,
    pidfile: Option<PathBuf>,
}

impl WorkerProc {
    fn start(cfg: &RedisConfig, pool: &str, queue: &str) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let log_path = std::env::temp_dir().join(format!("{queue}-worker.log"));
        let logfile = std::fs::File::create(&log_path).context("creating the worker log")?;
        let mut cmd = Command::new(&cfg.celeriac_bin);
        cmd.args(["--broker", &cfg.broker, "--result-backend", &cfg.url])
            .args(["--loglevel", "warn", "worker"])
            .args(["-c", &cfg.concurrency.to_string(), "-P", pool, "-Q", queue])
            .args(["-n", &format!("{queue}@bench")])
            .args(&cfg.worker_args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            // Its own process group: a terminal's Ctrl-C does not reach it
            // directly, and cleanup kills the whole group.
            .process_group(0);
        log(&format!(
            "starting {} --broker {} worker -c {} -P {pool} -Q {queue} {}",
            cfg.celeriac_bin.display(),
            cfg.broker,
            cfg.concurrency,
            cfg.worker_args.join(" ")
        ));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cfg.celeriac_bin.display()))?;
        WORKER_PGID.store(child.id(), Ordering::SeqCst);
        *WORKER_LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(log_path.clone());
        if let Some(p) = &cfg.worker_pidfile {
            std::fs::write(p, format!("{}\n", child.id()))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(WorkerProc {
            child,
            log: log_path,
            pidfile: cfg.worker_pidfile.clone(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Warm shutdown (SIGTERM, up to 20 s), then SIGKILL of the group.
    fn stop(&mut self) {
        let pid = self.pid();
        if self.alive() {
            send_signal("TERM", i64::from(pid));
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.alive() {
                log(&format!("worker {pid} ignored SIGTERM for 20 s, killing"));
            }
        }
        send_signal("KILL", -i64::from(pid));
        let _ = self.child.kill();
        let _ = self.child.wait();
        WORKER_PGID.store(0, Ordering::SeqCst);
        if let Some(p) = self.pidfile.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
        WORKER_LOG.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// The encoded message of `celeriac.add(x, y)` for `queue`.
fn add_message(queue: &str, x: i64, y: i64) -> Result<(String, Outgoing)> {
    let msg = Call::<Value>::new("celeriac.add")
        .arg(x)
        .arg(y)
        .queue(queue)
        .to_message()?;
    Ok((msg.id().to_string(), Outgoing::from_message(&msg)?))
}

/// Checks that a result is `SUCCESS` with `expected`.
fn check(meta: &ResultMeta, expected: i64) -> Result<()> {
    if meta.status != State::Success || meta.result != json!(expected) {
        bail!(
            "task {} ended {:?} with {}, expected {expected}",
            meta.task_id,
            meta.status,
            meta.result
        );
    }
    Ok(())
}

/// Connections and the bookkeeping of one measured worker.
struct Client {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    queue: String,
    sent: Vec<String>,
}

impl Client {
    /// Sends the warm-up tasks and waits for them (the worker is ready),
    /// watching that the worker stays alive.
    async fn warm_up(&mut self, worker: &mut WorkerProc, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for i in 0..WARMUP as i64 {
            let (id, m) = add_message(&self.queue, i, 1)?;
            ids.push(id);
            out.push(m);
        }
        self.sent.extend(ids.iter().cloned());
        let watches = self.backend.watch_many(&ids).await?;
        self.broker.publish_batch(out).await?;
        for (i, w) in watches.into_iter().enumerate() {
            let mut w = w;
            loop {
                if !worker.alive() {
                    bail!("worker exited during start-up:\n{}", worker.tail());
                }
                if Instant::now() > deadline {
                    bail!("worker not ready after {timeout:?}:\n{}", worker.tail());
                }
                match tokio::time::timeout(Duration::from_millis(500), &mut w).await {
                    Ok(meta) => {
                        check(&meta?, i as i64 + 1)?;
                        break;
                    }
                    Err(_) => continue,
                }
            }
        }
        Ok(())
    }

    /// W2: sequential round trips; returns the samples in ms, sorted.
    async fn latency(&mut self, n: usize) -> Result<Vec<f64>> {
        let mut ms = Vec::with_capacity(n);
        for i in 0..n as i64 {
            let t0 = Instant::now();
            let (id, m) = add_message(&self.queue, i, i)?;
            let watch = self.backend.watch(&id).await?;
            self.broker.publish(m).await?;
            let meta = tokio::time::timeout(Duration::from_secs(30), watch)
                .await
                .map_err(|_| anyhow!("W2 round trip {i} timed out after 30 s"))??;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
            self.sent.push(id);
            check(&meta, 2 * i)?;
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms)
    }

    /// W1: one run of `n` tasks. Returns (enqueue seconds, end-to-end
    /// seconds).
    async fn throughput(&mut self, n: usize) -> Result<(f64, f64)> {
        let t_first = Instant::now();
        let mut ids = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
            let mut batch = Vec::with_capacity(end - start);
            for i in start..end {
                let (id, m) = add_message(&self.queue, i as i64, i as i64)?;
                ids.push(id);
                batch.push(m);
            }
            self.broker.publish_batch(batch).await?;
            start = end;
        }
        let t_enq = t_first.elapsed().as_secs_f64();
        self.sent.extend(ids.iter().cloned());
        // Watch after publishing: `watch_many` subscribes, then reads the
        // keys, so results stored before the subscription are not missed.
        let mut watches = Vec::with_capacity(n);
        for chunk in ids.chunks(CHUNK) {
            watches.extend(self.backend.watch_many(chunk).await?);
        }
        let timeout = Duration::from_secs_f64((n as f64 / 20.0).max(120.0));
        let metas = tokio::time::timeout(timeout, futures::future::try_join_all(watches))
            .await
            .map_err(|_| anyhow!("W1: results still missing after {timeout:?}"))??;
        let t_last = t_first.elapsed().as_secs_f64();
        for (i, meta) in metas.iter().enumerate() {
            check(meta, 2 * i as i64)?;
        }
        Ok((t_enq, t_last))
    }

    /// Best-effort removal of this run's queue, binding and result keys
    /// (Redis; a SQLite file is removed by whoever made it).
    async fn cleanup(&self, url: &str) {
        if !is_redis(url) {
            return;
        }
        let res: Result<()> = async {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut keys = vec![self.queue.clone(), format!("_kombu.binding.{}", self.queue)];
            keys.extend([3, 6, 9].map(|p| format!("{}\x06\x16{p}", self.queue)));
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
            for chunk in self.sent.chunks(CHUNK) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|id| format!("celery-task-meta-{id}"))
                    .collect();
                let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            log(&format!("key cleanup failed: {e:#}"));
        }
    }
}

/// Runs W1/W2 for every configured worker pool.
pub(crate) fn run(cfg: &RedisConfig) -> Result<()> {
    if !cfg.celeriac_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p celeriac-cli` or pass --celeriac-bin",
            cfg.celeriac_bin.display()
        );
    }
    // The producer needs little: one thread leaves the other core to the
    // worker, as the peers' single-threaded Python producer does.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut failed = Vec::new();
    for pool in &cfg.pools {
        if let Err(e) = rt.block_on(run_pool(cfg, pool)) {
            log(&format!("W1/W2 -P {pool} FAILED: {e:#}"));
            failed.push(pool.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("W1/W2 failed for -P {}", failed.join(",")))
    }
}

async fn run_pool(cfg: &RedisConfig, pool: &str) -> Result<()> {
    let queue = format!(
        "celeriac-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let system = if cfg.broker.starts_with("amqp") {
        format!("celeriac-{pool}-amqp")
    } else if is_redis(&cfg.broker) {
        format!("celeriac-{pool}")
    } else {
        let scheme = cfg.broker.split("://").next().unwrap_or_default();
        format!("celeriac-{scheme}-{pool}")
    };
    let mut client = Client {
        broker: celeriac::open_broker_for(&cfg.broker, &cfg.url)?,
        backend: celeriac::open_backend(&cfg.url)?,
        queue: queue.clone(),
        sent: Vec::new(),
    };
    let mut worker = WorkerProc::start(cfg, pool, &queue)?;
    let res = measure(cfg, pool, &system, &mut client, &mut worker).await;
    if res.is_err() {
        let tail = worker.tail();
        if !tail.is_empty() {
            log(&format!("worker log tail:\n{tail}"));
        }
    }
    worker.stop();
    drop(worker);
    client.cleanup(&cfg.url).await;
    res
}

/// Whether `url` is a Redis URL (else the broker is, e.g., `sqlite://`).
fn is_redis(url: &str) -> bool {
    url.starts_with("redis")
}

fn common(m: Measurement, pool: &str, concurrency: usize) -> Measurement {
    m.param("pool", pool)
        .param("concurrency", concurrency as u64)
        .param("celeriac", env!("CARGO_PKG_VERSION"))
}

async fn measure(
    cfg: &RedisConfig,
    pool: &str,
    system: &str,
    client: &mut Client,
    worker: &mut WorkerProc,
) -> Result<()> {
    let c = cfg.concurrency;
    let t0 = Instant::now();
    client.warm_up(worker, Duration::from_secs(60)).await?;
    log(&format!(
        "worker {} ready after {:.2}s ({WARMUP} warm-up tasks)",
        worker.pid(),
        t0.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, procs) = tree_sum(worker.pid(), "VmRSS");
    emit(common(
        Measurement::new("W1", system, "rss_idle", mib(idle), "MiB").param("processes", procs),
        pool,
        c,
    ));

    if cfg.w2 {
        log(&format!(
            "W2 -P {pool}: {} sequential publish → watch round trips",
            cfg.latency_n
        ));
        let ms = client.latency(cfg.latency_n).await?;
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        for (name, v) in [
            ("latency_p50", percentile(&ms, 50.0)),
            ("latency_p90", percentile(&ms, 90.0)),
            ("latency_p99", percentile(&ms, 99.0)),
            ("latency_mean", mean),
        ] {
            emit(common(
                Measurement::new("W2", system, name, round(v, 4), "ms")
                    .param("n", cfg.latency_n as u64),
                pool,
                c,
            ));
        }
    }

    if cfg.w1 {
        log(&format!(
            "W1 -P {pool}: {} runs of {} tasks, publish_batch({CHUNK}) + watch_many({CHUNK})",
            cfg.repeat, cfg.n
        ));
        // A sample walks /proc; sampled more often, it competes with the run
        // for CPU (VmHWM in the JSON line gives the exact peak).
        let sampler = RssSampler::start(worker.pid(), Duration::from_millis(250));
        let cpu_before = tree_cpu_secs(worker.pid());
        let mut enq = Vec::new();
        let mut e2e = Vec::new();
        for run in 0..cfg.repeat {
            let (t_enq, t_last) = client.throughput(cfg.n).await?;
            log(&format!(
                "W1 -P {pool} run {}: enqueue {:.0} tasks/s ({t_enq:.3}s), end-to-end {:.0} tasks/s ({t_last:.3}s)",
                run + 1,
                cfg.n as f64 / t_enq,
                cfg.n as f64 / t_last
            ));
            enq.push(t_enq);
            e2e.push(t_last);
        }
        let cpu = tree_cpu_secs(worker.pid()) - cpu_before;
        let (peak, peak_procs) = sampler.stop();
        let (hwm, _) = tree_sum(worker.pid(), "VmHWM");
        let n = cfg.n as f64;
        // A rate's line from the runs' durations: the median rate, the
        // median seconds and every run's rate.
        let rate = |metric: &'static str, secs: &[f64]| {
            let rates: Vec<f64> = secs.iter().map(|s| n / s).collect();
            Measurement::new("W1", system, metric, round(median(&rates), 1), "tasks/s")
                .param("n", cfg.n as u64)
                .param("seconds", round(median(secs), 4))
                .param("runs", cfg.repeat as u64)
                .param("samples", samples(&rates, 1))
        };
        emit(common(
            rate("enqueue_rate", &enq).param("batch", CHUNK as u64),
            pool,
            c,
        ));
        emit(common(
            rate("throughput", &e2e).param("collect", "watch_many"),
            pool,
            c,
        ));
        // CPU the worker's tree used per task: less sensitive than a rate to
        // what else the machine runs (the RSS sampler's walks included).
        emit(common(
            Measurement::new(
                "W1",
                system,
                "worker_cpu_per_task",
                round(cpu * 1e6 / (n * cfg.repeat as f64), 2),
                "us",
            )
            .param("n", cfg.n as u64)
            .param("runs", cfg.repeat as u64),
            pool,
            c,
        ));
        // The peers' peak is sampled RSS; VmHWM (the kernel's own high-water
        // mark, summed over the tree) is reported beside it.
        emit(common(
            Measurement::new("W1", system, "rss_peak", mib(peak), "MiB")
                .param("n", cfg.n as u64)
                .param("processes", peak_procs)
                .param("vmhwm_mib", mib(hwm)),
            pool,
            c,
        ));
    }
    Ok(())
}

/// The default `celeriac` CLI binary: next to this one
/// (`target/release/celeriac`).
pub(crate) fn default_celeriac_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map(|d| d.join("celeriac"))
        .unwrap_or_else(|| PathBuf::from("target/release/celeriac"))
}
