//! `celeriac.toml`: the settings a project keeps in a file instead of on
//! every command line, layered with the `config` crate.
//!
//! Precedence: flags > environment > file > defaults. The file is
//! `celeriac.toml` in the working directory, or the one `--config` /
//! `CELERIAC_CONFIG` names (which must then exist). Each key has one
//! environment variable: `CELERIAC_` and the key's path in capitals with
//! `_` for `.`, e.g. `CELERIAC_BROKER_URL`, `CELERIAC_WORKER_CONCURRENCY`.
//! An unknown key or a bad value is an error that names the key and where
//! it came from.
//!
//! ```toml
//! broker_url = "redis://localhost:6379/0"
//! result_backend = "redis://localhost:6379/1"
//!
//! [worker]
//! pool = "processes"        # threads, processes (prefork) or async
//! concurrency = 8
//! prefetch_multiplier = 1
//! queues = ["celery", "emails"]
//! time_limit = 300          # seconds; the child is killed
//! soft_time_limit = 240     # seconds; the task is cancelled
//! track_started = true      # store STARTED when a task starts
//!
//! [routes]                  # task name or glob -> queue (for call and map)
//! "proj.send_email" = "emails"
//! "proj.reports.*" = "reports"
//!
//! [rate_limits]             # task name -> rate, as --rate-limit
//! "proj.send_email" = "10/s"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use config::{ConfigError, Map, Source, Value, ValueKind};
use serde::{Deserialize, Serialize};

/// The file looked for in the working directory.
pub(crate) const FILE_NAME: &str = "celeriac.toml";

/// What `celeriac.toml` and the environment hold, before flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// The broker URL.
    pub(crate) broker_url: Option<String>,
    /// The result backend URL.
    pub(crate) result_backend: Option<String>,
    /// `celeriac worker`'s settings.
    pub(crate) worker: WorkerSettings,
    /// Task name (or glob with `*`) to queue, for `call` and `map`.
    pub(crate) routes: BTreeMap<String, String>,
    /// Task name to rate (`10/s`, `100/m`, `20/s/w`).
    pub(crate) rate_limits: BTreeMap<String, String>,
}

/// The `[worker]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WorkerSettings {
    /// threads, processes (prefork) or async.
    pub(crate) pool: Option<String>,
    /// Execution slots.
    pub(crate) concurrency: Option<usize>,
    /// Messages reserved per slot.
    pub(crate) prefetch_multiplier: Option<usize>,
    /// Queues consumed, in priority order.
    pub(crate) queues: Option<Vec<String>>,
    /// Default hard time limit, seconds.
    pub(crate) time_limit: Option<f64>,
    /// Default soft time limit, seconds.
    pub(crate) soft_time_limit: Option<f64>,
    /// Store STARTED for every task (Celery's `task_track_started`).
    pub(crate) track_started: Option<bool>,
    /// Process pool: retire a child after this many tasks.
    pub(crate) max_tasks_per_child: Option<u64>,
    /// Process pool: retire a child above this many KiB of memory.
    pub(crate) max_memory_per_child: Option<u64>,
}

/// Every key an environment variable can set, with its variable.
const ENV_KEYS: &[&str] = &[
    "broker_url",
    "result_backend",
    "worker.pool",
    "worker.concurrency",
    "worker.prefetch_multiplier",
    "worker.queues",
    "worker.time_limit",
    "worker.soft_time_limit",
    "worker.track_started",
    "worker.max_tasks_per_child",
    "worker.max_memory_per_child",
];

/// The environment variable of `key`.
pub(crate) fn env_var(key: &str) -> String {
    format!("CELERIAC_{}", key.replace('.', "_").to_uppercase())
}

/// The environment layer: the variables of [`ENV_KEYS`] that are set
/// (from `vars`), each under its key, its origin naming the variable. Other
/// `CELERIAC_*` variables are not settings and are left alone.
#[derive(Debug, Clone)]
struct EnvLayer {
    vars: Vec<(String, String)>,
}

impl Source for EnvLayer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, ConfigError> {
        let mut worker = Map::new();
        let mut top = Map::new();
        for key in ENV_KEYS {
            let var = env_var(key);
            let Some((_, raw)) = self.vars.iter().find(|(k, _)| *k == var) else {
                continue;
            };
            let origin = format!("environment variable {var}");
            let kind = if *key == "worker.queues" {
                ValueKind::Array(
                    raw.split(',')
                        .map(|q| Value::new(Some(&origin), q.trim().to_string()))
                        .collect(),
                )
            } else {
                ValueKind::String(raw.clone())
            };
            let value = Value::new(Some(&origin), kind);
            match key.strip_prefix("worker.") {
                Some(k) => worker.insert(k.to_string(), value),
                None => top.insert(key.to_string(), value),
            };
        }
        if !worker.is_empty() {
            top.insert("worker".into(), Value::new(None, ValueKind::Table(worker)));
        }
        Ok(top)
    }
}

