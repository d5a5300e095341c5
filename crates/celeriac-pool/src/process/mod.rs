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

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::escape::Escaped;
use celeriac_core::{Args, Registry, TaskContext, TaskError};
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::Serialize;
use serde_json::Value;

use frame::ToParent;

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
    batch: Option<Vec<Result<Value, TaskError>>>,
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
    /// not yet started tasks back to the queue (they are not lost).
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
        let mut parts: Vec<Option<Vec<Result<Value, TaskError>>>> = vec![None; chunks];
        for (index, len, o) in rx {
            parts[index] = Some(match (o.batch, o.result) {
                (Some(results), _) => results,
                (None, Err(e)) => vec![Err(e); len],
                (None, Ok(_)) => {
                    vec![Err(TaskError::new("a batch came back without results")); len]
                }
            });
        }
        parts.into_iter().flatten().flatten().collect()
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

#[derive(Serialize)]
enum ToChildRef<'a> {
    Run(RunRef<'a>),
    RunBatch(BatchRef<'a>),
    Exit,
}

#[derive(Serialize)]
struct BatchRef<'a> {
    name: &'a str,
    ctx: &'a TaskContext,
    items: frame::BatchItemsRef<'a>,
    states: bool,
}

#[derive(Serialize)]
struct RunRef<'a> {
    name: &'a str,
    ctx: &'a TaskContext,
    args: &'a Args,
    states: bool,
}

/// Frames up to this size may queue behind a running task in a child's
/// socket buffer (prefetch); a larger one goes only to an idle child, which
/// is reading, so that the write (made under the pool's lock) never waits
/// on a busy child.
const PREFETCH_FRAME_MAX: usize = 32 * 1024;

/// The JSON body of a job's frame.
fn encode(job: &ProcessJob) -> io::Result<Vec<u8>> {
    let frame = match &job.batch {
        Some(items) => ToChildRef::RunBatch(BatchRef {
            name: &job.name,
            ctx: &job.ctx,
            items: frame::BatchItemsRef::of(items),
            states: job.ctx.states().is_some(),
        }),
        None => ToChildRef::Run(RunRef {
            name: &job.name,
            ctx: &job.ctx,
            args: &job.args,
            states: job.ctx.states().is_some(),
        }),
    };
    serde_json::to_vec(&frame).map_err(io::Error::other)
}

fn send(c: &mut ChildState, f: &ToChildRef<'_>) -> io::Result<()> {
    let body = serde_json::to_vec(f).map_err(io::Error::other)?;
    frame::write_seq(&mut c.writer, 0, &body)
}

/// Marks a child as retiring; it is told to exit once it has no task.
fn retire(st: &mut PoolState, id: u64) {
    if let Some(c) = st.children.get_mut(&id) {
        c.retiring = true;
        if c.ready && c.inflight.is_empty() && !c.dead && send(c, &ToChildRef::Exit).is_err() {
            c.dead = true;
        }
    }
}

/// Sends queued jobs to children with room.
fn pump(shared: &PoolCore, st: &mut PoolState) {
    let mut timed = false;
    while !st.queue.is_empty() {
        let Some((&id, _)) = st
            .children
            .iter()
            .filter(|(_, c)| {
                c.ready && !c.retiring && !c.dead && c.inflight.len() < shared.prefetch
            })
            .min_by_key(|(_, c)| c.inflight.len())
        else {
            break;
        };
        let seq = st.next_seq;
        let big = st.queue.front().expect("queue is not empty").body.len() > PREFETCH_FRAME_MAX;
        let c = st.children.get_mut(&id).expect("child exists");
        if !c.inflight.is_empty() && big {
            // Too big to queue behind a running task: wait for an idle child.
            let idle = st
                .children
                .iter()
                .find(|(_, c)| c.ready && !c.retiring && !c.dead && c.inflight.is_empty())
                .map(|(id, _)| *id);
            match idle {
                Some(other) => {
                    let c = st.children.get_mut(&other).expect("child exists");
                    st.next_seq += 1;
                    let p = st.queue.pop_front().expect("queue is not empty");
                    timed |= start_on(c, seq, p, &mut st.queue);
                    continue;
                }
                None => break,
            }
        }
        st.next_seq += 1;
        let p = st.queue.pop_front().expect("queue is not empty");
        let c = st.children.get_mut(&id).expect("child exists");
        timed |= start_on(c, seq, p, &mut st.queue);
    }
    if timed {
        shared.cond.notify_all();
    }
}

/// Writes an encoded job to a child and records it as in flight; on a
/// write error the child is marked dead and the job goes back to the front
/// of the queue. Returns whether the job has a hard time limit.
fn start_on(c: &mut ChildState, seq: u64, p: Queued, queue: &mut VecDeque<Queued>) -> bool {
    match frame::write_seq(&mut c.writer, seq, &p.body) {
        Ok(()) => {
            let timed = p.job.ctx.time_limit().is_some();
            let started = c.inflight.is_empty().then(Instant::now);
            c.inflight.push_back(Running {
                seq,
                job: p.job,
                body: p.body,
                done: p.done,
                started,
            });
            timed
        }
        Err(e) => {
            // The child is going away; its reader thread handles that.
            tracing::debug!(pid = c.pid, error = %e, "could not write to pool child");
            c.dead = true;
            queue.push_front(p);
            false
        }
    }
}

