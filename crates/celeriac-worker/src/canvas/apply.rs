//! Applying a signature from inside a task, as Celery's worker does with
//! `sig.apply_async(args, **options)` (`celery/canvas.py`): the messages it
//! publishes and the chords it starts, for every kind of signature a
//! canvas carries.
//!
//! - a **task**: one message, the partial args prepended unless immutable;
//! - a **chain** (`celery.chain`, `kwargs.tasks`): nested chains spliced,
//!   a group followed by a step upgraded to a chord, a chord whose body is
//!   a chain unrolled; its first task is published with the rest (and any
//!   chain it was given) in `embed.chain`, and its last task carries the
//!   group, chord and id the chain was given;
//! - a **group** (`celery.group`, `kwargs.tasks`): each task published with
//!   `group_id` = the group's id, `group_index`, the partial args (nested
//!   groups unrolled);
//! - a **chord** (`celery.chord`, `kwargs.header` and `kwargs.body`): the
//!   header published as a group whose tasks carry the body in
//!   `embed.chord`, and a [`NewChord`] to record its size (or, without a
//!   join, to publish `celery.chord_unlock` first); an empty header calls
//!   the body at once with `[]`.
//!
//! Pure: [`settle`](crate::settle) records the sizes and publishes.

use celeriac_core::{CodecError, Message, Signature};
use serde_json::{Map, Value, json};

use super::sig::{
    Kind, MAX_DEPTH, chunks_group, ensure_task_id, freeze, group_tuple, is_chunks, kind, kwarg,
    led_by_task, list_of, malformed, new_id, options_mut, partial, tasks_of, unrolled, upgrade,
};
pub(crate) use super::sig::{descend, task_tuple};

/// What applying signatures sends.
#[derive(Debug, Default)]
pub(crate) struct Sends {
    /// The messages, in publishing order.
    pub(crate) messages: Vec<Message>,
    /// The chords started: each to record before its header is published.
    pub(crate) chords: Vec<NewChord>,
}

/// A chord started by a worker: its size goes to the backend's join
/// before any header is published, or, when the backend has none, its
/// `celery.chord_unlock` is published first (as Celery's base backend
/// does).
#[derive(Debug)]
pub(crate) struct NewChord {
    /// The header's group id.
    pub(crate) group_id: String,
    /// How many header results complete it (Celery's `_descend`).
    pub(crate) size: u64,
    /// The `celery.chord_unlock` that joins it without a native join.
    pub(crate) unlock: Message,
}

/// How a signature is applied: the options Celery's worker passes to
/// `apply_async`.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    /// The task publishing it (`parent_id`; its root is the root).
    pub(crate) parent: &'a Message,
    /// Partial args, prepended to the signature's own unless immutable.
    pub(crate) args: Vec<Value>,
    /// The rest of the chain; `None` keeps the signature's own
    /// `options.chain`.
    pub(crate) chain: Option<Vec<Value>>,
    /// The group it belongs to and its place there (the group id is kept
    /// when the signature already names one, as Celery's `freeze` does).
    pub(crate) group: Option<(String, Option<u64>)>,
    /// The chord body it is a header part of.
    pub(crate) chord: Option<Value>,
}

impl<'a> Call<'a> {
    /// A plain call from `parent` with `args`.
    pub(crate) fn new(parent: &'a Message, args: Vec<Value>) -> Self {
        Call {
            parent,
            args,
            chain: None,
            group: None,
            chord: None,
        }
    }
}

/// What applying one signature gave: the result tuple of its
/// `AsyncResult` (Celery's `as_tuple()`), and the tuple the calling task
/// lists in its `children`.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The tuple of the result a client would wait on.
    pub(crate) result: Value,
    /// The tuple of what was published from the task.
    pub(crate) trail: Value,
}

/// Applies `sig` as `call` says, adding what it sends to `out`.
pub(crate) fn apply(sig: &Value, call: Call<'_>, out: &mut Sends) -> Result<Applied, CodecError> {
    apply_at(sig, call, out, 0)
}

