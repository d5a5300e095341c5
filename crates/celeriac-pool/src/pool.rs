//! The pool: shared queue, worker threads, resizing and shutdown.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{BuildError, ResizeError, ShutdownError};
use crate::job::{Job, SpawnedJob, TaskCell, TaskHandle};
use crate::shared::Shared;

/// Default prefix of worker thread names.
const DEFAULT_THREAD_NAME: &str = "celeriac-pool";

/// Source of pool ids, so a worker can tell which pool it belongs to.
static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// Id of the pool whose worker this thread is (0: not a worker).
    pub(crate) static CURRENT_POOL: Cell<usize> = const { Cell::new(0) };
}

/// A resizable pool of worker threads running closures in FIFO order.
///
/// `ThreadPool` is a cheap handle: clones share the same pool. Tasks are
/// started in submission order from a single shared queue. A panicking task
/// neither kills its thread nor poisons the pool: the panic is caught,
/// counted ([`panicked`](Self::panicked)) and, for [`execute`](Self::execute),
/// reported through the [`TaskHandle`].
///
/// The pool can be resized at any time with [`set_threads`](Self::set_threads);
/// shrinking never abandons a queued or running task.
///
/// # Shutdown and drop
///
/// [`shutdown`](Self::shutdown) stops accepting work, lets the threads run
/// every task already queued and joins them. Dropping the last handle
/// without calling `shutdown` sends the same signal but does **not** wait:
/// the threads finish the queued tasks in the background and then exit
/// (they are detached, so a task that never returns cannot hang the drop).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use celeriac_pool::ThreadPool;
///
/// let pool = ThreadPool::builder()
///     .threads(2)
///     .thread_name("celeriac-worker")
///     .build()
///     .unwrap();
///
/// // A task with a result.
/// let handle = pool.execute(|| 2 + 2).unwrap();
/// assert_eq!(handle.join(), Ok(4));
///
/// // Fire-and-forget tasks.
/// let counter = Arc::new(AtomicUsize::new(0));
/// for _ in 0..10 {
///     let counter = counter.clone();
///     pool.spawn(move || {
///         counter.fetch_add(1, Ordering::Relaxed);
///     })
///     .unwrap();
/// }
///
/// // Grow at runtime, then run everything queued and stop.
/// pool.set_threads(4).unwrap();
/// pool.shutdown();
/// assert_eq!(counter.load(Ordering::Relaxed), 10);
/// assert_eq!(pool.completed(), 11);
/// ```
#[derive(Clone)]
pub struct ThreadPool {
    inner: Arc<PoolHandle>,
}

/// Owned by the `ThreadPool` clones only (not by the workers), so that
/// dropping the last user handle can signal shutdown.
struct PoolHandle {
    shared: Arc<Shared>,
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        // Signal only: workers drain the queue and exit on their own.
        self.shared.close();
    }
}

/// Keeps the thread accounting right if a worker ever unwinds (task panics
/// are caught, so only a bug in the pool itself could get here).
struct UnwindGuard<'a>(&'a Shared);

impl Drop for UnwindGuard<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.worker_died();
        }
    }
}

fn worker_main(shared: Arc<Shared>) {
    CURRENT_POOL.with(|c| c.set(shared.id));
    let _guard = UnwindGuard(&shared);
    let mut finished = false;
    let mut claimed = false;
    while let Some(job) = shared.next_job(finished, claimed) {
        claimed = job.run(&shared);
        finished = true;
    }
}

pub(crate) fn spawn_worker(shared: &Arc<Shared>) -> io::Result<()> {
    let index = shared.next_index.fetch_add(1, Ordering::Relaxed);
    let mut builder = thread::Builder::new().name(format!("{}-{index}", shared.thread_name));
    if let Some(size) = shared.stack_size {
        builder = builder.stack_size(size);
    }
    let worker_shared = Arc::clone(shared);
    let handle = builder.spawn(move || worker_main(worker_shared))?;
    let mut threads = shared.threads.lock();
    // Forget threads that retired after a shrink (already exited).
    threads.retain(|h| !h.is_finished());
    threads.push(handle);
    Ok(())
}

/// Configures and builds a [`ThreadPool`].
///
/// # Examples
///
/// ```
/// use celeriac_pool::ThreadPool;
///
/// let pool = ThreadPool::builder()
///     .threads(3)
///     .thread_name("celeriac-worker")
///     .stack_size(1 << 20)
///     .build()
///     .unwrap();
/// assert_eq!(pool.threads(), 3);
/// let name = pool
///     .execute(|| std::thread::current().name().map(str::to_owned))
///     .unwrap()
///     .join()
///     .unwrap()
///     .unwrap();
/// assert!(name.starts_with("celeriac-worker-"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ThreadPoolBuilder {
    threads: Option<usize>,
    thread_name: Option<String>,
    stack_size: Option<usize>,
}

