//! The process pool: crash isolation, time limits, recycling, batching,
//! and the job server on processes.
//! Run: `cargo run -p celeriac-examples --example process_pool`.
//!
//! Children are this same binary, re-executed: `celeriac::init()` must be
//! the first line of `main`.

use std::time::{Duration, Instant};

use celeriac::{
    Args, Call, PoolKind, ProcessJob, ProcessPool, Server, TaskContext, TaskError, task,
};
use serde_json::json;

/// A long loop that stops when its soft time limit passes.
#[task(name = "examples.count_until_told")]
fn count_until_told(ctx: &TaskContext) -> Result<u64, TaskError> {
    let mut n = 0u64;
    while n < 1_000_000 {
        ctx.check()?; // Err(SoftTimeLimitExceeded) once the soft limit passed
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(n)
}

fn main() -> anyhow::Result<()> {
    celeriac::init();

    let pool = ProcessPool::builder()
        .processes(2)
        .max_tasks_per_child(1000)
        .build()?;

    // A task that aborts its process fails alone; the pool heals.
    let crashed = pool.run(ProcessJob::call("celeriac.crash", vec![]));
    println!("celeriac.crash -> {}", crashed.result.unwrap_err());
    let fib = pool.run(ProcessJob::call("celeriac.fib", vec![json!(25)]));
    println!("celeriac.fib(25) -> {} (pid {:?})", fib.result?, fib.pid);

    // A hard time limit kills the child and reports TimeLimitExceeded.
    let mut ctx = TaskContext::detached("celeriac.sleep");
    ctx.set_time_limits(Some(Duration::from_millis(500)), None);
    let start = Instant::now();
    let slow = pool.run(ProcessJob::new(
        "celeriac.sleep",
        ctx,
        Args::new(vec![json!(60)], Default::default()),
    ));
    println!(
        "celeriac.sleep(60) with a 0.5 s hard limit -> {} after {:.2?}",
        slow.result.unwrap_err(),
        start.elapsed()
    );

    // Batched: 100 000 tiny calls in a few messages per child.
    let items: Vec<Args> = (0..100_000i64)
        .map(|i| Args::new(vec![json!(i), json!(i)], Default::default()))
        .collect();
    let start = Instant::now();
    let sums = pool.map("celeriac.add", items, 0);
    println!(
        "map of 100000 additions: last = {}, {:.2?}",
        sums[99_999].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?,
        start.elapsed()
    );
    println!("pool stats: {:?}", pool.stats());

    // The job server on processes: the same API as with threads.
    let server = Server::builder()
        .workers(2)
        .pool(PoolKind::Processes)
        .build()?;
    let jobs: Vec<_> = (20..26u64)
        .map(|n| server.submit(Call::<u64>::new("celeriac.fib").arg(n)))
        .collect();
    let fibs: Vec<u64> = jobs.iter().map(|j| j.wait()).collect::<Result<_, _>>()?;
    println!("server on processes: fib(20..26) = {fibs:?}");
    let told = server
        .submit(Call::<u64>::new("examples.count_until_told").time_limits(Some(5.0), Some(0.2)))
        .wait();
    println!("soft limit 0.2 s -> {}", told.unwrap_err());

    // revoke(terminate=True): the child running the job is killed.
    let endless = server.submit(Call::<f64>::new("celeriac.sleep").arg(3600.0));
    std::thread::sleep(Duration::from_millis(300));
    server.revoke_terminate(&[endless.id()])?;
    println!("terminated -> {}", endless.wait().unwrap_err());
    Ok(())
}
