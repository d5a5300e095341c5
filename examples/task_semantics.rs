//! Retries with backoff, idempotency keys, revoke, expiry and rate limits,
//! on the default in-process server.
//! Run: `cargo run -p celeriac-examples --example task_semantics`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celeriac::{Server, TaskContext, TaskError, task};

static CHARGED: AtomicU32 = AtomicU32::new(0);

/// Fails twice with a transient error, then succeeds: retried with the same
/// task id, backing off 0.05 s, 0.1 s.
#[task(
    name = "examples.fetch",
    max_retries = 5,
    retry_backoff = 0.05,
    retry_jitter = false
)]
fn fetch(ctx: &TaskContext, url: String) -> Result<String, TaskError> {
    if ctx.retries() < 2 {
        return Err(TaskError::new(format!("{url}: connection reset")).retryable());
    }
    Ok(format!("{url}: 200 OK after {} retries", ctx.retries()))
}

/// A side effect that must happen once per order.
#[task(name = "examples.charge")]
fn charge(order: u32, cents: u32) -> String {
    CHARGED.fetch_add(1, Ordering::SeqCst);
    format!("order {order}: charged {cents} cents")
}

/// At most 10 starts a second, across every worker on the broker.
#[task(name = "examples.ping", rate_limit = "10/s")]
fn ping(n: u32) -> u32 {
    n
}

fn main() -> anyhow::Result<()> {
    let server = Server::new()?;

    println!(
        "{}",
        server
            .submit(fetch::call("https://example.invalid".into()))
            .wait()?
    );

    // A client that submits the same order twice (a retry after a timeout).
    let first = server.submit(charge::call(7, 1999).idempotency_key("order-7"));
    let again = server.submit(charge::call(7, 1999).idempotency_key("order-7"));
    println!(
        "{} / {} (charged {} time)",
        first.wait()?,
        again.wait()?,
        CHARGED.load(Ordering::SeqCst)
    );

    // Revoke a job before it runs.
    let later = server.submit(charge::call(8, 500).countdown(Duration::from_millis(300)));
    server.revoke(&[later.id()])?;
    let err = later.wait().unwrap_err();
    println!(
        "revoked job: {}",
        err.task_error().map_or(err.to_string(), |e| e.to_string())
    );

    // A job that is not started in time expires.
    let blocker = (0..server.workers())
        .map(|_| server.submit(celeriac::builtins::sleep::call(0.3)))
        .collect::<Vec<_>>();
    let stale = server.submit(ping::call(0).expires_in(Duration::from_millis(50)));
    let err = stale.wait().unwrap_err();
    println!(
        "expired job: {}",
        err.task_error().map_or(err.to_string(), |e| e.to_string())
    );
    for b in blocker {
        b.wait()?;
    }

    // 10/s: 20 pings take about 2 s.
    let start = Instant::now();
    let pings: Vec<_> = (0..20).map(|n| server.submit(ping::call(n))).collect();
    for p in pings {
        p.wait()?;
    }
    println!(
        "20 rate-limited pings took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