fn apply_at(
    sig: &Value,
    call: Call<'_>,
    out: &mut Sends,
    depth: usize,
) -> Result<Applied, CodecError> {
    if depth > MAX_DEPTH {
        return Err(malformed("the canvas nests too deeply"));
    }
    if is_chunks(sig) {
        return group(&chunks_group(sig)?, call, out, depth);
    }
    match kind(sig) {
        Kind::Task => task(sig, call, out),
        Kind::Chain => chain(sig, call, out, depth),
        Kind::Group => match call.chain.as_deref() {
            // A group with steps after it: what Celery's client would have
            // sent, a chord whose body is the next step.
            Some([.., _]) => {
                let mut rest = call.chain.clone().unwrap_or_default();
                let body = rest.pop().expect("the chain is not empty");
                let chord = upgrade(sig.clone(), body);
                let call = Call {
                    chain: Some(rest),
                    ..call
                };
                chord_(&chord, call, out, depth)
            }
            _ => group(sig, call, out, depth),
        },
        Kind::Chord => chord_(sig, call, out, depth),
    }
}

/// One task's message.
fn task(sig: &Value, call: Call<'_>, out: &mut Sends) -> Result<Applied, CodecError> {
    let mut s = Signature::from_value(sig)?;
    if let Some((gid, index)) = call.group {
        s.options.entry("group_id").or_insert(json!(gid));
        if let Some(i) = index {
            s.options.insert("group_index".into(), json!(i));
        }
    }
    if let Some(body) = call.chord {
        s.options.insert("chord".into(), body);
    }
    let chain = match call.chain {
        Some(c) => c,
        None => list_of(s.options.get("chain")),
    };
    let mut m = s.call_after(call.parent, None, chain)?;
    if !s.immutable && !call.args.is_empty() {
        m.args.splice(0..0, call.args);
    }
    let t = task_tuple(m.id());
    out.messages.push(m);
    Ok(Applied {
        result: t.clone(),
        trail: t,
    })
}

/// Options of a composite that its caller's options replace (Celery
/// merges `dict(self.options, **options)`).
fn merged_options(sig: &Value, call: &Call<'_>) -> Map<String, Value> {
    let mut opts = sig
        .get("options")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(c) = &call.chain {
        opts.insert("chain".into(), Value::Array(c.clone()));
    }
    if let Some((gid, index)) = &call.group {
        opts.insert("group_id".into(), json!(gid));
        match index {
            Some(i) => opts.insert("group_index".into(), json!(i)),
            None => opts.remove("group_index"),
        };
    }
    if let Some(body) = &call.chord {
        opts.insert("chord".into(), body.clone());
    }
    opts
}

/// Options that go from a chain to its first task, or from a group to each
/// of its tasks (routing and timing; structure stays with the composite).
const PASSED_ON: &[&str] = &[
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "countdown",
    "eta",
    "expires",
    "time_limit",
    "soft_time_limit",
    "ignore_result",
];

fn pass_on(from: &Map<String, Value>, to: &mut Value) -> Result<(), CodecError> {
    let opts = options_mut(to)?;
    for key in PASSED_ON {
        if let Some(v) = from.get(*key).filter(|v| !v.is_null()) {
            opts.insert((*key).to_string(), v.clone());
        }
    }
    Ok(())
}

