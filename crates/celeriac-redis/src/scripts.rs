//! The broker's Lua scripts, one file each in `lua/`, each run after the
//! shared `lua/prelude.lua` (its type checks and dead-letter helper).
//!
//! Every script checks the type of each key it will change before it
//! changes anything: Redis does not roll back a script that fails half-way,
//! so a claim that failed on a wrong-typed key after popping its batch lost
//! the batch. A failed check is a `CELERIAC_WRONGTYPE` error reply, which
//! [`wrong_type`] recognises.

use redis::Script;

pub(crate) const PRELUDE: &str = include_str!("lua/prelude.lua");

/// The scripts, loaded once per broker handle.
#[derive(Debug)]
pub(crate) struct Scripts {
    /// `lua/claim.lua`: the atomic claim (and its resumption).
    pub(crate) claim: Script,
    /// `lua/ack.lua`.
    pub(crate) ack: Script,
    /// `lua/renew.lua`.
    pub(crate) renew: Script,
    /// `lua/requeue.lua`.
    pub(crate) requeue: Script,
    /// `lua/dead_letter.lua`.
    pub(crate) dead_letter: Script,
    /// `lua/requeue_dead_letter.lua`.
    pub(crate) requeue_dead_letter: Script,
    /// `lua/restore.lua`: lapsed leases and dead consumers.
    pub(crate) restore: Script,
    /// `lua/rate.lua`.
    pub(crate) rate: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            claim: with_prelude(include_str!("lua/claim.lua")),
            ack: with_prelude(include_str!("lua/ack.lua")),
            renew: with_prelude(include_str!("lua/renew.lua")),
            requeue: with_prelude(include_str!("lua/requeue.lua")),
            dead_letter: with_prelude(include_str!("lua/dead_letter.lua")),
            requeue_dead_letter: with_prelude(include_str!("lua/requeue_dead_letter.lua")),
            restore: with_prelude(include_str!("lua/restore.lua")),
            rate: with_prelude(include_str!("lua/rate.lua")),
        }
    }
}

/// The error code of a failed type check.
const WRONG_TYPE: &str = "CELERIAC_WRONGTYPE";

/// The message of a failed type check (which key holds what), if `e` is
/// one.
pub(crate) fn wrong_type(e: &redis::RedisError) -> Option<String> {
    if e.code() != Some(WRONG_TYPE) {
        return None;
    }
    let detail = e.detail().unwrap_or_default();
    // Redis appends where in the script the error was raised.
    let detail = detail.split(" script: ").next().unwrap_or(detail);
    Some(detail.trim().to_string())
}
