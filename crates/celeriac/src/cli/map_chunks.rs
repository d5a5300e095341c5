//! `celeriac map` with chunks (`--chunk auto` or `--chunk N`): the calls
//! go out as Celery `celery.starmap` messages through
//! [`celeriac::automap`], and the results come out in input order as
//! JSON lines, as one message per call would print them.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use celeriac::automap::{ChunkSize, MapError, chunk_message, publish_and_wait, seen_workers};
use celeriac::{Call, Secret, TaskErrorKind};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cli::{Conn, probe};

/// What `celeriac map` asked for, besides the calls.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) chunk: ChunkSize,
    pub(crate) timeout: Option<f64>,
    pub(crate) no_progress: bool,
    pub(crate) sent_event: bool,
    pub(crate) stats: bool,
}

/// The output line of an item that failed.
fn failed(e: &MapError) -> Value {
    let (state, kind, message) = match e {
        MapError::Task(t) => (
            if t.kind() == TaskErrorKind::Revoked {
                "REVOKED"
            } else {
                "FAILURE"
            },
            t.exc_type().to_string(),
            t.message().to_string(),
        ),
        MapError::Decode(d) => ("FAILURE", "DecodeError".to_string(), d.clone()),
        other => ("FAILURE", "TransportError".to_string(), other.to_string()),
    };
    json!({"error": {"state": state, "type": kind, "message": message, "task_id": null}})
}

/// Sends the calls (`items`, each a list of positional arguments) of task
/// `name` to `queue` in chunks, and prints every result in input order.
pub(crate) async fn run(
    conn: &Conn,
    name: &str,
    queue: &str,
    items: Vec<Vec<Value>>,
    secret: Option<Secret>,
    opts: Options,
) -> Result<ExitCode> {
    let (broker, backend) = conn.open()?;
    probe::reachable(
        &broker,
        &backend,
        &conn.broker_url(),
        &conn.backend_url(),
        queue,
        probe::STARTUP_DEADLINE,
    )
    .await?;
    let n = items.len();
    let workers = seen_workers(&*broker).await;
    let sent_event = opts.sent_event;
    let mut stream = Call::<Value>::new(name.to_string())
        .queue(queue)
        .automap(items)
        .chunk(opts.chunk)
        .workers(workers)
        .with_sender(Box::new(move |call: Call<Value>| {
            let (broker, backend, secret) = (broker.clone(), backend.clone(), secret.clone());
            Box::pin(async move {
                let msg = match chunk_message(&call, secret.as_ref()) {
                    Ok(m) => m,
                    Err(end) => return end,
                };
                if sent_event {
                    crate::cli::events::send_sent(&broker, std::slice::from_ref(&msg)).await;
                }
                publish_and_wait(&*broker, &*backend, &msg, true).await
            })
        }));
    let bar = crate::cli::map::progress(n, opts.no_progress);
    let deadline = opts
        .timeout
        .map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let (mut printed, mut failures) = (0usize, 0usize);
    let mut timed_out = false;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    timed_out = true;
                    break;
                }
            },
            None => stream.next().await,
        };
        let Some(r) = next else { break };
        match r {
            Ok(v) => serde_json::to_writer(&mut out, &v)?,
            Err(e) => {
                failures += 1;
                serde_json::to_writer(&mut out, &failed(&e))?;
            }
        }
        out.write_all(b"\n")?;
        printed += 1;
        if printed % 1024 == 0 || printed == n {
            bar.set_position(printed as u64);
        }
    }
    bar.finish_and_clear();
    let unfinished = n - printed;
    for _ in 0..unfinished {
        let line = json!({"error": {
            "state": "PENDING",
            "type": "TimeoutError",
            "message": "no result before --timeout",
            "task_id": null,
        }});
        writeln!(out, "{line}")?;
    }
    out.flush().context("writing the results")?;
    drop(out);
    if opts.stats {
        let s = stream.stats();
        eprintln!(
            "{}",
            json!({
                "items": n,
                "chunks": s.chunks,
                "first_sizes": s.sizes.iter().take(12).collect::<Vec<_>>(),
                "median_size": s.median_size(),
                "max_size": s.max_size(),
                "splits": s.splits,
                "workers": s.workers,
                "per_item_us": s.per_item.map(|p| p * 1e6),
                "round_trip_ms": s.round_trip.map(|r| r * 1e3),
            })
        );
    }
    if timed_out {
        eprintln!(
            "timed out: {unfinished} of {n} tasks had no result (is a worker consuming queue {queue:?}?)"
        );
        return Ok(ExitCode::from(3));
    }
    if failures > 0 {
        eprintln!("{failures} of {n} tasks failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
