//! Canvas signatures on the Celery wire: the JSON objects that a message's
//! embed carries in `chain`, `callbacks` (link), `errbacks` (link_error) and
//! `chord`, and the messages a worker publishes from them.
//!
//! A signature, as Celery 5.x sends it:
//!
//! ```json
//! {"task": "tasks.mul", "args": [10], "kwargs": {}, "immutable": false,
//!  "subtask_type": null,
//!  "options": {"task_id": "<id>", "reply_to": "<oid>", "queue": "q",
//!              "priority": 5, "link_error": [...], "group_id": "<g>"}}
//! ```
//!
//! [`Signature::call_after`] builds the message that calls a signature
//! as the next step after its parent finished, with the rules Celery's
//! worker follows (`celery/app/trace.py`): the parent's return value
//! prepended to the args unless the signature is immutable, the id frozen
//! in `options.task_id`, `parent_id` = the parent, the parent's `root_id`,
//! and the signature's own queue, priority, countdown, eta and expiry.

use serde_json::{Map, Value};

use crate::error::CodecError;
use crate::message::{DEFAULT_QUEUE, Embed, Message};

/// A canvas signature: a task name with its arguments and call options.
///
/// # Examples
///
/// ```
/// use celeriac_core::{Message, Signature};
/// use serde_json::json;
///
/// let next = Signature::from_value(&json!({
///     "task": "tasks.mul", "args": [10], "kwargs": {},
///     "options": {"task_id": "step-2"}, "immutable": false
/// })).unwrap();
/// let parent = Message::new("tasks.add", vec![json!(1), json!(2)], Default::default());
/// let msg = next.call_after(&parent, Some(&json!(3)), Vec::new()).unwrap();
/// assert_eq!(msg.id(), "step-2");
/// assert_eq!(msg.args, vec![json!(3), json!(10)]);
/// assert_eq!(msg.headers.parent_id.as_deref(), Some(parent.id()));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Signature {
    /// The task name.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Call options (`task_id`, `queue`, `priority`, `countdown`, `eta`,
    /// `expires`, `link`, `link_error`, `group_id`, `group_index`, ...),
    /// kept as sent.
    pub options: Map<String, Value>,
    /// Whether the parent's result is *not* prepended to the args.
    pub immutable: bool,
    /// `group`, `chord`, `chain` for composite signatures, else `None`.
    pub subtask_type: Option<String>,
}

impl Signature {
    /// A signature of `task` with `args`.
    pub fn new(task: impl Into<String>, args: Vec<Value>) -> Self {
        Signature {
            task: task.into(),
            args,
            kwargs: Map::new(),
            options: Map::new(),
            immutable: false,
            subtask_type: None,
        }
    }

