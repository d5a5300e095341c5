//! Queued work items and the one-shot result slot behind [`TaskHandle`].
//!
//! A task submitted with `execute` costs exactly one allocation: an
//! `Arc<TaskCell<F, R>>` that holds the closure until a worker takes it and
//! then the result until the handle takes it. The queue keeps it as
//! `Arc<dyn Runnable>`, the handle as `Arc<dyn Completion<R>>`: two views of
//! the same allocation. A fire-and-forget `spawn` costs one `Box`.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::Panicked;
use crate::shared::Shared;
use crate::spin::spin_until;

/// How long `join` polls before sleeping.
const JOIN_SPIN_BUDGET: Duration = Duration::from_micros(20);

/// A queued unit of work.
pub(crate) enum Job {
    /// A fire-and-forget closure from `spawn`.
    Spawned(Box<dyn SpawnedJob>),
    /// A task with a result slot, from `execute`.
    Task(Arc<dyn Runnable>),
}

impl Job {
    /// Runs the job, catching any panic, and reports it to
    /// [`Shared::task_finished`] before its result becomes visible to a
    /// handle. Returns what `task_finished` returned.
    pub(crate) fn run(self, shared: &Shared) -> bool {
        match self {
            Job::Spawned(job) => {
                let panicked = job.run();
                shared.task_finished(panicked)
            }
            Job::Task(task) => {
                let claimed = task.run(shared);
                // The last reference may be ours (handle dropped early), in
                // which case the result is dropped here; a panicking `Drop`
                // must not take the worker thread down.
                if catch_unwind(AssertUnwindSafe(move || drop(task))).is_err() {
                    shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
                }
                claimed
            }
        }
    }

    /// Disposes of a job that will never run: a task's handle then reports
    /// [`Panicked`] instead of waiting forever.
    pub(crate) fn cancel(self) {
        if let Job::Task(task) = self {
            task.cancel();
        }
    }
}

/// A boxed `FnOnce` that can be run, or turned back into the closure.
pub(crate) trait SpawnedJob: Send {
    /// Runs the closure, catching a panic; `true` if it panicked.
    fn run(self: Box<Self>) -> bool;
    /// Gives the closure back as `Box<dyn Any>` (its concrete type is `F`).
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<F: FnOnce() + Send + 'static> SpawnedJob for F {
    fn run(self: Box<Self>) -> bool {
        let f = *self;
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(()) => false,
            Err(payload) => {
                // Same treatment as a task's payload, minus the message.
                drop(Panicked::from_payload(payload));
                true
            }
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The queue's view of a task.
pub(crate) trait Runnable: Send + Sync {
    /// Runs the closure (once), reports it to [`Shared::task_finished`]
    /// (whose return value it returns), stores its result and wakes the
    /// joiner.
    fn run(&self, shared: &Shared) -> bool;
    /// Stores a "never ran" error if the closure has not run.
    fn cancel(&self);
}

/// The handle's view of a task.
trait Completion<R>: Send + Sync {
    fn slot(&self) -> &Slot<R>;
}

/// One-shot result slot: a mutex-protected state plus a condvar to sleep on.
/// Both are a few bytes (`parking_lot`), and notifying a condvar nobody waits
/// on is a single atomic load.
pub(crate) struct Slot<R> {
    /// Set once the state left `Pending`, for lock-free polling.
    done: AtomicBool,
    state: Mutex<SlotState<R>>,
    ready: Condvar,
}

enum SlotState<R> {
    Pending,
    Done(Result<R, Panicked>),
    Taken,
}

impl<R> Slot<R> {
    fn new() -> Self {
        Self {
            done: AtomicBool::new(false),
            state: Mutex::new(SlotState::Pending),
            ready: Condvar::new(),
        }
    }

    fn complete(&self, result: Result<R, Panicked>) {
        let mut state = self.state.lock();
        if matches!(*state, SlotState::Pending) {
            *state = SlotState::Done(result);
            self.done.store(true, Ordering::Release);
            drop(state);
            self.ready.notify_one();
        }
    }
}

/// The single allocation behind a task from `execute`.
pub(crate) struct TaskCell<F, R> {
    f: Mutex<Option<F>>,
    slot: Slot<R>,
}

impl<F, R> TaskCell<F, R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    pub(crate) fn new(f: F) -> Arc<Self> {
        Arc::new(Self {
            f: Mutex::new(Some(f)),
            slot: Slot::new(),
        })
    }

    /// Takes the closure back out (after the pool refused the task).
    pub(crate) fn take_closure(&self) -> Option<F> {
        self.f.lock().take()
    }

    pub(crate) fn into_handle(self: Arc<Self>) -> TaskHandle<R> {
        TaskHandle { cell: self }
    }
}

impl<F, R> Runnable for TaskCell<F, R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    fn run(&self, shared: &Shared) -> bool {
        let Some(f) = self.f.lock().take() else {
            return false;
        };
        let result = catch_unwind(AssertUnwindSafe(f)).map_err(Panicked::from_payload);
        let claimed = shared.task_finished(result.is_err());
        self.slot.complete(result);
        claimed
    }

