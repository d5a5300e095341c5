//! The typed canvas: [`Sig`] (a step that takes the previous result),
//! [`Canvas`] (a complete workflow with one final result), [`Group`], and
//! the combinators [`chain`], [`group`], [`chord`], [`map`], [`starmap`]
//! and [`chunks`]. Types follow the data: a step's input is the previous
//! step's output, so a chain whose steps do not fit does not compile.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::CanvasError;
use super::compose::{self, add_link, add_link_error};
use super::lower::{Plan, PlanContext};
use super::node::{Kind, Node};
use crate::task::{Call, IntoArgs, Task};

/// A signature that takes one input, the result of the step before it,
/// and produces `Out`: Celery's partial signature (`add.s(10)`), whose
/// missing first argument is the previous result.
///
/// `#[celeriac::task]` makes one with `add::s(..)` from every argument but
/// the first, typed by that first parameter; [`Call::partial`] makes one
/// from a call of a task known only by name (its input type unchecked),
/// and [`Call::immutable`] one that ignores its input (Celery's `si`).
///
/// # Examples
///
/// ```
/// use celeriac_core::Call;
/// use celeriac_core::canvas::{Sig, chain};
///
/// let add_ten: Sig<i64, i64> = Call::new("tasks.add").arg(10).partial();
/// let double: Sig<i64, i64> = Call::new("tasks.mul").arg(2).partial();
/// let flow = chain(Call::<i64>::new("tasks.add").arg(1).arg(2))
///     .then(add_ten)
///     .then(double);
/// // flow is a Canvas<i64>: ((1 + 2) + 10) * 2.
/// # let _ = flow;
/// ```
///
/// Steps whose types do not meet are a compile error:
///
/// ```compile_fail
/// use celeriac_core::Call;
/// use celeriac_core::canvas::{Sig, chain};
///
/// let add_ten: Sig<i64, i64> = Call::new("tasks.add").arg(10).partial();
/// let shout: Sig<String, String> = Call::new("tasks.shout").partial();
/// // `shout` needs a String; `add_ten` gives an i64.
/// let flow = chain(Call::<i64>::new("tasks.add").arg(1).arg(2))
///     .then(add_ten)
///     .then(shout);
/// ```
pub struct Sig<In, Out> {
    pub(crate) node: Node,
    _t: PhantomData<fn(In) -> Out>,
}

/// A complete canvas with one final result of type `Out`: a call, a chain
/// (its last step's result), a chord (its body's), a map or starmap.
///
/// Built with [`chain`], [`chord`], [`map`], [`starmap`], or from a
/// [`Call`] (`Canvas::from(call)`, or [`Call::then`] / [`Call::link`]).
/// A client lowers it to messages with [`Canvas::plan`]; the job server
/// sends it with `Server::apply`.
pub struct Canvas<Out> {
    pub(crate) node: Node,
    _t: PhantomData<fn() -> Out>,
}

/// A complete group of tasks, each producing `T`: Celery's `group`, whose
/// result is a `GroupResult`.
pub struct Group<T> {
    pub(crate) node: Node,
    _t: PhantomData<fn() -> T>,
}

macro_rules! common_impls {
    ($name:ident < $($p:ident),* >) => {
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                Self { node: self.node.clone(), _t: PhantomData }
            }
        }
        impl<$($p),*> fmt::Debug for $name<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.node.to_value()).finish()
            }
        }
        impl<$($p),*> $name<$($p),*> {
            pub(crate) fn wrap(node: Node) -> Self {
                Self { node, _t: PhantomData }
            }

            /// The signature as Celery writes it (`celery.chain`,
            /// `celery.group`, `celery.chord` for composites), before it
            /// is frozen.
            pub fn to_value(&self) -> Value {
                self.node.to_value()
            }

            /// Fixes the id: a task's, the last step's of a chain, a
            /// group's, a chord body's (Celery's `task_id` option).
            pub fn task_id(mut self, id: impl Into<String>) -> Self {
                self.node.options.insert("task_id".into(), json!(id.into()));
                self
            }

            /// The id fixed with [`task_id`](Self::task_id) or
            /// [`freeze`](Self::freeze), if any.
            pub fn id(&self) -> Option<&str> {
                self.node.task_id()
            }

            /// Fixes a fresh id now, so that its result can be waited on
            /// (Celery's `sig.freeze()`), and returns it; a fixed id is
            /// kept.
            pub fn freeze(&mut self) -> String {
                if let Kind::Task(t) = &mut self.node.kind {
                    t.frozen = true;
                }
                let id = self
                    .node
                    .task_id()
                    .map(str::to_string)
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                self.node.options.insert("task_id".into(), json!(id));
                id
            }

            /// Routes every task of it that names no queue to `queue`.
            pub fn queue(self, queue: impl Into<String>) -> Self {
                let q = json!(queue.into());
                self.each_task(|o| {
                    o.entry("queue").or_insert_with(|| q.clone());
                })
            }

            /// Sets the priority (0-9) of every task of it.
            pub fn priority(self, priority: u8) -> Self {
                self.each_task(|o| {
                    o.insert("priority".into(), json!(priority.min(9)));
                })
            }

            /// Delays every task of it by `delay` from when it is sent (a
            /// chain step: from when the step before it finished).
            pub fn countdown(self, delay: Duration) -> Self {
                self.each_task(|o| {
                    o.insert("countdown".into(), json!(delay.as_secs_f64()));
                })
            }

            fn each_task(mut self, mut f: impl FnMut(&mut Map<String, Value>)) -> Self {
                fn walk(n: &mut Node, f: &mut dyn FnMut(&mut Map<String, Value>)) {
                    match &mut n.kind {
                        Kind::Task(_) => f(&mut n.options),
                        Kind::Chain(s) | Kind::Group(s) => s.iter_mut().for_each(|s| walk(s, f)),
                        Kind::Chord { header, body } => {
                            walk(header, f);
                            walk(body, f);
                        }
                    }
                }
                walk(&mut self.node, &mut f);
                self
            }
        }
    };
}

