//! [`Control`] on Celery's wire: requests are `PUBLISH`ed on the
//! `celery.pidbox` fanout channel that every worker (Python or celeriac)
//! subscribes to; a client binds its reply queue `<oid>.reply.celery.pidbox`
//! in `_kombu.binding.reply.celery.pidbox` (with kombu 5.7's binding
//! deadline), and a worker replies by looking the routing key up there and
//! `LPUSH`ing onto the bound list, exactly as kombu's `Node.reply` does.

use std::ops::ControlFlow;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::{REPLY_EXCHANGE, REVOKE_TTL, ReplyTo};
use celeriac_core::{BrokerError, Control, ControlInbox, ControlReply, ControlRequest};
use redis::AsyncCommands;
use tokio::sync::mpsc;

use super::{PRIORITY_STEPS, RedisBroker, SEP, conn_err};

/// kombu 5.7's `REFRESH_BINDING`: adds a binding and raises its
/// exchange's deadline, so that kombu's binding sweep keeps the table.
static REFRESH_BINDING: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])",
    )
});

/// kombu's `MIN_BINDING_TTL`, in ms.
const BINDING_TTL_MS: u64 = 3_600_000;

/// The longest single blocking wait for replies (the blocking connection's
/// response timeout is a few seconds more).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The `_kombu.binding.*` member of queue `queue` bound with `routing_key`.
fn member(routing_key: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{SEP}{queue}")
}

/// The reply queue of mailbox `oid`.
fn reply_queue(oid: &str) -> String {
    format!("{oid}.{REPLY_EXCHANGE}")
}

impl RedisBroker {
    /// Binds `queue` to `exchange` with `routing_key`, as kombu 5.7 does
    /// for queues that expire.
    async fn refresh_binding(
        &self,
        exchange: &str,
        routing_key: &str,
        queue: &str,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        REFRESH_BINDING
            .key(self.key(&format!("_kombu.binding.{exchange}")))
            .key(self.key("_kombu.binding_deadlines"))
            .arg(member(routing_key, queue))
            .arg(exchange)
            .arg(BINDING_TTL_MS)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(conn_err)
    }

    /// The lists of a reply queue, one per priority step.
    fn reply_lists(&self, oid: &str) -> Vec<String> {
        PRIORITY_STEPS
            .iter()
            .map(|s| self.list_key(&reply_queue(oid), *s))
            .collect()
    }
}

