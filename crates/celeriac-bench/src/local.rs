//! W3 (CPU-bound speedup) and W4 (per-task overhead of local pools).
//!
//! Pools are built and warmed up before the clock starts; each figure is the
//! median of `repeat` runs, with every sample in the JSON line, as the
//! peers' `local_bench.py` reports them.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use celeriac::builtins::{echo, fib};
use celeriac::{Args, Outcome, ProcessJob, ProcessPool, Server, ThreadPool};
use serde_json::{Value, json};

use crate::emit::{Measurement, emit, log, median, round, samples};

/// Settings of W3/W4.
#[derive(Debug, Clone)]
pub(crate) struct LocalConfig {
    /// W3: the fib argument (27, as the peers).
    pub(crate) fib: u64,
    /// W3: a heavier fib argument also measured (0: none), because
    /// `fib(27)` takes only about half a millisecond in Rust.
    pub(crate) heavy_fib: u64,
    /// W3: tasks per run.
    pub(crate) tasks: usize,
    /// W3: runs per configuration.
    pub(crate) w3_repeat: usize,
    /// W4: runs per figure.
    pub(crate) w4_repeat: usize,
    /// W4: divisor of every task count (10 for `--quick`).
    pub(crate) scale: usize,
}

/// Reference value of the naive Fibonacci function.
fn fib_ref(n: u64) -> u64 {
    fib(n)
}

/// Median of `repeat` timed runs of `f`, and the samples (seconds).
fn timed_runs(repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, Vec<f64>)> {
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok((median(&samples), samples))
}

/// Counts outcomes of submitted process-pool jobs (and the children that
/// ran them) and wakes the waiter when all have arrived.
#[derive(Debug, Default)]
struct Latch {
    state: Mutex<LatchState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct LatchState {
    done: usize,
    failed: usize,
    pids: HashSet<u32>,
    /// How many outcomes the waiter waits for: it is woken once, by the
    /// last (a wake-up per job would cost the waiting thread a futex wake
    /// and a context switch per job, on the CPUs the pool needs).
    want: usize,
}

impl Latch {
    fn new(want: usize) -> Self {
        let latch = Latch::default();
        latch.state.lock().unwrap_or_else(|e| e.into_inner()).want = want;
        latch
    }

    fn record(&self, ok: bool, pid: Option<u32>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.done += 1;
        if !ok {
            st.failed += 1;
        }
        st.pids.extend(pid);
        if st.done >= st.want {
            self.cv.notify_all();
        }
    }

    /// Waits for `n` outcomes; fails if any job failed. Returns how many
    /// distinct children ran them.
    fn wait(&self, n: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.done < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("only {} of {n} jobs finished within {timeout:?}", st.done);
            }
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if st.failed > 0 {
            bail!("{} of {n} jobs failed", st.failed);
        }
        Ok(st.pids.len())
    }
}

/// Submits `n` jobs made by `job(i)` to `pool`, checking each result with
/// `ok`, and waits for all of them. Returns how many distinct children ran
/// them.
fn submit_all(
    pool: &ProcessPool,
    n: usize,
    job: impl Fn(usize) -> ProcessJob,
    ok: impl Fn(usize, &Value) -> bool + Send + Sync + 'static,
) -> Result<usize> {
    let latch = Arc::new(Latch::new(n));
    let ok = Arc::new(ok);
    for i in 0..n {
        let (latch, ok) = (latch.clone(), ok.clone());
        pool.submit(job(i), move |o: Outcome| {
            latch.record(o.result.as_ref().is_ok_and(|v| ok(i, v)), o.pid);
        })
        .map_err(|_| anyhow!("process pool is shut down"))?;
    }
    latch.wait(n, Duration::from_secs(600))
}

fn process_pool(workers: usize, prefetch: usize) -> Result<ProcessPool> {
    let pool = ProcessPool::builder()
        .processes(workers)
        .prefetch(prefetch)
        .build()
        .context("building the process pool")?;
    // Warm up until every child has run jobs (children start by
    // re-executing this binary, so the first ones may finish the warm-up
    // alone), touching the code paths of both tasks.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let used = submit_all(
            &pool,
            8 * workers,
            |i| ProcessJob::call("celeriac.echo", vec![json!(i)]),
            |i, v| *v == json!(i),
        )?;
        submit_all(
            &pool,
            4 * workers,
            |_| ProcessJob::call("celeriac.fib", vec![json!(20)]),
            |_, v| *v == json!(6765),
        )?;
        if used >= workers && pool.pids().len() >= workers {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {used} of {workers} pool children ran warm-up jobs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pool)
}

