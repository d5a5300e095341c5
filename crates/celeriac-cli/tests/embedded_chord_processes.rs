//! A chord on `sqlite://` joined by two `celeriac worker` processes: the
//! header parts run in both, each part is counted in one SQLite
//! transaction, and the body runs exactly once, with every result in
//! header order.

use std::process::Command;
use std::time::Duration;

use celeriac_core::{Message, Outgoing, ResultBackend, State, Transport};
use celeriac_embedded::{SqliteBackend, SqliteBroker};
use celeriac_testkit::process::LoggedChild;
use serde_json::{Map, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");
const PARTS: u64 = 200;

fn worker(dir: &std::path::Path, url: &str, name: &str) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "-b", url, "-c", "2", "--diagnostic-tasks"])
        .args(["--loglevel", "debug", "-n", name])
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND");
    let w = LoggedChild::spawn(cmd, dir, name);
    let log = w.wait_for_log("worker ready");
    assert!(log.contains("worker ready"), "{name} did not start:\n{log}");
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_join_one_chord_and_run_its_body_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/chord.db", dir.path().display());
    let broker = SqliteBroker::open(&url).unwrap();
    let backend = SqliteBackend::open(&url).unwrap();
    let workers = [
        worker(dir.path(), &url, "w1@chord"),
        worker(dir.path(), &url, "w2@chord"),
    ];
    let gid = uuid::Uuid::new_v4().to_string();
    let body_id = uuid::Uuid::new_v4().to_string();
    let body = json!({"task": "celeriac.echo", "args": [], "kwargs": {},
        "options": {"task_id": body_id, "group_id": gid}, "subtask_type": null, "immutable": false});
    let msgs: Vec<Outgoing> = (0..PARTS)
        .map(|i| {
            let mut m = Message::new("celeriac.add", vec![json!(i), json!(1)], Map::new());
            m.headers.root_id = Some(m.id().to_string());
            m.headers.group = Some(gid.clone());
            m.headers.group_index = Some(i);
            m.embed.chord = Some(body.clone());
            Outgoing::from_message(&m).unwrap()
        })
        .collect();
    let watch = backend.watch(&body_id).await.unwrap();
    // As Celery's client: the size recorded just before the last part.
    let mut msgs = msgs;
    let last = msgs.pop().unwrap();
    broker.publish_batch(msgs).await.unwrap();
    let join = backend.chord_join().expect("SQLite joins chords");
    join.set_size(&gid, PARTS).await.unwrap();
    broker.publish(last).await.unwrap();
    let meta = tokio::time::timeout(Duration::from_secs(120), watch)
        .await
        .expect("the body within 120 s")
        .unwrap();
    assert_eq!(meta.status, State::Success, "{meta:?}");
    assert_eq!(
        meta.result,
        json!((1..=PARTS).collect::<Vec<_>>()),
        "every result once, in header order"
    );
    assert_eq!(meta.group_id.as_deref(), Some(gid.as_str()));
    // Give a duplicate body (if any) time to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies: usize = workers
        .iter()
        .map(|w| w.count_lines(&["task succeeded", &body_id]))
        .sum();
    assert_eq!(bodies, 1, "the body ran exactly once");
    for w in &workers {
        assert!(
            w.count_lines(&["task succeeded", "celeriac.add"]) > 0,
            "both processes ran header parts:\n{}",
            w.log()
        );
    }
}
