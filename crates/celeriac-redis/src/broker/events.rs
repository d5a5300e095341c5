//! Celery's events on Redis, exactly as kombu carries them: the `celeryev`
//! topic exchange is emulated as a fanout, `PUBLISH
//! <global_keyprefix>/<db>.celeryev/<routing key>` of a kombu envelope
//! whose base64 body is the event JSON (or a list of events, for
//! `task.multi`):
//!
//! ```text
//! PUBLISH /0.celeryev/worker.heartbeat
//! {"body": "<base64 JSON>", "content-encoding": "utf-8", "content-type": "application/json",
//!  "headers": {"hostname": "w1@example"},
//!  "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "worker.heartbeat"},
//!                 "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
//! ```
//!
//! A receiver (`celery events`, Flower, `celeriac events`) does `PSUBSCRIBE
//! /0.celeryev/*`, so Python monitors see celeriac workers and celeriac
//! sees Python workers.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use celeriac_core::BrokerError;
use celeriac_core::broker::{EventMessage, EventStream, Events};
use celeriac_core::events::{EXCHANGE, python_json};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{RedisBroker, conn_err};

/// Event messages a subscriber may have waiting before the reader stops
/// reading Redis (and Redis buffers them).
const SUBSCRIBER_BUFFER: usize = 1024;

impl RedisBroker {
    /// `<prefix>/<db>.celeryev/`: the start of every event channel
    /// (kombu's `keyprefix_fanout` and the exchange).
    fn events_channel_prefix(&self) -> String {
        let db = self.client.get_connection_info().redis_settings().db();
        format!("{}/{db}.{EXCHANGE}/", self.opts.prefix)
    }
}

