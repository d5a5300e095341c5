//! A task that submits subtasks and waits for them, on a worker with a
//! single execution slot: the waiting task gives its slot up while it
//! waits, so its subtasks (and subtasks that wait in turn) run.
//! Run: `cargo run -p celeriac-examples --example subtasks`.

use celeriac::{Server, SubtaskError, TaskContext, TaskError, task};

#[task(name = "examples.square")]
fn square(x: i64) -> i64 {
    x * x
}

/// Fans out to `n` squares and sums them.
#[task(name = "examples.sum_of_squares")]
fn sum_of_squares(ctx: &TaskContext, n: i64) -> Result<i64, TaskError> {
    let parts = ctx.submit_all((1..=n).map(square::call))?;
    Ok(ctx.wait_all(&parts)?.into_iter().sum())
}

/// The same from an `async fn`: the `_async` forms.
#[task(name = "examples.sum_of_squares_async")]
async fn sum_of_squares_async(ctx: &TaskContext, n: i64) -> Result<i64, TaskError> {
    let parts = ctx.submit_all_async((1..=n).map(square::call)).await?;
    Ok(ctx.wait_all_async(&parts).await?.into_iter().sum())
}

/// Waits on subtasks that wait on subtasks.
#[task(name = "examples.tree")]
fn tree(ctx: &TaskContext, depth: u32) -> Result<u64, TaskError> {
    if depth == 0 {
        return Ok(1);
    }
    let kids = ctx.submit_all([tree::call(depth - 1), tree::call(depth - 1)])?;
    Ok(ctx.wait_all(&kids)?.into_iter().sum())
}

#[task(name = "examples.parse")]
fn parse(text: String) -> Result<i64, TaskError> {
    text.parse()
        .map_err(|e| TaskError::typed("ValueError", "builtins", format!("{text:?}: {e}")))
}

/// A subtask's failure reaches the task that waits for it.
#[task(name = "examples.parse_all")]
fn parse_all(ctx: &TaskContext, texts: Vec<String>) -> Result<i64, TaskError> {
    let parts = ctx.submit_all(texts.into_iter().map(parse::call))?;
    match ctx.wait_all(&parts) {
        Ok(values) => Ok(values.into_iter().sum()),
        Err(SubtaskError::Failed(e)) => Err(TaskError::typed(
            "ValueError",
            "builtins",
            format!("a part failed: {}", e.message()),
        )),
        Err(other) => Err(other.into()),
    }
}

fn main() -> anyhow::Result<()> {
    // One execution slot: a Celery worker would deadlock here.
    let server = Server::builder().workers(1).build()?;
    println!(
        "sum of squares 1..=10: {}",
        server.submit(sum_of_squares::call(10)).wait()?
    );
    println!(
        "the same, async: {}",
        server.submit(sum_of_squares_async::call(10)).wait()?
    );
    println!(
        "leaves of a tree of depth 4: {}",
        server.submit(tree::call(4)).wait()?
    );
    let err = server
        .submit(parse_all::call(vec!["1".into(), "two".into()]))
        .wait()
        .unwrap_err();
    println!("a failing part: {err}");
    Ok(())
}
