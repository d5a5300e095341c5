//! A pool of child processes that run registered tasks by name.
//!
//! Children are started by re-executing the current binary (never by
//! `fork`): the program must call `celeriac::init()` (or
//! [`init_child`]) first thing in `main`, which turns the re-executed copy
//! into a child. Parent and child talk over a Unix socket pair, the child's
//! end handed over as its standard input, with length-prefixed JSON frames.
//!
//! What the pool guarantees:
//!
//! - **Crash isolation.** A child that aborts, segfaults, is OOM-killed or
//!   exits fails only the task it was running, with `WorkerLostError`; a
//!   replacement is started at once, and other tasks are unaffected.
//!   Nothing waits forever: every submitted job's callback runs exactly
//!   once.
//! - **Hard time limits.** A task past its hard limit (the first element of
//!   Celery's `timelimit`, see [`TaskContext::time_limit`]) has its child
//!   killed and fails with `TimeLimitExceeded`.
//! - **Soft time limits.** The child cancels the task's
//!   [`CancelToken`](celeriac_core::CancelToken) at the soft limit; the task
//!   sees it through [`TaskContext::check`] and returns early.
//! - **Recycling.** A child is retired gracefully after
//!   `max_tasks_per_child` tasks, or after a task that leaves its peak
//!   resident set above `max_memory_per_child`.
//! - **Resizing.** [`ProcessPool::set_processes`] grows at once and shrinks
//!   by retiring idle children first and busy ones after their task.
//! - Children die with their parent (`PR_SET_PDEATHSIG` on Linux, and the
//!   end of the socket everywhere).

mod child;
mod frame;
mod link;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::{Args, Registry, TaskContext, TaskError};
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde_json::Value;

use link::{encode, ensure_children, pump, retire, spawn_child, start_failed};

/// Set in a child's environment: this process is a pool child.
pub(crate) const ENV_CHILD: &str = "CELERIAC_POOL_CHILD";
/// The parent's pid, to notice a parent that died before the child armed
/// its death signal.
pub(crate) const ENV_PARENT: &str = "CELERIAC_POOL_PARENT";
/// Set when the pool has a memory limit: report peak RSS after each task.
pub(crate) const ENV_RSS: &str = "CELERIAC_POOL_RSS";

/// The first argument of a child process, so that children are easy to
/// recognise in `ps`.
pub const CHILD_ARG: &str = "__celeriac-pool-child";

/// How long a new child may take to report ready before it is killed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive start failures after which the pool gives up.
const MAX_START_FAILURES: u32 = 3;

/// If this process was started as a pool child, serves tasks from
/// `registry()` until the parent retires it, then exits; otherwise returns
/// at once. `celeriac::init()` calls it with the linked registry.
///
/// Anything `main` does before this call also runs in every child, so call
/// it first.
pub fn init_child(registry: impl FnOnce() -> Registry) {
    if child::requested() {
        child::serve(registry())
    }
}

/// Whether this process is a pool child (started by a [`ProcessPool`]).
pub fn is_child() -> bool {
    child::requested()
}

/// One task for the pool: a registered task's name, its context and its
/// arguments.
#[derive(Debug, Clone)]
pub struct ProcessJob {
    name: String,
    ctx: TaskContext,
    args: Args,
    /// For `map`: many argument sets run in one frame.
    batch: Option<Vec<Args>>,
}

impl ProcessJob {
    /// A job running task `name` with `args` under `ctx`. The context's
    /// [`time_limit`](TaskContext::time_limit) is enforced by killing the
    /// child; its soft limit cancels the task's token.
    pub fn new(name: impl Into<String>, ctx: TaskContext, args: Args) -> Self {
        ProcessJob {
            name: name.into(),
            ctx,
            args,
            batch: None,
        }
    }

