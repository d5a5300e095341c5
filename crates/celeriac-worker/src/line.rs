//! Reservations: how many messages the worker holds ahead of its execution
//! slots (prefetch), the line in which reserved messages wait to start
//! ([`Line`]), and each message's claim on a place in it and on a slot
//! ([`Slot`]).
//!
//! The claim loop reserves up to [`Reservations::reserve_per_slot`]
//! messages per execution slot: as many as are expected to start within
//! [`PREFETCH_WAIT`], judged from an EWMA of task runtimes, so a message
//! never waits behind long tasks while another worker could run it.
//! Reserved messages start in the order they were claimed; only the first
//! in line is woken when a slot frees.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How long a reserved message may expect to wait for a slot: the worker
/// reserves ahead only as many messages per slot as it expects to start
/// within this time (from the tasks' average runtime), so that a message
/// never waits behind long tasks while another worker could run it.
const PREFETCH_WAIT: Duration = Duration::from_millis(50);

/// The worker's execution slots and the messages reserved for them.
#[derive(Debug)]
pub(crate) struct Reservations {
    /// Execution slots (the worker's concurrency).
    target: AtomicUsize,
    /// The most messages reserved per execution slot.
    prefetch: usize,
    /// Average runtime of the recent tasks in microseconds (an EWMA;
    /// `u64::MAX` before the first task finishes).
    avg_runtime_us: AtomicU64,
    /// Messages claimed and not yet run (waiting for a slot or running).
    reserved: AtomicUsize,
    /// Execution slots in use.
    executing: AtomicUsize,
    /// Reserved messages, in the order they start.
    line: Mutex<Line>,
    /// Told when a reservation ends, so the claim loop can claim again.
    freed: Notify,
    /// Set once the worker shuts down.
    stopping: AtomicBool,
}

impl Reservations {
    pub(crate) fn new(concurrency: usize, prefetch: usize) -> Self {
        Reservations {
            target: AtomicUsize::new(concurrency),
            prefetch,
            avg_runtime_us: AtomicU64::new(u64::MAX),
            reserved: AtomicUsize::new(0),
            executing: AtomicUsize::new(0),
            line: Mutex::new(Line::default()),
            freed: Notify::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Execution slots.
    pub(crate) fn target(&self) -> usize {
        self.target.load(Ordering::SeqCst)
    }

    /// Sets the execution slots; returns the old number.
    pub(crate) fn set_target(&self, n: usize) -> usize {
        let old = self.target.swap(n, Ordering::SeqCst);
        self.freed.notify_waiters();
        self.line.lock().wake_front();
        old
    }

    /// The most messages reserved per execution slot.
    pub(crate) fn prefetch(&self) -> usize {
        self.prefetch
    }

    /// Messages reserved (waiting or running).
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::SeqCst)
    }

    /// Tasks running now.
    pub(crate) fn executing(&self) -> usize {
        self.executing.load(Ordering::SeqCst)
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Shutdown: the claim loop and every waiting message are woken.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.freed.notify_waiters();
        self.line.lock().wake_all();
    }

