//! The `celeriac` command line, as a library: [`main`] turns any program
//! into the full CLI (`worker`, `call`, `map`, `result`, `revoke`, `dlq`,
//! `tasks`, `inspect`, `control`, `status`, `purge`, `events`, `beat`,
//! `dashboard`, `config`, `demo`),
//! serving the `#[task]`s linked into that program, as `celery -A proj`
//! does for a Python project. The `celeriac` binary is one such program.
//!
//! ```no_run
//! use celeriac::task;
//!
//! #[task(name = "proj.add")]
//! fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! fn main() {
//!     celeriac::cli::main()
//! }
//! ```
//!
//! `cargo run -- worker` then runs a worker with `proj.add` (and the
//! built-in `celeriac.*` tasks); `cargo run -- worker -P processes` runs
//! them in child processes, which re-execute the same program.
//!
//! Behind the `cli` feature (on by default).

mod banner;
mod config;
mod demo;
mod dlq;
mod events;
mod inspect;
mod logging;
mod map;
mod map_chunks;
mod parse;
mod probe;
mod purge;
mod result;
mod telemetry;
mod worker;

use parse::{parse_json_list, parse_json_object, parse_seconds, queue_name, signal_name};
use worker::{WorkerArgs, worker};

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use celeriac::escape::{Escaped, EscapedLines};
use celeriac::{Broker, Call, Registry, ResultBackend, open_backend, open_broker_for};
use clap::builder::NonEmptyStringValueParser;
use clap::{Args as ClapArgs, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::Value;

/// celeriac: parallel, concurrent and distributed task execution,
/// wire-compatible with Python Celery.
#[derive(Debug, Parser)]
#[command(name = "celeriac", version, about)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Log level: error, warn, info, debug or trace (default: info, and warn
    /// for `demo`).
    #[arg(long, short = 'l', global = true, env = "CELERIAC_LOGLEVEL")]
    loglevel: Option<String>,
    /// Log format: `text` (colours only on a terminal) or `json` (one
    /// object per line, for log collectors).
    #[arg(long, global = true, env = "CELERIAC_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, ClapArgs)]
struct Conn {
    /// Broker URL (sqlite:///path.db, redis://host:port/db, rediss://...;
    /// memory:// only for `demo`). Also CELERIAC_BROKER_URL or `broker_url`
    /// in celeriac.toml. Default: the file broker at
    /// $CELERIAC_HOME/celeriac.db or ~/.local/share/celeriac/celeriac.db.
    #[arg(long, short = 'b', global = true)]
    broker: Option<String>,
    /// Result backend URL. Also CELERIAC_RESULT_BACKEND or `result_backend`
    /// in celeriac.toml. Default: the broker's own store.
    #[arg(long, global = true)]
    result_backend: Option<String>,
    /// The configuration file. Default: celeriac.toml in the working
    /// directory, if there is one.
    #[arg(long, global = true, env = "CELERIAC_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// What celeriac.toml and the environment say (flags win).
    #[arg(skip)]
    settings: config::Settings,
    /// The configuration file read, if any.
    #[arg(skip)]
    config_file: Option<std::path::PathBuf>,
}

impl Conn {
    fn broker_url(&self) -> String {
        self.broker
            .clone()
            .or_else(|| self.settings.broker_url.clone())
            .unwrap_or_else(|| format!("sqlite://{}", celeriac::default_db_path().display()))
    }

    fn backend_url(&self) -> String {
        self.result_backend
            .clone()
            .or_else(|| self.settings.result_backend.clone())
            .unwrap_or_else(|| celeriac::default_backend_url(&self.broker_url()))
    }

    /// Reads celeriac.toml and the environment under the flags.
    fn load_settings(&mut self) -> Result<()> {
        let cwd = std::env::current_dir().context("the working directory")?;
        let (settings, file) = config::load(self.config.as_deref(), &cwd, std::env::vars())?;
        self.settings = settings;
        self.config_file = file;
        Ok(())
    }

    /// The queue for task `name`: `flag`, else its route, else `celery`.
    fn queue_for(&self, flag: Option<&str>, name: &str) -> String {
        flag.map(str::to_string)
            .or_else(|| self.settings.routes().queue_for(name).map(str::to_string))
            .unwrap_or_else(|| "celery".to_string())
    }

    fn open(&self) -> Result<(Arc<dyn Broker>, Arc<dyn ResultBackend>)> {
        let b = self.broker_url();
        // Every command here talks to another process (a worker, a client),
        // and a memory:// store lives and dies inside this one: a `call`
        // would vanish at exit and `call --wait` would wait forever.
        for (what, url) in [("broker", &b), ("result backend", &self.backend_url())] {
            if url.starts_with("memory://") {
                bail!(
                    "the {what} {url} lives inside one process, and this command \
                     talks to another one; use the default file broker (leave out \
                     --broker), sqlite:///path.db or redis://"
                );
            }
        }
        let r = self.backend_url();
        let broker = open_broker_for(&b, &r).with_context(|| format!("opening broker {b}"))?;
        let backend = open_backend(&r).with_context(|| format!("opening result backend {r}"))?;
        Ok((broker, backend))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The book's Fibonacci job in this process, on the embedded in-memory
    /// broker (memory://): results, wall time, speedup over one worker,
    /// pp's stats.
    Demo(demo::DemoArgs),
    /// Consume tasks from the broker and run them.
    Worker(WorkerArgs),
    /// Send a task; print its id, or with --wait its result as JSON.
    Call(CallArgs),
    /// Call a task once per line of a file (each line a JSON list of
    /// arguments, or an object with "args" and "kwargs"), wait for all,
    /// and print the results as JSON lines in input order.
    Map(map::MapArgs),
    /// Print a task's result as JSON (non-zero exit if it failed or is not
    /// ready).
    Result(result::ResultArgs),
    /// Revoke tasks: every celeriac worker, including ones started later,
    /// records them as REVOKED instead of running them. On Redis, Python
    /// Celery workers get Celery's own revoke broadcast too (they remember
    /// it in memory, so only those running now).
    Revoke {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// How long the revoke is remembered, in seconds.
        #[arg(long, default_value_t = 3.0 * 3600.0, value_parser = parse_seconds)]
        ttl: f64,
        /// Also stop the tasks where they are running (Celery's
        /// terminate=True): a process-pool worker kills the child.
        #[arg(long)]
        terminate: bool,
        /// With --terminate, the signal Python prefork workers send the
        /// task's process: TERM (Celery's default), KILL, INT, QUIT, HUP,
        /// USR1, USR2, ABRT or ALRM, with or without SIG. celeriac workers
        /// terminate their own way whatever the signal.
        #[arg(long, requires = "terminate", value_parser = signal_name)]
        signal: Option<String>,
    },
    /// Inspect and requeue dead letters.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Ask the workers (celeriac or Python Celery) for their state, as
    /// `celery inspect`: ping, stats, active, reserved, registered, ...
    Inspect(inspect::InspectArgs),
    /// Change running workers, as `celery control`: pool_grow,
    /// rate_limit, add_consumer, shutdown, ...
    Control(inspect::ControlArgs),
    /// List the workers that answer a ping.
    Status(inspect::StatusArgs),
    /// Delete every message waiting on queues (asks first unless -f).
    Purge(purge::PurgeArgs),
    /// Follow the workers' events (celeriac and Python Celery workers):
    /// a live view of workers, tasks by state, tasks per second and recent
    /// tasks, or `--dump` to print each event, as `celery events`.
    Events(events::EventsArgs),
    /// Print the effective configuration (flags over environment over
    /// celeriac.toml over defaults), passwords masked.
    Config,
    /// Serve a live web dashboard of the workers (celeriac and Python
    /// Celery), their queues, tasks and dead letters, with actions.
    Dashboard(celeriac_dashboard::DashboardArgs),
    /// Send periodic tasks on a schedule file, with leader election: run
    /// one on every node, and only the leader publishes each slot once;
    /// `--list` prints each entry's next run times.
    Beat(celeriac_beat::cli::BeatArgs),
    /// List the tasks this binary can run.
    Tasks {
        /// Include the diagnostic tasks.
        #[arg(long)]
        diagnostic_tasks: bool,
    },
}

/// `--secret`: shared-secret signing of task messages.
#[derive(Debug, ClapArgs)]
struct Signing {
    /// Shared secret: sign every message sent with HMAC-SHA256, and (on a
    /// worker) dead-letter messages that are unsigned or whose signature
    /// does not check. Prefer the environment variable: arguments are
    /// visible to other users in the process list.
    #[arg(long, env = "CELERIAC_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

impl Signing {
    fn secret(&self) -> Result<Option<celeriac::Secret>> {
        self.secret
            .as_deref()
            .map(celeriac::Secret::new)
            .transpose()
            .context("--secret / CELERIAC_SECRET")
    }
}

#[derive(Debug, ClapArgs)]
struct CallArgs {
    /// Task name, e.g. celeriac.add.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    name: String,
    /// Positional arguments as a JSON list.
    #[arg(long, default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    kwargs: String,
    /// Queue to send to. Default: the task's route in celeriac.toml, else
    /// `celery`.
    #[arg(long, short = 'q', value_parser = queue_name)]
    queue: Option<String>,
    /// Run no earlier than this many seconds from now. The message carries
    /// Celery's `eta` header; on Redis it goes on the queue as Celery
    /// publishes it, so Python workers run it too, and a celeriac worker
    /// keeps it in Redis until due. The embedded brokers hold it back
    /// themselves.
    #[arg(long, value_parser = parse_seconds)]
    countdown: Option<f64>,
    /// Priority 0-9 (0 is the highest on Redis and the embedded brokers).
    #[arg(long)]
    priority: Option<u8>,
    /// Run at most one task with this key (a retried submission gets the
    /// first one's result).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the result and print it as JSON.
    #[arg(long)]
    wait: bool,
    /// With --wait, give up after this many seconds (exit code 3). Default:
    /// 60 seconds after the countdown.
    #[arg(long, value_parser = parse_seconds)]
    timeout: Option<f64>,
    /// Also send Celery's task-sent event (Celery's
    /// `task_send_sent_event`), so that monitors show the task as SENT.
    #[arg(long)]
    sent_event: bool,
    #[command(flatten)]
    signing: Signing,
}

/// How long `call --wait` waits for a result by default, after the
/// countdown.
const CALL_WAIT: f64 = 60.0;

/// Runs the command line of this program (its arguments from
/// `std::env::args_os`) and exits the process with its status.
///
/// Call it as the whole of `main`: a process-pool child re-executes this
/// program, and `main` first turns such a child into a task server
/// ([`celeriac::init`]). Everything `main` does before it also runs in
/// every child.
///
/// Exit codes: 0 ok, 1 the task failed (or a worker replied with an
/// error), 2 usage or setup error, 3 timed out, 4 result not ready, 69 no
/// worker replied (as Celery).
#[allow(clippy::needless_doctest_main)] // `main` is the point of the example
pub fn main() -> ! {
    // A process pool child re-executes this binary: serve tasks and exit.
    celeriac::init();
    let code = run_args(std::env::args_os());
    std::process::exit(i32::from(code))
}

/// Runs the command line given by `args` (the first is the program's
/// name) and returns the exit status, without exiting.
///
/// [`main`] is `init` and then this; call this directly to run the CLI
/// from a program that does more around it.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    ExitCode::from(run_args(args))
}

fn run_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let parsed = command()
        .try_get_matches_from(args)
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m));
    let mut cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    logging::init(
        cli.loglevel.as_deref().unwrap_or(default_level),
        cli.log_format == "json",
    );
    // `demo` runs in memory and `tasks` only lists; neither reads a config.
    if !matches!(cli.command, Command::Demo(_) | Command::Tasks { .. })
        && let Err(e) = cli.conn.load_settings()
    {
        eprintln!("error: {}", EscapedLines(causes(&e)));
        return 2;
    }
    let code = match dispatch(cli) {
        Ok(code) => status_of(code),
        Err(e) => {
            eprintln!("error: {}", EscapedLines(causes(&e)));
            2
        }
    };
    telemetry::flush();
    code
}