/// Asks the supervisor to start children until the pool has its target.
///
/// Only the supervisor thread starts children: Linux delivers a child's
/// `PR_SET_PDEATHSIG` when the *thread* that spawned it exits, so children
/// must be spawned by a thread that lives as long as the pool.
fn ensure_children(shared: &Arc<PoolCore>) {
    shared.cond.notify_all();
}

/// Counts a child that failed to start; after a few in a row the pool is
/// broken and every waiting job fails instead of waiting forever.
fn start_failed(shared: &PoolCore, st: &mut MutexGuard<'_, PoolState>, why: String) {
    st.failures += 1;
    st.retry_at =
        Some(Instant::now() + Duration::from_millis(100 * u64::from(st.failures.min(20))));
    if st.failures >= MAX_START_FAILURES && !st.children.values().any(|c| c.ready) {
        let why = format!(
            "the process pool cannot start children ({why}); is celeriac::init() the first line of main?"
        );
        tracing::error!("{why}");
        st.broken = Some(why.clone());
        let queued: Vec<Queued> = st.queue.drain(..).collect();
        MutexGuard::unlocked(st, || {
            for p in queued {
                (p.done)(Outcome::failed(
                    TaskError::worker_lost(why.clone()),
                    Duration::ZERO,
                    None,
                ));
            }
        });
    }
    shared.cond.notify_all();
}

fn spawn_child(shared: &Arc<PoolCore>) -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(&shared.program);
    cmd.arg(CHILD_ARG)
        .env(ENV_CHILD, "1")
        .env(ENV_PARENT, std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if shared.max_memory.is_some() {
        cmd.env(ENV_RSS, "1");
    }
    for (k, v) in &shared.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    // Our copy of the child's end must be closed, or we never see EOF.
    drop(cmd);
    let writer = ours.try_clone()?;
    let pid = child.id();
    let id = {
        let mut st = shared.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.stats.spawned += 1;
        st.children.insert(
            id,
            ChildState {
                pid,
                writer,
                ready: false,
                retiring: false,
                dead: false,
                spawned_at: Instant::now(),
                tasks: 0,
                inflight: VecDeque::new(),
                killed_for: None,
            },
        );
        id
    };
    let sh = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("celeriac-pool-child-{pid}"))
        .spawn(move || read_child(&sh, id, child, ours))?;
    Ok(())
}

/// One thread per child: reads its frames, and handles its end.
fn read_child(shared: &Arc<PoolCore>, id: u64, mut child: Child, stream: UnixStream) {
    let mut r = BufReader::new(stream);
    loop {
        match frame::read::<ToParent>(&mut r) {
            Ok(Some(ToParent::Ready { pid })) => {
                tracing::debug!(pid, "pool child ready");
                let mut st = shared.state.lock();
                st.failures = 0;
                st.retry_at = None;
                if let Some(c) = st.children.get_mut(&id) {
                    c.ready = true;
                    if c.retiring {
                        retire(&mut st, id);
                    }
                }
                pump(shared, &mut st);
            }
            Ok(Some(ToParent::Done(d))) => on_done(
                shared,
                id,
                Finished {
                    seq: d.seq,
                    result: d.result,
                    batch: None,
                    runtime_ns: d.runtime_ns,
                    peak_rss: d.peak_rss,
                },
            ),
            Ok(Some(ToParent::DoneBatch(d))) => on_done(
                shared,
                id,
                Finished {
                    seq: d.seq,
                    result: Ok(Value::Null),
                    batch: Some(d.results.into_results()),
                    runtime_ns: d.runtime_ns,
                    peak_rss: d.peak_rss,
                },
            ),
            Ok(Some(ToParent::State(s))) => on_state(shared, id, s),
            Ok(None) => break,
            Err(e) => {
                tracing::error!(pid = child.id(), error = %e, "bad frame from pool child; killing it");
                let _ = child.kill();
                break;
            }
        }
    }
    on_exit(shared, id, child);
}

/// Stores a state a child's running task set, through its job's context
/// (on this reader thread, so before the task's result, which the child
/// sends after it).
fn on_state(shared: &Arc<PoolCore>, id: u64, s: frame::StateFrame) {
    let sink = {
        let st = shared.state.lock();
        st.children
            .get(&id)
            .and_then(|c| c.inflight.iter().find(|r| r.seq == s.seq))
            .and_then(|r| r.job.ctx.states().cloned())
    };
    let Some(sink) = sink else {
        tracing::warn!(
            seq = s.seq,
            "a pool child sent a state for a task with no state store"
        );
        return;
    };
    let state: celeriac_core::State = s.state.parse().unwrap_or_else(|e| match e {});
    if let Err(e) = sink.store(&state, s.meta) {
        tracing::warn!(state = %state, error = %e, "could not store a pool child's task state");
    }
}

