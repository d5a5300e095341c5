//! A project with its own tasks. `main` is the whole celeriac CLI, serving
//! the tasks below (and celeriac's built-in ones):
//!
//! ```text
//! cargo run -- worker                  # threads
//! cargo run -- worker -P processes     # child processes
//! cargo run -- call proj.add --args '[2, 3]' --wait
//! cargo run -- tasks
//! ```
//!
//! Python Celery calls them by name: `app.send_task("proj.add", (2, 3))`.

use std::time::Duration;

use celeriac::{TaskContext, TaskError, task};
use serde_json::json;

/// Adds two numbers.
#[task(name = "proj.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// The process that ran the task and the worker's node: on `-P processes`
/// a child's pid, not the worker's.
#[task(name = "proj.whoami")]
fn whoami(ctx: &TaskContext) -> serde_json::Value {
    json!({"pid": std::process::id(), "hostname": ctx.hostname()})
}

/// Counts the words of each text, `pause` seconds apart, and reports how
/// far it got as the custom state PROGRESS, which clients see while it
/// runs (Python's `AsyncResult.state` and `.info`, `celeriac result
/// --meta`). Marked `track_started`: it is STARTED before its first
/// PROGRESS. On `-P processes` it runs in a child, which hands its states
/// to the worker to store.
#[task(name = "proj.count_words", track_started)]
fn count_words(ctx: &TaskContext, texts: Vec<String>, pause: f64) -> Result<usize, TaskError> {
    let mut words = 0;
    for (i, text) in texts.iter().enumerate() {
        std::thread::sleep(Duration::from_secs_f64(pause));
        words += text.split_whitespace().count();
        ctx.update_state(
            "PROGRESS",
            json!({"done": i + 1, "total": texts.len(), "words": words}),
        )?;
    }
    Ok(words)
}

fn main() {
    celeriac::cli::main()
}
