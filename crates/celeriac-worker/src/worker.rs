//! The worker handle ([`Worker`]), its shared state ([`Inner`]), the claim
//! loop ([`Worker::run`]) and the handler that takes one message through
//! the lifecycle: admit → wait for a slot → execute → decide → settle.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::escape::Escaped;
use celeriac_core::time::unix_now;
use celeriac_core::{Args, Broker, Delivery, PoolKind, Registry, ResultBackend, TaskContext};

use crate::admit::{self, Admission, LocalRates};
use crate::config::{Config, Parts, WorkerBuilder};
use crate::control::{self, ControlState, Waiting};
use crate::decide::{self, Decision, RunFacts};
use crate::execute::Executors;
use crate::line::{Reservations, Slot};
use crate::observe::{Notifier, TaskEvent, WorkerStats};
use crate::settle::{self, Batches, Held, Ledger};
use crate::{WorkerError, chores};

/// How long one claim waits for work before the loop claims again; it
/// also bounds how long a shutdown waits for the claim in flight.
const CLAIM_WAIT: Duration = Duration::from_millis(250);

/// What every part of the worker shares; each field belongs to the module
/// named beside it.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) backend: Arc<dyn ResultBackend>,
    pub(crate) registry: Arc<Registry>,
    /// `celery_tasks`: Celery's built-in canvas tasks (`celery.map`, ...),
    /// found when `registry` has no task of that name.
    pub(crate) celery_tasks: Registry,
    /// `config`: what the builder said.
    pub(crate) config: Config,
    /// `line`: execution slots, reservations, the line, shutdown.
    pub(crate) slots: Reservations,
    /// `execute`: the executors and what runs on them.
    pub(crate) executors: Executors,
    /// `settle`: held messages.
    pub(crate) ledger: Ledger,
    /// `settle`: finished tasks waiting for a batch.
    pub(crate) batches: Batches,
    /// `control`: reserved messages and revokes that came meanwhile.
    pub(crate) waiting: Waiting,
    /// `control`: what remote control changes (queues, limits, ...) and
    /// the requests it shows.
    pub(crate) control: ControlState,
    /// `admit`: per-worker rate-limit buckets.
    pub(crate) rates: LocalRates,
    /// `observe`: counters and observers.
    pub(crate) notify: Notifier,
    /// `events`: Celery's worker and task events (also an observer).
    pub(crate) events: Arc<crate::events::Events>,
    /// `local`: revokes of jobs on the local lane.
    pub(crate) local_revokes: crate::local::LocalRevokes,
    /// `local`: whether the configuration lets the local lane run jobs as
    /// the broker path would (no observers, `track_started`,
    /// `result_extended` or result limit: each needs the message).
    pub(crate) lane_ok: bool,
}