#[async_trait]
impl Events for RedisBroker {
    async fn send_events(&self, messages: &[EventMessage]) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let prefix = self.events_channel_prefix();
        let mut pipe = redis::pipe();
        for m in messages {
            let channel = format!("{prefix}{}", m.routing_key);
            pipe.publish(channel, envelope(m)).ignore();
        }
        pipe.query_async::<()>(&mut self.conn().await?)
            .await
            .map_err(conn_err)
    }

    async fn subscribe_events(&self) -> Result<EventStream, BrokerError> {
        let prefix = self.events_channel_prefix();
        // Subscribed before returning: what is sent from now on arrives.
        let first = subscribe(&self.client, &prefix).await.map_err(conn_err)?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(read(self.client.clone(), prefix, first, tx));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

async fn subscribe(client: &redis::Client, prefix: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut ps = client.get_async_pubsub().await?;
    ps.psubscribe(format!("{prefix}*")).await?;
    Ok(ps)
}

/// Reads the event channels into `tx` until the subscriber is gone,
/// subscribing again after a lost connection.
async fn read(
    client: redis::Client,
    prefix: String,
    first: redis::aio::PubSub,
    tx: mpsc::Sender<Result<EventMessage, BrokerError>>,
) {
    use futures::StreamExt;
    let mut ps = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut pubsub = match ps.take() {
            Some(p) => p,
            None => {
                let again = tokio::select! {
                    r = subscribe(&client, &prefix) => r,
                    () = tx.closed() => return,
                };
                match again {
                    Ok(p) => {
                        backoff = Duration::from_millis(100);
                        p
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, retry_in = ?backoff, "event subscription failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        let mut stream = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                () = tx.closed() => return,
            };
            let Some(msg) = msg else { break };
            let channel = msg.get_channel_name();
            let key = channel.strip_prefix(prefix.as_str()).unwrap_or(channel);
            let item = msg
                .get_payload::<Vec<u8>>()
                .map_err(|e| BrokerError::storage_in("an event message", e))
                .and_then(|payload| open_envelope(key, &payload));
            if tx.send(item).await.is_err() {
                return;
            }
        }
        drop(stream);
        let lost = BrokerError::connection_msg("event subscription lost; subscribing again");
        if tx.send(Err(lost)).await.is_err() {
            return;
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: String,
    #[serde(rename = "content-type")]
    content_type: String,
    headers: Headers,
    properties: Properties,
}

#[derive(Serialize, Deserialize, Default)]
struct Headers {
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Properties {
    delivery_mode: u8,
    delivery_info: DeliveryInfo,
    priority: u8,
    body_encoding: String,
    delivery_tag: String,
}

#[derive(Serialize, Deserialize)]
struct DeliveryInfo {
    exchange: String,
    routing_key: String,
}

/// The kombu envelope of an event message, as Celery publishes it.
fn envelope(m: &EventMessage) -> Vec<u8> {
    let env = Envelope {
        body: base64::engine::general_purpose::STANDARD.encode(&m.body),
        content_encoding: "utf-8".into(),
        content_type: "application/json".into(),
        headers: Headers {
            hostname: Some(m.hostname.clone()),
        },
        properties: Properties {
            // Events are transient (Celery's dispatcher: delivery_mode=1).
            delivery_mode: 1,
            delivery_info: DeliveryInfo {
                exchange: EXCHANGE.into(),
                routing_key: m.routing_key.clone(),
            },
            priority: 0,
            body_encoding: "base64".into(),
            delivery_tag: uuid::Uuid::new_v4().to_string(),
        },
    };
    // Strings and numbers always serialize.
    python_json(&env).unwrap_or_default()
}

/// The event message in a kombu envelope received on the channel of
/// `routing_key`.
fn open_envelope(routing_key: &str, payload: &[u8]) -> Result<EventMessage, BrokerError> {
    #[derive(Deserialize)]
    struct Incoming {
        body: String,
        #[serde(default)]
        headers: Option<Headers>,
        #[serde(default)]
        properties: Option<IncomingProperties>,
    }
    #[derive(Deserialize)]
    struct IncomingProperties {
        #[serde(default)]
        body_encoding: Option<String>,
    }
    let env: Incoming = serde_json::from_slice(payload)
        .map_err(|e| BrokerError::storage_in("an event message that is not a kombu envelope", e))?;
    let base64 = env
        .properties
        .and_then(|p| p.body_encoding)
        .is_some_and(|e| e == "base64");
    let body = if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(env.body.as_bytes())
            .map_err(|e| BrokerError::storage_in("an event body that is not base64", e))?
    } else {
        env.body.into_bytes()
    };
    Ok(EventMessage {
        routing_key: routing_key.to_string(),
        hostname: env.headers.and_then(|h| h.hostname).unwrap_or_default(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_what_celery_publishes() {
        let m = EventMessage {
            routing_key: "worker.heartbeat".into(),
            hostname: "w1@example".into(),
            body: br#"{"type": "worker-heartbeat"}"#.to_vec(),
        };
        let sent = String::from_utf8(envelope(&m)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
        let tag = v["properties"]["delivery_tag"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(tag).is_ok());
        // Field for field as observed from Celery 5.7 (shared reference 2.2).
        assert_eq!(
            sent,
            format!(
                r#"{{"body": "{}", "content-encoding": "utf-8", "content-type": "application/json", "headers": {{"hostname": "w1@example"}}, "properties": {{"delivery_mode": 1, "delivery_info": {{"exchange": "celeryev", "routing_key": "worker.heartbeat"}}, "priority": 0, "body_encoding": "base64", "delivery_tag": "{tag}"}}}}"#,
                base64::engine::general_purpose::STANDARD.encode(&m.body)
            )
        );
        assert_eq!(
            open_envelope("worker.heartbeat", sent.as_bytes()).unwrap(),
            m
        );
    }

    #[test]
    fn a_bad_envelope_is_an_error() {
        for junk in [
            &b"nope"[..],
            br#"{"body": "!!", "properties": {"body_encoding": "base64"}}"#,
        ] {
            assert!(open_envelope("task.multi", junk).is_err());
        }
        let plain = open_envelope("task.multi", br#"{"body": "[]"}"#).unwrap();
        assert_eq!(plain.body, b"[]");
        assert_eq!(plain.hostname, "");
    }
}
