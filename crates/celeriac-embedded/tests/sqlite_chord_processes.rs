//! A chord joined in one SQLite file by several processes at once: each
//! process returns its share of the header parts (some of them twice, as a
//! redelivery would), and exactly one process, in all, learns that the
//! chord is complete, with every part once.
//!
//! The processes are this test binary run again with `CHORD_CHILD` set,
//! which makes [`child`] do a child's share instead of nothing.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::ResultBackend;
use celeriac_embedded::SqliteBackend;
use celeriac_testkit::chord_join::{fresh_group, join, part};
use serde_json::{Value, json};

const PROCESSES: u64 = 4;
const PARTS: u64 = 120;

/// A child's share: `CHORD_CHILD` = `url|group|k|go-file`. It waits for the
/// go file, then returns parts `k, k + PROCESSES, ...`, and every one of
/// its parts divisible by 3 a second time, all at once, and prints
/// `WON <parts as JSON>` if it completed the chord.
#[test]
fn child() {
    let Ok(spec) = std::env::var("CHORD_CHILD") else {
        return;
    };
    let fields: Vec<&str> = spec.split('|').collect();
    let [url, group, k, go] = fields[..] else {
        panic!("bad CHORD_CHILD {spec:?}")
    };
    let k: u64 = k.parse().unwrap();
    let backend: Arc<dyn ResultBackend> = SqliteBackend::open(url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(go).exists() {
        assert!(Instant::now() < deadline, "no go file");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let won = rt.block_on(async {
        let mine: Vec<u64> = (k..PARTS).step_by(PROCESSES as usize).collect();
        let again = mine.iter().copied().filter(|i| i % 3 == 0);
        let mut tasks = Vec::new();
        for i in mine.iter().copied().chain(again) {
            let b = backend.clone();
            let group = group.to_string();
            tasks.push(tokio::spawn(async move {
                join(&*b)
                    .part_return(&group, &format!("h{i}"), Some(i), &part(i, json!(i)))
                    .await
                    .unwrap()
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            won.extend(t.await.unwrap());
        }
        won
    });
    for parts in won {
        println!("WON {}", Value::Array(parts));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_joining_one_chord_make_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/chord.db", dir.path().display());
    let backend = SqliteBackend::open(&url).unwrap();
    let group = fresh_group();
    join(&*backend).set_size(&group, PARTS).await.unwrap();
    let go = dir.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|k| {
            Command::new(&exe)
                .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
                .env("CHORD_CHILD", format!("{url}|{group}|{k}|{}", go.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every child has opened the file before any returns a part.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&go, b"").unwrap();
    let mut winners = Vec::new();
    let mut outputs = String::new();
    for c in children {
        let out = tokio::task::spawn_blocking(move || c.wait_with_output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        outputs.push_str(&stdout);
        assert!(
            out.status.success(),
            "a child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in stdout.lines() {
            // libtest prints `test child ... ` on the same line first.
            if let Some((_, parts)) = line.split_once("WON ") {
                winners.push(serde_json::from_str::<Vec<Value>>(parts).unwrap());
            }
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one winner among the processes:\n{outputs}"
    );
    let ids: Vec<u64> = winners[0].iter().map(|p| p[3].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        (0..PARTS).collect::<Vec<_>>(),
        "every part once, in group_index order"
    );
    // A redelivered part after the winner finished triggers nothing.
    join(&*backend).finish(&group).await.unwrap();
    let late = join(&*backend)
        .part_return(&group, "h0", Some(0), &part(0, json!(0)))
        .await
        .unwrap();
    assert_eq!(late, None);
}
