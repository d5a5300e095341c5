//! # celeriac-connect
//!
//! Turns URLs into brokers and result backends: the one place that knows
//! every broker crate, so that the worker, the job server and the client
//! depend only on the traits of `celeriac-core`, and a new broker is added
//! here without touching them.
//!
//! | scheme | broker and backend | crate |
//! |---|---|---|
//! | `memory://[NAME]` | in this process | `celeriac-embedded` |
//! | `sqlite://PATH` | a file shared by processes on one machine | `celeriac-embedded` |
//! | `redis://`, `rediss://`, `redis+unix://` | Redis | `celeriac-redis` |
//! | `amqp://`, `amqps://` | RabbitMQ (broker; pair it with a Redis or SQLite backend, or `rpc://`) | `celeriac-amqp` |
//! | `rpc://` | Celery's RPC result backend: results as messages to the client's reply queue, over the `amqp://` broker | `celeriac-amqp` |
//!
//! `rpc://` has no address of its own, as in Celery: it uses the AMQP
//! broker that this thread opened last with [`open_broker`] or
//! [`open_broker_for`] (open the broker first, as the CLI and the job
//! server do). `celeriac_amqp::RpcBackend::new` pairs them explicitly.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use celeriac_core::broker::BeatStore;
use celeriac_core::{BackendError, Broker, BrokerError, ResultBackend};
use celeriac_embedded::{MemoryBackend, MemoryBroker, SqliteBackend, SqliteBroker};
use celeriac_redis::{RedisBackend, RedisBroker};

/// Opens a broker from a URL: `memory://[NAME]`, `sqlite://PATH` or
/// `redis://HOST[:PORT][/DB]`.
///
/// # Examples
///
/// ```
/// let broker = celeriac_connect::open_broker("memory://").unwrap();
/// assert_eq!(broker.url(), "memory://");
/// assert!(celeriac_connect::open_broker("carrier-pigeon://").is_err());
/// ```
pub fn open_broker(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "memory" => Ok(MemoryBroker::open(url)?),
        "sqlite" => Ok(SqliteBroker::open(url)?),
        "redis" | "rediss" | "redis+unix" => Ok(RedisBroker::open(url)?),
        "amqp" | "amqps" => Ok(remember(celeriac_amqp::AmqpBroker::open(url)?)),
        _ => Err(BrokerError::InvalidUrl {
            url: redact(url),
            reason: format!(
                "unsupported scheme {scheme:?}; expected memory://, sqlite:// or redis://"
            ),
        }),
    }
}

thread_local! {
    /// The AMQP broker this thread opened last: `rpc://` results travel
    /// on it.
    static LAST_AMQP: RefCell<Weak<celeriac_amqp::AmqpBroker>> = const { RefCell::new(Weak::new()) };
}

fn remember(b: Arc<celeriac_amqp::AmqpBroker>) -> Arc<celeriac_amqp::AmqpBroker> {
    LAST_AMQP.with(|last| *last.borrow_mut() = Arc::downgrade(&b));
    b
}

/// Opens the broker at `broker_url` for use with the result backend at
/// `backend_url`. The same as [`open_broker`], except that an `amqp://`
/// broker keeps its revocations, rate-limit buckets and node registry in
/// the result store when that is Redis or SQLite (RabbitMQ has no place
/// for them): they are then shared by every worker and survive restarts.
/// With another backend the AMQP broker keeps them per process, as
/// Celery does.
///
/// # Examples
///
/// ```
/// let results = format!("sqlite://{}/celeriac-doc-results.db", std::env::temp_dir().display());
/// let b = celeriac_connect::open_broker_for("amqp://127.0.0.1:1/v", &results).unwrap();
/// assert_eq!(b.url(), "amqp://127.0.0.1:1/v");
/// ```
pub fn open_broker_for(
    broker_url: &str,
    backend_url: &str,
) -> Result<Arc<dyn Broker>, BrokerError> {
    let scheme = broker_url.split("://").next().unwrap_or_default();
    if !matches!(scheme, "amqp" | "amqps") {
        return open_broker(broker_url);
    }
    let registry: Arc<dyn celeriac_amqp::Registry> =
        match backend_url.split("://").next().unwrap_or_default() {
            "sqlite" => SqliteBroker::open(backend_url)?,
            "redis" | "rediss" | "redis+unix" => RedisBroker::open(backend_url)?,
            _ => return Ok(remember(celeriac_amqp::AmqpBroker::open(broker_url)?)),
        };
    Ok(remember(celeriac_amqp::AmqpBroker::open_with_registry(
        broker_url, registry,
    )?))
}

