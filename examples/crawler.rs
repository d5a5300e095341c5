//! The book's web crawler on every layer: threads, processes, async, the
//! pp-style job server, and the queue.
//!
//! ```text
//! cargo run --release -p celeriac-examples --example crawler -- \
//!     --layer threads|processes|async|server|queue \
//!     [--broker URL] [--max-pages N] [--concurrency N] URL
//! cargo run --release -p celeriac-examples --example crawler -- worker --broker URL
//! ```
//!
//! It crawls the start URL's host only, resolves relative links, drops
//! fragments, fetches each page once, and ends with `crawled P pages, F
//! failed` (P: pages fetched with HTTP 200; F: links that failed: 404s,
//! timeouts, refused connections). With `--layer queue` the pages are
//! tasks on a broker (default: a temporary SQLite file) run by worker
//! processes it starts; `crawler worker --broker URL` in other processes
//! (or, on Redis, other machines) joins the same crawl, and each URL's
//! idempotency key makes it run once across all of them.

use std::process::ExitCode;
use std::time::Duration;

use celeriac_examples::book::Layer;
use celeriac_examples::book::crawl::{CrawlOptions, crawl};
use celeriac_examples::book::workers::WorkerArgs;
use clap::{Parser, Subcommand};

/// The book's web crawler on every celeriac layer.
#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// What runs the pages: threads, processes, async, server or queue.
    #[arg(long, default_value = "threads")]
    layer: Layer,
    /// The queue layer's broker (default: a temporary SQLite file), or the
    /// server layer's (default: in process).
    #[arg(long)]
    broker: Option<String>,
    /// Fetch at most this many URLs.
    #[arg(long, default_value_t = 1000)]
    max_pages: usize,
    /// Fetches in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests in flight to one host, per process.
    #[arg(long, default_value_t = 4)]
    per_host: usize,
    /// Timeout of one request, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// The queue layer: worker processes to start (0: only workers started
    /// elsewhere, with --broker).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The queue layer: the crawl's name (default: a fresh one). Crawlers
    /// given the same name on the same broker share the crawl.
    #[arg(long)]
    crawl_id: Option<String>,
    /// Print each failed link and why.
    #[arg(long, short)]
    verbose: bool,
    /// The start URL.
    url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run pages of crawls on a broker until Ctrl-C.
    Worker(WorkerArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    celeriac::init();
    let cli = Cli::parse();
    if let Some(Command::Worker(worker)) = cli.command {
        worker.run()?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(url) = cli.url else {
        anyhow::bail!("give a start URL (or `worker --broker URL`)");
    };
    let opts = CrawlOptions {
        broker: cli.broker,
        max_pages: cli.max_pages,
        concurrency: cli.concurrency,
        per_host: cli.per_host,
        timeout: Duration::try_from_secs_f64(cli.timeout)?,
        spawn_workers: cli.workers,
        crawl_id: cli.crawl_id,
        ..CrawlOptions::new(cli.layer)
    };
    let summary = crawl(&url, &opts)?;
    if cli.verbose {
        for (link, why) in &summary.failed {
            eprintln!("failed: {link}: {why}");
        }
    }
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}
