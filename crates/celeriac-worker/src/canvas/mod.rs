//! Canvas: what a finished task sends on for the `chain`, `callbacks`
//! (link), `errbacks` (link_error) and `chord` its message carries, with
//! the rules of Celery 5.x's worker (`celery/app/trace.py`,
//! `celery/backends/base.py`, `celery/backends/redis.py`):
//!
//! - **success**: the callbacks (several plain ones as one group), then
//!   the next chain step (the *last* signature of `chain`), each applied
//!   with the result as its first argument (unless immutable),
//!   `parent_id` = this task, the same root, *before* this task's result
//!   is stored, whose `children` lists them. A step or callback may be a
//!   task, a chain, a group or a chord ([`apply`]);
//! - **failure**: the FAILURE is stored under this task's id and under the
//!   id of every remaining chain step, nothing of the chain is published,
//!   and, after the FAILURE is stored, the errbacks go by Celery's arity
//!   rule ([`errback`]): those that take more than one argument and run
//!   here are called inline with `(request, exc, traceback)`, the others
//!   published as one group called with this task's id;
//! - **chord header part**: once its own result is stored, the part is
//!   joined ([`ChordPart`]); the part that completes the chord publishes
//!   the body with every result in header order, or, if a part failed,
//!   stores `ChordError` under the body's id and calls its errbacks
//!   ([`chord_complete`]). Without a join on the backend, the chord's
//!   `celery.chord_unlock` does this instead ([`unlock`]).
//!
//! Pure: it builds messages and results, [`settle`](crate::settle)
//! publishes and stores them.

mod apply;
pub(crate) mod errback;
mod sig;
#[cfg(test)]
mod tests;
pub(crate) mod unlock;

use celeriac_core::{CodecError, Message, ResultMeta, TaskError};
use serde_json::{Map, Value, json};

use apply::{Call, apply};
pub(crate) use apply::{NewChord, Sends};
pub(crate) use errback::Known;
#[cfg(test)]
pub(crate) use errback::NoTasks;

/// What a finished task sends on.
#[derive(Debug, Default)]
pub(crate) struct Continuation {
    /// Published before the task's own result is stored: the callbacks and
    /// the next chain step (success).
    pub(crate) before: Vec<Message>,
    /// Published after it: the errbacks (failure).
    pub(crate) after: Vec<Message>,
    /// Called inline after it, before `after` is published, their results
    /// not stored: the errbacks Celery's rule calls with `(request, exc,
    /// traceback)` ([`errback`]).
    pub(crate) inline: Vec<Message>,
    /// Chords started by `before` or `after`: recorded (or their
    /// `celery.chord_unlock` published) before anything is published.
    pub(crate) chords: Vec<NewChord>,
    /// Stored beside it: the FAILURE of every remaining chain step (or of
    /// a chord body whose unlock failed).
    pub(crate) also_store: Vec<ResultMeta>,
    /// Signatures that could not be sent on, and why (logged as errors).
    pub(crate) problems: Vec<String>,
    /// This task is a chord header part: what to join.
    pub(crate) chord: Option<ChordPart>,
}

/// A finished chord header part.
#[derive(Debug)]
pub(crate) struct ChordPart {
    /// The chord's group id.
    pub(crate) group_id: String,
    /// This part's place in the header.
    pub(crate) index: Option<u64>,
    /// Celery's part record: `[1, id, state, result]`.
    pub(crate) part: Value,
    /// The chord's body, as the header message carries it.
    pub(crate) body: Value,
}

impl Continuation {
    /// Whether there is nothing to publish or store (problems aside).
    pub(crate) fn sends_nothing(&self) -> bool {
        self.before.is_empty()
            && self.after.is_empty()
            && self.inline.is_empty()
            && self.chords.is_empty()
            && self.also_store.is_empty()
            && self.chord.is_none()
    }

    fn send_before(&mut self, s: Sends) {
        self.before.extend(s.messages);
        self.chords.extend(s.chords);
    }

    fn send_after(&mut self, s: Sends) {
        self.after.extend(s.messages);
        self.chords.extend(s.chords);
    }

