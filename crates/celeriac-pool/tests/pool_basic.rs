//! Results, panics, FIFO order and the `TaskHandle` API.

use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use celeriac_pool::{Panicked, ThreadPool};
use proptest::prelude::*;

/// Generous bound, only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

fn pool(threads: usize) -> ThreadPool {
    ThreadPool::builder()
        .threads(threads)
        .thread_name("test-basic")
        .build()
        .unwrap()
}

#[test]
fn results_come_back() {
    let pool = pool(2);
    let handles: Vec<_> = (0..1000u64)
        .map(|i| pool.execute(move || i * i).unwrap())
        .collect();
    for (i, handle) in (0..1000u64).zip(handles) {
        assert_eq!(handle.join(), Ok(i * i));
    }
    let text = pool.execute(|| format!("{}-{}", "a", 1)).unwrap();
    let vec = pool.execute(|| vec![1u8, 2, 3]).unwrap();
    assert_eq!(text.join().unwrap(), "a-1");
    assert_eq!(vec.join().unwrap(), [1, 2, 3]);
    pool.shutdown();
    assert_eq!(pool.completed(), 1002);
    assert_eq!(pool.panicked(), 0);
}

#[test]
fn panics_are_reported_and_the_pool_keeps_working() {
    let pool = pool(2);
    let err = pool
        .execute(|| -> u32 { panic!("boom {}", 7) })
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err, Panicked::new("boom 7"));
    assert_eq!(err.to_string(), "task panicked: boom 7");
    let err = pool.execute(|| panic!("static str")).unwrap().join();
    assert_eq!(err.unwrap_err().message(), "static str");
    let err = pool
        .execute(|| std::panic::panic_any(42u32))
        .unwrap()
        .join();
    assert_eq!(err.unwrap_err().message(), "Box<dyn Any>");
    for _ in 0..10 {
        pool.spawn(|| panic!("fire and forget")).unwrap();
    }

    // The next 100 tasks succeed, on the same number of threads.
    let handles: Vec<_> = (0..100)
        .map(|i| pool.execute(move || i + 1).unwrap())
        .collect();
    let sum: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, (1..=100).sum::<i32>());
    assert_eq!(pool.threads(), 2);
    assert_eq!(pool.live_threads(), 2);
    pool.shutdown();
    assert_eq!(pool.panicked(), 13);
    assert_eq!(pool.completed(), 113);
}

#[test]
fn a_panicking_task_does_not_kill_its_thread() {
    let pool = pool(1);
    let before = pool
        .execute(|| thread::current().id())
        .unwrap()
        .join()
        .unwrap();
    assert!(pool.execute(|| panic!("x")).unwrap().join().is_err());
    pool.spawn(|| panic!("y")).unwrap();
    let after = pool
        .execute(|| thread::current().id())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(before, after, "the single worker thread was replaced");
    assert_eq!(pool.panicked(), 2);
}

