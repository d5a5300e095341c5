//! Decide: from how a run ended and the task's options to what becomes of
//! the message ([`Disposition`]) and what is reported ([`Decision`]).
//!
//! Everything here is pure: no IO, no clock, no logging. The caller passes
//! the random number for retry jitter and the current time, so every rule
//! can be tested on its own.

use std::time::Duration;

use celeriac_core::{
    Message, Ran, ResultMeta, RetryDecision, State, TaskError, TaskErrorKind, TaskOptions,
};
use serde_json::Value;

use crate::canvas::{self, Continuation};
use crate::meta::encoded_size;
pub(crate) use crate::meta::{MetaFacts, result_meta};

/// What becomes of a message; [`settle`](crate::settle) carries it out, and
/// is the only module that does.
///
#[derive(Debug)]
pub(crate) enum Disposition {
    /// The task is finished: store `result` (none with `ignore_result`, or
    /// when a stored one is reused as is), then acknowledge the message.
    Done {
        /// The result to store.
        result: Option<ResultMeta>,
    },
    /// `Done`, with what the task sends on for its canvas (the next chain
    /// step and callbacks published before the result is stored, the
    /// FAILURE of the remaining chain steps stored beside it, errbacks
    /// published after it).
    Continue {
        /// The result to store.
        result: Option<ResultMeta>,
        /// What to send on.
        canvas: Box<Continuation>,
    },
    /// Put the message back on its queue, claimable at once or from unix
    /// time `not_before`.
    Requeue {
        /// When it may be claimed again.
        not_before: Option<f64>,
        /// Why, for the log line if the requeue fails.
        why: &'static str,
    },
    /// Store `result` if any, then move the message to the dead-letter
    /// store with `reason`.
    DeadLetter {
        /// Why it is set aside.
        reason: String,
        /// A result to store first (an unknown task's FAILURE).
        result: Option<ResultMeta>,
    },
    /// Celery's retry: store RETRY, publish `next` (the same task id, one
    /// more retry, an eta `countdown` seconds away), then acknowledge.
    Retry {
        /// The RETRY result (none when the task ignores its result).
        result: Option<ResultMeta>,
        /// The next attempt.
        next: Box<Message>,
        /// Seconds until it is due.
        countdown: f64,
        /// The error that asked for it.
        error: TaskError,
    },
}

/// What a finished run means, with the disposition of its message.
#[derive(Debug)]
pub(crate) enum Decision {
    /// It returned a value.
    Succeeded {
        /// SUCCESS, with the value.
        result: ResultMeta,
        /// How long it ran.
        runtime: Duration,
        /// The next chain step and the callbacks.
        canvas: Continuation,
    },
    /// It failed for good.
    Failed {
        /// FAILURE, with the error.
        result: ResultMeta,
        /// The error stored.
        error: TaskError,
        /// Whether it had asked for a retry past `max_retries`.
        gave_up: bool,
        /// How long it ran.
        runtime: Duration,
        /// The remaining chain steps' FAILURE and the errbacks.
        canvas: Continuation,
    },
    /// It asked for a retry, or failed with an error retried
    /// automatically; see [`Disposition::Retry`].
    Retry(Disposition),
    /// It did not finish, and its message goes back to the broker: the
    /// executor was shut down, or its process was lost and the task asked
    /// for `reject_on_worker_lost`.
    GiveBack {
        /// The process was lost (`reject_on_worker_lost`); `None` when the
        /// executor was shut down.
        lost: Option<TaskError>,
    },
}

/// What [`after_run`] needs to know besides the run itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunFacts<'a> {
    /// The message that ran.
    pub(crate) msg: &'a Message,
    /// The queue it came from.
    pub(crate) queue: &'a str,
    /// The task's options.
    pub(crate) options: &'a TaskOptions,
    /// Whether the message was acknowledged as the task started
    /// (`acks_late = false`).
    pub(crate) acked_early: bool,
    /// The worker's node name and whether results carry args and kwargs.
    pub(crate) meta: MetaFacts<'a>,
    /// The largest result stored, in bytes of JSON (`max_result`).
    pub(crate) max_result: Option<usize>,
    /// The tasks this worker runs, for the errback rule.
    pub(crate) known: &'a dyn canvas::Known,
}

