//! Failing fast: before a worker says "ready" or a client sends, the
//! broker and the result backend must answer, within [`STARTUP_DEADLINE`].
//! A broker that is down is an error that names the URL (its password
//! masked) and the cause, not a hang.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use celeriac::{Broker, ResultBackend};

/// How long the broker and the backend get to answer at startup.
pub(crate) const STARTUP_DEADLINE: Duration = Duration::from_secs(2);

/// The URL with any password masked, for messages.
pub(crate) fn masked(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// One round trip to each of the broker and the backend, each within
/// `deadline`; the error names which one, its URL and the cause.
pub(crate) async fn reachable(
    broker: &Arc<dyn Broker>,
    backend: &Arc<dyn ResultBackend>,
    broker_url: &str,
    backend_url: &str,
    queue: &str,
    deadline: Duration,
) -> Result<()> {
    let within = |what: &str, url: &str| {
        anyhow!(
            "cannot reach the {what} at {}: no answer within {:.1} s",
            masked(url),
            deadline.as_secs_f64()
        )
    };
    match tokio::time::timeout(deadline, broker.queue_len(queue)).await {
        Err(_) => return Err(within("broker", broker_url)),
        Ok(Err(e)) => {
            return Err(
                anyhow!(e).context(format!("cannot reach the broker at {}", masked(broker_url)))
            );
        }
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout(deadline, backend.get("celeriac-startup-probe")).await {
        Err(_) => Err(within("result backend", backend_url)),
        Ok(Err(e)) => Err(anyhow!(e).context(format!(
            "cannot reach the result backend at {}",
            masked(backend_url)
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// [`reachable`], again and again with a growing pause (up to 10 s) and a
/// warning each time, until it holds: Celery's
/// `broker_connection_retry_on_startup`.
pub(crate) async fn wait_until_reachable(
    broker: &Arc<dyn Broker>,
    backend: &Arc<dyn ResultBackend>,
    broker_url: &str,
    backend_url: &str,
    queue: &str,
) {
    let mut pause = Duration::from_millis(500);
    loop {
        match reachable(
            broker,
            backend,
            broker_url,
            backend_url,
            queue,
            STARTUP_DEADLINE,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    "{}; trying again in {:.1} s",
                    celeriac::escape::EscapedLines(super::causes(&e)),
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(masked("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(masked("redis://u:p@ss@h/0"), "redis://u:***@h/0");
        assert_eq!(masked("sqlite:///x.db"), "sqlite:///x.db");
    }
}