    /// Reads a signature from its JSON object. Missing `args`, `kwargs` and
    /// `options` are empty; a missing or non-string `task` is an error.
    pub fn from_value(v: &Value) -> Result<Self, CodecError> {
        let obj = v.as_object().ok_or_else(|| {
            CodecError::Malformed(format!("a signature must be an object, got {v}"))
        })?;
        let task = obj
            .get("task")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| CodecError::Malformed("a signature has no task name".to_string()))?
            .to_string();
        let args = match obj.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                return Err(CodecError::Malformed(format!(
                    "signature {task}: args must be a list, got {other}"
                )));
            }
        };
        let kwargs = match obj.get("kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(CodecError::Malformed(format!(
                    "signature {task}: kwargs must be an object, got {other}"
                )));
            }
        };
        let options = match obj.get("options") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(CodecError::Malformed(format!(
                    "signature {task}: options must be an object, got {other}"
                )));
            }
        };
        Ok(Signature {
            task,
            args,
            kwargs,
            options,
            immutable: obj
                .get("immutable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            subtask_type: obj
                .get("subtask_type")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The JSON object, as Celery sends it.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        })
    }

    /// The task id frozen in `options.task_id`, if any.
    pub fn task_id(&self) -> Option<&str> {
        self.options
            .get("task_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The queue the signature names (`options.queue`, or its
    /// `routing_key` for the default exchange), if any.
    pub fn queue(&self) -> Option<&str> {
        ["queue", "routing_key"]
            .iter()
            .find_map(|k| self.options.get(*k).and_then(queue_name))
    }

    /// The signatures of `options.<key>` (`link` or `link_error`): a list,
    /// or a single signature (Celery's `sig.set(link_error=x)` sends a
    /// dict, not a list).
    pub fn linked(&self, key: &str) -> Result<Vec<Signature>, CodecError> {
        signatures(self.options.get(key))
    }

    /// The message that calls this signature as the next step after
    /// `parent`, which returned `result` (`None`: nothing is prepended,
    /// e.g. an errback's arguments are set by the caller). `chain` is
    /// what remains of the chain after this step, in Celery's (reversed)
    /// order.
    pub fn call_after(
        &self,
        parent: &Message,
        result: Option<&Value>,
        chain: Vec<Value>,
    ) -> Result<Message, CodecError> {
        let mut args = Vec::with_capacity(self.args.len() + 1);
        if let Some(r) = result
            && !self.immutable
        {
            args.push(r.clone());
        }
        args.extend(self.args.iter().cloned());
        let id = self
            .task_id()
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut msg = Message::with_id(&self.task, &id, args, self.kwargs.clone());
        msg.headers.parent_id = Some(parent.id().to_string());
        msg.headers.root_id = Some(
            parent
                .headers
                .root_id
                .clone()
                .unwrap_or_else(|| parent.id().to_string()),
        );
        msg.headers.group = self
            .options
            .get("group_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        msg.headers.group_index = self.options.get("group_index").and_then(Value::as_u64);
        msg.headers.ignore_result = self.options.get("ignore_result").and_then(Value::as_bool);
        let now = crate::time::unix_now();
        msg.headers.eta = match (self.options.get("eta"), self.options.get("countdown")) {
            (Some(Value::String(eta)), _) => Some(eta.clone()),
            (_, Some(c)) => c
                .as_f64()
                .filter(|c| c.is_finite() && *c > 0.0)
                .map(|c| crate::time::iso_from_unix(now + c)),
            _ => None,
        };
        msg.headers.expires = match self.options.get("expires") {
            Some(Value::String(at)) => Some(at.clone()),
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite())
                .map(|s| crate::time::iso_from_unix(now + s)),
            None => None,
        };
        msg.headers.timelimit = (
            self.options.get("time_limit").and_then(Value::as_f64),
            self.options.get("soft_time_limit").and_then(Value::as_f64),
        );
        msg.properties.priority = self
            .options
            .get("priority")
            .and_then(Value::as_u64)
            .map_or(parent.properties.priority, |p| p.min(255) as u8);
        msg.set_queue(self.queue().unwrap_or(DEFAULT_QUEUE));
        msg.embed = Embed {
            callbacks: list(self.options.get("link")),
            errbacks: list(self.options.get("link_error")),
            // A chord's body carries the rest of its chain in its own
            // options (Celery's client puts it there for a chain that
            // continues after a chord); the caller's chain wins otherwise.
            chain: Some(match self.options.get("chain") {
                Some(Value::Array(rest)) if chain.is_empty() => rest.clone(),
                _ => chain,
            }),
            chord: self.options.get("chord").filter(|c| !c.is_null()).cloned(),
            extra: Map::new(),
        };
        Ok(msg)
    }
}

/// A queue option: a name, or kombu's `{"name": ...}` queue object.
fn queue_name(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(o) => o
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// A list of signature objects from a list, a single object or nothing.
fn list(v: Option<&Value>) -> Option<Vec<Value>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a.clone()),
        Some(one) => Some(vec![one.clone()]),
    }
}

