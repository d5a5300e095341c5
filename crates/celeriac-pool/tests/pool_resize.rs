//! Growing and shrinking the pool at runtime without losing tasks.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use celeriac_pool::{ResizeError, ThreadPool};

/// Generous bound, only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds or `HANG` passes; returns whether it held.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + HANG;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    cond()
}

fn pool(threads: usize) -> ThreadPool {
    ThreadPool::builder()
        .threads(threads)
        .thread_name("test-resize")
        .build()
        .unwrap()
}

/// `n` parties meet; `arrive` returns false if the others did not come.
struct Rendezvous {
    arrived: Mutex<usize>,
    all: Condvar,
    n: usize,
}

impl Rendezvous {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            arrived: Mutex::new(0),
            all: Condvar::new(),
            n,
        })
    }

    fn arrive(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all.notify_all();
        let (arrived, timeout) = self
            .all
            .wait_timeout_while(arrived, HANG, |a| *a < self.n)
            .unwrap();
        !timeout.timed_out() || *arrived >= self.n
    }
}

#[test]
fn resize_while_busy_runs_every_task_exactly_once() {
    const N: usize = 20_000;
    let pool = pool(2);
    let runs: Arc<Vec<AtomicU8>> = Arc::new((0..N).map(|_| AtomicU8::new(0)).collect());
    let total = Arc::new(AtomicUsize::new(0));

    let resizer = {
        let pool = pool.clone();
        let total = total.clone();
        thread::spawn(move || {
            for (threads, after) in [(4, N / 5), (1, 2 * N / 5), (3, 3 * N / 5)] {
                assert!(
                    eventually(|| total.load(Ordering::Relaxed) >= after),
                    "tasks stalled before resizing to {threads}"
                );
                pool.set_threads(threads).unwrap();
                assert_eq!(pool.threads(), threads);
            }
        })
    };

    for i in 0..N {
        let runs = runs.clone();
        let total = total.clone();
        pool.spawn(move || {
            runs[i].fetch_add(1, Ordering::Relaxed);
            total.fetch_add(1, Ordering::Relaxed);
            if i.is_multiple_of(8) {
                thread::sleep(Duration::from_micros(5));
            }
        })
        .unwrap();
    }
    resizer.join().unwrap();

    assert!(
        eventually(|| total.load(Ordering::Relaxed) == N),
        "tasks lost"
    );
    assert!(
        eventually(|| pool.live_threads() == 3),
        "live threads {} never converged to 3",
        pool.live_threads()
    );
    pool.shutdown();
    assert_eq!(total.load(Ordering::Relaxed), N);
    let bad: Vec<usize> = (0..N)
        .filter(|&i| runs[i].load(Ordering::Relaxed) != 1)
        .collect();
    assert!(bad.is_empty(), "tasks not run exactly once: {bad:?}");
    assert_eq!(pool.completed(), N as u64);
}

#[test]
fn shrink_waits_for_busy_threads_and_never_drops_queued_tasks() {
    let pool = pool(4);
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Arc::new(Mutex::new(gate_rx));
    for _ in 0..4 {
        let gate_rx = gate_rx.clone();
        pool.spawn(move || {
            gate_rx.lock().unwrap().recv_timeout(HANG).unwrap();
        })
        .unwrap();
    }
    assert!(eventually(|| pool.active() == 4));
    let handles: Vec<_> = (0..1000)
        .map(|i| pool.execute(move || i).unwrap())
        .collect();
    assert_eq!(pool.queued(), 1000);

    pool.set_threads(1).unwrap();
    assert_eq!(pool.threads(), 1);
    // All four threads are busy: none may exit yet.
    thread::sleep(Duration::from_millis(20));
    assert_eq!(pool.live_threads(), 4);
    assert_eq!(pool.queued(), 1000);

    for _ in 0..4 {
        gate_tx.send(()).unwrap();
    }
    let results: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results, (0..1000).collect::<Vec<_>>());
    assert!(eventually(|| pool.live_threads() == 1));
    assert_eq!(pool.queued(), 0);
    assert_eq!(pool.completed(), 1004);
}

#[test]
fn idle_threads_exit_after_shrink() {
    let pool = pool(4);
    pool.set_threads(1).unwrap();
    assert!(eventually(|| pool.live_threads() == 1));
    // The remaining thread still works.
    assert_eq!(pool.execute(|| 3).unwrap().join(), Ok(3));
    // And the pool can grow again.
    pool.set_threads(3).unwrap();
    assert_eq!(pool.live_threads(), 3);
}

#[test]
fn grow_starts_threads_that_run_in_parallel() {
    let pool = pool(1);
    pool.set_threads(6).unwrap();
    assert_eq!(pool.threads(), 6);
    assert_eq!(pool.live_threads(), 6);
    // Six tasks that can only finish together need six threads.
    let meet = Rendezvous::new(6);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let meet = meet.clone();
            pool.execute(move || meet.arrive()).unwrap()
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join(), Ok(true));
    }
}

#[test]
fn queued_tasks_wake_idle_threads_for_parallelism() {
    // Two tasks that need each other, submitted to an idle pool, many times:
    // a lost wake-up would leave one task queued while a thread sleeps.
    let pool = pool(2);
    for round in 0..200u32 {
        let meet = Rendezvous::new(2);
        let a = {
            let meet = meet.clone();
            pool.execute(move || meet.arrive()).unwrap()
        };
        let b = pool.execute(move || meet.arrive()).unwrap();
        assert_eq!(a.join(), Ok(true), "round {round}");
        assert_eq!(b.join(), Ok(true), "round {round}");
        if round.is_multiple_of(20) {
            // Let the workers fall asleep now and then.
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn zero_threads_is_rejected_and_changes_nothing() {
    let pool = pool(2);
    assert!(matches!(pool.set_threads(0), Err(ResizeError::ZeroThreads)));
    assert_eq!(pool.threads(), 2);
    assert_eq!(pool.live_threads(), 2);
}

#[test]
fn concurrent_resizes_converge() {
    let pool = pool(2);
    let resizers: Vec<_> = (0..4)
        .map(|t| {
            let pool = pool.clone();
            thread::spawn(move || {
                for i in 0..50 {
                    pool.set_threads(1 + (i + t) % 5).unwrap();
                }
            })
        })
        .collect();
    for r in resizers {
        r.join().unwrap();
    }
    pool.set_threads(2).unwrap();
    assert!(eventually(|| pool.live_threads() == 2));
    let results: Vec<_> = (0..100).map(|i| pool.execute(move || i).unwrap()).collect();
    assert_eq!(
        results.into_iter().map(|h| h.join().unwrap()).sum::<i32>(),
        (0..100).sum::<i32>()
    );
}
