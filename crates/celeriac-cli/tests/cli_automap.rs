//! Automatic batching across the network, on a private Redis with two
//! `celeriac worker` processes: `Server::map` (results in input order,
//! chunks on both nodes, a failing item found alone), `celeriac map
//! --chunk auto|N` (the same, from the command line, and an empty file),
//! and a Python Celery worker running the chunks (they are Celery's own
//! `celery.starmap` messages).

mod cluster_nodes;

use std::path::Path;
use std::process::{Command, Output};

use cluster_nodes::{jobs_of, node, wait_for_node};

use celeriac::automap::ChunkSize;
use celeriac::{Call, JobError, Server};
use celeriac_testkit::python::{CeleryWorker, interop_python as python};
use celeriac_testkit::redis_server::RedisServer;
use celeriac_testkit::site::Site;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

#[test]
fn server_map_runs_chunks_on_two_worker_processes() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let logs = tempfile::tempdir().unwrap();
    let (a, b) = ("map-a@cluster", "map-b@cluster");
    let _a = node(&url, logs.path(), a, 2, None);
    let _b = node(&url, logs.path(), b, 2, None);
    let server = Server::builder().broker(&url).workers(0).build().unwrap();
    wait_for_node(&server, a, 2);
    wait_for_node(&server, b, 2);

    // Adaptive: every result in order, chunks growing from 8.
    let n = 100_000i64;
    let mut it = server.map(Call::<i64>::new("celeriac.add"), (0..n).map(|i| (i, i)));
    let mut i = 0;
    for r in it.by_ref() {
        assert_eq!(r.unwrap(), 2 * i, "item {i}");
        i += 1;
    }
    assert_eq!(i, n);
    let s = it.stats();
    assert_eq!(s.workers, 4, "two nodes of two slots: {s:?}");
    assert_eq!(s.sizes[0], 8, "{s:?}");
    assert!(s.max_size() >= 32 * 8, "{s:?}");
    assert!(s.per_item.is_some(), "celeriac workers store the runtime");

    // Fixed chunks of 1,000: 50 chunks, and both nodes ran some.
    let before = (jobs_of(&server, a), jobs_of(&server, b));
    let values = server
        .map_with(
            Call::<i64>::new("celeriac.add"),
            (0..50_000i64).map(|i| (i, 1)),
            ChunkSize::Fixed(1000),
        )
        .wait()
        .unwrap();
    assert_eq!(values, (1..=50_000).collect::<Vec<i64>>());
    let (da, db) = (
        jobs_of(&server, a) - before.0,
        jobs_of(&server, b) - before.1,
    );
    assert_eq!(da + db, 50, "one job per chunk");
    assert!(da > 0 && db > 0, "both nodes took chunks: {da} and {db}");

    // A failing item: its own error, every other item its value.
    let items: Vec<Vec<Value>> = (0..5_000i64)
        .map(|i| {
            if i == 4_321 {
                vec![json!("x"), json!(1)]
            } else {
                vec![json!(i), json!(1)]
            }
        })
        .collect();
    let out: Vec<Result<i64, JobError>> = server
        .map(Call::<i64>::new("celeriac.add"), items)
        .collect();
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as i64 + 1),
            Err(e) => assert_eq!(i, 4_321, "only item 4321 fails: {e}"),
        }
    }
    assert!(out[4_321].is_err());

    // An empty map.
    assert!(
        server
            .map(Call::<i64>::new("celeriac.add"), Vec::<(i64, i64)>::new())
            .wait()
            .unwrap()
            .is_empty()
    );
}

/// `celeriac map` with `lines` as the args file.
fn map_cli(dir: &Path, conn: &[&str], name: &str, lines: &str, extra: &[&str]) -> Output {
    let file = dir.join(format!("args-{}.jsonl", lines.len()));
    std::fs::write(&file, lines).unwrap();
    Command::new(BIN)
        .args(["map", name, "--args-file"])
        .arg(&file)
        .args(conn)
        .args(["--timeout", "120"])
        .args(extra)
        .output()
        .expect("run celeriac map")
}

fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The `--stats` line on standard error.
fn stats(o: &Output) -> Value {
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("chunks").is_some())
        })
        .unwrap_or_else(|| panic!("no --stats line in: {err}"))
}

#[test]
fn cli_map_chunks_auto_and_fixed_through_redis() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let dir = tempfile::tempdir().unwrap();
    let _a = node(&url, dir.path(), "cli-a@cluster", 2, None);
    let _b = node(&url, dir.path(), "cli-b@cluster", 2, None);
    let conn = ["--broker", url.as_str(), "--result-backend", url.as_str()];
    let n = 20_000;
    let mut file = String::new();
    for i in 0..n {
        if i == 12_345 {
            file.push_str("[\"a\", 1]\n");
        } else {
            file.push_str(&format!("[{i}, {i}]\n"));
        }
    }
    for chunk in ["auto", "7"] {
        let out = map_cli(
            dir.path(),
            &conn,
            "celeriac.add",
            &file,
            &["--chunk", chunk, "--stats"],
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "--chunk {chunk}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = lines(&out);
        assert_eq!(got.len(), n);
        for (i, l) in got.iter().enumerate() {
            if i == 12_345 {
                assert_eq!(l["error"]["state"], "FAILURE", "{l}");
                assert_eq!(l["error"]["type"], "TypeError", "{l}");
            } else {
                assert_eq!(l, &json!(2 * i), "line {i} (--chunk {chunk})");
            }
        }
        let s = stats(&out);
        assert!(s["splits"].as_u64().unwrap() >= 1, "{s}");
        if chunk == "auto" {
            assert_eq!(s["first_sizes"][0], 8, "{s}");
            assert!(s["max_size"].as_u64().unwrap() >= 128, "{s}");
        } else {
            assert_eq!(s["max_size"], 7, "{s}");
        }
    }
    // An empty file: nothing sent, nothing printed, success.
    let out = map_cli(dir.path(), &conn, "celeriac.add", "\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_python_celery_worker_runs_the_chunks() {
    let Some(python) = python() else { return };
    let site = Site::redis();
    let dir = tempfile::tempdir().unwrap();
    let worker = CeleryWorker::new(&python, "pytasks")
        .args(["-Q", "py"])
        .node("py-map@localhost")
        .broker(&site.broker)
        .backend(&site.backend)
        .start(dir.path(), "python-map-worker");

    let n = 3_000;
    let mut file = String::new();
    for i in 0..n {
        if i == 2_000 {
            file.push_str("[\"a\", 1]\n");
        } else {
            file.push_str(&format!("[{i}, 1]\n"));
        }
    }
    let out = map_cli(
        dir.path(),
        &site.conn(),
        "tasks.add",
        &file,
        &["-q", "py", "--stats"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.log()
    );
    let got = lines(&out);
    assert_eq!(got.len(), n);
    for (i, l) in got.iter().enumerate() {
        if i == 2_000 {
            // Python's "a" + 1.
            assert_eq!(l["error"]["type"], "TypeError", "{l}");
        } else {
            assert_eq!(l, &json!(i + 1), "line {i}");
        }
    }
    let s = stats(&out);
    assert!(s["chunks"].as_u64().unwrap() > 1, "{s}");
    assert!(
        worker.log().contains("celery.starmap"),
        "the Python worker ran celery.starmap messages"
    );
}
