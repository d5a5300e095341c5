//! Celery's canvas: chains, groups, chords, callbacks, map, starmap and
//! chunks, typed in Rust and lowered to exactly the messages Python Celery
//! 5.7's client sends, so that Python workers and celeriac workers run
//! them alike.
//!
//! - Typed ([`typed`](self)): [`Sig<In, Out>`](Sig) is a step that takes
//!   the previous result; [`Canvas<Out>`](Canvas) a complete workflow with
//!   one final result; [`Group<T>`](Group) a group. [`chain`], [`group`],
//!   [`chord`], [`map`], [`starmap`], [`chunks`] combine them, and
//!   `.link()` / `.link_error()` add callbacks. A step whose input is not
//!   the previous step's output is a compile error.
//! - Lowering ([`Canvas::plan`]): the messages to send, in order, the
//!   chord sizes to record ([`Action`]), and the result tree
//!   ([`ResultNode`]) Celery's client links (`parent`, group members).
//! - Wire ([`Signature`]): the signature JSON a message's embed carries,
//!   and the message a worker sends for the next step
//!   ([`Signature::call_after`]).
//!
//! ```
//! use celeriac_core::Call;
//! use celeriac_core::canvas::{PlanContext, Sig, chord, group};
//!
//! let total: Sig<Vec<i64>, i64> = Call::new("tasks.tsum").partial();
//! let header = (0..3).map(|i| Call::<i64>::new("tasks.add").arg(i).arg(i));
//! let plan = chord(header, total).plan(&PlanContext::new("client")).unwrap();
//! // Three header messages, the chord's size recorded before the last.
//! assert_eq!(plan.messages().count(), 3);
//! assert!(plan.has_chord());
//! let first = plan.messages().next().unwrap();
//! assert_eq!(first.embed.chord.as_ref().unwrap()["task"], "tasks.tsum");
//! // The chord's result is its body's; its parent is the header's group.
//! assert_eq!(plan.result.parent().unwrap().results().len(), 3);
//! # let _ = group(vec![Call::<i64>::new("tasks.add")]);
//! ```

mod compose;
mod lower;
mod node;
mod outgoing;
mod result;
mod signature;
mod typed;

#[cfg(test)]
mod tests;

pub use lower::{Action, Plan, PlanContext, Route};
pub use result::ResultNode;
pub use signature::{Signature, signatures};
pub use typed::{
    Canvas, Group, GroupMember, Sig, Unary, chain, chord, chunks, group, map, starmap,
};

/// Why a canvas cannot be sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CanvasError {
    /// A call in it cannot be sent: an argument that is not JSON, an empty
    /// task or queue name, a time out of range.
    #[error("invalid call: {0}")]
    InvalidArguments(String),
    /// A shape Celery refuses, or that this client does not send (e.g.
    /// a group with a `link`).
    #[error("unsupported canvas: {0}")]
    Unsupported(String),
}
