//! The message of one run: an ordinary Celery protocol v2 task message, as
//! Python's beat sends it, with the `celery_beat_task` header.

use celeriac_core::time::{try_iso_from_unix, unix_now};
use celeriac_core::{Message, Outgoing};
use serde_json::Value;

use crate::schedule::Entry;

/// The header Python's beat puts on every message it sends.
pub const BEAT_HEADER: &str = "celery_beat_task";

/// celeriac's own header: the slot the message was sent for (ISO 8601,
/// UTC), which tells the runs of one entry apart. Python workers ignore
/// it.
pub const SLOT_HEADER: &str = "celeriac_beat_slot";

/// Why a run's message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {entry:?}: cannot build its message: {reason}")]
pub struct MessageError {
    entry: String,
    reason: String,
}

/// The message of `entry`'s run for `slot_ms`: a fresh task id, the
/// entry's arguments and options, `expires` counted from now (as Python's
/// beat does, with the AMQP `expiration` property in milliseconds), and the
/// `celery_beat_task` and `celeriac_beat_slot` headers.
pub(crate) fn run_message(entry: &Entry, slot_ms: i64) -> Result<Message, MessageError> {
    let err = |reason: String| MessageError {
        entry: entry.name().to_string(),
        reason,
    };
    let mut call = entry.call().clone();
    if let Some(ttl) = entry.expires_after() {
        call = call.expires_in(ttl);
    }
    let mut msg = call.to_message().map_err(|e| err(e.to_string()))?;
    msg.headers
        .extra
        .insert(BEAT_HEADER.to_string(), Value::Bool(true));
    let slot = try_iso_from_unix(slot_ms as f64 / 1000.0)
        .ok_or_else(|| err(format!("slot {slot_ms} ms is not a time")))?;
    msg.headers
        .extra
        .insert(SLOT_HEADER.to_string(), Value::String(slot));
    if let Some(ttl) = entry.expires_after() {
        msg.properties.extra.insert(
            "expiration".to_string(),
            Value::String(ttl.as_millis().to_string()),
        );
    }
    Ok(msg)
}

/// [`run_message`] in the broker's outgoing form.
pub(crate) fn outgoing(entry: &Entry, slot_ms: i64) -> Result<Outgoing, MessageError> {
    let msg = run_message(entry, slot_ms)?;
    Outgoing::from_message(&msg).map_err(|e| MessageError {
        entry: entry.name().to_string(),
        reason: e.to_string(),
    })
}

/// Unix time now in milliseconds.
pub(crate) fn now_ms() -> i64 {
    (unix_now() * 1000.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Schedule;

    #[test]
    fn beat_messages_are_celery_v2_with_the_beat_header() {
        let s = Schedule::from_toml(
            r#"
            [[entry]]
            name = "echo"
            task = "tasks.echo"
            args = ["cron"]
            kwargs = { k = 1 }
            cron = "* * * * *"
            queue = "celery"
            priority = 3
            expires = "30s"
            "#,
        )
        .unwrap();
        let e = &s.entries()[0];
        let before = unix_now();
        let msg = run_message(e, 1_795_000_000_000).unwrap();
        let back = Message::decode(&msg.encode().unwrap()).unwrap();
        assert_eq!(back.task(), "tasks.echo");
        assert_eq!(back.args, vec![Value::from("cron")]);
        assert_eq!(back.kwargs["k"], 1);
        assert_eq!(back.queue(), "celery");
        assert_eq!(back.properties.priority, 3);
        assert_eq!(back.headers.extra[BEAT_HEADER], Value::Bool(true));
        assert_eq!(
            back.headers.extra[SLOT_HEADER],
            Value::from("2026-11-18T11:06:40.000000+00:00")
        );
        assert_eq!(back.headers.argsrepr.as_deref(), Some("('cron',)"));
        assert_eq!(back.properties.extra["expiration"], "30000");
        let expires = back.expires_unix().unwrap();
        assert!(
            expires >= before + 29.0 && expires <= unix_now() + 31.0,
            "{expires}"
        );
        // A fresh id for each run.
        assert_ne!(run_message(e, 0).unwrap().id(), msg.id());
    }
}
