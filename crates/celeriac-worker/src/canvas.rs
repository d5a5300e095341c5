//! Canvas: what a finished task sends on for the `chain`, `callbacks`
//! (link) and `errbacks` (link_error) its message carries, with the rules
//! of Celery 5.x's worker (`celery/app/trace.py`,
//! `celery/backends/base.py`):
//!
//! - **success**: the next chain step (the *last* signature of `chain`)
//!   and every callback are published with the result prepended to their
//!   args (unless immutable), `parent_id` = this task, the same root,
//!   *before* this task's result is stored, whose `children` lists them;
//! - **failure**: the FAILURE is stored under this task's id and under the
//!   id of every remaining chain step, nothing of the chain is published,
//!   and each errback is published, after the FAILURE is stored, as a group
//!   of one called with this task's id.
//!
//! Pure: it builds messages and results, [`settle`](crate::settle)
//! publishes and stores them.

use celeriac_core::{Message, ResultMeta, Signature};
use serde_json::{Value, json};

/// What a finished task sends on.
#[derive(Debug, Default)]
pub(crate) struct Continuation {
    /// Published before the task's own result is stored: the next chain
    /// step and the callbacks (success).
    pub(crate) before: Vec<Message>,
    /// Published after it: the errbacks (failure).
    pub(crate) after: Vec<Message>,
    /// Stored beside it: the FAILURE of every remaining chain step.
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
    /// The chord's body.
    pub(crate) body: Signature,
    /// This part failed: the body's ChordError FAILURE, to store instead
    /// of joining, and the body's errbacks, called with the body's id.
    pub(crate) failed: Option<(ResultMeta, Vec<Message>)>,
}

impl Continuation {
    /// Whether there is nothing to publish or store (problems aside).
    pub(crate) fn sends_nothing(&self) -> bool {
        self.before.is_empty()
            && self.after.is_empty()
            && self.also_store.is_empty()
            && self.chord.is_none()
    }
}

/// One signature into a message; a composite one (a group or chord inside
/// a chain) is not sent on yet, and says so.
fn call(
    sig: &Value,
    msg: &Message,
    arg: Option<&Value>,
    chain: Vec<Value>,
    problems: &mut Vec<String>,
) -> Option<Message> {
    let built = Signature::from_value(sig).and_then(|s| {
        if let Some(kind) = s.subtask_type.as_deref().filter(|k| !k.is_empty()) {
            return Err(celeriac_core::CodecError::Malformed(format!(
                "a {kind} signature ({}) in a canvas is not supported yet",
                s.task
            )));
        }
        s.call_after(msg, arg, chain)
    });
    match built {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    }
}

/// After a success: the next chain step and the callbacks, listed as the
/// result's `children`.
pub(crate) fn on_success(msg: &Message, result: &mut ResultMeta) -> Continuation {
    let mut c = Continuation::default();
    if let Some(chain) = msg.embed.chain.as_ref().filter(|c| !c.is_empty()) {
        let mut rest = chain.clone();
        let next = rest.pop().expect("the chain is not empty");
        c.before.extend(call(
            &next,
            msg,
            Some(&result.result),
            rest,
            &mut c.problems,
        ));
    }
    for cb in msg.embed.callbacks.iter().flatten() {
        c.before.extend(call(
            cb,
            msg,
            Some(&result.result),
            Vec::new(),
            &mut c.problems,
        ));
    }
    result
        .children
        .extend(c.before.iter().map(|m| json!([[m.id(), null], null])));
    c.chord = chord_part(msg, &result.result, "SUCCESS", None, &mut c.problems);
    c
}

/// The chord this header part belongs to, if any.
fn chord_part(
    msg: &Message,
    result: &Value,
    state: &str,
    failure: Option<&ResultMeta>,
    problems: &mut Vec<String>,
) -> Option<ChordPart> {
    let body = msg.embed.chord.as_ref().filter(|b| !b.is_null())?;
    let Some(group_id) = msg.headers.group.clone() else {
        problems.push("a chord header part without a group id".to_string());
        return None;
    };
    let body = match Signature::from_value(body) {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("the chord body: {e}"));
            return None;
        }
    };
    let failed = failure.map(|f| {
        let body_id = body
            .task_id()
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let why = f.error();
        let err = celeriac_core::TaskError::typed(
            "ChordError",
            "celery.exceptions",
            format!(
                "Dependency {} raised {}('{}')",
                msg.id(),
                why.exc_type(),
                why.message()
            ),
        );
        let mut meta = ResultMeta::failure(&body_id, &err);
        meta.group_id = Some(group_id.clone());
        meta.name = Some(body.task.clone());
        let mut errbacks = Vec::new();
        for eb in body
            .options
            .get("link_error")
            .map(|v| match v {
                Value::Array(a) => a.clone(),
                one => vec![one.clone()],
            })
            .unwrap_or_default()
        {
            if let Some(mut m) = call(&eb, msg, Some(&json!(body_id)), Vec::new(), problems) {
                m.headers.group = Some(uuid::Uuid::new_v4().to_string());
                m.headers.group_index = Some(0);
                errbacks.push(m);
            }
        }
        (meta, errbacks)
    });
    Some(ChordPart {
        part: json!([1, msg.id(), state, result]),
        index: msg.headers.group_index,
        group_id,
        body,
        failed,
    })
}

