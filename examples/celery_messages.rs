//! Celery's wire format: decode a message exactly as Python's
//! `send_task('tasks.add', args=(2, 3), kwargs={'z': 1})` put it on Redis,
//! and build one a Python worker accepts.
//! Run: `cargo run -p celeriac-examples --example celery_messages`.

use celeriac::{Call, Message, ResultMeta, TaskError};

const FROM_PYTHON: &str = r#"{"body": "W1syLCAzXSwgeyJ6IjogMX0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2", "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{'z': 1}", "origin": "gen4742@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2", "reply_to": "e4fc42c4-bff2-394b-9042-1f0dc6ef3a2d", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "550fcf21-a66c-4d60-92aa-c6522a71176d"}}"#;

fn main() -> anyhow::Result<()> {
    let msg = Message::decode(FROM_PYTHON.as_bytes())?;
    println!(
        "task {} id {} args {} kwargs {}",
        msg.task(),
        msg.id(),
        serde_json::json!(msg.args),
        serde_json::json!(msg.kwargs)
    );

    let ours = Call::<i64>::new("tasks.mul")
        .arg(6)
        .arg(7)
        .queue("math")
        .to_message()?;
    println!("{}", String::from_utf8(ours.encode()?)?);

    // Results are stored the way Python's AsyncResult reads them.
    let ok = ResultMeta::success(ours.id(), 42.into());
    let failed = ResultMeta::failure(
        ours.id(),
        &TaskError::typed("ValueError", "builtins", "boom"),
    );
    println!("{}", serde_json::to_string(&ok)?);
    println!("{}", serde_json::to_string(&failed)?);
    Ok(())
}
