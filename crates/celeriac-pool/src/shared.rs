//! The state shared by the pool handles and the worker threads: the job
//! queue, the sleep/wake protocol, thread accounting for resizing, and the
//! counters.
//!
//! # Queue
//!
//! A `Mutex<VecDeque<Job>>` (`parking_lot`), FIFO. The same lock protects
//! the closed flag, the thread target and count, and the idle bookkeeping,
//! which keeps shutdown and resizing simple: a job is either queued before
//! the pool closes (and then runs) or rejected. It measured faster than a
//! lock-free `crossbeam-channel` queue with the same wake-up protocol on
//! the pipelined and spawn benchmarks (2 cores), whose extra atomics
//! (reader-lock for shutdown, fences, polling the channel's tail) cost more
//! than the lock hand-offs they saved.
//!
//! # Sleeping and waking
//!
//! Futex wake-ups cost microseconds, far more than a small task, so:
//!
//! - an idle worker first spins for a short while (one at a time, so idle
//!   workers never crowd out busy threads on small machines) polling
//!   `queued_hint`, then sleeps on `work`;
//! - a producer wakes a sleeper only if nobody spins (the spinner takes the
//!   job), and the notifier deregisters the sleeper it wakes, so a burst of
//!   pushes wakes each sleeper once;
//! - a worker that takes a job while more are queued and nobody spins
//!   wakes a sleeper ("passes the baton"), so long tasks still run in
//!   parallel;
//! - a worker whose task returns while the queue is empty claims the spinner
//!   role *before* publishing the task's result, so a caller that submits
//!   the next task as soon as it sees the result finds a spinner instead of
//!   waking a sleeping thread.
//!
//! A job is never left queued with every worker asleep: the producer pushes
//! and reads `spinning`/`sleeping` under the lock, and a spinner gives up
//! its role and re-checks the queue under the same lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::ResizeError;
use crate::job::Job;
use crate::spin::spin_until;

/// How long an idle worker spins for new work before sleeping.
const SPIN_BUDGET: Duration = Duration::from_micros(50);

pub(crate) struct Shared {
    /// Distinguishes pools, see `CURRENT_POOL` in `pool.rs`.
    pub(crate) id: usize,
    state: Mutex<QueueState>,
    /// `jobs.len()` as of the last push/pop, for spinners to poll.
    queued_hint: AtomicUsize,
    /// A worker holds the spinner role. Set freely by whoever wins the
    /// compare-exchange; cleared only under `state`'s lock.
    spinning: AtomicBool,
    /// Idle workers sleep here (waiting for work, a shrink or shutdown).
    work: Condvar,
    /// Shutdown waits here for `live` to drop.
    exited: Condvar,
    pub(crate) stats: Stats,
    /// Handles of started threads (those retired and finished are pruned
    /// when new ones start).
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) thread_name: String,
    pub(crate) stack_size: Option<usize>,
    pub(crate) next_index: AtomicUsize,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers waiting on `work` and not yet notified.
    sleeping: usize,
    /// Workers running a task.
    active: usize,
    /// No new work accepted; workers exit once `jobs` is empty.
    closed: bool,
    /// Requested number of threads.
    target: usize,
    /// Threads started (or being started) and not yet retired.
    live: usize,
    /// Workers blocked in a [`BlockingSection`](crate::BlockingSection):
    /// the pool keeps `target + blocked` threads, so that blocked ones do
    /// not take execution capacity away.
    blocked: usize,
}

/// Task counters, off the queue's cache line.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
}