#[test]
fn fifo_start_order_with_one_thread() {
    let pool = pool(1);
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    // Hold the only thread so that everything below queues up.
    pool.spawn(move || {
        gate_rx.recv_timeout(HANG).unwrap();
    })
    .unwrap();
    while pool.active() == 0 {
        thread::yield_now();
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..1000u32 {
        let order = order.clone();
        if i.is_multiple_of(2) {
            pool.spawn(move || order.lock().unwrap().push(i)).unwrap();
        } else {
            drop(pool.execute(move || order.lock().unwrap().push(i)).unwrap());
        }
    }
    assert_eq!(pool.queued(), 1000);
    gate_tx.send(()).unwrap();
    pool.shutdown();
    assert_eq!(*order.lock().unwrap(), (0..1000).collect::<Vec<u32>>());
}

#[test]
fn join_timeout_gives_the_handle_back() {
    let pool = pool(1);
    let (tx, rx) = mpsc::channel::<u32>();
    let handle = pool
        .execute(move || rx.recv_timeout(HANG).unwrap() * 2)
        .unwrap();
    let handle = match handle.join_timeout(Duration::from_millis(20)) {
        Ok(result) => panic!("finished without input: {result:?}"),
        Err(handle) => handle,
    };
    assert!(!handle.is_finished());
    tx.send(21).unwrap();
    match handle.join_timeout(HANG) {
        Ok(result) => assert_eq!(result, Ok(42)),
        Err(_) => panic!("task did not finish"),
    }
}

#[test]
fn try_join_and_is_finished() {
    let pool = pool(1);
    let (tx, rx) = mpsc::channel::<()>();
    let mut handle = pool
        .execute(move || {
            rx.recv_timeout(HANG).unwrap();
            "done"
        })
        .unwrap();
    assert!(handle.try_join().is_none());
    assert!(!handle.is_finished());
    tx.send(()).unwrap();
    let mut spins = 0u64;
    let result = loop {
        if let Some(result) = handle.try_join() {
            break result;
        }
        spins += 1;
        assert!(spins < 30_000, "task did not finish");
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(result, Ok("done"));
    assert!(handle.is_finished());
    assert!(handle.try_join().is_none(), "result can be taken only once");
}

#[test]
#[should_panic(expected = "already taken")]
fn join_after_try_join_panics() {
    let pool = pool(1);
    let mut handle = pool.execute(|| 1).unwrap();
    while handle.try_join().is_none() {
        thread::yield_now();
    }
    let _ = handle.join();
}

#[test]
fn handles_can_be_joined_on_other_threads() {
    let pool = pool(2);
    let handles: Vec<_> = (0..50).map(|i| pool.execute(move || i).unwrap()).collect();
    let joiners: Vec<_> = handles
        .into_iter()
        .map(|h| thread::spawn(move || h.join().unwrap()))
        .collect();
    let sum: i32 = joiners.into_iter().map(|j| j.join().unwrap()).sum();
    assert_eq!(sum, (0..50).sum::<i32>());
}

#[test]
fn tasks_can_submit_tasks() {
    let pool = pool(2);
    let (tx, rx) = mpsc::channel();
    let inner = pool.clone();
    pool.spawn(move || {
        for i in 0..10 {
            let tx = tx.clone();
            inner.spawn(move || tx.send(i).unwrap()).unwrap();
        }
    })
    .unwrap();
    let mut got: Vec<i32> = (0..10).map(|_| rx.recv_timeout(HANG).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn dropped_handles_do_not_leak_or_block() {
    let pool = pool(2);
    let marker = Arc::new(());
    for _ in 0..100 {
        let marker = marker.clone();
        drop(pool.execute(move || marker).unwrap());
    }
    pool.shutdown();
    // Every result (a clone of `marker`) was dropped with its task.
    assert_eq!(Arc::strong_count(&marker), 1);
}

#[test]
fn debug_output_is_informative() {
    let pool = pool(1);
    let handle = pool.execute(|| 5).unwrap();
    assert!(format!("{pool:?}").starts_with("ThreadPool {"));
    assert!(format!("{handle:?}").starts_with("TaskHandle {"));
    assert_eq!(handle.join(), Ok(5));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_batch_of_tasks_returns_every_result(
        threads in 1usize..5,
        values in proptest::collection::vec(any::<i64>(), 0..300),
    ) {
        let pool = ThreadPool::builder().threads(threads).build().unwrap();
        let handles: Vec<_> = values
            .iter()
            .map(|&v| pool.execute(move || v.wrapping_mul(3)).unwrap())
            .collect();
        let got: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let want: Vec<i64> = values.iter().map(|v| v.wrapping_mul(3)).collect();
        prop_assert_eq!(got, want);
        pool.shutdown();
        prop_assert_eq!(pool.completed(), values.len() as u64);
    }
}

#[test]
fn thread_spawn_failure_is_a_build_error() {
    // No system can map a 2^60-byte stack for each thread.
    let result = ThreadPool::builder().threads(2).stack_size(1 << 60).build();
    assert!(
        matches!(result, Err(celeriac_pool::BuildError::Spawn(_))),
        "{result:?}"
    );
}
