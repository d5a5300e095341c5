//! Async tasks: `#[task] async fn` on the async pool, thousands waiting on
//! I/O at once (the book's crawler, with a timer standing in for HTTP).
//! Run: `cargo run -p celeriac-examples --example async_tasks`.

use std::time::{Duration, Instant};

use celeriac::{Call, PoolKind, Server, task};

/// "Fetches" a page: waits half a second on the tokio timer, as an HTTP
/// request would wait on the network, and returns its size.
#[task(name = "examples.fetch")]
async fn fetch(url: String) -> usize {
    tokio::time::sleep(Duration::from_millis(500)).await;
    url.len() * 100
}

/// A blocking task: on an async worker it still runs on threads, never on
/// the executor.
#[task(name = "examples.checksum")]
fn checksum(data: String) -> u64 {
    data.bytes().map(u64::from).sum()
}

fn main() -> anyhow::Result<()> {
    let server = Server::builder()
        .pool(PoolKind::Async)
        .workers(500) // at most 500 tasks at once
        .build()?;
    let start = Instant::now();
    let pages: Vec<_> = (0..500)
        .map(|i| {
            server.submit(
                Call::<usize>::new("examples.fetch").arg(format!("https://example.invalid/{i}")),
            )
        })
        .collect();
    let sum = server.submit(Call::<u64>::new("examples.checksum").arg("celeriac"));
    let total: usize = pages
        .iter()
        .map(|j| j.wait())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    println!(
        "500 fetches of 0.5 s each: {total} bytes in {:.2?} (one at a time: 250 s)",
        start.elapsed()
    );
    println!("checksum on threads: {}", sum.wait()?);
    Ok(())
}