    fn cancel(&self) {
        if let Some(f) = self.f.lock().take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
            self.slot.complete(Err(Panicked::new(
                "task was dropped by the pool before it ran",
            )));
        }
    }
}

impl<F, R> Completion<R> for TaskCell<F, R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    fn slot(&self) -> &Slot<R> {
        &self.slot
    }
}

/// A handle to the result of a task submitted with
/// [`ThreadPool::execute`](crate::ThreadPool::execute).
///
/// Dropping the handle does not cancel the task; its result is then dropped
/// on the worker thread.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use celeriac_pool::ThreadPool;
///
/// let pool = ThreadPool::builder().threads(2).build().unwrap();
///
/// let handle = pool.execute(|| 6 * 7).unwrap();
/// assert_eq!(handle.join(), Ok(42));
///
/// // Wait at most a while; on timeout the handle comes back.
/// let handle = pool.execute(|| "done").unwrap();
/// match handle.join_timeout(Duration::from_secs(10)) {
///     Ok(result) => assert_eq!(result, Ok("done")),
///     Err(handle) => drop(handle), // still running
/// }
/// ```
pub struct TaskHandle<R> {
    cell: Arc<dyn Completion<R>>,
}

impl<R> TaskHandle<R> {
    /// Blocks until the task has run and returns its value, or [`Panicked`]
    /// if it panicked.
    ///
    /// # Panics
    ///
    /// Panics if the result was already taken by [`try_join`](Self::try_join).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// assert_eq!(pool.execute(|| 1 + 1).unwrap().join(), Ok(2));
    /// ```
    pub fn join(self) -> Result<R, Panicked> {
        let slot = self.cell.slot();
        // Small tasks often finish within microseconds: poll briefly before
        // paying for a sleep and a wake-up.
        spin_until(JOIN_SPIN_BUDGET, || slot.done.load(Ordering::Acquire));
        let mut state = slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, SlotState::Taken) {
                SlotState::Done(result) => return result,
                SlotState::Pending => {
                    *state = SlotState::Pending;
                    slot.ready.wait(&mut state);
                }
                SlotState::Taken => panic!("TaskHandle::join: result already taken by try_join"),
            }
        }
    }

    /// Returns the result if the task has finished, without blocking.
    ///
    /// Returns `None` while the task is queued or running, and also after the
    /// result was taken by an earlier call.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let mut handle = pool.execute(|| 5).unwrap();
    /// let result = loop {
    ///     if let Some(result) = handle.try_join() {
    ///         break result;
    ///     }
    ///     std::thread::yield_now();
    /// };
    /// assert_eq!(result, Ok(5));
    /// assert!(handle.try_join().is_none()); // already taken
    /// ```
    pub fn try_join(&mut self) -> Option<Result<R, Panicked>> {
        let mut state = self.cell.slot().state.lock();
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(result) => Some(result),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Whether the task has finished (successfully or by panicking).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let handle = pool.execute(|| ()).unwrap();
    /// while !handle.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(handle.join(), Ok(()));
    /// ```
    pub fn is_finished(&self) -> bool {
        self.cell.slot().done.load(Ordering::Acquire)
    }

    /// Waits at most `timeout` for the result. On timeout the handle is
    /// given back (`Err(handle)`) so the caller can wait again later.
    ///
    /// # Panics
    ///
    /// Panics if the result was already taken by [`try_join`](Self::try_join).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// let handle = pool.execute(move || rx.recv().is_ok()).unwrap();
    /// // Blocked on the channel: times out, and we get the handle back.
    /// let handle = handle.join_timeout(Duration::from_millis(10)).unwrap_err();
    /// tx.send(()).unwrap();
    /// let result = handle.join_timeout(Duration::from_secs(60)).ok().unwrap();
    /// assert_eq!(result, Ok(true));
    /// ```
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<R, Panicked>, TaskHandle<R>> {
        let deadline = Instant::now().checked_add(timeout);
        {
            let slot = self.cell.slot();
            let mut state = slot.state.lock();
            loop {
                match std::mem::replace(&mut *state, SlotState::Taken) {
                    SlotState::Done(result) => return Ok(result),
                    SlotState::Pending => {
                        *state = SlotState::Pending;
                        match deadline {
                            Some(deadline) => {
                                if slot.ready.wait_until(&mut state, deadline).timed_out()
                                    && matches!(*state, SlotState::Pending)
                                {
                                    break;
                                }
                            }
                            // A timeout too large to represent: wait forever.
                            None => slot.ready.wait(&mut state),
                        }
                    }
                    SlotState::Taken => {
                        panic!("TaskHandle::join_timeout: result already taken by try_join")
                    }
                }
            }
        }
        Err(self)
    }
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match *self.cell.slot().state.lock() {
            SlotState::Pending => "pending",
            SlotState::Done(Ok(_)) => "finished",
            SlotState::Done(Err(_)) => "panicked",
            SlotState::Taken => "taken",
        };
        f.debug_struct("TaskHandle").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_shared() -> Shared {
        Shared::new(0, 1, String::new(), None)
    }

    #[test]
    fn cancelled_task_reports_panicked() {
        let cell = TaskCell::new(|| 1u8);
        let job = Job::Task(cell.clone());
        let handle = cell.into_handle();
        assert!(!handle.is_finished());
        job.cancel();
        let err = handle.join().unwrap_err();
        assert!(err.message().contains("dropped"), "{err}");
    }

    #[test]
    fn run_twice_runs_once() {
        let shared = test_shared();
        let cell = TaskCell::new(|| 7u8);
        cell.run(&shared);
        cell.run(&shared);
        assert_eq!(shared.stats.completed.load(Ordering::Relaxed), 1);
        cell.cancel(); // no effect after running
        assert_eq!(cell.into_handle().join(), Ok(7));
    }

    #[test]
    fn spawned_job_gives_closure_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        fn roundtrip<G: FnOnce() + Send + 'static>(g: G) -> G {
            let job: Box<dyn SpawnedJob> = Box::new(g);
            *job.into_any().downcast::<G>().expect("same concrete type")
        }
        let counter = Arc::new(AtomicUsize::new(0));
        let c = counter.clone();
        let f = roundtrip(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        f();
        assert_eq!(counter.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn payload_kinds() {
        let p = catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(Panicked::from_payload(p).message(), "static");
        let p = catch_unwind(|| panic!("{}", String::from("owned"))).unwrap_err();
        assert_eq!(Panicked::from_payload(p).message(), "owned");
        let p = catch_unwind(|| std::panic::panic_any(42u32)).unwrap_err();
        assert_eq!(Panicked::from_payload(p).message(), "Box<dyn Any>");
    }

    #[test]
    fn debug_shows_state() {
        let cell = TaskCell::new(|| 1u8);
        let runnable: Arc<dyn Runnable> = cell.clone();
        let handle = cell.into_handle();
        assert!(format!("{handle:?}").contains("pending"));
        runnable.run(&test_shared());
        assert!(format!("{handle:?}").contains("finished"));
    }
}
