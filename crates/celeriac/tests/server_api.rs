//! The pp-style Server API end to end: results, errors, panics, callbacks,
//! groups, templates, resizing, nodes, stats and 100k tiny jobs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac::builtins::{add, fib, sleep};
use celeriac::{Call, JobError, Server, TaskErrorKind, Template, task};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

#[task(name = "server_api.divide")]
fn divide(a: i64, b: i64) -> Result<i64, celeriac::TaskError> {
    if b == 0 {
        return Err(celeriac::TaskError::typed(
            "ZeroDivisionError",
            "builtins",
            "division by zero",
        ));
    }
    Ok(a / b)
}

#[task(name = "server_api.count")]
fn count(tag: u64) -> u64 {
    COUNTED.fetch_add(1, Ordering::SeqCst);
    tag
}

static COUNTED: AtomicUsize = AtomicUsize::new(0);

fn server(workers: usize) -> Server {
    Server::builder()
        .workers(workers)
        .diagnostic_tasks(true)
        .build()
        .unwrap()
}

#[test]
fn results_come_back_typed() {
    let s = server(2);
    let sum = s.submit(add::call(2.into(), 3.into()));
    let f = s.submit(fib::call(20));
    assert_eq!(sum.wait_timeout(WAIT).unwrap(), Value::from(5));
    assert_eq!(f.wait_timeout(WAIT).unwrap(), 6765);
    assert!(f.ready());
    assert_eq!(f.try_result().unwrap().unwrap(), 6765);
    // wait() can be called again.
    assert_eq!(f.wait().unwrap(), 6765);
}

#[test]
fn task_errors_reach_wait_with_type_and_message() {
    let s = server(2);
    let err = s.submit(divide::call(1, 0)).wait_timeout(WAIT).unwrap_err();
    let te = err.task_error().expect("a task error");
    assert_eq!(te.kind(), TaskErrorKind::Failed);
    assert_eq!(te.exc_type(), "ZeroDivisionError");
    assert_eq!(te.message(), "division by zero");
    assert_eq!(s.submit(divide::call(9, 3)).wait_timeout(WAIT).unwrap(), 3);

    let fail = s.submit(Call::<()>::new("celeriac.fail").arg("boom"));
    let te = fail
        .wait_timeout(WAIT)
        .unwrap_err()
        .task_error()
        .cloned()
        .unwrap();
    assert_eq!(te.message(), "boom");
}

#[test]
fn panics_are_typed_errors_and_the_pool_survives() {
    let s = server(2);
    let err = s
        .submit(Call::<()>::new("celeriac.panic").arg("kaboom"))
        .wait_timeout(WAIT)
        .unwrap_err();
    let te = err.task_error().unwrap();
    assert_eq!(te.kind(), TaskErrorKind::Panicked);
    assert_eq!(te.message(), "kaboom");
    let jobs: Vec<_> = (0..100).map(|i| s.submit(fib::call(i % 20))).collect();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.wait_timeout(WAIT).unwrap(), fib(i as u64 % 20));
    }
    assert_eq!(s.workers(), 2);
}

#[test]
fn bad_arguments_and_unknown_tasks_are_typed_errors() {
    let s = server(1);
    let err = s
        .submit(Call::<i64>::new("celeriac.fib").arg("x"))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(
        err.task_error().unwrap().kind(),
        TaskErrorKind::InvalidArguments
    );
    let err = s
        .submit(Call::<i64>::new("celeriac.fib"))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert!(
        err.task_error()
            .unwrap()
            .message()
            .contains("missing 1 required positional argument: 'n'")
    );
    let err = s
        .submit(Call::<i64>::new("no.such.task"))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(
        err.task_error().unwrap().kind(),
        TaskErrorKind::NotRegistered
    );
    // The output type is checked when the result is decoded.
    let err = s
        .submit(Call::<String>::new("celeriac.fib").arg(5))
        .wait_timeout(WAIT)
        .unwrap_err();
    assert!(matches!(err, JobError::Decode(_)), "{err:?}");
}