fn thread_server(workers: usize) -> Result<Server> {
    let server = Server::builder()
        .workers(workers)
        .build()
        .context("building the job server")?;
    let jobs: Vec<_> = (0..8 * workers)
        .map(|i| server.submit(echo::call(json!(i))))
        .collect();
    for j in jobs {
        j.wait().map_err(|e| anyhow!("warm-up job: {e}"))?;
    }
    Ok(server)
}

/// W3: `fib(cfg.fib)` × `cfg.tasks` with 1 and 2 workers, then the same
/// with `cfg.heavy_fib`.
pub(crate) fn run_w3(cfg: &LocalConfig) -> Result<()> {
    run_w3_fib(cfg, cfg.fib)?;
    if cfg.heavy_fib > 0 && cfg.heavy_fib != cfg.fib {
        run_w3_fib(cfg, cfg.heavy_fib)?;
    }
    Ok(())
}

fn run_w3_fib(cfg: &LocalConfig, n: u64) -> Result<()> {
    let (tasks, repeat) = (cfg.tasks, cfg.w3_repeat);
    let expected = fib_ref(n);
    log(&format!(
        "W3: fib({n}) x {tasks} tasks, 1 and 2 workers, median of {repeat}"
    ));
    let common = |m: Measurement| {
        m.param("n", tasks as u64)
            .param("fib", n)
            .param("celeriac", env!("CARGO_PKG_VERSION"))
    };

    let (t, s) = timed_runs(repeat, || {
        for _ in 0..tasks {
            if black_box(fib_ref(black_box(n))) != expected {
                bail!("wrong fib");
            }
        }
        Ok(())
    })?;
    emit(common(
        Measurement::new("W3", "rust-serial", "seconds", round(t, 4), "s")
            .param("workers", 1u64)
            .param("samples", samples(&s, 4)),
    ));

    // The 1- and 2-worker pools live side by side and their runs alternate,
    // so a slow phase of the (shared, noisy) machine hits both alike.
    let servers = [thread_server(1)?, thread_server(2)?];
    let run_server = |i: usize| -> Result<()> {
        let jobs: Vec<_> = (0..tasks)
            .map(|_| servers[i].submit(fib::call(n)))
            .collect();
        for j in jobs {
            if j.wait().map_err(|e| anyhow!("fib job: {e}"))? != expected {
                bail!("wrong fib");
            }
        }
        Ok(())
    };
    let threads = interleaved(repeat, &run_server);
    for s in &servers {
        s.destroy();
    }
    report_w3(
        "celeriac-threads",
        "Server::builder().workers(n)",
        threads?,
        &common,
    );

    let pools = [process_pool(1, 1)?, process_pool(2, 1)?];
    let run_pool = |i: usize| -> Result<()> {
        let used = submit_all(
            &pools[i],
            tasks,
            |_| ProcessJob::call("celeriac.fib", vec![json!(n)]),
            move |_, v| *v == json!(expected),
        )?;
        if used != i + 1 {
            log(&format!("W3: a run used {used} of {} children", i + 1));
        }
        Ok(())
    };
    let processes = interleaved(repeat, &run_pool);
    for p in &pools {
        p.shutdown(Duration::from_secs(10));
    }
    report_w3(
        "celeriac-processes",
        "ProcessPool::builder().processes(n)",
        processes?,
        &common,
    );
    Ok(())
}

/// `repeat` alternating timed runs of `run(0)` (1 worker) and `run(1)` (2
/// workers); the samples of each, in seconds.
fn interleaved(repeat: usize, run: &dyn Fn(usize) -> Result<()>) -> Result<[Vec<f64>; 2]> {
    let mut out = [Vec::new(), Vec::new()];
    // Diagnostics (off by default): each run's threads, and a pause
    // before each run (see BENCHMARKS.md, session 6: local).
    let trace = std::env::var_os("CELERIAC_BENCH_W3_TRACE").is_some();
    let pause = std::env::var("CELERIAC_BENCH_W3_PAUSE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    for _ in 0..repeat.max(1) {
        for (i, samples) in out.iter_mut().enumerate() {
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
            let before = trace.then(thread_times);
            let t = Instant::now();
            run(i)?;
            let elapsed = t.elapsed();
            samples.push(elapsed.as_secs_f64());
            if let Some(before) = before {
                log_thread_times(i + 1, elapsed, &before, &thread_times());
            }
        }
    }
    Ok(out)
}