impl ThreadPoolBuilder {
    /// A builder with default settings: one thread per available CPU,
    /// threads named `celeriac-pool-N`, the platform's default stack size.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPoolBuilder;
    ///
    /// let pool = ThreadPoolBuilder::new().build().unwrap();
    /// assert!(pool.threads() >= 1);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of worker threads (at least 1; 0 makes [`build`](Self::build)
    /// fail). Defaults to [`std::thread::available_parallelism`], or 1 if that
    /// is unknown.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(2).build().unwrap();
    /// assert_eq!(pool.threads(), 2);
    /// ```
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Prefix of the worker thread names; threads are named `PREFIX-N` with
    /// N counting up from 0 over the pool's lifetime.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().thread_name("w").threads(1).build().unwrap();
    /// let name = pool.execute(|| std::thread::current().name().unwrap().to_owned());
    /// assert_eq!(name.unwrap().join().unwrap(), "w-0");
    /// ```
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = Some(prefix.into());
        self
    }

    /// Stack size of each worker thread, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().stack_size(4 << 20).threads(1).build().unwrap();
    /// assert_eq!(pool.execute(|| 1).unwrap().join(), Ok(1));
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Starts the threads and returns the pool.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroThreads`] if `threads(0)` was set,
    /// [`BuildError::Spawn`] if a thread could not be started (the threads
    /// already started are then shut down).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::{BuildError, ThreadPool};
    ///
    /// assert!(ThreadPool::builder().threads(1).build().is_ok());
    /// assert!(matches!(
    ///     ThreadPool::builder().threads(0).build(),
    ///     Err(BuildError::ZeroThreads)
    /// ));
    /// ```
    pub fn build(self) -> Result<ThreadPool, BuildError> {
        let threads = match self.threads {
            Some(0) => return Err(BuildError::ZeroThreads),
            Some(n) => n,
            None => thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        let shared = Arc::new(Shared::new(
            NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            threads,
            self.thread_name
                .unwrap_or_else(|| DEFAULT_THREAD_NAME.to_owned()),
            self.stack_size,
        ));
        for started in 0..threads {
            if let Err(err) = spawn_worker(&shared) {
                shared.spawn_failed(threads - started, true);
                return Err(BuildError::Spawn(err));
            }
        }
        Ok(ThreadPool {
            inner: Arc::new(PoolHandle { shared }),
        })
    }
}

impl Default for ThreadPool {
    /// Same as [`ThreadPool::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadPool {
    /// A pool with one thread per available CPU
    /// ([`std::thread::available_parallelism`], or 1 if unknown).
    ///
    /// # Panics
    ///
    /// Panics if a worker thread cannot be started; use
    /// [`builder`](Self::builder) to get an error instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::new();
    /// let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    /// assert_eq!(pool.threads(), cpus);
    /// ```
    pub fn new() -> Self {
        match ThreadPoolBuilder::new().build() {
            Ok(pool) => pool,
            Err(err) => panic!("ThreadPool::new: {err}"),
        }
    }

