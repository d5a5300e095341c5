//! # celeriac-redis
//!
//! A Redis broker and result backend that Python Celery (kombu's Redis
//! transport) can share: the same keys, the same message envelopes, the
//! same result documents.
//!
//! ## Keys (as kombu uses them)
//!
//! - **Queue lists** `Q`, `Q\x06\x163`, `Q\x06\x166`, `Q\x06\x169`: messages
//!   are `LPUSH`ed to the list of their priority step (the largest of 0, 3, 6,
//!   9 that is ≤ the priority) and taken from the right end. Lists are served
//!   priority-major, so **0 is the highest priority**.
//! - **`unacked`** (HASH `tag → [envelope, exchange, routing_key]`) and
//!   **`unacked_index`** (ZSET `tag → claim time`): every claimed message is
//!   recorded there, so a Python worker can restore celeriac's unacknowledged
//!   messages and celeriac restores Python's, after the visibility timeout.
//! - **`_kombu.binding.<exchange>`**: queue bindings, written when a worker
//!   starts consuming a queue, so Python publishers route to it.
//! - **`celeriac.*`**: celeriac's own bookkeeping: `celeriac.claims` (tag →
//!   claim token), `celeriac.deliveries` (tag → delivery count),
//!   `celeriac.delayed`, the dead-letter store `celeriac.dlq` and
//!   `celeriac.dlq.payloads`, revokes, rate-limit buckets, the node
//!   registry, and the liveness leases and batch records below.
//!
//! Queue names that would collide with any of these are refused with
//! [`BrokerError::InvalidQueue`](celeriac_core::BrokerError::InvalidQueue)
//! on publish and claim (see
//! [`validate_queue_name`](celeriac_core::validate_queue_name)). And since a
//! Python publisher or an older client can still write such a key, every
//! script checks the type of each key it will change before changing
//! anything, and fails with a `refused: key "…" holds a …` error instead:
//! a claim never pops a batch it cannot record.
//!
//! ## The atomic claim
//!
//! kombu pops a message with `BRPOP` and then records it in `unacked` in a
//! second command; a worker that dies in between loses the message. celeriac
//! claims with one Lua script that pops from the lists in priority order
//! **and** records each message in `unacked`/`unacked_index` (plus celeriac's
//! own claim token) atomically, so a message is never held only in a
//! worker's memory.
//!
//! When the lists are empty, an idle consumer waits on a **dedicated
//! connection** with a blocking `BLMOVE` on its first queue's list, and
//! sends the claim script right behind it in the same pipeline: Redis runs
//! it the moment the wait ends, so a wake-up costs no round trip of its
//! own. The wait moves the message into the consumer's **inbox**
//! (`celeriac.inbox.<consumer id>.<n>`, registered in `celeriac.inboxes`),
//! a list only that consumer's claims pop, and the claim takes it from
//! there into `unacked` like any other; since the wait's reply already
//! carried the message, the claim's reply leaves it out, so a message
//! crosses the network once. A message sits in an inbox only between the
//! wait's end and the claim, which Redis runs back to back; if the process
//! is killed right then, live consumers put it back on its list once its
//! liveness lease lapses (below). Python workers do not look in inboxes.
//! The wait lasts at most 250 ms and is then re-issued, which also bounds
//! the idle latency of the lists it does not watch (other queues, priority
//! sub-lists). Its connection has a response timeout: a wait that goes
//! silent (a half-open socket after a broker restart) fails, and it is
//! re-issued on a fresh connection. Celery workers can stop consuming after
//! such reconnects (celery#8030); this one cannot.
//!
//! ## Leases
//!
//! While a task runs its worker keeps moving the message's `unacked_index`
//! score to now ([`Transport::renew`](celeriac_core::Transport::renew)), so a long
//! task is never restored while its worker lives. Any consumer restores
//! messages whose score is older than the visibility timeout (default 3600 s,
//! `?visibility_timeout=` in the URL) back to the front of their queue, marked
//! `redelivered`, unless a Python worker holds `unacked_mutex`. A claim token
//! (`celeriac.claims`) keeps a worker whose lease lapsed from acking a message
//! another worker now holds.
//!
//! The visibility timeout is long because a lease must outlast a slow
//! worker; a dead one is found much sooner. Every consumer (one per
//! process) keeps a **liveness lease**, `celeriac.alive.<consumer id>` with
//! a TTL of 10 s renewed every 2 s, and the claim token of every message it
//! claims starts with that id. Once the lease lapses (the process was
//! killed, or is cut off from Redis), live celeriac consumers restore its
//! messages at once, as above, and empty its inboxes back onto their
//! lists. So a worker killed with SIGKILL has its messages run again
//! within seconds. kombu's structures are unchanged:
//! Python workers restore by the visibility timeout, as before.
//!
//! A claim whose reply is lost (the script ran, the connection dropped) is
//! **resumed**: the script records each batch under the claim's token (a
//! field of `celeriac.claims`), and the consumer's next claim reuses the
//! token and gets that batch instead of new messages.
//!
//! ## Delayed messages
//!
//! A message with a future `eta` is published as Celery publishes it:
//! `LPUSH`ed on its queue with its `eta` header, so a Python worker gets it
//! too (and holds it in memory until due, as Celery does). When a celeriac
//! consumer claims it before it is due, the claim moves it at once, in one
//! script, from `unacked` to the `celeriac.delayed` ZSET (scored by eta),
//! and the claim script moves it back onto its list when due. So it waits
//! in Redis, durably, never in a worker's memory, and never runs early.
//! Once there, only celeriac consumers take it: in a queue shared with
//! Python workers, an eta message runs on whichever kind of worker takes it
//! first. A message whose eta is not in its headers (only in
//! [`Outgoing::eta`](celeriac_core::Outgoing::eta)) goes to the delayed set
//! directly.
//!
//! ## Remote control
//!
//! [`Control`](celeriac_core::Control) is kombu's pidbox: requests are
//! `PUBLISH`ed on `/<db>.celery.pidbox`; a client binds its reply queue
//! `<oid>.reply.celery.pidbox` in `_kombu.binding.reply.celery.pidbox` (with
//! kombu 5.7's deadline in `_kombu.binding_deadlines`), and a worker
//! `LPUSH`es its reply onto the bound list. So `celery inspect` reaches
//! celeriac workers and celeriac's client reaches Python workers.
//!
//! Each celeriac consumer also listens to Celery's `celery.pidbox` broadcasts
//! and records a Python `app.control.revoke(...)` as a durable key. A
//! revoke made through this broker ([`Revocations`](celeriac_core::Revocations))
//! writes those keys and also broadcasts Celery's own `revoke`, so that
//! Python workers skip (or, with terminate, kill) the task as well. Python
//! workers keep revokes in memory only: one started later does not know it.
//!
//! ## Results
//!
//! `celery-task-meta-<id>` is written with `SETEX` (one day by default) and
//! `PUBLISH`ed on a channel of the same name, exactly as Celery's Redis
//! backend does, by a script that never overwrites a stored SUCCESS. A
//! watcher subscribes before it sends and reads the key after subscribing, so
//! no result is missed.

mod backend;
mod broker;
mod chord;
mod conn;
mod eta;
mod liveness;
mod pidbox;
mod scripts;
mod url;

pub use backend::RedisBackend;
pub use broker::RedisBroker;
pub use url::{RedisOptions, TlsFiles, parse_redis_url};
