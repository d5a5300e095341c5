//! Cluster test helpers shared by `cli_cluster.rs` and `cli_automap.rs`:
//! starting `celeriac worker` nodes on a Redis URL, waiting until a
//! [`Server`] sees them, and counting the jobs each one finished.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use celeriac::Server;
use celeriac_testkit::process::LoggedChild;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// A `celeriac worker` node on `url`, with `slots` threads, reserving one
/// message per slot (so that idle nodes get the waiting jobs).
pub(crate) fn node(
    url: &str,
    dir: &Path,
    name: &str,
    slots: usize,
    secret: Option<&str>,
) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "worker",
        "--broker",
        url,
        "-n",
        name,
        "--prefetch-multiplier",
        "1",
    ])
    .args(["-c", &slots.to_string()])
    .env_remove("CELERIAC_SECRET");
    if let Some(s) = secret {
        cmd.env("CELERIAC_SECRET", s);
    }
    LoggedChild::spawn(cmd, dir, name)
}

/// Waits (polling every 20 ms) until `node` is in `active_nodes()` with
/// `slots` workers; returns how long it took. Panics after 30 s (a hang
/// guard).
pub(crate) fn wait_for_node(server: &Server, node: &str, slots: usize) -> Duration {
    let start = Instant::now();
    loop {
        if server.active_nodes().get(node) == Some(&slots) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{node} with {slots} workers never showed: {:?}",
            server.active_nodes()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Jobs finished by each node so far.
pub(crate) fn jobs_of(server: &Server, node: &str) -> u64 {
    server
        .stats()
        .nodes
        .iter()
        .find(|n| n.node == node)
        .map_or(0, |n| n.jobs)
}