    /// Sleeps for `d`, or less if the worker starts shutting down.
    pub(crate) async fn sleep_unless_stopping(&self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.is_stopping() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = freed => {}
            }
        }
    }

    /// Waits until fewer messages are reserved than the worker may hold;
    /// returns how many more it may claim, or 0 when it is shutting down.
    pub(crate) async fn room(&self) -> usize {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let limit = self.target() * self.reserve_per_slot();
            let busy = self.reserved();
            if self.is_stopping() {
                return 0;
            }
            if busy < limit {
                return limit - busy;
            }
            freed.await;
        }
    }

    /// Waits until `done()` holds, looking again each time a reservation
    /// ends or [`wake`](Self::wake) is called.
    pub(crate) async fn until(&self, done: impl Fn() -> bool) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if done() {
                return;
            }
            freed.await;
        }
    }

    /// Wakes whoever waits in [`room`](Self::room) or
    /// [`until`](Self::until).
    pub(crate) fn wake(&self) {
        self.freed.notify_waiters();
    }

    /// Reserves a slot for a message just claimed, and gives it its place
    /// in line: messages start in the order they were claimed. Called by
    /// the claim loop itself, before the message's handler is spawned, so
    /// that the next [`room`](Self::room) counts it; the handler turns it
    /// into its [`Slot`].
    pub(crate) fn reserve(&self) -> Reserved {
        self.reserved.fetch_add(1, Ordering::SeqCst);
        let wake = Arc::new(Notify::new());
        let ticket = self.line.lock().join(&wake);
        Reserved { ticket, wake }
    }

    /// A running task gives its execution slot and its reservation up
    /// while it waits for its subtasks, so that another message (one of
    /// them, say) runs in its place. It must [`resume`](Self::resume) (or
    /// [`resume_now`](Self::resume_now)) before its run ends.
    pub(crate) fn suspend(&self) {
        self.executing.fetch_sub(1, Ordering::SeqCst);
        self.reserved.fetch_sub(1, Ordering::SeqCst);
        self.line.lock().wake_front();
        self.freed.notify_waiters();
    }

    /// Takes the slot given up with [`suspend`](Self::suspend) back: the
    /// next one free, before any reserved message waiting in line. A
    /// shutdown does not stop it (the task is running and must finish).
    pub(crate) async fn resume(&self) {
        let wake = Arc::new(Notify::new());
        let ticket = self.line.lock().enter(&wake, true);
        // Leaves the line if this future is dropped while it waits.
        struct InLine<'a>(&'a Reservations, Option<u64>);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                if let Some(t) = self.1 {
                    self.0.line.lock().leave(t);
                }
            }
        }
        let mut in_line = InLine(self, Some(ticket));
        loop {
            {
                let mut line = self.line.lock();
                let target = self.target();
                if line.is_first(ticket) && self.executing.load(Ordering::SeqCst) < target {
                    line.pop_front();
                    in_line.1 = None;
                    self.reserved.fetch_add(1, Ordering::SeqCst);
                    let running = self.executing.fetch_add(1, Ordering::SeqCst) + 1;
                    if running < target {
                        line.wake_front();
                    }
                    return;
                }
            }
            wake.notified().await;
        }
    }

    /// Takes the slot given up with [`suspend`](Self::suspend) back at
    /// once, over the concurrency if need be: for a wait that ends without
    /// [`resume`](Self::resume) (its task was aborted meanwhile).
    pub(crate) fn resume_now(&self) {
        self.reserved.fetch_add(1, Ordering::SeqCst);
        self.executing.fetch_add(1, Ordering::SeqCst);
    }

    /// A job handed to the local lane takes an execution slot (and a
    /// reservation) at once, over the concurrency if need be (it waits for
    /// a thread in the pool's queue), so that messages claimed meanwhile
    /// wait in line for a slot as they would behind any message claimed
    /// before them.
    pub(crate) fn occupy(&self) {
        self.resume_now();
    }

    /// A job on the local lane has finished: its slot goes to the first
    /// in line.
    pub(crate) fn vacate(&self) {
        self.suspend();
    }

    /// How many messages to reserve per slot: as many as are expected to
    /// start within [`PREFETCH_WAIT`], between 1 and `prefetch`. Until a
    /// task has finished, nothing is known: 1.
    fn reserve_per_slot(&self) -> usize {
        let avg = self.avg_runtime_us.load(Ordering::Relaxed);
        if avg == u64::MAX {
            return 1;
        }
        let fit = PREFETCH_WAIT.as_micros() as u64 / avg.max(1);
        (fit as usize).clamp(1, self.prefetch)
    }

    /// Folds a finished task's runtime into the average.
    pub(crate) fn record_runtime(&self, runtime: Duration) {
        let us = runtime.as_micros().min(u64::MAX as u128 - 1) as u64;
        let _ = self
            .avg_runtime_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == u64::MAX {
                    us
                } else {
                    (avg.saturating_mul(7) / 8).saturating_add(us / 8)
                })
            });
    }
}

/// The line of reserved messages waiting to start: they start in the order
/// they joined it (the order of their claim), as slots free up. Only the
/// first in line is woken when a slot frees, not every waiting message.
/// Tasks taking their slot back after a wait for subtasks
/// ([`Reservations::resume`]) go before every reserved message.
#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<(u64, Arc<Notify>)>,
    /// Running tasks that gave their slot up and want it back.
    resuming: VecDeque<(u64, Arc<Notify>)>,
    next: u64,
}

