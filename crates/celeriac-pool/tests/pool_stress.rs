//! Many tiny tasks, from one or several producers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use celeriac_pool::ThreadPool;

fn pool(threads: usize) -> ThreadPool {
    ThreadPool::builder()
        .threads(threads)
        .thread_name("test-stress")
        .build()
        .unwrap()
}

#[test]
fn hundred_thousand_tiny_spawned_tasks_all_complete() {
    const N: usize = 100_000;
    let pool = pool(2);
    let count = Arc::new(AtomicUsize::new(0));
    for _ in 0..N {
        let count = count.clone();
        pool.spawn(move || {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    pool.shutdown();
    assert_eq!(count.load(Ordering::Relaxed), N);
    assert_eq!(pool.completed(), N as u64);
}

#[test]
fn hundred_thousand_tiny_executed_tasks_return_results() {
    const N: u64 = 100_000;
    let pool = pool(2);
    let handles: Vec<_> = (0..N).map(|i| pool.execute(move || i).unwrap()).collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, N * (N - 1) / 2);
    assert_eq!(pool.completed(), N);
}

#[test]
fn several_producers_at_once() {
    const PER: usize = 25_000;
    let pool = pool(3);
    let count = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            let count = count.clone();
            thread::spawn(move || {
                for _ in 0..PER {
                    let count = count.clone();
                    pool.spawn(move || {
                        count.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    pool.shutdown();
    assert_eq!(count.load(Ordering::Relaxed), 4 * PER);
}