    /// A job with positional arguments and a fresh context.
    pub fn call(name: &str, args: Vec<Value>) -> Self {
        Self::new(
            name,
            TaskContext::detached(name),
            Args::new(args, Default::default()),
        )
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// The task's return value or failure. A lost child gives
    /// `WorkerLostError`, a hard time limit `TimeLimitExceeded`.
    pub result: Result<Value, TaskError>,
    /// How long the task ran.
    pub runtime: Duration,
    /// The child that ran it, if one did.
    pub pid: Option<u32>,
    /// A batch's results, item by item.
    batch: Option<frame::BatchResults>,
}

impl Outcome {
    fn failed(err: TaskError, runtime: Duration, pid: Option<u32>) -> Self {
        Outcome {
            result: Err(err),
            runtime,
            pid,
            batch: None,
        }
    }
}

/// Counters of a [`ProcessPool`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessPoolStats {
    /// Children started.
    pub spawned: u64,
    /// Children that died while running a task (crash, kill, OOM).
    pub lost: u64,
    /// Children killed for a hard time limit.
    pub timed_out: u64,
    /// Children retired by `max_tasks_per_child` or `max_memory_per_child`.
    pub recycled: u64,
    /// Children killed because their task was revoked with terminate.
    pub terminated: u64,
    /// Tasks that returned (successfully or not) from a child.
    pub completed: u64,
    /// Children up and serving now (started, ready, not retiring).
    pub live: usize,
    /// Jobs waiting for a child.
    pub queued: usize,
    /// Jobs sent to a child and not finished.
    pub running: usize,
}

/// Errors building or resizing a [`ProcessPool`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessPoolError {
    /// Zero processes were asked for.
    #[error("a process pool needs at least one process")]
    ZeroProcesses,
    /// This process is itself a pool child: `init()` was not called at the
    /// top of `main`, and building a pool here would start children
    /// recursively.
    #[error("this process is a celeriac pool child: call celeriac::init() first thing in main")]
    InChild,
    /// The program to re-execute is unknown.
    #[error("cannot find the program to run children: {0}")]
    Program(io::Error),
    /// The pool was shut down.
    #[error("process pool is shut down")]
    Shutdown,
}

/// A job refused because the pool is shut down; it gives the job back.
#[derive(Debug, thiserror::Error)]
#[error("process pool is shut down")]
pub struct PoolClosed(pub Box<ProcessJob>);

/// Configures a [`ProcessPool`].
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    processes: Option<usize>,
    program: Option<PathBuf>,
    max_tasks_per_child: Option<u64>,
    max_memory_per_child: Option<u64>,
    prefetch: usize,
    env: Vec<(OsString, OsString)>,
}

impl ProcessPoolBuilder {
    /// Number of children. Defaults to the number of CPUs.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// The program children run (it must call `celeriac::init()` first in
    /// `main`). Defaults to the current executable (`/proc/self/exe`).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Retire a child after it ran this many tasks (Celery's
    /// `max_tasks_per_child`).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n.max(1));
        self
    }

    /// Retire a child after a task that leaves its peak resident set above
    /// this many bytes (Celery's `max_memory_per_child`, which is in KiB).
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Tasks sent ahead to each child (default 1). More hides the
    /// round trip for tiny tasks; a crash then also sends the prefetched,
    /// not yet started tasks back to the queue (they are not lost). Each
    /// result is sent as its task ends, so the parent always knows which
    /// task a child is running (a terminate kills the right one).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Sets an environment variable for the children.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Builds the pool and starts its children (without waiting for them).
    pub fn build(self) -> Result<ProcessPool, ProcessPoolError> {
        if child::requested() {
            return Err(ProcessPoolError::InChild);
        }
        let n = self
            .processes
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if n == 0 {
            return Err(ProcessPoolError::ZeroProcesses);
        }
        let program = match self.program {
            Some(p) => p,
            None => {
                let proc_exe = PathBuf::from("/proc/self/exe");
                if proc_exe.exists() {
                    proc_exe
                } else {
                    std::env::current_exe().map_err(ProcessPoolError::Program)?
                }
            }
        };
        let shared = Arc::new(PoolCore {
            program,
            env: self.env,
            max_tasks: self.max_tasks_per_child,
            max_memory: self.max_memory_per_child,
            prefetch: self.prefetch,
            state: Mutex::new(PoolState {
                target: n,
                closed: false,
                stopped: false,
                next_id: 0,
                next_seq: 0,
                queue: VecDeque::new(),
                children: HashMap::new(),
                spawning: 0,
                failures: 0,
                retry_at: None,
                broken: None,
                stats: ProcessPoolStats::default(),
            }),
            cond: Condvar::new(),
        });
        let sup = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("celeriac-pool-supervisor".into())
            .spawn(move || supervise(&sup))
            .map_err(ProcessPoolError::Program)?;
        Ok(ProcessPool {
            handle: Arc::new(LastHandle { shared }),
        })
    }
}

