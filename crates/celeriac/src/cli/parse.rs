//! Argument parsers and validators of the CLI: durations, signals, queue
//! names and the JSON of `--args`/`--kwargs`, each with a clear error.

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// A number of seconds on the command line: finite, not negative, at most
/// 100 years.
pub(crate) fn parse_seconds(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    celeriac::time::checked_seconds(secs)
        .map(|_| secs)
        .map_err(|e| e.to_string())
}

/// A signal for `revoke --signal`, as Celery names it (`SIGKILL`): upper
/// case, with the `SIG` prefix.
pub(crate) fn signal_name(s: &str) -> Result<String, String> {
    const KNOWN: [&str; 9] = [
        "TERM", "KILL", "INT", "QUIT", "HUP", "USR1", "USR2", "ABRT", "ALRM",
    ];
    let upper = s.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if KNOWN.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(format!("unknown signal {s:?}; one of {}", KNOWN.join(", ")))
    }
}

/// An integer in `json` that JSON would turn into a float: refused, so
/// that a task never gets a rounded number.
pub(crate) fn exact_integers(json: &str, flag: &str) -> Result<()> {
    match celeriac::message::out_of_range_integer(json.as_bytes()) {
        Some(int) => bail!(
            "{flag}: integer {int} is outside the 64-bit range (-2^63 to 2^64-1) that celeriac carries exactly"
        ),
        None => Ok(()),
    }
}

pub(crate) fn parse_json_list(s: &str) -> Result<Vec<Value>> {
    exact_integers(s, "--args")?;
    match serde_json::from_str(s).context("--args must be JSON")? {
        Value::Array(a) => Ok(a),
        other => bail!("--args must be a JSON list, got {other}"),
    }
}

/// A queue name from the command line: refused at parsing when reserved
/// for the brokers' bookkeeping (`unacked`, `celeriac.dlq`, ...).
pub(crate) fn queue_name(s: &str) -> Result<String, celeriac::QueueNameError> {
    celeriac::validate_queue_name(s).map(|()| s.to_string())
}

pub(crate) fn parse_json_object(s: &str) -> Result<Map<String, Value>> {
    exact_integers(s, "--kwargs")?;
    match serde_json::from_str(s).context("--kwargs must be JSON")? {
        Value::Object(m) => Ok(m),
        other => bail!("--kwargs must be a JSON object, got {other}"),
    }
}