/// Celery's `_chain.run` and `prepare_steps`.
fn chain(
    sig: &Value,
    call: Call<'_>,
    out: &mut Sends,
    depth: usize,
) -> Result<Applied, CodecError> {
    let opts = merged_options(sig, &call);
    let args = partial(sig, &call.args);
    // The steps in order, then prepared from the last, as Celery does.
    let mut steps: Vec<Value> = tasks_of(sig)?;
    let mut prepared: Vec<Value> = Vec::new(); // last step first
    while let Some(step) = steps.pop() {
        match kind(&step) {
            Kind::Chain => {
                steps.extend(tasks_of(&step)?);
                continue;
            }
            Kind::Group => {
                let tasks = tasks_of(&step)?;
                if tasks.is_empty() && (!steps.is_empty() || !prepared.is_empty()) {
                    continue;
                }
                if let [one] = &tasks[..] {
                    // maybe_unroll_group: a group of one is its task.
                    steps.push(one.clone());
                    continue;
                }
                if let Some(body) = prepared.pop() {
                    prepared.push(upgrade(step, body));
                    continue;
                }
                prepared.push(step);
            }
            Kind::Chord => match kwarg(&step, "body").filter(|b| led_by_task(b)) {
                Some(body) => {
                    // chord(h, chain(b1, b2, ...)) -> chord(h, b1), b2, ...
                    let body_tasks = tasks_of(body)?;
                    let Some((first, rest)) = body_tasks.split_first() else {
                        prepared.push(step);
                        continue;
                    };
                    let mut head = step.clone();
                    head["kwargs"]["body"] = first.clone();
                    steps.push(head);
                    steps.extend(rest.iter().cloned());
                }
                None => prepared.push(step),
            },
            Kind::Task => prepared.push(step),
        }
    }
    if prepared.is_empty() {
        return Err(malformed("an empty chain"));
    }
    // The last task is the chain's result: it takes the chain's id, group
    // and chord.
    {
        let last = &mut prepared[0];
        let lo = options_mut(last)?;
        if let Some(id) = opts.get("task_id").filter(|v| !v.is_null()) {
            lo.entry("task_id").or_insert(id.clone());
        }
        if let Some(gid) = opts.get("group_id").filter(|v| !v.is_null()) {
            lo.entry("group_id").or_insert(gid.clone());
        }
        if let Some(i) = opts.get("group_index").filter(|v| !v.is_null()) {
            lo.insert("group_index".into(), i.clone());
        }
        if let Some(body) = opts.get("chord").filter(|v| !v.is_null()) {
            lo.insert("chord".into(), body.clone());
        }
        let links = list_of(opts.get("link"));
        if !links.is_empty() {
            let mut all = list_of(lo.get("link"));
            all.extend(links);
            lo.insert("link".into(), Value::Array(all));
        }
    }
    let errbacks = list_of(opts.get("link_error"));
    let mut result = Value::Null;
    for (i, step) in prepared.iter_mut().enumerate() {
        if !errbacks.is_empty() {
            let o = options_mut(step)?;
            let mut all = list_of(o.get("link_error"));
            all.extend(errbacks.iter().cloned());
            o.insert("link_error".into(), Value::Array(all));
        }
        let t = freeze(step, depth + 1)?;
        if i == 0 {
            result = t;
        }
    }
    let mut first = prepared.pop().expect("not empty");
    pass_on(&opts, &mut first)?;
    let mut rest = list_of(opts.get("chain"));
    rest.extend(prepared);
    let applied = apply_at(
        &first,
        Call {
            parent: call.parent,
            args,
            chain: Some(rest),
            group: None,
            chord: None,
        },
        out,
        depth + 1,
    )?;
    Ok(Applied {
        result,
        trail: applied.trail,
    })
}

/// Celery's `group.apply_async`.
fn group(
    sig: &Value,
    call: Call<'_>,
    out: &mut Sends,
    depth: usize,
) -> Result<Applied, CodecError> {
    let mut sig = sig.clone();
    let gid = ensure_task_id(&mut sig)?;
    let opts = merged_options(&sig, &call);
    let args = partial(&sig, &call.args);
    let mut tuples = Vec::new();
    for (mut member, index) in unrolled(&sig, depth)? {
        pass_on(&opts, &mut member)?;
        let member_chord = call.chord.clone();
        let applied = apply_at(
            &member,
            Call {
                parent: call.parent,
                args: args.clone(),
                chain: call.chain.clone(),
                group: Some((gid.clone(), Some(index))),
                chord: member_chord,
            },
            out,
            depth + 1,
        )?;
        tuples.push(applied.result);
    }
    let t = group_tuple(&gid, tuples);
    Ok(Applied {
        result: t.clone(),
        trail: t,
    })
}

