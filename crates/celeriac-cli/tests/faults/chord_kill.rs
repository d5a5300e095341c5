//! `kill -9` of a worker in the middle of a 200-part chord that a Python
//! Celery client sent (Celery 5.7's native Redis join). The body must be
//! published exactly once, with all 200 header results in header order,
//! and run once. The body is routed to a queue (`chord-body`) that no
//! worker consumes until the header is done, so the test counts the body
//! messages themselves rather than trusting a result that a second run
//! would merely overwrite.

use std::process::Command;
use std::time::{Duration, Instant};

use celeriac::{Message, State};
use celeriac_testkit::python::{interop_python, python_dir};
use celeriac_testkit::redis_server::RedisServer;
use serde_json::{Value, json};

use crate::{Client, worker};

const PARTS: i64 = 200;
const BODY_QUEUE: &str = "chord-body";

/// Sends the chord from Python; returns (body id, group id, part ids).
fn send_chord(python: &str, url: &str) -> (String, String, Vec<String>) {
    let out = Command::new(python)
        .arg(python_dir().join("chord_kill.py"))
        .args([url, &PARTS.to_string()])
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "chord_kill.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("chord_kill.py prints JSON");
    let parts = v["parts"]
        .as_array()
        .expect("part ids")
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    (
        v["body"].as_str().unwrap().to_string(),
        v["group"].as_str().unwrap().to_string(),
        parts,
    )
}

/// The chord body messages waiting on `chord-body`, decoded.
fn body_messages(client: &Client) -> Vec<Message> {
    let keys: Vec<String> = client.redis(redis::cmd("KEYS").arg(format!("{BODY_QUEUE}*")));
    let mut out = Vec::new();
    for key in keys {
        let raw: Vec<Vec<u8>> = client.redis(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1));
        out.extend(
            raw.iter()
                .map(|r| Message::decode(r).expect("a body message decodes")),
        );
    }
    out
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_mid_chord_publishes_the_body_once_with_all_200_results() {
    let Some(python) = interop_python() else {
        return;
    };
    let redis = RedisServer::start();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    // A shared rate limit spreads the 200 parts over about 10 s, so that
    // the kill lands mid-chord with parts claimed, running and joined.
    let slow = ["--rate-limit", "celeriac.add=20/s"];
    let mut a = worker(&url, logs.path(), "a@chord", &slow);
    let _b = worker(&url, logs.path(), "b@chord", &slow);
    let (body_id, group, parts) = send_chord(&python, &url);
    assert_eq!(parts.len(), PARTS as usize);

    // Kill one worker once a third of the parts have joined.
    let joined_key = format!("celery-taskset-meta-{group}.j");
    let joined = |c: &Client| -> usize { c.redis(redis::cmd("ZCARD").arg(&joined_key)) };
    wait_until("a third of the parts join", Duration::from_secs(60), || {
        joined(&client) >= PARTS as usize / 3
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let at_kill = joined(&client);
    let held: usize = client.redis(redis::cmd("HLEN").arg("unacked"));
    assert!(
        at_kill < PARTS as usize,
        "the kill came after the chord completed ({at_kill} parts joined): nothing was tested"
    );

    // The body comes once the dead worker's claims are back (its liveness
    // lease lapses in seconds).
    wait_until(
        "the chord body is published",
        Duration::from_secs(90),
        || !body_messages(&client).is_empty(),
    );
    let published = killed.elapsed();
    // Long enough for a duplicate to show: past the join's claim (6 s)
    // and the dead worker's lease (10 s).
    std::thread::sleep(Duration::from_secs(15));
    let bodies = body_messages(&client);
    eprintln!(
        "faults/chord_kill: {at_kill} of {PARTS} parts joined and {held} messages claimed at the kill; \
         body published {:.1} s after it; {} body message(s)",
        published.as_secs_f64(),
        bodies.len()
    );
    assert_eq!(bodies.len(), 1, "the body is published exactly once");
    let body = &bodies[0];
    assert_eq!(body.id(), body_id);
    assert_eq!(body.task(), "celeriac.echo");
    let want: Vec<Value> = (0..PARTS).map(|i| json!(2 * i)).collect();
    assert_eq!(
        body.args,
        vec![Value::Array(want.clone())],
        "the body gets all 200 header results, in header order"
    );
    assert_eq!(body.headers.group.as_deref(), Some(group.as_str()));

    // Every header part is a SUCCESS.
    let parts_want: Vec<(String, Value)> = parts
        .iter()
        .zip(0..PARTS)
        .map(|(id, i)| (id.clone(), json!(2 * i)))
        .collect();
    let tally = client.tally(&parts_want, Duration::from_secs(10));
    assert_eq!(
        (tally.done, tally.lost, tally.wrong),
        (PARTS as usize, 0, 0),
        "{tally:?}"
    );

    // Now let the body run: once, with the 200 results.
    let _body_worker = worker(&url, logs.path(), "body@chord", &["-Q", BODY_QUEUE]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let meta = loop {
        if let Ok(Some(meta)) = client.rt.block_on(client.backend.get(&body_id))
            && meta.status.is_ready()
        {
            break meta;
        }
        assert!(Instant::now() < deadline, "the body runs within a minute");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result, Value::Array(want));
    wait_until("the body queue drains", Duration::from_secs(30), || {
        client
            .rt
            .block_on(client.broker.queue_len(BODY_QUEUE))
            .unwrap_or(usize::MAX)
            == 0
    });
}
