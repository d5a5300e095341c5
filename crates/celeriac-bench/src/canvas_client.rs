//! `celeriac-bench canvas-client`: W6 with celeriac's own client. Sends a
//! group of n `celeriac.add`s, or a chord of them into `celeriac.echo`,
//! through the Rust canvas API (`Server::apply`, a client-only server:
//! no local worker) to the workers of `--queue`, and measures from the
//! first send to the last result. `bench/peers/canvas_bench.py` runs it
//! beside the Python client's figures, against the same worker.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use celeriac::canvas::{Sig, chord, group};
use celeriac::{Call, Server};
use serde_json::{Value, json};

use crate::emit::{self, Measurement};

/// What to send.
#[derive(Debug, Clone)]
pub(crate) struct CanvasConfig {
    /// Broker and result backend.
    pub(crate) url: String,
    /// The queue the worker consumes.
    pub(crate) queue: String,
    /// Canvas size.
    pub(crate) n: i64,
    /// `group` or `chord`.
    pub(crate) kind: String,
    /// The system label of the JSON line.
    pub(crate) system: String,
}

fn adds(n: i64) -> impl Iterator<Item = Call<Value>> {
    (0..n).map(|i| Call::new("celeriac.add").arg(i).arg(i))
}

/// Sends one canvas and emits its W6 line.
pub(crate) fn run(cfg: &CanvasConfig) -> Result<()> {
    let server = Server::builder()
        .broker(&cfg.url)
        .workers(0)
        .queue(&cfg.queue)
        .build()
        .context("connecting the client")?;
    let want: Vec<Value> = (0..cfg.n).map(|i| json!(2 * i)).collect();
    let timeout = Duration::from_secs(600);
    let t0 = Instant::now();
    let got = match cfg.kind.as_str() {
        "group" => server
            .apply(group(adds(cfg.n)))
            .wait_timeout(timeout)
            .context("waiting for the group")?,
        "chord" => {
            let body: Sig<Vec<Value>, Vec<Value>> = Call::new("celeriac.echo").partial();
            server
                .apply(chord(adds(cfg.n), body))
                .wait_timeout(timeout)
                .context("waiting for the chord")?
        }
        other => bail!("--kind must be group or chord, not {other:?}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    if got != want {
        bail!("{} results were wrong (first: {:?})", cfg.kind, got.first());
    }
    let rate = cfg.n as f64 / secs;
    let metric = if cfg.kind == "group" {
        "group_live"
    } else {
        "chord_live"
    };
    emit::emit(
        Measurement::new(
            "W6",
            cfg.system.clone(),
            metric,
            emit::round(rate, 1),
            "tasks/s",
        )
        .param("n", cfg.n)
        .param("seconds", emit::round(secs, 4))
        .param("client", "celeriac (Rust canvas API)"),
    );
    server.destroy();
    Ok(())
}
