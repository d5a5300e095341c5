//! What every stored result carries besides its state: the worker's facts
//! (node name, queue, retries, runtime, parent and group), Celery's
//! `result_extended` fields and stamps, and the size a result takes, which
//! the result limit checks.

use std::time::Duration;

use celeriac_core::{Message, ResultMeta};
use serde_json::Value;

/// What is stored with every result besides the state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaFacts<'a> {
    /// The worker's node name.
    pub(crate) nodename: &'a str,
    /// Celery's `result_extended`: store args and kwargs too.
    pub(crate) extended: bool,
}

/// Fills what Celery stores beside the state: the task name, the worker,
/// the queue, the retries, the runtime, the parent and group, and with
/// `result_extended` what Celery 5.x adds then: the args and kwargs, and
/// for a stamped message its `stamped_headers` and each of those stamps.
pub(crate) fn result_meta(
    facts: MetaFacts<'_>,
    msg: &Message,
    queue: &str,
    mut meta: ResultMeta,
    runtime: Option<Duration>,
) -> ResultMeta {
    meta.name = Some(msg.headers.task.clone());
    if facts.extended {
        meta.args = Some(Value::Array(msg.args.clone()));
        meta.kwargs = Some(Value::Object(msg.kwargs.clone()));
        add_stamps(&mut meta, msg);
    }
    meta.worker = Some(facts.nodename.to_string());
    meta.retries = Some(msg.headers.retries);
    meta.queue = Some(queue.to_string());
    meta.parent_id = msg.headers.parent_id.clone();
    meta.group_id = msg.headers.group.clone();
    meta.runtime = runtime.map(|r| r.as_secs_f64());
    meta
}

/// Celery's `result_extended` stamps: `stamped_headers` as sent, and each
/// stamp it names as a field of its own (except one named like a field
/// the document already has).
fn add_stamps(meta: &mut ResultMeta, msg: &Message) {
    let Some(Value::Object(stamps)) = &msg.headers.stamps else {
        return;
    };
    if stamps.is_empty() {
        return;
    }
    const FIELDS: [&str; 15] = [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "task_id",
        "group_id",
        "parent_id",
        "name",
        "args",
        "kwargs",
        "worker",
        "retries",
        "queue",
        "runtime",
    ];
    let named = msg.headers.stamped_headers.clone().unwrap_or(Value::Null);
    for name in named
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some(v) = stamps.get(name).filter(|_| !FIELDS.contains(&name)) {
            meta.extra.insert(name.to_string(), v.clone());
        }
    }
    meta.extra.insert("stamped_headers".to_string(), named);
}

/// The bytes a result takes as JSON: its value (or exception document)
/// and its traceback. Counted without building the JSON.
pub(crate) fn encoded_size(meta: &ResultMeta) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut count, &meta.result);
    count.0 + meta.traceback.as_ref().map_or(0, String::len)
}
