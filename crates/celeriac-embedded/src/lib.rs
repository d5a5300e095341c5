//! # celeriac-embedded
//!
//! Brokers and result stores that need no server:
//!
//! - [`MemoryBroker`] and [`MemoryBackend`] (`memory://`): inside one
//!   process. `memory://` opens a private instance; `memory://NAME` opens the
//!   process-wide instance called `NAME`, so that a client and a worker in
//!   one process can share it.
//! - [`SqliteBroker`] and [`SqliteBackend`] (`sqlite:///path/to/file.db`):
//!   a durable file in SQLite's WAL mode that several processes on one
//!   machine share safely.
//!
//! Both store Celery protocol v2 envelopes, exactly as they would travel
//! through Redis, and keep the celeriac broker contract: atomic claims with
//! leases, delayed (eta) messages stored in the broker, dead letters with a
//! reason, and nothing dropped. On both, **priority 0 is the highest**, as
//! on Redis.
//!
//! ## The SQLite design
//!
//! One table holds every message with a `visible_at` time. A message is
//! claimable when `visible_at <= now`. Publishing sets it to the eta (or
//! now). A claim runs in one `BEGIN IMMEDIATE` transaction that selects the
//! claimable rows and sets `visible_at` to the end of a lease, a fresh
//! `claim_token` and the consumer name, so a claimed message is never only
//! in a worker's memory. Workers renew the lease while the task runs. If the
//! worker dies, the lease lapses and the next claim takes the message again
//! (`redelivered`). Ack, renew and requeue match on the claim token, so a
//! worker whose lease lapsed cannot ack a message another worker holds.
//!
//! Each handle's connection belongs to one thread of its own. The claims,
//! publishes, acks and result stores queued while it works share one write
//! transaction (one commit), and a worker whose result backend is the
//! broker's own file stores a batch's results, joins its chord parts and
//! acks its messages in one transaction
//! ([`SettleTogether`](celeriac_core::broker::SettleTogether)). The file
//! is in WAL mode with `synchronous=NORMAL`: a committed claim, ack or
//! result survives the crash (`kill -9`) of any process, and only a power
//! loss can undo the last commits (`?sync=full` guards against that too,
//! at the cost of an fsync per commit). On Linux a waiting claim or result
//! poller is woken by another process's next write to the file's log (a
//! one-shot inotify watch), and otherwise polls, backing off to 20 ms.
//!
//! ## Chords
//!
//! Both backends join chords ([`ChordJoin`](celeriac_core::ChordJoin))
//! with the rules of Celery 5.x's Redis join: a header part is counted once
//! per `<id>:<index>` (a redelivered part is not counted twice), exactly one
//! caller learns that the last part is in, and a finished chord stays
//! marked done so that a late part triggers nothing. On SQLite each call is
//! one `BEGIN IMMEDIATE` transaction (tables `chords` and `chord_parts`),
//! so workers in several processes join one chord; in memory each call is
//! one critical section.

mod memory;
mod sqlite;
mod url;

pub use memory::{MemoryBackend, MemoryBroker};
pub use sqlite::{SqliteBackend, SqliteBroker};
pub use url::{SqliteOptions, default_db_path, parse_sqlite_url};

use std::time::Duration;

/// How long a claim holds a message before it is claimable again, unless
/// renewed. Workers renew at a third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long results are kept (Celery's `result_expires`, one day).
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(86_400);
