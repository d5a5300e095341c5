//! The local lane: a job handed over in process, typed, with no envelope
//! and no broker, run on the worker's thread pool and answered with its
//! result document directly.
//!
//! It serves a job server on its private in-process broker (`memory://`),
//! where every job's trip through the broker and the result store is an
//! encode, a decode and a hop through the async runtime for nothing: no
//! other process can see either. The lane keeps the broker path's
//! semantics:
//!
//! - a revoke ([`Worker::revoke_local`]) is honoured until the job starts,
//!   and a terminate cancels its context, as on the thread pool;
//! - time limits: the call's, else remote control's, else the worker's;
//!   the soft limit cancels the context (the thread pool enforces no hard
//!   limit);
//! - a failure goes through the same decision as on the broker path
//!   ([`decide::after_run`]): retry policy, `MaxRetriesExceededError`;
//!   a retry comes back as the message to publish ([`LocalEnd::Retry`]),
//!   and the worker takes it from there;
//! - panics are caught and become `Panicked` failures; subtasks and
//!   custom states work as on the broker path; the worker's counters
//!   count the job.
//!
//! The lane refuses what it cannot do the same way, and the caller sends
//! those jobs through the broker ([`Worker::accepts_local`]): async tasks,
//! tasks that run on processes, rate-limited tasks, queues the worker does
//! not consume, and a worker with observers, task events, `track_started`,
//! `result_extended` or a result size limit (each needs the message).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::escape::Escaped;
use celeriac_core::time::unix_now;
use celeriac_core::{
    Args, CancelToken, Message, PoolKind, Ran, RegisteredTask, ResultMeta, TaskContext, TaskError,
};
use celeriac_pool::Panicked;
use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::Worker;
use crate::decide::{self, Decision, Disposition, RunFacts};
use crate::worker::Inner;

/// A job for the local lane: a call's id, task, arguments, queue and time
/// limits, with no message.
#[derive(Debug)]
pub struct LocalJob {
    id: String,
    name: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    queue: String,
    timelimit: (Option<f64>, Option<f64>),
    cancel: CancelToken,
}

impl LocalJob {
    /// Task `id` of task `name` with its arguments, from `queue`.
    pub fn new(
        id: String,
        name: impl Into<String>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        queue: impl Into<String>,
    ) -> Self {
        LocalJob {
            id,
            name: name.into(),
            args,
            kwargs,
            queue: queue.into(),
            timelimit: (None, None),
            cancel: CancelToken::new(),
        }
    }

    /// The call's hard and soft time limits, in seconds (the `timelimit`
    /// header).
    pub fn time_limits(mut self, hard: Option<f64>, soft: Option<f64>) -> Self {
        self.timelimit = (hard, soft);
        self
    }

    /// The job's cancel token: the task's context sees it cancelled (a
    /// terminate, or its soft time limit).
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The protocol v2 message of this job, for the broker path.
    pub fn into_message(self) -> Message {
        let mut msg = Message::with_id(&self.name, &self.id, self.args, self.kwargs);
        msg.set_queue(&self.queue);
        msg.headers.timelimit = self.timelimit;
        msg
    }
}

/// A job that succeeded on the local lane: its value, and the facts its
/// result document holds beside it. The document itself is built only when
/// asked for ([`LocalSuccess::meta`]): a caller that wants the value alone
/// pays for no timestamp text and no copies of the names.
#[derive(Debug, Clone)]
pub struct LocalSuccess {
    id: String,
    name: String,
    queue: String,
    node: Arc<str>,
    value: Value,
    runtime: Duration,
    /// When it finished, in unix seconds (the document's `date_done`).
    done_at: f64,
    /// Subtasks it sent, listed as the document's `children`.
    children: Vec<String>,
}

impl LocalSuccess {
    /// The value the task returned.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// How long the task ran.
    pub fn runtime(&self) -> Duration {
        self.runtime
    }

    /// The worker's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The SUCCESS document the broker path would have stored.
    pub fn meta(&self) -> ResultMeta {
        let mut meta = ResultMeta::new(&self.id, celeriac_core::State::Success, Value::Null);
        meta.result = self.value.clone();
        meta.date_done = Some(celeriac_core::time::iso_from_unix(self.done_at));
        meta.name = Some(self.name.clone());
        meta.worker = Some(self.node.to_string());
        meta.retries = Some(0);
        meta.queue = Some(self.queue.clone());
        meta.runtime = Some(self.runtime.as_secs_f64());
        meta.children = self
            .children
            .iter()
            .map(|id| serde_json::json!([[id, null], null]))
            .collect();
        meta
    }
}

