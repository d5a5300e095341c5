//! Declaring what the broker publishes to: a task queue and its direct
//! exchange as kombu declares them, and the per-delay queues that hold
//! countdown and ETA messages until their TTL dead-letters them into the
//! task queue.

use celeriac_core::BrokerError;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::AmqpBroker;
use crate::link::Link;

impl AmqpBroker {
    /// Declares `queue` as kombu does (durable, no arguments, its direct
    /// exchange bound by its name), once per link.
    pub(super) async fn declare(&self, link: &Link, queue: &str) -> Result<(), BrokerError> {
        if self.inner.state.lock().declared.contains(queue) {
            return Ok(());
        }
        let ch = &link.publish;
        let err = |e| self.amqp_err(&format!("declare queue {queue:?}"), e);
        ch.exchange_declare(
            queue.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
        self.declare_queue(link, queue).await?;
        ch.queue_bind(
            queue.into(),
            queue.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
        let mut st = self.inner.state.lock();
        if st.generation == link.generation {
            st.declared.insert(queue.to_string());
        }
        Ok(())
    }

    /// Declares task queue `queue` (durable, with `x-max-priority` if
    /// configured) on a channel of its own: a queue that exists with other
    /// arguments (declared by a Celery with another
    /// `task_queue_max_priority`, or as a quorum queue) makes RabbitMQ
    /// close the declaring channel; it is then used as it is, with a
    /// warning.
    pub(super) async fn declare_queue(&self, link: &Link, queue: &str) -> Result<(), BrokerError> {
        let err = |e| self.amqp_err(&format!("declare queue {queue:?}"), e);
        let mut args = FieldTable::default();
        if let Some(p) = self.inner.max_priority {
            args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(p));
        }
        if let Some(t) = &self.inner.queue_type {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from(t.as_str())),
            );
        }
        let ch = link.conn.create_channel().await.map_err(err)?;
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = ch.queue_declare(queue.into(), opts, args).await;
        let _ = ch.close(200, "declared".into()).await;
        match declared {
            Ok(_) => Ok(()),
            Err(e) if link.conn.status().connected() => {
                let ch = link.conn.create_channel().await.map_err(err)?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let exists = ch
                    .queue_declare(queue.into(), passive, FieldTable::default())
                    .await;
                let _ = ch.close(200, "declared".into()).await;
                if exists.is_err() {
                    return Err(err(e));
                }
                tracing::warn!(queue, error = %e, "queue exists with other arguments; using it as it is");
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Declares the delay queue for `delay_ms` in front of `queue`.
    pub(super) async fn declare_delay(
        &self,
        link: &Link,
        queue: &str,
        delay_ms: u64,
    ) -> Result<String, BrokerError> {
        let name = format!("celeriac.delay.{delay_ms}.{queue}");
        if self.inner.state.lock().declared.contains(&name) {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        let ms = i64::try_from(delay_ms).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(queue)),
        );
        // Deleted a minute after its last use; by then it is empty.
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(ms.saturating_add(60_000)),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        link.publish
            .queue_declare(name.as_str().into(), opts, args)
            .await
            .map_err(|e| self.amqp_err(&format!("declare delay queue {name:?}"), e))?;
        // Not cached: redeclaring resets `x-expires`, so a delay queue in
        // use is never deleted under its messages.
        Ok(name)
    }
}
