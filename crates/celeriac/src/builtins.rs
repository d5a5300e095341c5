//! Tasks shipped in every celeriac binary, for demos, smoke tests and
//! interop with Python Celery.
//!
//! Always registered: `celeriac.add`, `celeriac.fib`, `celeriac.sleep`,
//! `celeriac.echo`, `celeriac.log_error`. Registered only with diagnostic tasks enabled
//! (`celeriac worker --diagnostic-tasks`): `celeriac.fail`,
//! `celeriac.panic`, `celeriac.crash`, `celeriac.alloc` and `celeriac.flaky`.

use std::time::Duration;

use serde_json::{Number, Value};

use crate::{TaskContext, TaskError, task};

/// Adds two numbers. Integers stay exact integers: a sum outside the
/// 64-bit range (below -2^63 or above 2^64 - 1) fails with
/// `OverflowError`, never becomes a float. A float operand makes a float
/// sum, as in Python.
///
/// ```
/// use serde_json::json;
/// use celeriac::builtins::add;
/// assert_eq!(add(json!(2), json!(3)).unwrap(), json!(5));
/// assert_eq!(add(json!(i64::MAX), json!(1)).unwrap(), json!(9223372036854775808u64));
/// assert_eq!(add(json!(u64::MAX), json!(-1)).unwrap(), json!(u64::MAX - 1));
/// assert_eq!(add(json!(u64::MAX), json!(1)).unwrap_err().exc_type(), "OverflowError");
/// assert_eq!(add(json!(0.5), json!(2)).unwrap(), json!(2.5));
/// assert!(add(json!("a"), json!(2)).is_err());
/// ```
#[task(name = "celeriac.add", cheap)]
pub fn add(x: Value, y: Value) -> Result<Value, TaskError> {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (&x, &y) {
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(a), Some(b)) = (int(a), int(b)) {
                // Both fit in an i128, so their sum does too.
                let sum = a + b;
                return i64::try_from(sum)
                    .map(Value::from)
                    .or_else(|_| u64::try_from(sum).map(Value::from))
                    .map_err(|_| {
                        TaskError::typed(
                            "OverflowError",
                            "builtins",
                            format!("{a} + {b} = {sum} is outside the 64-bit range celeriac carries exactly"),
                        )
                    });
            }
            let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
            Number::from_f64(sum)
                .map(Value::Number)
                .ok_or_else(|| TaskError::typed("ValueError", "builtins", "result is not finite"))
        }
        _ => Err(TaskError::invalid_arguments(format!(
            "unsupported operand type(s) for +: {x} and {y}"
        ))),
    }
}

/// The n-th Fibonacci number, computed by naive recursion: the classic
/// CPU-bound job.
///
/// ```
/// assert_eq!(celeriac::builtins::fib(10), 55);
/// ```
#[task(name = "celeriac.fib")]
pub fn fib(n: u64) -> u64 {
    fn go(n: u64) -> u64 {
        if n < 2 {
            n
        } else {
            go(n - 1).wrapping_add(go(n - 2))
        }
    }
    go(std::hint::black_box(n))
}

/// Sleeps for `seconds` and returns them.
#[task(name = "celeriac.sleep")]
pub fn sleep(seconds: f64) -> Result<f64, TaskError> {
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(TaskError::typed(
            "ValueError",
            "builtins",
            format!("seconds must be between 0 and 86400, got {seconds}"),
        ));
    }
    std::thread::sleep(Duration::from_secs_f64(seconds));
    Ok(seconds)
}

/// Returns its argument unchanged.
#[task(name = "celeriac.echo", cheap)]
pub fn echo(value: Value) -> Value {
    value
}

/// An errback (`link_error`) that logs the failure of the task it is
/// linked to, and returns that task's id.
///
/// It takes three arguments, so a worker that runs it calls it inline
/// with `(request, exc, traceback)`, as Celery calls such an errback
/// (nothing published, no result stored). A worker that does not run it (a
/// Python worker) publishes it with the failed task's id alone, which it
/// also accepts.
///
/// ```
/// use serde_json::json;
/// use celeriac::builtins::log_error;
/// let exc = json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"});
/// assert_eq!(log_error(json!({"id": "t1", "task": "tasks.x"}), Some(exc), None), "t1");
/// assert_eq!(log_error(json!("t2"), None, None), "t2");
/// ```
#[task(name = "celeriac.log_error")]
pub fn log_error(request: Value, exc: Option<Value>, traceback: Option<String>) -> String {
    use celeriac_core::escape::Escaped;
    let id = match &request {
        Value::String(id) => id.clone(),
        other => other
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    };
    let task = request.get("task").and_then(Value::as_str).unwrap_or("?");
    match exc {
        Some(exc) => {
            let exc_type = exc.get("exc_type").and_then(Value::as_str).unwrap_or("?");
            let message = exc.get("exc_message").cloned().unwrap_or(Value::Null);
            tracing::warn!(task_id = %Escaped(&id), task = %Escaped(task), exc_type = %Escaped(exc_type),
                message = %Escaped(&message.to_string()), traceback = traceback.is_some(), "errback: the task raised");
        }
        None => tracing::warn!(task_id = %Escaped(&id), "errback: the task failed"),
    }
    id
}

/// Fails with `message` (diagnostic).
#[task(name = "celeriac.fail", diagnostic)]
pub fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::new(message))
}

/// Panics with `message` (diagnostic).
#[task(name = "celeriac.panic", diagnostic)]
pub fn panic(message: String) {
    std::panic::panic_any(message)
}

/// Aborts the process running it (diagnostic).
#[task(name = "celeriac.crash", diagnostic)]
pub fn crash() {
    std::process::abort()
}

/// Holds `mb` MiB of memory, touched, for `seconds` (diagnostic).
#[task(name = "celeriac.alloc", diagnostic)]
pub fn alloc(mb: u64, seconds: f64) -> Result<u64, TaskError> {
    if mb > 1 << 20 {
        return Err(TaskError::typed(
            "ValueError",
            "builtins",
            "mb is too large",
        ));
    }
    let bytes = usize::try_from(mb << 20)
        .map_err(|_| TaskError::typed("ValueError", "builtins", "mb is too large"))?;
    let mut block = vec![0u8; bytes];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    std::thread::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)));
    Ok(std::hint::black_box(&block).len() as u64 >> 20)
}

/// Fails its first `failures` attempts with a retry request, then returns
/// how many retries it took (diagnostic). Retries back off from 0.1 s,
/// doubling, capped at 1 s, without jitter; at most 10.
#[task(
    name = "celeriac.flaky",
    diagnostic,
    max_retries = 10,
    retry_backoff = 0.1,
    retry_backoff_max = 1,
    retry_jitter = false
)]
pub fn flaky(ctx: &TaskContext, failures: u32) -> Result<u32, TaskError> {
    if ctx.retries() < failures {
        Err(ctx.retry_later())
    } else {
        Ok(ctx.retries())
    }
}
