//! The book's Fibonacci job (naive `fib(n)` over a list of inputs) on
//! every layer. The job itself is celeriac's built-in `celeriac.fib`
//! ([`celeriac::builtins::fib()`]), the one `celeriac demo` runs and every
//! `celeriac worker` knows, so remote workers can take it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use celeriac::builtins::fib;
use celeriac::{ProcessJob, ProcessPool, Server, ThreadPool, task};
use serde_json::json;

use super::workers::WorkerProcesses;
use super::{AsyncTask, Layer};

/// The book's inputs (ch. 6, pp's SMP example).
pub const BOOK_INPUTS: [u64; 5] = [4, 3, 8, 6, 10];

/// `fib(n)` as an `async fn` task: the CPU work goes to tokio's blocking
/// threads, so the executor's threads stay free for I/O (the rule the
/// book's asyncio chapter teaches with `run_in_executor`).
#[task(name = "examples.fib_async")]
pub async fn fib_async(n: u64) -> u64 {
    tokio::task::spawn_blocking(move || fib(n))
        .await
        .expect("fib does not panic")
}

/// `fib(n)` the fast way, to check every result.
pub fn fib_iter(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

/// How to run the job.
#[derive(Debug, Clone)]
pub struct FibOptions {
    /// What runs the jobs.
    pub layer: Layer,
    /// The server's or the queue's broker (`redis://...` for remote
    /// `celeriac worker` nodes); `None`: in process for the server, a
    /// temporary SQLite file for the queue.
    pub broker: Option<String>,
    /// Local workers: threads, children, async tasks at once, the server's
    /// own worker (0: remote nodes only), or each queue worker's slots.
    pub workers: usize,
    /// The queue layer: worker processes started here.
    pub spawn_workers: usize,
    /// The inputs, in submission order.
    pub inputs: Vec<u64>,
}

impl FibOptions {
    /// The book's inputs plus fib(25..=30) on `layer`, 2 workers.
    pub fn new(layer: Layer) -> Self {
        let mut inputs = BOOK_INPUTS.to_vec();
        inputs.extend(25..=30);
        FibOptions {
            layer,
            broker: None,
            workers: 2,
            spawn_workers: 2,
            inputs,
        }
    }
}

/// Jobs and time of one node (a thread, a child process, a worker).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTally {
    /// Jobs it ran.
    pub jobs: u64,
    /// Their summed run time.
    pub time: Duration,
}

/// What a run gave.
#[derive(Debug)]
pub struct FibRun {
    /// `(n, fib(n))` in input order.
    pub results: Vec<(u64, u64)>,
    /// Jobs per node. For the server and queue layers these are the
    /// server's own statistics ([`Server::stats`]).
    pub nodes: BTreeMap<String, NodeTally>,
    /// Wall time from the first submission to the last result.
    pub wall: Duration,
    /// The server of the server and queue layers, for
    /// [`Server::print_stats`].
    pub server: Option<Server>,
}

impl FibRun {
    /// Prints the per-node statistics: pp's `print_stats` for the server
    /// and queue layers, the same table for the pools.
    pub fn print_stats(&self) {
        if let Some(server) = &self.server {
            server.print_stats();
            return;
        }
        let total: u64 = self.nodes.values().map(|t| t.jobs).sum();
        println!("Job execution statistics:");
        println!(" job count | % of all jobs | job time sum | time per job | job server");
        for (node, t) in &self.nodes {
            println!(
                "{:>10} | {:>13.2} | {:>12.4} | {:>12.6} | {node}",
                t.jobs,
                100.0 * t.jobs as f64 / total.max(1) as f64,
                t.time.as_secs_f64(),
                t.time.as_secs_f64() / t.jobs.max(1) as f64,
            );
        }
        println!("Time elapsed {:.4}", self.wall.as_secs_f64());
    }

