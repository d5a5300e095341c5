//! Canvases through the job server: [`Server::apply`] sends a chain, a
//! group, a chord, a map, exactly as Celery 5.7's client sends them (see
//! [`celeriac_core::canvas`]), to the server's own worker, to `celeriac
//! worker` processes or to Python Celery workers on the same broker, and
//! returns a [`Job`] (the final result: a chain's last step, a chord's
//! body) or a [`GroupResult`].
//!
//! The publisher task sends a canvas in order with the jobs submitted
//! around it: it starts watching the results first, then sends the
//! messages, recording each chord's size with the backend's
//! [`ChordJoin`](celeriac_core::ChordJoin) just before the chord's last
//! header part, as Celery does.

use std::marker::PhantomData;
use std::sync::Arc;

use celeriac_core::canvas::{Action, Canvas, Group, Plan, PlanContext, ResultNode};
use celeriac_core::{BackendError, Call, ResultMeta, ResultWatch};
use futures::future::{BoxFuture, FutureExt, join_all};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::group::{GroupResult, ResultRef};
use crate::job::{Job, JobEnd, JobError, JobState};
use crate::server::{Outbound, Server, ServerState, signed_outgoing};

/// What a canvas hands the publisher: its actions, and the jobs waiting
/// on its results.
pub(crate) struct PlanWork {
    actions: Vec<Action>,
    watched: Vec<(Arc<JobState>, ResultNode)>,
}

/// A handle on the server for jobs and groups: reads stored results and
/// watches related ones. It does not keep the server alive; once the
/// server is gone, what needs it fails with [`JobError::Destroyed`].
#[derive(Clone)]
pub(crate) struct ServerLink {
    shared: Arc<ServerState>,
}

impl std::fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerLink")
    }
}

impl ServerLink {
    /// Runs `fut` on the server's runtime and waits for it.
    fn block<F>(&self, fut: F) -> Result<F::Output, JobError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| JobError::Destroyed)
    }

    /// The stored result of `id` (`None`: PENDING).
    pub(crate) fn get(&self, id: &str) -> Result<Option<ResultMeta>, JobError> {
        let backend = self.shared.backend.clone();
        let id = id.to_string();
        Ok(self.block(async move { backend.get(&id).await })??)
    }

    pub(crate) fn save_group(&self, id: &str, meta: Value) -> Result<(), JobError> {
        let backend = self.shared.backend.clone();
        let id = id.to_string();
        Ok(self.block(async move { backend.save_group(&id, &meta).await })??)
    }

    /// A handle on the result `node` names.
    pub(crate) fn related(&self, node: &ResultNode) -> ResultRef {
        match node {
            ResultNode::Task { .. } => ResultRef::Job(self.watch(node.clone(), false)),
            ResultNode::Group { .. } => ResultRef::Group(self.group(node.clone(), false)),
        }
    }

    /// A group result whose members are watched.
    pub(crate) fn group<T>(&self, tree: ResultNode, counted: bool) -> GroupResult<T> {
        GroupResult {
            id: tree.id().to_string(),
            jobs: tree
                .results()
                .iter()
                .map(|m| self.watch(m.clone(), counted))
                .collect(),
            tree,
            link: Some(self.clone()),
            error: None,
            _out: PhantomData,
        }
    }

    /// A job that waits for `node` (a task, or every member of a group),
    /// already sent; `counted` jobs are ones `Server::wait` waits for.
    pub(crate) fn watch<T>(&self, node: ResultNode, counted: bool) -> Job<T> {
        let state = self.state(node.id(), counted);
        let job = Job::new(state.clone(), Some(node.clone()), Some(self.clone()));
        let shared = self.shared.clone();
        self.shared.rt.spawn(async move {
            let mut leaves = Vec::new();
            leaf_ids(&node, &mut leaves);
            let guard = FinishOnDrop::new(&shared, state);
            let outcome = match shared.backend.watch_many(&leaves).await {
                Ok(watches) => end(combine(&node, &mut watches.into_iter()).await),
                Err(e) => JobEnd::Error(e.into()),
            };
            guard.finish(outcome);
        });
        job
    }

    fn state(&self, id: &str, counted: bool) -> Arc<JobState> {
        let group = if counted { "default" } else { "" };
        let state = JobState::new(id.to_string(), group.to_string(), None);
        if counted {
            *self
                .shared
                .groups
                .lock()
                .entry(group.to_string())
                .or_insert(0) += 1;
            self.shared
                .pending
                .lock()
                .insert(id.to_string(), state.clone());
        }
        state
    }
}

