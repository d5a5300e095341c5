//! Child mode: what a re-executed binary does once `init()` sees that it is
//! a pool child.

use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::{
    Args, CancelToken, Registry, State, StateError, TaskContext, TaskError, TaskStates,
};
use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::frame::{
    self, BatchFrame, BatchResults, DoneBatchFrame, DoneFrame, RunFrame, StateFrame, ToChild,
    ToParent,
};
use super::{ENV_CHILD, ENV_PARENT, ENV_RSS};
use crate::Panicked;

/// Whether this process was started as a pool child.
pub(crate) fn requested() -> bool {
    std::env::var_os(ENV_CHILD).is_some()
}

/// Serves tasks from the parent until told to exit or the parent goes
/// away, then exits the process.
pub(crate) fn serve(registry: Registry) -> ! {
    // Die with the parent, even in the middle of a task.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let parent: Option<u32> = std::env::var(ENV_PARENT).ok().and_then(|p| p.parse().ok());
    if parent.is_some_and(|p| p != std::os::unix::process::parent_id()) {
        // The parent died before the death signal was armed.
        std::process::exit(70);
    }
    let code = match run(registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("celeriac pool child {}: {e}", std::process::id());
            70
        }
    };
    std::process::exit(code)
}

fn run(registry: Registry) -> io::Result<()> {
    // The parent hands us one end of a socket pair as standard input.
    let stream = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    let reader = stream.try_clone()?;
    // A running task's states go straight to the socket: the buffered
    // writer below is flushed after every frame, so it is empty while a
    // task runs.
    let states_out = Arc::new(Mutex::new(stream.try_clone()?));
    let mut out = BufWriter::new(stream);
    let report_rss = std::env::var_os(ENV_RSS).is_some();
    frame::write(
        &mut out,
        &ToParent::Ready {
            pid: std::process::id(),
        },
    )?;
    out.flush()?;

    // Frames are read on this thread, between tasks: no hand-off between
    // threads on the hot path. The parent never has more than one large
    // frame in flight to a child (see `pump`), so its writes cannot stall
    // on a busy child. A parent that dies mid-task takes the child with it
    // through the death signal; one that dies while the child waits here
    // ends the read.
    let mut input = BufReader::with_capacity(64 * 1024, reader);
    let timer = SoftTimer::start()?;
    loop {
        let (seq, f) = match frame::read_seq::<ToChild>(&mut input) {
            Ok(Some(f)) => f,
            // The parent closed its end: it is gone, or done with us.
            Ok(None) => break,
            Err(e) => {
                eprintln!("celeriac pool child {}: bad frame: {e}", std::process::id());
                std::process::exit(70);
            }
        };
        match f {
            ToChild::Run(r) => {
                let RunFrame {
                    name,
                    mut ctx,
                    args,
                    states,
                } = *r;
                if states {
                    ctx.set_states(ToParentStates::new(seq, &states_out));
                }
                let start = Instant::now();
                let result = run_one(&registry, &timer, &name, &ctx, args, start);
                let done = DoneFrame {
                    seq,
                    result,
                    runtime_ns: nanos(start),
                    peak_rss: report_rss.then(peak_rss).flatten(),
                };
                frame::write(&mut out, &ToParent::Done(done))?;
            }
            ToChild::RunBatch(b) => {
                let BatchFrame {
                    name,
                    mut ctx,
                    items,
                    states,
                } = *b;
                if states {
                    ctx.set_states(ToParentStates::new(seq, &states_out));
                }
                let start = Instant::now();
                let len = items.len();
                let results = match registry.get(&name) {
                    Some(task) => BatchResults::collect(
                        items
                            .into_args()
                            .map(|args| run_task(task, &timer, &ctx, args, start)),
                        len,
                    ),
                    None => BatchResults::Mixed(vec![Err(TaskError::not_registered(&name)); len]),
                };
                let done = DoneBatchFrame {
                    seq,
                    results,
                    runtime_ns: nanos(start),
                    peak_rss: report_rss.then(peak_rss).flatten(),
                };
                frame::write(&mut out, &ToParent::DoneBatch(done))?;
            }
            ToChild::Exit => break,
        }
        out.flush()?;
    }
    out.flush()
}

