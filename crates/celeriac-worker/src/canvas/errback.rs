//! Celery's errback rule (`celery/backends/base.py`,
//! `_call_task_errbacks` and `_errback_arity_greater`, 5.7): what a worker
//! does with each `link_error` signature of a task that failed.
//!
//! - an errback the worker runs itself, whose function's parameters are
//!   known and that does not take the context (Celery: a `@task` function
//!   with a `__header__` that is not `bind=True`), and that takes more
//!   than one argument, is **called inline** with `(request, exc,
//!   traceback)` (its own args after them unless it is immutable): nothing
//!   is published and its result is not stored. Arguments the signature
//!   already holds count as bound from the left, as `functools.partial`
//!   binds them (a call they do not fit counts the function's full arity);
//! - every other errback, one this worker does not run among them (a
//!   Python task, on a celeriac worker; a celeriac task, on a Python
//!   worker), is **published**, all of them as one group called with the
//!   failed task's id.
//!
//! For a Rust errback, `request` is the failed task's request as a JSON
//! object ([`request`]), `exc` is Celery's exception document
//! (`{exc_type, exc_message, exc_module}`) and `traceback` the stored
//! traceback text, or `null`.
//!
//! One difference, deliberate: Celery's worker calls a *chain* errback
//! inline too (`celery.chain` takes `*args`), which then fails to
//! serialize the request; celeriac publishes chains, groups and chords.

use celeriac_core::{Message, RegisteredTask, Registry};
use serde_json::{Map, Value, json};

use super::apply::{Call, Sends, apply};
use super::sig::{Kind, is_chunks, kind};

/// The tasks a worker runs itself, as the errback rule looks them up.
pub(crate) trait Known: std::fmt::Debug {
    /// The task registered under `name`, if this worker runs it.
    fn task(&self, name: &str) -> Option<&RegisteredTask>;
}

impl Known for Registry {
    fn task(&self, name: &str) -> Option<&RegisteredTask> {
        self.get(name).map(|t| &**t)
    }
}

/// Knows no task: every errback is published.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoTasks;

#[cfg(test)]
impl Known for NoTasks {
    fn task(&self, _: &str) -> Option<&RegisteredTask> {
        None
    }
}