/// A finished task or batch, as a child reported it.
struct Finished {
    seq: u64,
    result: Result<Value, TaskError>,
    batch: Option<Vec<Result<Value, TaskError>>>,
    runtime_ns: u64,
    peak_rss: Option<u64>,
}

fn on_done(shared: &Arc<PoolCore>, id: u64, d: Finished) {
    let mut st = shared.state.lock();
    let Some(c) = st.children.get_mut(&id) else {
        return;
    };
    let Some(pos) = c.inflight.iter().position(|r| r.seq == d.seq) else {
        tracing::error!(
            pid = c.pid,
            seq = d.seq,
            "pool child finished a task it was not given"
        );
        return;
    };
    let run = c.inflight.remove(pos).expect("position is valid");
    c.tasks += 1;
    let pid = c.pid;
    if let Some(next) = c.inflight.front_mut()
        && next.started.is_none()
    {
        next.started = Some(Instant::now());
    }
    let mut recycle = None;
    if !c.retiring {
        if shared.max_tasks.is_some_and(|m| c.tasks >= m) {
            recycle = Some(format!("it ran {} tasks (max_tasks_per_child)", c.tasks));
        } else if let (Some(max), Some(rss)) = (shared.max_memory, d.peak_rss)
            && rss > max
        {
            recycle = Some(format!(
                "its peak RSS of {} KiB exceeds max_memory_per_child ({} KiB)",
                rss / 1024,
                max / 1024
            ));
        }
    }
    let retiring = c.retiring;
    st.stats.completed += 1;
    if let Some(why) = &recycle {
        tracing::info!(pid, "recycling pool child: {why}");
        st.stats.recycled += 1;
        retire(&mut st, id);
    } else if retiring {
        retire(&mut st, id);
    }
    pump(shared, &mut st);
    drop(st);
    shared.cond.notify_all();
    if recycle.is_some() {
        ensure_children(shared);
    }
    (run.done)(Outcome {
        result: d.result,
        runtime: Duration::from_nanos(d.runtime_ns),
        pid: Some(pid),
        batch: d.batch,
    });
}

fn on_exit(shared: &Arc<PoolCore>, id: u64, mut child: Child) {
    let pid = child.id();
    let removed = {
        let mut st = shared.state.lock();
        st.children.remove(&id)
    };
    let Some(c) = removed else {
        let _ = child.wait();
        return;
    };
    // Replace it first: other work must not wait on this child's autopsy.
    if c.ready {
        ensure_children(shared);
    }
    let status = reap(&mut child);
    let mut inflight = c.inflight;
    let head = inflight.pop_front();
    {
        let mut st = shared.state.lock();
        // Prefetched tasks never started: back to the front of the queue,
        // in order.
        for r in inflight.into_iter().rev() {
            st.queue.push_front(Queued {
                job: r.job,
                body: r.body,
                done: r.done,
            });
        }
        if head.is_some() {
            match c.killed_for {
                Some(Kill::TimeLimit(_)) => st.stats.timed_out += 1,
                Some(Kill::Revoked) => st.stats.terminated += 1,
                None => st.stats.lost += 1,
            }
        }
        if !c.ready {
            let why = format!(
                "child {pid} exited before it was ready ({})",
                describe(status)
            );
            tracing::error!("{why}");
            start_failed(shared, &mut st, why);
        }
        pump(shared, &mut st);
    }
    shared.cond.notify_all();
    if let Some(run) = head {
        let runtime = run.started.map(|s| s.elapsed()).unwrap_or_default();
        let err = match c.killed_for {
            Some(Kill::Revoked) => {
                tracing::warn!(pid, task = %Escaped(&run.job.name), task_id = %Escaped(run.job.ctx.id()),
                    "task revoked with terminate; child killed");
                TaskError::revoked("terminated")
            }
            Some(Kill::TimeLimit(limit)) => {
                tracing::warn!(pid, task = %Escaped(&run.job.name), task_id = %Escaped(run.job.ctx.id()),
                    "hard time limit ({:?}) exceeded; child killed", limit);
                TaskError::timed_out(format!("TimeLimitExceeded({})", limit.as_secs_f64()))
            }
            None => {
                let why = format!(
                    "Worker exited prematurely: {} Job: {}.",
                    describe(status),
                    run.seq
                );
                tracing::error!(pid, task = %Escaped(&run.job.name), task_id = %Escaped(run.job.ctx.id()), "{why}");
                TaskError::worker_lost(why)
            }
        };
        (run.done)(Outcome::failed(err, runtime, Some(pid)));
    } else if !c.retiring && c.ready {
        tracing::warn!(
            pid,
            "idle pool child exited ({}); replaced",
            describe(status)
        );
    }
}

/// Waits for a child whose socket closed; kills it if it lingers.
fn reap(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = child.kill();
                return child.wait().ok();
            }
            Err(_) => return None,
        }
    }
}

/// Celery's wording: `signal 9 (SIGKILL)` or `exitcode 1`.
fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exitcode {code}"),
            (None, Some(sig)) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| "unknown".into());
                format!("signal {sig} ({name})")
            }
            (None, None) => "unknown status".into(),
        },
        None => "unknown status".into(),
    }
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
