//! The result tree of a canvas, as Celery's client knows it: a task result
//! or a group result, each with the parent it waits on. Celery writes it as
//! nested tuples (`AsyncResult.as_tuple()`), in a result's `children` and
//! in `GroupResult.save` (`celery-taskset-meta-<gid>`).

use serde_json::{Value, json};

use crate::error::CodecError;

/// One node of a result tree: Celery's `AsyncResult` or `GroupResult`.
///
/// # Examples
///
/// ```
/// use celeriac_core::canvas::ResultNode;
/// use serde_json::json;
///
/// // A chain of two: the last step's result, whose parent is the first.
/// let chain = ResultNode::task("b").with_parent(ResultNode::task("a"));
/// assert_eq!(chain.as_tuple(), json!([["b", [["a", null], null]], null]));
/// let group = ResultNode::group("g", vec![ResultNode::task("t0"), ResultNode::task("t1")]);
/// assert_eq!(group.as_tuple(), json!([["g", null], [[["t0", null], null], [["t1", null], null]]]));
/// assert_eq!(ResultNode::from_tuple(&group.as_tuple()).unwrap(), group);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultNode {
    /// One task's result.
    Task {
        /// The task id.
        id: String,
        /// The result it follows (a chain's previous step, a chord's
        /// header), if known.
        parent: Option<Box<ResultNode>>,
    },
    /// A group's results.
    Group {
        /// The group id.
        id: String,
        /// The result it follows, if known.
        parent: Option<Box<ResultNode>>,
        /// Its members, in order.
        results: Vec<ResultNode>,
    },
}

impl ResultNode {
    /// A task result without a parent.
    pub fn task(id: impl Into<String>) -> Self {
        ResultNode::Task {
            id: id.into(),
            parent: None,
        }
    }

    /// A group result without a parent.
    pub fn group(id: impl Into<String>, results: Vec<ResultNode>) -> Self {
        ResultNode::Group {
            id: id.into(),
            parent: None,
            results,
        }
    }

    /// The same node with `parent`.
    pub fn with_parent(mut self, parent: ResultNode) -> Self {
        *self.parent_slot() = Some(Box::new(parent));
        self
    }

    /// The task or group id.
    pub fn id(&self) -> &str {
        match self {
            ResultNode::Task { id, .. } | ResultNode::Group { id, .. } => id,
        }
    }

    /// The parent, if known.
    pub fn parent(&self) -> Option<&ResultNode> {
        match self {
            ResultNode::Task { parent, .. } | ResultNode::Group { parent, .. } => parent.as_deref(),
        }
    }

    /// A group's members; empty for a task.
    pub fn results(&self) -> &[ResultNode] {
        match self {
            ResultNode::Task { .. } => &[],
            ResultNode::Group { results, .. } => results,
        }
    }

    /// Whether it is a group.
    pub fn is_group(&self) -> bool {
        matches!(self, ResultNode::Group { .. })
    }

    fn parent_slot(&mut self) -> &mut Option<Box<ResultNode>> {
        match self {
            ResultNode::Task { parent, .. } | ResultNode::Group { parent, .. } => parent,
        }
    }

    /// Gives the oldest ancestor, the one without a parent, `parent`: how
    /// Celery links a chain step's result to the step before it.
    pub(crate) fn set_root_parent(&mut self, parent: ResultNode) {
        let slot = self.parent_slot();
        match slot {
            Some(p) => p.set_root_parent(parent),
            None => *slot = Some(Box::new(parent)),
        }
    }

    /// Celery's `as_tuple()`: `[[id, parent], null]` for a task,
    /// `[[id, parent], [members]]` for a group.
    pub fn as_tuple(&self) -> Value {
        let parent = self.parent().map_or(Value::Null, ResultNode::as_tuple);
        match self {
            ResultNode::Task { id, .. } => json!([[id, parent], null]),
            ResultNode::Group { id, results, .. } => json!([
                [id, parent],
                results.iter().map(ResultNode::as_tuple).collect::<Vec<_>>()
            ]),
        }
    }

    /// Celery's `result_from_tuple`. A bare id string is a task.
    pub fn from_tuple(v: &Value) -> Result<Self, CodecError> {
        let bad = || CodecError::Malformed(format!("not a Celery result tuple: {v}"));
        if let Some(id) = v.as_str() {
            return Ok(ResultNode::task(id));
        }
        let pair = v.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
        let (id, parent) = match &pair[0] {
            Value::String(id) => (id.clone(), None),
            Value::Array(r) if r.len() == 2 => {
                let id = r[0].as_str().ok_or_else(bad)?.to_string();
                let parent = match &r[1] {
                    Value::Null => None,
                    p => Some(Box::new(ResultNode::from_tuple(p)?)),
                };
                (id, parent)
            }
            _ => return Err(bad()),
        };
        Ok(match &pair[1] {
            Value::Null => ResultNode::Task { id, parent },
            Value::Array(nodes) => ResultNode::Group {
                id,
                parent,
                results: nodes
                    .iter()
                    .map(ResultNode::from_tuple)
                    .collect::<Result<_, _>>()?,
            },
            _ => return Err(bad()),
        })
    }

    /// What `GroupResult.save()` stores under `celery-taskset-meta-<id>`:
    /// `{"result": <as_tuple>}`.
    pub fn group_meta(&self) -> Value {
        json!({ "result": self.as_tuple() })
    }

    /// Reads what `GroupResult.save()` stored.
    pub fn from_group_meta(v: &Value) -> Result<Self, CodecError> {
        let tuple = v.get("result").ok_or_else(|| {
            CodecError::Malformed(format!("a saved group has no \"result\": {v}"))
        })?;
        ResultNode::from_tuple(tuple)
    }

    /// The results a stored `children` field names, as Celery's
    /// `AsyncResult.children` reads them; entries it cannot read are
    /// skipped.
    pub fn from_children(children: &[Value]) -> Vec<ResultNode> {
        children
            .iter()
            .filter_map(|c| ResultNode::from_tuple(c).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_linked_at_the_oldest_ancestor() {
        let mut last = ResultNode::task("body")
            .with_parent(ResultNode::group("g", vec![ResultNode::task("h0")]));
        last.set_root_parent(ResultNode::task("first"));
        assert_eq!(
            last.as_tuple(),
            json!([
                [
                    "body",
                    [["g", [["first", null], null]], [[["h0", null], null]]]
                ],
                null
            ])
        );
    }

    #[test]
    fn tuples_round_trip_and_garbage_is_an_error() {
        let t = json!([["c", [["b", [["a", null], null]], null]], null]);
        assert_eq!(ResultNode::from_tuple(&t).unwrap().as_tuple(), t);
        for bad in [
            json!(1),
            json!([1, 2]),
            json!([["a"], null]),
            json!([["a", null], 3]),
        ] {
            assert!(ResultNode::from_tuple(&bad).is_err(), "{bad}");
        }
        let kids = ResultNode::from_children(&[json!([["x", null], null]), json!(7)]);
        assert_eq!(kids, vec![ResultNode::task("x")]);
    }
}
