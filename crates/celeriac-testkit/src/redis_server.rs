//! A private `redis-server` for one test: a free loopback port, its own data
//! directory with an append-only file (so a restart keeps the data, as a
//! production Redis would), stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// With an append-only file (the default), or without any persistence
    /// ([`RedisServer::start_volatile`]).
    persistent: bool,
    /// Serving TLS only ([`RedisServer::start_tls`]).
    tls: bool,
}

impl RedisServer {
    /// Whether `redis-server` can be run here. Under `scripts/test.sh`
    /// (`CELERIAC_REQUIRE_INTEROP=1`) its absence is a failure, not a skip.
    pub fn available() -> bool {
        let ok = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        if !ok {
            assert!(
                std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() != Ok("1"),
                "redis-server is required under scripts/test.sh"
            );
            eprintln!("skipped: redis-server is not installed");
        }
        ok
    }

    /// Starts a server on a free port and waits until it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server **without persistence** (no append-only file, no
    /// snapshots): a restart brings it back empty. That is Redis's own
    /// promise for such a server, which a fault test compares against.
    pub fn start_volatile() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that speaks **only TLS** on its port, with a CA and a
    /// server certificate for `127.0.0.1` made by `openssl` for this server
    /// alone ([`ca_path`](Self::ca_path)). Clients need no certificate.
    pub fn start_tls() -> Self {
        let mut r = Self::unstarted(false);
        r.tls = true;
        crate::tls::make_certs(r.dir.path());
        r.spawn();
        r
    }

    /// The CA certificate (PEM) that signed a [`start_tls`](Self::start_tls)
    /// server's certificate.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `rediss://127.0.0.1:PORT/0` followed by `query`, for a
    /// [`start_tls`](Self::start_tls) server.
    pub fn tls_url(&self, query: &str) -> String {
        format!("rediss://127.0.0.1:{}/0{query}", self.port)
    }

    fn start_with(persistent: bool) -> Self {
        let mut r = Self::unstarted(persistent);
        r.spawn();
        r
    }

    fn unstarted(persistent: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind a free port")
            .local_addr()
            .expect("local address")
            .port();
        RedisServer {
            port,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
            persistent,
            tls: false,
        }
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let listen: Vec<&str> = if self.tls {
            vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.pem",
                "--tls-auth-clients",
                "no",
            ]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(listen)
            .current_dir(self.dir.path())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
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

    /// Stops the server (SIGTERM: it flushes its append-only file), waits
    /// `down_for`, and starts it again on the same port and data (empty,
    /// for a server started with [`start_volatile`](Self::start_volatile)).
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0` followed by `query` (e.g. `?visibility_timeout=2`).
    pub fn url(&self, query: &str) -> String {
        format!("redis://127.0.0.1:{}/0{query}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