    /// Applies `sig` as `call` says; its messages go to `before` and its
    /// result tuple to `children`, or the reason it cannot go to
    /// `problems`.
    fn apply_before(&mut self, sig: &Value, call: Call<'_>, children: &mut Vec<Value>) {
        let mut out = Sends::default();
        match apply(sig, call, &mut out) {
            Ok(applied) => {
                children.push(applied.trail);
                self.send_before(out);
            }
            Err(e) => self.problems.push(e.to_string()),
        }
    }
}

/// Celery's built-in `celery.chunks(task, it, n)`.
pub(crate) const CHUNKS: &str = "celery.chunks";

/// The group of `celery.starmap` that `celery.chunks(task, it, n)` sends.
pub(crate) fn chunks_of(args: &[Value], kwargs: &Map<String, Value>) -> Result<Value, CodecError> {
    let mut params = serde_json::Map::new();
    for (i, name) in ["task", "it", "n"].iter().enumerate() {
        if let Some(v) = args.get(i).or_else(|| kwargs.get(*name)) {
            params.insert((*name).to_string(), v.clone());
        }
    }
    sig::chunks_group(&json!({"task": CHUNKS, "args": [], "kwargs": params,
                              "options": {}, "subtask_type": "chunks"}))
}

/// A group of `tasks` with a fresh id, as Celery's worker makes of several
/// callbacks or errbacks.
fn group_of(tasks: Vec<Value>) -> Value {
    json!({
        "task": "celery.group", "args": [], "kwargs": {"tasks": tasks},
        "options": {"task_id": uuid::Uuid::new_v4().to_string()},
        "subtask_type": "group", "immutable": false,
    })
}

fn is_group(sig: &Value) -> bool {
    sig.get("subtask_type").and_then(Value::as_str) == Some("group")
}

/// After a success: the callbacks and the next chain step, listed as the
/// result's `children`.
pub(crate) fn on_success(msg: &Message, result: &mut ResultMeta) -> Continuation {
    let mut c = Continuation::default();
    let retval = result.result.clone();
    let mut children = Vec::new();
    let callbacks: Vec<Value> = msg.embed.callbacks.iter().flatten().cloned().collect();
    if let [one] = &callbacks[..] {
        c.apply_before(one, Call::new(msg, vec![retval.clone()]), &mut children);
    } else if !callbacks.is_empty() {
        // Celery 5.7: each group callback applied on its own, the other
        // callbacks together as one group.
        let (groups, plain): (Vec<Value>, Vec<Value>) = callbacks.into_iter().partition(is_group);
        for g in &groups {
            c.apply_before(g, Call::new(msg, vec![retval.clone()]), &mut children);
        }
        if !plain.is_empty() {
            let g = group_of(plain);
            c.apply_before(&g, Call::new(msg, vec![retval.clone()]), &mut children);
        }
    }
    if let Some(chain) = msg.embed.chain.as_ref().filter(|c| !c.is_empty()) {
        let mut rest = chain.clone();
        let next = rest.pop().expect("the chain is not empty");
        let call = Call {
            chain: Some(rest),
            ..Call::new(msg, vec![retval.clone()])
        };
        c.apply_before(&next, call, &mut children);
    }
    result.children.extend(children);
    if msg.task() == unlock::CHORD_UNLOCK {
        unlock::on_success(msg, result, &mut c);
    }
    if msg.task() == CHUNKS {
        // Celery's `celery.chunks` task: `chunks(task, it, n)()`.
        let sent = chunks_of(&msg.args, &msg.kwargs).and_then(|g| {
            let mut out = Sends::default();
            let applied = apply(&g, Call::new(msg, Vec::new()), &mut out)?;
            Ok((applied, out))
        });
        match sent {
            Ok((applied, out)) => {
                result.children.push(applied.trail);
                c.send_before(out);
            }
            Err(e) => c.problems.push(format!("celery.chunks: {e}")),
        }
    }
    c.chord = chord_part(msg, &result.result, "SUCCESS", &mut c.problems);
    c
}

