//! The celeriac client's canvas (`Server::apply`) on real workers: the
//! same chains, groups, chords, links, chunks and starmaps, sent by a
//! celeriac client, run on a Python Celery 5.7 worker over a private Redis,
//! on a celeriac worker over Redis, and on a celeriac worker over SQLite
//! (where a chord is refused with a typed error: the embedded backends
//! have no chord join yet). Each asserts the results and what the worker
//! stored: `parent_id`, `children`, `group_id`, saved groups.
//!
//! The tasks are defined twice, by the same names: in Rust below, and in
//! Python in `tests/python/pycanvas.py`.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use celeriac::canvas::{chain, chord, chunks, group, map, starmap};
use celeriac::{Call, Job, JobError, ResultRef, Server, State, task};
use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::python::{CeleryWorker, interop_python as python, python_dir};
use celeriac_testkit::redis_server::RedisServer;
use serde_json::{Value, json};

#[task(name = "canvas.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "canvas.mul")]
fn mul(x: i64, y: i64) -> i64 {
    x * y
}

#[task(name = "canvas.tsum")]
fn tsum(xs: Vec<i64>) -> i64 {
    xs.iter().sum()
}

#[task(name = "canvas.boom")]
fn boom(message: String) -> Result<i64, celeriac::TaskError> {
    Err(celeriac::TaskError::typed(
        "ValueError",
        "builtins",
        message,
    ))
}

#[task(name = "canvas.report")]
fn report(failed_id: String) -> String {
    format!("failed: {failed_id}")
}

/// What `canvas.on_error` was called with in this process: a celeriac
/// worker calls it inline (Celery's rule for an errback of more than one
/// argument), with the failed task's request and exception.
static INLINE_ERRBACKS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

#[task(name = "canvas.on_error")]
fn on_error(request: Value, exc: Value, traceback: Option<String>) {
    INLINE_ERRBACKS.lock().unwrap().push(json!({
        "id": request["id"],
        "task": request["task"],
        "exc_type": exc["exc_type"],
        "message": exc["exc_message"],
        "traceback": traceback.is_some(),
    }));
}

const WAIT: Duration = Duration::from_secs(120);

/// Who runs the canvases.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Workers {
    /// A Python Celery worker.
    Python,
    /// celeriac's worker, with Redis's chord join.
    Celeriac,
    /// celeriac's worker on a backend without a chord join.
    CeleriacNoChords,
}

fn python_worker(python: &str, url: &str) -> LoggedChild {
    CeleryWorker::new(python, "pycanvas")
        .node("pycanvas@localhost")
        .broker(url)
        .start(&std::env::temp_dir(), "python-canvas-client-worker")
}

fn python_groups(python: &str, url: &str, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(python_dir().join("canvas_groups.py"))
        .arg(url)
        .args(args)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "canvas_groups.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("canvas_groups.py prints JSON")
}

fn job_of(r: Option<ResultRef>) -> Job<i64> {
    r.and_then(ResultRef::job).expect("a task result").cast()
}

/// What the worker stored for a job, once it finished.
fn stored<T>(job: &Job<T>) -> celeriac::ResultMeta {
    let _ = job.clone().cast::<Value>().wait_timeout(WAIT);
    job.meta().expect("the job has a stored result")
}

