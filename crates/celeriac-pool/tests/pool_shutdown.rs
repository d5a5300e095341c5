//! Shutdown: queued tasks run, new work is refused, drop does not hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use celeriac_pool::{ResizeError, ThreadPool};

/// Generous bound, only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

fn pool(threads: usize) -> ThreadPool {
    ThreadPool::builder()
        .threads(threads)
        .thread_name("test-shutdown")
        .build()
        .unwrap()
}

#[test]
fn shutdown_runs_queued_tasks_then_refuses_new_ones() {
    let pool = pool(1);
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    pool.spawn(move || {
        gate_rx.recv_timeout(HANG).unwrap();
    })
    .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let ran = ran.clone();
        pool.spawn(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let handle = pool.execute(|| "queued result").unwrap();
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        gate_tx.send(()).unwrap();
    });
    pool.shutdown();
    releaser.join().unwrap();

    assert_eq!(ran.load(Ordering::SeqCst), 100);
    assert_eq!(handle.join(), Ok("queued result"));
    assert!(pool.is_shutdown());
    assert_eq!(pool.live_threads(), 0);
    assert_eq!(pool.completed(), 102);

    let rejected = pool.spawn(|| ()).unwrap_err();
    assert_eq!(rejected.to_string(), "thread pool is shut down");
    let f = pool.execute(|| 7).unwrap_err().into_inner();
    assert_eq!(f(), 7, "the rejected closure is handed back");
    assert!(matches!(pool.set_threads(3), Err(ResizeError::ShutDown)));
    assert_eq!(pool.completed(), 102);
}

#[test]
fn shutdown_is_idempotent_and_shared_by_clones() {
    let pool = pool(2);
    let clone = pool.clone();
    clone.shutdown();
    pool.shutdown();
    assert!(pool.is_shutdown());
    assert!(pool.shutdown_timeout(Duration::from_millis(1)));
    assert!(pool.spawn(|| ()).is_err());
}

#[test]
fn shutdown_timeout_reports_a_stuck_task() {
    let pool = pool(1);
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    pool.spawn(move || {
        gate_rx.recv_timeout(HANG).unwrap();
    })
    .unwrap();
    let handle = pool.execute(|| 1).unwrap();
    assert!(!pool.shutdown_timeout(Duration::from_millis(20)));
    assert!(pool.is_shutdown());
    assert!(pool.spawn(|| ()).is_err());
    gate_tx.send(()).unwrap();
    assert!(pool.shutdown_timeout(HANG));
    assert_eq!(handle.join(), Ok(1));
}

#[test]
fn dropping_the_last_handle_does_not_wait_for_a_stuck_task() {
    let pool = pool(1);
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    pool.spawn(move || {
        // Blocks until the end of the test (or `HANG`).
        let _ = gate_rx.recv_timeout(HANG);
    })
    .unwrap();
    let queued = pool.execute(|| "still runs").unwrap();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    thread::spawn(move || {
        drop(pool);
        dropped_tx.send(()).unwrap();
    });
    dropped_rx
        .recv_timeout(HANG)
        .expect("dropping the pool hung");
    assert!(!queued.is_finished());
    gate_tx.send(()).unwrap();
    // The detached worker drains the queue after the drop.
    assert_eq!(queued.join(), Ok("still runs"));
}

#[test]
fn handles_resolve_after_the_pool_is_dropped() {
    let pool = pool(2);
    let handles: Vec<_> = (0..200).map(|i| pool.execute(move || i).unwrap()).collect();
    drop(pool);
    let sum: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, (0..200).sum::<i32>());
}

#[test]
fn shutdown_while_producers_submit_loses_nothing() {
    let pool = pool(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            let ran = ran.clone();
            thread::spawn(move || {
                let mut accepted = 0usize;
                loop {
                    let ran = ran.clone();
                    let ok = pool
                        .spawn(move || {
                            ran.fetch_add(1, Ordering::SeqCst);
                        })
                        .is_ok();
                    if !ok {
                        return accepted;
                    }
                    accepted += 1;
                    if accepted.is_multiple_of(64) {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(30));
    pool.shutdown();
    let accepted: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert!(accepted > 0);
    assert_eq!(ran.load(Ordering::SeqCst), accepted);
    assert_eq!(pool.completed(), accepted as u64);
}