/// One thread's scheduler figures, from `/proc/self/task/<tid>/`.
#[derive(Debug, Default, Clone)]
struct ThreadTimes {
    name: String,
    /// On a CPU, and runnable but waiting for one (`schedstat`), in ns.
    ran_ns: u64,
    waited_ns: u64,
    /// The CPU it last ran on (`stat` field 39).
    cpu: String,
}

/// Every thread of this process, by tid.
fn thread_times() -> std::collections::BTreeMap<u32, ThreadTimes> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
        let sched: Vec<u64> = read("schedstat")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let stat = read("stat");
        let after_name = stat.rsplit(')').next().unwrap_or("");
        out.insert(
            tid,
            ThreadTimes {
                name: read("comm").trim().to_string(),
                ran_ns: sched.first().copied().unwrap_or(0),
                waited_ns: sched.get(1).copied().unwrap_or(0),
                cpu: after_name
                    .split_whitespace()
                    .nth(36)
                    .unwrap_or("?")
                    .to_string(),
            },
        );
    }
    out
}

/// Logs the threads that ran or waited during a run of `workers`: CPU time,
/// time runnable but waiting for a CPU, the CPU each ended on.
fn log_thread_times(
    workers: usize,
    elapsed: Duration,
    before: &std::collections::BTreeMap<u32, ThreadTimes>,
    after: &std::collections::BTreeMap<u32, ThreadTimes>,
) {
    let mut line = format!(
        "W3 trace: {workers} worker(s), {:.2} ms:",
        elapsed.as_secs_f64() * 1e3
    );
    for (tid, a) in after {
        let b = before.get(tid).cloned().unwrap_or_default();
        let (ran, waited) = (
            a.ran_ns.saturating_sub(b.ran_ns),
            a.waited_ns.saturating_sub(b.waited_ns),
        );
        if ran > 50_000 || waited > 200_000 {
            line += &format!(
                " [{tid} {} ran {:.2} waited {:.2} cpu {}]",
                a.name,
                ran as f64 / 1e6,
                waited as f64 / 1e6,
                a.cpu
            );
        }
    }
    log(&line);
}

fn report_w3(
    system: &str,
    api: &str,
    samples_by_workers: [Vec<f64>; 2],
    common: &dyn Fn(Measurement) -> Measurement,
) {
    let mut times = [0.0; 2];
    for (i, s) in samples_by_workers.iter().enumerate() {
        times[i] = median(s);
        emit(common(
            Measurement::new("W3", system, "seconds", round(times[i], 4), "s")
                .param("workers", i as u64 + 1)
                .param("api", api)
                .param("interleaved", true)
                .param("samples", samples(s, 4)),
        ));
    }
    // Medians are the headline (as the peers); best-of-runs, as `celeriac
    // demo` reports it, is less sensitive to a busy neighbour.
    let best = |s: &[f64]| s.iter().copied().fold(f64::INFINITY, f64::min);
    let best_speedup = best(&samples_by_workers[0]) / best(&samples_by_workers[1]);
    emit(common(
        Measurement::new("W3", system, "speedup", round(times[0] / times[1], 3), "x")
            .param("workers", 2u64)
            .param("best_speedup", round(best_speedup, 3)),
    ));
}

#[inline(never)]
fn noop() -> usize {
    black_box(0)
}

/// Whether W4's part `part` (`threads`, `server`, `processes`, `map`)
/// runs: all of them, unless `CELERIAC_BENCH_W4` lists some (to profile
/// one part alone).
fn w4_part(part: &str) -> bool {
    std::env::var("CELERIAC_BENCH_W4")
        .map_or(true, |parts| parts.split(',').any(|p| p.trim() == part))
}