/// After a failure: the same FAILURE for every remaining chain step, and
/// the errbacks: called inline with `(request, exc, traceback)` or
/// published as one group called with the failed task's id, by Celery's
/// rule, with the tasks `known` to run here.
pub(crate) fn on_failure(msg: &Message, result: &ResultMeta, known: &dyn Known) -> Continuation {
    let mut c = Continuation::default();
    for step in msg.embed.chain.iter().flatten() {
        match chain_step_ids(step) {
            Ok(ids) => {
                for (id, name) in ids {
                    let mut failed = result.clone();
                    failed.task_id = id;
                    failed.parent_id = None;
                    failed.name = Some(name);
                    failed.children.clear();
                    c.also_store.push(failed);
                }
            }
            Err(e) => c.problems.push(e.to_string()),
        }
    }
    let errbacks: Vec<Value> = msg.embed.errbacks.iter().flatten().cloned().collect();
    if !errbacks.is_empty() {
        let split = errback::split(
            errbacks,
            msg,
            errback::request(msg),
            &result.result,
            result.traceback.as_deref(),
            known,
            &mut c.problems,
        );
        c.inline = split.inline;
        if !split.published.is_empty() {
            let mut out = Sends::default();
            match apply(
                &group_of(split.published),
                Call::new(msg, vec![json!(msg.id())]),
                &mut out,
            ) {
                Ok(_) => c.send_after(out),
                Err(e) => c.problems.push(e.to_string()),
            }
        }
    }
    if msg.task() == unlock::CHORD_UNLOCK {
        unlock::on_failure(msg, result, known, &mut c);
    }
    c.chord = chord_part(msg, &result.result, "FAILURE", &mut c.problems);
    c
}

/// A chord header part that joins with `stored` and runs nothing: one
/// delivered again after it finished (its worker died before the ack),
/// from its stored result, or one revoked or expired (REVOKED), so that
/// its chord fails instead of waiting forever. `None` for a message that
/// is no chord header part.
pub(crate) fn rejoin(msg: &Message, stored: &ResultMeta) -> Option<Continuation> {
    let mut c = Continuation::default();
    c.chord = chord_part(msg, &stored.result, stored.status.as_str(), &mut c.problems);
    c.chord.is_some().then_some(c)
}

/// The ids (and names) under which a chain step's failure is stored: the
/// step's own id, or for a chord or group step, its result's.
fn chain_step_ids(step: &Value) -> Result<Vec<(String, String)>, CodecError> {
    let sig = celeriac_core::Signature::from_value(step)?;
    if let Some(id) = sig.task_id() {
        return Ok(vec![(id.to_string(), sig.task.clone())]);
    }
    // A chord step: its body's result is what waits.
    if let Some(body) = sig.kwargs.get("body").filter(|b| b.is_object()) {
        return chain_step_ids(body);
    }
    Ok(Vec::new())
}

/// The chord this header part belongs to, if any.
fn chord_part(
    msg: &Message,
    result: &Value,
    state: &str,
    problems: &mut Vec<String>,
) -> Option<ChordPart> {
    let body = msg.embed.chord.as_ref().filter(|b| !b.is_null())?;
    let Some(group_id) = msg.headers.group.clone() else {
        problems.push("a chord header part without a group id".to_string());
        return None;
    };
    if !body.is_object() {
        problems.push(format!("the chord body is not a signature: {body}"));
        return None;
    }
    Some(ChordPart {
        part: json!([1, msg.id(), state, result]),
        index: msg.headers.group_index,
        group_id,
        body: body.clone(),
    })
}

/// What completing a chord sends.
#[derive(Debug)]
pub(crate) enum Completion {
    /// Every part succeeded: the body, called with the results.
    Body(Sends),
    /// A part failed: the body's ChordError, and its errbacks.
    Failed(BodyFailure),
}

/// A chord body that will not run.
#[derive(Debug, Default)]
pub(crate) struct BodyFailure {
    /// Its FAILURE (ChordError), under each id a client may wait on.
    pub(crate) metas: Vec<ResultMeta>,
    /// Its errbacks published, called with its id.
    pub(crate) errbacks: Sends,
    /// Its errbacks called inline, with `(request, ChordError, null)`,
    /// once its FAILURE is stored and before `errbacks` are published.
    pub(crate) inline: Vec<Message>,
}