/// Finishes a job as [`JobError::Destroyed`] if its watcher is dropped
/// before it finished it (the server's runtime shut down).
struct FinishOnDrop {
    shared: Arc<ServerState>,
    state: Option<Arc<JobState>>,
}

impl FinishOnDrop {
    fn new(shared: &Arc<ServerState>, state: Arc<JobState>) -> Self {
        FinishOnDrop {
            shared: shared.clone(),
            state: Some(state),
        }
    }

    fn finish(mut self, outcome: JobEnd) {
        if let Some(state) = self.state.take() {
            self.shared.finish(state, outcome);
        }
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            self.shared
                .finish(state, JobEnd::Error(JobError::Destroyed));
        }
    }
}

/// The task ids `node` waits on, in order: a task's own, a group's
/// members'.
fn leaf_ids(node: &ResultNode, out: &mut Vec<String>) {
    match node {
        ResultNode::Task { id, .. } => out.push(id.clone()),
        ResultNode::Group { results, .. } => results.iter().for_each(|r| leaf_ids(r, out)),
    }
}

/// The result of `node` from the watches of its leaves: a task's stored
/// document; for a group, SUCCESS with the list of its members' results,
/// or its first failed member's document.
fn combine(
    node: &ResultNode,
    watches: &mut std::vec::IntoIter<ResultWatch>,
) -> BoxFuture<'static, Result<ResultMeta, BackendError>> {
    match node {
        ResultNode::Task { .. } => match watches.next() {
            Some(w) => w.boxed(),
            None => async { Err(BackendError::Closed) }.boxed(),
        },
        ResultNode::Group { id, results, .. } => {
            let parts: Vec<_> = results.iter().map(|r| combine(r, watches)).collect();
            let id = id.clone();
            async move {
                let mut values = Vec::new();
                for meta in join_all(parts).await {
                    let meta = meta?;
                    match meta.outcome() {
                        Some(Ok(v)) => values.push(v.clone()),
                        _ => return Ok(meta),
                    }
                }
                let mut meta = ResultMeta::success(&id, Value::Array(values));
                meta.group_id = Some(id);
                Ok(meta)
            }
            .boxed()
        }
    }
}

fn end(r: Result<ResultMeta, BackendError>) -> JobEnd {
    match r {
        Ok(meta) => JobEnd::Meta(Box::new(meta)),
        Err(BackendError::Closed) => JobEnd::Error(JobError::Destroyed),
        Err(e) => JobEnd::Error(e.into()),
    }
}

/// Sends a canvas: watches first, then its actions in order.
pub(crate) async fn publish_plan(shared: &Arc<ServerState>, work: PlanWork) {
    let PlanWork { actions, watched } = work;
    let fail = |watched: Vec<(Arc<JobState>, ResultNode)>, e: JobError| {
        tracing::error!(error = %e, "could not send a canvas");
        for (state, _) in watched {
            shared.finish(state, JobEnd::Error(e.clone()));
        }
    };
    let mut leaves = Vec::new();
    for (_, node) in &watched {
        leaf_ids(node, &mut leaves);
    }
    let mut watches = match shared.backend.watch_many(&leaves).await {
        Ok(w) => w.into_iter(),
        Err(e) => return fail(watched, e.into()),
    };
    let waits: Vec<_> = watched
        .iter()
        .map(|(_, node)| combine(node, &mut watches))
        .collect();
    let mut batch = Vec::new();
    for action in actions {
        match action {
            Action::Publish(msg) => {
                let mut msg = *msg;
                match signed_outgoing(shared.secret.as_ref(), &mut msg) {
                    Ok(o) => batch.push(o),
                    Err(e) => return fail(watched, JobError::Publish(e.to_string())),
                }
            }
            Action::ChordSize { group_id, size } => {
                if !batch.is_empty()
                    && let Err(e) = shared
                        .broker
                        .publish_batch(std::mem::take(&mut batch))
                        .await
                {
                    return fail(watched, e.into());
                }
                let Some(join) = shared.backend.chord_join() else {
                    return fail(watched, no_chord_join(shared));
                };
                if let Err(e) = join.set_size(&group_id, size).await {
                    return fail(watched, e.into());
                }
            }
            _ => {}
        }
    }
    if !batch.is_empty()
        && let Err(e) = shared.broker.publish_batch(batch).await
    {
        return fail(watched, e.into());
    }
    for ((state, node), wait) in watched.into_iter().zip(waits) {
        let guard = FinishOnDrop::new(shared, state);
        let shared = shared.clone();
        tokio::spawn(async move {
            guard.finish(end(wait.await));
            // As for submitted jobs: a private store forgets what the job
            // waited on once it has it (the steps before stay until their
            // TTL, for `Job::parent`).
            if shared.forget_results {
                let mut ids = Vec::new();
                leaf_ids(&node, &mut ids);
                for id in ids {
                    let _ = shared.backend.forget(&id).await;
                }
            }
        });
    }
}

