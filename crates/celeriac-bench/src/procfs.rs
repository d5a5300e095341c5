//! Resident memory of a process tree, read from `/proc` (Linux).
//!
//! The peers sample RSS of the worker and its descendants with psutil; this
//! module does the same from `/proc/<pid>/status` (`VmRSS`, `VmHWM`) and
//! `/proc/<pid>/stat` (parent pids).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// One field of `/proc/<pid>/status` in bytes (the file gives kB).
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// The parent pid from `/proc/<pid>/stat` (the field after the command,
/// which may itself contain spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and all its live descendants.
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Sum of `field` (`VmRSS`, `VmHWM`) over the tree of `root`, in bytes, and
/// how many processes contributed.
pub(crate) fn tree_sum(root: u32, field: &str) -> (u64, usize) {
    tree(root)
        .into_iter()
        .filter_map(|pid| status_bytes(pid, field))
        .fold((0, 0), |(sum, n), b| (sum + b, n + 1))
}

/// CPU seconds (user + system) used so far by `root` and its live
/// descendants, from `/proc/<pid>/stat` (in Linux's USER_HZ, 100 a second).
pub(crate) fn tree_cpu_secs(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 1..];
            let mut fields = after.split_whitespace();
            // utime and stime are the 14th and 15th fields; `after` starts
            // at the 3rd.
            let utime: u64 = fields.nth(11)?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    ticks as f64 / 100.0
}

/// Bytes to MiB, one decimal (as the peers report).
pub(crate) fn mib(bytes: u64) -> f64 {
    crate::emit::round(bytes as f64 / (1024.0 * 1024.0), 1)
}

/// Samples the tree's summed `VmRSS` on a thread and keeps the peak.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    peak_procs: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling the tree of `root` every `every`.
    pub(crate) fn start(root: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let peak_procs = Arc::new(AtomicUsize::new(0));
        let (s, p, pp) = (stop.clone(), peak.clone(), peak_procs.clone());
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                loop {
                    let (bytes, procs) = tree_sum(root, "VmRSS");
                    if bytes > p.load(Ordering::Relaxed) {
                        p.store(bytes, Ordering::Relaxed);
                        pp.store(procs, Ordering::Relaxed);
                    }
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(every);
                }
            })
            .ok();
        RssSampler {
            stop,
            peak,
            peak_procs,
            thread,
        }
    }

    /// Stops sampling (after one last sample); returns the peak in bytes
    /// and the number of processes at the peak.
    pub(crate) fn stop(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak.load(Ordering::Relaxed),
            self.peak_procs.load(Ordering::Relaxed),
        )
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
