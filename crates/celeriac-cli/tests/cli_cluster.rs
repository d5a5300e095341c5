//! pp's cluster in practice, on a private Redis: a [`Server`] with remote
//! `celeriac worker` nodes (pp's ppservers). The five features the book
//! sells pp on, end to end: a node started later is discovered and takes
//! work, nodes resize at runtime and their share follows, a node killed
//! with SIGKILL loses no job, and `print_stats` shows each node's jobs.
//! Then pp's shared secret, the celeriac way: a Redis ACL user with a
//! password, TLS, and signed messages.

mod cluster_nodes;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_nodes::{jobs_of, node, wait_for_node};

use celeriac::prelude::*;
use celeriac::{Call, Job, Message, Secret, Server};
use celeriac_redis::RedisBroker;
use celeriac_testkit::redis_server::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

fn sleeps(server: &Server, n: usize, secs: f64) -> Vec<Job<serde_json::Value>> {
    (0..n)
        .map(|_| server.submit(Call::new("celeriac.sleep").arg(secs)))
        .collect()
}

fn wait_all(jobs: &[Job<serde_json::Value>]) {
    for j in jobs {
        j.wait_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("job {} lost: {e}", j.id()));
    }
}

#[test]
fn nodes_join_take_work_resize_and_a_kill_9_loses_no_job() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    // A short visibility timeout: a dead node's jobs come back in 2 s.
    let url = redis.url("?visibility_timeout=2");
    let logs = tempfile::tempdir().unwrap();
    // pp's Server(ncpus=0, ppservers=...): every job runs on a remote node.
    let server = Server::builder().broker(&url).workers(0).build().unwrap();
    let (a, b) = ("node-a@cluster", "node-b@cluster");
    let _node_a = node(&url, logs.path(), a, 1, None);
    wait_for_node(&server, a, 1);

    // Auto-discovery: a node started later shows within 2 s of its start.
    let mut node_b = node(&url, logs.path(), b, 1, None);
    let seen_after = wait_for_node(&server, b, 1);
    assert!(
        seen_after < Duration::from_secs(2),
        "{b} showed in active_nodes() {seen_after:?} after its start"
    );

    // ... and takes work: both nodes run jobs of one batch.
    wait_all(&sleeps(&server, 12, 0.1));
    let (a1, b1) = (jobs_of(&server, a), jobs_of(&server, b));
    assert_eq!(a1 + b1, 12);
    assert!(a1 > 0 && b1 > 0, "both nodes took work: a {a1}, b {b1}");

    // Workers changeable at runtime: node b grows to 3 and takes the
    // larger share of the next batch.
    server.set_node_workers(b, 3).unwrap();
    wait_for_node(&server, b, 3);
    wait_all(&sleeps(&server, 24, 0.1));
    let (a2, b2) = (jobs_of(&server, a) - a1, jobs_of(&server, b) - b1);
    assert_eq!(a2 + b2, 24);
    assert!(
        b2 > a2,
        "with 3 workers against 1, node b ran more: a {a2}, b {b2}"
    );

    // Fault tolerance: kill -9 node b while it holds jobs; every job still
    // finishes (node a runs what b held, once its lease lapses).
    let batch = sleeps(&server, 16, 0.3);
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs_of(&server, b) == b1 + b2 {
        assert!(Instant::now() < deadline, "node b never ran the batch");
        std::thread::sleep(Duration::from_millis(20));
    }
    node_b.child.kill().unwrap(); // SIGKILL
    node_b.child.wait().unwrap();
    wait_all(&batch);
    let total = jobs_of(&server, a) + jobs_of(&server, b);
    assert_eq!(
        total,
        12 + 24 + 16,
        "every job of every batch finished once"
    );

    // print_stats: one line per node with its job count.
    server.print_stats();
    let shown = server.stats().to_string();
    for n in [a, b] {
        let line = shown
            .lines()
            .find(|l| l.ends_with(n))
            .unwrap_or_else(|| panic!("{n} missing from print_stats:\n{shown}"));
        let count: u64 = line.split('|').next().unwrap().trim().parse().unwrap();
        assert_eq!(count, jobs_of(&server, n), "{line}");
    }
}

/// Redis ACLs over TLS: `user` may log in with `password`; the default
/// (passwordless) user is switched off.
fn lock_down(redis: &RedisServer, user: &str, password: &str) {
    let admin = format!("rediss://127.0.0.1:{}/#insecure", redis.port());
    let mut conn = redis::Client::open(admin)
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            user,
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ])
        .exec(&mut conn)
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"])
        .exec(&mut conn)
        .unwrap();
}

#[test]
fn nodes_authenticate_with_an_acl_user_over_tls_and_run_only_signed_jobs() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start_tls();
    lock_down(&redis, "cluster", "n0de-pass");
    let ca = redis.ca_path();
    let query = format!("?ssl_ca_certs={}", ca.display());
    let url = redis
        .tls_url(&query)
        .replace("rediss://", "rediss://cluster:n0de-pass@");
    let logs = tempfile::tempdir().unwrap();

    // A node with the password and the secret runs the signed jobs.
    let secret = "the cluster's shared secret";
    let _node = node(&url, logs.path(), "signed@cluster", 2, Some(secret));
    let server = Server::builder()
        .broker(&url)
        .workers(0)
        .secret(Secret::new(secret).unwrap())
        .build()
        .unwrap();
    wait_for_node(&server, "signed@cluster", 2);
    let job = server.submit(celeriac::builtins::fib::call(20));
    assert_eq!(job.wait_timeout(Duration::from_secs(60)).unwrap(), 6765);
    assert_eq!(jobs_of(&server, "signed@cluster"), 1);

    // A node with a wrong password, or none, is refused by Redis: the
    // worker exits, and the broker's error says why.
    let port = redis.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (bad, why) in [
        (url.replace("n0de-pass", "wrong"), "authentication failed"),
        (format!("rediss://127.0.0.1:{port}/0{query}"), "noauth"),
    ] {
        let out = Command::new(BIN)
            .args(["worker", "--broker", &bad, "-n", "intruder@cluster"])
            .env_remove("CELERIAC_SECRET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a worker logged in with {bad}: {err}"
        );
        // The worker names the cause, not just a silence.
        assert!(err.to_lowercase().contains(why), "{bad}: {err}");
        let refused = rt
            .block_on(RedisBroker::open(&bad).unwrap().queue_len("celery"))
            .unwrap_err()
            .to_string();
        assert!(refused.to_lowercase().contains(why), "{bad}: {refused}");
    }
    // Plain TCP to the TLS port is no way in either.
    let plain = Command::new(BIN)
        .args([
            "worker",
            "--broker",
            &url.replace("rediss://", "redis://").replace(&query, ""),
        ])
        .env_remove("CELERIAC_SECRET")
        .output()
        .unwrap();
    assert!(!plain.status.success());

    // A client with the password but not the secret: its job is refused
    // (dead-lettered, never run) by the node.
    let unsigned = Server::builder().broker(&url).workers(0).build().unwrap();
    let forged = unsigned.submit(celeriac::builtins::fib::call(10));
    let broker = RedisBroker::open(&url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let dead = rt.block_on(broker.dead_letters(100)).unwrap();
        if let Some(d) = dead
            .iter()
            .find(|d| Message::decode(&d.payload).is_ok_and(|m| m.id() == forged.id()))
        {
            break d.reason.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the unsigned job was not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        reason.contains("signature") || reason.contains("unsigned"),
        "{reason}"
    );
    assert!(!forged.ready(), "the unsigned job never ran");
    assert_eq!(jobs_of(&server, "signed@cluster"), 1);
}
