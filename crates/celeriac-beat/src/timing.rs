//! When an entry is due: an interval on a fixed grid, or a cron expression
//! in a time zone. Slots are unix times in milliseconds.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// When an entry runs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use celeriac_beat::Timing;
///
/// // Every 5 s: at the unix times that are multiples of 5 s.
/// let every = Timing::every(Duration::from_secs(5)).unwrap();
/// assert_eq!(every.next_after(12_000), Some(15_000));
///
/// // 02:30 each day in Berlin, 01:30 UTC in winter.
/// let cron = Timing::cron("30 2 * * *", "Europe/Berlin").unwrap();
/// let jan_1 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// assert_eq!(cron.next_after(jan_1), Some(jan_1 + 90 * 60_000));
/// ```
#[derive(Clone)]
pub struct Timing(Kind);

#[derive(Clone)]
enum Kind {
    /// Every `ms` milliseconds, at the multiples of `ms` since the epoch.
    Every { ms: i64 },
    /// A cron expression in a time zone.
    Cron {
        expr: String,
        cron: Box<Cron>,
        tz: Tz,
    },
}

/// Why an interval or a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimingError(String);

impl Timing {
    /// Every `interval`, at least one millisecond, in whole milliseconds.
    ///
    /// The slots are the multiples of the interval since the unix epoch
    /// (UTC), so every beat computes the same slots without talking to the
    /// others: `5m` runs at :00, :05, :10 past each hour, `1h30m` at
    /// 00:00, 01:30, 03:00 UTC. (Celery's interval counts from the last
    /// run instead.)
    pub fn every(interval: Duration) -> Result<Self, TimingError> {
        let ms = interval.as_millis();
        if ms == 0 || !interval.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(TimingError(format!(
                "an interval must be a positive whole number of milliseconds, got {interval:?}"
            )));
        }
        let ms = i64::try_from(ms)
            .map_err(|_| TimingError(format!("the interval {interval:?} is too long")))?;
        Ok(Timing(Kind::Every { ms }))
    }

    /// A cron expression of 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 (with seconds first), or an alias such as
    /// `@hourly`, evaluated in the time zone `tz` (an IANA name such as
    /// `Europe/Berlin`, or `UTC`).
    ///
    /// Across daylight saving time changes (croner's rules, as Vixie cron):
    /// a fixed time that does not exist (spring forward) runs at the first
    /// time after the gap; a fixed time that happens twice (fall back) runs
    /// once, the first time; wildcard and step fields run at each
    /// occurrence of the wall-clock times they match.
    pub fn cron(expr: &str, tz: &str) -> Result<Self, TimingError> {
        let tz: Tz = tz.parse().map_err(|_| {
            TimingError(format!(
                "unknown time zone {tz:?} (use an IANA name such as \"Europe/Berlin\", or \"UTC\")"
            ))
        })?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(TimingError(format!(
                "a cron expression has 5 fields (minute hour day month weekday) or 6 (seconds first), got {fields} in {expr:?}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| TimingError(format!("invalid cron expression {expr:?}: {e}")))?;
        // An expression that never matches (`0 0 30 2 *`) is refused now,
        // not found out when it is due.
        let probe = Utc::now().with_timezone(&tz);
        cron.find_next_occurrence(&probe, false)
            .map_err(|e| TimingError(format!("the cron expression {expr:?} never runs: {e}")))?;
        Ok(Timing(Kind::Cron {
            expr: expr.trim().to_string(),
            cron: Box::new(cron),
            tz,
        }))
    }

    /// The first slot strictly after `after_ms`, or `None` if there is none
    /// (a cron expression with no later match before the year 5000).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.0 {
            Kind::Every { ms } => after_ms
                .div_euclid(*ms)
                .checked_add(1)
                .and_then(|k| k.checked_mul(*ms)),
            Kind::Cron { cron, tz, .. } => {
                // croner works in whole seconds: start from the second
                // `after_ms` falls in, and skip a match not after it.
                let start = at(tz, after_ms.div_euclid(1000) * 1000)?;
                let mut next = cron.find_next_occurrence(&start, false).ok()?;
                loop {
                    let ms = next.timestamp_millis();
                    if ms > after_ms {
                        return Some(ms);
                    }
                    next = cron.find_next_occurrence(&next, false).ok()?;
                }
            }
        }
    }

    /// The latest slot at or before `at_ms`, if it is later than
    /// `floor_ms`.
    pub fn latest_at_or_before(&self, at_ms: i64, floor_ms: i64) -> Option<i64> {
        let latest = match &self.0 {
            Kind::Every { ms } => Some(at_ms.div_euclid(*ms) * ms),
            Kind::Cron { cron, tz, .. } => {
                let start = at(tz, at_ms.div_euclid(1000) * 1000)?;
                cron.find_previous_occurrence(&start, true)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        };
        latest.filter(|s| *s > floor_ms && *s <= at_ms)
    }

    /// The cron expression, for a cron timing.
    pub(crate) fn cron_expr(&self) -> Option<&str> {
        match &self.0 {
            Kind::Every { .. } => None,
            Kind::Cron { expr, .. } => Some(expr),
        }
    }

    /// The time zone cron slots are computed in (`UTC` for intervals).
    pub fn time_zone(&self) -> Tz {
        match &self.0 {
            Kind::Every { .. } => Tz::UTC,
            Kind::Cron { tz, .. } => *tz,
        }
    }

    /// A slot as a date and time in the entry's time zone.
    pub fn local(&self, slot_ms: i64) -> Option<DateTime<Tz>> {
        at(&self.time_zone(), slot_ms)
    }
}

fn at(tz: &Tz, ms: i64) -> Option<DateTime<Tz>> {
    tz.timestamp_millis_opt(ms).single()
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Every { ms } => {
                let d = Duration::from_millis(*ms as u64);
                write!(f, "every {}", humantime::format_duration(d))
            }
            Kind::Cron { expr, tz, .. } => write!(f, "cron {expr:?} ({tz})"),
        }
    }
}

