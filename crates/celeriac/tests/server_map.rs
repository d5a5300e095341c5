//! `Server::map` on the local server (memory://, threads): the items'
//! results in input order, adaptive chunk sizes, fixed chunks, a failing
//! item found alone (its chunk split), a chunk-level error, an empty map,
//! and the lane and broker paths alike.

use std::sync::atomic::{AtomicU64, Ordering};

use celeriac::automap::ChunkSize;
use celeriac::{Call, JobError, Server, TaskError, task};

#[task(name = "automap.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Fails on 7_777 (and counts its runs, to show the split re-runs items).
#[task(name = "automap.unlucky")]
fn unlucky(x: i64) -> Result<i64, TaskError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if x == 7_777 {
        return Err(TaskError::new(format!("{x} is unlucky")));
    }
    Ok(x)
}

fn server(lane: bool) -> Server {
    Server::builder()
        .workers(2)
        .local_lane(lane)
        .build()
        .unwrap()
}

#[test]
fn results_come_back_in_input_order_with_growing_chunks() {
    for lane in [true, false] {
        let server = server(lane);
        let n = 200_000i64;
        let results = server.map(add::call(0, 0), (0..n).map(|i| (i, 1)));
        assert_eq!(results.len(), n as usize);
        let mut it = results;
        let mut i = 0;
        for r in it.by_ref() {
            assert_eq!(r.unwrap(), i + 1, "item {i} (lane {lane})");
            i += 1;
        }
        assert_eq!(i, n);
        let s = it.stats();
        assert_eq!(s.sizes.iter().sum::<usize>(), n as usize);
        assert_eq!(s.sizes[0], 8, "starts small: {:?}", &s.sizes[..8]);
        assert!(
            s.max_size() >= 32 * s.sizes[0],
            "grows geometrically: {:?}",
            s.sizes
        );
        assert!(s.per_item.is_some() && s.round_trip.is_some(), "{s:?}");
        assert_eq!(s.splits, 0);
    }
}

#[test]
fn fixed_chunks_of_n() {
    let server = server(true);
    let results = server.map_with(
        add::call(0, 0),
        (0..1000i64).map(|i| (i, i)),
        ChunkSize::Fixed(300),
    );
    let stats_sizes = results.stats().sizes.clone();
    assert!(stats_sizes.is_empty(), "nothing is sent before it is read");
    let mut it = results;
    let values: Vec<i64> = it.by_ref().map(Result::unwrap).collect();
    assert_eq!(values, (0..1000).map(|i| 2 * i).collect::<Vec<_>>());
    assert_eq!(it.stats().sizes, vec![300, 300, 300, 100]);
}

#[test]
fn a_failing_item_gets_its_error_and_every_other_item_its_result() {
    let server = server(true);
    RUNS.store(0, Ordering::SeqCst);
    let n = 20_000i64;
    let results = server.map(unlucky::call(0), (0..n).map(|i| (i,)));
    let mut it = results;
    let out: Vec<Result<i64, JobError>> = it.by_ref().collect();
    assert_eq!(out.len(), n as usize);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as i64),
            Err(JobError::Task(e)) => {
                assert_eq!(i, 7_777, "only 7777 fails: {e}");
                assert_eq!(e.message(), "7777 is unlucky");
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
    let s = it.stats();
    assert!(s.splits >= 1, "the failed chunk was split: {s:?}");
    // The other items of the failed chunk ran again.
    assert!(RUNS.load(Ordering::SeqCst) > n as u64);
    // wait() gives the first error.
    let err = server
        .map(unlucky::call(0), [(7_777i64,)])
        .wait()
        .unwrap_err();
    assert_eq!(err.task_error().unwrap().message(), "7777 is unlucky");
}

#[test]
fn an_unregistered_task_fails_every_item_without_splitting() {
    let server = server(true);
    let mut it = server.map(Call::<i64>::new("automap.nope"), (0..100i64).map(|i| (i,)));
    let out: Vec<_> = it.by_ref().collect();
    assert_eq!(out.len(), 100);
    for r in &out {
        let e = r.as_ref().unwrap_err().task_error().unwrap();
        assert_eq!(e.exc_type(), "NotRegistered");
    }
    assert_eq!(it.stats().splits, 0);
}

#[test]
fn an_empty_map_returns_nothing_and_sends_nothing() {
    let server = server(true);
    let results = server.map(add::call(0, 0), Vec::<(i64, i64)>::new());
    assert!(results.is_empty());
    assert_eq!(results.wait().unwrap(), Vec::<i64>::new());
    assert_eq!(server.stats().local_lane, 0);
}
