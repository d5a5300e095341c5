//! [`Server::map`]: one task over many items, in `celery.starmap` chunks
//! sized adaptively (see [`celeriac_core::automap`]), each chunk sent as a
//! job of this server: on the local lane when the server has one, else
//! through the broker to every worker on it.

use std::sync::Arc;

use celeriac_core::automap::{ChunkEnd, ChunkSize, MapError, MapStats, MapStream, UNSEEN_WORKERS};
use celeriac_core::{Call, IntoArgs};
use futures::StreamExt;
use futures::channel::oneshot;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::job::{JobEnd, JobError};
use crate::server::Server;

/// The group every chunk job of a map is in (see [`Server::wait_group`]).
pub const MAP_GROUP: &str = "celeriac.map";

impl Server {
    /// Runs `task` over each item (a tuple or list of its positional
    /// arguments), in chunks sized adaptively towards 10–50 ms of work
    /// each, with two chunks per worker slot in flight; the results come
    /// back in input order. Celery's `xstarmap`/`chunks` on the wire: a
    /// Python Celery worker on the broker runs the chunks too. `task`'s
    /// name and options (queue, priority, time limits) are used, its
    /// arguments are not.
    ///
    /// A failing item fails its chunk (Celery's `starmap` does); the map
    /// then splits the chunk in halves, recursively, until each failing
    /// item is alone: that item gets its error, the others their results,
    /// and the other items of a failed chunk **run more than once**. See
    /// [`celeriac_core::automap`] for the details.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_core::Call;
    /// use celeriac_server::Server;
    ///
    /// # let mut reg = celeriac_core::Registry::new();
    /// # reg.register_fn("tasks.add", |_, a| { let mut b = a.bind("add", &["x", "y"])?;
    /// #     Ok(serde_json::json!(b.take::<i64>(0)? + b.take::<i64>(1)?)) }).unwrap();
    /// let server = Server::builder().workers(2).registry(reg).build().unwrap();
    /// let sums = server.map(Call::<i64>::new("tasks.add"), (0..10_000).map(|i| (i, i)));
    /// assert_eq!(sums.wait().unwrap(), (0..10_000).map(|i| 2 * i).collect::<Vec<i64>>());
    /// ```
    pub fn map<T, A>(&self, task: Call<T>, items: impl IntoIterator<Item = A>) -> MapResults<T>
    where
        T: DeserializeOwned,
        A: IntoArgs,
    {
        self.map_with(task, items, ChunkSize::Auto)
    }

    /// [`Server::map`] with a chosen chunking: [`ChunkSize::Auto`] (what
    /// `map` does) or [`ChunkSize::Fixed`] (every chunk sent at once).
    pub fn map_with<T, A>(
        &self,
        task: Call<T>,
        items: impl IntoIterator<Item = A>,
        chunking: ChunkSize,
    ) -> MapResults<T>
    where
        T: DeserializeOwned,
        A: IntoArgs,
    {
        let h = &self.handle;
        // Chunks are `celery.starmap` jobs: they go where the task would.
        let task = if task.options().queue.is_none() {
            let q = h
                .routes
                .queue_for(task.name())
                .unwrap_or(&h.queue)
                .to_string();
            task.queue(q)
        } else {
            task
        };
        let map = task.automap(items).chunk(chunking);
        let workers = if map.is_empty() {
            1
        } else {
            match self.active_nodes().values().sum::<usize>() {
                0 => UNSEEN_WORKERS,
                n => n,
            }
        };
        let server = self.clone();
        let stream = map
            .workers(workers)
            .with_sender(Box::new(move |call: Call<Value>| {
                let (tx, rx) = oneshot::channel();
                let done = Box::new(move |end: &JobEnd| {
                    let _ = tx.send(chunk_end(end));
                });
                server.send(call, MAP_GROUP.to_string(), Some(done));
                Box::pin(async move {
                    rx.await
                        .unwrap_or_else(|_| ChunkEnd::failed(transport(JobError::Destroyed)))
                })
            }));
        MapResults { stream }
    }
}

/// A chunk job's end as the map reads it.
fn chunk_end(end: &JobEnd) -> ChunkEnd {
    match end {
        JobEnd::Meta(meta) => ChunkEnd::from_meta((**meta).clone()),
        JobEnd::Local(success) => ChunkEnd::from_meta(success.meta()),
        JobEnd::Error(JobError::Task(e)) => ChunkEnd::failed(MapError::Task(e.clone())),
        JobEnd::Error(e) => ChunkEnd::failed(transport(e.clone())),
    }
}

fn transport(e: JobError) -> MapError {
    MapError::Transport(Arc::new(e))
}

/// The results of a [`Server::map`], in input order: iterate them (each
/// `next` blocks until that item's result is in), or [`MapResults::wait`]
/// for all. Chunks are sent while the results are read; dropping it stops
/// sending (chunks already sent still run).
#[must_use = "a map sends its chunks only while its results are read"]
#[derive(Debug)]
pub struct MapResults<T> {
    stream: MapStream<T>,
}

impl<T: DeserializeOwned> MapResults<T> {
    /// Every item's value in input order, or the first item's error.
    pub fn wait(self) -> Result<Vec<T>, JobError> {
        let mut out = Vec::with_capacity(self.len());
        for r in self {
            out.push(r?);
        }
        Ok(out)
    }
}

impl<T> MapResults<T> {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.stream.len()
    }

    /// Whether the map has no items.
    pub fn is_empty(&self) -> bool {
        self.stream.is_empty()
    }

    /// The chunk sizes chosen and what was measured, so far.
    pub fn stats(&self) -> &MapStats {
        self.stream.stats()
    }
}

impl<T: DeserializeOwned> Iterator for MapResults<T> {
    type Item = Result<T, JobError>;

    fn next(&mut self) -> Option<Self::Item> {
        // The chunks' jobs finish on the server's runtime and callback
        // thread; this thread only waits for them.
        let r = futures::executor::block_on(self.stream.next())?;
        Some(r.map_err(job_error))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.stream.len()))
    }
}

/// An item's [`MapError`] as a [`JobError`].
fn job_error(e: MapError) -> JobError {
    match e {
        MapError::Task(t) => JobError::Task(t),
        MapError::Decode(d) => JobError::Decode(d),
        MapError::Transport(t) => t
            .downcast_ref::<JobError>()
            .cloned()
            .unwrap_or_else(|| JobError::Backend(t.to_string())),
        other => JobError::Backend(other.to_string()),
    }
}
