//! # celeriac-core
//!
//! The layer every other celeriac crate builds on. It holds no IO:
//!
//! - [`message`]: the Celery task message, protocol v2, which is celeriac's
//!   native wire format on every broker (embedded ones included), with v1
//!   messages accepted and converted, and kombu's `__type__` JSON tags decoded.
//! - [`result`]: task states and the result document exactly as Celery's
//!   result backends store it (`status`, `result`, `traceback`, ...).
//! - [`task`]: the task model: [`Task`], typed [`Call`] handles, argument
//!   binding ([`Args`]), the [`Registry`] and link-time registration.
//! - [`broker`]: the broker capability traits ([`Transport`],
//!   [`DeadLetters`], [`Revocations`], [`RateLimits`], [`Nodes`],
//!   [`Control`], all
//!   together [`Broker`]) and the [`ResultBackend`] trait;
//!   [`broker::prelude`] brings them into scope.
//! - [`execute`]: the [`Executor`] extension trait, which runs tasks on a
//!   pool of threads, processes or async tasks ([`PoolKind`]).
//! - [`names`]: which queue names are allowed ([`validate_queue_name`]).
//! - [`options`]: a task's [`TaskOptions`]: retries, rate limit, acks,
//!   and its pool.
//! - [`canvas`]: Celery's canvas signatures ([`Signature`]) and the
//!   messages a worker publishes from them.
//! - [`subtask`]: tasks that submit subtasks and wait for them without
//!   deadlock ([`TaskContext::submit`], [`TaskContext::wait`]).
//! - [`monitor`]: what a monitor knows from Celery's events (workers,
//!   tasks, counts), bounded, for `celeriac events` and the dashboard.
//! - [`sign`]: opt-in shared-secret signing of task messages ([`Secret`]).
//! - [`error`]: typed errors for each of the above.
//!
//! Users normally depend on the `celeriac` facade crate instead.

pub mod automap;
pub mod broker;
mod call;
pub mod canvas;
pub mod error;
pub mod escape;
pub mod events;
pub mod execute;
pub mod id;
pub mod message;
pub mod monitor;
pub mod names;
pub mod options;
pub mod progress;
pub mod rate;
mod registry;
pub mod result;
pub mod routes;
pub mod sign;
pub mod subtask;
pub mod task;
pub mod time;

pub use broker::{
    Broker, ChordJoin, Control, ControlInbox, ControlReply, ControlRequest, DeadLetter,
    DeadLetters, Delivery, EventMessage, Events, NodeInfo, Nodes, Outgoing, PartReturn, RateLimits,
    ResultBackend, ResultWatch, Revocations, Transport, Waiters,
};
pub use canvas::Signature;
pub use error::{
    BackendError, BoxError, BrokerError, CodecError, RegistryError, TaskError, TaskErrorKind,
};
pub use execute::{Enforces, Executor, Ran, ResizeError};
pub use message::{DeliveryInfo, Embed, Headers, Message, Properties};
pub use names::{QueueNameError, expand_nodename, validate_queue_name};
pub use options::{PoolKind, RetryDecision, TaskOptions, UnknownPool};
pub use progress::{StateError, TaskStates};
pub use rate::RateLimit;
pub use result::{ExceptionInfo, ResultMeta, State};
pub use routes::Routes;
pub use sign::{EmptySecret, Secret, SignatureError};
pub use subtask::{Subtask, SubtaskError, Subtasks};
pub use task::{
    Args, AsyncRunFn, Call, CancelToken, IntoArgs, RegisteredTask, Registry, Task, TaskContext,
    TaskDef, TaskFuture,
};

#[doc(hidden)]
pub mod __private {
    //! Items used by code that `#[celeriac::task]` generates. Not public API.
    pub use inventory;
    pub use serde_json;

    /// Serializes a task's return value.
    pub fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, crate::TaskError> {
        serde_json::to_value(v).map_err(|e| {
            crate::TaskError::new(format!(
                "the task's return value cannot be serialized to JSON: {e}"
            ))
        })
    }

    /// The default name of a task: its Rust module path with `::` as `.`
    /// (the generated module is named after the function).
    pub fn default_task_name(module_path: &str) -> String {
        module_path.replace("::", ".")
    }
}
