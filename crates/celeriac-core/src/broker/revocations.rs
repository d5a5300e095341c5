//! [`Revocations`]: revoked task ids, shared by every worker on a broker
//! (Celery's `revoke`, with and without `terminate`), each remembered for
//! a time to live (by default [`REVOKE_TTL`](super::REVOKE_TTL)).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::BrokerError;

/// The revocation capability of a broker. Every method is required: a
/// broker that cannot remember revokes must not pretend to.
#[async_trait]
pub trait Revocations: Send + Sync + fmt::Debug {
    /// Revokes task ids for `ttl`: every worker, including one started
    /// later, records them as REVOKED instead of running them.
    async fn revoke(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError>;

    /// Revokes task ids like [`revoke`](Self::revoke), and also asks the
    /// workers running them to terminate them (Celery's
    /// `revoke(terminate=True)`): a process-pool worker kills the child, an
    /// async one cancels the future, and a thread-pool one cancels the
    /// task's context (a thread cannot be killed).
    async fn revoke_terminate(&self, task_ids: &[String], ttl: Duration)
    -> Result<(), BrokerError>;

    /// [`revoke_terminate`](Self::revoke_terminate), naming the signal for
    /// workers that terminate a task by signalling its process: Python
    /// Celery's prefork pool (`revoke(terminate=True, signal=...)`). The
    /// signal is an upper-case name, such as `"SIGKILL"`.
    ///
    /// celeriac workers terminate their own way whatever the signal, so
    /// this default, for brokers that only celeriac workers consume, is
    /// `revoke_terminate`. A broker shared with Python workers (Redis)
    /// passes the signal on to them.
    async fn revoke_terminate_with_signal(
        &self,
        task_ids: &[String],
        ttl: Duration,
        signal: &str,
    ) -> Result<(), BrokerError> {
        let _ = signal;
        self.revoke_terminate(task_ids, ttl).await
    }

    /// Records revokes this worker heard of from other workers (Celery's
    /// mingle, at startup): honoured like [`revoke`](Self::revoke), but
    /// nobody is told again (they were revoked elsewhere already), and an
    /// id revoked here already keeps its own time to live.
    ///
    /// This default revokes them; a broker whose `revoke` also tells
    /// others (Redis broadcasts it to Python workers) records them only.
    async fn merge_revoked(&self, task_ids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.revoke(task_ids, ttl).await
    }

    /// Which of `task_ids` were revoked with terminate (and have not
    /// expired). Workers ask for the tasks they are running.
    async fn terminations(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError>;

    /// Which of `task_ids` are revoked now (and have not expired). Workers
    /// ask for the messages they hold but have not started, since a revoke
    /// can arrive after the claim that checked it.
    async fn revoked(&self, task_ids: &[String]) -> Result<Vec<String>, BrokerError>;
}