/// Decides what a run means. `random` is in `[0, 1)` for retry jitter and
/// `now` is the unix time, for a retry's eta.
pub(crate) fn after_run(f: RunFacts<'_>, ran: Option<Ran>, random: f64, now: f64) -> Decision {
    let decision = decide_run(f, ran, random, now);
    match f.max_result {
        Some(limit) => cap_result(f, decision, limit),
        None => decision,
    }
}

fn decide_run(f: RunFacts<'_>, ran: Option<Ran>, random: f64, now: f64) -> Decision {
    let Some(ran) = ran else {
        return Decision::GiveBack { lost: None };
    };
    let (out, runtime) = (ran.result, ran.runtime);
    let msg = f.msg;
    let id = msg.id();
    match out {
        Err(e)
            if e.kind() == TaskErrorKind::WorkerLost
                && !f.acked_early
                && f.options.rejects_on_worker_lost() =>
        {
            // Celery's reject_on_worker_lost: run it again rather than fail
            // it (a message that keeps killing its worker ends as a poison
            // message after max_deliveries).
            Decision::GiveBack { lost: Some(e) }
        }
        Ok(v) => {
            let mut result = result_meta(
                f.meta,
                msg,
                f.queue,
                ResultMeta::success(id, v),
                Some(runtime),
            );
            let canvas = canvas::on_success(msg, &mut result);
            Decision::Succeeded {
                result,
                runtime,
                canvas,
            }
        }
        Err(e) => match f.options.decide(&e, msg.headers.retries, random) {
            RetryDecision::Retry { countdown } => {
                Decision::Retry(retry(f, e, countdown, runtime, now))
            }
            RetryDecision::GiveUp if e.kind() == TaskErrorKind::Retry => {
                let err = TaskError::typed(
                    "MaxRetriesExceededError",
                    "celery.exceptions",
                    format!(
                        "Can't retry {}[{id}] args:{:?} kwargs:{:?}",
                        msg.task(),
                        msg.args,
                        msg.kwargs
                    ),
                );
                failed(f, err, true, runtime)
            }
            _ => failed(f, e, false, runtime),
        },
    }
}

/// A result whose encoding is larger than `limit` bytes is not stored: a
/// FAILURE `ResultTooLarge` naming its size and the limit takes its place
/// (a RETRY keeps its state, with that error as its exception).
fn cap_result(f: RunFacts<'_>, decision: Decision, limit: usize) -> Decision {
    let what = |size: usize, whose: &str| {
        TaskError::typed(
            "ResultTooLarge",
            "celeriac",
            format!(
                "the {whose} of {}[{}] is {size} bytes of JSON, over the worker's limit of {limit} bytes (max_result); it was not stored",
                f.msg.task(),
                f.msg.id()
            ),
        )
    };
    match decision {
        // Over the limit, a success is a failure: its canvas is the
        // failure's (errbacks, the rest of the chain failed), and the
        // value goes nowhere.
        Decision::Succeeded {
            result,
            runtime,
            canvas,
        } => match encoded_size(&result) {
            size if size > limit => failed(f, what(size, "result"), false, runtime),
            _ => Decision::Succeeded {
                result,
                runtime,
                canvas,
            },
        },
        Decision::Failed {
            result,
            error,
            gave_up,
            runtime,
            canvas,
        } => match encoded_size(&result) {
            size if size > limit => failed(
                f,
                what(size, &format!("failure ({})", error.exc_type())),
                gave_up,
                runtime,
            ),
            _ => Decision::Failed {
                result,
                error,
                gave_up,
                runtime,
                canvas,
            },
        },
        Decision::Retry(Disposition::Retry {
            mut result,
            next,
            countdown,
            error,
        }) => {
            if let Some(result) = &mut result {
                let size = encoded_size(result);
                if size > limit {
                    let err = what(size, "retry request");
                    result.result =
                        serde_json::to_value(err.to_exception_info()).unwrap_or(Value::Null);
                    result.traceback = None;
                }
            }
            Decision::Retry(Disposition::Retry {
                result,
                next,
                countdown,
                error,
            })
        }
        other => other,
    }
}

