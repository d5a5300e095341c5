//! # celeriac-amqp
//!
//! celeriac's RabbitMQ (AMQP 0-9-1) broker, on the wire as Python Celery
//! 5.7 (kombu's `pyamqp` transport) talks to RabbitMQ, so Celery clients
//! and workers share queues with celeriac ones. URLs:
//! `amqp://USER:PASS@HOST[:PORT]/VHOST` and `amqps://...` (TLS, rustls),
//! plus `?prefetch_count=N` (default 16) and lapin's `heartbeat=SECS`.
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
//!   (`basic.qos` prefetch per consumer, manual acks); deliveries wait in
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
//! Not on AMQP yet (issue 14): revocations
//! ([`BrokerError::Unsupported`](celeriac_core::BrokerError::Unsupported)
//! from `revoke*`; no id is ever revoked), the node registry (`heartbeat`
//! is accepted and not stored; `nodes` is unsupported), shared rate limits
//! (kept per process, as Celery does), priorities (no `x-max-priority`
//! queues), events, remote control and the `rpc://` backend.

mod broker;
mod control;
mod link;
mod store;
mod wire;

pub use broker::AmqpBroker;
pub use store::DEAD_LETTER_QUEUE;