fn no_chord_join(shared: &ServerState) -> JobError {
    JobError::Unsupported(format!(
        "chords need a result backend with a chord join; {} has none",
        shared.backend.url()
    ))
}

/// What [`Server::apply`] sends: a [`Canvas`] or a [`Call`] (waited on as
/// a [`Job`]), or a [`Group`] (a [`GroupResult`]).
pub trait Apply {
    /// What waits for the result.
    type Handle;
    /// Sends it through `server`.
    fn apply_to(self, server: &Server) -> Self::Handle;
}

impl<T: DeserializeOwned + 'static> Apply for Canvas<T> {
    type Handle = Job<T>;
    fn apply_to(self, server: &Server) -> Job<T> {
        let link = server.link();
        match server.plan(|ctx| self.plan(ctx)) {
            Ok(plan) => {
                let state = link.state(plan.result.id(), true);
                let job = Job::new(state.clone(), Some(plan.result.clone()), Some(link));
                server.enqueue(plan.actions, vec![(state, plan.result)]);
                job
            }
            Err(e) => {
                let state = link.state("", true);
                server.handle.shared.finish(state.clone(), JobEnd::Error(e));
                Job::new(state, None, Some(link))
            }
        }
    }
}

impl<T: DeserializeOwned + 'static> Apply for Call<T> {
    type Handle = Job<T>;
    fn apply_to(self, server: &Server) -> Job<T> {
        Canvas::from(self).apply_to(server)
    }
}

impl<T: DeserializeOwned + 'static> Apply for Group<T> {
    type Handle = GroupResult<T>;
    fn apply_to(self, server: &Server) -> GroupResult<T> {
        let link = server.link();
        match server.plan(|ctx| self.plan(ctx)) {
            Ok(plan) => {
                let group = GroupResult {
                    id: plan.result.id().to_string(),
                    jobs: Vec::new(),
                    tree: plan.result.clone(),
                    link: Some(link.clone()),
                    error: None,
                    _out: PhantomData,
                };
                let mut watched = Vec::new();
                let mut jobs = Vec::new();
                for m in plan.result.results() {
                    let state = link.state(m.id(), true);
                    jobs.push(Job::new(state.clone(), Some(m.clone()), Some(link.clone())));
                    watched.push((state, m.clone()));
                }
                server.enqueue(plan.actions, watched);
                GroupResult { jobs, ..group }
            }
            Err(e) => GroupResult {
                id: String::new(),
                jobs: Vec::new(),
                tree: ResultNode::group("", Vec::new()),
                link: Some(link),
                error: Some(e),
                _out: PhantomData,
            },
        }
    }
}

