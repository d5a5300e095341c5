//! Per-job overhead of the pp-style Server on the in-process broker:
//! submit → result through the whole path (message encode, broker, claim,
//! decode, thread pool, result store, watch), sequential and pipelined.
//!
//! Run: `cargo bench -p celeriac --bench server_overhead`. Prints a table and
//! one JSON line per workload. `CELERIAC_BENCH_BROKER=redis://...` runs the
//! same workloads through that broker instead of `memory://`.

use std::time::Instant;

use celeriac::Server;
use celeriac::builtins::echo;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs = 5;
    let broker = std::env::var("CELERIAC_BENCH_BROKER").unwrap_or_else(|_| "memory://".into());
    let kind = broker.split("://").next().unwrap_or("memory").to_string();
    let server = Server::builder()
        .broker(&broker)
        .workers(2)
        .build()
        .expect("server");
    // Warm up.
    for j in (0..2000)
        .map(|i| server.submit(echo::call(i.into())))
        .collect::<Vec<_>>()
    {
        j.wait().expect("warm-up job");
    }

    let scale = if kind == "memory" { 1 } else { 10 };
    let n_seq = 20_000 / scale;
    let seq: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n_seq {
                server.submit(echo::call(i.into())).wait().expect("job");
            }
            t.elapsed().as_nanos() as f64 / n_seq as f64
        })
        .collect();

    let n_pipe = 100_000 / scale;
    let pipe: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let jobs: Vec<_> = (0..n_pipe)
                .map(|i| server.submit(echo::call(i.into())))
                .collect();
            for j in &jobs {
                j.wait().expect("job");
            }
            t.elapsed().as_nanos() as f64 / n_pipe as f64
        })
        .collect();

    println!("celeriac Server per-job overhead ({kind} broker, 2 workers, celeriac.echo)");
    println!("workload             n    median ns");
    let rows = [
        ("sequential", n_seq, median(seq)),
        ("pipelined", n_pipe, median(pipe)),
    ];
    for (name, n, ns) in rows {
        println!("{name:<12} {n:>9} {ns:>12.0}");
    }
    for (name, n, ns) in rows {
        println!(
            r#"{{"bench":"server.memory.{name}","ns_per_task":{ns:.0},"workers":2,"n":{n},"runs":{runs}}}"#
        );
    }
}
