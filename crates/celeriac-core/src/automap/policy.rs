//! The chunk-size policy of an automatic map, decided in one place: pure
//! functions of what was measured (per-item time, round trip) and what is
//! known (workers, items left), no clock and no IO.

use std::time::Duration;

use crate::{TaskError, TaskErrorKind};

/// How a map cuts its items into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChunkSize {
    /// Adaptive: start small, measure, grow towards
    /// [`ChunkPolicy::target`] of work per chunk (the default).
    #[default]
    Auto,
    /// Every chunk this many items (the last one may be shorter); `0`
    /// counts as 1.
    Fixed(usize),
}

impl std::str::FromStr for ChunkSize {
    type Err = String;

    /// `auto`, or a positive number of items.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ChunkSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(ChunkSize::Fixed(n)),
            _ => Err(format!(
                "expected `auto` or a positive number of items, got {s:?}"
            )),
        }
    }
}

/// The adaptive policy's knobs. [`ChunkPolicy::default`] aims at 10–50 ms
/// of work per chunk, starts at 8 items and grows 4x per measurement.
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::automap::{ChunkPolicy, Measured};
///
/// let policy = ChunkPolicy::default();
/// let mut m = Measured::default();
/// assert_eq!(policy.next_size(&m, 0, 1_000_000, 2), 8); // nothing measured yet
/// // 8 items ran in 8 µs of a 1 ms round trip: 1 µs an item.
/// m.record(8, Duration::from_millis(1), Some(Duration::from_micros(8)));
/// assert_eq!(policy.next_size(&m, 8, 1_000_000, 2), 32); // grows 4x
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ChunkPolicy {
    /// Work per chunk the policy aims at: at least `target.0`, at most
    /// `target.1`; it sizes for the middle of the two.
    pub target: (Duration, Duration),
    /// Items in the first chunks, before anything is measured.
    pub first: usize,
    /// How much a chunk may grow over the previous size.
    pub growth: usize,
    /// Never more items than this in one chunk.
    pub max: usize,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy {
            target: (Duration::from_millis(10), Duration::from_millis(50)),
            first: 8,
            growth: 4,
            max: 1 << 20,
        }
    }
}

/// What has been measured so far: a moving estimate of the time one item
/// takes on a worker, and the smallest round trip of a chunk seen (send,
/// store, receive: the wall time not spent running items, less any wait
/// behind other chunks).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    /// Seconds of work per item, once a chunk has finished.
    pub per_item: Option<f64>,
    /// Seconds of round trip per chunk (the smallest seen), once a chunk
    /// has finished.
    pub round_trip: Option<f64>,
    /// Chunks measured.
    pub chunks: u64,
}

/// Weight of a new sample in the moving estimates.
const ALPHA: f64 = 0.3;

impl Measured {
    /// Records a finished chunk of `items`: its wall time from sending to
    /// result, and the worker's own run time when the result carries it
    /// (celeriac workers store `runtime`; Python Celery's do not, and then
    /// the work is the wall time less the round trip measured so far, an
    /// overestimate when chunks queue behind each other: chunks then stay
    /// smaller, never larger, than the target).
    pub fn record(&mut self, items: usize, wall: Duration, runtime: Option<Duration>) {
        let items = items.max(1) as f64;
        let wall = wall.as_secs_f64();
        let (work, trip) = match runtime {
            Some(r) => {
                let r = r.as_secs_f64().min(wall);
                (r, Some(wall - r))
            }
            None => match self.round_trip {
                Some(rt) => ((wall - rt).max(0.0), None),
                // The first chunk without a runtime: all of it counts as
                // round trip, and as work (an upper bound of both).
                None => (wall, Some(wall)),
            },
        };
        let sample = work / items;
        self.per_item = Some(match self.per_item {
            // A rise is taken at once (chunks must shrink before they
            // overrun the target); a fall is smoothed.
            Some(old) if sample > 1.5 * old => sample,
            Some(old) => old + ALPHA * (sample - old),
            None => sample,
        });
        if let Some(t) = trip {
            // The smallest seen: a chunk's wait in the queue behind other
            // chunks is not round trip, and counting it would put more
            // chunks in flight, which would wait longer (a feedback loop
            // seen in W7 before this rule: 1.1 s "round trips", 26 chunks
            // in flight).
            self.round_trip = Some(match self.round_trip {
                Some(old) => old.min(t),
                None => t,
            });
        }
        self.chunks += 1;
    }
}