common_impls!(Sig<In, Out>);
common_impls!(Canvas<Out>);
common_impls!(Group<T>);

impl<In, Out> Sig<In, Out> {
    /// This step, then `next` with this step's result (Celery's `|`): a
    /// partial chain.
    pub fn then<U>(self, next: Sig<Out, U>) -> Sig<In, U> {
        Sig::wrap(compose::then(self.node, next.node))
    }

    /// Calls `callback` with this step's result when it succeeds
    /// (Celery's `link`).
    pub fn link<U>(mut self, callback: Sig<Out, U>) -> Self {
        add_link(&mut self.node, callback.node);
        self
    }

    /// Calls `errback` with the failed task's id when this step fails
    /// (Celery's `link_error` with a one-argument task).
    ///
    /// An errback whose task takes more than one argument goes by Celery's
    /// rule: the worker that runs the failed task calls it inline with
    /// `(request, exc, traceback)` if it runs that task too, and publishes
    /// it with the failed id otherwise. Build its signature by name:
    /// `Call::<()>::new("tasks.on_error").partial::<String>()`.
    pub fn link_error<U>(mut self, errback: Sig<String, U>) -> Self {
        add_link_error(&mut self.node, errback.node);
        self
    }
}

impl<Out> Canvas<Out> {
    /// The canvas, then `next` with its result: a chain (Celery's
    /// `chain(a, b)`; after a chord, `next` joins the chord's body).
    pub fn then<U>(self, next: Sig<Out, U>) -> Canvas<U> {
        Canvas::wrap(compose::chain_then(self.node, next.node))
    }

    /// Calls `callback` with the final result when it succeeds: on a
    /// chain's last step, on a chord's body (Celery's `link`).
    pub fn link<U>(mut self, callback: Sig<Out, U>) -> Self {
        add_link(&mut self.node, callback.node);
        self
    }

    /// Calls `errback` with the failed task's id when any step fails: every
    /// step of a chain, a chord's body (Celery's `link_error` / `on_error`).
    pub fn link_error<U>(mut self, errback: Sig<String, U>) -> Self {
        add_link_error(&mut self.node, errback.node);
        self
    }

    /// What a client sends to apply it, in order, and the result tree, with
    /// fresh ids (a canvas can be applied again).
    ///
    /// ```
    /// use celeriac_core::Call;
    /// use celeriac_core::canvas::{Action, PlanContext, Sig, chain};
    ///
    /// let add_ten: Sig<i64, i64> = Call::new("tasks.add").arg(10).partial();
    /// let plan = chain(Call::<i64>::new("tasks.add").arg(1).arg(2))
    ///     .then(add_ten)
    ///     .plan(&PlanContext::new("client-1"))
    ///     .unwrap();
    /// let first = plan.messages().next().unwrap();
    /// let next = &first.embed.chain.as_ref().unwrap()[0];
    /// assert_eq!(next["task"], "tasks.add");
    /// // The chain's result is its last step's, whose parent is the first.
    /// assert_eq!(next["options"]["task_id"], plan.result.id());
    /// assert_eq!(plan.result.parent().unwrap().id(), first.id());
    /// ```
    pub fn plan(&self, ctx: &PlanContext<'_>) -> Result<Plan, CanvasError> {
        super::lower::plan(self.node.clone(), ctx)
    }
}