/// Celery's `_chord.apply_async` and `run`.
fn chord_(
    sig: &Value,
    call: Call<'_>,
    out: &mut Sends,
    depth: usize,
) -> Result<Applied, CodecError> {
    let mut opts = merged_options(sig, &call);
    let chord_id = opts.remove("task_id").filter(|v| !v.is_null());
    opts.remove("parent_id");
    opts.remove("reply_to");
    let header_delay: Map<String, Value> = ["countdown", "eta"]
        .iter()
        .filter_map(|k| opts.remove(*k).map(|v| (k.to_string(), v)))
        .filter(|(_, v)| !v.is_null())
        .collect();
    let links = list_of(opts.remove("link").as_ref());
    let errbacks = list_of(opts.remove("link_error").as_ref());
    let args = partial(sig, &call.args);
    let header_kwargs = kwarg(sig, "kwargs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let header =
        kwarg(sig, "header").ok_or_else(|| malformed("a chord signature without kwargs.header"))?;
    let mut body = kwarg(sig, "body")
        .cloned()
        .ok_or_else(|| malformed("a chord signature without kwargs.body"))?;
    let (header, gid) = match header {
        Value::Array(tasks) => {
            let gid = chord_id
                .as_ref()
                .and_then(Value::as_str)
                .map_or_else(new_id, str::to_string);
            (
                json!({"task": "celery.group", "args": [], "kwargs": {"tasks": tasks},
                       "options": {"task_id": gid}, "subtask_type": "group", "immutable": false}),
                gid,
            )
        }
        h if kind(h) == Kind::Group => {
            let mut h = h.clone();
            let gid = ensure_task_id(&mut h)?;
            (h, gid)
        }
        // A single signature as the header: a group of one.
        other => {
            let gid = new_id();
            (
                json!({"task": "celery.group", "args": [], "kwargs": {"tasks": [other]},
                       "options": {"task_id": gid}, "subtask_type": "group", "immutable": false}),
                gid,
            )
        }
    };
    // The body: the chord's options (the rest of the chain, the outer
    // group and chord), its callbacks, then its id and group.
    {
        let bo = options_mut(&mut body)?;
        for (k, v) in &opts {
            bo.insert(k.clone(), v.clone());
        }
        if !links.is_empty() {
            let mut all = list_of(bo.get("link"));
            all.extend(links);
            bo.insert("link".into(), Value::Array(all));
        }
        if !errbacks.is_empty() {
            let mut all = list_of(bo.get("link_error"));
            all.extend(errbacks);
            bo.insert("link_error".into(), Value::Array(all));
        }
        if bo.get("task_id").is_none_or(Value::is_null)
            && let Some(id) = &chord_id
        {
            bo.insert("task_id".into(), id.clone());
        }
        bo.entry("group_id").or_insert(json!(gid));
    }
    let body_result = freeze(&mut body, depth + 1)?;
    let members = unrolled(&header, depth)?;
    if members.is_empty() {
        let applied = apply_at(
            &body,
            Call::new(call.parent, vec![json!([])]),
            out,
            depth + 1,
        )?;
        return Ok(applied);
    }
    let size = members.iter().map(|(m, _)| descend(m)).sum();
    // Published before the header: where its chord is joined.
    let at = out.chords.len();
    let mut tuples = Vec::new();
    for (mut member, index) in members {
        {
            let mo = options_mut(&mut member)?;
            for (k, v) in &header_delay {
                mo.insert(k.clone(), v.clone());
            }
        }
        if !header_kwargs.is_empty()
            && let Some(kw) = member.get_mut("kwargs")
            && let Some(kw) = kw.as_object_mut()
        {
            for (k, v) in &header_kwargs {
                kw.insert(k.clone(), v.clone());
            }
        }
        let applied = apply_at(
            &member,
            Call {
                parent: call.parent,
                args: args.clone(),
                chain: None,
                group: Some((gid.clone(), Some(index))),
                chord: Some(body.clone()),
            },
            out,
            depth + 1,
        )?;
        tuples.push(applied.result);
    }
    let unlock = super::unlock::unlock_message(call.parent, &gid, &body, tuples.clone())?;
    out.chords.insert(
        at,
        NewChord {
            group_id: gid.clone(),
            size,
            unlock,
        },
    );
    let header_tuple = group_tuple(&gid, tuples);
    let mut result = body_result;
    if let Some(parent) = result.pointer_mut("/0/1") {
        *parent = header_tuple.clone();
    }
    Ok(Applied {
        result,
        trail: header_tuple,
    })
}