impl ChunkPolicy {
    /// The size of the next chunk: `first` before any measurement; then
    /// the size whose work is the middle of [`ChunkPolicy::target`], grown
    /// at most `growth` times over `last` (shrunk at once when per-item
    /// time rose), never more than an even share of the `remaining` items
    /// among `workers` (the tail keeps every worker busy) unless that
    /// share is under an eighth of the target size (tiny tail chunks cost
    /// more round trips than the imbalance they avoid), never 0.
    pub fn next_size(&self, m: &Measured, last: usize, remaining: usize, workers: usize) -> usize {
        let workers = workers.max(1);
        let share = remaining.div_ceil(workers).max(1);
        let Some(per_item) = m.per_item else {
            return self.first.clamp(1, self.max.max(1)).min(share);
        };
        let mid = (self.target.0.as_secs_f64() + self.target.1.as_secs_f64()) / 2.0;
        // A task too quick to time (0 s) sizes for 1 ns an item.
        let ideal = (mid / per_item.max(1e-9)).round();
        let ideal = if ideal >= self.max as f64 {
            self.max
        } else {
            ideal as usize
        };
        let grown = last.max(1).saturating_mul(self.growth.max(1));
        let share = share.max(ideal / 8);
        ideal
            .min(grown)
            .min(share)
            .min(remaining)
            .clamp(1, self.max.max(1))
    }

    /// Chunks to keep in flight for `workers` worker slots: one running
    /// and one waiting for each (so a worker never idles for a round
    /// trip), more when a round trip is longer than a chunk's work.
    pub fn in_flight(&self, m: &Measured, chunk: usize, workers: usize) -> usize {
        let workers = workers.max(1);
        let per_worker = match (m.per_item, m.round_trip) {
            (Some(p), Some(rt)) => {
                let work = (p * chunk.max(1) as f64).max(1e-6);
                1 + (rt / work).ceil().clamp(1.0, 16.0) as usize
            }
            _ => 2,
        };
        workers * per_worker
    }

