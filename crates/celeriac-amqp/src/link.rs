//! The connection to RabbitMQ, and its recovery.
//!
//! lapin's own auto-recovery is not used. A [`Link`] is one connection with
//! two channels: `publish` (in confirm mode) and `consume` (with
//! `basic.qos` prefetch, manual acks). Every link has a generation number;
//! when the connection or a channel fails, the next operation opens a new
//! link (with backoff) and the generation moves on. Deliveries of an older
//! generation are never acked on the new one: RabbitMQ requeued them when
//! the old channel closed, so they report
//! [`NotHeld`](celeriac_core::BrokerError::NotHeld), and buffered ones are
//! discarded (the broker delivers them again, with `redelivered` set).
//! Queues, exchanges and consumers are declared again on first use in each
//! generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use celeriac_core::BrokerError;
use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};

/// One connection and its two channels.
#[derive(Debug)]
pub(crate) struct Link {
    /// Generation of this link: 1 for the first, +1 per reconnect.
    pub(crate) generation: u64,
    /// The connection.
    pub(crate) conn: Connection,
    /// Publishing channel, in confirm mode.
    pub(crate) publish: Channel,
    /// Consuming channel, with prefetch.
    pub(crate) consume: Channel,
    /// The `basic.qos` prefetch set on `consume` last: consumers started
    /// since have it.
    applied: AtomicU16,
}

impl Link {
    /// Whether the connection and both channels are open.
    pub(crate) fn is_open(&self) -> bool {
        self.conn.status().connected()
            && self.publish.status().connected()
            && self.consume.status().connected()
    }

    /// Opens a link; `ca_pem` is a CA certificate (PEM) to trust besides
    /// the usual roots, for `amqps://`.
    pub(crate) async fn open(
        uri: &str,
        generation: u64,
        prefetch: u16,
        ca_pem: Option<&str>,
    ) -> Result<Link, lapin::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("celeriac {}", std::process::id()).into());
        let conn = match ca_pem {
            None => Connection::connect(uri, props).await?,
            Some(pem) => {
                let tls = lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(pem.to_string()),
                };
                let runtime = lapin::runtime::default_runtime()?;
                Connection::connect_with_config(uri, props, tls, runtime).await?
            }
        };
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = conn.create_channel().await?;
        // Per consumer (global=false): the only form RabbitMQ 4 and quorum
        // queues honour.
        consume
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        Ok(Link {
            generation,
            conn,
            publish,
            consume,
            applied: AtomicU16::new(prefetch),
        })
    }

    /// Sets the consuming channel's per-consumer prefetch to `prefetch`
    /// if it has another one: RabbitMQ applies it to consumers started
    /// from now on.
    pub(crate) async fn apply_prefetch(&self, prefetch: u16) -> Result<(), lapin::Error> {
        if self.applied.load(Ordering::Relaxed) == prefetch {
            return Ok(());
        }
        self.consume
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        self.applied.store(prefetch, Ordering::Relaxed);
        Ok(())
    }
}

/// Holds the current link and replaces it when it fails.
#[derive(Debug)]
pub(crate) struct Links {
    uri: String,
    redacted: String,
    /// The per-consumer prefetch new consumers get.
    pub(crate) prefetch: AtomicU16,
    /// Whether the URL set it (`?prefetch_count=N`): then the worker's
    /// [`set_prefetch`](celeriac_core::Transport::set_prefetch) does not.
    pub(crate) explicit: bool,
    /// A CA certificate (PEM) to trust for `amqps://` (`?ssl_ca_certs=PATH`).
    pub(crate) ca_pem: Option<String>,
    current: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// How long an operation waits for RabbitMQ to come back.
    pub(crate) patience: Duration,
}

impl Links {
    /// Links to `uri` (lapin's form of the URL), with `prefetch` given
    /// by the URL (`explicit`) or a default.
    pub(crate) fn new(uri: String, redacted: String, prefetch: u16, explicit: bool) -> Self {
        Links {
            uri,
            redacted,
            prefetch: AtomicU16::new(prefetch),
            explicit,
            ca_pem: None,
            current: tokio::sync::Mutex::new(None),
            patience: Duration::from_secs(30),
        }
    }

    /// The open link, opening a new one (with backoff, for up to
    /// `patience`) if there is none or it failed. `on_new` runs once per
    /// new link, before anyone else can use it.
    pub(crate) async fn get(&self, on_new: impl FnOnce(u64)) -> Result<Arc<Link>, BrokerError> {
        let mut cur = self.current.lock().await;
        if let Some(l) = cur.as_ref()
            && l.is_open()
        {
            return Ok(l.clone());
        }
        let generation = cur.as_ref().map_or(1, |l| l.generation + 1);
        if let Some(old) = cur.take() {
            tracing::warn!(url = %self.redacted, generation = old.generation, "AMQP connection lost; reconnecting");
            let _ = old.conn.close(320, "celeriac reconnects".into()).await;
        }
        let deadline = Instant::now() + self.patience;
        let mut wait = Duration::from_millis(50);
        loop {
            let prefetch = self.prefetch.load(Ordering::Relaxed);
            match Link::open(&self.uri, generation, prefetch, self.ca_pem.as_deref()).await {
                Ok(l) => {
                    let l = Arc::new(l);
                    on_new(generation);
                    if generation > 1 {
                        tracing::info!(url = %self.redacted, generation, "AMQP connection recovered");
                    }
                    *cur = Some(l.clone());
                    return Ok(l);
                }
                Err(e) if Instant::now() + wait < deadline => {
                    tracing::debug!(url = %self.redacted, error = %e, "AMQP connect failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(BrokerError::connection_in(
                        format!("cannot connect to {}", self.redacted),
                        e,
                    ));
                }
            }
        }
    }

    /// Closes the current link, if any.
    pub(crate) async fn close(&self) {
        if let Some(l) = self.current.lock().await.take() {
            let _ = l.conn.close(200, "celeriac closes".into()).await;
        }
    }
}