impl<T> Group<T> {
    /// How many members it has.
    pub fn len(&self) -> usize {
        match &self.node.kind {
            Kind::Group(m) => m.len(),
            _ => 0,
        }
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A chord: `body` called with every member's result, in order, once
    /// all have succeeded (Celery's `group | body`).
    pub fn then<U>(self, body: Sig<Vec<T>, U>) -> Canvas<U> {
        Canvas::wrap(compose::then(self.node, body.node))
    }

    /// Calls `errback` with a failed member's id (each member carries it).
    pub fn link_error<U>(mut self, errback: Sig<String, U>) -> Self {
        add_link_error(&mut self.node, errback.node);
        self
    }

    /// What a client sends to apply it; see [`Canvas::plan`].
    pub fn plan(&self, ctx: &PlanContext<'_>) -> Result<Plan, CanvasError> {
        super::lower::plan(self.node.clone(), ctx)
    }
}

impl<T> From<Call<T>> for Canvas<T> {
    fn from(call: Call<T>) -> Self {
        Canvas::wrap(Node::from_call(call))
    }
}

/// Canvas methods of a [`Call`].
impl<T> Call<T> {
    /// This call as a step whose first argument is the previous step's
    /// result, of type `In`: the escape hatch for tasks known only by name
    /// (nothing checks `In` against the task). Tasks defined with
    /// `#[celeriac::task]` have a checked `task::s(..)`.
    pub fn partial<In>(self) -> Sig<In, T> {
        Sig::wrap(Node::from_call(self))
    }

    /// This call as a step that ignores the previous result (Celery's
    /// `si`, an immutable signature).
    pub fn immutable<In>(self) -> Sig<In, T> {
        let mut node = Node::from_call(self);
        if let Kind::Task(t) = &mut node.kind {
            t.immutable = true;
        }
        Sig::wrap(node)
    }

    /// A chain: this call, then `next` with its result.
    pub fn then<U>(self, next: Sig<T, U>) -> Canvas<U> {
        Canvas::from(self).then(next)
    }

    /// Calls `callback` with the result when it succeeds (Celery's `link`).
    pub fn link<U>(self, callback: Sig<T, U>) -> Canvas<T> {
        Canvas::from(self).link(callback)
    }

    /// Calls `errback` with this task's id when it fails (Celery's
    /// `link_error`).
    pub fn link_error<U>(self, errback: Sig<String, U>) -> Canvas<T> {
        Canvas::from(self).link_error(errback)
    }

    /// This call's task over each item, in one message run as one task
    /// (Celery's `xmap`, `celery.map`), for a task known only by name; the
    /// call's own arguments are not used. See [`map`] for typed tasks.
    pub fn map<A: Serialize>(self, items: impl IntoIterator<Item = A>) -> Canvas<Vec<T>> {
        let items: Result<Vec<Value>, _> = items.into_iter().map(serde_json::to_value).collect();
        Canvas::wrap(builtin(
            "celery.map",
            &self,
            items.map_err(|e| e.to_string()),
        ))
    }

    /// Like [`Call::map`], each item a list of arguments (Celery's
    /// `xstarmap`, `celery.starmap`).
    pub fn starmap<A: IntoArgs>(self, items: impl IntoIterator<Item = A>) -> Canvas<Vec<T>> {
        let items = arg_lists(items);
        Canvas::wrap(builtin("celery.starmap", &self, items))
    }

