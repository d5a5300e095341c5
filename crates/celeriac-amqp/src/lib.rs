//! # celeriac-amqp
//!
//! celeriac's RabbitMQ (AMQP 0-9-1) broker, on the wire as Python Celery
//! 5.7 (kombu's `pyamqp` transport) talks to RabbitMQ, so Celery clients
//! and workers share queues with celeriac ones. URLs:
//! `amqp://USER:PASS@HOST[:PORT]/VHOST` and `amqps://...` (TLS, rustls;
//! `?ssl_ca_certs=PATH` adds a CA to trust), plus `?prefetch_count=N`,
//! `?max_priority=N`, `?queue_type=quorum` and lapin's `heartbeat=SECS`.
//!
//! ## Topology and format (as kombu)
//!
//! A task for queue `Q` is published to the default exchange `""` with
//! routing key `Q`; `Q` is declared durable without arguments, with the
//! direct exchange `Q` bound to it by key `Q` (for `celery`, the `celery`
//! exchange Celery declares). The body is the raw JSON body, the headers
//! are AMQP application headers, and `content_type`, `content_encoding`,
//! `delivery_mode` 2, `priority`, `correlation_id` and `reply_to` are AMQP
//! properties (see `wire.rs`). Every publish waits for its publisher
//! confirm.
//!
//! ## How the [`Transport`](celeriac_core::Transport) contract maps onto AMQP
//!
//! - **claim** is a consumer: the first claim on a queue starts a consumer
//!   (`basic.qos` prefetch per consumer: the URL's `prefetch_count`, else
//!   what the worker sets with
//!   [`set_prefetch`](celeriac_core::Transport::set_prefetch), its
//!   concurrency × prefetch multiplier, else 16; manual acks); deliveries wait in
//!   an in-process buffer until a claim takes them, queues in the order
//!   given. Prefetched deliveries are unacked in RabbitMQ, so a worker that
//!   dies gives them back.
//! - **lease and renew**: RabbitMQ holds an unacked delivery for the life
//!   of the channel, not for a lease, so `renew` does nothing and a
//!   delivery comes back (with `redelivered`) only when its holder's
//!   channel or connection closes. `lease` is reported as an hour.
//! - **deliveries** is 1, or 2 when RabbitMQ's `redelivered` flag is set;
//!   a delayed requeue carries the exact count in a header.
//! - **ack / requeue** are `basic.ack` / `basic.nack(requeue)`; acking a
//!   delivery of a connection that has since been replaced is
//!   [`NotHeld`](celeriac_core::BrokerError::NotHeld).
//! - **eta and delayed requeue** never wait in a worker: the message goes
//!   to a durable delay queue `celeriac.delay.<ms>.<queue>` with
//!   `x-message-ttl` = the delay (rounded up to 3 significant digits) and
//!   the default exchange as dead-letter exchange, routing key `<queue>`,
//!   so RabbitMQ moves it to its queue when due.
//! - **queue_len** is the ready count of the queue (not delayed, not
//!   unacked messages).
//! - **dead letters** go to the durable queue `celeriac.dlq`, with the
//!   reason, source queue and time as headers.
//!
//! ## Remote control and events
//!
//! Celery's pidbox (`celery.pidbox` fanout, `reply.celery.pidbox` direct)
//! and events (`celeryev` topic) are carried exactly as kombu carries them
//! on RabbitMQ (`control.rs`, `events.rs`), so `celery inspect`, `celery
//! events` and Flower see celeriac workers, and `celeriac inspect` and
//! `celeriac events` see Python ones.
//!
//! ## Revocations, rate limits and the node registry
//!
//! RabbitMQ has no key-value store for them, so an AMQP broker keeps them
//! in a [`Registry`]: `celeriac-connect` opens the result store's Redis or
//! SQLite for it ([`AmqpBroker::open_with_registry`]). There, revokes
//! (also those Python clients broadcast on the pidbox, which every
//! listening celeriac worker records), rate-limit buckets and heartbeats
//! are shared by every worker and survive restarts. Without a registry
//! (a bare [`AmqpBroker::open`]), revokes are remembered in the process
//! that sees them and rate limits are per process, as Celery keeps both,
//! and listing nodes is [`Unsupported`](celeriac_core::BrokerError::Unsupported).
//!
//! ## Priorities
//!
//! `?max_priority=N` declares task queues with `x-max-priority` N, as
//! Celery's `task_queue_max_priority` does; RabbitMQ then delivers the
//! highest priority first (the AMQP sense: 9 over 0). Without it queues
//! have no priorities, as Celery's default. A queue that exists with
//! other arguments is used as it is, with a warning.
//!
//! `?queue_type=quorum` declares task queues as quorum queues
//! (`x-queue-type`); it cannot be combined with `max_priority` (quorum
//! queues take no `x-max-priority`). Delay queues stay classic.
//!
//! ## Celery's `rpc://` result backend
//!
//! [`RpcBackend`] sends results as messages to the client's reply queue,
//! by `correlation_id`, as `celery.backends.rpc` does (see `rpc.rs`).
//!
//! ## Not on AMQP
//!
//! Listing countdowns (`inspect scheduled`): they wait in delay queues,
//! which AMQP can neither list nor browse without taking the messages out.

mod broker;
mod control;
mod events;
mod link;
mod rpc;
mod store;
mod subscribe;
mod wire;

pub use broker::AmqpBroker;
pub use rpc::{DESTINATIONS, RpcBackend};
pub use store::DEAD_LETTER_QUEUE;

/// Where an AMQP broker keeps what RabbitMQ cannot hold: revocations,
/// rate-limit buckets and the node registry. Every Redis and SQLite
/// broker is one.
pub trait Registry:
    celeriac_core::Revocations + celeriac_core::RateLimits + celeriac_core::Nodes
{
}

impl<T> Registry for T where
    T: celeriac_core::Revocations + celeriac_core::RateLimits + celeriac_core::Nodes
{
}
