//! The pp-style job server: the book's Fibonacci over several inputs with a
//! callback that aggregates results, a group, a template and pp's stats.
//! Run: `cargo run -p celeriac-examples --example job_server`.

use std::sync::{Arc, Mutex};

use celeriac::{Server, Template, task};

/// The book's CPU-bound job.
#[task(name = "examples.fibo")]
fn fibo(n: u64) -> u64 {
    if n < 2 { n } else { fibo(n - 1) + fibo(n - 2) }
}

/// Fails on purpose, to show that errors reach `wait()` (pp returns None).
#[task(name = "examples.divide")]
fn divide(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err("division by zero".into())
    } else {
        Ok(a / b)
    }
}

fn main() -> anyhow::Result<()> {
    // Workers sized to the machine, on the embedded in-process broker.
    let server = Server::new()?;
    println!(
        "workers: {}, nodes: {:?}",
        server.workers(),
        server.active_nodes()
    );

    // submit(..., callback=aggregate_results, group="fibo")
    let results = Arc::new(Mutex::new(Vec::new()));
    for n in [4, 3, 8, 6, 10] {
        let results = results.clone();
        server
            .job(fibo::call(n))
            .group("fibo")
            .callback(move |r| results.lock().unwrap().push((n, r.unwrap())))
            .submit();
    }
    server.wait_group("fibo");
    println!("aggregated: {:?}", results.lock().unwrap());

    // A template pre-binds the task and the group.
    let tpl = Template::<fibo>::new(&server).group("big");
    let jobs: Vec<_> = (25..=30).map(|n| tpl.submit((n,))).collect();
    for (n, job) in (25..=30).zip(&jobs) {
        println!("fibo({n}) = {}", job.wait()?);
    }

    // Errors are typed and carry the message.
    match server.submit(divide::call(1, 0)).wait() {
        Ok(v) => println!("unexpected {v}"),
        Err(e) => match e.task_error() {
            Some(raised) => println!("divide(1, 0) raised {raised}"),
            None => println!("divide(1, 0) did not run: {e}"),
        },
    }

    server.set_workers(1)?;
    println!("resized to {} worker", server.workers());
    server.print_stats();
    // On its private memory:// broker every job above took the local lane:
    // handed to the worker's threads as a typed call, no message at all.
    println!("jobs on the local lane: {}", server.stats().local_lane);
    Ok(())
}
