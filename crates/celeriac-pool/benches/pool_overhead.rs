//! Per-task overhead of `celeriac-pool` for no-op tasks (plain `main`, no
//! criterion): run with `cargo bench -p celeriac-pool --bench pool_overhead`.
//!
//! Workloads, each run several times (median reported):
//! - `sequential`: `execute(noop).join()` one at a time;
//! - `pipelined`: `execute` N no-ops keeping the handles, then join them all;
//! - `spawn`: fire-and-forget N no-ops bumping a shared counter, wait for all;
//! - `batched`: N no-ops submitted as closures of 1000 each, then joined.
//!
//! Environment: `POOL_BENCH_RUNS` (default 5), `POOL_BENCH_SCALE` (a divisor
//! of every N, default 1, for quick runs), `POOL_BENCH_THREADS` (default 2),
//! `POOL_BENCH_ONLY` (comma-separated workload names).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use celeriac_pool::ThreadPool;

const BATCH: usize = 1000;

#[inline(never)]
fn noop() {
    black_box(());
}

fn sequential(pool: &ThreadPool, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        pool.execute(noop).unwrap().join().unwrap();
    }
    start.elapsed()
}

fn pipelined(pool: &ThreadPool, n: usize) -> Duration {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(pool.execute(noop).unwrap());
    }
    for handle in handles {
        handle.join().unwrap();
    }
    start.elapsed()
}

fn spawn(pool: &ThreadPool, n: usize) -> Duration {
    struct Latch {
        count: AtomicUsize,
        done: Mutex<bool>,
        cv: Condvar,
    }
    let latch = Arc::new(Latch {
        count: AtomicUsize::new(0),
        done: Mutex::new(false),
        cv: Condvar::new(),
    });
    let start = Instant::now();
    for _ in 0..n {
        let latch = latch.clone();
        pool.spawn(move || {
            noop();
            if latch.count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                *latch.done.lock().unwrap() = true;
                latch.cv.notify_all();
            }
        })
        .unwrap();
    }
    let mut done = latch.done.lock().unwrap();
    while !*done {
        done = latch.cv.wait(done).unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(latch.count.load(Ordering::Relaxed), n);
    elapsed
}

fn batched(pool: &ThreadPool, n: usize) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..n.div_ceil(BATCH))
        .map(|chunk| {
            let len = BATCH.min(n - chunk * BATCH);
            pool.execute(move || {
                for _ in 0..len {
                    noop();
                }
            })
            .unwrap()
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    start.elapsed()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if !v.len().is_multiple_of(2) {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

type Workload = fn(&ThreadPool, usize) -> Duration;

fn main() {
    let runs = env_usize("POOL_BENCH_RUNS", 5);
    let scale = env_usize("POOL_BENCH_SCALE", 1);
    let threads = env_usize("POOL_BENCH_THREADS", 2);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ThreadPool::builder()
        .threads(threads)
        .thread_name("bench-worker")
        .build()
        .expect("build pool");

    let workloads: [(&str, Workload, usize); 4] = [
        ("sequential", sequential, 100_000 / scale),
        ("pipelined", pipelined, 1_000_000 / scale),
        ("spawn", spawn, 1_000_000 / scale),
        ("batched", batched, 1_000_000 / scale),
    ];

    println!("celeriac-pool per-task overhead (no-op tasks)");
    println!("pool threads: {threads}, available_parallelism: {cpus}, runs: {runs} (median)");
    println!(
        "{:<12} {:>10} {:>12} {:>12} {:>12}",
        "workload", "n", "median ns", "min ns", "max ns"
    );
    let only = std::env::var("POOL_BENCH_ONLY").ok();
    let mut json = Vec::new();
    for (name, run, n) in workloads {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|w| w == name))
        {
            continue;
        }
        // Warm-up (thread wake-ups, allocator arenas, page faults).
        run(&pool, n.min(10_000));
        let samples: Vec<f64> = (0..runs)
            .map(|_| run(&pool, n).as_nanos() as f64 / n as f64)
            .collect();
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        let med = median(samples);
        println!("{name:<12} {n:>10} {med:>12.1} {min:>12.1} {max:>12.1}");
        json.push(format!(
            "{{\"bench\":\"pool.thread.{name}\",\"ns_per_task\":{med:.1},\"threads\":{threads},\"n\":{n},\"runs\":{runs},\"available_parallelism\":{cpus}}}"
        ));
    }
    for line in json {
        println!("{line}");
    }
    pool.shutdown();
}