/// W4: per-task overhead of no-op tasks on the local pools (2 workers).
pub(crate) fn run_w4(cfg: &LocalConfig) -> Result<()> {
    let workers = 2usize;
    let repeat = cfg.w4_repeat;
    let scaled = |n: usize| (n / cfg.scale).max(100);
    log(&format!(
        "W4: no-op per-task overhead, {workers} workers, median of {repeat}"
    ));
    let report = |system: &str, mode: &str, n: usize, run: &dyn Fn(usize) -> Result<()>| {
        // One untimed pass warms caches, allocator arenas and wake-up paths.
        run((n / 10).max(10))?;
        let (t, s) = timed_runs(repeat, || run(n))?;
        let us: Vec<f64> = s.iter().map(|s| s / n as f64 * 1e6).collect();
        emit(
            Measurement::new(
                "W4",
                system,
                "per_task_overhead",
                round(t / n as f64 * 1e6, 3),
                "us",
            )
            .param("mode", mode)
            .param("n", n as u64)
            .param("workers", workers as u64)
            .param("samples_us", samples(&us, 3))
            .param("celeriac", env!("CARGO_PKG_VERSION")),
        );
        Ok::<(), anyhow::Error>(())
    };

    let echo_job = |i: usize| ProcessJob::call("celeriac.echo", vec![json!(i)]);
    let echo_ok = |i: usize, v: &Value| *v == json!(i);
    if w4_part("threads") {
        // Thread pool, raw closures (as crates/celeriac-pool/benches/pool_overhead.rs).
        let pool = ThreadPool::builder()
            .threads(workers)
            .thread_name("bench-worker")
            .build()
            .context("building the thread pool")?;
        report("celeriac-threads", "sequential", scaled(100_000), &|n| {
            for _ in 0..n {
                pool.execute(noop)
                    .map_err(|_| anyhow!("pool shut down"))?
                    .join()
                    .map_err(|_| anyhow!("task panicked"))?;
            }
            Ok(())
        })?;
        report("celeriac-threads", "pipelined", scaled(1_000_000), &|n| {
            let mut handles = Vec::with_capacity(n);
            for _ in 0..n {
                handles.push(pool.execute(noop).map_err(|_| anyhow!("pool shut down"))?);
            }
            for h in handles {
                h.join().map_err(|_| anyhow!("task panicked"))?;
            }
            Ok(())
        })?;
        pool.shutdown();
    }
    if w4_part("server") {
        // The pp-style job server (memory:// broker, thread workers): the whole
        // task path, for comparison with ppft.
        let server = thread_server(workers)?;
        report("celeriac-server", "sequential", scaled(20_000), &|n| {
            for i in 0..n {
                server
                    .submit(echo::call(json!(i)))
                    .wait()
                    .map_err(|e| anyhow!("echo job: {e}"))?;
            }
            Ok(())
        })?;
        report("celeriac-server", "pipelined", scaled(50_000), &|n| {
            let jobs: Vec<_> = (0..n)
                .map(|i| server.submit(echo::call(json!(i))))
                .collect();
            for j in jobs {
                j.wait().map_err(|e| anyhow!("echo job: {e}"))?;
            }
            Ok(())
        })?;
        server.destroy();
    }
    if w4_part("processes") {
        // Process pool, one task per job.
        let pool = process_pool(workers, 1)?;
        report("celeriac-processes", "sequential", scaled(10_000), &|n| {
            for i in 0..n {
                let out = pool.run(echo_job(i));
                if !out.result.as_ref().is_ok_and(|v| echo_ok(i, v)) {
                    bail!("echo job {i} failed: {:?}", out.result);
                }
            }
            Ok(())
        })?;
        report("celeriac-processes", "pipelined", scaled(20_000), &|n| {
            submit_all(&pool, n, echo_job, echo_ok).map(drop)
        })?;
        pool.shutdown(Duration::from_secs(10));
    }
    if !w4_part("processes") && !w4_part("map") {
        return Ok(());
    }
    let pool = process_pool(workers, 8)?;
    if w4_part("processes") {
        report(
            "celeriac-processes",
            "pipelined_prefetch8",
            scaled(50_000),
            &|n| submit_all(&pool, n, echo_job, echo_ok).map(drop),
        )?;
    }

    // Batched mode: `ProcessPool::map(name, items, chunk)` sends `chunk`
    // items per message to a child (0: about four chunks per child, as
    // `multiprocessing.Pool.map` picks its default chunksize). Building the
    // items is part of the timed call, as in Python.
    let map = |chunk: usize| {
        let pool = &pool;
        move |n: usize| {
            let items: Vec<Args> = (0..n)
                .map(|i| Args::new(vec![json!(i)], Default::default()))
                .collect();
            let out = pool.map("celeriac.echo", items, chunk);
            if out.len() != n {
                bail!("map returned {} of {n} results", out.len());
            }
            if let Some((i, r)) = out
                .iter()
                .enumerate()
                .find(|(i, r)| !r.as_ref().is_ok_and(|v| echo_ok(*i, v)))
            {
                bail!("map item {i} failed: {r:?}");
            }
            Ok(())
        }
    };
    if w4_part("map") {
        report("celeriac-processes", "map_chunk_1", scaled(20_000), &map(1))?;
        report(
            "celeriac-processes",
            "map_default_chunk",
            scaled(500_000),
            &map(0),
        )?;
    }
    pool.shutdown(Duration::from_secs(10));
    Ok(())
}
