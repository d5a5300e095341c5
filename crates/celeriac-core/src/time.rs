//! Time helpers: Celery's ISO-8601 timestamps and unix seconds.

use std::time::Duration;

use chrono::{FixedOffset, NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};

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

/// The earliest unix time a Celery timestamp can name: 0001-01-01, the
/// smallest Python `datetime`.
pub const MIN_UNIX: f64 = -62_135_596_800.0;

/// The first unix time past what a Celery timestamp can name: year 10000,
/// beyond the largest Python `datetime`.
pub const END_UNIX: f64 = 253_402_300_800.0;

/// Formats unix seconds as Celery does, or `None` when `secs` is not a
/// time Python can read back (not finite, or outside the years 1 to 9999).
/// [`iso_from_unix`] would show such a time as now; a client builds its
/// `eta` and `expires` with this one, so that an impossible time is an
/// error and not a guess.
///
/// # Examples
///
/// ```
/// use celeriac_core::time::try_iso_from_unix;
/// assert_eq!(try_iso_from_unix(60.0).as_deref(), Some("1970-01-01T00:01:00.000000+00:00"));
/// assert_eq!(try_iso_from_unix(1e30), None);
/// assert_eq!(try_iso_from_unix(f64::NAN), None);
/// ```
pub fn try_iso_from_unix(secs: f64) -> Option<String> {
    (secs.is_finite() && (MIN_UNIX..END_UNIX).contains(&secs)).then(|| iso_from_unix(secs))
}

/// The longest duration celeriac takes as a number of seconds: 100 years
/// (a countdown, a timeout, a revoke's TTL, a lease). Longer ones are
/// refused by [`checked_seconds`], and clamped to it by
/// [`saturating_seconds`].
pub const MAX_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;

/// A number of seconds that is not a duration celeriac takes: not finite,
/// negative, or more than [`MAX_SECONDS`].
///
/// # Examples
///
/// ```
/// use celeriac_core::time::checked_seconds;
/// let e = checked_seconds(1e30).unwrap_err();
/// assert_eq!(e.to_string(), "1e30 s is more than the maximum of 3153600000 s (100 years)");
/// assert_eq!(e.value(), 1e30);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct SecondsError {
    value: f64,
}

impl SecondsError {
    /// The number that was refused.
    pub fn value(&self) -> f64 {
        self.value
    }

    fn describe(&self) -> String {
        let v = self.value;
        if !v.is_finite() {
            format!("{v} is not a finite number of seconds")
        } else if v < 0.0 {
            format!("{v} s is negative")
        } else {
            format!("{v:e} s is more than the maximum of {MAX_SECONDS} s (100 years)")
        }
    }
}

/// `secs` as a [`Duration`]: finite, not negative, at most
/// [`MAX_SECONDS`]. (`Duration::from_secs_f64` panics on what this
/// refuses.)
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::time::checked_seconds;
/// assert_eq!(checked_seconds(1.5), Ok(Duration::from_millis(1500)));
/// assert_eq!(checked_seconds(0.0), Ok(Duration::ZERO));
/// assert!(checked_seconds(-1.0).is_err());
/// assert!(checked_seconds(f64::NAN).is_err());
/// assert!(checked_seconds(f64::INFINITY).is_err());
/// ```
pub fn checked_seconds(secs: f64) -> Result<Duration, SecondsError> {
    if secs.is_finite() && (0.0..=MAX_SECONDS).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(SecondsError { value: secs })
    }
}

/// `secs` as a [`Duration`], for a computed wait that must not fail:
/// NaN and negative values are zero, and longer ones (infinity included)
/// are [`MAX_SECONDS`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::time::{MAX_SECONDS, saturating_seconds};
/// assert_eq!(saturating_seconds(f64::NAN), Duration::ZERO);
/// assert_eq!(saturating_seconds(-3.0), Duration::ZERO);
/// assert_eq!(saturating_seconds(1e300), Duration::from_secs_f64(MAX_SECONDS));
/// assert_eq!(saturating_seconds(2.5), Duration::from_millis(2500));
/// ```
pub fn saturating_seconds(secs: f64) -> Duration {
    if secs.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(secs.clamp(0.0, MAX_SECONDS))
}

/// The current time in Celery's ISO-8601 format.
pub fn iso_now() -> String {
    iso_from_unix(unix_now())
}

