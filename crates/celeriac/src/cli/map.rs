//! `celeriac map NAME --args-file FILE`: one call of a task per line of a
//! file, all submitted, then waited for; the results come out as JSON
//! lines in the order of the input, with a progress bar on a terminal.
//!
//! Each non-blank line of the file is one call:
//!
//! - a JSON list: the positional arguments (`[2, 3]`);
//! - or a JSON object with `"args"` (a list) and/or `"kwargs"` (an
//!   object): `{"args": [2], "kwargs": {"y": 3}}`.
//!
//! Blank lines are skipped. A line that is neither is an error before
//! anything is sent. Each output line is the task's result (JSON), or for
//! a task that failed or was revoked
//! `{"error": {"state", "type", "message", "task_id"}}`.
//!
//! `--chunk auto` (the default) sends the calls as Celery `celery.starmap`
//! chunks sized adaptively ([`celeriac::automap`]); `--chunk N` as chunks
//! of N; `--chunk 1` one message per call. Chunks carry positional
//! arguments only: with `--chunk auto`, a file where some line has
//! keyword arguments is sent one message per call. A failed item in a
//! chunk has `"task_id": null` (its chunk was split to find it; see
//! [`celeriac::automap`]).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use celeriac::automap::ChunkSize;
use celeriac::{Call, Message, ResultMeta};
use clap::Args as ClapArgs;
use clap::builder::NonEmptyStringValueParser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::cli::parse::{exact_integers, parse_seconds, queue_name};
use crate::cli::{Conn, Signing, probe};

/// How many calls are published (and watched) in one round trip.
const BATCH: usize = 500;

/// Arguments of `celeriac map`.
#[derive(Debug, ClapArgs)]
pub(crate) struct MapArgs {
    /// Task name, e.g. celeriac.add.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    name: String,
    /// The calls, one per line: a JSON list of arguments, or an object
    /// with "args" and "kwargs". `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    args_file: PathBuf,
    /// Queue to send to. Default: the task's route in celeriac.toml, else
    /// `celery`.
    #[arg(long, short = 'q', value_parser = queue_name)]
    queue: Option<String>,
    /// Give up waiting after this many seconds: the calls not finished by
    /// then are printed as errors of state PENDING (exit code 3).
    #[arg(long, value_parser = parse_seconds)]
    timeout: Option<f64>,
    /// Never show the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Also send Celery's task-sent event for each call (Celery's
    /// `task_send_sent_event`), so that monitors show them as SENT.
    #[arg(long)]
    sent_event: bool,
    /// Items per message: `auto` (adaptive `celery.starmap` chunks
    /// aiming at 10-50 ms of work each), or a number (1: one message per
    /// call).
    #[arg(long, default_value = "auto", value_name = "auto|N")]
    chunk: ChunkSize,
    /// Print what the chunking chose (chunk sizes, per-item time, round
    /// trip) as one JSON line on standard error at the end.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    signing: Signing,
}

/// One call: positional and keyword arguments.
type Line = (Vec<Value>, Map<String, Value>);

/// Parses one line of the args file (`number` counts from 1).
fn parse_line(line: &str, number: usize) -> Result<Line> {
    exact_integers(line, &format!("line {number}"))?;
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("line {number}: not JSON"))?;
    match v {
        Value::Array(args) => Ok((args, Map::new())),
        Value::Object(mut o) => {
            let args = match o.remove("args") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a,
                Some(other) => bail!("line {number}: \"args\" must be a JSON list, got {other}"),
            };
            let kwargs = match o.remove("kwargs") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(k)) => k,
                Some(other) => {
                    bail!("line {number}: \"kwargs\" must be a JSON object, got {other}")
                }
            };
            if let Some(key) = o.keys().next() {
                bail!("line {number}: unknown key {key:?} (only \"args\" and \"kwargs\")");
            }
            Ok((args, kwargs))
        }
        other => bail!(
            "line {number}: expected a JSON list of arguments or an object with \"args\"/\"kwargs\", got {other}"
        ),
    }
}

/// Reads every call of the file (or standard input for `-`).
fn read_lines(path: &PathBuf) -> Result<Vec<Line>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path)
            .with_context(|| format!("opening --args-file {}", path.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut calls = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        calls.push(parse_line(&line, i + 1)?);
    }
    Ok(calls)
}

/// The output line of a finished call.
fn output(meta: &ResultMeta) -> (Value, bool) {
    match meta.outcome() {
        Some(Ok(v)) => (v.clone(), true),
        Some(Err(e)) => (
            json!({"error": {
                "state": meta.status.to_string(),
                "type": e.exc_type(),
                "message": e.message(),
                "task_id": meta.task_id,
            }}),
            false,
        ),
        None => (pending(&meta.task_id, &meta.status.to_string()), false),
    }
}

/// The output line of a call not finished in time.
pub(crate) fn pending(id: &str, state: &str) -> Value {
    json!({"error": {
        "state": state,
        "type": "TimeoutError",
        "message": "no result before --timeout",
        "task_id": id,
    }})
}

