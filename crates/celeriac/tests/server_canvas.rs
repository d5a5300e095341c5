//! The canvas through the job server on the default embedded broker
//! (`memory://`): results, the result tree, callbacks, routes to the
//! server's queue, bad canvases as typed errors, chords refused without a
//! chord join, and a server shut down under a running canvas.

use std::collections::HashMap;
use std::time::Duration;

use celeriac::canvas::{chain, chord, chunks, group, map, starmap};
use celeriac::{Call, JobError, ResultRef, Server, task};

const WAIT: Duration = Duration::from_secs(60);

#[task(name = "server_canvas.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "server_canvas.double")]
fn double(x: i64) -> i64 {
    2 * x
}

#[task(name = "server_canvas.total")]
fn total(xs: Vec<i64>) -> i64 {
    xs.iter().sum()
}

#[task(name = "server_canvas.fail")]
fn fail(why: String) -> Result<i64, String> {
    Err(why)
}

#[task(name = "server_canvas.who")]
fn who(failed_id: String) -> String {
    failed_id
}

#[task(name = "server_canvas.nap")]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn server() -> Server {
    Server::builder().workers(4).build().unwrap()
}

#[test]
fn chains_groups_and_builtins_run_on_the_embedded_broker() {
    let s = server();
    let job = s.apply(chain(add::call(1, 2)).then(double::s()).then(add::s(1)));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 7);
    let g = s.apply(group((0..20).map(|i| add::call(i, 1))));
    assert_eq!(g.wait_timeout(WAIT).unwrap(), (1..=20).collect::<Vec<_>>());
    assert!(g.ready());
    let collected: Vec<i64> = g.iter().map(Result::unwrap).collect();
    assert_eq!(collected.len(), 20);
    assert_eq!(
        s.apply(map::<double>([1, 2])).wait_timeout(WAIT).unwrap(),
        vec![2, 4]
    );
    assert_eq!(
        s.apply(starmap::<add>([(1, 1), (2, 2)]))
            .wait_timeout(WAIT)
            .unwrap(),
        vec![2, 4]
    );
    assert_eq!(
        s.apply(chunks::<add>((0..4).map(|i| (i, 0)), 3))
            .wait_timeout(WAIT)
            .unwrap(),
        vec![vec![0, 1, 2], vec![3]]
    );
    // A plain call is a canvas too.
    assert_eq!(s.apply(add::call(20, 22)).wait_timeout(WAIT).unwrap(), 42);
}

#[test]
fn the_result_tree_leads_back_and_forward() {
    // A named store: a private one (`memory://`) forgets a result once its
    // job has it, so it could not be looked up by id again below.
    let s = Server::builder()
        .broker("memory://server-canvas-tree")
        .workers(4)
        .build()
        .unwrap();
    let job = s.apply(chain(add::call(1, 2)).then(double::s()));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 6);
    let first = job.parent().unwrap().and_then(ResultRef::job).unwrap();
    assert_eq!(first.wait_timeout(WAIT).unwrap(), serde_json::json!(3));
    let meta = job.meta().unwrap();
    assert_eq!(meta.parent_id.as_deref(), Some(first.id()));
    let kids = first.children().unwrap();
    assert_eq!(
        kids.iter().map(ResultRef::id).collect::<Vec<_>>(),
        vec![job.id()]
    );
    // By id alone: the stored parent_id.
    let again = s.result::<i64>(job.id());
    assert_eq!(again.wait_timeout(WAIT).unwrap(), 6);
    assert_eq!(again.parent().unwrap().unwrap().id(), first.id());
}

#[test]
fn callbacks_run_with_the_result_or_the_failed_id() {
    let s = server();
    let mut cb = double::s();
    let cb_id = cb.freeze();
    let mut eb = who::s();
    let eb_id = eb.freeze();
    let job = s.apply(add::call(2, 3).link(cb));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 5);
    assert_eq!(s.result::<i64>(&cb_id).wait_timeout(WAIT).unwrap(), 10);
    let job = s.apply(
        chain(fail::call("no".into()))
            .then(double::s())
            .link_error(eb),
    );
    match job.wait_timeout(WAIT) {
        Err(JobError::Task(e)) => assert!(e.message().contains("no"), "{e}"),
        other => panic!("the chain fails: {other:?}"),
    }
    let failed_first = job.parent().unwrap().unwrap();
    assert_eq!(
        s.result::<String>(&eb_id).wait_timeout(WAIT).unwrap(),
        failed_first.id(),
        "the errback gets the failed step's id"
    );
}