/// Parses an ISO-8601 timestamp as Celery sends it (`eta`, `expires`) into
/// unix seconds: what Python's `datetime.fromisoformat` reads, in the
/// extended format. A date, optionally followed by `T` or a space and a
/// time (`HH`, `HH:MM`, `HH:MM:SS`, with a fraction), optionally followed by
/// `Z` or an offset (`+HH:MM`, `+HHMM`, `+HH`). A value without an offset
/// means UTC, as in Celery. `None` for anything else.
///
/// # Examples
///
/// ```
/// use celeriac_core::time::parse_iso;
/// assert_eq!(parse_iso("1970-01-01T00:01:00+00:00"), Some(60.0));
/// assert_eq!(parse_iso("1970-01-01T01:01:00+01:00"), Some(60.0));
/// assert_eq!(parse_iso("1970-01-01T00:01:00.5"), Some(60.5));
/// assert_eq!(parse_iso("1970-01-01 00:01Z"), Some(60.0));
/// assert_eq!(parse_iso("1970-01-02"), Some(86_400.0));
/// assert_eq!(parse_iso("not a date"), None);
/// assert_eq!(parse_iso("yesterday"), None);
/// ```
pub fn parse_iso(s: &str) -> Option<f64> {
    let s = s.trim();
    if !s.is_ascii() || s.len() < 10 {
        return None;
    }
    let date = NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").ok()?;
    let rest = &s[10..];
    let (time, offset) = if rest.is_empty() {
        (NaiveTime::MIN, 0)
    } else {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let (time, offset) = split_offset(rest)?;
        (parse_time(time)?, offset)
    };
    let offset = FixedOffset::east_opt(offset)?;
    let dt = date.and_time(time).and_local_timezone(offset).single()?;
    Some(dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_nanos()) / 1e9)
}

/// Splits `HH:MM:SS.f+01:00` into the time and the offset in seconds east.
fn split_offset(s: &str) -> Option<(&str, i32)> {
    if let Some(time) = s.strip_suffix(['Z', 'z']) {
        return Some((time, 0));
    }
    let Some(at) = s.rfind(['+', '-']) else {
        return Some((s, 0));
    };
    let (time, off) = (&s[..at], &s[at + 1..]);
    let sign = if s.as_bytes()[at] == b'-' { -1 } else { 1 };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let (h, m) = match off.len() {
        2 => (off, "0"),
        4 => (&off[..2], &off[2..]),
        5 if off.as_bytes()[2] == b':' => (&off[..2], &off[3..]),
        _ => return None,
    };
    if !digits(h) || !digits(m) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((time, sign * (h * 3600 + m * 60)))
}

/// `HH`, `HH:MM` or `HH:MM:SS[.f]`.
fn parse_time(s: &str) -> Option<NaiveTime> {
    match s.len() {
        2 => NaiveTime::parse_from_str(&format!("{s}:00"), "%H:%M").ok(),
        5 => NaiveTime::parse_from_str(s, "%H:%M").ok(),
        _ => NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_iso_reads_what_python_writes_and_nothing_else() {
        let t = 1_794_995_200.0; // 2026-11-18T09:46:40Z
        for s in [
            "2026-11-18T09:46:40+00:00",
            "2026-11-18T09:46:40.000000+00:00",
            "2026-11-18T10:46:40+01:00",
            "2026-11-18T10:46:40+0100",
            "2026-11-18T10:46:40+01",
            "2026-11-18T08:46:40-01:00",
            "2026-11-18T09:46:40Z",
            "2026-11-18 09:46:40",
            "2026-11-18T09:46:40",
            " 2026-11-18t09:46:40z ",
        ] {
            assert_eq!(parse_iso(s), Some(t), "{s}");
        }
        assert_eq!(parse_iso("2026-11-18T09:46"), Some(t - 40.0));
        assert_eq!(parse_iso("2026-11-18T09"), Some(t - 46.0 * 60.0 - 40.0));
        assert_eq!(parse_iso("2026-11-18T09:46:40.25"), Some(t + 0.25));
        for bad in [
            "",
            "not-a-date",
            "yesterday",
            "2026-13-01",
            "2026-11-31",
            "2026-11-18T25:00:00",
            "2026-11-18T09:46:40+24:00",
            "2026-11-18T09:46:40+1",
            "2026-11-18X09:46:40",
            "2026-11-18T09:46:40 junk",
            "2026-11-18T",
            "2026-11-18T９:46:40",
            "1795000000",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_time_written_by_try_iso_from_unix_reads_back() {
        for t in [0.0, 1_795_000_000.5, MIN_UNIX, END_UNIX - 1.0, -1.0] {
            let s = try_iso_from_unix(t).unwrap();
            assert_eq!(parse_iso(&s), Some(t), "{s}");
        }
        for t in [END_UNIX, MIN_UNIX - 1.0, f64::INFINITY, f64::NAN, 1e19] {
            assert_eq!(try_iso_from_unix(t), None, "{t}");
        }
    }

    #[test]
    fn checked_seconds_refuses_what_would_panic_or_make_no_sense() {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.001,
            1e30,
            MAX_SECONDS * 1.01,
        ] {
            let e = checked_seconds(bad).unwrap_err();
            assert!(e.value() == bad || bad.is_nan(), "{bad}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            checked_seconds(MAX_SECONDS).unwrap(),
            Duration::from_secs(3_153_600_000)
        );
        assert_eq!(checked_seconds(-0.0).unwrap(), Duration::ZERO);
    }
}