/// Completes a chord whose `parts` (in header order) are all in, as the
/// part `last` that completed it: the body with every result (`parent_id`
/// = `last`), or, when a part failed, the body's ChordError naming the
/// first failed part (Celery's Redis backend `on_chord_part_return`).
pub(crate) fn chord_complete(
    chord: &ChordPart,
    last: &Message,
    parts: &[Value],
    known: &dyn Known,
) -> Result<Completion, CodecError> {
    let mut results = Vec::with_capacity(parts.len());
    for p in parts {
        let state = p.get(2).and_then(Value::as_str).unwrap_or("SUCCESS");
        let value = p.get(3).cloned().unwrap_or(Value::Null);
        if matches!(state, "FAILURE" | "REVOKED") {
            let id = p.get(1).and_then(Value::as_str).unwrap_or_default();
            let err = dependency_error(id, &value);
            return body_failed(&chord.body, Some(&chord.group_id), &err, known)
                .map(Completion::Failed);
        }
        results.push(value);
    }
    let mut out = Sends::default();
    apply(
        &chord.body,
        Call::new(last, vec![Value::Array(results)]),
        &mut out,
    )?;
    Ok(Completion::Body(out))
}

/// The ChordError of a chord whose part `id` failed with `exc` (Celery's
/// exception document): `Dependency <id> raised ValueError('boom')`.
pub(crate) fn dependency_error(id: &str, exc: &Value) -> TaskError {
    TaskError::typed(
        "ChordError",
        "celery.exceptions",
        format!("Dependency {id} raised {}", exception_repr(exc)),
    )
}

/// Fails a chord's `body` with `err`: its FAILURE under its id (each task's,
/// for a group body) and its errbacks, by Celery's rule called inline with
/// a request made from the body or published as one group called with its
/// id (Celery's `chord_error_from_stack`).
pub(crate) fn body_failed(
    body: &Value,
    group_id: Option<&str>,
    err: &TaskError,
    known: &dyn Known,
) -> Result<BodyFailure, CodecError> {
    let mut f = BodyFailure::default();
    let sig = celeriac_core::Signature::from_value(body)?;
    let ids: Vec<(String, String)> = if is_group(body) {
        let mut ids = Vec::new();
        for t in sig
            .kwargs
            .get("tasks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ids.extend(chain_step_ids(t)?);
        }
        ids
    } else {
        chain_step_ids(body)?
    };
    let group_id = sig
        .options
        .get("group_id")
        .and_then(Value::as_str)
        .or(group_id)
        .map(str::to_string);
    for (id, name) in &ids {
        let mut meta = ResultMeta::failure(id, err);
        meta.group_id = group_id.clone();
        meta.name = Some(name.clone());
        f.metas.push(meta);
    }
    let errbacks = match sig.options.get("link_error") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(one) => vec![one.clone()],
    };
    if let Some((body_id, name)) = ids.first()
        && !errbacks.is_empty()
    {
        // The errbacks' parent is the body itself, which is also their
        // root (Celery builds a request from the body's signature).
        let mut parent = Message::with_id(name, body_id, Vec::new(), Map::new());
        parent.headers.root_id = Some(body_id.clone());
        // Celery's fake request: the body's own args, kwargs and errbacks.
        parent.args = sig.args.clone();
        parent.kwargs = sig.kwargs.clone();
        parent.embed.errbacks = Some(errbacks.clone());
        let exc = serde_json::to_value(err.to_exception_info()).unwrap_or(Value::Null);
        let mut problems = Vec::new();
        let split = errback::split(
            errbacks,
            &parent,
            errback::request(&parent),
            &exc,
            None,
            known,
            &mut problems,
        );
        if let Some(p) = problems.into_iter().next() {
            return Err(CodecError::Malformed(p));
        }
        f.inline = split.inline;
        if !split.published.is_empty() {
            apply(
                &group_of(split.published),
                Call::new(&parent, vec![json!(body_id)]),
                &mut f.errbacks,
            )?;
        }
    }
    Ok(f)
}

/// Python's `repr()` of an exception from Celery's exception document
/// `{exc_type, exc_message, exc_module}`: `ValueError('boom')`.
fn exception_repr(exc: &Value) -> String {
    let exc_type = exc
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let args = match exc.get("exc_message") {
        Some(Value::Array(a)) => a.iter().map(py_repr).collect::<Vec<_>>().join(", "),
        None | Some(Value::Null) => String::new(),
        Some(one) => py_repr(one),
    };
    format!("{exc_type}({args})")
}

/// Python's `repr()` of a JSON value.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str_repr(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's `repr()` of a string: single quotes unless it holds one and no
/// double quote.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}
