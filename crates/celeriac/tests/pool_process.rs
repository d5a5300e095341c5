//! The process pool, end to end: children are re-executions of this test
//! binary, which is why it has its own `main` (`harness = false`) that
//! calls `celeriac::init()` first, as every program using the pool must.

use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use celeriac::{
    Args, Call, Outcome, PoolKind, ProcessJob, ProcessPool, Server, TaskContext, TaskError,
    TaskErrorKind, task,
};
use serde_json::{Value, json};

/// Loops until its soft time limit cancels it, then returns early.
#[task(name = "test.cooperative")]
fn cooperative(ctx: &TaskContext) -> Result<String, TaskError> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ctx.is_cancelled() {
            return Ok(format!(
                "stopped early after {:.1}s",
                start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok("ran to the end".into())
}

/// Like `cooperative`, but uses `check()?`, so it ends as a failure.
#[task(name = "test.checking")]
fn checking(ctx: &TaskContext) -> Result<(), TaskError> {
    loop {
        ctx.check()?;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Crashes its process the first time it sees `marker` missing (creating
/// it), succeeds the next time: with reject_on_worker_lost it is run again.
#[task(name = "test.crash_once", reject_on_worker_lost = true)]
fn crash_once(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"crashed").unwrap();
        std::process::abort();
    }
    "second run".into()
}

/// Runs on the process pool whatever the worker's default pool is.
#[task(name = "test.isolated", pool = "processes")]
fn isolated() -> u32 {
    std::process::id()
}

/// Aborts its process when `n == bad`, else returns `n`.
#[task(name = "test.crash_if")]
fn crash_if(n: u64, bad: u64) -> u64 {
    if n == bad {
        std::process::abort();
    }
    n
}

/// Appends a line to `dir/name`; blocks on the first run, returns on later
/// ones. Acked early: a worker killed while it runs loses it.
#[task(name = "test.mark_early", acks_late = false)]
fn mark_early(dir: String) -> String {
    mark(&dir, "early")
}

/// The same, acked late (the default): redelivered after a worker dies.
#[task(name = "test.mark_late")]
fn mark_late(dir: String) -> String {
    mark(&dir, "late")
}

fn mark(dir: &str, name: &str) -> String {
    use std::io::Write;
    let path = std::path::Path::new(dir).join(name);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "run").unwrap();
    drop(f);
    if runs(dir, name) == 1 {
        std::thread::sleep(Duration::from_secs(120));
    }
    "ran again".into()
}

fn runs(dir: &str, name: &str) -> usize {
    std::fs::read_to_string(std::path::Path::new(dir).join(name))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The pid of the child running it.
#[task(name = "test.pid")]
fn pid() -> u32 {
    std::process::id()
}

/// `(name, fn)` pairs for the little runner in `main`.
macro_rules! tests {
    ($($t:ident),* $(,)?) => {
        &[$((stringify!($t), $t as fn())),*]
    };
}

fn main() {
    celeriac::init();
    match std::env::var("POOL_TEST_ROLE").as_deref() {
        Ok("parent") => parent_role(),
        Ok("worker") => worker_role(),
        _ => {}
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let tests: &[(&str, fn())] = tests![
        a_crash_fails_one_task_and_the_pool_heals,
        kill_9_mid_task_fails_it_and_the_pool_heals,
        hard_limit_kills_and_reports_in_time,
        soft_limit_is_observed_by_the_task,
        memory_limit_recycles_after_the_task,
        max_tasks_per_child_recycles,
        resize_2_4_1_under_load_loses_nothing,
        panics_and_unknown_tasks_are_typed_failures,
        a_program_without_init_fails_jobs_instead_of_hanging,
        children_die_with_their_parent,
        server_with_processes_heals_after_crashes,
        server_resize_2_4_1_under_load_loses_nothing,
        server_hard_limit_from_the_timelimit_header,
        reject_on_worker_lost_runs_the_task_again,
        a_task_can_ask_for_the_process_pool,
        map_batches_in_order_and_a_crash_fails_only_its_chunk,
        acks_early_tasks_are_lost_with_their_worker_late_ones_are_not,
        revoke_terminate_kills_the_running_task,
    ];
    let mut failed = 0;
    let mut ran = 0;
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let ok = std::panic::catch_unwind(test).is_ok();
        println!(
            "test {name} ... {} ({:.2}s)",
            if ok { "ok" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        if !ok {
            failed += 1;
        }
    }
    println!("\ntest result: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(101);
    }
}

fn pool(n: usize) -> ProcessPool {
    ProcessPool::builder().processes(n).build().unwrap()
}

fn job(name: &str, args: Vec<Value>) -> ProcessJob {
    ProcessJob::call(name, args)
}

fn limited(name: &str, args: Vec<Value>, hard: Option<f64>, soft: Option<f64>) -> ProcessJob {
    let mut ctx = TaskContext::detached(name);
    ctx.set_time_limits(
        hard.map(Duration::from_secs_f64),
        soft.map(Duration::from_secs_f64),
    );
    ProcessJob::new(name, ctx, Args::new(args, Default::default()))
}

/// Runs `n` additions concurrently and checks every result.
fn hundred_succeed(pool: &ProcessPool, n: i64) {
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        pool.submit(job("celeriac.add", vec![json!(i), json!(1)]), move |o| {
            let _ = tx.send((i, o));
        })
        .unwrap();
    }
    drop(tx);
    let mut seen = 0;
    while let Ok((i, o)) = rx.recv_timeout(Duration::from_secs(30)) {
        assert_eq!(o.result.as_ref().ok(), Some(&json!(i + 1)), "{o:?}");
        seen += 1;
    }
    assert_eq!(seen, n, "every task must come back: {:?}", pool.stats());
}

fn kind(o: &Outcome) -> TaskErrorKind {
    o.result.as_ref().unwrap_err().kind()
}

fn a_crash_fails_one_task_and_the_pool_heals() {
    let pool = pool(2);
    let before = pool.run(job("test.pid", vec![]));
    assert!(before.result.is_ok(), "{before:?}");
    let out = pool.run(job("celeriac.crash", vec![]));
    let err = out.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::WorkerLost, "{err}");
    assert_eq!(err.to_exception_info().exc_type, "WorkerLostError");
    assert!(err.message().contains("signal 6 (SIGABRT)"), "{err}");
    hundred_succeed(&pool, 100);
    // The replacement came within 100 ms (well, it serves right away).
    let t = Instant::now();
    while pool.stats().live < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = pool.stats();
    assert_eq!(s.lost, 1, "{s:?}");
    assert_eq!(s.spawned, 3, "{s:?}");
}

fn kill_9_mid_task_fails_it_and_the_pool_heals() {
    let pool = pool(2);
    let (tx, rx) = std::sync::mpsc::channel();
    pool.submit(job("celeriac.sleep", vec![json!(30)]), move |o| {
        let _ = tx.send(o);
    })
    .unwrap();
    // Find the busy child: wait until a task runs, then kill every child
    // that is not answering quickly... simpler: kill the one that ran it.
    let t = Instant::now();
    while pool.stats().running == 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    // Only one child is busy; the idle one answers `test.pid`.
    let idle = pool.run(job("test.pid", vec![])).result.unwrap();
    let busy: Vec<u32> = pool
        .pids()
        .into_iter()
        .filter(|p| json!(p) != idle)
        .collect();
    assert_eq!(busy.len(), 1, "{busy:?}");
    let killed = Command::new("kill")
        .args(["-9", &busy[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
    assert_eq!(kind(&out), TaskErrorKind::WorkerLost);
    assert!(
        out.result
            .unwrap_err()
            .message()
            .contains("signal 9 (SIGKILL)"),
        "Celery's wording"
    );
    assert_eq!(out.pid, Some(busy[0]));
    hundred_succeed(&pool, 100);
}

fn hard_limit_kills_and_reports_in_time() {
    let pool = pool(1);
    let start = Instant::now();
    let out = pool.run(limited("celeriac.sleep", vec![json!(30)], Some(1.0), None));
    let took = start.elapsed();
    let err = out.result.unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::TimedOut, "{err}");
    assert_eq!(err.to_exception_info().exc_type, "TimeLimitExceeded");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(
        took < Duration::from_secs(2),
        "reported within limit + 1 s: {took:?}"
    );
    assert_eq!(pool.stats().timed_out, 1);
    // The pool keeps serving.
    assert_eq!(
        pool.run(job("celeriac.add", vec![json!(1), json!(2)]))
            .result
            .unwrap(),
        json!(3)
    );
}

fn soft_limit_is_observed_by_the_task() {
    let pool = pool(1);
    let start = Instant::now();
    let out = pool.run(limited("test.cooperative", vec![], Some(10.0), Some(0.3)));
    let took = start.elapsed();
    let text = out.result.unwrap();
    assert!(
        text.as_str().unwrap().starts_with("stopped early"),
        "{text}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    // `check()?` turns it into SoftTimeLimitExceeded, as Celery raises it.
    let out = pool.run(limited("test.checking", vec![], None, Some(0.2)));
    let err = out.result.unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::SoftTimedOut);
    assert_eq!(err.to_exception_info().exc_type, "SoftTimeLimitExceeded");
    // The child was not killed for it.
    assert_eq!(pool.stats().spawned, 1);
}

fn memory_limit_recycles_after_the_task() {
    let pool = ProcessPool::builder()
        .processes(1)
        .max_memory_per_child(48 << 20)
        .build()
        .unwrap();
    let first = pool.run(job("test.pid", vec![])).result.unwrap();
    // A small task leaves it alone.
    assert_eq!(pool.run(job("test.pid", vec![])).result.unwrap(), first);
    let big = pool.run(job("celeriac.alloc", vec![json!(96), json!(0)]));
    assert_eq!(big.result.unwrap(), json!(96), "the task itself succeeds");
    assert_eq!(big.pid.map(|p| json!(p)), Some(first.clone()));
    let after = pool.run(job("test.pid", vec![])).result.unwrap();
    assert_ne!(after, first, "the child was recycled after the task");
    assert_eq!(pool.stats().recycled, 1);
}

fn max_tasks_per_child_recycles() {
    let pool = ProcessPool::builder()
        .processes(1)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    let pids: Vec<Value> = (0..9)
        .map(|_| pool.run(job("test.pid", vec![])).result.unwrap())
        .collect();
    for chunk in pids.chunks(3) {
        assert!(chunk.iter().all(|p| *p == chunk[0]), "{pids:?}");
    }
    let distinct: HashSet<String> = pids.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    assert_eq!(pool.stats().recycled, 3);
}

fn resize_2_4_1_under_load_loses_nothing() {
    let pool = pool(2);
    let (tx, rx) = std::sync::mpsc::channel();
    let n = 300;
    for i in 0..n {
        let tx = tx.clone();
        pool.submit(job("celeriac.sleep", vec![json!(0.005)]), move |o| {
            let _ = tx.send((i, o));
        })
        .unwrap();
    }
    drop(tx);
    std::thread::sleep(Duration::from_millis(100));
    pool.set_processes(4).unwrap();
    let t = Instant::now();
    while pool.stats().live < 4 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    pool.set_processes(1).unwrap();
    let mut seen = HashSet::new();
    while let Ok((i, o)) = rx.recv_timeout(Duration::from_secs(30)) {
        assert!(o.result.is_ok(), "{:?}", o.result);
        seen.insert(i);
    }
    assert_eq!(seen.len(), n, "no task lost");
    let t = Instant::now();
    while pool.pids().len() != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", pool.pids());
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = pool.stats();
    assert_eq!(s.lost, 0);
    assert_eq!(s.spawned, 4);
}

fn panics_and_unknown_tasks_are_typed_failures() {
    let pool = pool(1);
    let first = pool.run(job("test.pid", vec![])).result.unwrap();
    let out = pool.run(job("celeriac.panic", vec![json!("boom")]));
    assert_eq!(kind(&out), TaskErrorKind::Panicked);
    let out = pool.run(job("no.such.task", vec![]));
    assert_eq!(kind(&out), TaskErrorKind::NotRegistered);
    let out = pool.run(job("celeriac.add", vec![json!(1)]));
    assert_eq!(kind(&out), TaskErrorKind::InvalidArguments);
    // None of that cost the child.
    assert_eq!(pool.run(job("test.pid", vec![])).result.unwrap(), first);
}

fn a_program_without_init_fails_jobs_instead_of_hanging() {
    // `true` exits at once without ever serving: like a binary whose main
    // does not call celeriac::init().
    let pool = ProcessPool::builder()
        .processes(1)
        .program("true")
        .build()
        .unwrap();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    pool.submit(job("celeriac.add", vec![json!(1), json!(2)]), move |o| {
        let _ = tx.send(o);
    })
    .unwrap();
    let out = rx.recv_timeout(Duration::from_secs(20)).expect("no hang");
    let err = out.result.unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::WorkerLost);
    assert!(err.message().contains("celeriac::init()"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20));
    // Later jobs fail at once too.
    let out = pool.run(job("celeriac.add", vec![json!(1), json!(2)]));
    assert_eq!(kind(&out), TaskErrorKind::WorkerLost);
}

/// Run as a separate process: builds a pool, prints its children's pids and
/// waits to be killed.
fn parent_role() -> ! {
    let pool = pool(2);
    for _ in 0..4 {
        pool.run(job("test.pid", vec![]));
    }
    let t = Instant::now();
    while pool.stats().live < 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pids: Vec<String> = pool.pids().iter().map(u32::to_string).collect();
    println!("{}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(600));
    std::process::exit(0)
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // A zombie (state Z) is dead; only its entry remains.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}

fn children_die_with_their_parent() {
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .env("POOL_TEST_ROLE", "parent")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    assert!(pids.iter().all(|&p| alive(p)));
    parent.kill().unwrap();
    parent.wait().unwrap();
    let t = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "children outlived their parent: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn process_server(workers: usize) -> Server {
    Server::builder()
        .workers(workers)
        .pool(PoolKind::Processes)
        .diagnostic_tasks(true)
        .build()
        .unwrap()
}

fn server_with_processes_heals_after_crashes() {
    let s = process_server(2);
    let err = s
        .submit(Call::<()>::new("celeriac.crash"))
        .wait_timeout(WAIT)
        .unwrap_err();
    let te = err.task_error().expect("a task error");
    assert_eq!(te.kind(), TaskErrorKind::WorkerLost, "{te}");
    assert_eq!(te.exc_type(), "WorkerLostError");
    let jobs: Vec<_> = (0..100i64)
        .map(|i| s.submit(Call::<i64>::new("celeriac.add").arg(i).arg(1)))
        .collect();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.wait_timeout(WAIT).unwrap(), i as i64 + 1);
    }
    // A kill -9 of a busy child: the same.
    let sleeper = s.submit(Call::<f64>::new("celeriac.sleep").arg(30.0));
    // Let it start on a child before probing which child is idle.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let busy = loop {
        let pids = s.worker_pids();
        let idle: Vec<u32> = pids.clone();
        // The sleeping child is the one not answering test.pid at once.
        let answered = s
            .submit(Call::<u32>::new("test.pid"))
            .wait_timeout(WAIT)
            .unwrap();
        if let Some(p) = idle.into_iter().find(|p| *p != answered) {
            break p;
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    };
    Command::new("kill")
        .args(["-9", &busy.to_string()])
        .status()
        .unwrap();
    let err = sleeper.wait_timeout(WAIT).unwrap_err();
    assert_eq!(
        err.task_error().map(|e| e.kind()),
        Some(TaskErrorKind::WorkerLost),
        "{err}"
    );
    let jobs: Vec<_> = (0..100i64)
        .map(|i| s.submit(Call::<i64>::new("celeriac.add").arg(i).arg(2)))
        .collect();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.wait_timeout(WAIT).unwrap(), i as i64 + 2);
    }
}

fn server_resize_2_4_1_under_load_loses_nothing() {
    let s = process_server(2);
    let jobs: Vec<_> = (0..300)
        .map(|_| s.submit(Call::<f64>::new("celeriac.sleep").arg(0.005)))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    s.set_workers(4).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.set_workers(1).unwrap();
    for j in &jobs {
        j.wait_timeout(WAIT).unwrap();
    }
    let t = Instant::now();
    while s.worker_pids().len() != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            s.worker_pids()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn server_hard_limit_from_the_timelimit_header() {
    let s = process_server(1);
    let start = Instant::now();
    let err = s
        .submit(
            Call::<f64>::new("celeriac.sleep")
                .arg(30.0)
                .time_limits(Some(1.0), None),
        )
        .wait_timeout(WAIT)
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        err.task_error().map(|e| e.kind()),
        Some(TaskErrorKind::TimedOut),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(2),
        "within limit + 1 s: {took:?}"
    );
    // Soft limit through the header, on the same pool.
    let text = s
        .submit(Call::<String>::new("test.cooperative").time_limits(Some(10.0), Some(0.3)))
        .wait_timeout(WAIT)
        .unwrap();
    assert!(text.starts_with("stopped early"), "{text}");
}

fn reject_on_worker_lost_runs_the_task_again() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("crashed").display().to_string();
    let s = process_server(1);
    let out = s
        .submit(Call::<String>::new("test.crash_once").arg(&marker))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(out, "second run");
    assert!(std::path::Path::new(&marker).exists(), "it did crash once");
}

fn a_task_can_ask_for_the_process_pool() {
    // A thread-pool server still runs test.isolated in a child process.
    let s = Server::builder().workers(1).build().unwrap();
    let pid = s
        .submit(Call::<u32>::new("test.isolated"))
        .wait_timeout(WAIT)
        .unwrap();
    assert_ne!(pid, std::process::id());
    let here = s
        .submit(Call::<u32>::new("test.pid"))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(here, std::process::id(), "other tasks stay on threads");
}

fn map_batches_in_order_and_a_crash_fails_only_its_chunk() {
    let pool = pool(2);
    let items: Vec<Args> = (0..10_000i64)
        .map(|i| Args::new(vec![json!(i), json!(1)], Default::default()))
        .collect();
    let out = pool.map("celeriac.add", items, 0);
    assert_eq!(out.len(), 10_000);
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &json!(i as i64 + 1));
    }
    // Chunks of 10: item 55 kills its child, so items 50..60 are lost with
    // it and everything else comes back.
    let items: Vec<Args> = (0..100u64)
        .map(|i| Args::new(vec![json!(i), json!(55)], Default::default()))
        .collect();
    let out = pool.map("test.crash_if", items, 10);
    for (i, r) in out.iter().enumerate() {
        if (50..60).contains(&i) {
            assert_eq!(r.as_ref().unwrap_err().kind(), TaskErrorKind::WorkerLost);
        } else {
            assert_eq!(r.as_ref().unwrap(), &json!(i));
        }
    }
    assert_eq!(pool.stats().lost, 1);
}