impl Decision {
    /// The disposition of the message; `ignore_result` drops a final
    /// result instead of storing it.
    pub(crate) fn into_disposition(self, ignore_result: bool) -> Disposition {
        let keep = |result: ResultMeta| (!ignore_result).then_some(result);
        match self {
            Decision::Succeeded { result, canvas, .. }
            | Decision::Failed { result, canvas, .. } => {
                if canvas.sends_nothing() {
                    Disposition::Done {
                        result: keep(result),
                    }
                } else {
                    Disposition::Continue {
                        result: keep(result),
                        canvas: Box::new(canvas),
                    }
                }
            }
            // As Celery 5.7's `handle_retry`: no RETRY stored for a task
            // that ignores its result (`celery.chord_unlock` among them).
            Decision::Retry(Disposition::Retry {
                result,
                next,
                countdown,
                error,
            }) => Disposition::Retry {
                result: result.and_then(keep),
                next,
                countdown,
                error,
            },
            Decision::Retry(d) => d,
            Decision::GiveBack { lost } => Disposition::Requeue {
                not_before: None,
                why: if lost.is_some() {
                    "reject_on_worker_lost"
                } else {
                    "the pool is shutting down"
                },
            },
        }
    }
}

fn failure(f: RunFacts<'_>, err: &TaskError, runtime: Duration) -> ResultMeta {
    let meta = ResultMeta::failure(f.msg.id(), err);
    result_meta(f.meta, f.msg, f.queue, meta, Some(runtime))
}

/// A failure for good, with what its canvas says to do about it.
fn failed(f: RunFacts<'_>, error: TaskError, gave_up: bool, runtime: Duration) -> Decision {
    let result = failure(f, &error, runtime);
    let canvas = canvas::on_failure(f.msg, &result, f.known);
    Decision::Failed {
        result,
        error,
        gave_up,
        runtime,
        canvas,
    }
}

