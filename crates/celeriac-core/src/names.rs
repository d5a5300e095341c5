//! Which queue names are allowed, and how node names are spelled.
//!
//! On Redis a queue is a list whose key is the queue's name, in the same
//! key space as the broker's own bookkeeping: kombu's `unacked` hash and
//! `unacked_index` sorted set, its `_kombu.binding.*` sets, celeriac's
//! `celeriac.*` keys (claims, delivery counts, delayed messages, the
//! dead-letter store, revokes, liveness leases, ...) and the result
//! documents `celery-task-meta-*`. A queue named like one of them
//! overwrites it or makes it unusable: publishing to `unacked` turned the
//! hash into a list, after which every claim failed and tasks were lost.
//! Consuming `celeriac.dlq` would take the dead letters back as tasks.
//!
//! [`validate_queue_name`] refuses those names on every broker, so a name
//! valid on one broker is valid on all. Publishers and workers call it
//! before using a queue (the CLI does at argument parsing; the Redis broker
//! on every publish and claim).

/// Exact names of kombu's bookkeeping keys.
const RESERVED_NAMES: [&str; 3] = ["unacked", "unacked_index", "unacked_mutex"];

/// Name prefixes of bookkeeping keys, with whose they are.
const RESERVED_PREFIXES: [(&str, &str); 6] = [
    ("_kombu.", "kombu's bindings"),
    ("celeriac.", "celeriac's broker bookkeeping"),
    ("celeriac-idempotency-", "celeriac's idempotency keys"),
    ("celery-task-meta-", "Celery's result documents"),
    ("celery-taskset-meta-", "Celery's group results"),
    ("chord-unlock-", "Celery's chord counters"),
];

/// kombu's separator between a queue name and its priority step: the list
/// of priority 3 of queue `q` is `q\x06\x163`.
const PRIORITY_SEPARATOR: &str = "\x06\x16";

/// A queue name that cannot be used.
///
/// # Examples
///
/// ```
/// use celeriac_core::{QueueNameError, validate_queue_name};
///
/// assert!(validate_queue_name("celery").is_ok());
/// let err = validate_queue_name("unacked").unwrap_err();
/// assert!(matches!(err, QueueNameError::Reserved { .. }));
/// assert!(err.to_string().contains("reserved"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueNameError {
    /// The name is empty.
    #[error("a queue name cannot be empty")]
    Empty,
    /// The name is one of the broker's bookkeeping keys, or starts like
    /// them.
    #[error("queue name {name:?} is reserved for {owner}; choose another name")]
    Reserved {
        /// The name as given.
        name: String,
        /// Whose keys the name collides with.
        owner: &'static str,
    },
}

/// Checks that `name` can be used as a queue: not empty, and not a name
/// the brokers use for their own bookkeeping (see the [module docs](self)):
///
/// - `unacked`, `unacked_index`, `unacked_mutex` (kombu);
/// - anything starting with `_kombu.`, `celeriac.`, `celeriac-idempotency-`,
///   `celery-task-meta-`, `celery-taskset-meta-` or `chord-unlock-`;
/// - anything containing kombu's priority separator `\x06\x16` (it would
///   be another queue's priority list).
///
/// # Examples
///
/// ```
/// use celeriac_core::validate_queue_name;
///
/// for ok in ["celery", "images", "celeriac", "unacked-orders"] {
///     assert!(validate_queue_name(ok).is_ok(), "{ok}");
/// }
/// for bad in ["", "unacked", "celeriac.dlq", "_kombu.binding.celery"] {
///     assert!(validate_queue_name(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn validate_queue_name(name: &str) -> Result<(), QueueNameError> {
    if name.is_empty() {
        return Err(QueueNameError::Empty);
    }
    let reserved = |owner| {
        Err(QueueNameError::Reserved {
            name: name.to_string(),
            owner,
        })
    };
    if RESERVED_NAMES.contains(&name) {
        return reserved("kombu's bookkeeping of unacknowledged messages");
    }
    if let Some((_, owner)) = RESERVED_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
        return reserved(owner);
    }
    if name.contains(PRIORITY_SEPARATOR) {
        return reserved("kombu's priority lists (it contains the separator \\x06\\x16)");
    }
    Ok(())
}

/// A worker's node name from what the user wrote, as Celery spells it
/// (`celery/utils/nodenames.py`): `%h` is the full host name, `%n` its
/// first label, `%d` its domain and `%%` a percent sign; a name without
/// `@` is a host part and gets `default_name@` in front.
///
/// # Examples
///
/// ```
/// use celeriac_core::expand_nodename;
/// assert_eq!(expand_nodename("w1@%h", "box.example.com", "celeriac"), "w1@box.example.com");
/// assert_eq!(expand_nodename("%n-a@%d", "box.example.com", "celeriac"), "box-a@example.com");
/// assert_eq!(expand_nodename("worker2", "box", "celeriac"), "celeriac@worker2");
/// assert_eq!(expand_nodename("100%%@%h", "box", "celeriac"), "100%@box");
/// ```
pub fn expand_nodename(pattern: &str, host: &str, default_name: &str) -> String {
    let (first, domain) = host.split_once('.').unwrap_or((host, ""));
    let mut out = String::with_capacity(pattern.len() + host.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('n') => out.push_str(first),
            Some('d') => out.push_str(domain),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    if out.contains('@') {
        out
    } else {
        format!("{default_name}@{out}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bookkeeping_key_of_the_redis_broker_is_refused() {
        for name in [
            "unacked",
            "unacked_index",
            "unacked_mutex",
            "_kombu.binding.celery",
            "celeriac.claims",
            "celeriac.deliveries",
            "celeriac.delayed",
            "celeriac.dlq",
            "celeriac.dlq.payloads",
            "celeriac.revoked.abc",
            "celeriac.terminate.abc",
            "celeriac.node.w@h",
            "celeriac.rate.t",
            "celeriac.alive.x",
            "celeriac.consumers",
            "celeriac-idempotency-k",
            "celery-task-meta-abc",
            "celery-taskset-meta-abc",
            "chord-unlock-abc",
            "celery\x06\x163",
        ] {
            assert!(
                matches!(
                    validate_queue_name(name),
                    Err(QueueNameError::Reserved { .. })
                ),
                "{name:?} must be reserved"
            );
        }
        assert_eq!(validate_queue_name(""), Err(QueueNameError::Empty));
    }

    #[test]
    fn ordinary_names_are_allowed() {
        for name in [
            "celery",
            "default",
            "celeriac",
            "celeriacs",
            "unacked2",
            "my.unacked",
            "kombu.binding",
            "celery-task",
            "q:with:colons",
            "ünïcode",
        ] {
            assert_eq!(validate_queue_name(name), Ok(()), "{name:?}");
        }
    }
}
