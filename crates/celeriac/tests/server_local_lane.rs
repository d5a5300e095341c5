//! The job server's local lane (memory://, threads): jobs handed to the
//! worker's thread pool with no message, and every semantic of the broker
//! path kept: results and errors, callbacks, groups, stats, revoke,
//! terminate, time limits, retries, subtasks, templates, and shutdown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use celeriac::builtins::{echo, fib};
use celeriac::{Call, JobError, Server, TaskContext, TaskError, TaskErrorKind, Template, task};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

static STARTED: AtomicU32 = AtomicU32::new(0);

/// Waits until `STARTED` has counted `n` starts.
fn started(n: u32) {
    while STARTED.load(Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Loops until its context is cancelled (a terminate or the soft time
/// limit), then returns what `check` says.
#[task(name = "lane.until_cancelled")]
fn until_cancelled(ctx: &TaskContext) -> Result<u32, TaskError> {
    STARTED.fetch_add(1, Ordering::SeqCst);
    loop {
        ctx.check()?;
        std::thread::sleep(Duration::from_millis(2));
    }
}

static FLAKY_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Asks for a retry on its first attempt; returns its retry count after.
#[task(name = "lane.retry_once", max_retries = 3)]
fn retry_once(ctx: &TaskContext) -> Result<u32, TaskError> {
    FLAKY_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    if ctx.retries() == 0 {
        return Err(ctx.retry(Duration::from_millis(10)));
    }
    Ok(ctx.retries())
}

#[task(name = "lane.always_retry", max_retries = 1)]
fn always_retry(ctx: &TaskContext) -> Result<(), TaskError> {
    Err(ctx.retry(Duration::from_millis(5)))
}

#[task(name = "lane.square")]
fn square(x: i64) -> i64 {
    x * x
}

/// Submits squares as subtasks and waits for them.
#[task(name = "lane.fan_out")]
fn fan_out(ctx: &TaskContext, n: i64) -> Result<i64, TaskError> {
    let parts = ctx.submit_all((0..n).map(square::call))?;
    Ok(ctx.wait_all(&parts)?.into_iter().sum())
}

/// Counts its start, then sleeps `seconds`.
#[task(name = "lane.nap")]
fn nap(seconds: f64) -> f64 {
    STARTED.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    seconds
}

#[task(name = "lane.boom")]
fn boom() -> i64 {
    panic!("lane boom")
}

/// Blocks until the test lets it go (one at a time, by channel).
#[task(name = "lane.gate")]
fn gate() -> u32 {
    let rx = GATE.lock().unwrap().take().expect("one gate job at a time");
    rx.recv_timeout(WAIT).expect("released");
    1
}

static GATE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);
static GATE_LOCK: Mutex<()> = Mutex::new(());

fn server(workers: usize) -> Server {
    Server::builder()
        .workers(workers)
        .diagnostic_tasks(true)
        .build()
        .unwrap()
}

/// A one-thread server whose only thread is held by a `lane.gate` job
/// until the returned sender is used: jobs submitted meanwhile wait on the
/// lane behind it.
fn behind_a_busy_thread() -> (Server, mpsc::Sender<()>, celeriac::Job<u32>) {
    let (tx, rx) = mpsc::channel();
    *GATE.lock().unwrap() = Some(rx);
    let s = server(1);
    let busy = s.submit(gate::call());
    (s, tx, busy)
}

#[test]
fn jobs_take_the_lane_and_come_back_typed() {
    let s = server(2);
    let jobs: Vec<_> = (0..200).map(|i| s.submit(echo::call(json!(i)))).collect();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.wait_timeout(WAIT).unwrap(), json!(i));
    }
    assert_eq!(s.submit(fib::call(20)).wait_timeout(WAIT).unwrap(), 6765);
    let stats = s.stats();
    assert_eq!(stats.local_lane, 201, "every job took the lane");
    assert_eq!(stats.nodes[0].node, "local");
    assert_eq!(stats.nodes[0].jobs, 201);
    assert_eq!(stats.pending, 0);
    let meta = jobs[3].meta().expect("a result document");
    assert_eq!(meta.name.as_deref(), Some("celeriac.echo"));
    assert_eq!(meta.queue.as_deref(), Some("celery"));
    assert!(meta.runtime.is_some() && meta.date_done.is_some());
}

#[test]
fn a_server_without_the_lane_sends_every_job_through_the_broker() {
    let s = Server::builder()
        .workers(2)
        .local_lane(false)
        .build()
        .unwrap();
    let j = s.submit(fib::call(10));
    assert_eq!(j.wait_timeout(WAIT).unwrap(), 55);
    assert_eq!(s.stats().local_lane, 0);
    assert_eq!(s.stats().nodes[0].jobs, 1);
}

#[test]
fn what_the_lane_cannot_do_alike_goes_through_the_broker() {
    let s = server(2);
    let later = s.submit(fib::call(10).countdown(Duration::from_millis(20)));
    let expiring = s.submit(fib::call(11).expires_in(Duration::from_secs(60)));
    let keyed = s.submit(fib::call(12).idempotency_key("k-1"));
    assert_eq!(later.wait_timeout(WAIT).unwrap(), 55);
    assert_eq!(expiring.wait_timeout(WAIT).unwrap(), 89);
    assert_eq!(keyed.wait_timeout(WAIT).unwrap(), 144);
    assert_eq!(s.stats().local_lane, 0);
    assert_eq!(s.stats().nodes[0].jobs, 3);
}

