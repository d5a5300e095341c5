//! Rate limits: `"10/s"`, `"100/m"`, `"3600/h"`, shared by every worker on
//! the broker (the default) or per worker (`"10/s/w"`).

use std::fmt;
use std::str::FromStr;

/// A task rate limit.
///
/// # Examples
///
/// ```
/// use celeriac_core::RateLimit;
/// let r: RateLimit = "20/s".parse().unwrap();
/// assert_eq!(r.per_second(), 20.0);
/// assert!(r.is_global());
/// let w: RateLimit = "120/m/w".parse().unwrap();
/// assert_eq!(w.per_second(), 2.0);
/// assert!(!w.is_global());
/// assert!("fast".parse::<RateLimit>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    global: bool,
}

impl RateLimit {
    /// `n` tasks per second, shared by every worker on the broker.
    pub const fn per_second_global(n: f64) -> Self {
        RateLimit {
            per_second: n,
            global: true,
        }
    }

    /// `n` tasks per second on each worker.
    pub const fn per_second_per_worker(n: f64) -> Self {
        RateLimit {
            per_second: n,
            global: false,
        }
    }

    /// Tasks per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Whether the limit is shared by all workers (through the broker).
    pub fn is_global(&self) -> bool {
        self.global
    }

    /// Seconds between two tasks at this rate.
    pub fn interval(&self) -> f64 {
        1.0 / self.per_second
    }
}

impl FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid rate limit {s:?}: expected N/s, N/m or N/h, optionally followed by /w")
        };
        let mut parts = s.trim().split('/');
        let n: f64 = parts
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(bad)?;
        let unit = match parts.next().map(str::trim) {
            Some("s") | None => 1.0,
            Some("m") => 60.0,
            Some("h") => 3600.0,
            _ => return Err(bad()),
        };
        let global = match parts.next().map(str::trim) {
            None => true,
            Some("w") => false,
            _ => return Err(bad()),
        };
        if parts.next().is_some() || !(n > 0.0 && n.is_finite()) {
            return Err(bad());
        }
        Ok(RateLimit {
            per_second: n / unit,
            global,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/s{}",
            self.per_second,
            if self.global { "" } else { "/w" }
        )
    }
}

/// One step of the generic cell rate algorithm (GCRA) without bursts, the
/// arithmetic every broker runs: `tat` is the bucket's theoretical arrival
/// time (unix seconds; `None` for an unused bucket). A task may start `now`
/// if `tat` is not in the future, and the bucket's new `tat` is
/// `now + interval`; otherwise it must wait `tat - now` seconds.
///
/// # Examples
///
/// ```
/// use celeriac_core::rate::gcra;
/// assert_eq!(gcra(None, 10.0, 0.5), Ok(10.5));
/// assert_eq!(gcra(Some(10.5), 10.2, 0.5), Err(0.3000000000000007));
/// assert_eq!(gcra(Some(10.5), 10.5, 0.5), Ok(11.0));
/// ```
pub fn gcra(tat: Option<f64>, now: f64, interval: f64) -> Result<f64, f64> {
    match tat {
        Some(t) if t > now => Err(t - now),
        _ => Ok(now + interval),
    }
}
