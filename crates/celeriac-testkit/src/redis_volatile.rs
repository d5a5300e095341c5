//! A private `redis-server` **without persistence**: no append-only file
//! and no snapshots, so a restart starts it empty. That is Redis's own
//! promise for such a server, and what a fault test compares against
//! [`RedisServer`](crate::redis_server::RedisServer), which keeps its data
//! across a restart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private `redis-server` that keeps nothing across a restart.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use celeriac_testkit::redis_volatile::VolatileRedis;
///
/// let mut redis = VolatileRedis::start();
/// let url = redis.url("");
/// redis.restart(Duration::from_millis(500)); // comes back empty
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct VolatileRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl VolatileRedis {
    /// Starts a server on a free loopback port and waits until it accepts
    /// connections.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind a free port")
            .local_addr()
            .expect("local address")
            .port();
        let mut r = VolatileRedis {
            port,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (everything it held is gone), waits `down_for`,
    /// and starts it again, empty, on the same port.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0` followed by `query`.
    pub fn url(&self, query: &str) -> String {
        format!("redis://127.0.0.1:{}/0{query}", self.port)
    }
}

impl Drop for VolatileRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
