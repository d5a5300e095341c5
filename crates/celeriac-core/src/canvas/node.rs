//! The untyped canvas tree the typed API builds and the lowering consumes:
//! tasks, chains, groups and chords, each with Celery's signature
//! `options`, and the JSON form Celery gives each of them
//! (`celery.chain`, `celery.group`, `celery.chord` for composites).

use serde_json::{Map, Value, json};

use crate::task::Call;

/// One node of a canvas.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// Celery's signature options (`task_id`, `queue`, `group_id`, ...).
    pub(crate) options: Map<String, Value>,
    /// Callbacks on success (`link`), placed where Celery places them when
    /// the canvas is lowered.
    pub(crate) link: Vec<Node>,
    /// Callbacks on failure (`link_error`).
    pub(crate) link_error: Vec<Node>,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Task(TaskNode),
    Chain(Vec<Node>),
    Group(Vec<Node>),
    /// `header` is a group node: its options are the header group's.
    Chord {
        header: Box<Node>,
        body: Box<Node>,
    },
}

/// A task signature's own parts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskNode {
    pub(crate) name: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
    /// The parent's result is not prepended.
    pub(crate) immutable: bool,
    /// Frozen by the caller: gets `reply_to` when lowered, as Celery's
    /// `sig.freeze()` does.
    pub(crate) frozen: bool,
    /// Extra headers of the message when the client sends it (an
    /// idempotency key).
    pub(crate) headers: Map<String, Value>,
    /// Why it cannot be sent (an argument that is not JSON).
    pub(crate) error: Option<String>,
}

impl Node {
    pub(crate) fn new(kind: Kind) -> Self {
        Node {
            kind,
            options: Map::new(),
            link: Vec::new(),
            link_error: Vec::new(),
        }
    }

    /// A task node from a typed call: its name, arguments and options as
    /// Celery's signature options (`countdown` stays relative, so a chain
    /// step is delayed from when it is sent).
    pub(crate) fn from_call<T>(call: Call<T>) -> Self {
        let o = call.options();
        let mut options = Map::new();
        let mut error = call.error().map(str::to_string);
        if call.name().is_empty() {
            error.get_or_insert_with(|| "the task name is empty".to_string());
        }
        if let Some(q) = &o.queue {
            if q.is_empty() {
                error.get_or_insert_with(|| "the queue name is empty".to_string());
            }
            options.insert("queue".into(), json!(q));
        }
        if let Some(d) = o.countdown {
            options.insert("countdown".into(), json!(d.as_secs_f64()));
        }
        for (key, at) in [("eta", o.eta), ("expires", o.expires)] {
            if let Some(at) = at {
                match crate::time::try_iso_from_unix(at) {
                    Some(iso) => {
                        options.insert(key.into(), json!(iso));
                    }
                    None => {
                        error.get_or_insert_with(|| format!("{key} is out of range: {at}"));
                    }
                }
            }
        }
        if let Some(p) = o.priority {
            options.insert("priority".into(), json!(p));
        }
        if let Some(id) = &o.task_id {
            options.insert("task_id".into(), json!(id));
        }
        if let Some(i) = o.ignore_result {
            options.insert("ignore_result".into(), json!(i));
        }
        if let Some(t) = o.time_limit {
            options.insert("time_limit".into(), json!(t));
        }
        if let Some(t) = o.soft_time_limit {
            options.insert("soft_time_limit".into(), json!(t));
        }
        let mut headers = Map::new();
        if let Some(key) = &o.idempotency_key {
            headers.insert(crate::task::IDEMPOTENCY_HEADER.into(), json!(key));
        }
        let mut node = Node::new(Kind::Task(TaskNode {
            name: call.name().to_string(),
            args: call.args().to_vec(),
            kwargs: call.kwargs().clone(),
            immutable: false,
            frozen: false,
            headers,
            error,
        }));
        node.options = options;
        node
    }

