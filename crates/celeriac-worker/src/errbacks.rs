//! Errbacks called inline: the `link_error` signatures that Celery's rule
//! ([`canvas::errback`](crate::canvas::errback)) has the worker call
//! itself with `(request, exc, traceback)` rather than publish. Each runs
//! on the executor its task asks for, so a panic is a typed failure and the
//! time limits apply; its result is not stored and its failure is only
//! logged, as Celery logs `Errback ... raised an exception`.

use celeriac_core::escape::Escaped;
use celeriac_core::{Args, Message, RegisteredTask, TaskContext};

use crate::canvas::Known;
use crate::worker::Inner;

impl Known for Inner {
    fn task(&self, name: &str) -> Option<&RegisteredTask> {
        self.registry
            .get(name)
            .or_else(|| self.celery_tasks.get(name))
            .map(|t| &**t)
    }
}

/// Calls each errback of `calls` (built by the canvas, never published),
/// one after the other.
pub(crate) async fn call_inline(inner: &Inner, calls: &[Message]) {
    for m in calls {
        let (id, name) = (m.id(), m.task());
        let task = inner
            .registry
            .get(name)
            .or_else(|| inner.celery_tasks.get(name));
        let Some(task) = task else {
            tracing::error!(errback = %Escaped(name), "an errback to call inline is not registered here");
            continue;
        };
        let mut ctx = TaskContext::from_message(m, &inner.config.nodename);
        let hard = ctx.time_limit().or(inner.config.time_limit);
        let soft = ctx.soft_time_limit().or(inner.config.soft_time_limit);
        ctx.set_time_limits(hard, soft);
        let args = Args::new(m.args.clone(), m.kwargs.clone());
        match inner
            .executors
            .run(task, ctx, args, inner.slots.target())
            .await
        {
            Some(ran) => match ran.result {
                Ok(_) => {
                    tracing::debug!(errback = %Escaped(name), errback_id = %Escaped(id), "errback called inline")
                }
                Err(e) => {
                    tracing::error!(errback = %Escaped(name), errback_id = %Escaped(id), error = %Escaped(&e), "errback raised an exception")
                }
            },
            None => {
                tracing::warn!(errback = %Escaped(name), "the worker is stopping: an errback was not called")
            }
        }
    }
}