/// Which file to read: `explicit` (`--config` or `CELERIAC_CONFIG`), which
/// must exist, or `celeriac.toml` in `cwd` if there is one.
fn file_to_read(explicit: Option<&Path>, cwd: &Path) -> Result<Option<PathBuf>> {
    match explicit {
        Some(p) if p.is_file() => Ok(Some(p.to_path_buf())),
        Some(p) => bail!("the config file {} does not exist", p.display()),
        None => {
            let p = cwd.join(FILE_NAME);
            Ok(p.is_file().then_some(p))
        }
    }
}

/// Reads the settings: the file (see [`file_to_read`]) under the
/// environment `vars`. Returns them with the file read, if any.
pub(crate) fn load(
    explicit: Option<&Path>,
    cwd: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(Settings, Option<PathBuf>)> {
    let file = file_to_read(explicit, cwd)?;
    let mut builder = config::Config::builder();
    if let Some(path) = &file {
        builder = builder.add_source(
            config::File::from(path.as_path())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let vars = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("CELERIAC_"))
        .collect();
    builder = builder.add_source(EnvLayer { vars });
    let where_ = file.as_ref().map_or_else(
        || "the environment".to_string(),
        |p| p.display().to_string(),
    );
    let layered = builder
        .build()
        .with_context(|| format!("reading the configuration ({where_})"))?;
    let settings: Settings = layered
        .try_deserialize()
        .map_err(anyhow::Error::new)
        .with_context(|| format!("bad configuration ({where_})"))?;
    settings.check()?;
    Ok((settings, file))
}

impl Settings {
    /// Values the types let through but celeriac refuses; the error names
    /// the key.
    fn check(&self) -> Result<()> {
        let w = &self.worker;
        if let Some(p) = &w.pool {
            p.parse::<celeriac::PoolKind>()
                .map_err(|e| anyhow::anyhow!("worker.pool: {e}"))?;
        }
        if w.concurrency == Some(0) {
            bail!("worker.concurrency must be at least 1");
        }
        if w.prefetch_multiplier == Some(0) {
            bail!("worker.prefetch_multiplier must be at least 1");
        }
        for (key, v) in [
            ("worker.time_limit", w.time_limit),
            ("worker.soft_time_limit", w.soft_time_limit),
        ] {
            if let Some(s) = v
                && !(s.is_finite() && s > 0.0)
            {
                bail!("{key} must be a positive number of seconds, got {s}");
            }
        }
        for q in w.queues.iter().flatten() {
            celeriac::validate_queue_name(q).map_err(|e| anyhow::anyhow!("worker.queues: {e}"))?;
        }
        for (task, q) in &self.routes {
            celeriac::validate_queue_name(q)
                .map_err(|e| anyhow::anyhow!("routes.\"{task}\": {e}"))?;
        }
        for (task, rate) in &self.rate_limits {
            rate.parse::<celeriac::RateLimit>()
                .map_err(|e| anyhow::anyhow!("rate_limits.\"{task}\": {e}"))?;
        }
        for (key, url) in [
            ("broker_url", &self.broker_url),
            ("result_backend", &self.result_backend),
        ] {
            if url.as_deref().is_some_and(|u| !u.contains("://")) {
                bail!("{key} must be a URL such as redis://host:6379/0, got {url:?}");
            }
        }
        Ok(())
    }

    /// The routes, most specific first: exact names, then globs by
    /// length.
    pub(crate) fn routes(&self) -> celeriac::Routes {
        let mut rules: Vec<(&String, &String)> = self.routes.iter().collect();
        rules.sort_by_key(|(p, _)| (p.contains('*'), std::cmp::Reverse(p.len())));
        rules
            .into_iter()
            .fold(celeriac::Routes::new(), |r, (p, q)| r.route(p, q))
    }
}

/// The effective configuration as TOML, secrets masked: `broker` and
/// `backend` are the URLs in force (after flags), `file` the file read.
pub(crate) fn effective(
    s: &Settings,
    broker: &str,
    backend: &str,
    file: Option<&Path>,
    secret_set: bool,
) -> String {
    fn q(v: &str) -> String {
        serde_json::Value::from(v).to_string()
    }
    let w = &s.worker;
    let pool = w.pool.as_deref().unwrap_or("threads");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrency = w
        .concurrency
        .unwrap_or(if pool == "async" { 100 } else { cpus });
    let queues: Vec<String> = w
        .queues
        .clone()
        .unwrap_or_else(|| vec!["celery".into()])
        .iter()
        .map(|x| q(x))
        .collect();
    let secs = |key: &str, v: Option<f64>| match v {
        Some(s) => format!("{key} = {s}\n"),
        None => format!("# {key}: none\n"),
    };
    let mut out = format!(
        "# file: {}\n",
        file.map_or_else(|| "none".to_string(), |p| p.display().to_string())
    );
    out += &format!("broker_url = {}\n", q(&super::probe::masked(broker)));
    out += &format!("result_backend = {}\n", q(&super::probe::masked(backend)));
    if secret_set {
        out += "# secret: set by CELERIAC_SECRET (not shown)\n";
    }
    out += &format!(
        "\n[worker]\npool = {}\nconcurrency = {concurrency}\n",
        q(pool)
    );
    out += &format!(
        "prefetch_multiplier = {}\nqueues = [{}]\n",
        w.prefetch_multiplier
            .unwrap_or(celeriac::DEFAULT_PREFETCH_MULTIPLIER),
        queues.join(", ")
    );
    out += &secs("time_limit", w.time_limit);
    out += &secs("soft_time_limit", w.soft_time_limit);
    out += &format!("track_started = {}\n", w.track_started.unwrap_or(false));
    if let Some(n) = w.max_tasks_per_child {
        out += &format!("max_tasks_per_child = {n}\n");
    }
    if let Some(n) = w.max_memory_per_child {
        out += &format!("max_memory_per_child = {n}\n");
    }
    for (table, map) in [("routes", &s.routes), ("rate_limits", &s.rate_limits)] {
        out += &format!("\n[{table}]\n");
        for (k, v) in map {
            out += &format!("{} = {}\n", q(k), q(v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn dir_with(toml: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), toml).unwrap();
        d
    }

    #[test]
    fn environment_wins_over_the_file_and_the_file_over_defaults() {
        let d = dir_with(
            "broker_url = \"redis://file:6379/0\"\n[worker]\nconcurrency = 3\nprefetch_multiplier = 2\n",
        );
        let (s, file) = load(
            None,
            d.path(),
            vars(&[
                ("CELERIAC_WORKER_CONCURRENCY", "7"),
                ("CELERIAC_SECRET", "not a setting"),
                ("CELERIAC_WORKER_QUEUES", "a, b"),
            ]),
        )
        .unwrap();
        assert_eq!(file.unwrap(), d.path().join(FILE_NAME));
        assert_eq!(s.broker_url.as_deref(), Some("redis://file:6379/0"));
        assert_eq!(s.worker.concurrency, Some(7));
        assert_eq!(s.worker.prefetch_multiplier, Some(2));
        assert_eq!(s.worker.queues, Some(vec!["a".into(), "b".into()]));
        assert_eq!(s.worker.pool, None);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let d = dir_with("[worker]\nconcurency = 3\n");
        let e = format!("{:#}", load(None, d.path(), vars(&[])).unwrap_err());
        assert!(e.contains("concurency"), "{e}");
        let d = dir_with("brokr_url = \"redis://x\"\n");
        let e = format!("{:#}", load(None, d.path(), vars(&[])).unwrap_err());
        assert!(e.contains("brokr_url"), "{e}");
    }

    #[test]
    fn a_bad_value_is_named_with_its_origin() {
        let d = dir_with("[worker]\nconcurrency = \"many\"\n");
        let e = format!("{:#}", load(None, d.path(), vars(&[])).unwrap_err());
        assert!(e.contains("worker.concurrency"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            load(
                None,
                d.path(),
                vars(&[("CELERIAC_WORKER_CONCURRENCY", "x")])
            )
            .unwrap_err()
        );
        assert!(e.contains("CELERIAC_WORKER_CONCURRENCY"), "{e}");
        for (toml, key) in [
            ("[worker]\npool = \"gevent\"\n", "worker.pool"),
            ("[worker]\ntime_limit = -1\n", "worker.time_limit"),
            ("[rate_limits]\n\"a.b\" = \"fast\"\n", "rate_limits.\"a.b\""),
            ("[routes]\n\"a.b\" = \"\"\n", "routes.\"a.b\""),
        ] {
            let d = dir_with(toml);
            let e = format!("{:#}", load(None, d.path(), vars(&[])).unwrap_err());
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn an_explicit_file_must_exist_and_no_file_is_fine() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.toml");
        let e = format!(
            "{:#}",
            load(Some(&missing), d.path(), vars(&[])).unwrap_err()
        );
        assert!(e.contains("nope.toml"), "{e}");
        let (s, file) = load(None, d.path(), vars(&[])).unwrap();
        assert!(file.is_none());
        assert!(s.broker_url.is_none());
    }

    #[test]
    fn exact_routes_come_before_globs() {
        let d =
            dir_with("[routes]\n\"p.*\" = \"wide\"\n\"p.a\" = \"exact\"\n\"p.b*\" = \"narrow\"\n");
        let (s, _) = load(None, d.path(), vars(&[])).unwrap();
        let r = s.routes();
        assert_eq!(r.queue_for("p.a"), Some("exact"));
        assert_eq!(r.queue_for("p.bx"), Some("narrow"));
        assert_eq!(r.queue_for("p.c"), Some("wide"));
        assert_eq!(r.queue_for("q"), None);
    }
}
