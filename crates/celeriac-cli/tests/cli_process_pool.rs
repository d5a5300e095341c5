//! `celeriac worker -P processes`: the binary re-executes itself for its
//! children. Crashes and kill -9 of a child fail one task with
//! WorkerLostError and the pool heals; hard time limits kill the child;
//! the memory limit recycles it.

use std::process::Command;
use std::time::{Duration, Instant};

use celeriac_core::{Call, ResultBackend, ResultMeta};
use celeriac_embedded::{SqliteBackend, SqliteBroker};
use celeriac_testkit::process::LoggedChild;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

struct Setup {
    dir: tempfile::TempDir,
    url: String,
    broker: std::sync::Arc<SqliteBroker>,
    backend: std::sync::Arc<SqliteBackend>,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/broker.db", dir.path().display());
        Setup {
            broker: SqliteBroker::open(&url).unwrap(),
            backend: SqliteBackend::open(&url).unwrap(),
            url,
            dir,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn worker(&self, extra: &[&str]) -> LoggedChild {
        let mut cmd = Command::new(BIN);
        cmd.args(["worker", "-P", "processes", "--diagnostic-tasks"])
            .args(["--broker", &self.url])
            .args(extra)
            .env("CELERIAC_HOME", self.dir.path())
            .env_remove("CELERIAC_BROKER_URL")
            .env_remove("CELERIAC_RESULT_BACKEND");
        LoggedChild::spawn(cmd, self.dir.path(), "worker")
    }

    fn send(&self, calls: Vec<Call<Value>>) -> Vec<String> {
        self.rt
            .block_on(celeriac_testkit::send_calls(self.broker.as_ref(), calls))
    }

    fn results(&self, ids: &[String], w: &LoggedChild) -> Vec<ResultMeta> {
        self.rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut out = Vec::new();
            for id in ids {
                loop {
                    if let Some(m) = self.backend.get(id).await.unwrap()
                        && m.status.is_ready()
                    {
                        out.push(m);
                        break;
                    }
                    assert!(Instant::now() < deadline, "no result for {id}: {}", w.log());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            out
        })
    }
}

/// Pool children of process `parent`: processes whose parent it is and
/// whose first argument marks them as children.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.first() == Some(&"Z") || fields.get(1) != Some(&parent.to_string().as_str()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("__celeriac-pool-child") {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

fn wait_children(parent: u32, n: usize, w: &LoggedChild) -> Vec<u32> {
    let t = Instant::now();
    loop {
        let c = children_of(parent);
        if c.len() == n {
            return c;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{c:?}: {}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn adds(s: &Setup, w: &LoggedChild, n: i64) {
    let ids = s.send(
        (0..n)
            .map(|i| Call::new("celeriac.add").arg(i).arg(1))
            .collect(),
    );
    for (i, m) in s.results(&ids, w).iter().enumerate() {
        assert_eq!(m.result, json!(i as i64 + 1), "{m:?}");
    }
}

#[test]
fn crash_and_kill_9_of_a_child_fail_one_task_each_and_the_pool_heals() {
    let s = Setup::new();
    let w = s.worker(&["-c", "2"]);
    let first = wait_children(w.id(), 2, &w);
    let ids = s.send(vec![Call::new("celeriac.crash")]);
    let r = s.results(&ids, &w);
    assert_eq!(r[0].result["exc_type"], "WorkerLostError", "{:?}", r[0]);
    assert!(
        r[0].result["exc_message"][0]
            .as_str()
            .unwrap()
            .contains("signal 6 (SIGABRT)"),
        "{:?}",
        r[0]
    );
    adds(&s, &w, 100);
    let healed = wait_children(w.id(), 2, &w);
    assert_ne!(healed, first, "the crashed child was replaced");

    // kill -9 of a child in the middle of a task.
    let ids = s.send(vec![Call::new("celeriac.sleep").arg(30.0)]);
    std::thread::sleep(Duration::from_millis(500));
    let busy: Vec<u32> = healed
        .iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/wchan"))
                .map(|w| w.contains("hrtimer") || w.contains("nanosleep"))
                .unwrap_or(false)
        })
        .collect();
    // Without wchan, kill both: the sleeper's child is one of them.
    let victims = if busy.len() == 1 {
        busy
    } else {
        healed.clone()
    };
    for p in &victims {
        Command::new("kill")
            .args(["-9", &p.to_string()])
            .status()
            .unwrap();
    }
    let r = s.results(&ids, &w);
    assert_eq!(r[0].result["exc_type"], "WorkerLostError", "{:?}", r[0]);
    assert!(
        r[0].result["exc_message"][0]
            .as_str()
            .unwrap()
            .contains("signal 9 (SIGKILL)"),
        "{:?}",
        r[0]
    );
    adds(&s, &w, 100);
    wait_children(w.id(), 2, &w);
}

#[test]
fn hard_time_limit_kills_the_child_and_reports_in_time() {
    let s = Setup::new();
    let w = s.worker(&["-c", "1", "--time-limit", "1"]);
    wait_children(w.id(), 1, &w);
    let start = Instant::now();
    let ids = s.send(vec![Call::new("celeriac.sleep").arg(30.0)]);
    let r = s.results(&ids, &w);
    let took = start.elapsed();
    assert_eq!(r[0].result["exc_type"], "TimeLimitExceeded", "{:?}", r[0]);
    assert!(took < Duration::from_secs(3), "{took:?}");
    adds(&s, &w, 10);
}

#[test]
fn max_memory_per_child_recycles_after_the_task() {
    let s = Setup::new();
    let w = s.worker(&["-c", "1", "--max-memory-per-child", "65536"]);
    let before = wait_children(w.id(), 1, &w);
    let ids = s.send(vec![Call::new("celeriac.alloc").arg(128).arg(0.0)]);
    let r = s.results(&ids, &w);
    assert_eq!(r[0].result, json!(128), "the task itself succeeds");
    let t = Instant::now();
    loop {
        let now = children_of(w.id());
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{now:?}: {}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(w.log().contains("max_memory_per_child"), "{}", w.log());
}

#[test]
fn revoke_terminate_kills_the_running_task_on_the_file_broker() {
    let s = Setup::new();
    let w = s.worker(&["-c", "1"]);
    wait_children(w.id(), 1, &w);
    let ids = s.send(vec![Call::new("celeriac.sleep").arg(60.0)]);
    std::thread::sleep(Duration::from_millis(700));
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["revoke", &ids[0], "--terminate", "--broker", &s.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.results(&ids, &w);
    assert_eq!(r[0].status.to_string(), "REVOKED", "{:?}", r[0]);
    assert_eq!(r[0].result["exc_type"], "TaskRevokedError");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    adds(&s, &w, 10);
}
