//! The job server.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::time::saturating_seconds;
use celeriac_core::{
    BackendError, Broker, BrokerError, Call, CancelToken, CodecError, Message, Outgoing,
    RegistryError, ResultBackend, ResultWatch, Routes, Secret, Task,
};
use celeriac_worker::{LocalEnd, LocalJob, Worker, WorkerError};
use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::builder::ServerBuilder;
use crate::job::{Callback, Job, JobEnd, JobError, JobState};
use crate::stats::{NodeStats, Stats};

/// Errors building or operating a [`Server`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The broker could not be opened.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The result backend could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The task registry is invalid (e.g. a duplicate task name).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The local worker could not be started or resized.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The server has no local worker (built with `workers(0)`).
    #[error("this server has no local worker")]
    NoLocalWorker,
    /// The async runtime could not be started.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A node did not resize: it did not answer, or refused (see
    /// [`Server::set_node_workers`]).
    #[error("node {node}: {reason}")]
    Node {
        /// The node's name.
        node: String,
        /// What went wrong.
        reason: String,
    },
}

pub(crate) type CallbackJob = Box<dyn FnOnce() + Send>;

/// A submitted job on its way to the publisher task: its message and the
/// state its [`Job`] handles wait on.
pub(crate) struct Unpublished {
    msg: Message,
    state: Arc<JobState>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct NodeTally {
    pub(crate) jobs: u64,
    pub(crate) seconds: f64,
}

/// What the server, its publisher task and its result watchers share: the
/// broker and backend, the jobs not yet finished, groups, per-node tallies
/// and the callback thread's queue.
pub(crate) struct ServerState {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) backend: Arc<dyn ResultBackend>,
    pub(crate) local_node: Option<String>,
    pub(crate) forget_results: bool,
    pub(crate) pending: Mutex<crate::stats::IdMap<Arc<JobState>>>,
    pub(crate) groups: Mutex<HashMap<String, usize>>,
    pub(crate) groups_cv: Condvar,
    pub(crate) tally: Mutex<BTreeMap<String, NodeTally>>,
    pub(crate) callbacks: Mutex<Option<std::sync::mpsc::Sender<CallbackJob>>>,
    /// Signs every job published.
    pub(crate) secret: Option<Secret>,
    /// This client's reply address, Celery's `app.thread_oid`, in every
    /// frozen canvas signature.
    pub(crate) oid: String,
    /// Jobs handed to the local lane and not finished yet (a shutdown
    /// waits for them).
    pub(crate) lane_inflight: AtomicUsize,
    /// Jobs handed to the local lane so far.
    pub(crate) lane_jobs: std::sync::atomic::AtomicU64,
    /// The local node's tally of jobs that succeeded on the lane (the
    /// others are in `tally`): counters, not the tally's lock, on the
    /// lane's hot path.
    pub(crate) lane_tally: crate::stats::LaneTally,
    /// The server's runtime, for what a [`Job`] does on it.
    pub(crate) rt: tokio::runtime::Handle,
    /// The publisher, for a retry from the local lane (a job's hand-off
    /// then clones nothing but this state); emptied at destroy, so that
    /// the publisher task ends.
    pub(crate) retry_publish: Mutex<Option<mpsc::UnboundedSender<Outbound>>>,
}

impl ServerState {
    /// Finishes a job once: records stats, runs its callback on the
    /// callback thread, then completes it. Later calls are ignored.
    pub(crate) fn finish(self: &Arc<Self>, state: Arc<JobState>, outcome: JobEnd) {
        let Some(callback) = state.claim() else {
            return;
        };
        if let JobEnd::Local(done) = &outcome {
            self.lane_tally.add(done.runtime());
        } else if let JobEnd::Meta(meta) = &outcome {
            let node = match (&meta.worker, &self.local_node) {
                (Some(w), Some(local)) if w == local => "local",
                (Some(w), _) => w.as_str(),
                (None, _) => "unknown",
            };
            let mut tally = self.tally.lock();
            if !tally.contains_key(node) {
                tally.insert(node.to_string(), NodeTally::default());
            }
            if let Some(t) = tally.get_mut(node) {
                t.jobs += 1;
                t.seconds += meta.runtime.unwrap_or(0.0);
            }
        }
        let Some(cb) = callback else {
            // No callback: complete at once, no hop through the callback thread.
            self.settle(&state, outcome);
            return;
        };
        let done = {
            let shared = self.clone();
            move || {
                if catch_unwind(AssertUnwindSafe(|| cb(&outcome))).is_err() {
                    tracing::error!(task_id = %state.id, "job callback panicked");
                }
                shared.settle(&state, outcome);
            }
        };
        let sender = self.callbacks.lock().clone();
        match sender {
            Some(tx) => {
                if let Err(returned) = tx.send(Box::new(done)) {
                    (returned.0)();
                }
            }
            None => done(),
        }
    }