impl Line {
    fn join(&mut self, wake: &Arc<Notify>) -> u64 {
        self.enter(wake, false)
    }

    fn enter(&mut self, wake: &Arc<Notify>, resuming: bool) -> u64 {
        let ticket = self.next;
        self.next += 1;
        let queue = if resuming {
            &mut self.resuming
        } else {
            &mut self.waiting
        };
        queue.push_back((ticket, wake.clone()));
        if self.is_first(ticket) {
            wake.notify_one();
        }
        ticket
    }

    fn front(&self) -> Option<&(u64, Arc<Notify>)> {
        self.resuming.front().or(self.waiting.front())
    }

    fn pop_front(&mut self) {
        if self.resuming.pop_front().is_none() {
            self.waiting.pop_front();
        }
    }

    fn leave(&mut self, ticket: u64) {
        let was_first = self.is_first(ticket);
        for queue in [&mut self.resuming, &mut self.waiting] {
            if let Some(at) = queue.iter().position(|(t, _)| *t == ticket) {
                queue.remove(at);
            }
        }
        if was_first {
            self.wake_front();
        }
    }

    fn is_first(&self, ticket: u64) -> bool {
        self.front().is_some_and(|(t, _)| *t == ticket)
    }

    /// Wakes the first in line (a permit is kept if it is not waiting yet).
    fn wake_front(&self) {
        if let Some((_, wake)) = self.front() {
            wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for (_, wake) in self.resuming.iter().chain(&self.waiting) {
            wake.notify_one();
        }
    }
}

/// A reservation and a place in line, on its way from the claim loop to
/// the message's handler.
#[derive(Debug)]
pub(crate) struct Reserved {
    ticket: u64,
    wake: Arc<Notify>,
}

impl Reserved {
    /// The message's [`Slot`] in `res`, which made this reservation.
    pub(crate) fn into_slot(self, res: &Reservations) -> Slot<'_> {
        Slot {
            res,
            reserved: true,
            ticket: Some(self.ticket),
            wake: self.wake,
            executing: false,
        }
    }
}

/// A reserved message's claim on the worker: its reservation, its place in
/// line, and once [`Slot::start`] returns, an execution slot. All are
/// released once the task has run (or will not run), so that the next
/// claim overlaps with storing this task's result.
#[derive(Debug)]
pub(crate) struct Slot<'a> {
    res: &'a Reservations,
    reserved: bool,
    ticket: Option<u64>,
    wake: Arc<Notify>,
    executing: bool,
}

