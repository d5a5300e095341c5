//! The parent's side of each child's socket: encoding and sending job
//! frames (`pump`), reading what the child sends back (`read_child`),
//! finishing jobs, and what happens when a child exits (`on_exit`).

use std::collections::VecDeque;
use std::io::{self, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::escape::Escaped;
use celeriac_core::{Args, TaskContext, TaskError};
use parking_lot::MutexGuard;
use serde::Serialize;
use serde_json::Value;

use super::frame::{self, ToParent};
use super::{
    CHILD_ARG, ChildState, ENV_CHILD, ENV_PARENT, ENV_RSS, Kill, MAX_START_FAILURES, Outcome,
    PoolCore, PoolState, ProcessJob, Queued, Running,
};

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
pub(super) fn encode(job: &ProcessJob) -> io::Result<Vec<u8>> {
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
    let body = serde_json::to_vec(&frame).map_err(io::Error::other)?;
    if body.len() + 8 > frame::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a job frame of {} bytes exceeds {}",
                body.len(),
                frame::MAX_FRAME
            ),
        ));
    }
    Ok(body)
}

fn send(c: &mut ChildState, f: &ToChildRef<'_>) -> io::Result<()> {
    let body = serde_json::to_vec(f).map_err(io::Error::other)?;
    frame::write_seq(&mut c.writer, 0, &body)
}

/// Marks a child as retiring; it is told to exit once it has no task.
pub(super) fn retire(st: &mut PoolState, id: u64) {
    if let Some(c) = st.children.get_mut(&id) {
        c.retiring = true;
        if c.ready && c.inflight.is_empty() && !c.dead && send(c, &ToChildRef::Exit).is_err() {
            c.dead = true;
        }
    }
}

