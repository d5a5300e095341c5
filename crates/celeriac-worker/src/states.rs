//! States a task stores before its outcome: STARTED when it starts (Celery's
//! `track_started`, per task or for the whole worker), and the custom
//! states a task sets itself ([`TaskContext::update_state`], e.g.
//! `PROGRESS`; see `celeriac_core::progress`).
//!
//! Each is one result document, with the same facts as the final one
//! (name, worker, queue, and with `result_extended` the arguments), no
//! `date_done` (the state is not ready), and `result` holding the state's
//! document: `{"pid": ..., "hostname": ...}` for STARTED, as Celery, and
//! the task's `meta` for its own states. The final result overwrites it.
//!
//! [`TaskContext::update_state`]: celeriac_core::TaskContext::update_state

use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use celeriac_core::escape::Escaped;
use celeriac_core::{Message, ResultBackend, ResultMeta, State, StateError, TaskStates};
use serde_json::{Value, json};

use crate::meta::result_meta;
use crate::worker::Inner;

/// One task's states: the document they share, and where it goes.
#[derive(Debug)]
pub(crate) struct TaskStateSink {
    backend: Arc<dyn ResultBackend>,
    runtime: tokio::runtime::Handle,
    /// The task's document without state or result.
    template: ResultMeta,
}

impl TaskStateSink {
    /// The states of `msg`, consumed from `queue`, about to run on
    /// `inner`'s worker; must be called on the worker's runtime.
    pub(crate) fn new(inner: &Inner, msg: &Message, queue: &str) -> Arc<Self> {
        let blank = ResultMeta::new(msg.id(), State::Pending, Value::Null);
        Arc::new(TaskStateSink {
            backend: inner.backend.clone(),
            runtime: tokio::runtime::Handle::current(),
            template: result_meta(inner.config.meta_facts(), msg, queue, blank, None),
        })
    }

    /// The states of a job on the local lane, whose document is
    /// `template` (state and result are replaced).
    pub(crate) fn from_template(
        inner: &Inner,
        runtime: tokio::runtime::Handle,
        template: ResultMeta,
    ) -> Arc<Self> {
        Arc::new(TaskStateSink {
            backend: inner.backend.clone(),
            runtime,
            template,
        })
    }

    fn document(&self, state: &State, meta: Value) -> ResultMeta {
        let mut doc = self.template.clone();
        doc.status = state.clone();
        doc.result = meta;
        doc
    }

    /// Stores STARTED, with the worker's pid and node name as Celery's; a
    /// backend that fails is logged, and the task runs all the same.
    pub(crate) async fn started(&self, nodename: &str) {
        let doc = self.document(
            &State::Started,
            json!({"pid": std::process::id(), "hostname": nodename}),
        );
        if let Err(e) = self.backend.store(&doc).await {
            tracing::warn!(task_id = %Escaped(&doc.task_id), error = %e, "could not store STARTED");
        }
    }
}

#[async_trait]
impl TaskStates for TaskStateSink {
    fn store(&self, state: &State, meta: Value) -> Result<(), StateError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StateError::WouldBlock);
        }
        let doc = self.document(state, meta);
        let backend = self.backend.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(backend.store(&doc).await);
        });
        match rx.recv() {
            Ok(r) => r.map_err(|e| StateError::Backend(e.to_string())),
            Err(_) => Err(StateError::Backend("the worker is shutting down".into())),
        }
    }

    async fn store_async(&self, state: &State, meta: Value) -> Result<(), StateError> {
        let doc = self.document(state, meta);
        self.backend
            .store(&doc)
            .await
            .map_err(|e| StateError::Backend(e.to_string()))
    }
}
