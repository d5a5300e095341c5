//! Celery's built-in canvas tasks, run by the worker itself because they
//! call other registered tasks or read results: `celery.map` and
//! `celery.starmap` (what `xmap`, `xstarmap` and each part of `chunks`
//! send; the loop runs inline and stores one result, as Celery's worker
//! does), `celery.accumulate`, `celery.chunks` (which sends a group of
//! `celery.starmap`) and `celery.chord_unlock` (see
//! [`canvas::unlock`](crate::canvas::unlock)). A user's registry may
//! override any of them by registering the name.

use std::sync::Arc;

use celeriac_core::{
    Args, PoolKind, Registry, ResultBackend, Signature, TaskContext, TaskError, TaskOptions,
};
use serde_json::Value;

/// The built-ins, each calling into `tasks`; `celery.chord_unlock` reads
/// results from `backend`.
pub(crate) fn registry(tasks: &Arc<Registry>, backend: &Arc<dyn ResultBackend>) -> Registry {
    let mut r = Registry::new();
    // Inline loops over other tasks: on threads, whatever the worker's pool
    // (a child process has no handle on the worker's registry).
    let opts = TaskOptions::new().pool(PoolKind::Threads);
    let t = Arc::clone(tasks);
    r.register_fn_with("celery.map", opts, move |ctx, args| {
        each(&t, ctx, args, "celery.map", |item| vec![item])
    })
    .expect("a fresh registry");
    let t = Arc::clone(tasks);
    r.register_fn_with("celery.starmap", opts, move |ctx, args| {
        each(&t, ctx, args, "celery.starmap", |item| match item {
            Value::Array(a) => a,
            other => vec![other],
        })
    })
    .expect("a fresh registry");
    r.register_fn_with("celery.accumulate", opts, |_, args| accumulate(args))
        .expect("a fresh registry");
    // The group of starmaps is sent on by the canvas once it returns.
    r.register_fn_with(crate::canvas::CHUNKS, opts, |_, args| {
        crate::canvas::chunks_of(&args.args, &args.kwargs)
            .map(|_| Value::Null)
            .map_err(|e| TaskError::invalid_arguments(format!("celery.chunks: {e}")))
    })
    .expect("a fresh registry");
    crate::canvas::unlock::register(&mut r, Arc::clone(backend));
    r
}

/// `celery.map(task, it)` / `celery.starmap(task, it)`: the task called on
/// each item, in order; the first failure fails the whole.
fn each(
    tasks: &Registry,
    ctx: &TaskContext,
    args: Args,
    name: &str,
    to_args: impl Fn(Value) -> Vec<Value>,
) -> Result<Value, TaskError> {
    // The items are moved out as they are, not deserialized (which would
    // rebuild every item's JSON): a chunk may hold 100,000 of them.
    let Args {
        args: mut positional,
        mut kwargs,
    } = args;
    let it = if positional.len() >= 2 {
        Some(positional.remove(1))
    } else {
        kwargs.remove("it")
    };
    let items = match it {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(TaskError::invalid_arguments(format!(
                "{name}() argument 'it': expected a list, got {other}"
            )));
        }
        None => {
            return Err(TaskError::invalid_arguments(format!(
                "{name}() missing 1 required positional argument: 'it'"
            )));
        }
    };
    let mut b = Args::new(positional, kwargs).bind(name, &["task"])?;
    let sig: Value = b.take_required(0)?;
    let sig = Signature::from_value(&sig)
        .map_err(|e| TaskError::invalid_arguments(format!("{name}: {e}")))?;
    let task = tasks
        .get(&sig.task)
        .ok_or_else(|| TaskError::not_registered(&sig.task))?;
    if task.is_async() {
        return Err(TaskError::typed(
            "NotImplementedError",
            "builtins",
            format!("{name} of the async task {} is not supported", sig.task),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        ctx.check()?;
        let mut call = to_args(item);
        call.extend(sig.args.iter().cloned());
        out.push(task.invoke(ctx, Args::new(call, sig.kwargs.clone()))?);
    }
    Ok(Value::Array(out))
}

/// `celery.accumulate(*args, index=None)`: the arguments, or one of them.
fn accumulate(args: Args) -> Result<Value, TaskError> {
    let Args {
        args: positional,
        kwargs,
    } = args;
    match kwargs.get("index") {
        None | Some(Value::Null) => Ok(Value::Array(positional)),
        Some(i) => {
            let i = i.as_u64().ok_or_else(|| {
                TaskError::invalid_arguments("accumulate: index must be an integer")
            })?;
            positional.into_iter().nth(i as usize).ok_or_else(|| {
                TaskError::typed("IndexError", "builtins", "accumulate: index out of range")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(
        r: &Registry,
        name: &str,
        args: Vec<Value>,
        kwargs: serde_json::Map<String, Value>,
    ) -> Result<Value, TaskError> {
        r.get(name)
            .unwrap()
            .invoke(&TaskContext::detached(name), Args::new(args, kwargs))
    }

    fn builtins() -> Registry {
        let backend: Arc<dyn ResultBackend> = Arc::new(celeriac_embedded::MemoryBackend::new());
        registry(&tasks(), &backend)
    }

    fn tasks() -> Arc<Registry> {
        let mut r = Registry::new();
        r.register_fn("t.add", |_, args| {
            let mut b = args.bind("add", &["x", "y"])?;
            Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
        })
        .unwrap();
        r.register_fn("t.neg", |_, args| {
            Ok(json!(-args.bind("neg", &["x"])?.take::<i64>(0)?))
        })
        .unwrap();
        Arc::new(r)
    }

    #[test]
    fn map_and_starmap_call_the_task_per_item_in_order() {
        let b = builtins();
        let neg = json!({"task": "t.neg", "args": [], "kwargs": {}});
        let add = json!({"task": "t.add", "args": [], "kwargs": {}});
        let mut kw = serde_json::Map::new();
        kw.insert("task".into(), neg);
        kw.insert("it".into(), json!([1, 2, 3]));
        assert_eq!(
            run(&b, "celery.map", vec![], kw).unwrap(),
            json!([-1, -2, -3])
        );
        assert_eq!(
            run(
                &b,
                "celery.starmap",
                vec![add, json!([[1, 2], [3, 4]])],
                Default::default()
            )
            .unwrap(),
            json!([3, 7])
        );
        let mut kw = serde_json::Map::new();
        kw.insert("task".into(), json!({"task": "t.neg"}));
        kw.insert("it".into(), json!(5));
        let err = run(&b, "celery.map", vec![], kw).unwrap_err();
        assert_eq!(err.exc_type(), "TypeError", "{err}");
        let err = run(
            &b,
            "celery.map",
            vec![json!({"task": "t.neg"})],
            Default::default(),
        );
        assert!(err.unwrap_err().message().contains("'it'"));
        let unknown = json!({"task": "t.nope"});
        let err = run(
            &b,
            "celery.map",
            vec![unknown, json!([1])],
            Default::default(),
        )
        .unwrap_err();
        assert_eq!(err.exc_type(), "NotRegistered");
    }

    #[test]
    fn accumulate_returns_its_arguments_or_one_of_them() {
        let b = builtins();
        assert_eq!(
            run(
                &b,
                "celery.accumulate",
                vec![json!(1), json!(2)],
                Default::default()
            )
            .unwrap(),
            json!([1, 2])
        );
        let mut kw = serde_json::Map::new();
        kw.insert("index".into(), json!(1));
        assert_eq!(
            run(&b, "celery.accumulate", vec![json!(1), json!(2)], kw).unwrap(),
            json!(2)
        );
    }
}
