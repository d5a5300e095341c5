//! A private RabbitMQ node for the tests, never the machine's own on 5672.
//!
//! `scripts/test.sh` starts one node for the whole run
//! (`scripts/rabbitmq-private.sh`) and exports `CELERIAC_TEST_AMQP_URL` and
//! `CELERIAC_TEST_AMQP_DIR`. Without them (a single `cargo test`), the
//! first test in a process starts a node itself, stopped when that process
//! exits. Each test gets a vhost of its own ([`vhost_url`]), so tests
//! share no queues.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Whether RabbitMQ can be run here. Under `scripts/test.sh`
/// (`CELERIAC_REQUIRE_INTEROP=1`) its absence is a failure, not a skip.
pub fn available() -> bool {
    let ok = std::env::var_os("CELERIAC_TEST_AMQP_URL").is_some()
        || std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists();
    if !ok {
        assert!(
            std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "rabbitmq-server is required under scripts/test.sh"
        );
        eprintln!("skipped: rabbitmq-server is not installed");
    }
    ok
}

/// Starts a node with `scripts/rabbitmq-private.sh` in `dir`, stopped when
/// this process exits; its URL without a vhost. Files the script finds in
/// `dir` beforehand (`tls/` certificates, `advanced.config`) shape the node.
fn start_node(dir: &std::path::Path) -> String {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq-private.sh");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(std::process::id().to_string())
        .output()
        .expect("run scripts/rabbitmq-private.sh");
    assert!(
        out.status.success(),
        "private RabbitMQ did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!(
        "private RabbitMQ at {url} started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    url
}

/// The node's URL (no vhost) and its directory.
fn node() -> &'static (String, PathBuf) {
    static NODE: OnceLock<(String, PathBuf)> = OnceLock::new();
    NODE.get_or_init(|| {
        if let (Ok(url), Ok(dir)) = (
            std::env::var("CELERIAC_TEST_AMQP_URL"),
            std::env::var("CELERIAC_TEST_AMQP_DIR"),
        ) {
            return (url, PathBuf::from(dir));
        }
        let dir = tempfile::Builder::new()
            .prefix("celeriac-rabbit-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let url = start_node(&dir);
        (url, dir)
    })
}

/// A RabbitMQ node of one test's own, for a test that stops it or
/// configures it (the shared node serves the other tests meanwhile);
/// stopped when dropped.
#[derive(Debug)]
pub struct PrivateNode {
    /// Its URL with the vhost `t0`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl PrivateNode {
    /// Starts the node (seconds).
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts a node with Erlang terms for the `rabbit` application in its
    /// `advanced.config` (e.g. `{consumer_timeout, 3000}`).
    pub fn start_configured(rabbit_env: &str) -> Self {
        Self::start_with(|dir| {
            std::fs::write(
                dir.join("advanced.config"),
                format!("[{{rabbit, [{rabbit_env}]}}].\n"),
            )
            .expect("write advanced.config");
        })
    }

    /// Starts a node that also listens for TLS (`amqps://`) with a
    /// certificate for `127.0.0.1` signed by a CA made for it alone
    /// ([`ca_path`](Self::ca_path)).
    pub fn start_tls() -> Self {
        Self::start_with(|dir| {
            let tls = dir.join("tls");
            std::fs::create_dir_all(&tls).expect("tls dir");
            crate::tls::make_certs(&tls);
        })
    }

    fn start_with(prepare: impl FnOnce(&std::path::Path)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("celeriac-rabbit-own-")
            .tempdir()
            .expect("temp dir");
        prepare(dir.path());
        let url = format!("{}/t0", start_node(dir.path()));
        PrivateNode { url, dir }
    }

    /// The CA certificate of a [`start_tls`](Self::start_tls) node.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// `amqps://guest:guest@127.0.0.1:PORT/t0` of a
    /// [`start_tls`](Self::start_tls) node.
    pub fn tls_url(&self) -> String {
        let port = std::fs::read_to_string(self.dir.path().join("tls_port"))
            .expect("the node has no TLS listener");
        format!("amqps://guest:guest@127.0.0.1:{}/t0", port.trim())
    }

    /// Runs `rabbitmqctl` against this node.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        rabbitmqctl_in(self.dir.path(), args)
    }

    /// Restarts RabbitMQ on the node (`stop_app`, `start_app`): every
    /// connection drops; durable queues and persistent messages stay.
    pub fn restart(&self, down_for: std::time::Duration) {
        self.rabbitmqctl(&["stop_app"]);
        std::thread::sleep(down_for);
        self.rabbitmqctl(&["start_app"]);
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = Command::new(self.dir.path().join("stop")).status();
    }
}

/// The URL of a vhost no other test uses (one of the node's `t0`..`t99`,
/// claimed with a lock file in the node's directory).
pub fn vhost_url() -> String {
    let (url, dir) = node();
    let locks = dir.join("vhosts");
    std::fs::create_dir_all(&locks).expect("vhost lock dir");
    for i in 0..100 {
        let lock = locks.join(format!("t{i}"));
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            return format!("{url}/t{i}");
        }
    }
    panic!("all 100 test vhosts of the private RabbitMQ are taken");
}

/// The vhost of an `amqp://.../VHOST[?query]` URL.
fn vhost_of(url: &str) -> &str {
    url.split('?')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// `(queue, type)` of every queue of the vhost of `url` on the shared node
/// (`classic`, `quorum`).
pub fn queue_types(url: &str) -> Vec<(String, String)> {
    two_columns(&rabbitmqctl(&[
        "list_queues",
        "-p",
        vhost_of(url),
        "name",
        "type",
    ]))
}

/// `(queue, prefetch_count)` of every consumer of the vhost of `url` on
/// the shared node: the `basic.qos` RabbitMQ applies to each.
pub fn consumer_prefetch(url: &str) -> Vec<(String, String)> {
    two_columns(&rabbitmqctl(&[
        "list_consumers",
        "--no-table-headers",
        "-p",
        vhost_of(url),
        "queue_name",
        "prefetch_count",
    ]))
}

fn two_columns(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_string(), cols.next()?.to_string()))
        })
        .collect()
}

/// Runs `rabbitmqctl` against the private node (e.g. `close_all_connections`).
pub fn rabbitmqctl(args: &[&str]) -> String {
    let (_, dir) = node();
    rabbitmqctl_in(dir, args)
}

fn rabbitmqctl_in(dir: &std::path::Path, args: &[&str]) -> String {
    let name = std::fs::read_to_string(dir.join("node")).expect("node name");
    let out = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .env("HOME", dir.join("home"))
        .args(["-q", "-n", name.trim()])
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
