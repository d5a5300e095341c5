//! [`Nodes`]: the node registry, where workers announce themselves with
//! heartbeats so that clients and the CLI can list the live ones.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::NodeInfo;
use crate::error::BrokerError;

/// The node-registry capability of a broker.
#[async_trait]
pub trait Nodes: Send + Sync + fmt::Debug {
    /// Records a worker heartbeat.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError>;

    /// Removes a worker's record (clean shutdown).
    async fn node_gone(&self, name: &str) -> Result<(), BrokerError>;

    /// Worker nodes whose last heartbeat is younger than `max_age`.
    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeInfo>, BrokerError>;
}