    fn settle(&self, state: &JobState, outcome: JobEnd) {
        // Out of `pending` before the completion wakes anyone: stats taken
        // right after a wait count the job finished, not active.
        {
            let mut pending = self.pending.lock();
            if pending
                .get(&state.id)
                .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), state))
            {
                pending.remove(&state.id);
            }
        }
        if state.complete(outcome) {
            let mut groups = self.groups.lock();
            if let Some(n) = groups.get_mut(&state.group) {
                *n -= 1;
                if *n == 0 {
                    groups.remove(&state.group);
                }
            }
            self.groups_cv.notify_all();
        }
    }
}

/// The server itself, behind every [`Server`] clone: its runtime, local
/// worker and publisher channel. Dropping it (the last clone) shuts the
/// server down.
pub(crate) struct ServerCore {
    pub(crate) rt: Option<Runtime>,
    pub(crate) shared: Arc<ServerState>,
    pub(crate) worker: Option<Worker>,
    /// The local worker, when jobs may skip the broker (the local lane):
    /// the broker and the result store are this server's private
    /// `memory://`, and no secret signs jobs.
    pub(crate) lane: Option<Worker>,
    pub(crate) worker_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) publish: mpsc::UnboundedSender<Outbound>,
    pub(crate) queue: String,
    pub(crate) routes: Routes,
    pub(crate) created: Instant,
    pub(crate) destroyed: AtomicBool,
    pub(crate) callback_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ServerCore {
    pub(crate) fn rt(&self) -> &Runtime {
        self.rt
            .as_ref()
            .expect("runtime lives as long as the server")
    }

    /// Runs a future on the server's runtime and blocks for its output;
    /// works from any thread, including inside another runtime.
    pub(crate) fn block<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("server runtime stopped while blocking on it")
    }

    fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(w) = &self.worker {
            w.shutdown();
        }
        if let Some(task) = self.worker_task.lock().take() {
            self.block(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
            });
        }
        // Jobs on the local lane: the running ones finish, the queued ones
        // find the worker stopped and end Destroyed.
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.shared.lane_inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The local worker has stored every result it will produce. Jobs
        // whose result is stored but not yet delivered get it now; the
        // others can no longer finish here.
        let left: Vec<Arc<JobState>> = self.shared.pending.lock().values().cloned().collect();
        for state in left {
            if state.is_claimed() {
                continue;
            }
            let backend = self.shared.backend.clone();
            let id = state.id.clone();
            let stored = self.block(async move { backend.get(&id).await });
            let outcome = match stored {
                Ok(Some(meta)) if meta.status.is_ready() => JobEnd::Meta(Box::new(meta)),
                _ => JobEnd::Error(JobError::Destroyed),
            };
            self.shared.finish(state, outcome);
        }
        self.shared.callbacks.lock().take();
        self.shared.retry_publish.lock().take();
        if let Some(t) = self.callback_thread.lock().take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Drop for ServerCore {
    fn drop(&mut self) {
        self.destroy();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// The pp-style job server. Cheap to clone; clones share the server, which
/// shuts down (warm: running jobs finish) when the last clone is dropped or
/// [`Server::destroy`] is called.
///
/// # Examples
///
/// ```
/// use celeriac_core::Call;
/// use celeriac_server::Server;
///
/// let server = Server::builder().workers(2).build().unwrap();
/// # let mut reg = celeriac_core::Registry::new();
/// # reg.register_fn("tasks.add", |_, a| { let mut b = a.bind("add", &["x", "y"])?;
/// #     Ok(serde_json::json!(b.take::<i64>(0)? + b.take::<i64>(1)?)) }).unwrap();
/// # let server = Server::builder().workers(2).registry(reg).build().unwrap();
/// let job = server.submit(Call::<i64>::new("tasks.add").arg(2).arg(3));
/// assert_eq!(job.wait().unwrap(), 5);
/// server.print_stats();
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) handle: Arc<ServerCore>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("broker", &self.handle.shared.broker.url())
            .field("backend", &self.handle.shared.backend.url())
            .field("workers", &self.workers())
            .finish()
    }
}

