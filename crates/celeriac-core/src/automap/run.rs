//! The state of one automatic map, without IO or a clock: which items go
//! in the next chunk, what a finished chunk means for its items (results,
//! or a split to find the failing ones), and the results in input order.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use serde_json::Value;

use super::policy::{ChunkPolicy, ChunkSize, Measured};
use super::{MapError, MapStats};

/// One map's items, chunks and results.
#[derive(Debug)]
pub(crate) struct MapRun {
    /// Each item's positional arguments, a JSON list.
    items: Vec<Value>,
    results: Vec<Option<Result<Value, MapError>>>,
    /// The first item not yet sent.
    next: usize,
    /// Halves of failed chunks, to send again before fresh items.
    resend: VecDeque<Range<usize>>,
    /// The first item not yet handed out by [`MapRun::next_ready`].
    emitted: usize,
    in_flight: usize,
    /// The size of the last fresh chunk.
    last: usize,
    chunking: ChunkSize,
    policy: ChunkPolicy,
    measured: Measured,
    workers: usize,
    stats: MapStats,
}

impl MapRun {
    pub(crate) fn new(
        items: Vec<Value>,
        chunking: ChunkSize,
        policy: ChunkPolicy,
        workers: usize,
    ) -> Self {
        let n = items.len();
        MapRun {
            items,
            results: (0..n).map(|_| None).collect(),
            next: 0,
            resend: VecDeque::new(),
            emitted: 0,
            in_flight: 0,
            last: 0,
            chunking,
            policy,
            measured: Measured::default(),
            workers: workers.max(1),
            stats: MapStats {
                workers: workers.max(1),
                ..MapStats::default()
            },
        }
    }

    /// A map whose every item fails with `err` before anything is sent.
    pub(crate) fn failed(n: usize, err: MapError) -> Self {
        let mut run = MapRun::new(Vec::new(), ChunkSize::Auto, ChunkPolicy::default(), 1);
        run.results = (0..n).map(|_| Some(Err(err.clone()))).collect();
        run
    }

    pub(crate) fn len(&self) -> usize {
        self.results.len()
    }

    pub(crate) fn stats(&self) -> &MapStats {
        &self.stats
    }

    /// The arguments of the items in `range`, for a chunk's message.
    pub(crate) fn items(&self, range: &Range<usize>) -> Vec<Value> {
        self.items[range.clone()].to_vec()
    }

    /// The next chunk to send, if one may be in flight now: halves of a
    /// failed chunk first, then fresh items sized by the policy.
    pub(crate) fn next_chunk(&mut self) -> Option<Range<usize>> {
        let window = match self.chunking {
            ChunkSize::Auto => self
                .policy
                .in_flight(&self.measured, self.last, self.workers),
            // Fixed chunks all go out at once, as Celery's `chunks` group.
            ChunkSize::Fixed(_) => usize::MAX,
        };
        if self.in_flight >= window {
            return None;
        }
        let range = if let Some(r) = self.resend.pop_front() {
            r
        } else {
            let remaining = self.items.len().saturating_sub(self.next);
            if remaining == 0 {
                return None;
            }
            let size = match self.chunking {
                ChunkSize::Fixed(n) => n.max(1),
                ChunkSize::Auto => {
                    self.policy
                        .next_size(&self.measured, self.last, remaining, self.workers)
                }
            }
            .min(remaining);
            self.last = size;
            self.stats.sizes.push(size);
            let r = self.next..self.next + size;
            self.next += size;
            r
        };
        self.in_flight += 1;
        self.stats.chunks += 1;
        Some(range)
    }

    /// Records a finished chunk: its items' results, or its failure (split
    /// in two halves to send again, or every item failing with it).
    pub(crate) fn complete(
        &mut self,
        range: Range<usize>,
        end: Result<Value, MapError>,
        wall: Duration,
        runtime: Option<Duration>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let len = range.len();
        match end {
            Ok(Value::Array(values)) if values.len() == len => {
                self.measured.record(len, wall, runtime);
                self.stats.per_item = self.measured.per_item;
                self.stats.round_trip = self.measured.round_trip;
                for (slot, v) in self.results[range].iter_mut().zip(values) {
                    *slot = Some(Ok(v));
                }
            }
            Ok(other) => {
                let err = MapError::Decode(format!(
                    "a chunk of {len} items returned {}, not a list of {len} results",
                    short(&other)
                ));
                self.fail(range, err);
            }
            Err(MapError::Task(e)) if self.policy.split_failed(&e, len) => {
                let mid = range.start + len / 2;
                self.stats.splits += 1;
                // The halves go first, the earlier half before the later.
                self.resend.push_front(mid..range.end);
                self.resend.push_front(range.start..mid);
            }
            Err(e) => self.fail(range, e),
        }
    }

    fn fail(&mut self, range: Range<usize>, err: MapError) {
        for slot in &mut self.results[range] {
            *slot = Some(Err(err.clone()));
        }
    }