/// Opens the store of `celeriac beat`'s leader lease and last runs
/// ([`BeatStore`]) from a broker URL: `memory://[NAME]` (the same instance
/// as [`open_broker`]'s), `sqlite://PATH` or `redis://...`, whose fenced
/// publish goes onto that broker's queues. AMQP has no such store: a beat
/// on RabbitMQ keeps it in its result store (a Redis or SQLite URL) and
/// publishes through the broker; this returns
/// [`BrokerError::Unsupported`] for `amqp://` to say so.
///
/// # Examples
///
/// ```
/// let store = celeriac_connect::open_beat_store("memory://").unwrap();
/// assert!(format!("{store:?}").contains("MemoryBroker"));
/// assert!(celeriac_connect::open_beat_store("amqp://localhost").is_err());
/// ```
pub fn open_beat_store(url: &str) -> Result<Arc<dyn BeatStore>, BrokerError> {
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "memory" => Ok(MemoryBroker::open(url)?),
        "sqlite" => Ok(SqliteBroker::open(url)?),
        "redis" | "rediss" | "redis+unix" => Ok(RedisBroker::open(url)?),
        "amqp" | "amqps" => Err(BrokerError::Unsupported(
            "a beat lease on an AMQP broker; keep it in the result store \
             (a redis:// or sqlite:// result backend URL)"
                .to_string(),
        )),
        _ => Err(BrokerError::InvalidUrl {
            url: redact(url),
            reason: format!(
                "unsupported scheme {scheme:?}; expected memory://, sqlite:// or redis://"
            ),
        }),
    }
}

/// Opens a result backend from a URL: `memory://[NAME]`, `sqlite://PATH`,
/// `redis://HOST[:PORT][/DB]`, or `rpc://` (Celery's RPC backend, over
/// the AMQP broker this thread opened last; see the crate docs).
///
/// # Examples
///
/// ```
/// let broker = celeriac_connect::open_broker_for("amqp://127.0.0.1:1/v", "rpc://").unwrap();
/// let backend = celeriac_connect::open_backend("rpc://").unwrap();
/// assert_eq!(backend.url(), "rpc://");
/// # drop(broker);
/// ```
pub fn open_backend(url: &str) -> Result<Arc<dyn ResultBackend>, BackendError> {
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "memory" => Ok(MemoryBackend::open(url)?),
        "sqlite" => Ok(SqliteBackend::open(url)?),
        "redis" | "rediss" | "redis+unix" => Ok(RedisBackend::open(url)?),
        "rpc" => match LAST_AMQP.with(|last| last.borrow().upgrade()) {
            Some(broker) => Ok(celeriac_amqp::RpcBackend::new(&broker)),
            None => Err(BackendError::InvalidUrl {
                url: redact(url),
                reason: "rpc:// sends results over the AMQP broker, and this thread has \
                         no amqp:// broker open; open the broker first"
                    .to_string(),
            }),
        },
        "amqp" | "amqps" => Err(BackendError::InvalidUrl {
            url: redact(url),
            reason: "results are not stored in RabbitMQ; use rpc:// (Celery's RPC \
                     backend), or a redis:// or sqlite:// result backend"
                .to_string(),
        }),
        _ => Err(BackendError::InvalidUrl {
            url: redact(url),
            reason: format!(
                "unsupported scheme {scheme:?}; expected memory://, sqlite:// or redis://"
            ),
        }),
    }
}

/// The result backend to use with a broker when none is configured: the
/// broker's own store (the same named memory instance, the same SQLite file,
/// the same Redis database), and for RabbitMQ, which stores no results,
/// Celery's `rpc://` (results as messages to the sending client).
///
/// # Examples
///
/// ```
/// use celeriac_connect::default_backend_url;
/// assert_eq!(default_backend_url("redis://h:6379/0"), "redis://h:6379/0");
/// assert_eq!(default_backend_url("amqps://u:p@h/v"), "rpc://");
/// ```
pub fn default_backend_url(broker_url: &str) -> String {
    match broker_url.split("://").next().unwrap_or_default() {
        "amqp" | "amqps" => "rpc://".to_string(),
        _ => broker_url.to_string(),
    }
}

/// `url` with everything between `://` and its last `@` (a password, and
/// whatever a parser could take for one) replaced by `***`, for errors
/// about URLs of unknown schemes.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