/// Publishes jobs in submission order, batching whatever is queued, after
/// starting to watch each job's result (watch before publish: no race).
pub(crate) async fn publisher(shared: Arc<ServerState>, mut rx: mpsc::UnboundedReceiver<Outbound>) {
    let mut received = Vec::new();
    while rx.recv_many(&mut received, 1024).await > 0 {
        // Jobs in a row go out in one batch; a canvas goes out in its own
        // order (its chord sizes between its messages), after the jobs
        // sent before it.
        let mut batch = Vec::new();
        for item in received.drain(..) {
            match item {
                Outbound::Job(u) => batch.push(u),
                Outbound::Plan(plan) => {
                    publish_jobs(&shared, std::mem::take(&mut batch)).await;
                    crate::canvas::publish_plan(&shared, plan).await;
                }
            }
        }
        publish_jobs(&shared, batch).await;
    }
}

/// What the publisher task sends: a job, or a canvas. Jobs, the hot
/// path, are not boxed: that would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outbound {
    Job(Unpublished),
    Plan(crate::canvas::PlanWork),
}

/// Publishes a batch of jobs, after starting to watch their results.
async fn publish_jobs(shared: &Arc<ServerState>, mut batch: Vec<Unpublished>) {
    if batch.is_empty() {
        return;
    }
    {
        let mut outgoing = Vec::with_capacity(batch.len());
        let mut ready = Vec::with_capacity(batch.len());
        for mut p in batch.drain(..) {
            match signed_outgoing(shared.secret.as_ref(), &mut p.msg) {
                Ok(o) => {
                    outgoing.push(o);
                    ready.push(p);
                }
                Err(e) => shared.finish(p.state, JobEnd::Error(JobError::Publish(e.to_string()))),
            }
        }
        let ids: Vec<String> = ready.iter().map(|p| p.msg.id().to_string()).collect();
        let published: Vec<(Unpublished, ResultWatch)> = match shared.backend.watch_many(&ids).await
        {
            Ok(watches) => ready.into_iter().zip(watches).collect(),
            Err(e) => {
                for p in ready {
                    shared.finish(p.state, JobEnd::Error(JobError::Backend(e.to_string())));
                }
                return;
            }
        };
        if outgoing.is_empty() {
            return;
        }
        if let Err(e) = shared.broker.publish_batch(outgoing).await {
            tracing::error!(error = %e, "could not publish jobs");
            for (p, _) in published {
                shared.finish(p.state, JobEnd::Error(JobError::Publish(e.to_string())));
            }
            return;
        }
        for (p, watch) in published {
            let shared = shared.clone();
            tokio::spawn(async move {
                let outcome = match watch.await {
                    Ok(meta) => JobEnd::Meta(Box::new(meta)),
                    Err(BackendError::Closed) => JobEnd::Error(JobError::Destroyed),
                    Err(e) => JobEnd::Error(e.into()),
                };
                let id = p.state.id.clone();
                shared.finish(p.state, outcome);
                // Forgotten only after the job is claimed, so a shutdown
                // that looks for stored results cannot miss it; kept when
                // duplicates of an idempotency key may still need it.
                if shared.forget_results && p.msg.idempotency_key().is_none() {
                    let _ = shared.backend.forget(&id).await;
                }
            });
        }
    }
}

/// The outgoing form of a job's message, signed first when the server has
/// a secret.
pub(crate) fn signed_outgoing(
    secret: Option<&Secret>,
    msg: &mut Message,
) -> Result<Outgoing, CodecError> {
    if let Some(secret) = secret {
        secret.sign(msg)?;
    }
    Outgoing::from_message(msg)
}

/// A job being configured: its group and callback. Created by
/// [`Server::job`].
#[must_use = "a job is sent only by .submit()"]
pub struct Submit<'s, T> {
    server: &'s Server,
    call: Call<T>,
    group: String,
    callback: Option<Callback>,
}

impl<T> std::fmt::Debug for Submit<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submit")
            .field("call", &self.call)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + 'static> Submit<'_, T> {
    /// Puts the job in a group, for [`Server::wait_group`] (default
    /// `default`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Runs `f` with the job's result when it finishes, on the server's
    /// callback thread (one thread: callbacks run one at a time, in order
    /// of completion). [`Job::wait`] returns after the callback has run.
    pub fn callback<F>(mut self, f: F) -> Self
    where
        F: FnOnce(Result<T, JobError>) + Send + 'static,
    {
        self.callback = Some(Box::new(move |o: &JobEnd| f(o.decode::<T>())));
        self
    }

    /// Sends the job.
    pub fn submit(self) -> Job<T> {
        self.server.send(self.call, self.group, self.callback)
    }
}

