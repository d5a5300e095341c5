//! The Python side of the interop tests: the interpreter with Celery that
//! `scripts/test.sh` names in `CELERIAC_TEST_PYTHON`, and the scripts of
//! `tests/python/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::LoggedChild;
use crate::redis_server::RedisServer;

/// The Python interpreter with Celery, or `None` (with a note) when the
/// interop environment is not set up or `redis-server` is missing. Under
/// `scripts/test.sh` (`CELERIAC_REQUIRE_INTEROP=1`) a missing interpreter
/// is a failure, not a skip.
pub fn interop_python() -> Option<String> {
    match std::env::var("CELERIAC_TEST_PYTHON") {
        Ok(p) if RedisServer::available() => Some(p),
        Ok(_) => None,
        Err(_) if std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("CELERIAC_TEST_PYTHON must be set")
        }
        Err(_) => {
            eprintln!("skipped: run scripts/test.sh to set up the Celery venv");
            None
        }
    }
}

/// `tests/python/` of the repository.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
}

/// A real Python `celery worker` of one of `tests/python/`'s apps, built up
/// the way the interop tests need it and started with its log in a file
/// ([`LoggedChild`]).
///
/// The defaults are the ones most tests want: `-P solo`, `--loglevel
/// INFO`, node `py@localhost`, run in `tests/python/` with it on
/// `PYTHONPATH`. The apps read their broker and result backend from
/// `BROKER` and `BACKEND`.
///
/// ```no_run
/// use celeriac_testkit::python::CeleryWorker;
/// let worker = CeleryWorker::new("python3", "pytasks")
///     .broker("redis://127.0.0.1:6390/0")
///     .args(["-Q", "py"])
///     .start(&std::env::temp_dir(), "python-worker");
/// ```
#[derive(Debug)]
pub struct CeleryWorker {
    python: String,
    app: String,
    pool: Vec<String>,
    node: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl CeleryWorker {
    /// A worker of app `app` (a module of `tests/python/`) run by the
    /// interpreter `python`.
    pub fn new(python: &str, app: &str) -> Self {
        CeleryWorker {
            python: python.to_string(),
            app: app.to_string(),
            pool: vec!["solo".to_string()],
            node: "py@localhost".to_string(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The pool arguments after `-P` (`["solo"]` by default; e.g.
    /// `["threads", "-c", "2"]`).
    pub fn pool<I, S>(mut self, pool: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pool = pool.into_iter().map(Into::into).collect();
        self
    }

    /// The node name (`-n`; `py@localhost` by default).
    pub fn node(mut self, node: &str) -> Self {
        self.node = node.to_string();
        self
    }

    /// More command-line arguments (`-Q`, `-E`, `--without-mingle`, ...).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The broker URL (`BROKER`).
    pub fn broker(self, url: &str) -> Self {
        self.env("BROKER", url)
    }

    /// The result backend URL (`BACKEND`).
    pub fn backend(self, url: &str) -> Self {
        self.env("BACKEND", url)
    }

    /// An environment variable of the worker.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The command this worker runs.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "celery", "-A", &self.app, "worker", "-P"])
            .args(&self.pool)
            .args(["--loglevel", "INFO", "-n", &self.node])
            .args(&self.args)
            .current_dir(python_dir())
            .env("PYTHONPATH", python_dir());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns the worker, its log in `dir` under a name starting with
    /// `name`, without waiting for it to be ready.
    pub fn spawn(&self, dir: &Path, name: &str) -> LoggedChild {
        LoggedChild::spawn(self.command(), dir, name)
    }

    /// Spawns the worker and waits (up to 30 s) until it logs that it is
    /// ready; panics with its log if it does not.
    pub fn start(&self, dir: &Path, name: &str) -> LoggedChild {
        let worker = self.spawn(dir, name);
        let log = worker.wait_for_log(" ready.");
        assert!(
            log.contains(" ready."),
            "the Python worker did not start:\n{log}"
        );
        worker
    }
}