    /// A task node of a Celery built-in (`celery.map`, `celery.starmap`)
    /// over `task`, immutable like Celery's.
    pub(crate) fn builtin(name: &str, kwargs: Map<String, Value>) -> Self {
        let mut n = Node::from_call(Call::<Value>::new(name.to_string()).with_kwargs(kwargs));
        if let Kind::Task(t) = &mut n.kind {
            t.immutable = true;
        }
        n
    }

    /// The task id frozen in `options.task_id`.
    pub(crate) fn task_id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// The first reason the canvas cannot be sent, if any.
    pub(crate) fn error(&self) -> Option<String> {
        let own = match &self.kind {
            Kind::Task(t) => t.error.as_ref().map(|e| format!("{}: {e}", t.name)),
            Kind::Chain(steps) | Kind::Group(steps) => steps.iter().find_map(Node::error),
            Kind::Chord { header, body } => header.error().or_else(|| body.error()),
        };
        own.or_else(|| {
            self.link
                .iter()
                .chain(&self.link_error)
                .find_map(Node::error)
        })
    }

    /// Applies `f` to every task node, links included.
    pub(crate) fn for_each_task(
        &mut self,
        f: &mut dyn FnMut(&mut TaskNode, &mut Map<String, Value>),
    ) {
        match &mut self.kind {
            Kind::Task(t) => f(t, &mut self.options),
            Kind::Chain(steps) | Kind::Group(steps) => {
                steps.iter_mut().for_each(|s| s.for_each_task(f));
            }
            Kind::Chord { header, body } => {
                header.for_each_task(f);
                body.for_each_task(f);
            }
        }
        for l in self.link.iter_mut().chain(self.link_error.iter_mut()) {
            l.for_each_task(f);
        }
    }

    /// Celery's `_chord._descend`: how many completions this node adds to
    /// the chord whose header it is in.
    pub(crate) fn chord_size(&self) -> u64 {
        match &self.kind {
            Kind::Task(_) => 1,
            Kind::Group(members) => members.iter().map(Node::chord_size).sum(),
            Kind::Chain(steps) => steps
                .iter()
                .rev()
                .map(Node::chord_size)
                .find(|n| *n > 0)
                .unwrap_or(0),
            Kind::Chord { body, .. } => body.chord_size(),
        }
    }

    /// Appends `value` to the list option `key`, unless it is there
    /// already (Celery's `append_to_list_option`).
    pub(crate) fn append_option(&mut self, key: &str, value: Value) {
        let items = self
            .options
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !items.is_array() {
            *items = Value::Array(vec![items.take()]);
        }
        if let Value::Array(a) = items
            && !a.contains(&value)
        {
            a.push(value);
        }
    }

    /// The JSON object Celery sends for this node.
    pub(crate) fn to_value(&self) -> Value {
        let mut options = self.options.clone();
        for (key, links) in [("link", &self.link), ("link_error", &self.link_error)] {
            if !links.is_empty() {
                let list = options
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = list {
                    a.extend(links.iter().map(Node::to_value));
                }
            }
        }
        match &self.kind {
            Kind::Task(t) => json!({
                "task": t.name, "args": t.args, "kwargs": t.kwargs, "options": options,
                "subtask_type": null, "immutable": t.immutable,
            }),
            Kind::Chain(steps) => json!({
                "task": "celery.chain", "args": [],
                "kwargs": {"tasks": steps.iter().map(Node::to_value).collect::<Vec<_>>()},
                "options": options, "subtask_type": "chain", "immutable": false,
            }),
            Kind::Group(members) => json!({
                "task": "celery.group", "args": [],
                "kwargs": {"tasks": members.iter().map(Node::to_value).collect::<Vec<_>>()},
                "options": options, "subtask_type": "group", "immutable": false,
            }),
            Kind::Chord { header, body } => json!({
                "task": "celery.chord", "args": [],
                "kwargs": {"kwargs": {}, "header": header.to_value(), "body": body.to_value()},
                "options": options, "subtask_type": "chord", "immutable": false,
            }),
        }
    }
}