impl Server {
    /// A server with workers sized to the machine, on the embedded
    /// in-process broker, running every linked task.
    pub fn new() -> Result<Server, ServerError> {
        Self::builder().build()
    }

    /// Configures a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Submits a job in the `default` group.
    pub fn submit<T: DeserializeOwned + 'static>(&self, call: Call<T>) -> Job<T> {
        self.send(call, "default".to_string(), None)
    }

    /// Starts configuring a job with a group and a callback.
    pub fn job<T: DeserializeOwned + 'static>(&self, call: Call<T>) -> Submit<'_, T> {
        Submit {
            server: self,
            call,
            group: "default".to_string(),
            callback: None,
        }
    }

    pub(crate) fn send<T>(
        &self,
        call: Call<T>,
        group: String,
        callback: Option<Callback>,
    ) -> Job<T> {
        let h = &self.handle;
        let (call, group, callback) = match self.send_local(call, group, callback) {
            Ok(job) => return job,
            Err(back) => *back,
        };
        let msg = call.to_message().map(|mut m| {
            if call.options().queue.is_none() {
                m.set_queue(h.routes.queue_for(call.name()).unwrap_or(&h.queue));
            }
            m
        });
        let id = msg
            .as_ref()
            .map_or_else(|_| String::new(), |m| m.id().to_string());
        let state = JobState::new(id.clone(), group.clone(), callback);
        *h.shared.groups.lock().entry(group).or_insert(0) += 1;
        h.shared.pending.lock().insert(id, state.clone());
        let job = Job::new(state.clone(), None, Some(self.link()));
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                h.shared.finish(state, JobEnd::Error(JobError::Task(e)));
                return job;
            }
        };
        if h.destroyed.load(Ordering::SeqCst) {
            h.shared.finish(state, JobEnd::Error(JobError::Destroyed));
            return job;
        }
        if let Err(returned) = h.publish.send(Outbound::Job(Unpublished { msg, state }))
            && let Outbound::Job(u) = returned.0
        {
            h.shared.finish(u.state, JobEnd::Error(JobError::Destroyed));
        }
        job
    }

    /// Hands the job to the local lane when it can take it (see
    /// [`ServerBuilder::local_lane`]); gives it back otherwise.
    #[allow(clippy::type_complexity)]
    fn send_local<T>(
        &self,
        call: Call<T>,
        group: String,
        callback: Option<Callback>,
    ) -> Result<Job<T>, Box<(Call<T>, String, Option<Callback>)>> {
        let h = &self.handle;
        let Some(lane) = &h.lane else {
            return Err(Box::new((call, group, callback)));
        };
        let o = call.options();
        let queue = match &o.queue {
            Some(q) => q.as_str(),
            None => h.routes.queue_for(call.name()).unwrap_or(&h.queue),
        };
        if call.error().is_some()
            || call.name().is_empty()
            || queue.is_empty()
            || o.countdown.is_some()
            || o.eta.is_some()
            || o.expires.is_some()
            || o.idempotency_key.is_some()
            || o.ignore_result == Some(true)
            || h.destroyed.load(Ordering::SeqCst)
            || !lane.accepts_local(call.name(), queue)
        {
            return Err(Box::new((call, group, callback)));
        }
        let queue = queue.to_string();
        let (name, args, kwargs, o) = call.into_parts();
        let id = o.task_id.unwrap_or_else(celeriac_core::id::fresh_uuid);
        let cancel = CancelToken::new();
        let state =
            JobState::with_cancel(id.clone(), group.clone(), callback, Some(cancel.clone()));
        *h.shared.groups.lock().entry(group).or_insert(0) += 1;
        h.shared.pending.lock().insert(id.clone(), state.clone());
        let job = Job::new(state.clone(), None, Some(self.link()));
        let local = LocalJob::new(id, name, args, kwargs, queue)
            .time_limits(o.time_limit, o.soft_time_limit)
            .cancel_token(cancel);
        let shared = h.shared.clone();
        shared.lane_inflight.fetch_add(1, Ordering::SeqCst);
        shared.lane_jobs.fetch_add(1, Ordering::Relaxed);
        let done = move |end: LocalEnd| {
            match end {
                LocalEnd::Success(done) => shared.finish(state, JobEnd::Local(done)),
                LocalEnd::Done(meta) => shared.finish(state, JobEnd::Meta(meta)),
                // A retry goes through the broker, as it would have from
                // the broker path: the worker runs it when it is due.
                LocalEnd::Retry { next, .. } => {
                    let publish = shared.retry_publish.lock().clone();
                    let sent = match publish {
                        Some(p) => p
                            .send(Outbound::Job(Unpublished { msg: *next, state }))
                            .map_err(|returned| returned.0),
                        None => Err(Outbound::Job(Unpublished { msg: *next, state })),
                    };
                    if let Err(Outbound::Job(u)) = sent {
                        shared.finish(u.state, JobEnd::Error(JobError::Destroyed));
                    }
                }
                _ => shared.finish(state, JobEnd::Error(JobError::Destroyed)),
            }
            shared.lane_inflight.fetch_sub(1, Ordering::SeqCst);
        };
        if let Err(local) = lane.run_local(local, h.rt().handle(), done) {
            // The lane stopped between the check and the hand-off: the
            // broker path takes the job.
            h.shared.lane_inflight.fetch_sub(1, Ordering::SeqCst);
            let msg = local.into_message();
            let state = h.shared.pending.lock().get(msg.id()).cloned();
            if let Some(state) = state
                && let Err(returned) = h.publish.send(Outbound::Job(Unpublished { msg, state }))
                && let Outbound::Job(u) = returned.0
            {
                h.shared.finish(u.state, JobEnd::Error(JobError::Destroyed));
            }
        }
        Ok(job)
    }

    /// Blocks until every job of `group` has finished (callbacks included).
    pub fn wait_group(&self, group: &str) {
        let shared = &self.handle.shared;
        let mut groups = shared.groups.lock();
        while groups.contains_key(group) {
            shared.groups_cv.wait(&mut groups);
        }
    }

    /// Blocks until every submitted job has finished.
    pub fn wait(&self) {
        let shared = &self.handle.shared;
        let mut groups = shared.groups.lock();
        while !groups.is_empty() {
            shared.groups_cv.wait(&mut groups);
        }
    }

    /// Number of local worker threads (0 with no local worker).
    pub fn workers(&self) -> usize {
        self.handle.worker.as_ref().map_or(0, Worker::concurrency)
    }

    /// Resizes the local worker while it runs; no job is lost.
    pub fn set_workers(&self, n: usize) -> Result<(), ServerError> {
        let w = self
            .handle
            .worker
            .as_ref()
            .ok_or(ServerError::NoLocalWorker)?;
        w.set_concurrency(n)?;
        Ok(())
    }

    /// Pids of the local worker's child processes, with
    /// [`PoolKind::Processes`](celeriac_worker::PoolKind::Processes) (empty otherwise).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.handle
            .worker
            .as_ref()
            .map(Worker::child_pids)
            .unwrap_or_default()
    }

    /// Nodes serving this server's broker and their worker counts:
    /// `local` for this server's own worker, and every other worker whose
    /// heartbeat is recent (within 6 s).
    pub fn active_nodes(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        if let Some(w) = &self.handle.worker {
            out.insert("local".to_string(), w.concurrency());
        }
        let broker = self.handle.shared.broker.clone();
        let local = self.handle.shared.local_node.clone();
        match self
            .handle
            .block(async move { broker.nodes(Duration::from_secs(6)).await })
        {
            Ok(nodes) => {
                for n in nodes {
                    if Some(&n.name) != local.as_ref() {
                        out.insert(n.name, n.concurrency);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list nodes"),
        }
        out
    }

    /// A snapshot of per-node statistics.
    pub fn stats(&self) -> Stats {
        let mut tally = self.handle.shared.tally.lock().clone();
        let (lane_jobs, lane_seconds) = self.handle.shared.lane_tally.get();
        if lane_jobs > 0 {
            let local = tally.entry("local".to_string()).or_default();
            local.jobs += lane_jobs;
            local.seconds += lane_seconds;
        }
        let total: u64 = tally.values().map(|t| t.jobs).sum();
        let mut nodes: Vec<NodeStats> = tally
            .iter()
            .map(|(node, t)| NodeStats {
                node: node.clone(),
                jobs: t.jobs,
                percent: if total == 0 {
                    0.0
                } else {
                    100.0 * t.jobs as f64 / total as f64
                },
                // Runtimes come from stored results: a negative, NaN or
                // huge one must not panic here.
                total_time: saturating_seconds(t.seconds),
                time_per_job: saturating_seconds(if t.jobs == 0 {
                    0.0
                } else {
                    t.seconds / t.jobs as f64
                }),
            })
            .collect();
        nodes.sort_by(|a, b| b.jobs.cmp(&a.jobs).then(a.node.cmp(&b.node)));
        Stats {
            nodes,
            elapsed: self.handle.created.elapsed(),
            pending: self.handle.shared.pending.lock().len(),
            workers: self.workers(),
            local_lane: self.handle.shared.lane_jobs.load(Ordering::Relaxed),
        }
    }

    /// Prints [`Server::stats`] in pp's layout.
    pub fn print_stats(&self) {
        println!("{}", self.stats());
    }

    /// Revokes task ids durably (for three hours): every worker on the
    /// broker, including ones started later, records them as REVOKED
    /// instead of running them. A job already running finishes.
    pub fn revoke(&self, task_ids: &[&str]) -> Result<(), ServerError> {
        let broker = self.handle.shared.broker.clone();
        let ids: Vec<String> = task_ids.iter().map(|s| s.to_string()).collect();
        if let Some(lane) = &self.handle.lane {
            lane.revoke_local(&ids, celeriac_core::broker::REVOKE_TTL);
        }
        self.handle
            .block(async move { broker.revoke(&ids, celeriac_core::broker::REVOKE_TTL).await })?;
        Ok(())
    }

    /// Revokes task ids like [`Server::revoke`], and stops them where
    /// they already run (Celery's `terminate=True`): a process-pool worker
    /// kills the child, an async one cancels the future, a thread-pool one
    /// cancels the task's context. The job ends as `TaskRevokedError`.
    pub fn revoke_terminate(&self, task_ids: &[&str]) -> Result<(), ServerError> {
        let broker = self.handle.shared.broker.clone();
        let ids: Vec<String> = task_ids.iter().map(|s| s.to_string()).collect();
        if let Some(lane) = &self.handle.lane {
            lane.revoke_local(&ids, celeriac_core::broker::REVOKE_TTL);
            // A job running on the lane runs on a thread: its context is
            // cancelled, as the thread executor does.
            let pending = self.handle.shared.pending.lock();
            for id in &ids {
                if let Some(token) = pending.get(id).and_then(|s| s.cancel.as_ref()) {
                    tracing::warn!(task_id = %celeriac_core::escape::Escaped(id), "revoked with terminate: a thread cannot be killed; cancelling its context");
                    token.cancel();
                }
            }
        }
        self.handle.block(async move {
            broker
                .revoke_terminate(&ids, celeriac_core::broker::REVOKE_TTL)
                .await
        })?;
        Ok(())
    }

    /// The broker URL.
    pub fn broker_url(&self) -> String {
        self.handle.shared.broker.url()
    }

    /// Shuts the server down now: the local worker finishes its running
    /// jobs, and jobs that can no longer finish fail with
    /// [`JobError::Destroyed`]. Called on drop of the last clone.
    pub fn destroy(&self) {
        self.handle.destroy();
    }
}

type TemplateCallback<O> = Arc<dyn Fn(Result<O, JobError>) + Send + Sync>;

/// Pre-binds a task, a group and a callback, like pp's `Template`; each
/// [`Template::submit`] sends one job with new arguments.
pub struct Template<T: Task> {
    server: Server,
    group: String,
    queue: Option<String>,
    callback: Option<TemplateCallback<T::Output>>,
}

impl<T: Task> std::fmt::Debug for Template<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("task", &T::name())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<T: Task> Template<T>
where
    T::Output: 'static,
{
    /// A template for task `T` on `server`.
    pub fn new(server: &Server) -> Self {
        Template {
            server: server.clone(),
            group: "default".to_string(),
            queue: None,
            callback: None,
        }
    }

    /// The group of every job it submits.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The queue of every job it submits.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// A callback run with each job's result.
    pub fn callback<F>(mut self, f: F) -> Self
    where
        F: Fn(Result<T::Output, JobError>) + Send + Sync + 'static,
    {
        self.callback = Some(Arc::new(f));
        self
    }

    /// Submits one job with `args`.
    pub fn submit(&self, args: T::Args) -> Job<T::Output> {
        let mut call = T::call(args);
        if let Some(q) = &self.queue {
            call = call.queue(q.clone());
        }
        let callback: Option<Callback> = self
            .callback
            .clone()
            .map(|cb| Box::new(move |o: &JobEnd| cb(o.decode::<T::Output>())) as Callback);
        self.server.send(call, self.group.clone(), callback)
    }
}
