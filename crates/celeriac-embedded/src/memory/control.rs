//! Remote control inside one process: requests go to every listener of
//! this broker instance, replies wait in per-client mailboxes.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::REVOKE_TTL;
use celeriac_core::broker::ReplyTo;
use celeriac_core::{
    BrokerError, Control, ControlInbox, ControlReply, ControlRequest, Revocations,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::MemoryBroker;

/// The listeners and reply mailboxes of one broker instance.
#[derive(Debug, Default)]
pub(crate) struct Mailboxes {
    listeners: Mutex<Vec<mpsc::UnboundedSender<ControlRequest>>>,
    replies: Mutex<HashMap<String, VecDeque<ControlReply>>>,
    arrived: Notify,
}

impl Mailboxes {
    /// Sends `request` to every live listener, forgetting those gone.
    pub(crate) fn broadcast(&self, request: &ControlRequest) {
        self.listeners
            .lock()
            .retain(|l| l.send(request.clone()).is_ok());
    }

    /// A new listener's inbox.
    pub(crate) fn listen(&self) -> ControlInbox {
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners.lock().push(tx);
        ControlInbox::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        }))
    }

    /// Puts `reply` in mailbox `oid`, if it is open.
    pub(crate) fn reply(&self, oid: &str, reply: &ControlReply) {
        if let Some(q) = self.replies.lock().get_mut(oid) {
            q.push_back(reply.clone());
            self.arrived.notify_waiters();
        }
    }

    pub(crate) fn open(&self, oid: &str) {
        self.replies.lock().entry(oid.to_string()).or_default();
    }

    pub(crate) fn close(&self, oid: &str) {
        self.replies.lock().remove(oid);
    }

    /// Waits up to `wait` for replies in `oid`.
    pub(crate) async fn next(&self, oid: &str, wait: Duration) -> Vec<ControlReply> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got: Vec<ControlReply> = self
                .replies
                .lock()
                .get_mut(oid)
                .map(|q| q.drain(..).collect())
                .unwrap_or_default();
            if !got.is_empty() {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Vec::new();
            }
        }
    }
}

#[async_trait]
impl Control for MemoryBroker {
    /// Sends `request` to every listener; a `revoke` is also recorded, as
    /// [`Revocations::revoke`] does.
    async fn broadcast(&self, request: &ControlRequest) -> Result<(), BrokerError> {
        if let Some((ids, terminate)) = request.revoke() {
            if terminate {
                self.revoke_terminate(&ids, REVOKE_TTL).await?;
            } else {
                self.revoke(&ids, REVOKE_TTL).await?;
            }
        }
        self.control.broadcast(request);
        Ok(())
    }

    async fn listen(&self, _node: &str) -> Result<ControlInbox, BrokerError> {
        Ok(self.control.listen())
    }

    async fn reply(&self, to: &ReplyTo, reply: &ControlReply) -> Result<(), BrokerError> {
        self.control.reply(&to.routing_key, reply);
        Ok(())
    }

    async fn open_replies(&self, oid: &str) -> Result<(), BrokerError> {
        self.control.open(oid);
        Ok(())
    }

    async fn next_replies(
        &self,
        oid: &str,
        wait: Duration,
    ) -> Result<Vec<ControlReply>, BrokerError> {
        Ok(self.control.next(oid, wait).await)
    }

    async fn close_replies(&self, oid: &str) -> Result<(), BrokerError> {
        self.control.close(oid);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        let mut st = self.state.lock();
        let mut n = 0;
        if let Some(q) = st.queues.get_mut(queue) {
            n += q.len;
            for level in &mut q.levels {
                level.clear();
            }
            q.len = 0;
        }
        let before = st.delayed.len();
        st.delayed.retain(|_, e| e.queue != queue);
        n += before - st.delayed.len();
        Ok(n)
    }

    /// The messages of `queues` held back until their eta.
    async fn delayed(
        &self,
        queues: &[String],
        limit: usize,
    ) -> Result<Vec<(f64, String, Vec<u8>)>, BrokerError> {
        let st = self.state.lock();
        Ok(st
            .delayed
            .iter()
            .filter(|(_, e)| queues.contains(&e.queue))
            .take(limit)
            .map(|((bits, _), e)| (f64::from_bits(*bits), e.queue.clone(), e.payload.clone()))
            .collect())
    }
}