#[test]
fn steps_go_to_the_servers_queue_and_routes() {
    let s = Server::builder()
        .workers(2)
        .queue("canvas-q")
        .route("server_canvas.double", "doubles")
        .build()
        .unwrap();
    // Every step is routed: nothing would consume `celery` here.
    let job = s.apply(chain(add::call(1, 1)).then(double::s()).then(add::s(1)));
    assert_eq!(job.wait_timeout(WAIT).unwrap(), 5);
    let g = s.apply(group(vec![double::call(1), add::call(1, 1)]));
    assert_eq!(g.wait_timeout(WAIT).unwrap(), vec![2, 2]);
    assert_eq!(
        g.jobs()[0].meta().unwrap().queue.as_deref(),
        Some("doubles")
    );
    assert_eq!(
        g.jobs()[1].meta().unwrap().queue.as_deref(),
        Some("canvas-q")
    );
}

#[test]
fn bad_canvases_are_typed_errors_not_hangs() {
    let s = server();
    // An argument that is not JSON (a map with non-string keys).
    let bad: HashMap<(i32, i32), i32> = [((1, 2), 3)].into_iter().collect();
    let job = s.apply(chain(Call::<i64>::new("server_canvas.add").arg(bad)).then(double::s()));
    match job.wait_timeout(WAIT) {
        Err(JobError::Task(e)) => assert!(e.message().contains("JSON"), "{e}"),
        other => panic!("an argument that is not JSON is refused: {other:?}"),
    }
    // Celery refuses to link a group.
    let job = s.apply(
        chain(add::call(1, 1))
            .then(group(vec![add::s(1), add::s(2)]))
            .link(total::s()),
    );
    assert!(matches!(
        job.wait_timeout(WAIT),
        Err(JobError::Unsupported(_))
    ));
    let bad: HashMap<(i32, i32), i32> = [((1, 2), 3)].into_iter().collect();
    let g = s.apply(group(vec![Call::<i64>::new("server_canvas.add").arg(bad)]));
    assert!(matches!(g.wait_timeout(WAIT), Err(JobError::Task(_))));
    // Nothing left waiting.
    s.wait();
}

#[test]
fn a_chord_runs_or_is_refused_at_once_by_a_backend_without_a_join() {
    let s = server();
    let joins = celeriac::open_backend("memory://")
        .unwrap()
        .chord_join()
        .is_some();
    let job = s.apply(chord((1..=3).map(|i| add::call(i, 0)), total::s()));
    match job.wait_timeout(WAIT) {
        Ok(sum) => assert!(joins && sum == 6, "{sum}"),
        Err(JobError::Unsupported(why)) => assert!(!joins && why.contains("chord join"), "{why}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_group_result_is_saved_and_restored_on_memory() {
    // A named store, whose results stay to be read again (see above).
    let s = Server::builder()
        .broker("memory://server-canvas-groups")
        .workers(4)
        .build()
        .unwrap();
    let g = s.apply(group((0..3).map(|i| add::call(i, i))));
    assert_eq!(g.wait_timeout(WAIT).unwrap(), vec![0, 2, 4]);
    g.save().unwrap();
    let back = s.restore_group::<i64>(g.id()).unwrap().expect("saved");
    let ids: Vec<&str> = back.jobs().iter().map(|j| j.id()).collect();
    let sent: Vec<&str> = g.jobs().iter().map(|j| j.id()).collect();
    assert_eq!(ids, sent, "the same members, in order");
    assert_eq!(back.wait_timeout(WAIT).unwrap(), vec![0, 2, 4]);
    assert!(s.restore_group::<i64>("no-such-group").unwrap().is_none());
}

#[test]
fn a_server_shut_down_under_a_canvas_ends_its_jobs() {
    let s = Server::builder().workers(1).build().unwrap();
    let job = s.apply(chain(nap::call(200)).then(nap::s()));
    let g = s.apply(group((0..5).map(|_| nap::call(100))));
    s.destroy();
    // Either finished before the shutdown, or ended by it; never hangs.
    match job.wait_timeout(WAIT) {
        Ok(_) | Err(JobError::Destroyed) => {}
        other => panic!("{other:?}"),
    }
    for j in g.jobs() {
        match j.wait_timeout(WAIT) {
            Ok(_) | Err(JobError::Destroyed) => {}
            other => panic!("{other:?}"),
        }
    }
}