/// An error and its causes, `: `-separated, each said once: many errors
/// repeat their source's text in their own, which `{:#}` would print
/// again.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The number behind an [`ExitCode`] (std keeps it opaque; every code
/// here is made from a `u8`).
fn status_of(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .unwrap_or(1)
}

/// The global flags that `demo` (in memory, its own logging default) and
/// `tasks` (a list) ignore: hidden from their help.
const IGNORED_GLOBALS: [(&str, &[&str]); 2] = [
    ("demo", &["broker", "result_backend", "config"]),
    (
        "tasks",
        &[
            "broker",
            "result_backend",
            "config",
            "loglevel",
            "log_format",
        ],
    ),
];

/// The command line, with the global flags hidden where ignored.
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    // Propagate the global flags first, then hide some copies.
    cmd.build();
    for (sub, ids) in IGNORED_GLOBALS {
        cmd = cmd.mut_subcommand(sub, |c| {
            c.mut_args(|a| {
                if ids.contains(&a.get_id().as_str()) {
                    a.hide(true)
                } else {
                    a
                }
            })
        });
    }
    cmd
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The worker's runtime. Blocking tasks run on the pools' own threads, so
/// the runtime only moves messages: on one thread its wake-ups stay on
/// that thread, which measured 10-15% more tasks/s and a quarter less
/// round-trip latency than two (BENCHMARKS.md, W1). `-P async` runs tasks
/// on the runtime itself and gets one thread per CPU.
fn worker_runtime(pool: celeriac::PoolKind) -> Result<tokio::runtime::Runtime> {
    if pool == celeriac::PoolKind::Async {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Worker(args) => worker(&cli.conn, args),
        Command::Call(args) => call(&cli.conn, args),
        Command::Map(args) => map::run(&cli.conn, args),
        Command::Result(args) => result::result(&cli.conn, args),
        Command::Dlq { command } => dlq::dlq(&cli.conn, command),
        Command::Inspect(args) => inspect::inspect(&cli.conn, args),
        Command::Control(args) => inspect::control(&cli.conn, args),
        Command::Status(args) => inspect::status(&cli.conn, args),
        Command::Purge(args) => purge::purge(&cli.conn, args),
        Command::Events(args) => events::run(&cli.conn, args),
        Command::Config => {
            let c = &cli.conn;
            let secret = std::env::var_os("CELERIAC_SECRET").is_some();
            let text = config::effective(
                &c.settings,
                &c.broker_url(),
                &c.backend_url(),
                c.config_file.as_deref(),
                secret,
            );
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(args) => runtime()?
            .block_on(celeriac_dashboard::run(
                args,
                &cli.conn.broker_url(),
                Some(&cli.conn.backend_url()),
            ))
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Beat(args) => {
            let (b, r) = (cli.conn.broker_url(), cli.conn.backend_url());
            runtime()?.block_on(celeriac_beat::cli::run(&b, &r, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke {
            ids,
            ttl,
            terminate,
            signal,
        } => {
            if !(ttl > 0.0 && ttl.is_finite()) {
                bail!("--ttl must be a positive number of seconds");
            }
            runtime()?.block_on(async {
                let (broker, _) = cli.conn.open()?;
                let ttl = Duration::from_secs_f64(ttl);
                if let Some(signal) = &signal {
                    broker
                        .revoke_terminate_with_signal(&ids, ttl, signal)
                        .await?;
                } else if terminate {
                    broker.revoke_terminate(&ids, ttl).await?;
                } else {
                    broker.revoke(&ids, ttl).await?;
                }
                for id in &ids {
                    println!("revoked {}", Escaped(id));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Tasks { diagnostic_tasks } => {
            for name in Registry::linked(diagnostic_tasks)?.names() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_outcome(meta: &celeriac::ResultMeta, whole: bool) -> ExitCode {
    if whole {
        println!("{}", serde_json::to_string(meta).unwrap_or_default());
    }
    match meta.outcome() {
        Some(Ok(v)) => {
            if !whole {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            let error = e.to_string();
            eprintln!(
                "task {} failed: {}",
                Escaped(&meta.task_id),
                Escaped(&error)
            );
            // A traceback spans lines; one that only repeats the error is
            // left out.
            if let Some(tb) = e.traceback().map(str::trim_end)
                && tb != error
            {
                eprintln!("{}", EscapedLines(tb));
            }
            ExitCode::from(1)
        }
        None => {
            eprintln!("task {} is {}", Escaped(&meta.task_id), meta.status);
            ExitCode::from(4)
        }
    }
}

fn call(conn: &Conn, mut args: CallArgs) -> Result<ExitCode> {
    let queue = conn.queue_for(args.queue.as_deref(), &args.name);
    args.queue = Some(queue.clone());
    let mut call: Call<Value> = Call::new(args.name.clone())
        .with_args(parse_json_list(&args.args)?)
        .with_kwargs(parse_json_object(&args.kwargs)?)
        .queue(queue.clone());
    if let Some(c) = args.countdown {
        if !(c >= 0.0 && c.is_finite()) {
            bail!("--countdown must be a non-negative number of seconds");
        }
        call = call.countdown(Duration::from_secs_f64(c));
    }
    if let Some(k) = &args.idempotency_key {
        call = call.idempotency_key(k.clone());
    }
    if let Some(p) = args.priority {
        if p > 9 {
            bail!("--priority must be 0-9");
        }
        call = call.priority(p);
    }
    let mut msg = call.to_message()?;
    if let Some(secret) = args.signing.secret()? {
        secret.sign(&mut msg)?;
    }
    let rt = runtime()?;
    rt.block_on(async {
        let (broker, backend) = conn.open()?;
        probe::reachable(
            &broker,
            &backend,
            &conn.broker_url(),
            &conn.backend_url(),
            &queue,
            probe::STARTUP_DEADLINE,
        )
        .await?;
        let watch = if args.wait {
            Some(backend.watch(msg.id()).await?)
        } else {
            None
        };
        broker
            .publish(celeriac::Outgoing::from_message(&msg)?)
            .await
            .context("publishing the task")?;
        if args.sent_event {
            events::send_sent(&broker, std::slice::from_ref(&msg)).await;
        }
        let Some(watch) = watch else {
            println!("{}", msg.id());
            return Ok(ExitCode::SUCCESS);
        };
        let t = args
            .timeout
            .unwrap_or(CALL_WAIT + args.countdown.unwrap_or(0.0));
        let meta = match tokio::time::timeout(Duration::from_secs_f64(t.max(0.0)), watch).await {
            Ok(r) => r?,
            Err(_) => {
                let id = msg.id();
                eprintln!(
                    "timed out after {t} s waiting for task {id} (is a worker consuming queue {:?}?); it may still run: `celeriac result {id} --wait`",
                    queue
                );
                return Ok(ExitCode::from(3));
            }
        };
        Ok(print_outcome(&meta, false))
    })
}
