//! Per-node job statistics, as pp's `print_stats` shows them.

use std::fmt;
use std::time::Duration;

/// Statistics of one node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Node name (`local` for the server's own worker).
    pub node: String,
    /// Jobs finished by the node.
    pub jobs: u64,
    /// Share of all finished jobs, in percent.
    pub percent: f64,
    /// Sum of the jobs' execution times.
    pub total_time: Duration,
    /// Average execution time per job.
    pub time_per_job: Duration,
}

/// A snapshot of a server's statistics.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// One row per node that finished jobs, busiest first.
    pub nodes: Vec<NodeStats>,
    /// Time since the server was created.
    pub elapsed: Duration,
    /// Jobs submitted and not finished yet.
    pub pending: usize,
    /// The server's local worker count.
    pub workers: usize,
    /// Jobs that took the local lane (see
    /// [`ServerBuilder::local_lane`](crate::ServerBuilder::local_lane)).
    pub local_lane: u64,
}

impl fmt::Display for Stats {
    /// The pp layout:
    ///
    /// ```text
    /// Job execution statistics:
    ///  job count | % of all jobs | job time sum | time per job | job server
    ///         15 |        100.00 |       1.4060 |     0.093733 | local
    /// Time elapsed since server creation 0.8520
    /// 0 active tasks, 2 cores
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Job execution statistics:")?;
        writeln!(
            f,
            " job count | % of all jobs | job time sum | time per job | job server"
        )?;
        for n in &self.nodes {
            writeln!(
                f,
                "{:>10} | {:>13.2} | {:>12.4} | {:>12.6} | {}",
                n.jobs,
                n.percent,
                n.total_time.as_secs_f64(),
                n.time_per_job.as_secs_f64(),
                n.node
            )?;
        }
        writeln!(
            f,
            "Time elapsed since server creation {:.4}",
            self.elapsed.as_secs_f64()
        )?;
        write!(f, "{} active tasks, {} cores", self.pending, self.workers)
    }
}

/// The local node's tally of jobs that succeeded on the local lane: two
/// counters, so that the lane's pool threads take no lock to count a job.
#[derive(Debug, Default)]
pub(crate) struct LaneTally {
    jobs: std::sync::atomic::AtomicU64,
    nanos: std::sync::atomic::AtomicU64,
}

impl LaneTally {
    /// Counts a job that ran for `runtime`.
    pub(crate) fn add(&self, runtime: Duration) {
        use std::sync::atomic::Ordering;
        let nanos = u64::try_from(runtime.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.jobs.fetch_add(1, Ordering::Release);
    }

    /// Jobs counted, and their summed runtime in seconds.
    pub(crate) fn get(&self) -> (u64, f64) {
        use std::sync::atomic::Ordering;
        let jobs = self.jobs.load(Ordering::Acquire);
        (jobs, self.nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// The hasher of the server's maps keyed by task id: FxHash's fold (as
/// rustc's), which costs a few cycles per 8 bytes where the standard
/// SipHash costs tens of nanoseconds per id. Task ids come from this
/// program (random UUIDs, or ids its caller chose), not from the network.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in chunks.by_ref() {
            let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by task id, hashed with [`IdHasher`].
pub(crate) type IdMap<V> =
    std::collections::HashMap<String, V, std::hash::BuildHasherDefault<IdHasher>>;
