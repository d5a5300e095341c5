//! What the broker and the backend share: the managed connection and how
//! Redis errors are classified.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A multiplexed connection that reconnects in the background when it
/// drops; a command that finds it down fails fast and later ones succeed.
pub(crate) async fn manager(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    // One plain attempt first: a refused connection or a wrong password is
    // reported at once, with its cause, instead of after the manager's
    // retries (on a loaded machine those outlast a caller's deadline, and
    // the cause is lost). The retries below still cover reconnects.
    let probe = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    drop(
        client
            .get_multiplexed_async_connection_with_config(&probe)
            .await?,
    );
    // Four attempts, 0.1 + 0.2 + 0.4 + 0.4 s apart: a server that is down
    // is reported within about a second (the client's default, six with
    // doubling pauses, took 6 s), and a reconnect after a restart is
    // retried at least every 0.4 s while callers keep trying.
    let cfg = ConnectionManagerConfig::new()
        .set_number_of_retries(4)
        .set_max_delay(Duration::from_millis(400))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    ConnectionManager::new_with_config(client.clone(), cfg).await
}

/// A connection attempt that got an answer Redis never gives (a web server
/// or another service on the port): the error says so, with the URL,
/// instead of surfacing the parser's complaint about the first byte.
pub(crate) fn not_redis(e: &redis::RedisError, redacted_url: &str) -> Option<String> {
    matches!(e.kind(), redis::ErrorKind::Parse).then(|| {
        format!(
            "the server at {redacted_url} does not speak the Redis protocol \
             (is another service on that port?)"
        )
    })
}

/// Whether an error means the server could not be reached (as opposed to
/// a command error).
pub(crate) fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// The most messages or results one script handles (Lua's `unpack` has a
/// stack limit of a few thousand values).
pub(crate) const MAX_BATCH: usize = 1000;

/// How long one blocking wait lasts before it is re-issued. Messages on the
/// lists the wait does not watch (other queues, priority sub-lists) are
/// picked up by the claim that follows each wait, so this also bounds their
/// latency on an idle worker.
pub(crate) const BLOCK_FOR: Duration = Duration::from_millis(250);

/// A connection of its own for blocking waits (they must never share the
/// multiplexed connection that carries every other command). Its response
/// timeout is the watchdog: a wait that stays silent past it fails, the
/// connection is dropped and the wait is re-issued on a fresh one.
pub(crate) async fn blocking(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(BLOCK_FOR + Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}
