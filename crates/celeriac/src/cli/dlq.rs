//! `celeriac dlq`: list dead letters and requeue them.

use std::process::ExitCode;

use anyhow::Result;
use celeriac::escape::Escaped;
use clap::Subcommand;

use crate::cli::{Conn, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move a dead letter back onto its queue.
    Requeue {
        /// The dead letter's id (from `dlq list`).
        id: String,
    },
}

pub(crate) fn dlq(conn: &Conn, command: DlqCommand) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let (broker, _) = conn.open()?;
        match command {
            DlqCommand::List { limit } => {
                let letters = broker.dead_letters(limit).await?;
                if letters.is_empty() {
                    // On stderr: a script reading stdout still sees no lines.
                    eprintln!("no dead letters");
                }
                for d in letters {
                    let summary = celeriac::Message::decode(&d.payload)
                        .map(|m| format!("{} {}", m.task(), m.id()))
                        .unwrap_or_else(|_| "<undecodable>".to_string());
                    // Fields from the message, escaped: one line per dead
                    // letter, and no escape sequence reaches the terminal.
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        Escaped(&d.id),
                        Escaped(&d.queue),
                        celeriac::time::iso_from_unix(d.failed_at),
                        Escaped(&summary),
                        Escaped(&d.reason)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Requeue { id } => {
                if broker.requeue_dead_letter(&id).await? {
                    println!("requeued {}", Escaped(&id));
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no dead letter with id {}", Escaped(&id));
                    Ok(ExitCode::from(1))
                }
            }
        }
    })
}