/// A chain of three, and the result tree back through it: what the client
/// knows (`parent`), what the workers stored (`parent_id`, `children`).
fn chains(server: &Server) {
    let job = server.apply(chain(add::call(1, 2)).then(add::s(10)).then(mul::s(10)));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 130, "((1 + 2) + 10) * 10");
    let middle = job_of(job.parent().unwrap());
    let first = job_of(middle.parent().unwrap());
    assert_eq!(middle.wait_timeout(WAIT).unwrap(), 13);
    assert_eq!(first.wait_timeout(WAIT).unwrap(), 3);
    assert!(
        first.parent().unwrap().is_none(),
        "the first step has no parent"
    );
    assert_eq!(stored(&job).parent_id.as_deref(), Some(middle.id()));
    assert_eq!(stored(&middle).parent_id.as_deref(), Some(first.id()));
    assert_eq!(
        stored(&first).children,
        vec![json!([[middle.id(), null], null])],
        "the first step lists the step it sent on"
    );
    let kids = first.children().unwrap();
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0].id(), middle.id());
    // A job known only by id finds its parent through what was stored.
    let by_id = server.result::<i64>(job.id());
    assert_eq!(by_id.wait_timeout(WAIT).unwrap(), 130);
    assert_eq!(job_of(by_id.parent().unwrap()).id(), middle.id());

    let mut long = chain(add::call(0, 1));
    for _ in 0..99 {
        long = long.then(add::s(1));
    }
    assert_eq!(
        server.apply(long).wait_timeout(WAIT).unwrap(),
        100,
        "a 100-step chain"
    );

    let job = server.apply(
        chain(add::call(1, 2))
            .then(boom::call("middle".into()).immutable())
            .then(add::s(5)),
    );
    match job.wait_timeout(WAIT) {
        Err(JobError::Task(e)) => assert!(e.message().contains("middle"), "{e}"),
        other => panic!("the chain fails with the middle step's error: {other:?}"),
    }
    assert_eq!(
        stored(&job).status,
        State::Failure,
        "the last step is failed too"
    );
    let middle = job_of(job.parent().unwrap());
    assert_eq!(stored(&middle).status, State::Failure);
    assert_eq!(
        job_of(middle.parent().unwrap()).wait_timeout(WAIT).unwrap(),
        3
    );
}

fn groups(server: &Server) {
    let g = server.apply(group((0..10).map(|i| add::call(i, i))));
    assert_eq!(g.len(), 10);
    assert_eq!(
        g.wait_timeout(WAIT).unwrap(),
        (0..10).map(|i| 2 * i).collect::<Vec<_>>()
    );
    for j in g.jobs() {
        assert_eq!(
            stored(j).group_id.as_deref(),
            Some(g.id()),
            "group_id is stored"
        );
    }
    assert_eq!(g.completed_count(), 10);
    // GroupResult.save/restore, on every backend.
    g.save().unwrap();
    let back = server.restore_group::<i64>(g.id()).unwrap().expect("saved");
    let ids: Vec<&str> = back.jobs().iter().map(|j| j.id()).collect();
    let sent: Vec<&str> = g.jobs().iter().map(|j| j.id()).collect();
    assert_eq!(ids, sent);
    assert_eq!(back.wait_timeout(WAIT).unwrap(), g.wait().unwrap());
    assert!(
        server
            .restore_group::<i64>("no-such-group")
            .unwrap()
            .is_none()
    );

    let g = server.apply(group((0..1000).map(|i| add::call(i, 1))));
    let total: i64 = g.wait_timeout(WAIT).unwrap().iter().sum();
    assert_eq!(total, (1..=1000).sum::<i64>(), "a group of 1000");

    let g = server.apply(group(vec![
        chain(add::call(1, 2)).then(add::s(1)),
        chain(add::call(3, 4)).then(add::s(1)),
    ]));
    assert_eq!(
        g.wait_timeout(WAIT).unwrap(),
        vec![4, 8],
        "a group of chains"
    );
    let first_step = job_of(g.jobs()[1].parent().unwrap());
    assert_eq!(first_step.wait_timeout(WAIT).unwrap(), 7);
    assert_eq!(stored(&g.jobs()[1]).group_id.as_deref(), Some(g.id()));

    let g = server.apply(chunks::<add>((0..10).map(|i| (i, i)), 3));
    assert_eq!(
        g.wait_timeout(WAIT).unwrap(),
        vec![vec![0, 2, 4], vec![6, 8, 10], vec![12, 14, 16], vec![18]]
    );
    let job = server.apply(starmap::<add>([(1, 2), (3, 4)]));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), vec![3, 7]);
    let job = server.apply(map::<tsum>([vec![1, 2], vec![3]]));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), vec![3, 3]);
}