impl Shared {
    /// A pool state with `threads` threads counted as live (the caller starts
    /// them).
    pub(crate) fn new(
        id: usize,
        threads: usize,
        thread_name: String,
        stack_size: Option<usize>,
    ) -> Self {
        Self {
            id,
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                sleeping: 0,
                active: 0,
                closed: false,
                target: threads,
                live: threads,
                blocked: 0,
            }),
            queued_hint: AtomicUsize::new(0),
            spinning: AtomicBool::new(false),
            work: Condvar::new(),
            exited: Condvar::new(),
            stats: Stats::default(),
            threads: Mutex::new(Vec::with_capacity(threads)),
            thread_name,
            stack_size,
            next_index: AtomicUsize::new(0),
        }
    }

    /// Queues a job; gives it back if the pool is closed.
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(job);
        }
        st.jobs.push_back(job);
        self.queued_hint.store(st.jobs.len(), Ordering::Relaxed);
        let wake = st.sleeping > 0 && !self.spinning.load(Ordering::Relaxed);
        if wake {
            st.sleeping -= 1;
        }
        drop(st);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Called by a worker when a task returned, before its result is
    /// published: counts it and, if the queue looks empty and nobody spins,
    /// claims the spinner role. Returns whether it claimed it (the worker
    /// then passes `true` to `next_job`).
    pub(crate) fn task_finished(&self, panicked: bool) -> bool {
        if panicked {
            self.stats.panicked.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.completed.fetch_add(1, Ordering::Release);
        self.queued_hint.load(Ordering::Relaxed) == 0
            && !self.spinning.load(Ordering::Relaxed)
            && self
                .spinning
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Waits for the next job of this worker; `None` means the worker must
    /// exit (surplus after a shrink, or shut down and drained), and it is no
    /// longer counted as live. `finished`: the worker just finished a task;
    /// `claimed`: it holds the spinner role (see `task_finished`).
    pub(crate) fn next_job(&self, finished: bool, mut claimed: bool) -> Option<Job> {
        let mut st = self.state.lock();
        if finished {
            st.active -= 1;
        }
        let mut spun = false;
        loop {
            if st.live > st.target + st.blocked || (st.closed && st.jobs.is_empty()) {
                st.live -= 1;
                if claimed {
                    self.spinning.store(false, Ordering::Relaxed);
                }
                drop(st);
                self.exited.notify_all();
                return None;
            }
            if let Some(job) = st.jobs.pop_front() {
                st.active += 1;
                self.queued_hint.store(st.jobs.len(), Ordering::Relaxed);
                if claimed {
                    self.spinning.store(false, Ordering::Relaxed);
                }
                // More work and nobody spinning to take it: pass the baton
                // to a sleeper, so that long tasks run in parallel.
                let wake = !st.jobs.is_empty()
                    && st.sleeping > 0
                    && !self.spinning.load(Ordering::Relaxed);
                if wake {
                    st.sleeping -= 1;
                }
                drop(st);
                if wake {
                    self.work.notify_one();
                }
                return Some(job);
            }
            if !claimed && !spun {
                claimed = self
                    .spinning
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok();
            }
            if claimed {
                drop(st);
                spin_until(SPIN_BUDGET, || self.queued_hint.load(Ordering::Relaxed) > 0);
                st = self.state.lock();
                self.spinning.store(false, Ordering::Relaxed);
                claimed = false;
                spun = true;
                continue;
            }
            // Whoever wakes us also removes us from `sleeping`.
            st.sleeping += 1;
            self.work.wait(&mut st);
            spun = false;
        }
    }

    /// A worker thread is unwinding out of its loop (a bug, not a task
    /// panic): stop counting it, and release the spinner role it may hold.
    pub(crate) fn worker_died(&self) {
        let mut st = self.state.lock();
        st.live = st.live.saturating_sub(1);
        self.spinning.store(false, Ordering::Relaxed);
        drop(st);
        self.exited.notify_all();
    }

    /// Wakes every sleeper (shrink, shutdown); `st` is the locked state.
    fn wake_all(&self, st: &mut QueueState) {
        st.sleeping = 0;
        self.work.notify_all();
    }

    /// Stops accepting work; workers drain the queue and exit. Idempotent.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        self.wake_all(&mut st);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Sets the target thread count; returns how many threads the caller
    /// must start (already counted as live).
    pub(crate) fn resize(&self, threads: usize) -> Result<usize, ResizeError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(ResizeError::ShutDown);
        }
        st.target = threads;
        let to_spawn = (threads + st.blocked).saturating_sub(st.live);
        st.live += to_spawn;
        if st.live > st.target + st.blocked {
            self.wake_all(&mut st);
        }
        Ok(to_spawn)
    }

    /// A worker is about to block: the pool keeps one more thread. Returns
    /// whether the caller must start one (already counted as live); false
    /// when the pool is closed (no new work needs a thread) or a surplus
    /// thread is still alive.
    pub(crate) fn block(&self) -> bool {
        let mut st = self.state.lock();
        st.blocked += 1;
        if st.closed || st.live >= st.target + st.blocked {
            return false;
        }
        st.live += 1;
        true
    }

    /// The compensating thread of a [`block`](Self::block) could not be
    /// started.
    pub(crate) fn block_spawn_failed(&self) {
        self.state.lock().live -= 1;
    }

    /// A worker blocked with [`block`](Self::block) runs again: the surplus
    /// thread retires when it next looks for work.
    pub(crate) fn unblock(&self) {
        let mut st = self.state.lock();
        st.blocked = st.blocked.saturating_sub(1);
        if st.live > st.target + st.blocked {
            self.wake_all(&mut st);
        }
    }

    pub(crate) fn blocked(&self) -> usize {
        self.state.lock().blocked
    }

    /// `unstarted` threads counted as live could not be started. The target
    /// falls back to what is live (at least 1); with `close`, the pool is
    /// also closed.
    pub(crate) fn spawn_failed(&self, unstarted: usize, close: bool) {
        let mut st = self.state.lock();
        st.live -= unstarted;
        st.target = st.live.max(1);
        if close {
            st.closed = true;
            self.wake_all(&mut st);
        }
    }

    /// Waits until at most `allowed` threads are live, or the deadline.
    pub(crate) fn wait_exited(&self, allowed: usize, deadline: Option<Instant>) -> bool {
        let mut st = self.state.lock();
        while st.live > allowed {
            match deadline {
                Some(deadline) => {
                    if self.exited.wait_until(&mut st, deadline).timed_out() {
                        return st.live <= allowed;
                    }
                }
                None => self.exited.wait(&mut st),
            }
        }
        true
    }

    pub(crate) fn target(&self) -> usize {
        self.state.lock().target
    }

    pub(crate) fn live(&self) -> usize {
        self.state.lock().live
    }

    pub(crate) fn queued(&self) -> usize {
        self.state.lock().jobs.len()
    }

    pub(crate) fn active(&self) -> usize {
        self.state.lock().active
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Jobs can only be left here if every worker died unexpectedly;
        // make sure no handle waits forever.
        for job in self.state.get_mut().jobs.drain(..) {
            job.cancel();
        }
    }
}
