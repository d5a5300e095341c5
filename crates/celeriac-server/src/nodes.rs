//! Resizing any node of the cluster from the server: pp's `set_ncpus`,
//! for remote nodes too, through Celery's remote control.

use std::time::Duration;

use celeriac_core::ControlRequest;
use serde_json::{Map, Value};

use crate::server::{Server, ServerError};

/// How long a node has to answer a control request.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

impl Server {
    /// Sets the worker count of one node: `local` (this server's own
    /// worker, as [`Server::set_workers`]) or a node named in
    /// [`Server::active_nodes`], such as a `celeriac worker` on the same
    /// broker. The node's share of the jobs follows, since nodes take jobs
    /// as their slots free up. A remote node is asked for its current
    /// size, then sent Celery's `pool_grow` or `pool_shrink` for the
    /// difference; it resizes without losing a job.
    ///
    /// Fails with [`ServerError::Node`] when the node does not answer
    /// within 2 s, or refuses (a node with autoscale, or `n == 0`).
    ///
    /// ```
    /// use celeriac_server::Server;
    /// let server = Server::builder().workers(2).build().unwrap();
    /// server.set_node_workers("local", 3).unwrap();
    /// assert_eq!(server.active_nodes()["local"], 3);
    /// assert!(server.set_node_workers("nobody@nowhere", 1).is_err());
    /// ```
    pub fn set_node_workers(&self, node: &str, n: usize) -> Result<(), ServerError> {
        let failed = |reason: String| ServerError::Node {
            node: node.to_string(),
            reason,
        };
        if node == "local" {
            return self.set_workers(n);
        }
        if n == 0 {
            return Err(failed("a node keeps at least one worker".into()));
        }
        let stats = self.ask(node, ControlRequest::new("stats"))?;
        let now = stats
            .pointer("/pool/max-concurrency")
            .and_then(Value::as_u64)
            .and_then(|c| usize::try_from(c).ok())
            .ok_or_else(|| failed(format!("no pool size in its stats: {stats}")))?;
        let request = match n.cmp(&now) {
            std::cmp::Ordering::Equal => return Ok(()),
            std::cmp::Ordering::Greater => ControlRequest::new("pool_grow").arg("n", n - now),
            std::cmp::Ordering::Less => ControlRequest::new("pool_shrink").arg("n", now - n),
        };
        let reply = self.ask(node, request)?;
        match reply.get("error") {
            Some(e) => Err(failed(e.as_str().unwrap_or_default().to_string())),
            None => Ok(()),
        }
    }

    /// Sends `request` to `node` alone and returns its reply.
    fn ask(&self, node: &str, request: ControlRequest) -> Result<Value, ServerError> {
        let broker = self.handle.shared.broker.clone();
        let request = request.to_nodes([node]);
        let replies: Vec<Map<String, Value>> = self
            .handle
            .block(async move { broker.call(request, ANSWER_WITHIN, Some(1)).await })?;
        replies
            .into_iter()
            .flatten()
            .find_map(|(name, reply)| (name == node).then_some(reply))
            .ok_or_else(|| ServerError::Node {
                node: node.to_string(),
                reason: format!("no answer within {ANSWER_WITHIN:?}"),
            })
    }
}
