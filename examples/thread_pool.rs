//! The resizable thread pool: submit closures, get typed handles, resize
//! while busy. Run: `cargo run -p celeriac-examples --example thread_pool`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use celeriac::ThreadPool;

fn main() -> anyhow::Result<()> {
    // Sized to the machine.
    let pool = ThreadPool::new();
    println!("{} threads", pool.threads());

    // Typed results; a panic comes back as an error, the pool lives on.
    let answer = pool
        .execute(|| 6 * 7)
        .map_err(|_| anyhow::anyhow!("pool is shut down"))?;
    println!("6 * 7 = {}", answer.join()?);
    let boom = pool
        .execute(|| -> u32 { panic!("boom") })
        .map_err(|_| anyhow::anyhow!("shut down"))?;
    println!("panicking task: {:?}", boom.join().unwrap_err().message());

    // Resize while 10 000 tasks are queued: none is lost.
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..10_000 {
        let done = done.clone();
        pool.spawn(move || {
            done.fetch_add(1, Ordering::Relaxed);
        })
        .map_err(|_| anyhow::anyhow!("pool is shut down"))?;
    }
    pool.set_threads(4)?;
    pool.set_threads(1)?;
    pool.shutdown();
    println!("ran {} of 10000 tasks", done.load(Ordering::Relaxed));
    assert_eq!(done.load(Ordering::Relaxed), 10_000);
    Ok(())
}
