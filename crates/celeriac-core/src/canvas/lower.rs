//! Lowering: what a client sends to apply a canvas, in order, with the
//! rules of Celery 5.7's client (`celery/canvas.py`: `Signature.freeze`,
//! `_chain.prepare_steps` and `run`, `group._freeze_group_tasks`,
//! `apply_async` and `_apply_tasks`, `_chord.freeze` and `run`).
//!
//! - A chain sends one message, its first step, whose `embed.chain` holds
//!   the other steps in reverse order, each frozen with its `task_id`.
//! - A group sends one message per member, with `group`/`group_index`.
//! - A chord sends its header like a group, each member carrying the body
//!   in `embed.chord`; the chord's size is recorded
//!   ([`Action::ChordSize`]) just before the last header member is sent.
//!
//! The result is a [`Plan`]: the actions in order and the result tree the
//! client waits on.

use serde_json::{Map, Value, json};

use super::CanvasError;
use super::compose::{add_link_error, flatten, strip_chord_header_links};
use super::node::{Kind, Node};
use super::outgoing::message;
use super::result::ResultNode;
use crate::message::Message;

/// Routes a task (by name) to a queue when its call names none.
pub type Route<'a> = dyn Fn(&str) -> Option<String> + Send + Sync + 'a;

/// What a client brings to lowering: its reply address (Celery's
/// `app.thread_oid`, stored in each frozen signature's `reply_to`) and its
/// routes.
pub struct PlanContext<'a> {
    reply_to: String,
    route: Option<&'a Route<'a>>,
}

impl std::fmt::Debug for PlanContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanContext")
            .field("reply_to", &self.reply_to)
            .field("route", &self.route.is_some())
            .finish()
    }
}

impl<'a> PlanContext<'a> {
    /// A context with `reply_to` (any stable id of the client) and no
    /// routes: tasks without a queue go to `celery`.
    pub fn new(reply_to: impl Into<String>) -> Self {
        PlanContext {
            reply_to: reply_to.into(),
            route: None,
        }
    }

    /// Routes every task whose call names no queue: `route(name)` gives
    /// its queue, or `None` for the default. Chain steps, group members,
    /// chord bodies and callbacks are routed too, since the worker that
    /// sends them on uses the queue the signature names.
    pub fn route(mut self, route: &'a Route<'a>) -> Self {
        self.route = Some(route);
        self
    }
}

/// One thing a client does to apply a canvas.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Send this message.
    Publish(Box<Message>),
    /// Record that chord `group_id` has `size` header parts
    /// ([`ChordJoin::set_size`](crate::ChordJoin::set_size)); Celery's
    /// `set_chord_size`, `SET K.s` on Redis.
    ChordSize {
        /// The chord's group id.
        group_id: String,
        /// How many header parts complete it.
        size: u64,
    },
}

/// What applying a canvas takes: the actions in order and the result tree.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Plan {
    /// The actions, in the order Celery's client takes them.
    pub actions: Vec<Action>,
    /// The canvas's result: the last step of a chain, a chord's body, a
    /// group's members, with the parents Celery's client links.
    pub result: ResultNode,
}

impl Plan {
    /// The messages to send, in order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.actions.iter().filter_map(|a| match a {
            Action::Publish(m) => Some(&**m),
            Action::ChordSize { .. } => None,
        })
    }

    /// Whether the canvas has a chord, whose join the result backend must
    /// support.
    pub fn has_chord(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::ChordSize { .. }))
    }
}

