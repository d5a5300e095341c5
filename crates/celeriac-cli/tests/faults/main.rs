//! The fault suite on a real Redis: each scenario starts its own private
//! `redis-server`, runs real `celeriac worker` processes, injects one
//! fault, and counts the result of every task it sent. Each asserts
//! **0 lost and 0 wrong** (every task has a SUCCESS result with the right
//! value) where Redis keeps its data, and prints, without asserting, how
//! long recovery took (timings belong in benchmarks; bounds here are
//! generous deadlines).
//!
//! | Module | Fault |
//! |---|---|
//! | `worker_kill` | `kill -9` of a worker holding tasks, default visibility timeout |
//! | `chord_kill` | `kill -9` of a worker in the middle of a 200-part chord sent by Python Celery |
//! | `redis_restart` | `redis-server` restarts mid-run, with and without persistence |
//! | `lost_reply` | the reply to a claim is lost (a proxy cuts the connection) |
//! | `reserved_queue` | a queue named like the broker's own bookkeeping keys |
//! | `result_store` | the result backend refuses writes (a Redis at its `maxmemory`) |
//! | `amqp` | on RabbitMQ: `kill -9` with prefetched messages, a RabbitMQ restart in the middle of 10,000 tasks, every connection closed by the server, a queue deleted under the worker, an hour's countdown |
//!
//! `kill -9` of a process-pool child is in `cli_process_pool.rs`
//! (`crash_and_kill_9_of_a_child_fail_one_task_each_and_the_pool_heals`), on
//! the file broker, since the child's fate does not depend on the broker.

mod amqp;
mod chord_kill;
mod lost_reply;
mod redis_restart;
mod reserved_queue;
mod result_store;
mod worker_kill;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::{Broker, Call, ResultBackend, State};
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_testkit::process::LoggedChild;
use serde_json::{Value, json};

/// The `celeriac` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// `celeriac worker` with `-c 4`, named `name`, with extra arguments.
pub(crate) fn worker(url: &str, dir: &Path, name: &str, extra: &[&str]) -> LoggedChild {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", url, "-c", "4", "-n", name])
        .args(extra);
    LoggedChild::spawn(cmd, dir, name)
}

/// Runs `celeriac` with `args` to completion.
pub(crate) fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run celeriac")
}

/// A client on one Redis: a runtime, a broker and a backend.
pub(crate) struct Client {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) backend: Arc<dyn ResultBackend>,
    /// The Redis URL (the broker's, or the result backend's).
    pub(crate) url: String,
}

impl Client {
    pub(crate) fn new(url: &str) -> Self {
        Client {
            rt: tokio::runtime::Runtime::new().unwrap(),
            broker: RedisBroker::open(url).unwrap(),
            backend: RedisBackend::open(url).unwrap(),
            url: url.to_string(),
        }
    }

    /// A client of another broker (RabbitMQ) with results in Redis.
    pub(crate) fn with_backend(broker: &str, redis: &str) -> Self {
        Client {
            rt: tokio::runtime::Runtime::new().unwrap(),
            broker: celeriac::open_broker_for(broker, redis).unwrap(),
            backend: RedisBackend::open(redis).unwrap(),
            url: redis.to_string(),
        }
    }

    /// Publishes `n` calls of `celeriac.add(i, 1000)`, `i` in `from..from + n`;
    /// returns each task id with the value it must return.
    pub(crate) fn send_adds(&self, from: i64, n: i64) -> Vec<(String, Value)> {
        let calls: Vec<Call<Value>> = (from..from + n)
            .map(|i| Call::new("celeriac.add").arg(i).arg(1000))
            .collect();
        self.publish(calls)
            .into_iter()
            .zip(from..from + n)
            .map(|(id, i)| (id, json!(i + 1000)))
            .collect()
    }

    /// Publishes `calls` in batches of 500 and returns their ids. A batch
    /// that fails (the connection dropped with a restart, and the first
    /// command after it fails fast) is sent again, for up to 30 s.
    fn publish(&self, calls: Vec<Call<Value>>) -> Vec<String> {
        let mut ids = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(500) {
            let mut batch = Vec::with_capacity(chunk.len());
            for c in chunk {
                let m = c.to_message().expect("a call encodes");
                ids.push(m.id().to_string());
                batch.push(celeriac::Outgoing::from_message(&m).expect("a message encodes"));
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = self.rt.block_on(self.broker.publish_batch(batch.clone())) {
                assert!(Instant::now() < deadline, "publish: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        ids
    }

    /// Messages waiting on `celery`.
    pub(crate) fn waiting(&self) -> usize {
        self.rt
            .block_on(self.broker.queue_len("celery"))
            .unwrap_or(usize::MAX)
    }

    /// Waits (up to a minute) until at most `n` messages wait on `celery`.
    pub(crate) fn wait_waiting_at_most(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.waiting() > n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until every task has a result or `within` passes.
    pub(crate) fn tally(&self, tasks: &[(String, Value)], within: Duration) -> Tally {
        let deadline = Instant::now() + within;
        let mut seen: HashMap<&str, Option<Value>> = HashMap::new();
        loop {
            for (id, _) in tasks {
                if seen.contains_key(id.as_str()) {
                    continue;
                }
                if let Ok(Some(meta)) = self.rt.block_on(self.backend.get(id))
                    && meta.status.is_ready()
                {
                    let value = (meta.status == State::Success).then_some(meta.result);
                    seen.insert(id, value);
                }
            }
            if seen.len() == tasks.len() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut t = Tally {
            sent: tasks.len(),
            ..Tally::default()
        };
        for (id, want) in tasks {
            match seen.get(id.as_str()) {
                None => t.lost += 1,
                Some(Some(v)) if v == want => t.done += 1,
                Some(_) => t.wrong += 1,
            }
        }
        t
    }

    /// A raw Redis command on the server.
    pub(crate) fn redis<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        self.rt.block_on(async {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            cmd.query_async(&mut c).await.unwrap()
        })
    }
}

/// What became of the tasks a scenario sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) sent: usize,
    /// SUCCESS with the right value.
    pub(crate) done: usize,
    /// No result (yet).
    pub(crate) lost: usize,
    /// A result that is not the right value (a failure, or another value).
    pub(crate) wrong: usize,
}

/// The port in a `redis://127.0.0.1:PORT/...` URL.
pub(crate) fn port_of(url: &str) -> u16 {
    url.trim_start_matches("redis://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a redis://127.0.0.1:PORT/ url")
}
