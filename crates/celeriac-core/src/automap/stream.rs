//! The IO side of an automatic map: [`AutoMap`] (the builder),
//! [`MapStream`] (chunks out, results back in input order) and the
//! broker path ([`publish_and_wait`]).

use std::marker::PhantomData;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::policy::{ChunkPolicy, ChunkSize};
use super::run::MapRun;
use super::{MapError, MapStats, Template, UNSEEN_WORKERS, runtime_of};
use crate::{Broker, Call, Message, Outgoing, ResultBackend, ResultMeta, Secret, State, TaskError};

/// How a finished chunk ended: the list of its items' results (or why
/// there is none), and the worker's run time when the result carries one.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChunkEnd {
    /// The chunk's result: a list with one value per item.
    pub result: Result<Value, MapError>,
    /// Seconds the worker spent running the chunk, if known.
    pub runtime: Option<Duration>,
}

impl ChunkEnd {
    /// The end of a chunk from its stored result document.
    pub fn from_meta(meta: ResultMeta) -> Self {
        let runtime = runtime_of(meta.runtime);
        let result = match meta.status {
            State::Success => Ok(meta.result),
            State::Failure | State::Revoked => Err(MapError::Task(meta.error())),
            other => Err(MapError::Decode(format!(
                "chunk result in state {other} is not final"
            ))),
        };
        ChunkEnd { result, runtime }
    }

    /// A chunk that could not be sent or waited for.
    pub fn failed(err: MapError) -> Self {
        ChunkEnd {
            result: Err(err),
            runtime: None,
        }
    }
}

/// Sends one chunk's `celery.starmap` call and resolves when it ends.
pub type SendChunk = Box<dyn FnMut(Call<Value>) -> BoxFuture<'static, ChunkEnd> + Send>;