    /// The next result in input order, once it is known.
    pub(crate) fn next_ready(&mut self) -> Option<Result<Value, MapError>> {
        let r = self.results.get_mut(self.emitted)?.take()?;
        self.emitted += 1;
        Some(r)
    }

    /// Whether every result has been handed out.
    pub(crate) fn is_done(&self) -> bool {
        self.emitted == self.results.len()
    }

    /// Sets the worker count the policy sizes for.
    pub(crate) fn set_workers(&mut self, workers: usize) {
        self.workers = workers.max(1);
        self.stats.workers = self.workers;
    }
}

/// A value, cut for an error message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskError;
    use serde_json::json;

    fn run_of(n: usize, chunking: ChunkSize) -> MapRun {
        let items = (0..n as i64).map(|i| json!([i])).collect();
        MapRun::new(items, chunking, ChunkPolicy::default(), 1)
    }

    /// Runs every chunk with `f` on each item until the map is done;
    /// returns the results in the order handed out, and the chunks sent.
    fn drive(
        run: &mut MapRun,
        f: impl Fn(i64) -> Result<i64, TaskError>,
    ) -> (Vec<Result<Value, MapError>>, Vec<Range<usize>>) {
        let (mut out, mut sent) = (Vec::new(), Vec::new());
        while !run.is_done() {
            let mut batch = Vec::new();
            while let Some(r) = run.next_chunk() {
                batch.push(r);
            }
            // Finish the chunks in reverse order: results still come out
            // in input order.
            for r in batch.into_iter().rev() {
                sent.push(r.clone());
                let items = run.items(&r);
                let end: Result<Vec<Value>, TaskError> = items
                    .iter()
                    .map(|i| f(i[0].as_i64().unwrap()).map(|v| json!(v)))
                    .collect();
                let end = end.map(Value::Array).map_err(MapError::Task);
                run.complete(r, end, Duration::from_millis(1), Some(Duration::ZERO));
            }
            while let Some(r) = run.next_ready() {
                out.push(r);
            }
        }
        (out, sent)
    }

    #[test]
    fn results_come_out_in_input_order() {
        let mut run = run_of(1000, ChunkSize::Auto);
        let (out, sent) = drive(&mut run, |x| Ok(x * 2));
        let values: Vec<i64> = out
            .into_iter()
            .map(|r| r.unwrap().as_i64().unwrap())
            .collect();
        assert_eq!(values, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
        assert!(sent.len() > 1 && sent[0].len() == 8, "{sent:?}");
    }

    #[test]
    fn a_failing_item_is_found_by_splitting_and_fails_alone() {
        let mut run = run_of(64, ChunkSize::Fixed(64));
        let (out, sent) = drive(&mut run, |x| {
            if x == 37 {
                Err(TaskError::new("37 is unlucky"))
            } else {
                Ok(x)
            }
        });
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(v, &json!(i), "item {i}"),
                Err(MapError::Task(e)) => {
                    assert_eq!(i, 37);
                    assert_eq!(e.message(), "37 is unlucky");
                }
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        // 64 -> 32 -> ... -> 1: six splits, each sending two halves.
        assert_eq!(run.stats().splits, 6);
        assert_eq!(sent.len(), 1 + 2 * 6);
    }

    #[test]
    fn a_chunk_level_error_fails_the_chunk_without_splitting() {
        let mut run = run_of(10, ChunkSize::Fixed(10));
        let r = run.next_chunk().unwrap();
        run.complete(
            r,
            Err(MapError::Task(TaskError::not_registered("t.nope"))),
            Duration::ZERO,
            None,
        );
        assert_eq!(run.stats().splits, 0);
        let errs: Vec<_> = std::iter::from_fn(|| run.next_ready()).collect();
        assert_eq!(errs.len(), 10);
        assert!(
            errs.iter()
                .all(|e| matches!(e, Err(MapError::Task(t)) if t.exc_type() == "NotRegistered"))
        );
        assert!(run.is_done());
    }

    #[test]
    fn a_result_of_the_wrong_length_fails_its_items() {
        let mut run = run_of(3, ChunkSize::Fixed(3));
        let r = run.next_chunk().unwrap();
        run.complete(r, Ok(json!([1, 2])), Duration::ZERO, None);
        assert!(matches!(run.next_ready(), Some(Err(MapError::Decode(_)))));
    }

    #[test]
    fn an_empty_map_is_done_at_once() {
        let mut run = run_of(0, ChunkSize::Auto);
        assert!(run.is_done());
        assert!(run.next_chunk().is_none());
        assert!(run.next_ready().is_none());
    }

    #[test]
    fn the_window_holds_two_chunks_per_worker_at_first() {
        let items = (0..1000).map(|i| json!([i])).collect();
        let mut run = MapRun::new(items, ChunkSize::Auto, ChunkPolicy::default(), 3);
        let first: Vec<_> = std::iter::from_fn(|| run.next_chunk()).collect();
        assert_eq!(first.len(), 6);
        assert!(first.iter().all(|r| r.len() == 8));
    }
}