#[async_trait]
impl Control for RedisBroker {
    /// `PUBLISH`es the request on the pidbox channel. A `revoke` is also
    /// recorded durably for celeriac workers, in the same round trip.
    async fn broadcast(&self, request: &ControlRequest) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        if let Some((ids, terminate)) = request.revoke() {
            super::control::revoke_keys_into(
                &mut pipe,
                &self.opts.prefix,
                &ids,
                REVOKE_TTL,
                terminate,
                false,
            );
        }
        let clock = request.clock.max(1);
        pipe.publish(
            self.pidbox_channel(),
            crate::pidbox::request(request, clock),
        )
        .ignore();
        pipe.query_async::<()>(&mut self.conn().await?)
            .await
            .map_err(conn_err)
    }

    /// Subscribes to the pidbox channel (and binds `<node>.celery.pidbox`
    /// as a Celery worker does). The subscription is re-made when it
    /// drops; requests broadcast meanwhile are lost, as on any fanout.
    async fn listen(&self, node: &str) -> Result<ControlInbox, BrokerError> {
        use futures::StreamExt;
        let channel = self.pidbox_channel();
        self.refresh_binding(
            crate::pidbox::EXCHANGE,
            "",
            &format!("{node}.{}", crate::pidbox::EXCHANGE),
        )
        .await?;
        let mut first = Some(subscribe(&self.client, &channel).await.map_err(conn_err)?);
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !tx.is_closed() {
                let ps = match first.take() {
                    Some(ps) => ps,
                    None => match subscribe(&client, &channel).await {
                        Ok(ps) => {
                            backoff = Duration::from_millis(100);
                            ps
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "remote-control subscription failed");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                };
                let mut stream = ps.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        () = tx.closed() => return,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                        continue;
                    };
                    match crate::pidbox::decode_request(&payload) {
                        Some(r) => {
                            if tx.send(r).is_err() {
                                return;
                            }
                        }
                        None => tracing::warn!("ignoring a malformed remote-control message"),
                    }
                }
                tracing::warn!("remote-control subscription lost; reconnecting");
            }
        });
        Ok(ControlInbox::new(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        )))
    }

    /// Looks the mailbox up in `_kombu.binding.reply.celery.pidbox` and
    /// `LPUSH`es the reply onto every queue bound with its routing key; a
    /// mailbox nobody binds (its client gave up) gets nothing.
    async fn reply(&self, to: &ReplyTo, reply: &ControlReply) -> Result<(), BrokerError> {
        let exchange = if to.exchange.is_empty() {
            REPLY_EXCHANGE
        } else {
            &to.exchange
        };
        let mut conn = self.conn().await?;
        let members: Vec<String> = conn
            .smembers(self.key(&format!("_kombu.binding.{exchange}")))
            .await
            .map_err(conn_err)?;
        let queues: Vec<&str> = members
            .iter()
            .filter_map(|m| {
                let mut parts = m.splitn(3, SEP);
                let rk = parts.next()?;
                let _pattern = parts.next()?;
                let queue = parts.next()?;
                (rk == to.routing_key).then_some(queue)
            })
            .collect();
        if queues.is_empty() {
            tracing::debug!(mailbox = %to.routing_key, "no reply queue bound; reply dropped");
            return Ok(());
        }
        let envelope = crate::pidbox::reply(reply, to);
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.lpush(self.key(q), &envelope).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(conn_err)
    }

    async fn open_replies(&self, oid: &str) -> Result<(), BrokerError> {
        self.refresh_binding(REPLY_EXCHANGE, oid, &reply_queue(oid))
            .await
    }

    /// `BRPOP`s the reply queue's lists (at most a second per call).
    async fn next_replies(
        &self,
        oid: &str,
        wait: Duration,
    ) -> Result<Vec<ControlReply>, BrokerError> {
        let pooled = self.blockers.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => crate::conn::blocking(&self.client)
                .await
                .map_err(conn_err)?,
        };
        let secs = wait.min(MAX_WAIT).as_secs_f64().max(0.01);
        let got: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
            .arg(self.reply_lists(oid))
            .arg(secs)
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        self.blockers.lock().push(conn);
        Ok(got
            .and_then(|(_, payload)| crate::pidbox::decode_reply(&payload))
            .into_iter()
            .collect())
    }

    async fn close_replies(&self, oid: &str) -> Result<(), BrokerError> {
        let m = member(oid, &reply_queue(oid));
        let mut pipe = redis::pipe();
        pipe.srem(self.key(&format!("_kombu.binding.{REPLY_EXCHANGE}")), &m)
            .ignore();
        pipe.srem(
            self.key(&format!("_kombu.binding_permanent.{REPLY_EXCHANGE}")),
            &m,
        )
        .ignore();
        pipe.del(self.reply_lists(oid)).ignore();
        pipe.query_async::<()>(&mut self.conn().await?)
            .await
            .map_err(conn_err)
    }

    /// The nodes bound to `celery.pidbox` (kombu's
    /// `_kombu.binding.celery.pidbox`: `<node>.celery.pidbox` members),
    /// Python workers and celeriac ones alike. A worker that died without
    /// unbinding stays listed until kombu's binding deadline passes.
    async fn listeners(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn().await?;
        let members: Vec<String> = conn
            .smembers(self.key(&format!("_kombu.binding.{}", crate::pidbox::EXCHANGE)))
            .await
            .map_err(conn_err)?;
        let suffix = format!(".{}", crate::pidbox::EXCHANGE);
        let mut nodes: Vec<String> = members
            .iter()
            .filter_map(|m| m.splitn(3, SEP).nth(2)?.strip_suffix(&suffix))
            .map(str::to_string)
            .collect();
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    /// The messages of `queues` in `celeriac.delayed`: eta messages a
    /// celeriac worker claimed before they were due (they wait there, not
    /// in the worker), and ones published with an eta known to the broker
    /// alone. (An eta message no celeriac worker has claimed yet is still
    /// on its queue's list.)
    async fn delayed(
        &self,
        queues: &[String],
        limit: usize,
    ) -> Result<Vec<(f64, String, Vec<u8>)>, BrokerError> {
        let lists: Vec<(String, &String)> = queues
            .iter()
            .flat_map(|q| {
                PRIORITY_STEPS
                    .iter()
                    .map(move |s| (self.list_key(q, *s), q))
            })
            .collect();
        let mut conn = self.conn().await?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        super::delayed::each_delayed(&mut conn, &self.key("celeriac.delayed"), |d| {
            if let Some((_, q)) = lists.iter().find(|(l, _)| l == d.list) {
                out.push((d.eta, (*q).clone(), d.message.as_bytes().to_vec()));
            }
            if out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        Ok(out)
    }

    /// Empties the queue's lists (as kombu's `queue_purge`) and drops its
    /// messages waiting in `celeriac.delayed`.
    async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        celeriac_core::validate_queue_name(queue)?;
        let mut conn = self.conn().await?;
        let lists: Vec<String> = PRIORITY_STEPS
            .iter()
            .map(|s| self.list_key(queue, *s))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for l in &lists {
            pipe.llen(l);
        }
        pipe.del(&lists).ignore();
        let lens: Vec<usize> = pipe.query_async(&mut conn).await.map_err(conn_err)?;
        let mut mine: Vec<String> = Vec::new();
        super::delayed::each_delayed(&mut conn, &self.key("celeriac.delayed"), |d| {
            if lists.iter().any(|l| l == d.list) {
                mine.push(d.member.to_string());
            }
            ControlFlow::Continue(())
        })
        .await?;
        let mut removed = 0;
        for members in mine.chunks(1000) {
            removed += conn
                .zrem::<_, _, usize>(self.key("celeriac.delayed"), members)
                .await
                .map_err(conn_err)?;
        }
        Ok(lens.iter().sum::<usize>() + removed)
    }
}

/// A pub/sub connection subscribed to `channel`.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(channel).await?;
    Ok(ps)
}
