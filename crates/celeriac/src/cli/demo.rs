//! `celeriac demo`: the book's Fibonacci job (Parallel Programming with
//! Python, ch. 6: pp's `submit(fibo_task, (n,), callback=aggregate_results)`)
//! on the embedded default broker with auto-sized pools.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use celeriac::builtins::fib;
use celeriac::{Job, Server};
use clap::Args;

/// Options of `celeriac demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many times the CPU-heavy batch fib(24..=36) is repeated.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Workers of the parallel run (default: the number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Timed runs of each configuration, interleaved; the best wall time of
    /// each is reported, which keeps a noisy machine from skewing the
    /// speedup.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

/// The book's inputs.
const BOOK_INPUTS: [u64; 5] = [4, 3, 8, 6, 10];

fn fib_iter(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

/// The parallel fraction `p` of Amdahl's law that a measured `speedup` on
/// `n` workers implies: `S = 1 / ((1 - p) + p / n)`, solved for `p`.
/// `None` for one worker (nothing to learn).
fn amdahl_fraction(speedup: f64, n: usize) -> Option<f64> {
    if n < 2 || !speedup.is_finite() || speedup <= 0.0 {
        return None;
    }
    let n = n as f64;
    Some(((1.0 - 1.0 / speedup) / (1.0 - 1.0 / n)).clamp(0.0, 1.0))
}

struct Run {
    wall: Duration,
    results: Vec<(u64, u64)>,
    server: Server,
}

/// Submits every input with a callback that aggregates results, as the
/// book's pp example does, and waits for the group.
fn run_once(workers: usize, inputs: &[u64]) -> Result<Run> {
    let server = Server::builder().workers(workers).build()?;
    let results = Arc::new(Mutex::new(Vec::with_capacity(inputs.len())));
    let start = Instant::now();
    let jobs: Vec<Job<u64>> = inputs
        .iter()
        .map(|&n| {
            let results = results.clone();
            server
                .job(fib::call(n))
                .group("fibo")
                .callback(move |r| {
                    if let Ok(v) = r {
                        results.lock().expect("results lock").push((n, v));
                    }
                })
                .submit()
        })
        .collect();
    server.wait_group("fibo");
    let wall = start.elapsed();
    for (job, n) in jobs.iter().zip(inputs) {
        if let Err(e) = job.wait() {
            bail!("fib({n}) failed: {e}");
        }
    }
    let results = std::mem::take(&mut *results.lock().expect("results lock"));
    Ok(Run {
        wall,
        results,
        server,
    })
}

pub(crate) fn run(args: DemoArgs) -> Result<ExitCode> {
    let auto = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The heavy batch, largest first so the last jobs are the short ones.
    let mut inputs: Vec<u64> = BOOK_INPUTS.to_vec();
    for _ in 0..args.rounds {
        inputs.extend((24..=36u64).rev());
    }
    inputs.sort_by(|a, b| b.cmp(a));

    println!("celeriac demo: naive fib over the book's inputs {BOOK_INPUTS:?}");
    println!(
        "plus fib(24..=36) x {} ({} jobs), on the embedded memory:// broker",
        args.rounds,
        inputs.len()
    );

    let mut best_single = Duration::MAX;
    let mut best: Option<(Run, f64)> = None;
    let (mut wrong, mut got, mut expected) = (0, 0, 0);
    for round in 1..=args.repeat.max(1) {
        let single = run_once(1, &inputs)?;
        single.server.destroy();
        let parallel = run_once(auto, &inputs)?;
        println!(
            "run {round}: 1 worker {:>7.3} s, {auto} workers {:>7.3} s",
            single.wall.as_secs_f64(),
            parallel.wall.as_secs_f64()
        );
        // Every run's values are checked, not only the one shown.
        for (n, v) in parallel.results.iter().chain(single.results.iter()) {
            if *v != fib_iter(*n) {
                wrong += 1;
                eprintln!("WRONG: fib({n}) = {v}, expected {}", fib_iter(*n));
            }
        }
        expected += inputs.len() * 2;
        got += parallel.results.len() + single.results.len();
        best_single = best_single.min(single.wall);
        if best.as_ref().is_none_or(|(b, _)| parallel.wall < b.wall) {
            let busy: f64 = parallel
                .server
                .stats()
                .nodes
                .iter()
                .map(|n| n.total_time.as_secs_f64())
                .sum();
            let parallelism = busy / parallel.wall.as_secs_f64();
            if let Some((old, _)) = best.replace((parallel, parallelism)) {
                old.server.destroy();
            }
        } else {
            parallel.server.destroy();
        }
    }
    let (parallel, parallelism) = best.expect("at least one run");
    let best_parallel = parallel.wall;

    println!();
    println!("results (of the fastest {auto}-worker run):");
    let mut seen = parallel.results.clone();
    seen.sort_unstable();
    seen.dedup();
    for &n in &BOOK_INPUTS {
        let v = parallel
            .results
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, v)| *v);
        println!(
            "  fib({n}) = {}",
            v.map_or("missing".to_string(), |v| v.to_string())
        );
    }
    for (n, v) in &seen {
        if BOOK_INPUTS.contains(n) {
            continue;
        }
        println!("  fib({n}) = {v}");
    }
    println!(
        "{got} of {expected} results received in all runs, {} correct",
        got - wrong
    );

    let speedup = best_single.as_secs_f64() / best_parallel.as_secs_f64();
    println!();
    println!(
        "wall time (best of {}): {:.3} s with 1 worker, {:.3} s with {auto} workers: speedup {speedup:.2}x",
        args.repeat.max(1),
        best_single.as_secs_f64(),
        best_parallel.as_secs_f64()
    );
    println!(
        "effective parallelism of that {auto}-worker run: {parallelism:.2} (task execution time / wall time)"
    );
    if let Some(p) = amdahl_fraction(speedup, auto) {
        println!(
            "Amdahl's law: a speedup of {speedup:.2}x on {auto} workers means a parallel fraction p = {p:.3}; \
             no number of workers can beat {:.1}x",
            1.0 / (1.0 - p).max(1e-9)
        );
    }
    println!();
    println!("pp statistics of that run:");
    parallel.server.print_stats();
    if wrong > 0 || got != expected {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::amdahl_fraction;

    #[test]
    fn amdahl_fraction_inverts_the_law() {
        // p = 0.9 on 4 workers: S = 1 / (0.1 + 0.225) = 3.0769...
        let s = 1.0 / (0.1 + 0.9 / 4.0);
        assert!((amdahl_fraction(s, 4).unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(amdahl_fraction(2.0, 2), Some(1.0));
        assert_eq!(amdahl_fraction(1.0, 2), Some(0.0));
        assert_eq!(amdahl_fraction(3.0, 1), None);
    }
}