    /// A builder to configure the thread count, names and stack size.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(2).build().unwrap();
    /// assert_eq!(pool.live_threads(), 2);
    /// ```
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::new()
    }

    /// Queues a fire-and-forget closure.
    ///
    /// A panic inside `f` is caught and counted in
    /// [`panicked`](Self::panicked); the thread keeps serving the pool.
    ///
    /// # Errors
    ///
    /// If the pool is shut down, returns a [`ShutdownError`] holding `f`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let (tx, rx) = mpsc::channel();
    /// pool.spawn(move || tx.send("hi").unwrap()).unwrap();
    /// assert_eq!(rx.recv().unwrap(), "hi");
    /// ```
    pub fn spawn<F>(&self, f: F) -> Result<(), ShutdownError<F>>
    where
        F: FnOnce() + Send + 'static,
    {
        let job: Box<dyn SpawnedJob> = Box::new(f);
        match self.inner.shared.push(Job::Spawned(job)) {
            Ok(()) => Ok(()),
            Err(Job::Spawned(job)) => match job.into_any().downcast::<F>() {
                Ok(f) => Err(ShutdownError(*f)),
                Err(_) => unreachable!("spawned job is the boxed closure"),
            },
            Err(Job::Task(_)) => unreachable!("push returns the job it was given"),
        }
    }

    /// Queues a closure and returns a handle to its result.
    ///
    /// # Errors
    ///
    /// If the pool is shut down, returns a [`ShutdownError`] holding `f`.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(2).build().unwrap();
    /// let handles: Vec<_> = (0..4u64)
    ///     .map(|i| pool.execute(move || i * i).unwrap())
    ///     .collect();
    /// let squares: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    /// assert_eq!(squares, [0, 1, 4, 9]);
    /// ```
    pub fn execute<F, R>(&self, f: F) -> Result<TaskHandle<R>, ShutdownError<F>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let cell = TaskCell::new(f);
        match self.inner.shared.push(Job::Task(cell.clone())) {
            Ok(()) => Ok(cell.into_handle()),
            Err(job) => {
                drop(job);
                match cell.take_closure() {
                    Some(f) => Err(ShutdownError(f)),
                    None => unreachable!("a rejected task was never run"),
                }
            }
        }
    }

    /// Sets the number of worker threads (at least 1).
    ///
    /// Growing starts the new threads before returning. Shrinking lets the
    /// surplus threads exit between tasks: idle threads exit promptly, busy
    /// ones after their current task; queued tasks are never dropped.
    /// [`threads`](Self::threads) reports the new target at once,
    /// [`live_threads`](Self::live_threads) follows as threads exit.
    ///
    /// # Errors
    ///
    /// [`ResizeError::ZeroThreads`] for 0, [`ResizeError::ShutDown`] after
    /// shutdown, [`ResizeError::Spawn`] if a new thread could not be started
    /// (the target then becomes the number of live threads).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// pool.set_threads(4).unwrap();
    /// assert_eq!(pool.threads(), 4);
    /// assert_eq!(pool.live_threads(), 4);
    /// pool.set_threads(2).unwrap();
    /// assert_eq!(pool.threads(), 2);
    /// while pool.live_threads() != 2 {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    /// }
    /// ```
    pub fn set_threads(&self, threads: usize) -> Result<(), ResizeError> {
        if threads == 0 {
            return Err(ResizeError::ZeroThreads);
        }
        let shared = &self.inner.shared;
        let to_spawn = shared.resize(threads)?;
        for started in 0..to_spawn {
            if let Err(err) = spawn_worker(shared) {
                shared.spawn_failed(to_spawn - started, false);
                return Err(ResizeError::Spawn(err));
            }
        }
        Ok(())
    }

    /// The target number of threads (as built or last set).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(2).build().unwrap();
    /// assert_eq!(pool.threads(), 2);
    /// ```
    pub fn threads(&self) -> usize {
        self.inner.shared.target()
    }

    /// The number of worker threads currently alive (not yet retired after a
    /// shrink or shutdown). Converges to [`threads`](Self::threads).
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(2).build().unwrap();
    /// assert_eq!(pool.live_threads(), 2);
    /// pool.shutdown();
    /// assert_eq!(pool.live_threads(), 0);
    /// ```
    pub fn live_threads(&self) -> usize {
        self.inner.shared.live()
    }

    /// The number of tasks queued and not yet started.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// pool.spawn(move || { rx.recv().ok(); }).unwrap(); // occupies the thread
    /// pool.spawn(|| ()).unwrap();
    /// while pool.active() == 0 {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(pool.queued(), 1);
    /// tx.send(()).unwrap();
    /// pool.shutdown();
    /// assert_eq!(pool.queued(), 0);
    /// ```
    pub fn queued(&self) -> usize {
        self.inner.shared.queued()
    }

    /// The number of tasks running right now.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// assert_eq!(pool.active(), 0);
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// pool.spawn(move || { rx.recv().ok(); }).unwrap();
    /// while pool.active() != 1 {
    ///     std::thread::yield_now();
    /// }
    /// tx.send(()).unwrap();
    /// ```
    pub fn active(&self) -> usize {
        self.inner.shared.active()
    }

    /// The number of tasks that have finished running (including those that
    /// panicked). A task is counted before its result becomes visible to its
    /// [`TaskHandle`].
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// pool.execute(|| ()).unwrap().join().unwrap();
    /// assert_eq!(pool.completed(), 1);
    /// ```
    pub fn completed(&self) -> u64 {
        self.inner.shared.stats.completed.load(Ordering::Acquire)
    }

    /// The number of tasks that panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let _ = pool.execute(|| panic!("oops")).unwrap().join();
    /// assert_eq!(pool.panicked(), 1);
    /// ```
    pub fn panicked(&self) -> u64 {
        self.inner.shared.stats.panicked.load(Ordering::Acquire)
    }

    /// Whether [`shutdown`](Self::shutdown) (or
    /// [`shutdown_timeout`](Self::shutdown_timeout)) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// assert!(!pool.is_shutdown());
    /// pool.shutdown();
    /// assert!(pool.is_shutdown());
    /// ```
    pub fn is_shutdown(&self) -> bool {
        self.inner.shared.is_closed()
    }

    /// Stops accepting new work, waits until every already-queued task has
    /// run, and joins the worker threads. Later calls to
    /// [`spawn`](Self::spawn)/[`execute`](Self::execute) fail with
    /// [`ShutdownError`]. Idempotent; all clones see the shutdown.
    ///
    /// This waits for as long as the tasks take; see
    /// [`shutdown_timeout`](Self::shutdown_timeout) for a bounded wait. When
    /// called from inside a task of this same pool, it does not wait for the
    /// calling thread (which drains the queue after the current task).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(2).build().unwrap();
    /// let n = Arc::new(AtomicUsize::new(0));
    /// for _ in 0..100 {
    ///     let n = n.clone();
    ///     pool.spawn(move || { n.fetch_add(1, Ordering::Relaxed); }).unwrap();
    /// }
    /// pool.shutdown();
    /// assert_eq!(n.load(Ordering::Relaxed), 100);
    /// assert!(pool.spawn(|| ()).is_err());
    /// ```
    pub fn shutdown(&self) {
        self.shutdown_until(None);
    }

    /// Like [`shutdown`](Self::shutdown), but waits at most `timeout`.
    /// Returns `true` if all queued tasks ran and all threads exited in time;
    /// on `false` the threads keep draining the queue in the background and a
    /// later `shutdown` call can wait for them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// pool.spawn(move || { rx.recv().ok(); }).unwrap();
    /// assert!(!pool.shutdown_timeout(Duration::from_millis(20)));
    /// tx.send(()).unwrap();
    /// assert!(pool.shutdown_timeout(Duration::from_secs(60)));
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> bool {
        self.shutdown_until(Instant::now().checked_add(timeout))
    }

    fn shutdown_until(&self, deadline: Option<Instant>) -> bool {
        let shared = &self.inner.shared;
        shared.close();
        let own_worker = CURRENT_POOL.with(Cell::get) == shared.id;
        let allowed = usize::from(own_worker);
        if !shared.wait_exited(allowed, deadline) {
            return false;
        }
        let handles = std::mem::take(&mut *shared.threads.lock());
        let me = thread::current().id();
        for handle in handles {
            if handle.thread().id() == me {
                // Cannot join ourselves; dropping detaches.
                continue;
            }
            // Workers catch task panics, so this only fails on a panic in the
            // pool itself, which it has nothing to report to.
            let _ = handle.join();
        }
        true
    }
}