/// How a job on the local lane ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum LocalEnd {
    /// It succeeded: its value (and its result document on demand).
    Success(Box<LocalSuccess>),
    /// It finished otherwise: its result document (FAILURE or REVOKED),
    /// as the broker path would have stored it.
    Done(Box<ResultMeta>),
    /// It asked for a retry: publish `next` (the same task id, one more
    /// retry, its eta set) through the broker; the worker runs it from
    /// there. `result` is the RETRY document.
    Retry {
        /// The next attempt.
        next: Box<Message>,
        /// The RETRY document (none when the task ignores its result).
        result: Option<Box<ResultMeta>>,
    },
    /// It did not run: the worker is shutting down.
    NotRun(Box<LocalJob>),
}

/// Revokes of jobs on the lane, with when each lapses.
#[derive(Debug, Default)]
pub(crate) struct LocalRevokes {
    ids: Mutex<HashMap<String, Instant>>,
    /// How many ids `ids` holds: the lane looks only when there are any.
    len: AtomicUsize,
}

impl LocalRevokes {
    fn add(&self, ids: &[String], ttl: Duration) {
        let now = Instant::now();
        let mut map = self.ids.lock();
        map.retain(|_, until| *until > now);
        for id in ids {
            map.insert(id.clone(), now + ttl);
        }
        self.len.store(map.len(), Ordering::SeqCst);
    }

    fn contains(&self, id: &str) -> bool {
        if self.len.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.ids
            .lock()
            .get(id)
            .is_some_and(|until| *until > Instant::now())
    }
}

impl Worker {
    /// Whether the local lane takes jobs of task `name` from `queue` now:
    /// the worker is not shutting down, consumes
    /// `queue`, and runs `name` on its thread pool with nothing the lane
    /// cannot do as the broker path does (see [`LocalJob`]).
    pub fn accepts_local(&self, name: &str, queue: &str) -> bool {
        let inner = self.inner();
        if !inner.lane_ok || self.is_stopping() {
            return false;
        }
        if inner
            .config
            .events_enabled
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        let Some(task) = inner.registry.get(name) else {
            return false;
        };
        if task.is_async()
            || inner.executors.kind() == PoolKind::Processes
            || task.options().pool_choice() == Some(PoolKind::Processes)
            || task.options().rate().is_some()
            || inner.config.rate_limits.contains_key(name)
            || inner.control.rate_limit(name).is_some()
        {
            return false;
        }
        inner.control.queues().iter().any(|q| q == queue)
    }

    /// Runs `job` on the local lane: on the worker's thread pool, now, and
    /// calls `done` with how it ended (on the pool thread). `runtime` is
    /// the runtime [`Worker::run`] runs on (or will): the job's soft time
    /// limit and subtasks use it. The first call's is kept for every job. Gives the job back when the lane cannot
    /// take it (see [`Worker::accepts_local`]).
    pub fn run_local(
        &self,
        job: LocalJob,
        runtime: &tokio::runtime::Handle,
        done: impl FnOnce(LocalEnd) + Send + 'static,
    ) -> Result<(), Box<LocalJob>> {
        let inner = self.inner();
        if inner.registry.get(&job.name).is_none() {
            return Err(Box::new(job));
        }
        // The runtime is kept once (a clone per job would be one more
        // shared counter bumped by the caller and dropped by a pool thread).
        inner.lane_rt.get_or_init(|| runtime.clone());
        let lane = inner.clone();
        // The job holds an execution slot from here to its end, over the
        // concurrency if need be: messages claimed meanwhile wait in line
        // behind it, as they would behind a message claimed before them
        // (and their revokes and expiry are checked when they start).
        inner.slots.occupy();
        let spawned = inner.executors.threads().spawn(move || {
            let (Some(runtime), Some(task)) = (lane.lane_rt.get(), lane.registry.get(&job.name))
            else {
                unreachable!("the lane's runtime is set and its task registered before a hand-off");
            };
            let end = run(&lane, runtime, task, job);
            lane.slots.vacate();
            done(end);
        });
        // A pool that is shut down gives the closure back: it runs here,
        // and finds the worker stopping (the job does not run).
        if let Err(back) = spawned {
            back.into_inner()();
        }
        Ok(())
    }

    /// Revokes task ids on the local lane (for `ttl`): a job that has not
    /// started ends REVOKED instead of running. (A terminate is the
    /// caller's: cancel the job's token.)
    pub fn revoke_local(&self, ids: &[String], ttl: Duration) {
        self.inner().local_revokes.add(ids, ttl);
    }
}

