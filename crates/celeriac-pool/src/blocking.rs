//! Blocking sections: a task that blocks on something only other tasks of
//! the same pool can finish (its subtasks) lends its thread's place to a
//! new one while it waits, as Dask's `secede`/`rejoin` and tokio's
//! `block_in_place` do.

use std::cell::Cell;

use crate::ThreadPool;
use crate::error::ResizeError;
use crate::pool::{CURRENT_POOL, spawn_worker};

/// While it lives, the pool runs one more thread than its target, so that
/// the worker thread that entered it may block without taking a thread
/// away from the pool's other tasks. Dropping it ends the section: one
/// thread retires when it next looks for work. See
/// [`ThreadPool::blocking_section`].
#[must_use = "the section ends when this guard is dropped"]
#[derive(Debug)]
pub struct BlockingSection {
    pool: Option<ThreadPool>,
}

impl BlockingSection {
    /// Whether the pool compensated for the blocked thread (the section was
    /// entered from one of its own worker threads).
    pub fn is_compensated(&self) -> bool {
        self.pool.is_some()
    }
}

impl Drop for BlockingSection {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.shared().unblock();
        }
    }
}

impl ThreadPool {
    /// Enters a blocking section: called from a task of this pool that is
    /// about to block for long (waiting for tasks that need this pool's
    /// threads to run), it starts a thread in its place until the returned
    /// guard drops. Called from any other thread, it does nothing: that
    /// thread holds no place in this pool.
    ///
    /// # Errors
    ///
    /// [`ResizeError::Spawn`] if the extra thread could not be started
    /// (the section is then not entered).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let inner = pool.clone();
    /// // A task that waits for another task of the same one-thread pool.
    /// let outer = pool.execute(move || {
    ///     let section = inner.blocking_section().unwrap();
    ///     assert!(section.is_compensated());
    ///     let sub = inner.execute(|| 21 * 2).unwrap();
    ///     sub.join().unwrap()
    /// }).unwrap();
    /// assert_eq!(outer.join(), Ok(42));
    /// ```
    pub fn blocking_section(&self) -> Result<BlockingSection, ResizeError> {
        let shared = self.shared();
        if CURRENT_POOL.with(Cell::get) != shared.id {
            return Ok(BlockingSection { pool: None });
        }
        if shared.block()
            && let Err(err) = spawn_worker(shared)
        {
            shared.block_spawn_failed();
            shared.unblock();
            return Err(ResizeError::Spawn(err));
        }
        Ok(BlockingSection {
            pool: Some(self.clone()),
        })
    }

    /// Worker threads blocked in a [`BlockingSection`] now.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// assert_eq!(pool.blocked_threads(), 0);
    /// ```
    pub fn blocked_threads(&self) -> usize {
        self.shared().blocked()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_blocked_task_gets_a_thread_in_its_place_and_it_retires_after() {
        let pool = ThreadPool::builder().threads(1).build().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let p = pool.clone();
        let blocked = pool
            .execute(move || {
                let _section = p.blocking_section().unwrap();
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
            .unwrap();
        entered_rx.recv().unwrap();
        assert_eq!(pool.blocked_threads(), 1);
        assert_eq!(pool.live_threads(), 2);
        // Another task runs although the only thread is blocked.
        let other = pool.execute(|| 7).unwrap();
        assert_eq!(other.join(), Ok(7));
        release_tx.send(()).unwrap();
        blocked.join().unwrap();
        assert_eq!(pool.blocked_threads(), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.live_threads() != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "surplus thread never retired"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn outside_the_pool_a_section_does_nothing() {
        let pool = ThreadPool::builder().threads(1).build().unwrap();
        let section = pool.blocking_section().unwrap();
        assert!(!section.is_compensated());
        assert_eq!(pool.live_threads(), 1);
        drop(section);
        assert_eq!(pool.blocked_threads(), 0);
    }

    #[test]
    fn a_resize_during_a_section_keeps_the_extra_thread() {
        let pool = ThreadPool::builder().threads(2).build().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let p = pool.clone();
        let blocked = pool
            .execute(move || {
                let _section = p.blocking_section().unwrap();
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
            .unwrap();
        entered_rx.recv().unwrap();
        pool.set_threads(1).unwrap();
        // Target 1 + 1 blocked: a task still runs beside the blocked one.
        assert_eq!(pool.execute(|| 1).unwrap().join(), Ok(1));
        release_tx.send(()).unwrap();
        blocked.join().unwrap();
        pool.shutdown();
        assert_eq!(pool.live_threads(), 0);
    }
}
