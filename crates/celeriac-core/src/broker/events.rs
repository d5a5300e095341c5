//! [`Events`]: Celery's monitoring events through the broker. Workers
//! publish them; monitors (`celeriac events`, `celery events`, Flower)
//! subscribe. See [`crate::events`] for what an event holds.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::BrokerError;

/// One event message: the JSON of one event, or of a list of events (a
/// `task.multi` message), as Celery publishes it on the `celeryev`
/// exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// The routing key: the event type with dots (`worker.heartbeat`), or
    /// `task.multi` for a list of task events.
    pub routing_key: String,
    /// The sender's node name (the `hostname` message header).
    pub hostname: String,
    /// The JSON body; [`crate::events::decode`] reads it.
    pub body: Vec<u8>,
}

/// The event messages sent from the moment of
/// [`Events::subscribe_events`] on. A subscription survives broker
/// restarts where the broker allows (events sent meanwhile are lost, as
/// with Celery); an `Err` item reports a problem without ending it.
pub type EventStream = BoxStream<'static, Result<EventMessage, BrokerError>>;

/// The event capability of a broker: Celery's `celeryev` exchange.
///
/// Events are for monitoring: like Celery's, they are fire-and-forget. A
/// message sent while nobody subscribes may be lost (Redis), or kept for a
/// while (the embedded brokers keep the most recent ones).
///
/// # Examples
///
/// ```
/// use celeriac_core::broker::{EventMessage, Events};
/// use celeriac_core::events::{self, EventBuilder};
///
/// async fn online<B: Events + ?Sized>(broker: &B) {
///     let ev = EventBuilder::new("w1@host", 0.0, 1, 1).finish(0.0, "worker-online");
///     let msg = EventMessage {
///         routing_key: events::routing_key("worker-online"),
///         hostname: "w1@host".into(),
///         body: ev.into_bytes(),
///     };
///     broker.send_events(&[msg]).await.unwrap();
/// }
/// # let _ = online::<dyn Events>;
/// ```
#[async_trait]
pub trait Events: Send + Sync + fmt::Debug {
    /// Publishes event messages, in order, in one round trip or
    /// transaction where the broker allows.
    async fn send_events(&self, messages: &[EventMessage]) -> Result<(), BrokerError>;

    /// Receives every event message sent from now on, by any sender on
    /// this broker.
    async fn subscribe_events(&self) -> Result<EventStream, BrokerError>;
}
