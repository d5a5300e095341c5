//! The book's Fibonacci job on every layer: threads, processes, async, the
//! pp-style job server, and the queue; then pp's per-node statistics.
//!
//! ```text
//! cargo run --release -p celeriac-examples --example fibonacci -- --layer threads|processes|async|server|queue
//! # pp's cluster: remote `celeriac worker` processes as ppservers
//! celeriac worker --broker redis://HOST:6379/0 &        # on each node
//! cargo run --release -p celeriac-examples --example fibonacci -- \
//!     --layer server --broker redis://HOST:6379/0 --workers 0
//! ```

use std::process::ExitCode;

use celeriac_examples::book::Layer;
use celeriac_examples::book::fib::{FibOptions, run};
use celeriac_examples::book::workers::WorkerArgs;
use clap::{Parser, Subcommand};

/// The book's Fibonacci job on every celeriac layer.
#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// What runs the jobs: threads, processes, async, server or queue.
    #[arg(long, default_value = "server")]
    layer: Layer,
    /// The broker of the server or the queue layer: redis://... to share
    /// the jobs with remote `celeriac worker` nodes.
    #[arg(long)]
    broker: Option<String>,
    /// Local workers (the server's own: 0 for remote nodes only; for the
    /// queue, each worker process's slots).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The queue layer: worker processes to start.
    #[arg(long, default_value_t = 2)]
    spawn_workers: usize,
    /// Inputs, comma-separated (default: the book's 4,3,8,6,10 and 25..=30).
    #[arg(long, value_delimiter = ',')]
    inputs: Vec<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the jobs of the queue or server layer on a broker until Ctrl-C.
    Worker(WorkerArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    celeriac::init();
    let cli = Cli::parse();
    if let Some(Command::Worker(worker)) = cli.command {
        worker.run()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = FibOptions::new(cli.layer);
    opts.broker = cli.broker;
    opts.workers = cli.workers;
    opts.spawn_workers = cli.spawn_workers;
    if !cli.inputs.is_empty() {
        opts.inputs = cli.inputs;
    }
    let run = run(&opts)?;
    for (n, v) in &run.results {
        println!("fib({n}) = {v}");
    }
    run.print_stats();
    let wrong = run.wrong();
    if !wrong.is_empty() {
        eprintln!("WRONG results for {wrong:?}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