/// Celery's retry: RETRY with the error, and the same task id published
/// again with `retries + 1`, an eta `countdown` seconds away and
/// `parent_id` set to itself.
fn retry(
    f: RunFacts<'_>,
    err: TaskError,
    countdown: f64,
    runtime: Duration,
    now: f64,
) -> Disposition {
    let msg = f.msg;
    let id = msg.id().to_string();
    let mut meta = ResultMeta::new(
        &id,
        State::Retry,
        serde_json::to_value(err.to_exception_info()).unwrap_or(Value::Null),
    );
    meta.traceback = Some(
        err.traceback()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{err}\n")),
    );
    let result = result_meta(f.meta, msg, f.queue, meta, Some(runtime));
    let mut next = msg.clone();
    next.headers.retries += 1;
    next.headers.eta = Some(celeriac_core::time::iso_from_unix(now + countdown));
    next.headers.parent_id = Some(id);
    next.properties.delivery_tag = uuid::Uuid::new_v4().to_string();
    next.set_queue(f.queue);
    Disposition::Retry {
        result: Some(result),
        next: Box::new(next),
        countdown,
        error: err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::Call;

    const FACTS: MetaFacts<'static> = MetaFacts {
        nodename: "w@test",
        extended: false,
    };

    fn msg() -> Message {
        Call::<i64>::new("t.add")
            .arg(1)
            .arg(2)
            .to_message()
            .unwrap()
    }

    fn decide(
        msg: &Message,
        opts: &TaskOptions,
        early: bool,
        out: Result<Value, TaskError>,
    ) -> Decision {
        let facts = RunFacts {
            msg,
            queue: "q",
            options: opts,
            acked_early: early,
            meta: FACTS,
            max_result: None,
            known: &canvas::NoTasks,
        };
        after_run(
            facts,
            Some(Ran::new(out, Duration::from_millis(3))),
            0.5,
            1000.0,
        )
    }

    #[test]
    fn a_value_is_a_success_with_the_run_recorded() {
        let m = msg();
        let d = decide(&m, &TaskOptions::new(), false, Ok(serde_json::json!(3)));
        let Decision::Succeeded { result, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(result.status, State::Success);
        assert_eq!(result.result, serde_json::json!(3));
        assert_eq!(result.worker.as_deref(), Some("w@test"));
        assert_eq!(result.queue.as_deref(), Some("q"));
        assert_eq!(result.name.as_deref(), Some("t.add"));
        assert!(result.args.is_none(), "args only with result_extended");
        let Disposition::Done { result } = d.into_disposition(true) else {
            panic!()
        };
        assert!(result.is_none(), "ignore_result stores nothing");
    }

    #[test]
    fn a_retry_of_a_task_that_ignores_its_result_stores_no_retry() {
        // Celery 5.7's handle_retry stores RETRY only with store_errors,
        // which ignore_result turns off (celery.chord_unlock's retries).
        let m = msg();
        let retry = || TaskError::retry(Some(Duration::from_secs(1)));
        let d = decide(&m, &TaskOptions::new(), false, Err(retry()));
        let Disposition::Retry { result, next, .. } = d.into_disposition(true) else {
            panic!("a retry")
        };
        assert!(result.is_none(), "no RETRY stored");
        assert_eq!(next.headers.retries, 1, "the retry is still sent");
        let d = decide(&m, &TaskOptions::new(), false, Err(retry()));
        let Disposition::Retry { result, .. } = d.into_disposition(false) else {
            panic!("a retry")
        };
        assert_eq!(result.map(|r| r.status), Some(State::Retry));
    }

    #[test]
    fn an_error_is_a_failure_and_a_retry_request_a_retry_until_max_retries() {
        let m = msg();
        let opts = TaskOptions::new().max_retries(Some(2));
        let d = decide(&m, &opts, false, Err(TaskError::new("boom")));
        assert!(
            matches!(d, Decision::Failed { gave_up: false, .. }),
            "{d:?}"
        );

        let retry = TaskError::retry(Some(Duration::from_secs(5)));
        let d = decide(&m, &opts, false, Err(retry.clone()));
        let Decision::Retry(Disposition::Retry {
            result,
            next,
            countdown,
            ..
        }) = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(countdown, 5.0);
        assert_eq!(result.map(|r| r.status), Some(State::Retry));
        assert_eq!(next.id(), m.id(), "a retry keeps the task id");
        assert_eq!(next.headers.retries, 1);
        assert_eq!(next.headers.parent_id.as_deref(), Some(m.id()));
        assert_eq!(next.eta_unix(), Some(1005.0));
        assert_ne!(next.properties.delivery_tag, m.properties.delivery_tag);

        let mut last = m.clone();
        last.headers.retries = 2;
        let d = decide(&last, &opts, false, Err(retry));
        let Decision::Failed {
            error,
            gave_up: true,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(error.exc_type(), "MaxRetriesExceededError");
    }

    #[test]
    fn result_extended_stores_what_celery_stores() {
        let mut m = Call::<i64>::new("t.add")
            .arg(2)
            .kwarg("y", 3)
            .to_message()
            .unwrap();
        m.headers.retries = 2;
        m.headers.stamped_headers = Some(serde_json::json!(["mystamp", "name"]));
        m.headers.stamps = Some(serde_json::json!({"mystamp": "v1", "name": "x", "other": 1}));
        let facts = MetaFacts {
            nodename: "w@test",
            extended: true,
        };
        let meta = result_meta(
            facts,
            &m,
            "q",
            ResultMeta::success(m.id(), serde_json::json!(5)),
            None,
        );
        let doc = serde_json::to_value(&meta).unwrap();
        // As a Python worker with result_extended=True stores a stamped
        // add(2, y=3).
        assert_eq!(doc["name"], "t.add");
        assert_eq!(doc["args"], serde_json::json!([2]));
        assert_eq!(doc["kwargs"], serde_json::json!({"y": 3}));
        assert_eq!(doc["worker"], "w@test");
        assert_eq!(doc["retries"], 2);
        assert_eq!(doc["queue"], "q");
        assert_eq!(
            doc["stamped_headers"],
            serde_json::json!(["mystamp", "name"])
        );
        assert_eq!(doc["mystamp"], "v1");
        assert!(doc.get("other").is_none(), "only the stamps it names");
        let text = serde_json::to_string(&meta).unwrap();
        assert_eq!(text.matches("\"name\":").count(), 1, "{text}");

        let plain = result_meta(
            FACTS,
            &m,
            "q",
            ResultMeta::success(m.id(), serde_json::json!(5)),
            None,
        );
        assert!(plain.args.is_none() && plain.extra.is_empty(), "{plain:?}");
    }

    #[test]
    fn a_lost_process_is_given_back_only_when_the_task_asks_and_was_not_acked_early() {
        let m = msg();
        let lost = || Err(TaskError::worker_lost("child died"));
        let rejecting = TaskOptions::new().reject_on_worker_lost(true);
        assert!(matches!(
            decide(&m, &rejecting, false, lost()),
            Decision::GiveBack { lost: Some(_) }
        ));
        assert!(matches!(
            decide(&m, &rejecting, true, lost()),
            Decision::Failed { .. }
        ));
        assert!(matches!(
            decide(&m, &TaskOptions::new(), false, lost()),
            Decision::Failed { .. }
        ));
    }

    #[test]
    fn no_run_gives_the_message_back() {
        let m = msg();
        let opts = TaskOptions::new();
        let facts = RunFacts {
            msg: &m,
            queue: "q",
            options: &opts,
            acked_early: false,
            meta: FACTS,
            max_result: None,
            known: &canvas::NoTasks,
        };
        let d = after_run(facts, None, 0.0, 0.0);
        assert!(matches!(
            d.into_disposition(false),
            Disposition::Requeue {
                not_before: None,
                ..
            }
        ));
    }

    fn decide_capped(
        msg: &Message,
        opts: &TaskOptions,
        limit: usize,
        out: Result<Value, TaskError>,
    ) -> Decision {
        let facts = RunFacts {
            msg,
            queue: "q",
            options: opts,
            acked_early: false,
            meta: FACTS,
            max_result: Some(limit),
            known: &canvas::NoTasks,
        };
        after_run(
            facts,
            Some(Ran::new(out, Duration::from_millis(3))),
            0.5,
            1000.0,
        )
    }

    #[test]
    fn a_result_over_max_result_is_a_result_too_large_failure_naming_both_sizes() {
        let m = msg();
        let opts = TaskOptions::new();
        let big = serde_json::json!("x".repeat(100)); // 102 bytes of JSON
        let d = decide_capped(&m, &opts, 101, Ok(big.clone()));
        let Decision::Failed { result, error, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(error.exc_type(), "ResultTooLarge");
        assert!(error.message().contains("102 bytes"), "{}", error.message());
        assert!(
            error.message().contains("limit of 101 bytes"),
            "{}",
            error.message()
        );
        assert_eq!(result.status, State::Failure);
        assert_eq!(
            result.result["exc_type"],
            serde_json::json!("ResultTooLarge")
        );
        let stored = serde_json::to_string(&result.result).unwrap();
        assert!(
            !stored.contains(&"x".repeat(100)),
            "the value is not stored"
        );

        // At the limit it is stored as it is.
        let d = decide_capped(&m, &opts, 102, Ok(big.clone()));
        let Decision::Succeeded { result, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(result.result, big);
    }

    #[test]
    fn a_huge_failure_or_retry_is_capped_too() {
        let m = msg();
        let opts = TaskOptions::new().max_retries(Some(3));
        let d = decide_capped(&m, &opts, 1000, Err(TaskError::new("e".repeat(5000))));
        let Decision::Failed { result, error, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(error.exc_type(), "ResultTooLarge");
        assert!(
            error.message().contains("failure (TaskError)"),
            "{}",
            error.message()
        );
        assert!(serde_json::to_string(&result.result).unwrap().len() < 1000);

        let retry = TaskError::retry(None).with_traceback("t".repeat(5000));
        let d = decide_capped(&m, &opts, 1000, Err(retry));
        let Decision::Retry(Disposition::Retry {
            result: Some(result),
            next,
            ..
        }) = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(result.status, State::Retry, "a retry still retries");
        assert_eq!(
            result.result["exc_type"],
            serde_json::json!("ResultTooLarge")
        );
        assert!(result.traceback.is_none());
        assert_eq!(next.headers.retries, 1);
    }
}