#[test]
fn errors_and_panics_are_typed_on_the_lane_and_the_pool_survives() {
    let s = server(2);
    let err = s
        .submit(Call::<i64>::new("celeriac.fail").arg("nope"))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.task_error().unwrap().kind(), TaskErrorKind::Failed);
    let err = s.submit(boom::call()).wait_timeout(WAIT).unwrap_err();
    let te = err.task_error().expect("a task error");
    assert_eq!(te.kind(), TaskErrorKind::Panicked);
    assert!(te.message().contains("lane boom"), "{te}");
    let bad = s
        .submit(Call::<i64>::new("lane.square").arg("not a number"))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert!(bad.task_error().is_some(), "{bad}");
    assert_eq!(s.submit(square::call(7)).wait_timeout(WAIT).unwrap(), 49);
    assert_eq!(s.stats().local_lane, 4);
}

#[test]
fn callbacks_groups_and_templates_on_the_lane() {
    let s = server(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let jobs: Vec<_> = (0..50)
        .map(|i| {
            let seen = seen.clone();
            s.job(square::call(i))
                .group("squares")
                .callback(move |r| seen.lock().unwrap().push(r.unwrap()))
                .submit()
        })
        .collect();
    s.wait_group("squares");
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..50).map(|i| i * i).collect::<Vec<_>>());
    assert!(jobs.iter().all(|j| j.ready()), "wait_group returned early");

    let total = Arc::new(AtomicU32::new(0));
    let t = total.clone();
    let template = Template::<square>::new(&s).group("tpl").callback(move |r| {
        t.fetch_add(r.unwrap() as u32, Ordering::SeqCst);
    });
    for i in 0..10 {
        template.submit((i,));
    }
    s.wait();
    assert_eq!(
        total.load(Ordering::SeqCst),
        (0..10).map(|i| i * i).sum::<u32>()
    );
    assert_eq!(s.stats().local_lane, 60);
    assert_eq!(s.stats().pending, 0);
}

#[test]
fn a_revoked_job_waiting_on_the_lane_ends_revoked() {
    let _one = GATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (s, release, busy) = behind_a_busy_thread();
    let doomed = s.submit(square::call(3));
    let kept = s.submit(square::call(4));
    s.revoke(&[doomed.id()]).unwrap();
    release.send(()).unwrap();
    assert_eq!(busy.wait_timeout(WAIT).unwrap(), 1);
    let err = doomed.wait_timeout(WAIT).unwrap_err();
    let te = err.task_error().expect("a task error");
    assert_eq!(te.kind(), TaskErrorKind::Revoked, "{te}");
    assert_eq!(te.exc_type(), "TaskRevokedError");
    assert_eq!(kept.wait_timeout(WAIT).unwrap(), 16);
    assert_eq!(s.stats().local_lane, 3);
    assert_eq!(
        s.stats().nodes[0].jobs,
        3,
        "the revoked job counts, as REVOKED"
    );
}

#[test]
fn a_revoke_before_the_submit_holds_on_the_lane() {
    let s = server(2);
    s.revoke(&["lane-revoked-early"]).unwrap();
    let err = s
        .submit(square::call(5).task_id("lane-revoked-early"))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.task_error().unwrap().kind(), TaskErrorKind::Revoked);
    assert_eq!(s.stats().local_lane, 1);
}

#[test]
fn terminate_and_the_soft_time_limit_cancel_a_running_job_on_the_lane() {
    let s = server(2);
    let _one = GATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = STARTED.load(Ordering::SeqCst);
    let running = s.submit(until_cancelled::call());
    // Until it runs, a terminate would only revoke it: wait for it to start.
    started(before + 1);
    s.revoke_terminate(&[running.id()]).unwrap();
    let err = running.wait_timeout(WAIT).unwrap_err();
    assert_eq!(
        err.task_error().unwrap().kind(),
        TaskErrorKind::SoftTimedOut,
        "{err}"
    );

    let limited = s.submit(until_cancelled::call().time_limits(None, Some(0.05)));
    let err = limited.wait_timeout(WAIT).unwrap_err();
    let te = err.task_error().unwrap();
    assert_eq!(te.kind(), TaskErrorKind::SoftTimedOut, "{te}");
    assert_eq!(te.exc_type(), "SoftTimeLimitExceeded");
    assert_eq!(s.stats().local_lane, 2);
}

#[test]
fn a_retry_from_the_lane_goes_on_through_the_broker() {
    let s = server(2);
    let j = s.submit(retry_once::call());
    assert_eq!(j.wait_timeout(WAIT).unwrap(), 1, "the second attempt");
    assert_eq!(FLAKY_ATTEMPTS.load(Ordering::SeqCst), 2);
    let err = s
        .submit(always_retry::call())
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(
        err.task_error().unwrap().exc_type(),
        "MaxRetriesExceededError",
        "{err}"
    );
    assert_eq!(s.stats().local_lane, 2, "first attempts only");
}

#[test]
fn subtasks_from_a_job_on_the_lane_run_and_are_its_children() {
    let s = server(1);
    let j = s.submit(fan_out::call(5));
    assert_eq!(j.wait_timeout(WAIT).unwrap(), 30);
    assert_eq!(j.meta().unwrap().children.len(), 5);
    assert_eq!(s.stats().local_lane, 1);
}

#[test]
fn destroy_finishes_the_running_lane_job_and_fails_the_queued_ones() {
    let _one = GATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = server(1);
    let before = STARTED.load(Ordering::SeqCst);
    let running = s.submit(nap::call(0.2));
    started(before + 1);
    let queued: Vec<_> = (0..5).map(|_| s.submit(nap::call(0.2))).collect();
    s.destroy();
    assert_eq!(running.wait_timeout(WAIT).unwrap(), 0.2);
    for j in &queued {
        assert!(
            matches!(j.wait_timeout(WAIT), Err(JobError::Destroyed)),
            "a queued job ends Destroyed"
        );
    }
    assert!(matches!(
        s.submit(fib::call(3)).wait_timeout(WAIT),
        Err(JobError::Destroyed)
    ));
}