/// A pool of child processes running registered tasks by name.
///
/// Cheap to clone; the children are retired when the last clone is
/// dropped (queued jobs then fail with `WorkerLostError`) or at
/// [`shutdown`](Self::shutdown).
///
/// # Examples
///
/// The program must hand control to the pool first thing in `main`, so
/// that its re-executed copies become children:
///
/// ```no_run
/// use celeriac_pool::process::{ProcessJob, ProcessPool, init_child};
/// use celeriac_core::Registry;
/// use serde_json::json;
///
/// fn main() {
///     init_child(|| Registry::linked(true).unwrap());
///     let pool = ProcessPool::builder().processes(2).build().unwrap();
///     let out = pool.run(ProcessJob::call("celeriac.fib", vec![json!(20)]));
///     assert_eq!(out.result.unwrap(), json!(6765));
/// }
/// ```
#[derive(Clone)]
pub struct ProcessPool {
    handle: Arc<LastHandle>,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.handle.shared.state.lock();
        f.debug_struct("ProcessPool")
            .field("target", &st.target)
            .field("children", &st.children.len())
            .field("queued", &st.queue.len())
            .finish()
    }
}

impl ProcessPool {
    /// A builder with the defaults: one child per CPU, no recycling.
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder {
            processes: None,
            program: None,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            prefetch: 1,
            env: Vec::new(),
        }
    }

    /// Queues `job`; `done` runs exactly once, on a pool thread, with its
    /// outcome. Returns the job if the pool is shut down.
    pub fn submit(
        &self,
        job: ProcessJob,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) -> Result<(), PoolClosed> {
        let body = match encode(&job) {
            Ok(b) => b,
            Err(e) => {
                done(Outcome::failed(
                    TaskError::new(format!("could not encode the job: {e}")),
                    Duration::ZERO,
                    None,
                ));
                return Ok(());
            }
        };
        let shared = &self.handle.shared;
        let mut st = shared.state.lock();
        if st.closed {
            return Err(PoolClosed(Box::new(job)));
        }
        if let Some(why) = st.broken.clone() {
            drop(st);
            done(Outcome::failed(
                TaskError::worker_lost(why),
                Duration::ZERO,
                None,
            ));
            return Ok(());
        }
        st.queue.push_back(Queued {
            job,
            body,
            done: Box::new(done),
        });
        pump(shared, &mut st);
        Ok(())
    }

    /// Runs `job` and waits for its outcome.
    pub fn run(&self, job: ProcessJob) -> Outcome {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        match self.submit(job, move |o| {
            let _ = tx.send(o);
        }) {
            Ok(()) => rx.recv().unwrap_or_else(|_| {
                Outcome::failed(
                    TaskError::worker_lost("the process pool dropped the job"),
                    Duration::ZERO,
                    None,
                )
            }),
            Err(_) => Outcome::failed(
                TaskError::worker_lost("process pool is shut down"),
                Duration::ZERO,
                None,
            ),
        }
    }

    /// Runs task `name` once per item of `items`, in chunks of `chunk`
    /// items per message to a child (0 picks one as `multiprocessing`'s
    /// `Pool.map` does: about four chunks per child), and returns the
    /// results in order. Batching amortises the hand-off between processes
    /// over a chunk, for many tiny tasks. A child lost in the middle of a
    /// chunk fails that whole chunk with `WorkerLostError`; a hard time
    /// limit in the context applies to each chunk as a whole.
    ///
    /// ```no_run
    /// # use celeriac_pool::process::ProcessPool;
    /// # use celeriac_core::Args;
    /// # use serde_json::json;
    /// # let pool = ProcessPool::builder().build().unwrap();
    /// let items: Vec<Args> = (0..1000)
    ///     .map(|i| Args::new(vec![json!(i), json!(1)], Default::default()))
    ///     .collect();
    /// let sums = pool.map("celeriac.add", items, 0);
    /// assert_eq!(sums[999].as_ref().unwrap(), &json!(1000));
    /// ```
    pub fn map(&self, name: &str, items: Vec<Args>, chunk: usize) -> Vec<Result<Value, TaskError>> {
        let n = items.len();
        if n == 0 {
            return Vec::new();
        }
        let chunk = if chunk == 0 {
            n.div_ceil(4 * self.processes().max(1)).max(1)
        } else {
            chunk
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let mut items = items.into_iter();
        let mut chunks = 0;
        loop {
            let part: Vec<Args> = items.by_ref().take(chunk).collect();
            if part.is_empty() {
                break;
            }
            let len = part.len();
            let mut job = ProcessJob::new(name, TaskContext::detached(name), Args::default());
            job.batch = Some(part);
            let index = chunks;
            let back = tx.clone();
            let sent = self.submit(job, move |o| {
                let _ = back.send((index, len, o));
            });
            if sent.is_err() {
                let _ = tx.send((
                    index,
                    len,
                    Outcome::failed(
                        TaskError::worker_lost("process pool is shut down"),
                        Duration::ZERO,
                        None,
                    ),
                ));
            }
            chunks += 1;
        }
        drop(tx);
        let mut parts: Vec<Option<(usize, Outcome)>> = (0..chunks).map(|_| None).collect();
        for (index, len, o) in rx {
            parts[index] = Some((len, o));
        }
        let mut out = Vec::with_capacity(n);
        for (len, o) in parts.into_iter().flatten() {
            match (o.batch, o.result) {
                (Some(results), _) if results.len() == len => results.append_to(&mut out),
                (None, Err(e)) => out.extend(std::iter::repeat_n(Err(e), len)),
                _ => out.extend(std::iter::repeat_n(
                    Err(TaskError::new("a batch came back without its results")),
                    len,
                )),
            }
        }
        out
    }

    /// Terminates the job whose task id is `task_id` (Celery's
    /// `revoke(terminate=True)`): a queued one fails at once, a running one
    /// has its child killed; either ends as `TaskRevokedError`
    /// ("terminated"). Returns whether such a job was found.
    pub fn terminate(&self, task_id: &str) -> bool {
        let shared = &self.handle.shared;
        let mut st = shared.state.lock();
        if let Some(pos) = st.queue.iter().position(|p| p.job.ctx.id() == task_id) {
            let p = st.queue.remove(pos).expect("position is valid");
            drop(st);
            (p.done)(Outcome::failed(
                TaskError::revoked("terminated"),
                Duration::ZERO,
                None,
            ));
            return true;
        }
        for c in st.children.values_mut() {
            if c.dead || c.killed_for.is_some() {
                continue;
            }
            if c.inflight
                .front()
                .is_some_and(|r| r.job.ctx.id() == task_id)
            {
                kill(c.pid);
                c.killed_for = Some(Kill::Revoked);
                return true;
            }
        }
        false
    }

    /// The number of children the pool keeps.
    pub fn processes(&self) -> usize {
        self.handle.shared.state.lock().target
    }

    /// Grows or shrinks the pool. Growing starts children at once;
    /// shrinking retires idle children first and busy ones when their task
    /// ends. No job is lost either way.
    pub fn set_processes(&self, n: usize) -> Result<(), ProcessPoolError> {
        if n == 0 {
            return Err(ProcessPoolError::ZeroProcesses);
        }
        let shared = &self.handle.shared;
        {
            let mut st = shared.state.lock();
            if st.closed {
                return Err(ProcessPoolError::Shutdown);
            }
            st.target = n;
            let mut serving = serving(&st);
            // Retire children not yet ready, then idle ones, then busy ones.
            for phase in 0..3 {
                if serving <= n {
                    break;
                }
                let ids: Vec<u64> = st
                    .children
                    .iter()
                    .filter(|(_, c)| !c.retiring && !c.dead)
                    .filter(|(_, c)| match phase {
                        0 => !c.ready,
                        1 => c.ready && c.inflight.is_empty(),
                        _ => c.ready,
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    if serving <= n {
                        break;
                    }
                    retire(&mut st, id);
                    serving -= 1;
                }
            }
        }
        ensure_children(shared);
        Ok(())
    }

    /// Pids of the children alive now.
    pub fn pids(&self) -> Vec<u32> {
        let st = self.handle.shared.state.lock();
        let mut pids: Vec<u32> = st.children.values().map(|c| c.pid).collect();
        pids.sort_unstable();
        pids
    }

    /// The pool's counters.
    pub fn stats(&self) -> ProcessPoolStats {
        let st = self.handle.shared.state.lock();
        let mut s = st.stats.clone();
        s.live = st
            .children
            .values()
            .filter(|c| c.ready && !c.retiring && !c.dead)
            .count();
        s.queued = st.queue.len();
        s.running = st.children.values().map(|c| c.inflight.len()).sum();
        s
    }

    /// Stops taking jobs, lets queued and running ones finish, then retires
    /// every child and waits (up to `timeout`) for them to exit; children
    /// still alive then are killed.
    pub fn shutdown(&self, timeout: Duration) {
        let shared = &self.handle.shared;
        let deadline = Instant::now() + timeout;
        let mut st = shared.state.lock();
        st.closed = true;
        while (!st.queue.is_empty() || st.children.values().any(|c| !c.inflight.is_empty()))
            && Instant::now() < deadline
        {
            shared.cond.wait_until(&mut st, deadline);
        }
        stop(shared, st, deadline);
    }
}

/// The last user handle: dropping it retires the pool.
struct LastHandle {
    shared: Arc<PoolCore>,
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.closed = true;
        let queued: Vec<Queued> = st.queue.drain(..).collect();
        let ids: Vec<u64> = st.children.keys().copied().collect();
        for id in ids {
            retire(&mut st, id);
        }
        st.target = 0;
        st.stopped = true;
        drop(st);
        self.shared.cond.notify_all();
        for p in queued {
            (p.done)(Outcome::failed(
                TaskError::worker_lost("the process pool was dropped before the job ran"),
                Duration::ZERO,
                None,
            ));
        }
    }
}