/// The progress bar: on standard error, and only when it is a terminal.
pub(crate) fn progress(n: usize, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs `celeriac map`. Exit codes: 0 all succeeded, 1 some failed, 3
/// some had no result before `--timeout`.
pub(crate) fn run(conn: &Conn, mut args: MapArgs) -> Result<ExitCode> {
    args.queue = Some(conn.queue_for(args.queue.as_deref(), &args.name));
    let queue = args.queue.clone().unwrap_or_default();
    let calls = read_lines(&args.args_file)?;
    let secret = args.signing.secret()?;
    let with_kwargs = calls.iter().position(|(_, k)| !k.is_empty());
    match (args.chunk, with_kwargs) {
        (ChunkSize::Fixed(1), _) => {}
        (ChunkSize::Auto, Some(_)) => {
            eprintln!("keyword arguments in the calls: one message per call (no chunks)");
        }
        (_, Some(i)) => bail!(
            "call {} has keyword arguments, and --chunk N sends positional arguments only \
             (Celery's starmap); use --chunk 1",
            i + 1
        ),
        (_, None) => {
            return crate::cli::runtime()?.block_on(crate::cli::map_chunks::run(
                conn,
                &args.name,
                &queue,
                calls.into_iter().map(|(a, _)| a).collect(),
                secret,
                crate::cli::map_chunks::Options {
                    chunk: args.chunk,
                    timeout: args.timeout,
                    no_progress: args.no_progress,
                    sent_event: args.sent_event,
                    stats: args.stats,
                },
            ));
        }
    }
    let mut messages = Vec::with_capacity(calls.len());
    for (a, k) in calls {
        let mut msg: Message = Call::<Value>::new(args.name.clone())
            .with_args(a)
            .with_kwargs(k)
            .queue(queue.clone())
            .to_message()?;
        if let Some(s) = &secret {
            s.sign(&mut msg)?;
        }
        messages.push(msg);
    }
    crate::cli::runtime()?.block_on(submit_and_wait(conn, &args, messages))
}

async fn submit_and_wait(conn: &Conn, args: &MapArgs, messages: Vec<Message>) -> Result<ExitCode> {
    let (broker, backend) = conn.open()?;
    probe::reachable(
        &broker,
        &backend,
        &conn.broker_url(),
        &conn.backend_url(),
        args.queue.as_deref().unwrap_or("celery"),
        probe::STARTUP_DEADLINE,
    )
    .await?;
    let n = messages.len();
    let bar = progress(n, args.no_progress);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (c, chunk) in messages.chunks(BATCH).enumerate() {
        let ids: Vec<String> = chunk.iter().map(|m| m.id().to_string()).collect();
        let watches = backend.watch_many(&ids).await?;
        let outgoing = chunk
            .iter()
            .map(celeriac::Outgoing::from_message)
            .collect::<Result<Vec<_>, _>>()?;
        broker
            .publish_batch(outgoing)
            .await
            .context("publishing the tasks")?;
        if args.sent_event {
            crate::cli::events::send_sent(&broker, chunk).await;
        }
        for (j, w) in watches.into_iter().enumerate() {
            let tx = tx.clone();
            let at = c * BATCH + j;
            tokio::spawn(async move {
                let _ = tx.send((at, w.await));
            });
        }
    }
    drop(tx);
    let deadline = args
        .timeout
        .map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
    let mut done: BTreeMap<usize, Value> = BTreeMap::new();
    let (mut next, mut failed, mut timed_out) = (0, 0, false);
    let stdout = std::io::stdout();
    while next < n {
        let got = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(got) => got,
                Err(_) => {
                    timed_out = true;
                    None
                }
            },
            None => rx.recv().await,
        };
        let Some((at, meta)) = got else { break };
        let meta = meta.with_context(|| format!("waiting for task {}", messages[at].id()))?;
        let (line, ok) = output(&meta);
        failed += usize::from(!ok);
        done.insert(at, line);
        bar.inc(1);
        // Print the calls finished in input order so far.
        bar.suspend(|| -> Result<()> {
            let mut out = stdout.lock();
            while let Some(line) = done.remove(&next) {
                writeln!(out, "{line}")?;
                next += 1;
            }
            out.flush()?;
            Ok(())
        })?;
    }
    bar.finish_and_clear();
    let mut out = stdout.lock();
    let mut unfinished = 0;
    for (at, msg) in messages.iter().enumerate().skip(next) {
        let line = done.remove(&at).unwrap_or_else(|| {
            unfinished += 1;
            pending(msg.id(), "PENDING")
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if timed_out {
        eprintln!(
            "timed out: {unfinished} of {n} tasks had no result (is a worker consuming queue {:?}?)",
            args.queue.as_deref().unwrap_or("celery")
        );
        return Ok(ExitCode::from(3));
    }
    if failed > 0 {
        eprintln!("{failed} of {n} tasks failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
