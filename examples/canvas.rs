//! Celery's canvas in Rust: chains, groups, chords, callbacks, map,
//! starmap and chunks, typed, sent exactly as Python Celery sends them.
//! Run: `cargo run -p celeriac-examples --example canvas` (the embedded
//! in-process broker), or with `CELERIAC_BROKER_URL=redis://...` for
//! chords too (they need a result backend with a chord join) and for
//! Python Celery workers on the same Redis to take part.

use celeriac::canvas::{chain, chord, chunks, group, map, starmap};
use celeriac::{JobError, Server, task};

#[task(name = "examples.canvas.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "examples.canvas.mul")]
fn mul(x: i64, y: i64) -> i64 {
    x * y
}

#[task(name = "examples.canvas.square")]
fn square(x: i64) -> i64 {
    x * x
}

#[task(name = "examples.canvas.total")]
fn total(xs: Vec<i64>) -> i64 {
    xs.iter().sum()
}

#[task(name = "examples.canvas.check")]
fn check(x: i64) -> Result<i64, String> {
    if x < 0 {
        Err(format!("{x} is negative"))
    } else {
        Ok(x)
    }
}

/// An errback: called with the failed task's id.
#[task(name = "examples.canvas.report")]
fn report(failed_id: String) -> String {
    format!("task {failed_id} failed")
}

fn main() -> anyhow::Result<()> {
    let url = std::env::var("CELERIAC_BROKER_URL").unwrap_or_else(|_| "memory://".into());
    let server = Server::builder().broker(&url).workers(4).build()?;
    println!("broker: {}", server.broker_url());

    // A chain: each step gets the previous result as its first argument.
    // `add::s(10)` is `add` waiting for its first argument; a step whose
    // input type does not match the previous output does not compile.
    let job = server.apply(chain(add::call(1, 2)).then(add::s(10)).then(mul::s(2)));
    println!("((1 + 2) + 10) * 2 = {}", job.wait()?);
    // Like Celery's AsyncResult.parent: the step before.
    let before = job.parent()?.and_then(|p| p.job()).expect("a parent");
    println!("  the step before it returned {}", before.wait()?);

    // A group: every member in parallel, results in order.
    let squares = server.apply(group((1..=5).map(square::call)));
    println!("squares: {:?}", squares.wait()?);

    // map, starmap (one message, looped by the worker) and chunks (a
    // group of starmaps).
    println!("map: {:?}", server.apply(map::<square>([1, 2, 3])).wait()?);
    println!(
        "starmap: {:?}",
        server.apply(starmap::<add>([(1, 1), (2, 2)])).wait()?
    );
    let parts = server.apply(chunks::<add>((0..6).map(|i| (i, i)), 2));
    println!("chunks: {:?}", parts.wait()?);

    // link and link_error: callbacks on success and on failure.
    let mut on_success = square::s();
    let success_id = on_success.freeze();
    let job = server.apply(add::call(2, 3).link(on_success));
    println!(
        "add(2, 3) = {}, linked square = {}",
        job.wait()?,
        server.result::<i64>(&success_id).wait()?
    );
    let mut on_error = report::s();
    let error_id = on_error.freeze();
    let job = server.apply(check::call(-1).link_error(on_error));
    if let Err(JobError::Task(e)) = job.wait() {
        println!(
            "check(-1) failed ({}); errback: {}",
            e.message(),
            server.result::<String>(&error_id).wait()?
        );
    }

    // A chord: the body gets every header result. It needs a result
    // backend with a chord join; without one it fails at once, nothing
    // sent.
    let job = server.apply(chord((1..=4).map(square::call), total::s()));
    match job.wait() {
        Ok(sum) => println!("sum of squares 1..4 = {sum}"),
        Err(JobError::Unsupported(why)) => println!("chord: {why}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