#[test]
fn callbacks_run_with_each_result_before_wait_returns() {
    let s = server(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let jobs: Vec<_> = (0..50u64)
        .map(|n| {
            let seen = seen.clone();
            s.job(fib::call(n % 25))
                .group("cb")
                .callback(move |r| seen.lock().unwrap().push((n, r.unwrap())))
                .submit()
        })
        .collect();
    // The callback of a job has run once its wait() returns.
    let first = jobs[7].wait_timeout(WAIT).unwrap();
    assert!(seen.lock().unwrap().contains(&(7, first)));
    s.wait_group("cb");
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    let want: Vec<(u64, u64)> = (0..50).map(|n| (n, fib(n % 25))).collect();
    assert_eq!(got, want);

    // Errors reach callbacks too.
    let err_seen = Arc::new(Mutex::new(None));
    let e2 = err_seen.clone();
    let j = s
        .job(divide::call(1, 0))
        .callback(move |r| *e2.lock().unwrap() = Some(r.unwrap_err().to_string()))
        .submit();
    let _ = j.wait_timeout(WAIT);
    assert!(
        err_seen
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .contains("division by zero")
    );
}

#[test]
fn wait_group_waits_for_that_group_only() {
    let s = server(2);
    let slow = s.job(sleep::call(3.0)).group("slow").submit();
    let quick: Vec<_> = (0..20)
        .map(|i| s.job(fib::call(i)).group("quick").submit())
        .collect();
    s.wait_group("quick");
    assert!(quick.iter().all(|j| j.ready()));
    assert!(!slow.ready(), "the other group is still running");
    s.wait();
    assert!(slow.ready());
    s.wait_group("never-used");
}

#[test]
fn templates_prebind_task_group_and_callback() {
    let s = server(2);
    let total = Arc::new(AtomicUsize::new(0));
    let t2 = total.clone();
    let tpl = Template::<fib>::new(&s).group("tpl").callback(move |r| {
        t2.fetch_add(r.unwrap() as usize, Ordering::SeqCst);
    });
    let jobs: Vec<_> = (0..15u64).map(|n| tpl.submit((n,))).collect();
    s.wait_group("tpl");
    assert_eq!(jobs[10].wait().unwrap(), 55);
    assert_eq!(
        total.load(Ordering::SeqCst) as u64,
        (0..15).map(fib).sum::<u64>()
    );
}

#[test]
fn resizing_while_busy_loses_no_job() {
    let s = server(2);
    let before = COUNTED.load(Ordering::SeqCst);
    let jobs: Vec<_> = (0..3000u64).map(|i| s.submit(count::call(i))).collect();
    for n in [4, 1, 3, 2] {
        std::thread::sleep(Duration::from_millis(20));
        s.set_workers(n).unwrap();
        assert_eq!(s.workers(), n);
    }
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.wait_timeout(WAIT).unwrap(), i as u64);
    }
    assert_eq!(
        COUNTED.load(Ordering::SeqCst) - before,
        3000,
        "each job ran exactly once"
    );
    assert!(s.set_workers(0).is_err());
}

#[test]
fn a_hundred_thousand_tiny_jobs_all_complete() {
    let s = server(2);
    let n = 100_000i64;
    let jobs: Vec<_> = (0..n)
        .map(|i| s.submit(add::call(i.into(), 1.into())))
        .collect();
    s.wait();
    let mut sum = 0i64;
    for j in &jobs {
        sum += j.wait_timeout(WAIT).unwrap().as_i64().unwrap();
    }
    assert_eq!(sum, n * (n + 1) / 2);
    let stats = s.stats();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.nodes.iter().map(|n| n.jobs).sum::<u64>(), n as u64);
}

#[test]
fn wait_timeout_try_result_and_ready() {
    let s = server(1);
    let j = s.submit(sleep::call(0.5));
    assert!(!j.ready());
    assert!(j.try_result().is_none());
    assert!(matches!(
        j.wait_timeout(Duration::from_millis(20)),
        Err(JobError::Timeout)
    ));
    assert_eq!(j.wait_timeout(WAIT).unwrap(), 0.5);
    assert!(j.ready());
}

#[test]
fn stats_and_active_nodes_describe_the_local_worker() {
    let s = server(2);
    let jobs: Vec<_> = (0..30).map(|i| s.submit(fib::call(i % 15))).collect();
    s.wait();
    assert!(jobs.iter().all(|j| j.ready()));
    let stats = s.stats();
    assert_eq!(stats.workers, 2);
    assert_eq!(stats.nodes.len(), 1);
    assert_eq!(stats.nodes[0].node, "local");
    assert_eq!(stats.nodes[0].jobs, 30);
    assert!((stats.nodes[0].percent - 100.0).abs() < 1e-9);
    let text = stats.to_string();
    assert!(
        text.contains(" job count | % of all jobs | job time sum | time per job | job server"),
        "{text}"
    );
    assert!(text.contains("| local"), "{text}");
    assert_eq!(s.active_nodes().get("local"), Some(&2));
}

#[test]
fn servers_on_one_file_broker_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shared.db", dir.path().display());
    let helper = Server::builder()
        .broker(&url)
        .workers(2)
        .nodename("helper@test")
        .build()
        .unwrap();
    let client = Server::builder().broker(&url).workers(0).build().unwrap();
    // The helper's heartbeat makes it visible.
    let mut nodes = client.active_nodes();
    for _ in 0..100 {
        if nodes.contains_key("helper@test") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        nodes = client.active_nodes();
    }
    assert_eq!(nodes.get("helper@test"), Some(&2), "{nodes:?}");
    assert!(
        !nodes.contains_key("local"),
        "the client has no local worker"
    );
    // The client's jobs run on the helper.
    let jobs: Vec<_> = (0..20).map(|i| client.submit(fib::call(i))).collect();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.wait_timeout(WAIT).unwrap(), fib(i as u64));
    }
    let stats = client.stats();
    assert_eq!(stats.nodes[0].node, "helper@test");
    assert_eq!(stats.nodes[0].jobs, 20);
    drop(helper);
}

#[test]
fn destroy_finishes_running_jobs_and_fails_the_rest() {
    let s = server(1);
    let running = s.submit(sleep::call(0.3));
    std::thread::sleep(Duration::from_millis(100));
    let queued: Vec<_> = (0..5).map(|_| s.submit(sleep::call(0.3))).collect();
    s.destroy();
    assert_eq!(
        running.wait_timeout(WAIT).unwrap(),
        0.3,
        "the running job finished"
    );
    let mut destroyed = 0;
    for j in &queued {
        match j.wait_timeout(WAIT) {
            Err(JobError::Destroyed) => destroyed += 1,
            Ok(_) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(
        destroyed >= 4,
        "queued jobs end with Destroyed, none hangs ({destroyed})"
    );
    assert!(matches!(
        s.submit(fib::call(3)).wait_timeout(WAIT),
        Err(JobError::Destroyed)
    ));
}