/// A worker: consumes task messages and runs them. Cheap to clone; clones
/// share the worker.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use celeriac_core::{Call, Outgoing, Registry, ResultBackend, Transport};
/// use celeriac_embedded::{MemoryBackend, MemoryBroker};
/// use celeriac_worker::Worker;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let broker = Arc::new(MemoryBroker::new());
/// let backend = Arc::new(MemoryBackend::new());
/// let mut registry = Registry::new();
/// registry.register_fn("tasks.mul", |_, args| {
///     let mut b = args.bind("mul", &["x", "y"])?;
///     Ok(serde_json::json!(b.take::<i64>(0)? * b.take::<i64>(1)?))
/// }).unwrap();
/// let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
///     .concurrency(2)
///     .build()
///     .unwrap();
/// let running = tokio::spawn({ let w = worker.clone(); async move { w.run().await } });
///
/// let msg = Call::<i64>::new("tasks.mul").arg(6).arg(7).to_message().unwrap();
/// let watch = backend.watch(msg.id()).await.unwrap();
/// broker.publish(Outgoing::from_message(&msg).unwrap()).await.unwrap();
/// assert_eq!(watch.await.unwrap().result, 42);
///
/// worker.shutdown();
/// running.await.unwrap();
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl Worker {
    /// Starts configuring a worker for a broker, a result backend and the
    /// tasks it can run.
    pub fn builder(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Arc<Registry>,
    ) -> WorkerBuilder {
        WorkerBuilder::new(broker, backend, registry)
    }

    pub(crate) fn from_parts(p: Parts) -> Result<Worker, WorkerError> {
        let executors = Executors::new(p.kind, p.threads, p.procs, p.concurrency)?;
        let control = ControlState::new(&p.config.queues, p.config.autoscale);
        let events =
            crate::events::Events::new(&p.config.nodename, p.config.events_enabled.clone());
        let lane_ok = p.observers.is_empty()
            && !p.config.track_started
            && !p.config.result_extended
            && p.config.max_result.is_none();
        let mut observers = p.observers;
        observers.push(events.clone());
        Ok(Worker {
            inner: Arc::new(Inner {
                celery_tasks: crate::celery_tasks::registry(&p.registry, &p.backend),
                broker: p.broker,
                backend: p.backend,
                registry: p.registry,
                config: p.config,
                slots: Reservations::new(p.concurrency, p.prefetch),
                executors,
                ledger: Ledger::default(),
                batches: Batches::default(),
                waiting: Waiting::default(),
                control,
                rates: LocalRates::default(),
                notify: Notifier::new(observers),
                events,
                local_revokes: Default::default(),
                lane_ok,
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The node name.
    pub fn nodename(&self) -> &str {
        &self.inner.config.nodename
    }

    /// The queues consumed now (remote control's `add_consumer` and
    /// `cancel_consumer` change them).
    pub fn queues(&self) -> Vec<String> {
        self.inner.control.queues().as_ref().clone()
    }

    /// Whether the worker sends task events: set by
    /// [`WorkerBuilder::events`], flipped by remote control's
    /// `enable_events` and `disable_events`.
    pub fn events_enabled(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.inner.config.events_enabled
    }

    /// Execution slots.
    pub fn concurrency(&self) -> usize {
        self.inner.slots.target()
    }

    /// Resizes the worker while it runs. Running tasks finish; no task is
    /// lost. `n` must be at least 1.
    pub fn set_concurrency(&self, n: usize) -> Result<(), WorkerError> {
        if n == 0 {
            return Err(WorkerError::ZeroConcurrency);
        }
        let inner = &self.inner;
        inner.executors.resize(n)?;
        let old = inner.slots.set_target(n);
        if old != n {
            tracing::info!(node = %inner.config.nodename, from = old, to = n, "concurrency changed");
        }
        Ok(())
    }

    /// The pool kind running blocking tasks.
    pub fn pool_kind(&self) -> PoolKind {
        self.inner.executors.kind()
    }

    /// Pids of the process pool's children (empty without one).
    pub fn child_pids(&self) -> Vec<u32> {
        self.inner.executors.child_pids()
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.inner.notify.stats(self.inner.slots.executing())
    }

    /// Asks the worker to stop (warm): it stops claiming, finishes the
    /// tasks it is running, stores their results and acks them, puts the
    /// messages it reserved but had not started back on their queue, then
    /// [`Worker::run`] returns.
    pub fn shutdown(&self) {
        self.inner.slots.stop();
    }

    /// Whether shutdown was requested.
    pub fn is_stopping(&self) -> bool {
        self.inner.slots.is_stopping()
    }

    /// Consumes and runs tasks until [`Worker::shutdown`] is called. Must
    /// run inside a tokio runtime.
    pub async fn run(&self) {
        let inner = &self.inner;
        let control = control::start(self.clone()).await;
        tracing::info!(node = %inner.config.nodename, queues = ?inner.control.queues(), concurrency = self.concurrency(),
            broker = %inner.broker.url(), "worker ready");
        let mut chores = vec![
            control,
            tokio::spawn(chores::heartbeat(inner.clone())),
            tokio::spawn(chores::renew(inner.clone())),
            tokio::spawn(control::watch(inner.clone())),
            tokio::spawn(crate::events::run(inner.clone())),
        ];
        if inner.config.autoscale.is_some() {
            chores.push(tokio::spawn(chores::autoscale(self.clone())));
        }
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        // The queue of the last message claimed: the next claim starts
        // with the queue after it, so that a busy queue does not starve
        // the others (kombu's round-robin cycle on Redis).
        let mut last_queue: Option<String> = None;
        while !self.is_stopping() {
            // Reserve up to `prefetch` messages per slot.
            inner
                .broker
                .set_prefetch(inner.slots.target() * inner.slots.prefetch());
            let free = inner.slots.room().await;
            if free == 0 {
                break;
            }
            // Remote control may have cancelled every queue.
            let queues = serve_order(inner.control.queues(), last_queue.as_deref());
            if queues.is_empty() {
                inner.slots.sleep_unless_stopping(CLAIM_WAIT).await;
                continue;
            }
            // A claim is never cancelled: the broker may already have
            // recorded it, and a dropped claim would strand its messages
            // until their lease lapses. It returns within CLAIM_WAIT.
            let claimed = inner
                .broker
                .claim(&inner.config.nodename, &queues, free, CLAIM_WAIT)
                .await;
            match claimed {
                Ok(deliveries) if self.is_stopping() => {
                    // Shutting down: give back what was just claimed
                    // instead of starting it.
                    for d in deliveries {
                        settle::give_back(inner, &d).await;
                    }
                    break;
                }
                Ok(deliveries) => {
                    if std::mem::take(&mut failing) {
                        crate::task_metrics::broker_reconnected();
                    }
                    backoff = Duration::from_millis(100);
                    if let Some(d) = deliveries.last() {
                        last_queue = Some(d.queue.clone());
                    }
                    for d in deliveries {
                        self.spawn_handler(d);
                    }
                }
                Err(e) => {
                    failing = true;
                    crate::task_metrics::broker_error("claim");
                    tracing::error!(error = %e, retry_in = ?backoff, "claim failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Warm shutdown: wait until every held message is settled (its
        // result stored and the message acked or given back).
        inner.slots.until(|| inner.ledger.open() == 0).await;
        for chore in chores {
            chore.abort();
        }
        inner.executors.shutdown().await;
        crate::events::offline(inner).await;
        if let Err(e) = inner.broker.node_gone(&inner.config.nodename).await {
            tracing::warn!(error = %e, "could not remove node record");
        }
        tracing::info!(node = %inner.config.nodename, "worker stopped");
    }

    /// Takes a message just claimed through its lifecycle on a task of its
    /// own. Its reservation and its place in line are taken here, so that
    /// messages start in the order they were claimed; it is held (its lease
    /// renewed) from here until it is settled, its wait for a slot
    /// included.
    fn spawn_handler(&self, d: Delivery) {
        let inner = self.inner.clone();
        let tag = d.tag.clone();
        let held = inner.ledger.hold(d);
        let reserved = inner.slots.reserve();
        // The task's span: its id and name are recorded once the message
        // is decoded (`name_span`).
        let span = tracing::info_span!(
            "task",
            task_id = tracing::field::Empty,
            task = tracing::field::Empty
        );
        let handler = async move {
            {
                let mut slot = reserved.into_slot(&inner.slots);
                handle(&inner, held, &mut slot).await;
            }
            inner.ledger.close(&tag);
            inner.slots.wake();
        };
        tokio::spawn(tracing::Instrument::instrument(handler, span));
    }
}

/// One message's lifecycle.
async fn handle(inner: &Arc<Inner>, mut held: Held, slot: &mut Slot<'_>) {
    let admitted = match admit::admit(inner, held.delivery()).await {
        Admission::Run(a) => a,
        Admission::Skip { msg, disposition } => {
            slot.release();
            settle::apply(inner, held, msg.as_ref(), *disposition).await;
            return;
        }
    };
    let admit::Admitted { msg, task } = admitted;
    let id = msg.id();
    let name = msg.task();
    let options = *task.options();
    let tracked = inner.control.requests.track(&msg, held.delivery());
    let limit = match inner.control.rate_limit(name) {
        Some(set_by_remote) => set_by_remote,
        None => inner
            .config
            .rate_limits
            .get(name)
            .copied()
            .or(options.rate()),
    };
    if let Some(limit) = limit
        && let Some(disposition) = admit::rate(inner, name, limit, slot).await
    {
        slot.release();
        settle::apply(inner, held, Some(&msg), disposition).await;
        return;
    }
    // Wait for an execution slot: the message may have been reserved ahead
    // of one (prefetch). A revoke that arrives meanwhile is honoured, and a
    // worker shutting down gives waiting messages back.
    inner.waiting.enter(id);
    let started = slot.start().await;
    let revoked_meanwhile = inner.waiting.leave(id);
    if !started {
        let back = decide::Disposition::Requeue {
            not_before: None,
            why: "giving a reserved message back at shutdown",
        };
        settle::apply(inner, held, Some(&msg), back).await;
        return;
    }
    let ev = TaskEvent {
        message: &msg,
        delivery: held.delivery(),
        hostname: &inner.config.nodename,
    };
    if let Some(disposition) = admit::after_wait(inner, &ev, revoked_meanwhile) {
        slot.release();
        settle::apply(inner, held, Some(&msg), disposition).await;
        return;
    }
    let mut ctx = TaskContext::from_message(&msg, &inner.config.nodename);
    set_time_limits(inner, &mut ctx);
    let subtasks = crate::subtasks::TaskSubtasks::new(inner);
    ctx.set_subtasks(subtasks.clone());
    let states = crate::states::TaskStateSink::new(inner, &msg, &held.delivery().queue);
    ctx.set_states(states.clone());
    let args = Args::new(msg.args.clone(), msg.kwargs.clone());
    // acks_late = false (Celery's default, not ours): ack as the task
    // starts; a crash from here on loses it, as the task asked.
    if !options.is_acks_late() {
        settle::ack_early(inner, &mut held).await;
        tracked.acked();
    }
    let ev = TaskEvent {
        message: &msg,
        delivery: held.delivery(),
        hostname: &inner.config.nodename,
    };
    if (inner.config.track_started || options.tracks_started())
        && msg.headers.ignore_result != Some(true)
    {
        states.started(&inner.config.nodename).await;
    }
    inner.notify.started(&ev);
    tracked.started();
    let ran = inner
        .executors
        .run(&task, ctx, args, inner.slots.target())
        .await;
    subtasks.finish();
    slot.release();
    if let Some(ran) = &ran {
        inner.slots.record_runtime(ran.runtime);
    }
    let facts = RunFacts {
        msg: &msg,
        queue: &ev.delivery.queue,
        options: &options,
        acked_early: held.is_acked(),
        meta: inner.config.meta_facts(),
        max_result: inner.config.max_result,
        known: &**inner,
    };
    let mut decision = decide::after_run(facts, ran, random_unit(), unix_now());
    subtasks.add_children(&mut decision);
    report(inner, &ev, &decision);
    // The message's `ignore_result`, or when it has none (Celery's
    // `send_task` sends null), the task's: of the built-ins, only
    // `celery.chord_unlock` ignores its result (Celery 5.7's
    // `get_actual_ignore_result`).
    let ignore_result = msg
        .headers
        .ignore_result
        .unwrap_or(msg.task() == crate::canvas::unlock::CHORD_UNLOCK);
    let disposition = decision.into_disposition(ignore_result);
    settle::apply(inner, held, Some(&msg), disposition).await;
}

/// A task's time limits: its call's, else remote control's for its name,
/// else the worker's.
/// The order in which the next claim serves `queues` (the worker's `-Q`
/// list, in its order): starting with the queue after `last`, the queue
/// the previous claim's last message came from, and wrapping around.
/// Each claim still drains its first queue before it looks at the next,
/// but every queue gets its turn to be first, as in kombu's Redis
/// transport, which rotates the queue that delivered to the back of its
/// cycle. Without a previous claim, or if `last` is no longer consumed,
/// the list keeps its order.
fn serve_order(queues: Arc<Vec<String>>, last: Option<&str>) -> Arc<Vec<String>> {
    match last.and_then(|l| queues.iter().position(|q| q == l)) {
        Some(i) if i + 1 < queues.len() => {
            let mut turned = queues.to_vec();
            turned.rotate_left(i + 1);
            Arc::new(turned)
        }
        _ => queues,
    }
}

pub(crate) fn set_time_limits(inner: &Inner, ctx: &mut TaskContext) {
    let (remote_soft, remote_hard) = inner.control.time_limits(ctx.name()).unwrap_or_default();
    let hard = ctx.time_limit().or(remote_hard).or(inner.config.time_limit);
    let soft = ctx
        .soft_time_limit()
        .or(remote_soft)
        .or(inner.config.soft_time_limit);
    ctx.set_time_limits(hard, soft);
}

/// Logs a decision and tells the counters and observers (a retry is told
/// once it is published).
fn report(inner: &Inner, ev: &TaskEvent<'_>, decision: &Decision) {
    let (id, name) = (ev.message.id(), ev.message.task());
    match decision {
        Decision::Succeeded {
            result,
            runtime,
            canvas,
        } => {
            canvas_problems(id, canvas);
            inner.notify.succeeded(ev, &result.result, *runtime);
            tracing::debug!(task_id = %Escaped(id), task = %Escaped(name), runtime = ?runtime, "task succeeded");
        }
        Decision::Failed {
            error,
            gave_up,
            runtime,
            canvas,
            ..
        } => {
            canvas_problems(id, canvas);
            inner.notify.failed(ev, error, Some(*runtime));
            if *gave_up {
                let retries = ev.message.headers.retries;
                tracing::warn!(task_id = %Escaped(id), task = %Escaped(name), retries, "task gave up: max retries exceeded");
            } else {
                tracing::warn!(task_id = %Escaped(id), task = %Escaped(name), error = %Escaped(error), "task failed");
            }
        }
        Decision::GiveBack { lost: Some(error) } => {
            tracing::warn!(task_id = %Escaped(id), task = %Escaped(name), error = %Escaped(error), "worker lost; requeueing (reject_on_worker_lost)");
        }
        Decision::GiveBack { lost: None } | Decision::Retry(_) => {}
    }
}

/// Records the task's id and name on its span (from the message, escaped).
pub(crate) fn name_span(msg: &celeriac_core::Message) {
    let span = tracing::Span::current();
    span.record("task_id", tracing::field::display(Escaped(msg.id())));
    span.record("task", tracing::field::display(Escaped(msg.task())));
}

/// Logs the signatures of a task's canvas that cannot be sent on.
fn canvas_problems(id: &str, canvas: &crate::canvas::Continuation) {
    for problem in &canvas.problems {
        tracing::error!(task_id = %Escaped(id), problem = %Escaped(problem), "a canvas signature is not sent on");
    }
}

/// A number in `[0, 1)` for retry jitter.
pub(crate) fn random_unit() -> f64 {
    let bits = (uuid::Uuid::new_v4().as_u128() >> 75) as u64; // 53 random bits
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::serve_order;

    fn qs(names: &[&str]) -> Arc<Vec<String>> {
        Arc::new(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn each_claim_starts_after_the_queue_that_last_delivered() {
        let all = qs(&["a", "b", "c"]);
        assert_eq!(serve_order(all.clone(), None), qs(&["a", "b", "c"]));
        assert_eq!(serve_order(all.clone(), Some("a")), qs(&["b", "c", "a"]));
        assert_eq!(serve_order(all.clone(), Some("b")), qs(&["c", "a", "b"]));
        assert_eq!(serve_order(all.clone(), Some("c")), qs(&["a", "b", "c"]));
        // A queue that is no longer consumed (remote control cancelled it).
        assert_eq!(serve_order(all, Some("gone")), qs(&["a", "b", "c"]));
        assert_eq!(serve_order(qs(&["only"]), Some("only")), qs(&["only"]));
        assert!(serve_order(qs(&[]), Some("a")).is_empty());
    }
}