impl ThreadPool {
    /// The state the handles and workers share.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .field("live_threads", &self.live_threads())
            .field("queued", &self.queued())
            .field("active", &self.active())
            .field("shutdown", &self.is_shutdown())
            .field("completed", &self.completed())
            .field("panicked", &self.panicked())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_defaults_to_available_parallelism() {
        let pool = ThreadPool::builder().build().unwrap();
        let cpus = thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(pool.threads(), cpus);
        assert_eq!(pool.live_threads(), cpus);
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        fn check_handle<T: Send + Sync>() {}
        check::<ThreadPool>();
        check_handle::<TaskHandle<std::cell::Cell<u8>>>();
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(matches!(
            ThreadPool::builder().threads(0).build(),
            Err(BuildError::ZeroThreads)
        ));
    }

    #[test]
    fn debug_mentions_counts() {
        let pool = ThreadPool::builder().threads(1).build().unwrap();
        let text = format!("{pool:?}");
        assert!(text.contains("threads: 1"), "{text}");
        assert!(text.contains("shutdown: false"), "{text}");
    }

    #[test]
    fn dropping_last_handle_drains_queue() {
        let pool = ThreadPool::builder().threads(1).build().unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.spawn(move || {
            gate_rx.recv().ok();
        })
        .unwrap();
        for i in 0..10 {
            let tx = tx.clone();
            pool.spawn(move || tx.send(i).unwrap()).unwrap();
        }
        drop(tx);
        drop(pool); // must not block even though the first task is blocked
        gate_tx.send(()).unwrap();
        let got: Vec<i32> = rx.iter().collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn shutdown_from_inside_a_task_does_not_deadlock() {
        let pool = ThreadPool::builder().threads(2).build().unwrap();
        let inner = pool.clone();
        let h = pool
            .execute(move || {
                inner.shutdown();
                inner.is_shutdown()
            })
            .unwrap();
        assert_eq!(h.join(), Ok(true));
        pool.shutdown();
        assert_eq!(pool.live_threads(), 0);
    }
}