/// Run as a separate process: a thread-pool worker on `POOL_TEST_BROKER`.
fn worker_role() -> ! {
    let url = std::env::var("POOL_TEST_BROKER").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let registry = celeriac::Registry::linked(false).unwrap();
        let worker = celeriac::Worker::builder(
            celeriac::open_broker(&url).unwrap(),
            celeriac::open_backend(&url).unwrap(),
            std::sync::Arc::new(registry),
        )
        .concurrency(2)
        .build()
        .unwrap();
        worker.run().await;
    });
    std::process::exit(0)
}

fn acks_early_tasks_are_lost_with_their_worker_late_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let url = format!("sqlite://{d}/broker.db?lease=1");
    let start_worker = || {
        Command::new(std::env::current_exe().unwrap())
            .env("POOL_TEST_ROLE", "worker")
            .env("POOL_TEST_BROKER", &url)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = celeriac::open_broker(&url).unwrap();
    let backend = celeriac::open_backend(&url).unwrap();
    let late = Call::<String>::new("test.mark_late")
        .arg(&d)
        .to_message()
        .unwrap();
    let early = Call::<String>::new("test.mark_early")
        .arg(&d)
        .to_message()
        .unwrap();
    rt.block_on(async {
        for m in [&late, &early] {
            broker
                .publish(celeriac::Outgoing::from_message(m).unwrap())
                .await
                .unwrap();
        }
    });
    let mut first = start_worker();
    let t = Instant::now();
    while runs(&d, "early") < 1 || runs(&d, "late") < 1 {
        assert!(t.elapsed() < Duration::from_secs(20), "tasks did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = start_worker();
    let t = Instant::now();
    let done = loop {
        let r = rt.block_on(backend.get(late.id())).unwrap();
        if let Some(m) = r.filter(|m| m.status.is_ready()) {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the late task never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done.result, json!("ran again"));
    // Give the early one every chance to come back too: it must not.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&d, "late"), 2);
    assert_eq!(
        runs(&d, "early"),
        1,
        "an early-acked task is not redelivered"
    );
    assert!(
        rt.block_on(backend.get(early.id()))
            .unwrap()
            .is_none_or(|m| !m.status.is_ready())
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

fn revoke_terminate_kills_the_running_task() {
    let s = process_server(1);
    let job = s.submit(Call::<f64>::new("celeriac.sleep").arg(60.0));
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    s.revoke_terminate(&[job.id()]).unwrap();
    let err = job.wait_timeout(WAIT).unwrap_err();
    assert_eq!(
        err.task_error().map(|e| e.kind()),
        Some(TaskErrorKind::Revoked),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The pool serves on.
    assert_eq!(
        s.submit(Call::<i64>::new("celeriac.add").arg(2).arg(2))
            .wait_timeout(WAIT)
            .unwrap(),
        4
    );
    // On the pool itself, a queued job is terminated before it starts.
    let pool = pool(1);
    let (tx, rx) = std::sync::mpsc::channel();
    for n in [30.0, 30.0] {
        let tx = tx.clone();
        let j = job_with_id("celeriac.sleep", n);
        let id = j.0.clone();
        pool.submit(j.1, move |o| {
            let _ = tx.send((id, o));
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(pool.terminate("queued-1"), "the queued job");
    assert!(pool.terminate("queued-0"), "the running job");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (id, o) = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
        assert_eq!(kind(&o), TaskErrorKind::Revoked, "{id}");
        seen.push(id);
    }
    seen.sort();
    assert_eq!(seen, ["queued-0", "queued-1"]);
    assert_eq!(pool.stats().terminated, 1);

    // With prefetch, a quick task's result is back before the next task
    // runs, so a long task right after a quick one is seen running and a
    // terminate finds it (a child that held the quick result until the
    // long task ended would hide it from the terminate for its whole run).
    let pool = ProcessPool::builder()
        .processes(1)
        .prefetch(8)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut ids = Vec::new();
    for n in [0.0, 30.0] {
        let tx = tx.clone();
        let j = job_with_id("celeriac.sleep", n);
        ids.push(j.0.clone());
        let id = j.0.clone();
        pool.submit(j.1, move |o| {
            let _ = tx.send((id, o));
        })
        .unwrap();
    }
    let (quick, _) = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
    assert_eq!(quick, ids[0], "the quick task ends first");
    std::thread::sleep(Duration::from_millis(300));
    assert!(pool.terminate(&ids[1]), "the long task is seen running");
    let (id, o) = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
    assert_eq!(id, ids[1]);
    assert_eq!(kind(&o), TaskErrorKind::Revoked);
}

/// A sleep job whose task id is `queued-N`, N counting up.
fn job_with_id(name: &str, seconds: f64) -> (String, ProcessJob) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!(
        "queued-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let msg = Call::<f64>::new(name.to_string())
        .arg(seconds)
        .task_id(&id)
        .to_message()
        .unwrap();
    let ctx = TaskContext::from_message(&msg, "test");
    (
        id,
        ProcessJob::new(name, ctx, Args::new(msg.args.clone(), msg.kwargs.clone())),
    )
}
