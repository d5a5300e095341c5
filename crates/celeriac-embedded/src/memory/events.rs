//! Events on `memory://`: a broadcast channel inside the process. A
//! subscriber that falls more than [`CAPACITY`] messages behind misses the
//! oldest and is told how many.

use async_trait::async_trait;
use celeriac_core::BrokerError;
use celeriac_core::broker::{EventMessage, EventStream, Events};
use tokio::sync::broadcast;

use super::MemoryBroker;

/// Event messages kept for a slow subscriber.
const CAPACITY: usize = 4096;

/// The broker's event channel.
#[derive(Debug)]
pub(super) struct Bus(broadcast::Sender<EventMessage>);

impl Default for Bus {
    fn default() -> Self {
        Bus(broadcast::channel(CAPACITY).0)
    }
}

#[async_trait]
impl Events for MemoryBroker {
    async fn send_events(&self, messages: &[EventMessage]) -> Result<(), BrokerError> {
        for m in messages {
            // No subscriber: nobody to tell, as on Redis.
            let _ = self.events.0.send(m.clone());
        }
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<EventStream, BrokerError> {
        let rx = self.events.0.subscribe();
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(m) => Some((Ok(m), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(BrokerError::storage_msg(format!(
                        "{n} event messages missed: the subscriber fell behind"
                    ))),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn msg(i: usize) -> EventMessage {
        EventMessage {
            routing_key: "task.multi".into(),
            hostname: "w@h".into(),
            body: format!("[{i}]").into_bytes(),
        }
    }

    #[tokio::test]
    async fn subscribers_get_what_is_sent_after_they_subscribe() {
        let broker = MemoryBroker::new();
        broker.send_events(&[msg(0)]).await.unwrap();
        let mut a = broker.subscribe_events().await.unwrap();
        let mut b = broker.subscribe_events().await.unwrap();
        broker.send_events(&[msg(1), msg(2)]).await.unwrap();
        for s in [&mut a, &mut b] {
            assert_eq!(s.next().await.unwrap().unwrap(), msg(1));
            assert_eq!(s.next().await.unwrap().unwrap(), msg(2));
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed() {
        let broker = MemoryBroker::new();
        let mut s = broker.subscribe_events().await.unwrap();
        let many: Vec<_> = (0..CAPACITY + 10).map(msg).collect();
        broker.send_events(&many).await.unwrap();
        let err = s.next().await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("10 event messages missed"),
            "{err}"
        );
        assert_eq!(s.next().await.unwrap().unwrap(), msg(10));
    }
}
