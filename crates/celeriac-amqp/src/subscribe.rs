//! Consumers of kombu's broadcast exchanges: a private queue (exclusive,
//! auto-deleted, with kombu's TTL and expiry arguments) bound to an
//! exchange, consumed without acks on a channel of its own, and declared
//! again on a new connection after a failure. Remote control
//! (`celery.pidbox`, `reply.celery.pidbox`) and events (`celeryev`) use it,
//! and so does the `rpc://` result backend's reply queue (durable,
//! auto-deleted, on the default exchange).

use std::time::Duration;

use celeriac_core::BrokerError;
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Consumer, ExchangeKind};

use crate::broker::AmqpBroker;

/// An exchange as kombu declares it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    /// Its name.
    pub(crate) name: &'static str,
    /// `direct`, `fanout` or `topic`.
    pub(crate) kind: Kind,
    /// Whether it survives a RabbitMQ restart.
    pub(crate) durable: bool,
}

/// The exchange types kombu's broadcasts use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Direct,
    Fanout,
    Topic,
}

/// `celery.pidbox`: remote-control requests (fanout, not durable).
pub(crate) const PIDBOX: Exchange = Exchange {
    name: "celery.pidbox",
    kind: Kind::Fanout,
    durable: false,
};

/// `reply.celery.pidbox`: remote-control replies (direct, not durable).
pub(crate) const REPLIES: Exchange = Exchange {
    name: celeriac_core::broker::REPLY_EXCHANGE,
    kind: Kind::Direct,
    durable: false,
};

/// `celeryev`: monitoring events (topic, durable).
pub(crate) const EVENTS: Exchange = Exchange {
    name: celeriac_core::events::EXCHANGE,
    kind: Kind::Topic,
    durable: true,
};

impl Exchange {
    fn kind(&self) -> ExchangeKind {
        match self.kind {
            Kind::Direct => ExchangeKind::Direct,
            Kind::Fanout => ExchangeKind::Fanout,
            Kind::Topic => ExchangeKind::Topic,
        }
    }

    /// Declares the exchange on `ch` with kombu's flags (other flags would
    /// make RabbitMQ refuse the declaration of a Python peer, or ours).
    pub(crate) async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        ch.exchange_declare(
            self.name.into(),
            self.kind(),
            ExchangeDeclareOptions {
                durable: self.durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    }
}

/// A private queue bound to an exchange.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    /// The exchange; `None` for the default exchange (no binding: it
    /// routes by queue name).
    pub(crate) exchange: Option<Exchange>,
    /// The queue's name.
    pub(crate) queue: String,
    /// The binding's routing key.
    pub(crate) routing_key: String,
    /// kombu's `x-message-ttl`, ms, if any.
    pub(crate) message_ttl_ms: Option<i64>,
    /// kombu's `x-expires`, ms.
    pub(crate) expires_ms: i64,
    /// Exclusive and transient (kombu's broadcast queues), or durable and
    /// shared (Celery's `rpc://` reply queue); auto-deleted either way.
    pub(crate) exclusive: bool,
}

impl Binding {
    /// A private queue of kombu's broadcasts on `exchange`.
    pub(crate) fn broadcast(
        exchange: Exchange,
        queue: String,
        routing_key: String,
        message_ttl_ms: i64,
        expires_ms: i64,
    ) -> Self {
        Binding {
            exchange: Some(exchange),
            queue,
            routing_key,
            message_ttl_ms: Some(message_ttl_ms),
            expires_ms,
            exclusive: true,
        }
    }

    fn exchange_name(&self) -> &'static str {
        self.exchange.map_or("the default exchange", |e| e.name)
    }
}

/// A consumer on a binding's queue, with the channel it lives on.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
    queue: String,
}

impl Subscription {
    /// Deletes the queue and closes the channel: nothing sent to the
    /// binding from now on is kept for it.
    pub(crate) async fn close(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .close(200, "celeriac unsubscribes".into())
            .await;
    }
}

impl AmqpBroker {
    /// Declares `b` on a new channel of the current connection and starts
    /// consuming it without acks.
    pub(crate) async fn subscribe(&self, b: &Binding) -> Result<Subscription, BrokerError> {
        let link = self.link().await?;
        let err = |e| {
            self.amqp_err(
                &format!("subscribe {:?} to {}", b.queue, b.exchange_name()),
                e,
            )
        };
        let ch = link.conn.create_channel().await.map_err(err)?;
        let mut args = FieldTable::default();
        if let Some(ttl) = b.message_ttl_ms {
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        }
        args.insert("x-expires".into(), AMQPValue::LongLongInt(b.expires_ms));
        let opts = QueueDeclareOptions {
            auto_delete: true,
            exclusive: b.exclusive,
            durable: !b.exclusive,
            ..Default::default()
        };
        if let Some(exchange) = b.exchange {
            exchange.declare(&ch).await.map_err(err)?;
        }
        ch.queue_declare(b.queue.as_str().into(), opts, args)
            .await
            .map_err(err)?;
        if let Some(exchange) = b.exchange {
            ch.queue_bind(
                b.queue.as_str().into(),
                exchange.name.into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        }
        let consumer = ch
            .basic_consume(
                b.queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        Ok(Subscription {
            channel: ch,
            consumer,
            queue: b.queue.clone(),
        })
    }

    /// Runs `first` (a subscription to `b`) until `closed` resolves,
    /// passing every delivery to `on_delivery`, which returns false to
    /// stop. When the subscription ends (the connection failed), `on_lost`
    /// is told and the binding is subscribed again, with backoff.
    pub(crate) async fn keep_subscribed<F, C, L>(
        self,
        b: Binding,
        first: Subscription,
        mut on_delivery: F,
        mut on_lost: L,
        closed: C,
    ) where
        F: FnMut(lapin::message::Delivery) -> bool,
        L: FnMut(&str),
        C: std::future::Future<Output = ()>,
    {
        tokio::pin!(closed);
        let mut current = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut sub = match current.take() {
                Some(s) => s,
                None => {
                    let again = tokio::select! {
                        s = self.subscribe(&b) => s,
                        () = &mut closed => return,
                    };
                    match again {
                        Ok(s) => {
                            backoff = Duration::from_millis(100);
                            s
                        }
                        Err(e) => {
                            tracing::debug!(queue = %b.queue, error = %e, retry_in = ?backoff, "AMQP subscription failed");
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = &mut closed => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                }
            };
            let why = loop {
                let item = tokio::select! {
                    i = sub.consumer.next() => i,
                    () = &mut closed => {
                        sub.close().await;
                        return;
                    }
                };
                match item {
                    Some(Ok(d)) => {
                        if !on_delivery(d) {
                            sub.close().await;
                            return;
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "consumer cancelled".to_string(),
                }
            };
            tracing::warn!(queue = %b.queue, reason = %why, "AMQP subscription lost; subscribing again");
            on_lost(&why);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut closed => return,
            }
        }
    }
}
