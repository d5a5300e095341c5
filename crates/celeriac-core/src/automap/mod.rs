//! Automatic batching of a map across the network: one task over many
//! items, sent as Celery `celery.starmap` chunks whose size adapts to the
//! measured per-item time and round trip.
//!
//! - [`Call::automap`] is the queue client's side: it sends the chunks
//!   through a [`Broker`](crate::Broker), waits on a
//!   [`ResultBackend`](crate::ResultBackend), and gives the
//!   items' results back in input order as a [`MapStream`].
//! - The job server's `Server::map` drives the same [`MapStream`] through
//!   its jobs ([`AutoMap::with_sender`]), and `celeriac map --chunk auto`
//!   through the CLI's connection.
//!
//! **On the wire** each chunk is one `celery.starmap` message, exactly what
//! Celery's `xstarmap` (and each part of `chunks`) sends: kwargs
//! `{"task": <signature of the task>, "it": [[args of item], ...]}`, and
//! its result is the list of the items' results. Python Celery workers run
//! it as well as celeriac's. The task's own arguments (those of the
//! [`Call`] given) are not sent: Celery's `starmap` ignores them.
//!
//! **Chunk sizes** ([`ChunkPolicy`], decided in one place): the first
//! chunks carry 8 items; every finished chunk updates the estimates of
//! per-item time and round trip ([`Measured`]); the next chunk grows at
//! most 4x, towards 10–50 ms of work, shrinks at once when per-item time
//! rises, and never takes more than an even share of what is left among
//! the workers. Two chunks per worker slot are in flight (more when the
//! round trip is longer than a chunk's work). [`ChunkSize::Fixed`] sends
//! every chunk at once with a fixed size instead.
//!
//! **A failing item**: Celery's `starmap` fails the whole chunk with the
//! first item's error. The map then splits the chunk in two and sends
//! both halves again, recursively, until the failing items are alone in
//! chunks of one: each failing item gets its own error, every other item
//! its result. The other items of a failed chunk therefore **run more
//! than once** (at most once per halving, about log2 of the chunk size):
//! map only tasks that may run again. Errors that are the chunk's rather
//! than an item's (the task is not registered, or is async and cannot run
//! in a chunk; the chunk was revoked), and failures to publish or to read
//! the result, fail every item of the chunk without a split.

mod policy;
mod run;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use policy::{ChunkPolicy, ChunkSize, Measured};
pub use stream::{
    AutoMap, ChunkEnd, MapStream, SendChunk, chunk_message, publish_and_wait, seen_workers,
};

use crate::{Call, IntoArgs, TaskError};

/// The name of Celery's built-in task that runs one chunk.
pub const STARMAP: &str = "celery.starmap";

/// Workers assumed when the broker reports none (no heartbeat seen yet,
/// or a broker without a node list).
pub const UNSEEN_WORKERS: usize = 4;

/// Why one item of a map has no value.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The task failed on this item (or on the item's whole chunk: see
    /// the [module docs](self)).
    #[error("task failed: {0}")]
    Task(TaskError),
    /// The result does not decode as the expected type, or a chunk's
    /// result is not the list of its items' results.
    #[error("result does not decode as expected: {0}")]
    Decode(String),
    /// The chunk could not be published, or its result not read.
    #[error("chunk transport: {0}")]
    Transport(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

/// What a map measured and chose, for reports and tuning.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct MapStats {
    /// Chunks sent, the halves of failed chunks included.
    pub chunks: usize,
    /// The size of each fresh chunk, in the order they were sent.
    pub sizes: Vec<usize>,
    /// Failed chunks split in two to find their failing items.
    pub splits: usize,
    /// The worker slots the policy sized for.
    pub workers: usize,
    /// The last estimate of seconds of work per item.
    pub per_item: Option<f64>,
    /// The last estimate of seconds of round trip per chunk.
    pub round_trip: Option<f64>,
}

impl MapStats {
    /// The largest chunk sent (0 for an empty map).
    pub fn max_size(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0)
    }

    /// The median fresh chunk size (0 for an empty map).
    pub fn median_size(&self) -> usize {
        let mut s = self.sizes.clone();
        s.sort_unstable();
        s.get(s.len() / 2).copied().unwrap_or(0)
    }
}

/// The chunk messages' shape: the task and the options every chunk
/// carries (queue, priority, time limits).
#[derive(Debug, Clone)]
pub(crate) struct Template {
    task: String,
    queue: Option<String>,
    priority: Option<u8>,
    time_limits: (Option<f64>, Option<f64>),
}

impl Template {
    fn of<T>(call: &Call<T>) -> Self {
        let o = call.options();
        Template {
            task: call.name().to_string(),
            queue: o.queue.clone(),
            priority: o.priority,
            time_limits: (o.time_limit, o.soft_time_limit),
        }
    }

    /// The `celery.starmap` call of one chunk.
    pub(crate) fn chunk(&self, items: Vec<Value>) -> Call<Value> {
        let sig = serde_json::json!({
            "task": self.task, "args": [], "kwargs": {}, "options": {},
            "subtask_type": null, "immutable": false,
        });
        // The items move into the kwargs (`kwarg` would copy them).
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("task".into(), sig);
        kwargs.insert("it".into(), Value::Array(items));
        let mut call = Call::new(STARMAP)
            .with_kwargs(kwargs)
            .time_limits(self.time_limits.0, self.time_limits.1);
        if let Some(q) = &self.queue {
            call = call.queue(q.clone());
        }
        if let Some(p) = self.priority {
            call = call.priority(p);
        }
        call
    }
}

/// The queue client's automatic map.
impl<T> Call<T> {
    /// This call's task over each item (each a tuple or list of positional
    /// arguments), sent as `celery.starmap` chunks sized adaptively; see
    /// the [`automap`](crate::automap) module. The call's name and options
    /// (queue, priority, time limits) are used, its arguments are not.
    ///
    /// ```no_run
    /// # async fn demo(broker: std::sync::Arc<dyn celeriac_core::Broker>,
    /// #               backend: std::sync::Arc<dyn celeriac_core::ResultBackend>) {
    /// use celeriac_core::Call;
    /// use futures::StreamExt;
    ///
    /// let items = (0..100_000).map(|i: i64| (i, i));
    /// let mut results = Call::<i64>::new("celeriac.add")
    ///     .automap(items)
    ///     .send(broker, backend)
    ///     .await;
    /// let mut i = 0;
    /// while let Some(r) = results.next().await {
    ///     assert_eq!(r.unwrap(), 2 * i);
    ///     i += 1;
    /// }
    /// println!("chunk sizes: {:?}", results.stats().sizes);
    /// # }
    /// ```
    pub fn automap<A: IntoArgs>(self, items: impl IntoIterator<Item = A>) -> AutoMap<T> {
        let mut error = self.error().map(str::to_string);
        let mut args = Vec::new();
        let mut n = 0;
        for item in items {
            n += 1;
            match item.into_args() {
                Ok(a) => args.push(Value::Array(a)),
                Err(e) => {
                    error.get_or_insert_with(|| {
                        format!("item {} cannot be serialized to JSON: {e}", n - 1)
                    });
                }
            }
        }
        AutoMap::new(Template::of(&self), args, n, error)
    }
}

/// A duration from a stored `runtime` in seconds, if it is one.
fn runtime_of(secs: Option<f64>) -> Option<Duration> {
    secs.filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}