/// Whether Celery's rule calls errback `sig` inline on this worker.
pub(crate) fn called_inline(sig: &Value, known: &dyn Known) -> bool {
    if kind(sig) != Kind::Task || is_chunks(sig) {
        return false;
    }
    let Some(task) = sig
        .get("task")
        .and_then(Value::as_str)
        .and_then(|name| known.task(name))
    else {
        // NotRegistered here: sent on for a worker that has it.
        return false;
    };
    let Some(params) = task.params() else {
        // A closure: no signature to count (Celery: a task without
        // `__header__`).
        return false;
    };
    if task.takes_context() {
        // Celery's `bind=True`: always published.
        return false;
    }
    let immutable = sig
        .get("immutable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let args = sig
        .get("args")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let kwargs = sig.get("kwargs").and_then(Value::as_object);
    arity_greater(params, args, kwargs, immutable, 1)
}

/// Celery's `_errback_arity_greater(errback, n)`: whether the function
/// still takes more than `n` positional arguments once the signature's own
/// are bound from the left (`functools.partial`); the full count when the
/// signature is immutable, holds none, or holds some that do not fit.
pub(crate) fn arity_greater(
    params: &[&str],
    args: &[Value],
    kwargs: Option<&Map<String, Value>>,
    immutable: bool,
    n: usize,
) -> bool {
    let full = params.len() > n;
    let kwargs = kwargs.filter(|k| !k.is_empty());
    if immutable || (args.is_empty() && kwargs.is_none()) {
        return full;
    }
    if args.len() > params.len() {
        return full;
    }
    // Positional parameters left after the bound ones, up to the first
    // bound by keyword (it and the ones after it become keyword-only).
    let mut remaining = params.len() - args.len();
    for key in kwargs.into_iter().flat_map(Map::keys) {
        match params.iter().position(|p| p == key) {
            // An unexpected keyword, or one bound twice: the partial does
            // not fit.
            None => return full,
            Some(i) if i < args.len() => return full,
            Some(i) => remaining = remaining.min(i - args.len()),
        }
    }
    remaining > n
}

/// The failed task's request, as an inline errback gets it (a JSON form of
/// Celery's `Request`).
pub(crate) fn request(msg: &Message) -> Value {
    let h = &msg.headers;
    json!({
        "id": h.id,
        "task": h.task,
        "args": msg.args,
        "kwargs": msg.kwargs,
        "root_id": h.root_id,
        "parent_id": h.parent_id,
        "group": h.group,
        "group_index": h.group_index,
        "retries": h.retries,
        "eta": h.eta,
        "expires": h.expires,
        "origin": h.origin,
        "callbacks": msg.embed.callbacks,
        "errbacks": msg.embed.errbacks,
        "chain": msg.embed.chain,
        "chord": msg.embed.chord,
    })
}

/// Errbacks split by Celery's rule.
#[derive(Debug, Default)]
pub(crate) struct Split {
    /// The calls to run inline, as messages (never published).
    pub(crate) inline: Vec<Message>,
    /// The rest: published as one group called with the failed id.
    pub(crate) published: Vec<Value>,
}

/// Splits `errbacks` of the task `failed` (its request `request`, its
/// exception document `exc`, its traceback): the inline calls built with
/// `(request, exc, traceback)` prepended, the others left to publish.
pub(crate) fn split(
    errbacks: Vec<Value>,
    failed: &Message,
    request: Value,
    exc: &Value,
    traceback: Option<&str>,
    known: &dyn Known,
    problems: &mut Vec<String>,
) -> Split {
    let mut out = Split::default();
    for eb in errbacks {
        if !called_inline(&eb, known) {
            out.published.push(eb);
            continue;
        }
        let mut sends = Sends::default();
        let args = vec![request.clone(), exc.clone(), json!(traceback)];
        match apply(&eb, Call::new(failed, args), &mut sends) {
            Ok(_) => out.inline.extend(sends.messages),
            Err(e) => problems.push(format!("errback: {e}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::{Args, ResultMeta, Task, TaskContext, TaskError};

    fn greater(params: &[&str], args: Vec<Value>, kwargs: Value, immutable: bool) -> bool {
        arity_greater(params, &args, kwargs.as_object(), immutable, 1)
    }

    /// The cases checked against Python 3.11's `inspect.getfullargspec`
    /// of `functools.partial(f, *args, **kwargs)`, as Celery 5.7 counts.
    #[test]
    fn the_arity_of_a_partial_is_counted_as_python_counts_it() {
        let f = ["a", "b", "c"];
        assert!(greater(&f, vec![], json!({}), false));
        assert!(greater(&f, vec![json!(1)], json!({}), false), "b, c left");
        assert!(greater(&f, vec![], json!({"c": 1}), false), "a, b left");
        assert!(!greater(&f, vec![], json!({"b": 1}), false), "a left");
        assert!(!greater(&f, vec![], json!({"a": 1}), false), "none left");
        assert!(!greater(&f, vec![json!(1), json!(2)], json!({}), false));
        assert!(
            !greater(&f, vec![json!(1)], json!({"c": 2}), false),
            "b left"
        );
        // Partials that do not fit: the function's own arity.
        let four = vec![json!(1), json!(2), json!(3), json!(4)];
        assert!(greater(&f, four, json!({}), false));
        assert!(greater(&f, vec![], json!({"z": 1}), false));
        assert!(greater(&f, vec![json!(1)], json!({"a": 2}), false));
        // Immutable: the stored args are the call's, the full arity counts.
        assert!(greater(&f, vec![json!(1), json!(2)], json!({}), true));
        assert!(!greater(&["task_id"], vec![], json!({}), false));
        assert!(greater(&["a", "b"], vec![], json!({}), false));
    }

    macro_rules! task {
        ($ty:ident, $name:literal, [$($p:literal),*], $ctx:literal) => {
            struct $ty;
            impl Task for $ty {
                type Args = Vec<Value>;
                type Output = Value;
                const PARAMS: &'static [&'static str] = &[$($p),*];
                const TAKES_CONTEXT: bool = $ctx;
                fn name() -> &'static str {
                    $name
                }
                fn run(_: &TaskContext, _: Args) -> Result<Value, TaskError> {
                    Ok(Value::Null)
                }
            }
        };
    }
    task!(
        OnError,
        "t.on_error",
        ["request", "exc", "traceback"],
        false
    );
    task!(Bound, "t.bound", ["request", "exc", "traceback"], true);
    task!(ById, "t.by_id", ["task_id"], false);
    task!(
        Tagged,
        "t.tagged",
        ["tag", "request", "exc", "traceback"],
        false
    );

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register::<OnError>().unwrap();
        r.register::<Bound>().unwrap();
        r.register::<ById>().unwrap();
        r.register::<Tagged>().unwrap();
        r.register_fn("t.closure", |_, _| Ok(Value::Null)).unwrap();
        r
    }

    fn sig(task: &str, args: Value) -> Value {
        json!({"task": task, "args": args, "kwargs": {}, "options": {"task_id": format!("{task}-id")},
               "subtask_type": null, "immutable": false})
    }

    #[test]
    fn errbacks_taking_more_than_one_argument_that_run_here_are_called_inline() {
        let reg = registry();
        assert!(called_inline(&sig("t.on_error", json!([])), &reg));
        assert!(
            called_inline(&sig("t.tagged", json!(["x"])), &reg),
            "three left after the stored one"
        );
        assert!(!called_inline(&sig("t.by_id", json!([])), &reg), "arity 1");
        assert!(
            !called_inline(&sig("t.bound", json!([])), &reg),
            "takes the context: Celery's bind=True is published"
        );
        assert!(
            !called_inline(&sig("t.closure", json!([])), &reg),
            "no known parameters"
        );
        assert!(
            !called_inline(&sig("py.on_error", json!([])), &reg),
            "not registered here: published for a worker that has it"
        );
        assert!(!called_inline(&sig("t.on_error", json!([])), &NoTasks));
        let chain = json!({"task": "celery.chain", "args": [], "kwargs": {"tasks": [sig("t.on_error", json!([]))]},
                           "options": {}, "subtask_type": "chain", "immutable": false});
        assert!(!called_inline(&chain, &reg), "a chain is published");
    }

    #[test]
    fn a_failure_calls_inline_errbacks_with_the_request_and_publishes_the_rest() {
        let reg = registry();
        let mut m = Message::with_id("t.fails", "F", vec![json!(1)], Map::new());
        m.headers.root_id = Some("R".into());
        m.embed.errbacks = Some(vec![
            sig("t.on_error", json!([])),
            sig("t.by_id", json!([])),
            sig("t.tagged", json!(["tag"])),
        ]);
        let err =
            TaskError::typed("ValueError", "builtins", "boom").with_traceback("Traceback: boom");
        let result = ResultMeta::failure("F", &err);
        let c = super::super::on_failure(&m, &result, &reg);
        assert_eq!(c.inline.len(), 2, "{:?}", c.inline);
        let call = &c.inline[0];
        assert_eq!(call.task(), "t.on_error");
        assert_eq!(call.args[0]["id"], "F");
        assert_eq!(call.args[0]["task"], "t.fails");
        assert_eq!(call.args[0]["args"], json!([1]));
        assert_eq!(call.args[1]["exc_type"], "ValueError");
        assert_eq!(call.args[1]["exc_message"], json!(["boom"]));
        assert_eq!(call.args[2], json!("Traceback: boom"));
        assert_eq!(call.headers.parent_id.as_deref(), Some("F"));
        let tagged = &c.inline[1];
        assert_eq!(
            tagged.args.len(),
            4,
            "(request, exc, traceback) then its own"
        );
        assert_eq!(tagged.args[3], "tag");
        assert_eq!(
            c.after.len(),
            1,
            "only the one-argument errback is published"
        );
        assert_eq!(c.after[0].task(), "t.by_id");
        assert_eq!(c.after[0].args, vec![json!("F")]);
        assert!(c.after[0].headers.group.is_some(), "as a group of one");
    }

    #[test]
    fn a_chord_body_that_fails_calls_its_inline_errbacks_with_a_request_made_from_it() {
        let reg = registry();
        let mut body = sig("t.sum", json!([]));
        body["options"]["link_error"] =
            json!([sig("t.on_error", json!([])), sig("t.by_id", json!([]))]);
        let err = crate::canvas::dependency_error(
            "P",
            &json!({"exc_type": "ValueError", "exc_message": ["x"]}),
        );
        let f = crate::canvas::body_failed(&body, Some("G"), &err, &reg).unwrap();
        assert_eq!(f.inline.len(), 1);
        assert_eq!(f.inline[0].args[0]["id"], "t.sum-id");
        assert_eq!(f.inline[0].args[1]["exc_type"], "ChordError");
        assert_eq!(f.inline[0].args[2], Value::Null);
        assert_eq!(f.errbacks.messages.len(), 1);
        assert_eq!(f.errbacks.messages[0].args, vec![json!("t.sum-id")]);
    }
}