type DoneFn = Box<dyn FnOnce(Outcome) + Send>;

struct Queued {
    job: ProcessJob,
    /// The job's frame body, encoded at submission.
    body: Vec<u8>,
    done: DoneFn,
}

struct Running {
    seq: u64,
    job: ProcessJob,
    body: Vec<u8>,
    done: DoneFn,
    /// When it started running: when it was sent to an idle child, or when
    /// the task before it on the same child finished.
    started: Option<Instant>,
}

/// Why the pool killed a child.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// Its task passed this hard time limit.
    TimeLimit(Duration),
    /// Its task was revoked with terminate.
    Revoked,
}

struct ChildState {
    pid: u32,
    writer: UnixStream,
    ready: bool,
    retiring: bool,
    dead: bool,
    spawned_at: Instant,
    tasks: u64,
    inflight: VecDeque<Running>,
    /// Frames being gathered for one write (see `link::pump`).
    out: Vec<u8>,
    /// Set when the pool killed it on purpose.
    killed_for: Option<Kill>,
}

struct PoolState {
    target: usize,
    closed: bool,
    /// Set once no more children are wanted and the supervisor may stop.
    stopped: bool,
    next_id: u64,
    next_seq: u64,
    queue: VecDeque<Queued>,
    children: HashMap<u64, ChildState>,
    spawning: usize,
    failures: u32,
    /// After a start failure, no new child before this.
    retry_at: Option<Instant>,
    broken: Option<String>,
    stats: ProcessPoolStats,
}