    /// Like [`Call::starmap`], in chunks of `n` items, each chunk a member
    /// of a group (Celery's `chunks`).
    pub fn chunks<A: IntoArgs>(
        self,
        items: impl IntoIterator<Item = A>,
        n: usize,
    ) -> Group<Vec<T>> {
        let members = match arg_lists(items) {
            Ok(items) => items
                .chunks(n.max(1))
                .map(|c| builtin("celery.starmap", &self, Ok(c.to_vec())))
                .collect(),
            Err(e) => vec![builtin("celery.starmap", &self, Err(e))],
        };
        Group::wrap(Node::new(Kind::Group(members)))
    }
}

fn arg_lists<A: IntoArgs>(items: impl IntoIterator<Item = A>) -> Result<Vec<Value>, String> {
    items
        .into_iter()
        .map(|a| a.into_args().map(Value::Array))
        .collect()
}

/// A `celery.map` / `celery.starmap` node over `call`'s task.
fn builtin<T>(name: &str, call: &Call<T>, items: Result<Vec<Value>, String>) -> Node {
    let task = json!({
        "task": call.name(), "args": [], "kwargs": {}, "options": {},
        "subtask_type": null, "immutable": false,
    });
    let mut kwargs = Map::new();
    kwargs.insert("task".into(), task);
    let mut node = match items {
        Ok(items) => {
            kwargs.insert("it".into(), Value::Array(items));
            Node::builtin(name, kwargs)
        }
        Err(e) => {
            let mut n = Node::builtin(name, kwargs);
            if let Kind::Task(t) = &mut n.kind {
                t.error = Some(format!("an item cannot be serialized to JSON: {e}"));
            }
            n
        }
    };
    if let Some(q) = &call.options().queue {
        node.options.insert("queue".into(), json!(q));
    }
    node
}

/// A chain starting with `head`: add steps with [`Canvas::then`], each
/// taking the previous step's result. Celery's `chain(a, b, c)`.
///
/// ```
/// use celeriac_core::Call;
/// use celeriac_core::canvas::{Sig, chain};
///
/// let inc: Sig<i64, i64> = Call::new("tasks.inc").partial();
/// let flow = chain(Call::<i64>::new("tasks.add").arg(1).arg(2)).then(inc.clone()).then(inc);
/// assert_eq!(flow.to_value()["task"], "celery.chain");
/// ```
pub fn chain<T>(head: impl Into<Canvas<T>>) -> Canvas<T> {
    head.into()
}

/// What can be a member of a [`group`]: complete calls and canvases (the
/// group is a [`Group`]), or steps (the group is itself a step, each
/// member taking the same input).
pub trait GroupMember: Sized {
    /// The group of such members.
    type Group;
    /// The group of `members`.
    fn group(members: Vec<Self>) -> Self::Group;
}

impl<T> GroupMember for Call<T> {
    type Group = Group<T>;
    fn group(members: Vec<Self>) -> Group<T> {
        Group::wrap(Node::new(Kind::Group(
            members.into_iter().map(Node::from_call).collect(),
        )))
    }
}

impl<T> GroupMember for Canvas<T> {
    type Group = Group<T>;
    fn group(members: Vec<Self>) -> Group<T> {
        Group::wrap(Node::new(Kind::Group(
            members.into_iter().map(|c| c.node).collect(),
        )))
    }
}

impl<In, Out> GroupMember for Sig<In, Out> {
    type Group = Sig<In, Vec<Out>>;
    fn group(members: Vec<Self>) -> Sig<In, Vec<Out>> {
        Sig::wrap(Node::new(Kind::Group(
            members.into_iter().map(|s| s.node).collect(),
        )))
    }
}

/// A group: its members run in parallel (Celery's `group`). Complete calls
/// or canvases make a [`Group`]; steps make a step whose output is the
/// list of their outputs (in a chain, followed by another step, Celery
/// turns it into a chord).
///
/// ```
/// use celeriac_core::Call;
/// use celeriac_core::canvas::group;
///
/// let g = group((0..10).map(|i| Call::<i64>::new("tasks.add").arg(i).arg(i)));
/// assert_eq!(g.len(), 10);
/// ```
pub fn group<M: GroupMember>(members: impl IntoIterator<Item = M>) -> M::Group {
    M::group(members.into_iter().collect())
}

/// A chord: `body` called with the results of every member of `header`,
/// in order, once all have succeeded (Celery's `chord(header, body)`).
/// The result is the body's.
///
/// ```
/// use celeriac_core::Call;
/// use celeriac_core::canvas::{Sig, chord};
///
/// let total: Sig<Vec<i64>, i64> = Call::new("tasks.tsum").partial();
/// let c = chord((0..3).map(|i| Call::<i64>::new("tasks.add").arg(i).arg(i)), total);
/// assert_eq!(c.to_value()["task"], "celery.chord");
/// ```
pub fn chord<T, U, M: Into<Canvas<T>>>(
    header: impl IntoIterator<Item = M>,
    body: Sig<Vec<T>, U>,
) -> Canvas<U> {
    let members = header.into_iter().map(|m| m.into().node).collect();
    Canvas::wrap(compose::chord(Node::new(Kind::Group(members)), body.node))
}

/// A tuple of one element: the arguments of a one-argument task.
pub trait Unary {
    /// The argument's type.
    type Arg;
}

impl<A> Unary for (A,) {
    type Arg = A;
}

/// Task `T` (a one-argument task) over each item, in one message run as
/// one task (Celery's `xmap`, `celery.map`); the result is the list of
/// results.
pub fn map<T: Task>(
    items: impl IntoIterator<Item = <T::Args as Unary>::Arg>,
) -> Canvas<Vec<T::Output>>
where
    T::Args: Unary,
    <T::Args as Unary>::Arg: Serialize,
{
    Call::<T::Output>::new(T::name()).map(items)
}

/// Task `T` over each item, an argument tuple, in one message (Celery's
/// `xstarmap`, `celery.starmap`).
pub fn starmap<T: Task>(items: impl IntoIterator<Item = T::Args>) -> Canvas<Vec<T::Output>> {
    Call::<T::Output>::new(T::name()).starmap(items)
}

/// Task `T` over the items in chunks of `n`: a group with one
/// `celery.starmap` member per chunk (Celery's `chunks`).
pub fn chunks<T: Task>(
    items: impl IntoIterator<Item = T::Args>,
    n: usize,
) -> Group<Vec<T::Output>> {
    Call::<T::Output>::new(T::name()).chunks(items, n)
}