/// An automatic map being configured; see [`Call::automap`].
#[must_use = "a map is sent only by .send() or .with_sender()"]
pub struct AutoMap<T> {
    template: Template,
    items: Vec<Value>,
    len: usize,
    error: Option<String>,
    chunking: ChunkSize,
    policy: ChunkPolicy,
    workers: Option<usize>,
    secret: Option<Secret>,
    _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for AutoMap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoMap")
            .field("task", &self.template.task)
            .field("items", &self.len)
            .field("chunking", &self.chunking)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl<T> AutoMap<T> {
    pub(crate) fn new(
        template: Template,
        items: Vec<Value>,
        len: usize,
        error: Option<String>,
    ) -> Self {
        AutoMap {
            template,
            items,
            len,
            error,
            chunking: ChunkSize::Auto,
            policy: ChunkPolicy::default(),
            workers: None,
            secret: None,
            _out: PhantomData,
        }
    }

    /// Adaptive (the default) or fixed chunks.
    pub fn chunk(mut self, chunking: ChunkSize) -> Self {
        self.chunking = chunking;
        self
    }

    /// The adaptive policy's knobs.
    pub fn policy(mut self, policy: ChunkPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The worker slots to size for; by default, the sum of the
    /// concurrency of the nodes the broker has seen, or
    /// [`UNSEEN_WORKERS`](super::UNSEEN_WORKERS) when it has seen none.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n.max(1));
        self
    }

    /// Signs every chunk message with `secret`.
    pub fn sign(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs the map through `send`, which sends one chunk's
    /// `celery.starmap` call and resolves when it has ended (the job
    /// server's `Server::map` sends them as jobs).
    pub fn with_sender(self, send: SendChunk) -> MapStream<T> {
        let run = match self.error {
            Some(e) => MapRun::failed(self.len, MapError::Task(TaskError::invalid_arguments(e))),
            None => MapRun::new(
                self.items,
                self.chunking,
                self.policy,
                self.workers.unwrap_or(UNSEEN_WORKERS),
            ),
        };
        MapStream {
            run,
            template: self.template,
            send,
            flying: FuturesUnordered::new(),
            _out: PhantomData,
        }
    }

    /// Runs the map through `broker`, waiting for each chunk's result on
    /// `backend` (and forgetting it once read). Finds the worker count
    /// first unless [`AutoMap::workers`] set it.
    pub async fn send(
        mut self,
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
    ) -> MapStream<T> {
        if self.workers.is_none() && self.error.is_none() && self.len > 0 {
            self.workers = Some(seen_workers(&*broker).await);
        }
        let secret = self.secret.clone();
        self.with_sender(Box::new(move |call: Call<Value>| {
            let (broker, backend, secret) = (broker.clone(), backend.clone(), secret.clone());
            Box::pin(async move {
                let msg = match chunk_message(&call, secret.as_ref()) {
                    Ok(m) => m,
                    Err(end) => return end,
                };
                publish_and_wait(&*broker, &*backend, &msg, true).await
            })
        }))
    }
}

/// The worker slots the broker has seen (the sum of each recent node's
/// concurrency), or [`UNSEEN_WORKERS`] if none.
pub async fn seen_workers(broker: &dyn Broker) -> usize {
    match broker.nodes(Duration::from_secs(6)).await {
        Ok(nodes) => match nodes.iter().map(|n| n.concurrency).sum::<usize>() {
            0 => UNSEEN_WORKERS,
            n => n,
        },
        Err(_) => UNSEEN_WORKERS,
    }
}

/// A chunk's message: the `celery.starmap` call encoded and, with a
/// secret, signed. A call that cannot be encoded or signed ends the
/// chunk as failed (`Err`), with the cause.
pub fn chunk_message(call: &Call<Value>, secret: Option<&Secret>) -> Result<Message, ChunkEnd> {
    let mut msg = call
        .to_message()
        .map_err(|e| ChunkEnd::failed(MapError::Task(e)))?;
    if let Some(s) = secret {
        s.sign(&mut msg)
            .map_err(|e| ChunkEnd::failed(MapError::Transport(Arc::new(e))))?;
    }
    Ok(msg)
}

/// Publishes one chunk's message (signed already, if it must be) and
/// waits for its result; `forget` deletes the result once read.
pub async fn publish_and_wait(
    broker: &dyn Broker,
    backend: &dyn ResultBackend,
    msg: &Message,
    forget: bool,
) -> ChunkEnd {
    let transport = |e: Box<dyn std::error::Error + Send + Sync>| {
        ChunkEnd::failed(MapError::Transport(Arc::from(e)))
    };
    let outgoing = match Outgoing::from_message(msg) {
        Ok(o) => o,
        Err(e) => return transport(Box::new(e)),
    };
    let watch = match backend.watch(msg.id()).await {
        Ok(w) => w,
        Err(e) => return transport(Box::new(e)),
    };
    if let Err(e) = broker.publish(outgoing).await {
        return transport(Box::new(e));
    }
    let meta = match watch.await {
        Ok(m) => m,
        Err(e) => return transport(Box::new(e)),
    };
    if forget {
        // A result that could not be forgotten expires with the
        // backend's TTL: harmless, and the chunk's values are in hand.
        let _ = backend.forget(msg.id()).await;
    }
    ChunkEnd::from_meta(meta)
}

type Flying = BoxFuture<'static, (Range<usize>, Duration, ChunkEnd)>;

/// A running map: a [`Stream`] of each item's result, in input order.
/// Chunks are sent as the stream is polled; the map stops sending when
/// it is dropped (chunks already sent still run).
#[must_use = "a map sends its chunks only while its stream is polled"]
pub struct MapStream<T> {
    run: MapRun,
    template: Template,
    send: SendChunk,
    flying: FuturesUnordered<Flying>,
    _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for MapStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("task", &self.template.task)
            .field("items", &self.run.len())
            .field("in_flight", &self.flying.len())
            .finish_non_exhaustive()
    }
}

impl<T> MapStream<T> {
    /// Number of items (results the stream yields in all).
    pub fn len(&self) -> usize {
        self.run.len()
    }

    /// Whether the map has no items.
    pub fn is_empty(&self) -> bool {
        self.run.len() == 0
    }

    /// What the map measured and chose so far.
    pub fn stats(&self) -> &MapStats {
        self.run.stats()
    }

    /// Sets the worker slots the policy sizes for from now on.
    pub fn set_workers(&mut self, workers: usize) {
        self.run.set_workers(workers);
    }

