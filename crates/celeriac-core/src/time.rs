//! Time helpers: Celery's ISO-8601 timestamps and unix seconds.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Seconds since the unix epoch, as a float, now.
///
/// # Examples
///
/// ```
/// assert!(celeriac_core::time::unix_now() > 1.7e9);
/// ```
pub fn unix_now() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64()
}

/// Formats unix seconds as Celery does (`2026-11-26T10:12:19.712541+00:00`).
///
/// # Examples
///
/// ```
/// use celeriac_core::time::iso_from_unix;
/// assert_eq!(iso_from_unix(0.5), "1970-01-01T00:00:00.500000+00:00");
/// ```
pub fn iso_from_unix(secs: f64) -> String {
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
    let dt = Utc
        .timestamp_opt(whole as i64, nanos)
        .single()
        .unwrap_or_else(Utc::now);
    dt.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// The current time in Celery's ISO-8601 format.
pub fn iso_now() -> String {
    iso_from_unix(unix_now())
}

/// Parses an ISO-8601 timestamp as Celery sends it (`eta`, `expires`) into
/// unix seconds. A value without an offset means UTC, as in Celery.
///
/// # Examples
///
/// ```
/// use celeriac_core::time::parse_iso;
/// assert_eq!(parse_iso("1970-01-01T00:01:00+00:00"), Some(60.0));
/// assert_eq!(parse_iso("1970-01-01T01:01:00+01:00"), Some(60.0));
/// assert_eq!(parse_iso("1970-01-01T00:01:00.5"), Some(60.5));
/// assert_eq!(parse_iso("not a date"), None);
/// ```
pub fn parse_iso(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_nanos()) / 1e9);
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            let dt = n.and_utc();
            return Some(dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_nanos()) / 1e9);
        }
    }
    // `2026-11-26 10:00:00+00:00` (space separator, with offset)
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|dt| dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_nanos()) / 1e9)
}