/// Parses a list of signatures, or a single one; `None` or `null` is none.
pub fn signatures(v: Option<&Value>) -> Result<Vec<Signature>, CodecError> {
    list(v)
        .unwrap_or_default()
        .iter()
        .map(Signature::from_value)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parent() -> Message {
        let mut m = Message::new("tasks.add", vec![json!(1), json!(2)], Map::new());
        m.headers.root_id = Some("root".into());
        m.properties.priority = 3;
        m
    }

    #[test]
    fn the_result_is_prepended_unless_immutable() {
        let mut sig = Signature::new("tasks.mul", vec![json!(10)]);
        let m = sig
            .call_after(&parent(), Some(&json!(3)), Vec::new())
            .unwrap();
        assert_eq!(m.args, vec![json!(3), json!(10)]);
        sig.immutable = true;
        let m = sig
            .call_after(&parent(), Some(&json!(3)), Vec::new())
            .unwrap();
        assert_eq!(m.args, vec![json!(10)]);
    }

    #[test]
    fn ids_root_parent_queue_priority_and_the_rest_of_the_chain_are_carried() {
        let rest = vec![json!({"task": "tasks.last"})];
        let sig = Signature::from_value(&json!({
            "task": "tasks.inc", "args": [], "kwargs": {"k": 1},
            "options": {"task_id": "B", "queue": "py", "link_error": {"task": "tasks.err"}}
        }))
        .unwrap();
        let p = parent();
        let m = sig.call_after(&p, Some(&json!(3)), rest.clone()).unwrap();
        assert_eq!(m.id(), "B");
        assert_eq!(m.headers.parent_id.as_deref(), Some(p.id()));
        assert_eq!(m.headers.root_id.as_deref(), Some("root"));
        assert_eq!(m.queue(), "py");
        assert_eq!(m.properties.priority, 3, "the parent's priority");
        assert_eq!(m.kwargs["k"], json!(1));
        assert_eq!(m.embed.chain, Some(rest));
        assert_eq!(
            m.embed.errbacks,
            Some(vec![json!({"task": "tasks.err"})]),
            "a single link_error dict becomes a list"
        );
        let again = Message::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(again.embed.chain, m.embed.chain);
    }

    #[test]
    fn a_signature_without_a_frozen_id_gets_a_fresh_one_and_the_default_queue() {
        let sig = Signature::new("tasks.x", vec![]);
        let a = sig.call_after(&parent(), None, Vec::new()).unwrap();
        let b = sig.call_after(&parent(), None, Vec::new()).unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.queue(), DEFAULT_QUEUE);
        assert!(a.args.is_empty());
    }

    #[test]
    fn a_chord_body_sends_on_the_chain_in_its_options() {
        let rest = vec![json!({"task": "tasks.add", "args": [1]})];
        let body = Signature::from_value(&json!({
            "task": "tasks.tsum", "options": {"task_id": "T", "chain": rest}
        }))
        .unwrap();
        let m = body
            .call_after(&parent(), Some(&json!([1, 2])), Vec::new())
            .unwrap();
        assert_eq!(m.embed.chain, Some(rest));
        let own = vec![json!({"task": "tasks.other"})];
        let m = body.call_after(&parent(), None, own.clone()).unwrap();
        assert_eq!(m.embed.chain, Some(own), "a chain the caller gives wins");
    }

    #[test]
    fn malformed_signatures_are_errors_not_guesses() {
        for bad in [
            json!("tasks.add"),
            json!({"args": []}),
            json!({"task": ""}),
            json!({"task": "t", "args": "x"}),
            json!({"task": "t", "kwargs": []}),
            json!({"task": "t", "options": 3}),
        ] {
            assert!(Signature::from_value(&bad).is_err(), "{bad}");
        }
        assert!(signatures(Some(&json!([{"task": "a"}, 1]))).is_err());
        assert_eq!(signatures(Some(&Value::Null)).unwrap(), vec![]);
    }

    #[test]
    fn a_value_round_trips() {
        let v = json!({"task": "t", "args": [1], "kwargs": {"a": 2},
                       "options": {"task_id": "x"}, "subtask_type": null, "immutable": true});
        assert_eq!(Signature::from_value(&v).unwrap().to_value(), v);
    }
}