    /// Sends every chunk the policy allows now.
    fn top_up(&mut self) {
        while let Some(range) = self.run.next_chunk() {
            let call = self.template.chunk(self.run.items(&range));
            let fut = (self.send)(call);
            self.flying.push(Box::pin(async move {
                let t0 = Instant::now();
                let end = fut.await;
                (range, t0.elapsed(), end)
            }));
        }
    }
}

impl<T: DeserializeOwned> MapStream<T> {
    /// Waits for every item; the results in input order.
    pub async fn collect_all(mut self) -> Vec<Result<T, MapError>> {
        let mut out = Vec::with_capacity(self.len());
        while let Some(r) = self.next().await {
            out.push(r);
        }
        out
    }
}

impl<T: DeserializeOwned> Stream for MapStream<T> {
    type Item = Result<T, MapError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            this.top_up();
            // Take in every chunk that has ended, so the window refills
            // even while the caller is busy with ready results.
            let mut progressed = false;
            while let Poll::Ready(Some((range, wall, end))) = this.flying.poll_next_unpin(cx) {
                this.run.complete(range, end.result, wall, end.runtime);
                progressed = true;
            }
            if let Some(r) = this.run.next_ready() {
                let item = r.and_then(|v| {
                    serde_json::from_value::<T>(v).map_err(|e| MapError::Decode(e.to_string()))
                });
                return Poll::Ready(Some(item));
            }
            if this.run.is_done() {
                return Poll::Ready(None);
            }
            if !progressed {
                // Nothing ended and nothing is ready: the flying chunks
                // have registered the waker. (With none flying the map
                // could not progress; that cannot happen while items are
                // left, since the window is never 0.)
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntoArgs;
    use serde_json::json;

    /// A sender that runs `celery.starmap` of "add" in the future itself.
    fn local_add() -> SendChunk {
        Box::new(|call: Call<Value>| {
            Box::pin(async move {
                assert_eq!(call.name(), "celery.starmap");
                assert_eq!(call.kwargs()["task"]["task"], "t.add");
                let items = call.kwargs()["it"].as_array().unwrap().clone();
                let mut out = Vec::new();
                for i in items {
                    let (a, b) = (i[0].as_i64().unwrap(), i[1].as_i64().unwrap());
                    if a == 13 {
                        return ChunkEnd::failed(MapError::Task(TaskError::new("13")));
                    }
                    out.push(json!(a + b));
                }
                ChunkEnd {
                    result: Ok(Value::Array(out)),
                    runtime: Some(Duration::from_micros(1)),
                }
            })
        })
    }

    #[test]
    fn the_stream_yields_every_result_in_order_and_isolates_a_failure() {
        let items: Vec<(i64, i64)> = (0..500).map(|i| (i, 1)).collect();
        let stream = Call::<i64>::new("t.add")
            .automap(items)
            .workers(2)
            .with_sender(local_add());
        let out = futures::executor::block_on(stream.collect_all());
        assert_eq!(out.len(), 500);
        for (i, r) in out.into_iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(v, i as i64 + 1),
                Err(MapError::Task(e)) if i == 13 => assert_eq!(e.message(), "13"),
                Err(e) => panic!("item {i}: {e}"),
            }
        }
    }

    #[test]
    fn an_unserializable_item_fails_every_item_and_sends_nothing() {
        struct Bad;
        impl IntoArgs for Bad {
            fn into_args(self) -> Result<Vec<Value>, String> {
                Err("no".into())
            }
        }
        let sent = Box::new(|_: Call<Value>| -> BoxFuture<'static, ChunkEnd> {
            panic!("nothing may be sent")
        });
        let stream = Call::<i64>::new("t.add")
            .automap([Bad, Bad])
            .with_sender(sent);
        let out = futures::executor::block_on(stream.collect_all());
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(MapError::Task(e)) if e.message().contains("item 0")))
        );
    }

    #[test]
    fn chunk_messages_are_celery_starmaps() {
        let t = Template::of(&Call::<i64>::new("t.add").queue("math").priority(3));
        let msg = t.chunk(vec![json!([1, 2])]).to_message().unwrap();
        assert_eq!(msg.task(), "celery.starmap");
        assert_eq!(msg.queue(), "math");
        assert_eq!(msg.kwargs["it"], json!([[1, 2]]));
        assert_eq!(msg.kwargs["task"]["task"], "t.add");
        assert_eq!(msg.kwargs["task"]["args"], json!([]));
        assert_eq!(msg.properties.priority, 3);
    }
}
