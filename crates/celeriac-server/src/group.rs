//! [`GroupResult`]: the results of a group's members, as Celery's
//! `GroupResult`, and [`ResultRef`], a task's or a group's result found by
//! following parents and children.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use celeriac_core::canvas::ResultNode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::canvas::ServerLink;
use crate::job::{Job, JobError};

/// The results of a group: one [`Job`] per member, in order.
///
/// Celery's `GroupResult`: [`wait`](Self::wait) is `get()`,
/// [`save`](Self::save) is `save()` (readable by Python's
/// `GroupResult.restore`), and `Server::restore_group` restores one saved
/// by either side.
pub struct GroupResult<T> {
    pub(crate) id: String,
    pub(crate) jobs: Vec<Job<T>>,
    pub(crate) tree: ResultNode,
    pub(crate) link: Option<ServerLink>,
    /// Why the group was not sent, if it was not.
    pub(crate) error: Option<JobError>,
    pub(crate) _out: PhantomData<fn() -> T>,
}

impl<T> Clone for GroupResult<T> {
    fn clone(&self) -> Self {
        GroupResult {
            id: self.id.clone(),
            jobs: self.jobs.clone(),
            tree: self.tree.clone(),
            link: self.link.clone(),
            error: self.error.clone(),
            _out: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for GroupResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupResult")
            .field("id", &self.id)
            .field("len", &self.jobs.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> GroupResult<T> {
    /// The group id (the `group` header of every member's message, the
    /// `group_id` of every member's stored result).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' jobs, in order.
    pub fn jobs(&self) -> &[Job<T>] {
        &self.jobs
    }

    /// How many members it has.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The result tree Celery writes for it (`as_tuple()`).
    pub fn tree(&self) -> &ResultNode {
        &self.tree
    }

    /// The result this group follows (in a chain, the step before it).
    pub fn parent(&self) -> Option<crate::ResultRef> {
        let link = self.link.as_ref()?;
        self.tree.parent().map(|p| link.related(p))
    }

    /// The same group, its results decoded as `U`.
    pub fn cast<U>(self) -> GroupResult<U> {
        GroupResult {
            id: self.id,
            jobs: self.jobs.into_iter().map(Job::cast).collect(),
            tree: self.tree,
            link: self.link,
            error: self.error,
            _out: PhantomData,
        }
    }

    /// Stores the group's result tree under `celery-taskset-meta-<id>`, as
    /// Celery's `GroupResult.save()`, so that any client, Python
    /// included, can restore it by id.
    pub fn save(&self) -> Result<(), JobError> {
        let link = self.link.as_ref().ok_or(JobError::Destroyed)?;
        link.save_group(&self.id, self.tree.group_meta())
    }
}

impl<T: DeserializeOwned> GroupResult<T> {
    /// Blocks until every member has finished and returns their values in
    /// order; the first failure, in order, is returned as soon as it is
    /// known (Celery's `get()`).
    pub fn wait(&self) -> Result<Vec<T>, JobError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        self.jobs.iter().map(Job::wait).collect()
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` in all with
    /// [`JobError::Timeout`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Vec<T>, JobError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let deadline = Instant::now() + timeout;
        self.jobs
            .iter()
            .map(|j| j.wait_timeout(deadline.saturating_duration_since(Instant::now())))
            .collect()
    }

    /// Each member's outcome, in order, waiting for each in turn.
    pub fn iter(&self) -> impl Iterator<Item = Result<T, JobError>> + '_ {
        let error = self.error.clone();
        error
            .into_iter()
            .map(Err)
            .chain(self.jobs.iter().map(Job::wait))
    }

    /// Whether every member has finished.
    pub fn ready(&self) -> bool {
        self.error.is_some() || self.jobs.iter().all(Job::ready)
    }

    /// How many members have finished successfully (Celery's
    /// `completed_count()`).
    pub fn completed_count(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| matches!(j.try_result(), Some(Ok(_))))
            .count()
    }
}

/// A result found by following a job's parent or children: one task's
/// (a [`Job`]) or a group's ([`GroupResult`]), decoded as JSON; `cast`
/// either to its type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ResultRef {
    /// One task's result.
    Job(Job<Value>),
    /// A group's results.
    Group(GroupResult<Value>),
}

impl ResultRef {
    /// The task or group id.
    pub fn id(&self) -> &str {
        match self {
            ResultRef::Job(j) => &j.state.id,
            ResultRef::Group(g) => g.id(),
        }
    }

    /// The task's job, unless it is a group.
    pub fn job(self) -> Option<Job<Value>> {
        match self {
            ResultRef::Job(j) => Some(j),
            ResultRef::Group(_) => None,
        }
    }

    /// The group, unless it is a task.
    pub fn group(self) -> Option<GroupResult<Value>> {
        match self {
            ResultRef::Group(g) => Some(g),
            ResultRef::Job(_) => None,
        }
    }
}