/// Sends queued jobs to children with room. The frames a child is given
/// in one pass go in one write: a burst of submissions, or the room a
/// prefetching child's results made, cost one system call per child, and
/// the child reads them in one.
pub(super) fn pump(shared: &PoolCore, st: &mut PoolState) {
    let mut timed = false;
    // The children given frames in this pass, and how many each.
    let mut given: Vec<(u64, usize)> = Vec::new();
    while !st.queue.is_empty() {
        let Some((&id, c)) = st
            .children
            .iter()
            .filter(|(_, c)| {
                c.ready && !c.retiring && !c.dead && c.inflight.len() < shared.prefetch
            })
            .min_by_key(|(_, c)| c.inflight.len())
        else {
            break;
        };
        let big = st.queue.front().expect("queue is not empty").body.len() > PREFETCH_FRAME_MAX;
        let id = if !c.inflight.is_empty() && big {
            // Too big to queue behind a running task: wait for an idle child.
            match st
                .children
                .iter()
                .find(|(_, c)| c.ready && !c.retiring && !c.dead && c.inflight.is_empty())
            {
                Some((&other, _)) => other,
                None => break,
            }
        } else {
            id
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let p = st.queue.pop_front().expect("queue is not empty");
        let c = st.children.get_mut(&id).expect("child exists");
        timed |= p.job.ctx.time_limit().is_some();
        frame::put_seq(&mut c.out, seq, &p.body);
        let started = c.inflight.is_empty().then(Instant::now);
        c.inflight.push_back(Running {
            seq,
            job: p.job,
            body: p.body,
            done: p.done,
            started,
        });
        match given.iter_mut().find(|(g, _)| *g == id) {
            Some((_, n)) => *n += 1,
            None => given.push((id, 1)),
        }
    }
    for (id, n) in given {
        let c = st.children.get_mut(&id).expect("child exists");
        let written = c.writer.write_all(&c.out);
        c.out.clear();
        if let Err(e) = written {
            // The child is going away (its reader thread handles that);
            // the jobs just given never reached it: back to the front of
            // the queue, in order.
            tracing::debug!(pid = c.pid, error = %e, "could not write to pool child");
            c.dead = true;
            let from = c.inflight.len() - n;
            let back: Vec<Running> = c.inflight.drain(from..).collect();
            for r in back.into_iter().rev() {
                st.queue.push_front(Queued {
                    job: r.job,
                    body: r.body,
                    done: r.done,
                });
            }
        }
    }
    if timed {
        shared.cond.notify_all();
    }
}

/// Asks the supervisor to start children until the pool has its target.
///
/// Only the supervisor thread starts children: Linux delivers a child's
/// `PR_SET_PDEATHSIG` when the *thread* that spawned it exits, so children
/// must be spawned by a thread that lives as long as the pool.
pub(super) fn ensure_children(shared: &Arc<PoolCore>) {
    shared.cond.notify_all();
}

/// Counts a child that failed to start; after a few in a row the pool is
/// broken and every waiting job fails instead of waiting forever.
pub(super) fn start_failed(shared: &PoolCore, st: &mut MutexGuard<'_, PoolState>, why: String) {
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

pub(super) fn spawn_child(shared: &Arc<PoolCore>) -> io::Result<()> {
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
                out: Vec::new(),
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

/// One thread per child: reads its frames, and handles its end. The
/// results a child sent together (it sends those of a prefetched run of
/// quick tasks in one write) are finished together, under one lock.
pub(super) fn read_child(shared: &Arc<PoolCore>, id: u64, mut child: Child, stream: UnixStream) {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut finished: Vec<Finished> = Vec::new();
    'read: loop {
        // Blocks for one frame, then takes those read with it.
        let mut next = frame::read::<ToParent>(&mut r);
        loop {
            match next {
                Ok(Some(ToParent::Done(d))) => finished.push(Finished {
                    seq: d.seq,
                    result: d.result,
                    batch: None,
                    runtime_ns: d.runtime_ns,
                    peak_rss: d.peak_rss,
                }),
                Ok(Some(ToParent::DoneBatch(d))) => finished.push(Finished {
                    seq: d.seq,
                    result: Ok(Value::Null),
                    batch: Some(d.results),
                    runtime_ns: d.runtime_ns,
                    peak_rss: d.peak_rss,
                }),
                Ok(Some(ToParent::Ready { pid })) => {
                    on_done(shared, id, &mut finished);
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
                Ok(Some(ToParent::State(s))) => {
                    on_done(shared, id, &mut finished);
                    on_state(shared, id, s);
                }
                Ok(None) => break 'read,
                Err(e) => {
                    on_done(shared, id, &mut finished);
                    tracing::error!(pid = child.id(), error = %e, "bad frame from pool child; killing it");
                    let _ = child.kill();
                    break 'read;
                }
            }
            if !frame::complete_in(r.buffer()) {
                break;
            }
            next = frame::read::<ToParent>(&mut r);
        }
        on_done(shared, id, &mut finished);
    }
    on_done(shared, id, &mut finished);
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
    batch: Option<frame::BatchResults>,
    runtime_ns: u64,
    peak_rss: Option<u64>,
}

/// Finishes the tasks a child reported (and empties `finished`): under
/// one lock, then one pump for the room they made, then their callbacks,
/// in order, outside the lock. The supervisor is woken only when it has
/// something to do (a task with a hard time limit started, a child to
/// recycle), and a shutdown only when one waits.
fn on_done(shared: &Arc<PoolCore>, id: u64, finished: &mut Vec<Finished>) {
    if finished.is_empty() {
        return;
    }
    let mut callbacks = Vec::with_capacity(finished.len());
    let mut wake = false;
    let mut st = shared.state.lock();
    for d in finished.drain(..) {
        let Some(c) = st.children.get_mut(&id) else {
            break;
        };
        let Some(pos) = c.inflight.iter().position(|r| r.seq == d.seq) else {
            tracing::error!(
                pid = c.pid,
                seq = d.seq,
                "pool child finished a task it was not given"
            );
            continue;
        };
        let run = c.inflight.remove(pos).expect("position is valid");
        c.tasks += 1;
        let pid = c.pid;
        if let Some(next) = c.inflight.front_mut()
            && next.started.is_none()
        {
            next.started = Some(Instant::now());
            wake |= next.job.ctx.time_limit().is_some();
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
            wake = true;
        } else if retiring {
            retire(&mut st, id);
        }
        callbacks.push((
            run.done,
            Outcome {
                result: d.result,
                runtime: Duration::from_nanos(d.runtime_ns),
                pid: Some(pid),
                batch: d.batch,
            },
        ));
    }
    finished.clear();
    pump(shared, &mut st);
    wake |= st.closed;
    drop(st);
    if wake {
        shared.cond.notify_all();
    }
    for (done, outcome) in callbacks {
        done(outcome);
    }
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