impl fmt::Debug for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timing({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn iso(ms: i64) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    }

    fn slots(t: &Timing, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = utc(from);
        for _ in 0..n {
            at = t.next_after(at).unwrap();
            out.push(iso(at));
        }
        out
    }

    #[test]
    fn intervals_run_on_a_grid_from_the_epoch() {
        let t = Timing::every(Duration::from_secs(5)).unwrap();
        assert_eq!(t.next_after(0), Some(5000));
        assert_eq!(t.next_after(4999), Some(5000));
        assert_eq!(t.next_after(5000), Some(10_000));
        assert_eq!(t.next_after(-1), Some(0));
        assert_eq!(t.latest_at_or_before(12_345, 0), Some(10_000));
        assert_eq!(t.latest_at_or_before(12_345, 10_000), None);
        let t = Timing::every(Duration::from_secs(5400)).unwrap();
        assert_eq!(
            slots(&t, "2026-11-29T00:10:00Z", 2),
            ["2026-11-29T01:30:00+00:00", "2026-11-29T03:00:00+00:00"]
        );
        assert!(Timing::every(Duration::ZERO).is_err());
        assert!(Timing::every(Duration::from_micros(1500)).is_err());
    }

    #[test]
    fn cron_with_seconds_and_sub_second_starts() {
        let t = Timing::cron("*/2 * * * * *", "UTC").unwrap();
        let base = utc("2026-11-29T10:00:00Z");
        assert_eq!(t.next_after(base), Some(base + 2000));
        assert_eq!(t.next_after(base + 500), Some(base + 2000));
        assert_eq!(t.next_after(base + 1999), Some(base + 2000));
        assert_eq!(t.latest_at_or_before(base + 3500, 0), Some(base + 2000));
        assert_eq!(t.latest_at_or_before(base + 2000, 0), Some(base + 2000));
    }

    #[test]
    fn bad_cron_and_zones_are_refused_with_a_reason() {
        let e = Timing::cron("* * *", "UTC").unwrap_err().to_string();
        assert!(e.contains("5 fields"), "{e}");
        let e = Timing::cron("61 * * * *", "UTC").unwrap_err().to_string();
        assert!(e.contains("invalid cron expression"), "{e}");
        let e = Timing::cron("* * * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown time zone"), "{e}");
        let e = Timing::cron("0 0 30 2 *", "UTC").unwrap_err().to_string();
        assert!(e.contains("never runs"), "{e}");
        assert!(Timing::cron("@hourly", "UTC").is_ok());
    }

    /// Europe/Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00
    /// CEST) and falls back on 2026-10-25 (03:00 CEST -> 02:00 CET).
    #[test]
    fn cron_across_dst_changes_in_berlin() {
        // A fixed time inside the gap runs once, right after it: 03:00
        // CEST = 01:00 UTC. The days around it run at 02:30 local.
        let t = Timing::cron("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            slots(&t, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // 03:00 CEST, after the gap
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
        // A fixed time in the repeated hour runs once, the first time.
        assert_eq!(
            slots(&t, "2026-10-24T12:00:00Z", 2),
            [
                "2026-10-25T00:30:00+00:00", // 02:30 CEST (not again at CET)
                "2026-10-26T01:30:00+00:00", // 02:30 CET
            ]
        );
        // A wildcard hour runs at each occurrence of the repeated hour:
        // 02:00 CEST and 02:00 CET are an hour apart in real time.
        let hourly = Timing::cron("0 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            slots(&hourly, "2026-10-24T23:30:00Z", 3),
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T01:00:00+00:00", // 02:00 CET
                "2026-10-25T02:00:00+00:00", // 03:00 CET
            ]
        );
        // In spring the hour that does not exist is skipped.
        assert_eq!(
            slots(&hourly, "2026-03-29T00:30:00Z", 2),
            [
                "2026-03-29T01:00:00+00:00", // 03:00 CEST
                "2026-03-29T02:00:00+00:00", // 04:00 CEST
            ]
        );
        // The latest slot before a time agrees with the forward search.
        let after_gap = utc("2026-03-29T01:00:00Z");
        assert_eq!(
            t.latest_at_or_before(after_gap + 60_000, 0),
            Some(after_gap)
        );
    }
}
