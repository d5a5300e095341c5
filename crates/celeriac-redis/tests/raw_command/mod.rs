//! A raw Redis command for tests that inspect or break the server's keys
//! directly, shared by `broker_faults.rs` and `broker_wake.rs`.

/// A raw command on the server at `url`.
pub(crate) async fn raw<T: redis::FromRedisValue>(url: &str, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut c).await.unwrap()
}