/// A child's task states: sent to the parent, which stores them through
/// the task's context there (its worker's result backend).
#[derive(Debug)]
struct ToParentStates {
    seq: u64,
    out: Arc<Mutex<UnixStream>>,
}

impl ToParentStates {
    fn new(seq: u64, out: &Arc<Mutex<UnixStream>>) -> Arc<Self> {
        Arc::new(ToParentStates {
            seq,
            out: Arc::clone(out),
        })
    }
}

#[async_trait::async_trait]
impl TaskStates for ToParentStates {
    fn store(&self, state: &State, meta: Value) -> Result<(), StateError> {
        let f = ToParent::State(StateFrame {
            seq: self.seq,
            state: state.to_string(),
            meta,
        });
        let mut out = self.out.lock();
        frame::write(&mut *out, &f)
            .and_then(|()| out.flush())
            .map_err(|e| StateError::Backend(format!("sending the state to the pool: {e}")))
    }

    async fn store_async(&self, state: &State, meta: Value) -> Result<(), StateError> {
        self.store(state, meta)
    }
}

fn nanos(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one call, catching panics; the soft limit counts from `start`.
fn run_one(
    registry: &Registry,
    timer: &SoftTimer,
    name: &str,
    ctx: &TaskContext,
    args: Args,
    start: Instant,
) -> Result<Value, TaskError> {
    let Some(task) = registry.get(name) else {
        return Err(TaskError::not_registered(name));
    };
    run_task(task, timer, ctx, args, start)
}

/// Runs one call of `task`, catching panics; the soft limit counts from
/// `start`.
fn run_task(
    task: &celeriac_core::RegisteredTask,
    timer: &SoftTimer,
    ctx: &TaskContext,
    args: Args,
    start: Instant,
) -> Result<Value, TaskError> {
    let armed = ctx
        .soft_time_limit()
        .map(|soft| timer.arm(start + soft, ctx.cancel_token().clone()));
    let out = catch_unwind(AssertUnwindSafe(|| task.invoke(ctx, args))).unwrap_or_else(|p| {
        Err(TaskError::panicked(
            Panicked::from_payload(p).into_message(),
        ))
    });
    if armed.is_some() {
        timer.disarm();
    }
    out
}

/// The peak resident set size of this process (`VmHWM`), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    status_kb("VmHWM:").map(|kb| kb * 1024)
}

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// When to cancel which token, and the condvar that wakes the timer.
type TimerSlot = Arc<(Mutex<Option<(Instant, CancelToken)>>, Condvar)>;

/// One thread that cancels the running task's token at its soft limit.
struct SoftTimer {
    slot: TimerSlot,
}

impl SoftTimer {
    fn start() -> io::Result<Self> {
        let slot: TimerSlot = Arc::default();
        let s = Arc::clone(&slot);
        std::thread::Builder::new()
            .name("celeriac-soft-limit".into())
            .spawn(move || {
                let (lock, cond) = &*s;
                let mut g = lock.lock();
                loop {
                    match g.as_ref() {
                        None => cond.wait(&mut g),
                        Some((at, token)) => {
                            let now = Instant::now();
                            if now >= *at {
                                token.cancel();
                                *g = None;
                            } else {
                                let wait = (*at - now).min(Duration::from_secs(3600));
                                let _ = cond.wait_for(&mut g, wait);
                            }
                        }
                    }
                }
            })?;
        Ok(SoftTimer { slot })
    }

    fn arm(&self, at: Instant, token: CancelToken) {
        *self.slot.0.lock() = Some((at, token));
        self.slot.1.notify_one();
    }

    fn disarm(&self) {
        *self.slot.0.lock() = None;
    }
}