/// The chord's body, called with every header result in order, by the
/// header part that completed the chord.
pub(crate) fn chord_body(
    chord: &ChordPart,
    last: &Message,
    results: Vec<Value>,
) -> Result<Message, celeriac_core::CodecError> {
    let mut m = chord
        .body
        .call_after(last, Some(&Value::Array(results)), Vec::new())?;
    m.headers.group = Some(chord.group_id.clone());
    m.headers.group_index = None;
    Ok(m)
}

/// After a failure: the same FAILURE for every remaining chain step, and
/// the errbacks, each called with the failed task's id as a group of one.
pub(crate) fn on_failure(msg: &Message, result: &ResultMeta) -> Continuation {
    let mut c = Continuation::default();
    for step in msg.embed.chain.iter().flatten() {
        match Signature::from_value(step) {
            Ok(sig) => {
                if let Some(id) = sig.task_id() {
                    let mut failed = result.clone();
                    failed.task_id = id.to_string();
                    failed.parent_id = None;
                    failed.name = Some(sig.task.clone());
                    failed.children.clear();
                    c.also_store.push(failed);
                }
            }
            Err(e) => c.problems.push(e.to_string()),
        }
    }
    let failed_id = json!(msg.id());
    for eb in msg.embed.errbacks.iter().flatten() {
        if let Some(mut m) = call(eb, msg, Some(&failed_id), Vec::new(), &mut c.problems) {
            m.headers.group = Some(uuid::Uuid::new_v4().to_string());
            m.headers.group_index = Some(0);
            c.after.push(m);
        }
    }
    c.chord = chord_part(
        msg,
        &result.result,
        "FAILURE",
        Some(result),
        &mut c.problems,
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::{State, TaskError};

    fn chained() -> Message {
        let mut m = Message::new("tasks.add", vec![json!(1), json!(2)], Default::default());
        m.embed.chain = Some(vec![
            json!({"task": "tasks.mul", "args": [10], "options": {"task_id": "C"}}),
            json!({"task": "tasks.inc", "args": [], "options": {"task_id": "B"}}),
        ]);
        m.embed.callbacks = Some(vec![json!({"task": "tasks.log", "args": ["done"]})]);
        m.embed.errbacks = Some(vec![json!({"task": "tasks.on_err", "args": []})]);
        m
    }

    #[test]
    fn a_success_sends_the_next_step_and_the_callbacks_and_lists_them_as_children() {
        let m = chained();
        let mut result = ResultMeta::success(m.id(), json!(3));
        let c = on_success(&m, &mut result);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.before.len(), 2);
        let next = &c.before[0];
        assert_eq!((next.task(), next.id()), ("tasks.inc", "B"));
        assert_eq!(next.args, vec![json!(3)]);
        assert_eq!(next.headers.parent_id.as_deref(), Some(m.id()));
        assert_eq!(
            next.embed.chain,
            Some(vec![
                json!({"task": "tasks.mul", "args": [10], "options": {"task_id": "C"}})
            ]),
            "the rest of the chain travels with the next step"
        );
        assert_eq!(c.before[1].args, vec![json!(3), json!("done")]);
        assert!(c.after.is_empty() && c.also_store.is_empty());
        assert_eq!(result.children.len(), 2);
        assert_eq!(result.children[0], json!([["B", null], null]));
    }

    #[test]
    fn a_failure_fails_every_remaining_step_and_calls_the_errbacks_with_its_id() {
        let m = chained();
        let result = ResultMeta::failure(m.id(), &TaskError::new("boom"));
        let c = on_failure(&m, &result);
        assert!(c.before.is_empty(), "nothing of the chain is sent on");
        let ids: Vec<&str> = c.also_store.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["C", "B"]);
        assert!(c.also_store.iter().all(|r| r.status == State::Failure));
        assert_eq!(c.after.len(), 1);
        let eb = &c.after[0];
        assert_eq!(eb.args, vec![json!(m.id())]);
        assert_eq!(eb.headers.group_index, Some(0));
        assert!(eb.headers.group.is_some());
    }

    #[test]
    fn a_plain_message_sends_nothing_and_a_bad_signature_is_reported() {
        let plain = Message::new("t", vec![], Default::default());
        let mut r = ResultMeta::success(plain.id(), json!(1));
        let c = on_success(&plain, &mut r);
        assert!(c.sends_nothing() && c.problems.is_empty());
        let mut bad = plain.clone();
        bad.embed.chain = Some(vec![json!({"args": []})]);
        let c = on_success(&bad, &mut r);
        assert!(c.before.is_empty());
        assert_eq!(c.problems.len(), 1);
        bad.embed.chain = Some(vec![
            json!({"task": "celery.chord", "subtask_type": "chord"}),
        ]);
        let c = on_success(&bad, &mut r);
        assert!(
            c.problems[0].contains("not supported yet"),
            "{:?}",
            c.problems
        );
    }
}
