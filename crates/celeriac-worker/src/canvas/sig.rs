//! Canvas signatures as JSON, the way Celery's `Signature.from_dict`
//! reads them: their kind (`subtask_type`), options and tasks, ids given
//! to every part (`freeze`), and how many results a chord header member
//! adds (`_descend`).

use celeriac_core::CodecError;
use serde_json::{Map, Value, json};

/// Deeper canvases than this are refused (the JSON parser already stops
/// at 128 levels; a canvas nests about two levels per step).
pub(crate) const MAX_DEPTH: usize = 64;

/// What a signature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One task.
    Task,
    /// `celery.chain`.
    Chain,
    /// `celery.group`.
    Group,
    /// `celery.chord`.
    Chord,
}

/// The kind of `sig`, from its `subtask_type`.
pub(crate) fn kind(sig: &Value) -> Kind {
    match sig.get("subtask_type").and_then(Value::as_str) {
        Some("chain") => Kind::Chain,
        Some("group") => Kind::Group,
        Some("chord") => Kind::Chord,
        _ => Kind::Task,
    }
}

/// A malformed-canvas error.
pub(crate) fn malformed(what: impl Into<String>) -> CodecError {
    CodecError::Malformed(what.into())
}

/// `[[id, null], null]`: the tuple of a plain result.
pub(crate) fn task_tuple(id: &str) -> Value {
    json!([[id, null], null])
}

/// `[[gid, null], [tuples]]`: the tuple of a group result.
pub(crate) fn group_tuple(id: &str, members: Vec<Value>) -> Value {
    json!([[id, null], members])
}

/// The options of `sig`, made an object if missing.
pub(crate) fn options_mut(sig: &mut Value) -> Result<&mut Map<String, Value>, CodecError> {
    if !sig.is_object() {
        return Err(malformed(format!(
            "a signature must be an object, got {sig}"
        )));
    }
    let obj = sig.as_object_mut().expect("an object");
    let opts = obj
        .entry("options")
        .or_insert_with(|| Value::Object(Map::new()));
    if opts.is_null() {
        *opts = Value::Object(Map::new());
    }
    opts.as_object_mut()
        .ok_or_else(|| malformed("a signature's options must be an object"))
}

/// Option `key` of `sig`, unless missing or null.
pub(crate) fn option<'v>(sig: &'v Value, key: &str) -> Option<&'v Value> {
    sig.get("options")
        .and_then(|o| o.get(key))
        .filter(|v| !v.is_null())
}

/// Keyword argument `key` of `sig`, unless missing or null.
pub(crate) fn kwarg<'v>(sig: &'v Value, key: &str) -> Option<&'v Value> {
    sig.get("kwargs")
        .and_then(|o| o.get(key))
        .filter(|v| !v.is_null())
}

/// A list from a list, a single value or nothing (Celery sends
/// `link_error` both ways).
pub(crate) fn list_of(v: Option<&Value>) -> Vec<Value> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(one) => vec![one.clone()],
    }
}

