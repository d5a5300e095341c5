//! [`RateLimits`]: rate-limit buckets shared by everyone using a broker,
//! so a task's rate limit holds across workers and not only per process.

use std::fmt;

use async_trait::async_trait;

use crate::error::BrokerError;

/// The shared rate-limit capability of a broker.
#[async_trait]
pub trait RateLimits: Send + Sync + fmt::Debug {
    /// Takes a start from the rate-limit bucket `key` (one task per
    /// `interval` seconds, shared by everyone using this broker). Returns
    /// 0 if the task may start now, or how many seconds to wait.
    async fn rate_wait(&self, key: &str, interval: f64) -> Result<f64, BrokerError>;
}
