//! `celeriac purge`: deletes every message waiting on queues, as `celery
//! purge` does, after asking (unless `-f`).

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use celeriac::escape::Escaped;
use clap::Args as ClapArgs;

use crate::cli::Conn;
use crate::cli::parse::queue_name;

/// `celeriac purge`.
#[derive(Debug, ClapArgs)]
pub(crate) struct PurgeArgs {
    /// Queues to purge, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery", value_parser = queue_name)]
    queues: Vec<String>,
    /// Queues not to purge, comma-separated.
    #[arg(short = 'X', long, value_delimiter = ',')]
    exclude_queues: Vec<String>,
    /// Do not ask before deleting.
    #[arg(short = 'f', long)]
    force: bool,
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

pub(crate) fn purge(conn: &Conn, args: PurgeArgs) -> Result<ExitCode> {
    let mut names: Vec<String> = args
        .queues
        .into_iter()
        .filter(|q| !args.exclude_queues.contains(q))
        .collect();
    names.sort();
    names.dedup();
    let qnum = names.len();
    if qnum == 0 {
        println!("No queues to purge.");
        return Ok(ExitCode::SUCCESS);
    }
    let headline = plural(qnum, "queue");
    if !args.force {
        let shown: Vec<String> = names.iter().map(|q| Escaped(q).to_string()).collect();
        print!(
            "WARNING: This will remove all tasks from {headline}: {}.\n         There is no undo for this operation!\n\n(to skip this prompt use the -f option)\nAre you sure you want to delete all tasks? [y/N]: ",
            shown.join(", ")
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("Aborted!");
            return Ok(ExitCode::from(1));
        }
    }
    let purged = crate::cli::runtime()?.block_on(async {
        let (broker, _) = conn.open()?;
        let mut n = 0;
        for q in &names {
            n += broker
                .purge(q)
                .await
                .with_context(|| format!("purging {}", Escaped(q)))?;
        }
        Ok::<_, anyhow::Error>(n)
    })?;
    if purged > 0 {
        println!(
            "Purged {purged} {} from {qnum} known task {headline}.",
            plural(purged, "message")
        );
    } else {
        println!("No messages purged from {qnum} {headline}.");
    }
    Ok(ExitCode::SUCCESS)
}