    /// Whether a failed chunk of `len` items is split in two and each half
    /// sent again, to find the failing items: not for a single item, and
    /// not for errors that are the chunk's rather than an item's (the task
    /// is not registered, or cannot run in a chunk; the chunk was
    /// revoked). Those fail every item of the chunk with the same error.
    pub fn split_failed(&self, err: &TaskError, len: usize) -> bool {
        len > 1
            && !matches!(
                err.kind(),
                TaskErrorKind::NotRegistered | TaskErrorKind::Revoked
            )
            && !matches!(err.exc_type(), "NotRegistered" | "NotImplementedError")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Feeds the policy the chunks it asks for, each item taking
    /// `per_item` on the worker with a `trip` round trip; returns the sizes.
    fn sizes(per_item: Duration, trip: Duration, total: usize, workers: usize) -> Vec<usize> {
        let p = ChunkPolicy::default();
        let mut m = Measured::default();
        let (mut left, mut last, mut out) = (total, 0, Vec::new());
        while left > 0 {
            let n = p.next_size(&m, last, left, workers);
            let run = per_item * n as u32;
            m.record(n, run + trip, Some(run));
            out.push(n);
            left -= n;
            last = n;
        }
        out
    }

    #[test]
    fn starts_small_and_grows_geometrically_to_the_target() {
        // 1 µs an item: the middle of 10-50 ms is 30,000 items.
        let s = sizes(us(1), us(500), 1_000_000, 2);
        assert_eq!(&s[..6], &[8, 32, 128, 512, 2048, 8192]);
        assert_eq!(s[6], 30_000);
        // Then the target size, and a short tail no smaller than an
        // eighth of it (but the very last chunk).
        assert!(s[7..].iter().all(|&n| n <= 30_000), "{s:?}");
        assert!(s[7..s.len() - 1].iter().all(|&n| n >= 30_000 / 8), "{s:?}");
        assert!(s.len() <= 6 + 1_000_000 / 30_000 + 8, "{s:?}");
        assert_eq!(s.iter().sum::<usize>(), 1_000_000);
    }

    #[test]
    fn every_grown_chunk_is_within_the_target() {
        let p = ChunkPolicy::default();
        for per_item_ns in [100u64, 1_000, 10_000, 100_000] {
            let per_item = Duration::from_nanos(per_item_ns);
            let s = sizes(per_item, us(800), 10_000_000, 4);
            // Once grown (and before the tail), work per chunk is 10-50 ms.
            let steady = s.iter().copied().max().unwrap();
            let work = per_item * steady as u32;
            assert!(
                work >= p.target.0 && work <= p.target.1,
                "{per_item_ns} ns: {steady} items = {work:?}"
            );
        }
    }

    #[test]
    fn shrinks_at_once_when_per_item_time_rises() {
        let p = ChunkPolicy::default();
        let mut m = Measured::default();
        m.record(
            30_000,
            Duration::from_millis(31),
            Some(Duration::from_millis(30)),
        );
        assert_eq!(p.next_size(&m, 30_000, 1 << 30, 1), 30_000);
        // The task became 10x slower: the next chunk is 10x smaller.
        m.record(
            30_000,
            Duration::from_millis(301),
            Some(Duration::from_millis(300)),
        );
        assert_eq!(p.next_size(&m, 30_000, 1 << 30, 1), 3_000);
    }

    #[test]
    fn the_tail_is_shared_among_the_workers() {
        let p = ChunkPolicy::default();
        let mut m = Measured::default();
        m.record(8, us(1000), Some(us(8))); // 1 µs an item: 30,000 a chunk
        // 100,000 items left for 4 workers: no chunk above 25,000.
        assert_eq!(p.next_size(&m, 100_000, 100_000, 4), 25_000);
        // ... but none under an eighth of the target size, 3,750 ...
        assert_eq!(p.next_size(&m, 100_000, 10_000, 4), 3_750);
        // ... nor over what is left.
        assert_eq!(p.next_size(&m, 100_000, 3, 4), 3);
        assert_eq!(p.next_size(&Measured::default(), 0, 3, 2), 2);
    }

    #[test]
    fn never_zero_never_above_max() {
        let p = ChunkPolicy {
            max: 100,
            ..ChunkPolicy::default()
        };
        let mut m = Measured::default();
        m.record(1, us(10), Some(Duration::ZERO)); // too quick to time
        assert_eq!(p.next_size(&m, 1_000, 1 << 30, 1), 100);
        m.record(1, Duration::from_secs(10), Some(Duration::from_secs(9)));
        assert_eq!(p.next_size(&m, 100, 1 << 30, 1), 1);
    }

    #[test]
    fn without_a_runtime_the_round_trip_comes_from_the_first_chunk() {
        let mut m = Measured::default();
        m.record(8, Duration::from_millis(2), None);
        assert_eq!(m.round_trip, Some(0.002));
        // 100 items in 3 ms of wall, 2 ms of it round trip: 10 µs an item
        // (well under the first chunk's 250 µs overestimate).
        m.record(100, Duration::from_millis(3), None);
        let p = m.per_item.unwrap();
        assert!(p < 0.002 / 8.0 && p > 10e-6, "{p}");
    }

    #[test]
    fn queueing_does_not_count_as_round_trip() {
        let p = ChunkPolicy::default();
        let mut m = Measured::default();
        m.record(8, Duration::from_millis(2), Some(us(8)));
        // Chunks that waited a second behind others: the round trip stays
        // the 2 ms seen, and the window stays at two chunks per worker.
        for _ in 0..10 {
            m.record(
                30_000,
                Duration::from_millis(1030),
                Some(Duration::from_millis(30)),
            );
        }
        assert!(m.round_trip.unwrap() < 0.0021, "{m:?}");
        assert_eq!(p.in_flight(&m, 30_000, 2), 4);
    }

    #[test]
    fn in_flight_covers_every_worker_and_the_round_trip() {
        let p = ChunkPolicy::default();
        assert_eq!(p.in_flight(&Measured::default(), 8, 3), 6);
        let mut m = Measured::default();
        // 30 ms of work per chunk, 1 ms round trip: two per worker.
        m.record(
            30_000,
            Duration::from_millis(31),
            Some(Duration::from_millis(30)),
        );
        assert_eq!(p.in_flight(&m, 30_000, 4), 8);
        // A 100 ms round trip (a far broker) against 30 ms of work: 5.
        let mut far = Measured::default();
        far.record(
            30_000,
            Duration::from_millis(130),
            Some(Duration::from_millis(30)),
        );
        assert_eq!(p.in_flight(&far, 30_000, 1), 5);
    }

    #[test]
    fn item_failures_split_chunk_failures_do_not() {
        let p = ChunkPolicy::default();
        assert!(p.split_failed(&TaskError::new("boom"), 2));
        assert!(!p.split_failed(&TaskError::new("boom"), 1));
        assert!(!p.split_failed(&TaskError::not_registered("t.x"), 100));
        assert!(!p.split_failed(&TaskError::revoked("revoked"), 100));
        let not_impl = TaskError::typed("NotImplementedError", "builtins", "async");
        assert!(!p.split_failed(&not_impl, 100));
    }

    #[test]
    fn chunk_size_parses_auto_and_numbers() {
        assert_eq!("auto".parse::<ChunkSize>().unwrap(), ChunkSize::Auto);
        assert_eq!("500".parse::<ChunkSize>().unwrap(), ChunkSize::Fixed(500));
        assert!("0".parse::<ChunkSize>().is_err());
        assert!("x".parse::<ChunkSize>().is_err());
    }
}