/// Lowers `node`.
pub(crate) fn plan(mut node: Node, ctx: &PlanContext<'_>) -> Result<Plan, CanvasError> {
    if let Some(e) = node.error() {
        return Err(CanvasError::InvalidArguments(e));
    }
    node.for_each_task(&mut |t, options| {
        if t.frozen && !options.contains_key("reply_to") {
            options.insert("reply_to".into(), json!(ctx.reply_to));
        }
        if let Some(route) = ctx.route
            && !options.contains_key("queue")
            && let Some(q) = route(&t.name)
        {
            options.insert("queue".into(), json!(q));
        }
    });
    let mut lower = Lower {
        ctx,
        actions: Vec::new(),
    };
    let result = lower.apply(node, Map::new())?;
    Ok(Plan {
        actions: lower.actions,
        result,
    })
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// The arguments of Celery's `freeze(_id, group_id, chord, root_id,
/// parent_id, group_index)`.
#[derive(Debug, Default, Clone)]
struct Freeze {
    id: Option<String>,
    group_id: Option<String>,
    chord: Option<Value>,
    root_id: Option<String>,
    parent_id: Option<String>,
    group_index: Option<u64>,
}

/// The arguments of `_chain.prepare_steps` that vary.
#[derive(Debug, Default)]
struct Prepare {
    last: Freeze,
    link_error: Vec<Node>,
    /// Applying (Celery clones and strips chord callbacks from headers),
    /// not only freezing.
    applying: bool,
}

struct Lower<'c, 'r> {
    ctx: &'c PlanContext<'r>,
    actions: Vec<Action>,
}

impl Lower<'_, '_> {
    /// `Signature.freeze` and its overrides.
    fn freeze(&mut self, node: &mut Node, f: Freeze) -> Result<ResultNode, CanvasError> {
        match &mut node.kind {
            Kind::Task(_) => Ok(self.freeze_task(node, f)),
            Kind::Chain(steps) => {
                let steps = std::mem::take(steps);
                let (tasks, results) = self.prepare(
                    steps,
                    Prepare {
                        last: f,
                        ..Prepare::default()
                    },
                )?;
                let result = chain_result(&results);
                node.options
                    .insert("task_id".into(), json!(results[0].id()));
                node.kind = Kind::Chain(tasks.into_iter().rev().collect());
                Ok(result)
            }
            Kind::Group(_) => self.freeze_group(node, f),
            Kind::Chord { header, body } => {
                let mut body_res = self.freeze(
                    body,
                    Freeze {
                        id: f.id,
                        root_id: f.root_id.clone(),
                        chord: f.chord,
                        group_id: f.group_id,
                        group_index: f.group_index,
                        parent_id: None,
                    },
                )?;
                let body_value = body.to_value();
                let header_res = self.freeze(
                    header,
                    Freeze {
                        parent_id: f.parent_id,
                        root_id: f.root_id,
                        chord: Some(body_value),
                        ..Freeze::default()
                    },
                )?;
                let gid = header_res.id().to_string();
                node.options.insert("task_id".into(), json!(gid));
                body_res.set_root_parent(header_res);
                Ok(body_res)
            }
        }
    }

    fn freeze_task(&self, node: &mut Node, f: Freeze) -> ResultNode {
        let o = &mut node.options;
        let id = match string(o.get("task_id")) {
            Some(id) => id,
            None => {
                let id = f.id.unwrap_or_else(uuid);
                o.insert("task_id".into(), json!(id));
                id
            }
        };
        if let Some(r) = f.root_id {
            o.insert("root_id".into(), json!(r));
        }
        if let Some(p) = f.parent_id {
            o.insert("parent_id".into(), json!(p));
        }
        if !o.contains_key("reply_to") {
            o.insert("reply_to".into(), json!(self.ctx.reply_to));
        }
        if let Some(g) = f.group_id
            && !o.contains_key("group_id")
        {
            o.insert("group_id".into(), json!(g));
        }
        if let Some(c) = f.chord {
            o.insert("chord".into(), c);
        }
        if let Some(i) = f.group_index {
            o.insert("group_index".into(), json!(i));
        }
        ResultNode::task(id)
    }

    /// `group._freeze_group_tasks`.
    fn freeze_group(&mut self, node: &mut Node, f: Freeze) -> Result<ResultNode, CanvasError> {
        let o = &mut node.options;
        let gid = string(o.get("task_id")).unwrap_or_else(uuid);
        o.insert("task_id".into(), json!(gid));
        if let Some(g) = &f.group_id {
            o.insert("group_id".into(), json!(g));
        }
        if let Some(c) = &f.chord {
            o.insert("chord".into(), c.clone());
        }
        if let Some(i) = f.group_index {
            o.insert("group_index".into(), json!(i));
        }
        let root_id = o
            .entry("root_id")
            .or_insert_with(|| f.root_id.clone().map_or(Value::Null, Value::String))
            .as_str()
            .map(str::to_string);
        let parent_id = o
            .entry("parent_id")
            .or_insert_with(|| f.parent_id.clone().map_or(Value::Null, Value::String))
            .as_str()
            .map(str::to_string);
        let Kind::Group(members) = &mut node.kind else {
            unreachable!("freeze_group is called on groups")
        };
        let mut results = Vec::with_capacity(members.len());
        for (i, m) in members.iter_mut().enumerate() {
            results.push(self.freeze(
                m,
                Freeze {
                    id: None,
                    group_id: f.group_id.clone(),
                    chord: f.chord.clone(),
                    root_id: root_id.clone(),
                    parent_id: parent_id.clone(),
                    group_index: Some(i as u64),
                },
            )?);
        }
        Ok(ResultNode::group(gid, results))
    }

    /// `_chain.prepare_steps`: the steps frozen, walking from the last,
    /// in reverse order (as `embed.chain` carries them), with each step's
    /// result. A group followed by a step becomes a chord with that step
    /// as its body; when applying, a chord whose body is a chain led by a
    /// task is unrolled into the chord and the rest of that chain.
    fn prepare(
        &mut self,
        steps: Vec<Node>,
        p: Prepare,
    ) -> Result<(Vec<Node>, Vec<ResultNode>), CanvasError> {
        let mut pending = flatten(steps, p.applying);
        let mut tasks: Vec<Node> = Vec::new();
        let mut results: Vec<ResultNode> = Vec::new();
        while let Some(mut task) = pending.pop() {
            let is_last = tasks.is_empty() && results.is_empty();
            if matches!(&task.kind, Kind::Group(m) if m.is_empty())
                && (!pending.is_empty() || !tasks.is_empty())
            {
                continue;
            }
            if matches!(task.kind, Kind::Group(_))
                && let Some(body) = tasks.pop()
            {
                let body_id = results.pop().map(|r| r.id().to_string());
                task = super::compose::chord(task, body);
                if let Some(id) = body_id {
                    task.options.insert("task_id".into(), json!(id));
                }
            }
            let res = if is_last {
                self.freeze(&mut task, p.last.clone())?
            } else {
                self.freeze(
                    &mut task,
                    Freeze {
                        root_id: p.last.root_id.clone(),
                        ..Freeze::default()
                    },
                )?
            };
            for eb in &p.link_error {
                add_link_error(&mut task, eb.clone());
            }
            tasks.push(task);
            results.push(res);
        }
        if tasks.is_empty() {
            return Err(CanvasError::Unsupported("an empty chain".into()));
        }
        if p.applying {
            tasks.iter_mut().for_each(strip_chord_header_links);
        }
        Ok((tasks, results))
    }

    /// Applies any node with Celery's `apply_async` options `opts`.
    fn apply(&mut self, node: Node, opts: Map<String, Value>) -> Result<ResultNode, CanvasError> {
        match &node.kind {
            Kind::Task(_) => self.apply_task(node, opts),
            Kind::Chain(_) => self.apply_chain(node, opts),
            Kind::Group(_) => self.apply_group(node, opts),
            Kind::Chord { .. } => self.apply_chord(node, opts),
        }
    }

    fn apply_task(
        &mut self,
        mut node: Node,
        opts: Map<String, Value>,
    ) -> Result<ResultNode, CanvasError> {
        materialize_links(&mut node);
        let mut o = node.options;
        for (k, v) in opts {
            if v.is_null() || (k == "group_id" && o.contains_key("group_id")) {
                continue;
            }
            o.insert(k, v);
        }
        let Kind::Task(task) = node.kind else {
            unreachable!("apply_task is called on tasks")
        };
        let msg = message(&task, &o)?;
        let id = msg.id().to_string();
        self.actions.push(Action::Publish(Box::new(msg)));
        Ok(ResultNode::task(id))
    }

    /// `_chain.run`: prepares the steps and sends the first with the rest.
    fn apply_chain(
        &mut self,
        node: Node,
        opts: Map<String, Value>,
    ) -> Result<ResultNode, CanvasError> {
        let (link, link_error) = (node.link, node.link_error);
        let mut o = node.options;
        o.extend(opts);
        let last = Freeze {
            id: string(o.remove("task_id").as_ref()),
            group_id: string(o.remove("group_id").as_ref()),
            chord: o.remove("chord").filter(|c| !c.is_null()),
            root_id: string(o.remove("root_id").as_ref()),
            parent_id: None,
            group_index: o.remove("group_index").and_then(|i| i.as_u64()),
        };
        o.remove("parent_id");
        let Kind::Chain(steps) = node.kind else {
            unreachable!("apply_chain is called on chains")
        };
        let (mut tasks, results) = self.prepare(
            steps,
            Prepare {
                last,
                link_error,
                applying: true,
            },
        )?;
        let result = chain_result(&results);
        for cb in link {
            match &mut tasks[0].kind {
                Kind::Group(_) => {
                    return Err(CanvasError::Unsupported(
                        "a group cannot be linked (Celery refuses it: use a chord)".into(),
                    ));
                }
                _ => super::compose::add_link(&mut tasks[0], cb),
            }
        }
        let first = tasks.pop().expect("prepare returns at least one step");
        let mut rest: Vec<Value> = match o.remove("chain") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        rest.extend(tasks.iter().map(Node::to_value));
        o.insert("chain".into(), Value::Array(rest));
        self.apply(first, o)?;
        Ok(result)
    }

    /// `group.apply_async` and `_apply_tasks`.
    fn apply_group(
        &mut self,
        mut node: Node,
        opts: Map<String, Value>,
    ) -> Result<ResultNode, CanvasError> {
        if !node.link.is_empty() || opts.get("link").is_some_and(|l| !l.is_null()) {
            return Err(CanvasError::Unsupported(
                "a group cannot be linked (Celery refuses it: use a chord)".into(),
            ));
        }
        for eb in std::mem::take(&mut node.link_error) {
            add_link_error(&mut node, eb);
        }
        let mut o = node.options.clone();
        for (k, v) in opts {
            if k == "group_id" && o.contains_key("group_id") {
                continue;
            }
            o.insert(k, v);
        }
        let gid = string(o.remove("task_id").as_ref()).unwrap_or_else(uuid);
        o.insert("group_id".into(), json!(gid));
        let root_id = string(o.get("root_id"));
        let chord = o.remove("chord").filter(|c| !c.is_null());
        let Kind::Group(members) = node.kind else {
            unreachable!("apply_group is called on groups")
        };
        let mut prepared = Vec::with_capacity(members.len());
        for (i, mut m) in members.into_iter().enumerate() {
            let res = self.freeze(
                &mut m,
                Freeze {
                    group_id: Some(gid.clone()),
                    root_id: root_id.clone(),
                    group_index: Some(i as u64),
                    ..Freeze::default()
                },
            )?;
            prepared.push((m, res));
        }
        let n = prepared.len();
        let mut size = 0;
        let mut results = Vec::with_capacity(n);
        for (i, (m, res)) in prepared.into_iter().enumerate() {
            let chord_obj = chord.clone().or_else(|| m.options.get("chord").cloned());
            size += m.chord_size();
            if chord_obj.is_some() && i + 1 == n {
                self.actions.push(Action::ChordSize {
                    group_id: gid.clone(),
                    size,
                });
            }
            let mut member_opts = o.clone();
            member_opts.insert("add_to_parent".into(), json!(false));
            if let Some(c) = chord_obj {
                member_opts.insert("chord".into(), c);
            }
            self.apply(m, member_opts)?;
            results.push(res);
        }
        Ok(ResultNode::group(gid, results))
    }

    /// `_chord.apply_async` and `run`.
    fn apply_chord(
        &mut self,
        node: Node,
        opts: Map<String, Value>,
    ) -> Result<ResultNode, CanvasError> {
        let (link, link_error) = (node.link, node.link_error);
        let Kind::Chord { header, body } = node.kind else {
            unreachable!("apply_chord is called on chords")
        };
        let (mut header, mut body) = (*header, *body);
        let mut options = node.options;
        options.extend(opts);
        options.remove("countdown");
        options.remove("eta");
        let task_id = string(options.remove("task_id").as_ref());
        let gid = string(header.options.get("task_id")).unwrap_or_else(uuid);
        let root_id = string(body.options.get("root_id"));
        for cb in link {
            super::compose::add_link(&mut body, cb);
        }
        for eb in link_error {
            add_link_error(&mut body, eb);
        }
        for (k, v) in &options {
            if k != "parent_id" {
                body.options.insert(k.clone(), v.clone());
            }
        }
        let mut body_res = self.freeze(
            &mut body,
            Freeze {
                id: Some(task_id.unwrap_or_else(uuid)),
                group_id: Some(gid.clone()),
                root_id: root_id.clone(),
                ..Freeze::default()
            },
        )?;
        strip_chord_header_links(&mut body);
        for k in ["chain", "chord", "task_id"] {
            options.remove(k);
        }
        header.options.insert("task_id".into(), json!(gid));
        let empty = matches!(&header.kind, Kind::Group(m) if m.is_empty());
        let header_res = self.freeze(
            &mut header,
            Freeze {
                group_id: Some(gid.clone()),
                chord: Some(body.to_value()),
                root_id,
                ..Freeze::default()
            },
        )?;
        if empty {
            // Celery's `body.delay([])`: nothing would ever call it.
            if let Kind::Task(t) = &mut body.kind
                && !t.immutable
            {
                t.args.insert(0, json!([]));
            }
            self.apply(body, Map::new())?;
        } else {
            let mut header_opts = options;
            header_opts.insert("task_id".into(), json!(gid));
            self.apply_group(header, header_opts)?;
        }
        let (ResultNode::Task { parent, .. } | ResultNode::Group { parent, .. }) = &mut body_res;
        *parent = Some(Box::new(header_res));
        Ok(body_res)
    }
}

/// A chain's result: its last step's, with each step's result the parent
/// of the next (`results` is in reverse order, the last step first).
fn chain_result(results: &[ResultNode]) -> ResultNode {
    let mut acc: Option<ResultNode> = None;
    for r in results.iter().rev() {
        let mut r = r.clone();
        if let Some(a) = acc {
            r.set_root_parent(a);
        }
        acc = Some(r);
    }
    acc.expect("a chain has at least one step")
}

/// A task's `link` and `link_error` nodes into its options, as Celery keeps
/// them.
fn materialize_links(node: &mut Node) {
    for l in std::mem::take(&mut node.link) {
        node.append_option("link", l.to_value());
    }
    for l in std::mem::take(&mut node.link_error) {
        node.append_option("link_error", l.to_value());
    }
}
