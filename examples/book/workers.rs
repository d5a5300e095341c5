//! Queue workers for the book's examples: `crawler worker` and
//! `fibonacci worker` run [`run_worker`]; the queue layers start a few of
//! them as child processes of this same binary ([`WorkerProcesses`]).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::Context;
use celeriac::{Registry, Worker, default_backend_url, open_backend, open_broker};

/// The argument that makes a worker exit when its parent does (its stdin
/// is a pipe from the parent; end of file means the parent is gone).
pub const EXIT_WITH_PARENT: &str = "--exit-with-parent";

/// `crawler worker` and `fibonacci worker`: run jobs of the queue layers
/// (and of the server layer on a shared broker) until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The broker to serve (the crawl's or the job server's).
    #[arg(long)]
    pub broker: String,
    /// Jobs at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Exit when stdin closes (for workers an example starts itself).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

impl WorkerArgs {
    /// Runs the worker ([`run_worker`]).
    pub fn run(&self) -> anyhow::Result<()> {
        run_worker(&self.broker, self.concurrency, self.exit_with_parent)
    }
}

/// Runs a worker on `broker` with `concurrency` thread slots and every
/// task linked into this binary, until Ctrl-C (or, with
/// `exit_with_parent`, until stdin closes). It claims one message per
/// free slot, and announces itself on stderr with its node name.
pub fn run_worker(broker: &str, concurrency: usize, exit_with_parent: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let b = open_broker(broker).with_context(|| format!("open {broker}"))?;
        let backend = open_backend(&default_backend_url(broker))?;
        let nodename = format!(
            "book-{}@{}",
            std::process::id(),
            celeriac::message::hostname()
        );
        let worker = Worker::builder(b, backend, Arc::new(Registry::linked(false)?))
            .concurrency(concurrency.max(1))
            // One message per free slot: idle workers get the waiting jobs.
            .prefetch_multiplier(1)
            .nodename(nodename)
            .build()?;
        eprintln!("worker {} ready on {broker}", worker.nodename());
        let running = tokio::spawn({
            let w = worker.clone();
            async move { w.run().await }
        });
        if exit_with_parent {
            tokio::task::spawn_blocking(|| {
                let mut sink = [0u8; 64];
                while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            })
            .await?;
        } else {
            tokio::signal::ctrl_c().await?;
        }
        worker.shutdown();
        running.await?;
        anyhow::Ok(())
    })
}

/// Worker processes started by a queue layer: this binary re-executed as
/// `PROGRAM worker --broker URL --concurrency N --exit-with-parent`.
/// Dropping it stops them.
#[derive(Debug)]
pub struct WorkerProcesses {
    children: Vec<Child>,
}

impl WorkerProcesses {
    /// Starts `count` workers on `broker`, each with `concurrency` slots.
    pub fn spawn(broker: &str, count: usize, concurrency: usize) -> anyhow::Result<Self> {
        let program = std::env::current_exe().context("the path of this program")?;
        let mut started = WorkerProcesses {
            children: Vec::new(),
        };
        for _ in 0..count {
            let child = Command::new(&program)
                .args(["worker", "--broker", broker, "--concurrency"])
                .arg(concurrency.max(1).to_string())
                .arg(EXIT_WITH_PARENT)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("start {} worker", program.display()))?;
            started.children.push(child);
        }
        Ok(started)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for WorkerProcesses {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Closing stdin asks for a warm shutdown.
            drop(c.stdin.take());
        }
        // A worker still running after 10 s (a task that will not end) is
        // killed: its unacknowledged messages go back to the queue.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