/// One job's run on a pool thread.
fn run(
    inner: &Arc<Inner>,
    runtime: &tokio::runtime::Handle,
    task: &Arc<RegisteredTask>,
    job: LocalJob,
) -> LocalEnd {
    if inner.slots.is_stopping() {
        return LocalEnd::NotRun(Box::new(job));
    }
    let node = &inner.config.nodename;
    if inner.local_revokes.contains(&job.id) {
        tracing::info!(task_id = %Escaped(&job.id), task = %Escaped(&job.name), "task revoked; marking REVOKED");
        inner.notify.count_revoked();
        let meta = ResultMeta::failure(&job.id, &TaskError::revoked("revoked"));
        return LocalEnd::Done(Box::new(facts(meta, &job, node, None)));
    }
    let mut ctx =
        TaskContext::for_call(&job.id, &job.name, node, job.timelimit, job.cancel.clone());
    crate::worker::set_time_limits(inner, &mut ctx);
    let soft = ctx.soft_time_limit();
    let subtasks = crate::subtasks::TaskSubtasks::on(inner, runtime.clone());
    ctx.set_subtasks(subtasks.clone());
    ctx.set_states(crate::states::TaskStateSink::from_template(
        inner,
        runtime.clone(),
        facts(
            ResultMeta::new(&job.id, celeriac_core::State::Pending, Value::Null),
            &job,
            node,
            None,
        ),
    ));
    let timer = soft.map(|soft| {
        let token = job.cancel.clone();
        runtime.spawn(async move {
            tokio::time::sleep(soft).await;
            token.cancel();
        })
    });
    // The arguments again, for a failure's decision (a retry republishes
    // them); a clone of a few JSON values.
    let args = Args::new(job.args.clone(), job.kwargs.clone());
    let start = Instant::now();
    let out = catch_unwind(AssertUnwindSafe(|| task.invoke(&ctx, args))).unwrap_or_else(|p| {
        Err(TaskError::panicked(
            Panicked::from_payload(p).into_message(),
        ))
    });
    let runtime_taken = start.elapsed();
    inner.slots.record_runtime(runtime_taken);
    if let Some(t) = timer {
        t.abort();
    }
    subtasks.finish();
    match out {
        Ok(value) => {
            inner.notify.count_succeeded();
            LocalEnd::Success(Box::new(LocalSuccess {
                id: job.id,
                name: job.name,
                queue: job.queue,
                node: inner.lane_node.clone(),
                value,
                runtime: runtime_taken,
                done_at: unix_now(),
                children: subtasks.take_children(),
            }))
        }
        // The failure path is the broker path's, on the message the job
        // would have been.
        Err(e) => failed(inner, task, job, e, runtime_taken, &subtasks),
    }
}

/// A failed run: decided as on the broker path (retry policy,
/// `MaxRetriesExceededError`), on the message the job would have been.
fn failed(
    inner: &Inner,
    task: &RegisteredTask,
    job: LocalJob,
    e: TaskError,
    runtime_taken: Duration,
    subtasks: &crate::subtasks::TaskSubtasks,
) -> LocalEnd {
    let queue = job.queue.clone();
    let msg = job.into_message();
    let facts = RunFacts {
        msg: &msg,
        queue: &queue,
        options: task.options(),
        acked_early: false,
        meta: inner.config.meta_facts(),
        max_result: inner.config.max_result,
        known: inner,
    };
    let ran = Ran::new(Err(e), runtime_taken);
    let mut decision =
        decide::after_run(facts, Some(ran), crate::worker::random_unit(), unix_now());
    subtasks.add_children(&mut decision);
    match decision {
        Decision::Failed { result, error, .. } => {
            tracing::warn!(task_id = %Escaped(msg.id()), task = %Escaped(msg.task()), error = %Escaped(&error), "task failed");
            inner.notify.count_failed();
            LocalEnd::Done(Box::new(result))
        }
        Decision::Succeeded { result, .. } => LocalEnd::Done(Box::new(result)),
        Decision::Retry(Disposition::Retry { result, next, .. }) => {
            inner.notify.count_retried();
            LocalEnd::Retry {
                next,
                result: result.map(Box::new),
            }
        }
        // Celery's reject_on_worker_lost cannot apply on a thread (a
        // thread is never lost): the error is the job's failure.
        Decision::Retry(_) | Decision::GiveBack { .. } => {
            inner.notify.count_failed();
            let err =
                TaskError::new("the task's run was given back, which the local lane cannot do");
            let meta = ResultMeta::failure(msg.id(), &err);
            LocalEnd::Done(Box::new(crate::meta::result_meta(
                inner.config.meta_facts(),
                &msg,
                &queue,
                meta,
                Some(runtime_taken),
            )))
        }
    }
}

/// What the broker path stores beside the state (`meta::result_meta`
/// without a message: no parent, no group, no retries yet).
fn facts(
    mut meta: ResultMeta,
    job: &LocalJob,
    node: &str,
    runtime: Option<Duration>,
) -> ResultMeta {
    meta.name = Some(job.name.clone());
    meta.worker = Some(node.to_string());
    meta.retries = Some(0);
    meta.queue = Some(job.queue.clone());
    meta.runtime = runtime.map(|r| r.as_secs_f64());
    meta
}