impl Server {
    /// Sends a canvas, as Celery 5.7's client sends it, and returns what
    /// waits for its result:
    ///
    /// - a [`Canvas`] (a chain, a chord, a map, a call with callbacks) or
    ///   a [`Call`]: a [`Job`] for the final result (a chain's last step, a
    ///   chord's body), whose [`Job::parent`] leads back through the
    ///   canvas;
    /// - a [`Group`]: a [`GroupResult`].
    ///
    /// It runs wherever the broker's workers are: this server's own, other
    /// `celeriac worker`s, Python Celery workers. A chord needs a result
    /// backend with a chord join (Redis has one); elsewhere its job fails
    /// at once with [`JobError::Unsupported`], nothing sent.
    ///
    /// ```
    /// use celeriac_core::Call;
    /// use celeriac_core::canvas::{Sig, chain};
    /// use celeriac_server::Server;
    /// # let mut reg = celeriac_core::Registry::new();
    /// # reg.register_fn("tasks.add", |_, a| { let mut b = a.bind("add", &["x", "y"])?;
    /// #     Ok(serde_json::json!(b.take::<i64>(0)? + b.take::<i64>(1)?)) }).unwrap();
    /// # let server = Server::builder().workers(2).registry(reg).build().unwrap();
    ///
    /// let add_ten: Sig<i64, i64> = Call::new("tasks.add").arg(10).partial();
    /// let job = server.apply(chain(Call::<i64>::new("tasks.add").arg(1).arg(2)).then(add_ten));
    /// assert_eq!(job.wait().unwrap(), 13);
    /// let first = job.parent().unwrap().unwrap().job().unwrap();
    /// assert_eq!(first.wait().unwrap(), 3);
    /// ```
    pub fn apply<A: Apply>(&self, canvas: A) -> A::Handle {
        canvas.apply_to(self)
    }

    /// A job for a result sent elsewhere, by task id: Celery's
    /// `AsyncResult(id)`. On a private `memory://` server, results its
    /// jobs have received are forgotten (to keep memory flat), so ask for
    /// those through the jobs, not by id.
    pub fn result<T: DeserializeOwned>(&self, task_id: &str) -> Job<T> {
        self.link().watch(ResultNode::task(task_id), false)
    }

    /// A group result saved with [`GroupResult::save`] or Python's
    /// `GroupResult.save()`: Celery's `GroupResult.restore(id)`. `None` if
    /// nothing is saved under that id.
    pub fn restore_group<T: DeserializeOwned>(
        &self,
        group_id: &str,
    ) -> Result<Option<GroupResult<T>>, JobError> {
        let link = self.link();
        let backend = self.handle.shared.backend.clone();
        let id = group_id.to_string();
        let Some(meta) = link.block(async move { backend.restore_group(&id).await })?? else {
            return Ok(None);
        };
        let tree =
            ResultNode::from_group_meta(&meta).map_err(|e| JobError::Backend(e.to_string()))?;
        Ok(Some(link.group(tree, false)))
    }

    pub(crate) fn link(&self) -> ServerLink {
        ServerLink {
            shared: self.handle.shared.clone(),
        }
    }

    /// Lowers a canvas with this server's reply address and routes (a task
    /// without a queue goes where its route, or the server's queue, says);
    /// a chord on a backend without a chord join is refused here.
    fn plan(
        &self,
        lower: impl FnOnce(&PlanContext<'_>) -> Result<Plan, celeriac_core::canvas::CanvasError>,
    ) -> Result<Plan, JobError> {
        let core = &self.handle;
        let route = |name: &str| {
            core.routes.queue_for(name).map(str::to_string).or_else(|| {
                (core.queue != celeriac_core::message::DEFAULT_QUEUE).then(|| core.queue.clone())
            })
        };
        let ctx = PlanContext::new(core.shared.oid.clone()).route(&route);
        let plan = lower(&ctx).map_err(|e| {
            tracing::warn!(error = %e, "canvas not sent");
            e
        });
        let plan = plan.map_err(|e| match e {
            celeriac_core::canvas::CanvasError::InvalidArguments(m) => {
                JobError::Task(celeriac_core::TaskError::invalid_arguments(m))
            }
            other => JobError::Unsupported(other.to_string()),
        })?;
        if plan.has_chord() && core.shared.backend.chord_join().is_none() {
            let e = no_chord_join(&core.shared);
            tracing::warn!(error = %e, "canvas not sent");
            return Err(e);
        }
        Ok(plan)
    }

    fn enqueue(&self, actions: Vec<Action>, watched: Vec<(Arc<JobState>, ResultNode)>) {
        let h = &self.handle;
        if h.destroyed.load(std::sync::atomic::Ordering::SeqCst) {
            for (state, _) in watched {
                h.shared.finish(state, JobEnd::Error(JobError::Destroyed));
            }
            return;
        }
        let work = PlanWork { actions, watched };
        if let Err(returned) = h.publish.send(Outbound::Plan(work))
            && let Outbound::Plan(work) = returned.0
        {
            for (state, _) in work.watched {
                h.shared.finish(state, JobEnd::Error(JobError::Destroyed));
            }
        }
    }
}