/// The positional args of `sig`.
pub(crate) fn args_of(sig: &Value) -> Vec<Value> {
    sig.get("args")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Whether `sig` takes no partial args.
pub(crate) fn immutable(sig: &Value) -> bool {
    sig.get("immutable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The tasks of a chain or group signature.
pub(crate) fn tasks_of(sig: &Value) -> Result<Vec<Value>, CodecError> {
    match kwarg(sig, "tasks") {
        Some(Value::Array(t)) => Ok(t.clone()),
        _ => Err(malformed(format!(
            "a {:?} signature without kwargs.tasks",
            kind(sig)
        ))),
    }
}

/// A fresh task or group id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The partial args a composite passes on: the caller's, then its own,
/// unless it is immutable (then only its own).
pub(crate) fn partial(sig: &Value, call_args: &[Value]) -> Vec<Value> {
    let own = args_of(sig);
    if call_args.is_empty() || immutable(sig) {
        own
    } else {
        call_args.iter().cloned().chain(own).collect()
    }
}

/// Celery's `_chord._descend`: how many results a header member adds to
/// its chord.
pub(crate) fn descend(sig: &Value) -> u64 {
    match kind(sig) {
        Kind::Group => tasks_of(sig)
            .map(|t| t.iter().map(descend).sum())
            .unwrap_or(0),
        Kind::Chain => tasks_of(sig)
            .ok()
            .and_then(|t| t.iter().rev().map(descend).find(|n| *n > 0))
            .unwrap_or(0),
        Kind::Chord => kwarg(sig, "body").map_or(0, descend),
        Kind::Task => 1,
    }
}

/// Gives every signature in `sig` an id (Celery's `freeze`), in place, and
/// returns the tuple of its result.
pub(crate) fn freeze(sig: &mut Value, depth: usize) -> Result<Value, CodecError> {
    if depth > MAX_DEPTH {
        return Err(malformed("the canvas nests too deeply"));
    }
    match kind(sig) {
        Kind::Task => {
            let opts = options_mut(sig)?;
            let id = match opts.get("task_id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => {
                    let id = new_id();
                    opts.insert("task_id".into(), json!(id));
                    id
                }
            };
            Ok(task_tuple(&id))
        }
        Kind::Chain => {
            let mut last = Value::Null;
            let tasks = sig
                .pointer_mut("/kwargs/tasks")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| malformed("a chain signature without kwargs.tasks"))?;
            for t in tasks.iter_mut() {
                last = freeze(t, depth + 1)?;
            }
            if let Some(id) = last.pointer("/0/0").cloned() {
                options_mut(sig)?.insert("task_id".into(), id);
            }
            Ok(last)
        }
        Kind::Group => {
            let gid = ensure_task_id(sig)?;
            let mut members = Vec::new();
            if let Some(tasks) = sig
                .pointer_mut("/kwargs/tasks")
                .and_then(Value::as_array_mut)
            {
                for t in tasks.iter_mut() {
                    members.push(freeze(t, depth + 1)?);
                }
            }
            Ok(group_tuple(&gid, members))
        }
        Kind::Chord => {
            let chord_id = option(sig, "task_id").cloned();
            let body = sig
                .pointer_mut("/kwargs/body")
                .filter(|b| !b.is_null())
                .ok_or_else(|| malformed("a chord signature without kwargs.body"))?;
            if option(body, "task_id").is_none()
                && let Some(id) = chord_id
            {
                options_mut(body)?.insert("task_id".into(), id);
            }
            freeze(body, depth + 1)
        }
    }
}

/// The id in `options.task_id`, given one if missing.
pub(crate) fn ensure_task_id(sig: &mut Value) -> Result<String, CodecError> {
    let opts = options_mut(sig)?;
    match opts.get("task_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => {
            let id = new_id();
            opts.insert("task_id".into(), json!(id));
            Ok(id)
        }
    }
}

/// Whether `sig` is a chain whose first step is a task (Celery's
/// `_is_chain_led_by_task`).
pub(crate) fn led_by_task(sig: &Value) -> bool {
    kind(sig) == Kind::Chain
        && tasks_of(sig).is_ok_and(|t| t.first().is_some_and(|f| kind(f) == Kind::Task))
}

/// A chord of `header` (a group) into `body`.
pub(crate) fn upgrade(header: Value, body: Value) -> Value {
    json!({
        "task": "celery.chord",
        "args": [],
        "kwargs": {"header": header, "body": body, "kwargs": {}},
        "options": {},
        "subtask_type": "chord",
        "immutable": false,
    })
}

/// The tasks of a group, nested groups unrolled, each with its index in
/// its own group.
pub(crate) fn unrolled(sig: &Value, depth: usize) -> Result<Vec<(Value, u64)>, CodecError> {
    if depth > MAX_DEPTH {
        return Err(malformed("the canvas nests too deeply"));
    }
    let mut out = Vec::new();
    for (i, t) in tasks_of(sig)?.into_iter().enumerate() {
        match kind(&t) {
            Kind::Group => out.extend(unrolled(&t, depth + 1)?),
            Kind::Chain if tasks_of(&t).is_ok_and(|t| t.is_empty()) => {}
            _ => out.push((t, i as u64)),
        }
    }
    Ok(out)
}

/// Whether `sig` is `chunks(task, it, n)`.
pub(crate) fn is_chunks(sig: &Value) -> bool {
    sig.get("subtask_type").and_then(Value::as_str) == Some("chunks")
}

/// Celery's `chunks.group()`: a group of `celery.starmap` signatures, one
/// per `n` items (each immutable, so a partial result is not prepended).
pub(crate) fn chunks_group(sig: &Value) -> Result<Value, CodecError> {
    let task = kwarg(sig, "task").ok_or_else(|| malformed("chunks without kwargs.task"))?;
    let items = match kwarg(sig, "it") {
        Some(Value::Array(items)) => items.clone(),
        _ => return Err(malformed("chunks without a kwargs.it list")),
    };
    let n = kwarg(sig, "n")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| malformed("chunks without a positive kwargs.n"))?;
    let parts: Vec<Value> = items
        .chunks(usize::try_from(n).unwrap_or(usize::MAX))
        .map(|part| {
            json!({"task": "celery.starmap", "args": [], "kwargs": {"task": task, "it": part},
                   "options": {}, "subtask_type": "xstarmap", "immutable": true})
        })
        .collect();
    let mut options = Map::new();
    if let Some(id) = option(sig, "task_id") {
        options.insert("task_id".into(), id.clone());
    }
    Ok(
        json!({"task": "celery.group", "args": [], "kwargs": {"tasks": parts},
              "options": options, "subtask_type": "group", "immutable": false}),
    )
}
