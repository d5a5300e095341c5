//! `celeriac result ID`: print a task's result, waiting for it if asked.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use celeriac::escape::Escaped;
use clap::Args as ClapArgs;

use crate::cli::parse::parse_seconds;
use crate::cli::{Conn, print_outcome, runtime};

/// `celeriac result` options.
#[derive(Debug, ClapArgs)]
pub(crate) struct ResultArgs {
    /// The task id.
    id: String,
    /// Wait until the result is ready.
    #[arg(long)]
    wait: bool,
    /// With --wait, give up after this many seconds.
    #[arg(long, value_parser = parse_seconds)]
    timeout: Option<f64>,
    /// Print the whole stored document instead of the value.
    #[arg(long)]
    meta: bool,
}

/// Runs `celeriac result`.
pub(crate) fn result(conn: &Conn, args: ResultArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let (_broker, backend) = conn.open()?;
        let meta = if args.wait {
            let watch = backend.watch(&args.id).await?;
            match args.timeout {
                Some(t) => {
                    match tokio::time::timeout(Duration::from_secs_f64(t.max(0.0)), watch).await {
                        Ok(r) => Some(r?),
                        Err(_) => {
                            eprintln!(
                                "timed out after {t} s waiting for task {}",
                                Escaped(&args.id)
                            );
                            return Ok(ExitCode::from(3));
                        }
                    }
                }
                None => Some(watch.await?),
            }
        } else {
            backend.get(&args.id).await?
        };
        match meta {
            Some(m) => Ok(print_outcome(&m, args.meta)),
            None => {
                eprintln!("task {} is PENDING (no result stored)", Escaped(&args.id));
                Ok(ExitCode::from(4))
            }
        }
    })
}