fn links(server: &Server, workers: Workers) {
    let mut callback = add::s(10);
    let callback_id = callback.freeze();
    let job = server.apply(add::call(2, 2).link(callback));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 4);
    assert_eq!(
        server
            .result::<i64>(&callback_id)
            .wait_timeout(WAIT)
            .unwrap(),
        14
    );
    assert!(
        stored(&job)
            .children
            .contains(&json!([[callback_id, null], null])),
        "the callback is listed in children"
    );

    let mut errback = report::s();
    let errback_id = errback.freeze();
    let job = server.apply(boom::call("x".into()).link_error(errback));
    assert!(job.wait_timeout(WAIT).is_err());
    assert_eq!(
        server
            .result::<String>(&errback_id)
            .wait_timeout(WAIT)
            .unwrap(),
        format!("failed: {}", job.id()),
        "the errback is called with the failed task's id"
    );

    // Celery's errback rule: `canvas.on_error(request, exc, traceback)`
    // takes three arguments, so the worker that runs the failed task
    // calls it inline (nothing published, nothing stored under its id);
    // `canvas.report(failed_id)` takes one, so it is published.
    let mut inline = Call::<Value>::new("canvas.on_error").partial::<String>();
    let inline_id = inline.freeze();
    let mut errback = report::s();
    let errback_id = errback.freeze();
    let job = server.apply(
        boom::call("arity".into())
            .link_error(inline)
            .link_error(errback),
    );
    assert!(job.wait_timeout(WAIT).is_err());
    assert_eq!(
        server
            .result::<String>(&errback_id)
            .wait_timeout(WAIT)
            .unwrap(),
        format!("failed: {}", job.id()),
    );
    let seen = match workers {
        // The Python errback stores what it got under an id of its own.
        Workers::Python => server
            .result::<Value>(&format!("inline-errback-{}", job.id()))
            .wait_timeout(WAIT)
            .unwrap(),
        _ => inline_call_of(job.id()),
    };
    assert_eq!(seen["id"], job.id(), "{seen}");
    assert_eq!(seen["task"], "canvas.boom", "{seen}");
    assert_eq!(seen["exc_type"], "ValueError", "{seen}");
    assert_eq!(seen["message"], json!(["arity"]), "{seen}");
    assert!(
        !server.result::<Value>(&inline_id).ready(),
        "an errback called inline is not published and stores nothing"
    );
}

/// The inline call of `canvas.on_error` for the failed task `id`, once
/// there is one (a 120 s bound, for a loaded machine).
fn inline_call_of(id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = INLINE_ERRBACKS
            .lock()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned();
        if let Some(call) = found {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "canvas.on_error was not called inline for {id}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chords(server: &Server, workers: Workers) {
    let job = server.apply(chord((0..3).map(|i| add::call(i, i)), tsum::s()));
    if workers == Workers::CeleriacNoChords {
        match job.wait_timeout(WAIT) {
            Err(JobError::Unsupported(why)) => assert!(why.contains("chord join"), "{why}"),
            other => panic!("a chord without a chord join is refused: {other:?}"),
        }
        return;
    }
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 6, "0 + 2 + 4");
    let header = job
        .parent()
        .unwrap()
        .and_then(ResultRef::group)
        .expect("the header group");
    assert_eq!(header.len(), 3);
    assert_eq!(
        header.wait_timeout(WAIT).unwrap(),
        vec![json!(0), json!(2), json!(4)]
    );
    let body = stored(&job);
    assert_eq!(body.group_id.as_deref(), Some(header.id()));
    let header_ids: Vec<&str> = header.jobs().iter().map(|j| j.id()).collect();
    assert!(
        body.parent_id
            .as_deref()
            .is_some_and(|p| header_ids.contains(&p)),
        "the body's parent is the header part that finished last: {:?}",
        body.parent_id
    );

    let job = server.apply(chord(
        vec![add::call(1, 1), boom::call("bad header".into())],
        tsum::s(),
    ));
    match job.wait_timeout(WAIT) {
        Err(JobError::Task(e)) => {
            assert_eq!(e.exc_type(), "ChordError", "{e}");
            assert!(e.message().contains("bad header"), "{e}");
        }
        other => panic!("a failed header part fails the chord: {other:?}"),
    }

    let job = server.apply(chord((1..=50).map(|i| add::call(i, 0)), tsum::s()));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 1275, "a chord of 50");
    // A chain after a chord continues from the chord's body.
    let job = server
        .apply(chain(chord(vec![add::call(1, 1), add::call(2, 2)], tsum::s())).then(add::s(1)));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 7);
}

