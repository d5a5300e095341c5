//! Celery's events on AMQP, as kombu carries them on RabbitMQ (reference
//! §2.3): the durable topic exchange `celeryev`; each event message is
//! published with its routing key (`worker.heartbeat`, `task.multi`, ...),
//! the raw JSON body (one event, or a list for `task.multi`), the
//! application header `hostname`, and `delivery_mode` 1 (transient).
//!
//! A receiver declares its own queue `celeryev.<uuid>` (exclusive,
//! auto-deleted, `x-message-ttl` 5 s, `x-expires` 60 s) bound with `#`,
//! and consumes it without acks, as Celery's `EventReceiver` does; so
//! `celery events`, Flower and `celeriac events` see every worker, Python
//! or celeriac.

use async_trait::async_trait;
use celeriac_core::BrokerError;
use celeriac_core::broker::{EventMessage, EventStream, Events};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::sync::mpsc;

use crate::broker::AmqpBroker;
use crate::subscribe::{Binding, EVENTS};
use crate::wire::{AmqpMessage, amqp_to_json};

/// Event messages a subscriber may have waiting before the reader stops
/// taking them from RabbitMQ.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The AMQP message of an event message.
fn to_amqp(m: &EventMessage) -> AmqpMessage {
    let mut headers = FieldTable::default();
    headers.insert(
        "hostname".into(),
        AMQPValue::LongString(LongString::from(m.hostname.as_str())),
    );
    AmqpMessage {
        body: m.body.clone(),
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(1)
            .with_priority(0)
            .with_headers(headers),
    }
}

/// The event message of a delivery from `celeryev`.
fn from_delivery(d: &lapin::message::Delivery) -> EventMessage {
    let hostname = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("hostname"))
        .map(amqp_to_json)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    EventMessage {
        routing_key: d.routing_key.as_str().to_string(),
        hostname,
        body: d.data.clone(),
    }
}

#[async_trait]
impl Events for AmqpBroker {
    async fn send_events(&self, messages: &[EventMessage]) -> Result<(), BrokerError> {
        for m in messages {
            self.publish_to(Some(EVENTS), &m.routing_key, to_amqp(m))
                .await?;
        }
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<EventStream, BrokerError> {
        let binding = Binding::broadcast(
            EVENTS,
            format!("{}.{}", EVENTS.name, uuid::Uuid::new_v4()),
            "#".to_string(),
            5_000,
            60_000,
        );
        // Bound before returning: what is sent from now on arrives.
        let first = self.subscribe(&binding).await?;
        let (tx, rx) = mpsc::channel::<Result<EventMessage, BrokerError>>(SUBSCRIBER_BUFFER);
        let lost_tx = tx.clone();
        let gone = tx.clone();
        tokio::spawn(self.clone().keep_subscribed(
            binding,
            first,
            move |d| match tx.try_send(Ok(from_delivery(&d))) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("event subscriber is not keeping up; an event was dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            move |why| {
                let lost = BrokerError::connection_msg(format!(
                    "event subscription lost ({why}); subscribing again"
                ));
                let _ = lost_tx.try_send(Err(lost));
            },
            async move { gone.closed().await },
        ));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_transient_raw_json_with_the_hostname_header() {
        let m = EventMessage {
            routing_key: "worker.heartbeat".into(),
            hostname: "w1@h".into(),
            body: br#"{"type": "worker-heartbeat"}"#.to_vec(),
        };
        let a = to_amqp(&m);
        assert_eq!(a.body, m.body);
        assert_eq!(a.properties.delivery_mode(), &Some(1));
        let h = a.properties.headers().as_ref().unwrap();
        assert_eq!(amqp_to_json(h.inner().get("hostname").unwrap()), "w1@h");
    }
}