struct PoolCore {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    max_tasks: Option<u64>,
    max_memory: Option<u64>,
    prefetch: usize,
    state: Mutex<PoolState>,
    cond: Condvar,
}

/// Children that count toward the target: alive or starting, not retiring.
fn serving(st: &PoolState) -> usize {
    st.children
        .values()
        .filter(|c| !c.retiring && !c.dead)
        .count()
        + st.spawning
}

/// Starts children up to the target, kills children past their hard time
/// limit, and children that never became ready.
fn supervise(shared: &Arc<PoolCore>) {
    let mut st = shared.state.lock();
    loop {
        if st.stopped && st.children.is_empty() {
            return;
        }
        let backing_off = st.retry_at.is_some_and(|t| Instant::now() < t);
        let want = if st.stopped || st.broken.is_some() || backing_off {
            0
        } else {
            st.target.saturating_sub(serving(&st))
        };
        if want > 0 {
            st.spawning += want;
            for _ in 0..want {
                let spawned = MutexGuard::unlocked(&mut st, || spawn_child(shared));
                st.spawning -= 1;
                if let Err(e) = spawned {
                    tracing::error!(error = %e, program = %shared.program.display(), "could not start a pool child");
                    start_failed(
                        shared,
                        &mut st,
                        format!("could not start a pool child: {e}"),
                    );
                }
            }
            continue;
        }
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        let mut killed = 0;
        for c in st.children.values_mut() {
            if c.dead || c.killed_for.is_some() {
                continue;
            }
            if !c.ready && now.duration_since(c.spawned_at) > START_TIMEOUT {
                tracing::error!(
                    pid = c.pid,
                    "pool child did not become ready in {START_TIMEOUT:?}; killing it"
                );
                kill(c.pid);
                c.dead = true;
                continue;
            }
            let Some(head) = c.inflight.front() else {
                continue;
            };
            let (Some(started), Some(limit)) = (head.started, head.job.ctx.time_limit()) else {
                continue;
            };
            let deadline = started + limit;
            if now >= deadline {
                kill(c.pid);
                c.killed_for = Some(Kill::TimeLimit(limit));
                killed += 1;
            } else {
                next = next.min(deadline);
            }
        }
        if let Some(t) = st.retry_at.filter(|&t| t > now) {
            next = next.min(t);
        }
        if killed == 0 {
            shared.cond.wait_until(&mut st, next);
        }
    }
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Retires every child and waits for them until `deadline`, then kills
/// what is left.
fn stop(shared: &Arc<PoolCore>, mut st: MutexGuard<'_, PoolState>, deadline: Instant) {
    st.target = 0;
    st.stopped = true;
    let ids: Vec<u64> = st.children.keys().copied().collect();
    for id in ids {
        retire(&mut st, id);
    }
    shared.cond.notify_all();
    while !st.children.is_empty() && Instant::now() < deadline {
        shared.cond.wait_until(&mut st, deadline);
    }
    for c in st.children.values() {
        kill(c.pid);
    }
}