impl Slot<'_> {
    /// Leaves the line for a wait of its own (a rate limit), so that the
    /// messages behind it can start.
    pub(crate) fn step_aside(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.res.line.lock().leave(t);
        }
    }

    /// Joins the line again, at its end.
    fn rejoin(&mut self) {
        if self.ticket.is_none() && !self.executing {
            self.ticket = Some(self.res.line.lock().join(&self.wake));
        }
    }

    /// Waits until this message is first in line and a slot is free.
    /// Returns `false` if the worker is shutting down instead (the message
    /// is to be given back).
    pub(crate) async fn start(&mut self) -> bool {
        let res = self.res;
        self.rejoin();
        loop {
            if res.is_stopping() {
                self.step_aside();
                return false;
            }
            {
                let mut line = res.line.lock();
                let first = self.ticket.is_some_and(|t| line.is_first(t));
                let target = res.target();
                if first && res.executing.load(Ordering::SeqCst) < target {
                    line.pop_front();
                    self.ticket = None;
                    let running = res.executing.fetch_add(1, Ordering::SeqCst) + 1;
                    self.executing = true;
                    // The next in line may start too, if a slot is left (a
                    // wake without one would only put it back to sleep).
                    if running < target {
                        line.wake_front();
                    }
                    return true;
                }
            }
            // Woken when it becomes first, when a slot frees while it is
            // first, or at shutdown; a permit left by an earlier wake makes
            // this return at once, so no wake is lost.
            self.wake.notified().await;
        }
    }

    /// Gives up the place in line, the execution slot and the reservation.
    pub(crate) fn release(&mut self) {
        let res = self.res;
        self.step_aside();
        if std::mem::take(&mut self.executing) {
            res.executing.fetch_sub(1, Ordering::SeqCst);
            res.line.lock().wake_front();
        }
        if std::mem::take(&mut self.reserved) {
            res.reserved.fetch_sub(1, Ordering::SeqCst);
            res.freed.notify_waiters();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_one_per_slot_until_a_runtime_is_known_then_what_fits() {
        let res = Reservations::new(2, 4);
        assert_eq!(res.reserve_per_slot(), 1);
        res.record_runtime(Duration::from_millis(100));
        assert_eq!(res.reserve_per_slot(), 1, "long tasks: no prefetch");
        let res = Reservations::new(2, 4);
        res.record_runtime(Duration::from_micros(100));
        assert_eq!(
            res.reserve_per_slot(),
            4,
            "short tasks: up to the multiplier"
        );
    }

    #[tokio::test]
    async fn slots_start_in_claim_order_and_release_their_reservation() {
        let res = Reservations::new(1, 1);
        let mut first = res.reserve().into_slot(&res);
        let mut second = res.reserve().into_slot(&res);
        assert_eq!(res.reserved(), 2);
        assert!(first.start().await);
        assert_eq!(res.executing(), 1);
        // The second waits until the first releases its slot.
        let waiting = tokio::time::timeout(Duration::from_millis(50), second.start()).await;
        assert!(waiting.is_err(), "no free slot: the second must wait");
        first.release();
        assert!(second.start().await);
        drop(second);
        assert_eq!((res.reserved(), res.executing()), (0, 0));
    }

    #[tokio::test]
    async fn a_suspended_task_lets_the_next_start_and_resumes_before_the_line() {
        let res = Reservations::new(1, 1);
        let mut waiter = res.reserve().into_slot(&res);
        assert!(waiter.start().await);
        let mut sub = res.reserve().into_slot(&res);
        let mut queued = res.reserve().into_slot(&res);
        assert_eq!((res.reserved(), res.executing()), (3, 1));
        res.suspend();
        assert_eq!((res.reserved(), res.executing()), (2, 0));
        assert!(sub.start().await, "the suspended task's slot is free");
        // The waiter wants its slot back: it goes before `queued`.
        let resumed = res.resume();
        tokio::pin!(resumed);
        let early = tokio::time::timeout(Duration::from_millis(30), resumed.as_mut()).await;
        assert!(early.is_err(), "the slot is busy: resume waits");
        sub.release();
        resumed.await;
        assert_eq!(res.executing(), 1);
        let later = tokio::time::timeout(Duration::from_millis(30), queued.start()).await;
        assert!(later.is_err(), "the resumed task holds the slot");
        waiter.release();
        assert!(queued.start().await);
        drop(queued);
        assert_eq!((res.reserved(), res.executing()), (0, 0));
    }

    #[tokio::test]
    async fn an_abandoned_resume_leaves_the_line_and_the_counts_balance() {
        let res = Reservations::new(1, 1);
        let mut waiter = res.reserve().into_slot(&res);
        assert!(waiter.start().await);
        res.suspend();
        let mut other = res.reserve().into_slot(&res);
        assert!(other.start().await);
        let gave_up = tokio::time::timeout(Duration::from_millis(20), res.resume()).await;
        assert!(gave_up.is_err());
        res.resume_now();
        assert_eq!((res.reserved(), res.executing()), (2, 2));
        drop(other);
        drop(waiter);
        assert_eq!((res.reserved(), res.executing()), (0, 0));
        let mut next = res.reserve().into_slot(&res);
        assert!(next.start().await, "no stale resumer blocks the line");
    }

    #[tokio::test]
    async fn a_stopping_worker_gives_waiting_slots_back() {
        let res = Reservations::new(1, 1);
        let mut running = res.reserve().into_slot(&res);
        assert!(running.start().await);
        let mut waiting = res.reserve().into_slot(&res);
        res.stop();
        assert!(!waiting.start().await);
        assert_eq!(res.room().await, 0);
    }
}
