//! Remote control and events on AMQP. `purge` works (`queue.purge`); Celery's pidbox
//! (`celery.pidbox` fanout, `reply.celery.pidbox`) is not carried yet, so
//! broadcasting and listening answer a typed `Unsupported` error, and a
//! worker on AMQP runs without remote control (it says so once).

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::ReplyTo;
use celeriac_core::{BrokerError, Control, ControlInbox, ControlReply, ControlRequest};
use lapin::options::QueuePurgeOptions;

use crate::broker::AmqpBroker;

fn no_pidbox() -> BrokerError {
    BrokerError::Unsupported(
        "remote control (Celery's pidbox) on an AMQP broker (not implemented yet; \
         inspect and control need a Redis or SQLite broker for now)"
            .to_string(),
    )
}

#[async_trait]
impl Control for AmqpBroker {
    async fn broadcast(&self, _request: &ControlRequest) -> Result<(), BrokerError> {
        Err(no_pidbox())
    }

    async fn listen(&self, _node: &str) -> Result<ControlInbox, BrokerError> {
        Err(no_pidbox())
    }

    async fn reply(&self, _to: &ReplyTo, _reply: &ControlReply) -> Result<(), BrokerError> {
        Err(no_pidbox())
    }

    async fn open_replies(&self, _oid: &str) -> Result<(), BrokerError> {
        Err(no_pidbox())
    }

    async fn next_replies(
        &self,
        _oid: &str,
        _wait: Duration,
    ) -> Result<Vec<ControlReply>, BrokerError> {
        Err(no_pidbox())
    }

    async fn close_replies(&self, _oid: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// `queue.purge`: the ready messages of `queue`. Messages waiting in
    /// its delay queues (eta, delayed requeues) are not counted or removed
    /// yet.
    async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        let link = self.link().await?;
        let n = link
            .publish
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| self.amqp_err("purge a queue", e))?;
        Ok(n as usize)
    }
}

/// Celery events (the `celeryev` topic exchange) are not carried on AMQP
/// yet: sending says so (a worker warns once and goes on without them),
/// and so does subscribing.
#[async_trait]
impl celeriac_core::Events for AmqpBroker {
    async fn send_events(
        &self,
        _messages: &[celeriac_core::EventMessage],
    ) -> Result<(), BrokerError> {
        Err(no_events())
    }

    async fn subscribe_events(&self) -> Result<celeriac_core::broker::EventStream, BrokerError> {
        Err(no_events())
    }
}

fn no_events() -> BrokerError {
    BrokerError::Unsupported(
        "Celery events on an AMQP broker (not implemented yet; use a Redis or SQLite broker \
         for monitoring for now)"
            .to_string(),
    )
}