/// Shapes that nest a canvas inside a signature (`celery.chain`,
/// `celery.group`, `celery.chord` dicts), run by Python and celeriac
/// workers alike.
fn nested(server: &Server) {
    let job = server.apply(chord(
        vec![
            chord(vec![add::call(1, 1), add::call(2, 2)], tsum::s()),
            chord(vec![add::call(3, 3), add::call(4, 4)], tsum::s()),
        ],
        tsum::s(),
    ));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 20, "a chord of chords");
    let job = server.apply(chord(
        vec![add::call(1, 1), add::call(2, 2)],
        tsum::s().then(add::s(1)),
    ));
    assert_eq!(
        job.wait_timeout(WAIT).unwrap(),
        7,
        "a chord whose body is a chain"
    );
    let job = server.apply(
        chain(add::call(1, 2))
            .then(group(vec![add::s(1), add::s(2)]))
            .then(tsum::s()),
    );
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 9, "a group inside a chain");
    let job = server.apply(chain(add::call(1, 2)).then(group(vec![add::s(1), add::s(2)])));
    assert_eq!(
        job.wait_timeout(WAIT).unwrap(),
        vec![4, 5],
        "a chain ending in a group"
    );
}

fn run_canvases(server: &Server, workers: Workers) {
    chains(server);
    groups(server);
    links(server, workers);
    chords(server, workers);
    if workers != Workers::CeleriacNoChords {
        nested(server);
    }
}

#[test]
fn a_celeriac_client_runs_canvases_on_a_python_worker() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let _worker = python_worker(&python, &url);
    let server = Server::builder().broker(&url).workers(0).build().unwrap();
    run_canvases(&server, Workers::Python);

    // GroupResult.save across the two: Python restores what celeriac
    // saved, celeriac restores what Python saved.
    let g = server.apply(group((0..3).map(|i| add::call(i, 10))));
    assert_eq!(g.wait_timeout(WAIT).unwrap(), vec![10, 11, 12]);
    g.save().unwrap();
    let seen = python_groups(&python, &url, &["restore", g.id()]);
    let ids: Vec<&str> = g.jobs().iter().map(|j| j.id()).collect();
    assert_eq!(seen["ids"], json!(ids), "{seen}");
    assert_eq!(seen["results"], json!([10, 11, 12]));
    let saved = python_groups(&python, &url, &["save"]);
    let back = server
        .restore_group::<i64>(saved["id"].as_str().unwrap())
        .unwrap()
        .expect("Python saved it");
    let ids: Vec<&str> = back.jobs().iter().map(|j| j.id()).collect();
    assert_eq!(json!(ids), saved["ids"]);
    assert_eq!(back.wait_timeout(WAIT).unwrap(), vec![0, 2, 4]);
}

#[test]
fn the_same_canvases_run_on_a_celeriac_worker_over_redis() {
    if !RedisServer::available() {
        eprintln!("skipped: no redis-server");
        return;
    }
    let redis = RedisServer::start();
    let server = Server::builder()
        .broker(redis.url(""))
        .workers(4)
        .build()
        .unwrap();
    run_canvases(&server, Workers::Celeriac);
}

#[test]
fn the_same_canvases_run_on_a_celeriac_worker_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("canvas.db").display());
    // Chords need the backend's chord join; where SQLite has none, a chord
    // must be refused at once, not hang.
    let joins = celeriac::open_backend(&url).unwrap().chord_join().is_some();
    let server = Server::builder().broker(&url).workers(4).build().unwrap();
    let workers = if joins {
        Workers::Celeriac
    } else {
        Workers::CeleriacNoChords
    };
    run_canvases(&server, workers);
}