    /// Inputs whose result is wrong.
    pub fn wrong(&self) -> Vec<u64> {
        self.results
            .iter()
            .filter(|(n, v)| *v != fib_iter(*n))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// One result: input, value, node, run time.
type Done = (u64, u64, String, Duration);

/// Runs fib over `opts.inputs` on `opts.layer`.
pub fn run(opts: &FibOptions) -> anyhow::Result<FibRun> {
    let n = opts.workers;
    let start = Instant::now();
    let (done, server) = match opts.layer {
        Layer::Threads => (on_threads(&opts.inputs, n.max(1))?, None),
        Layer::Processes => (on_processes(&opts.inputs, n.max(1))?, None),
        Layer::Async => (on_async(&opts.inputs, n.max(1))?, None),
        Layer::Server => {
            let mut b = Server::builder().workers(n);
            if let Some(url) = &opts.broker {
                b = b.broker(url);
            }
            let server = b.build()?;
            (on_server(&server, &opts.inputs)?, Some(server))
        }
        Layer::Queue => {
            let tmp = tempfile::tempdir()?;
            let broker = match &opts.broker {
                Some(b) => b.clone(),
                None => format!("sqlite://{}", tmp.path().join("fib.db").display()),
            };
            let workers = WorkerProcesses::spawn(&broker, opts.spawn_workers, n.max(1))?;
            let server = Server::builder().broker(&broker).workers(0).build()?;
            let done = on_server(&server, &opts.inputs);
            drop(workers);
            (done?, Some(server))
        }
    };
    let wall = start.elapsed();
    let mut results: Vec<(u64, u64)> = Vec::with_capacity(done.len());
    let mut nodes: BTreeMap<String, NodeTally> = BTreeMap::new();
    for (input, value, node, time) in done {
        results.push((input, value));
        let t = nodes.entry(node).or_default();
        t.jobs += 1;
        t.time += time;
    }
    // Input order (callbacks arrive in completion order).
    let mut ordered = Vec::with_capacity(results.len());
    for input in &opts.inputs {
        let i = results
            .iter()
            .position(|(m, _)| m == input)
            .context("a result is missing")?;
        ordered.push(results.swap_remove(i));
    }
    if let Some(server) = &server {
        nodes = server
            .stats()
            .nodes
            .into_iter()
            .map(|s| {
                let t = NodeTally {
                    jobs: s.jobs,
                    time: s.total_time,
                };
                (s.node, t)
            })
            .collect();
    }
    Ok(FibRun {
        results: ordered,
        nodes,
        wall,
        server,
    })
}

fn on_threads(inputs: &[u64], threads: usize) -> anyhow::Result<Vec<Done>> {
    let pool = ThreadPool::builder()
        .threads(threads)
        .thread_name("fib")
        .build()?;
    let handles = inputs
        .iter()
        .map(|&n| {
            pool.execute(move || {
                let t = Instant::now();
                let v = fib(n);
                let me = std::thread::current();
                (n, v, me.name().unwrap_or("thread").to_string(), t.elapsed())
            })
            .map_err(|_| anyhow::anyhow!("the thread pool is shut down"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    handles
        .into_iter()
        .map(|h| h.join().map_err(|e| anyhow::anyhow!("fib panicked: {e:?}")))
        .collect()
}

fn on_processes(inputs: &[u64], processes: usize) -> anyhow::Result<Vec<Done>> {
    let pool = ProcessPool::builder().processes(processes).build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    for &n in inputs {
        let tx = tx.clone();
        let job = ProcessJob::call("celeriac.fib", vec![json!(n)]);
        pool.submit(job, move |o| {
            let _ = tx.send((n, o));
        })
        .map_err(|_| anyhow::anyhow!("the process pool is shut down"))?;
    }
    drop(tx);
    let mut done = Vec::with_capacity(inputs.len());
    for (n, o) in rx {
        let v = o
            .result
            .map_err(|e| anyhow::anyhow!("fib({n}) failed: {e}"))?;
        let v = v.as_u64().context("fib returned a non-integer")?;
        let node = format!("pid {}", o.pid.unwrap_or(0));
        done.push((n, v, node, o.runtime));
    }
    pool.shutdown(Duration::from_secs(5));
    Ok(done)
}

fn on_async(inputs: &[u64], at_once: usize) -> anyhow::Result<Vec<Done>> {
    let fib_task = AsyncTask::new("examples.fib_async")?;
    let limit = Arc::new(tokio::sync::Semaphore::new(at_once));
    fib_task.runtime().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for &n in inputs {
            let run = fib_task.call(vec![json!(n)]);
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("never closed");
                (n, run.await)
            });
        }
        let mut done = Vec::with_capacity(inputs.len());
        while let Some(joined) = set.join_next().await {
            let (n, ran) = joined?;
            let ran = ran.context("the async executor is shut down")?;
            let v = ran
                .result
                .map_err(|e| anyhow::anyhow!("fib({n}) failed: {e}"))?;
            let v = v.as_u64().context("fib returned a non-integer")?;
            done.push((n, v, "async executor".to_string(), ran.runtime));
        }
        Ok(done)
    })
}

/// pp's `submit(fibo_task, (n,), callback=aggregate_results)` and
/// `wait()`, as the book does it.
fn on_server(server: &Server, inputs: &[u64]) -> anyhow::Result<Vec<Done>> {
    let done: Arc<Mutex<Vec<Done>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    for &n in inputs {
        let (done, failed) = (done.clone(), failed.clone());
        server
            .job(fib::call(n))
            .group("fibo")
            .callback(move |r| match r {
                // The node and time come from the server's stats.
                Ok(v) => done
                    .lock()
                    .expect("lock")
                    .push((n, v, String::new(), Duration::ZERO)),
                Err(e) => failed.lock().expect("lock").push(format!("fib({n}): {e}")),
            })
            .submit();
    }
    server.wait_group("fibo");
    let failed = std::mem::take(&mut *failed.lock().expect("lock"));
    if !failed.is_empty() {
        bail!("jobs failed: {}", failed.join("; "));
    }
    Ok(std::mem::take(&mut *done.lock().expect("lock")))
}
