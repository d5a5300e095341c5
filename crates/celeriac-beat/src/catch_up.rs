//! Which slots of an entry to run now: the pure decision, from its last
//! recorded run, the time and its catch-up policy.

use std::fmt;
use std::str::FromStr;

use crate::timing::Timing;

/// What to do with the runs an entry missed (no beat was leader when they
/// were due, or the leader was late).
///
/// # Examples
///
/// ```
/// use celeriac_beat::CatchUp;
///
/// assert_eq!("all".parse::<CatchUp>().unwrap(), CatchUp::All);
/// assert_eq!(CatchUp::default(), CatchUp::One);
/// assert!("some".parse::<CatchUp>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Run once for all the missed slots (the latest one), as Celery's
    /// beat does. The default.
    #[default]
    One,
    /// Run every missed slot, oldest first.
    All,
    /// Run none of them: only a slot that is due now (at most
    /// [`ON_TIME`](crate::ON_TIME) ago) runs.
    None,
}

impl FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "one" => Ok(CatchUp::One),
            "all" => Ok(CatchUp::All),
            "none" => Ok(CatchUp::None),
            other => Err(format!(
                "unknown catch-up policy {other:?} (expected \"one\", \"all\" or \"none\")"
            )),
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CatchUp::One => "one",
            CatchUp::All => "all",
            CatchUp::None => "none",
        })
    }
}

/// What an entry needs now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Due {
    /// Slots to publish, oldest first.
    pub(crate) publish: Vec<i64>,
    /// A slot to record without publishing (after the published ones):
    /// the entry's first sight, or the missed slots a policy skips.
    pub(crate) record: Option<i64>,
}

#[cfg(test)]
impl Due {
    pub(crate) fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.record.is_none()
    }
}

/// The slots of `timing` to act on at `now_ms`, given the entry's last
/// recorded run. An entry never run before starts from now: its first run
/// is its first slot after now (as Celery's beat waits a whole interval).
/// At most `limit` slots are published at once (`All` after a long
/// outage); the rest follow on the next call.
pub(crate) fn due(
    timing: &Timing,
    last_ms: Option<i64>,
    now_ms: i64,
    policy: CatchUp,
    on_time_ms: i64,
    limit: usize,
) -> Due {
    let Some(last) = last_ms else {
        return Due {
            publish: Vec::new(),
            record: Some(now_ms),
        };
    };
    let Some(latest) = timing.latest_at_or_before(now_ms, last) else {
        return Due::default();
    };
    match policy {
        CatchUp::One => Due {
            publish: vec![latest],
            record: None,
        },
        CatchUp::None if now_ms - latest <= on_time_ms => Due {
            publish: vec![latest],
            record: None,
        },
        CatchUp::None => Due {
            publish: Vec::new(),
            record: Some(latest),
        },
        CatchUp::All => {
            let mut publish = Vec::new();
            let mut at = last;
            while publish.len() < limit {
                match timing.next_after(at) {
                    Some(s) if s <= latest => {
                        publish.push(s);
                        at = s;
                    }
                    _ => break,
                }
            }
            Due {
                publish,
                record: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn every(secs: u64) -> Timing {
        Timing::every(Duration::from_secs(secs)).unwrap()
    }

    #[test]
    fn a_new_entry_records_now_and_runs_from_its_next_slot() {
        let d = due(&every(10), None, 12_345, CatchUp::All, 1000, 100);
        assert_eq!(d.publish, Vec::<i64>::new());
        assert_eq!(d.record, Some(12_345));
        // Later: 20 000 is the first slot after it.
        let d = due(&every(10), Some(12_345), 20_010, CatchUp::One, 1000, 100);
        assert_eq!(d.publish, vec![20_000]);
    }

    #[test]
    fn nothing_is_due_before_the_next_slot_or_twice() {
        for p in [CatchUp::One, CatchUp::All, CatchUp::None] {
            assert!(due(&every(10), Some(20_000), 29_999, p, 1000, 100).is_empty());
            assert!(due(&every(10), Some(30_000), 30_000, p, 1000, 100).is_empty());
        }
    }

    #[test]
    fn policies_for_missed_slots() {
        // Last run at 10 s, now 55.5 s: 20, 30, 40, 50 were missed.
        let d = |p| due(&every(10), Some(10_000), 55_500, p, 1000, 100);
        assert_eq!(d(CatchUp::One).publish, vec![50_000]);
        assert_eq!(
            d(CatchUp::All).publish,
            vec![20_000, 30_000, 40_000, 50_000]
        );
        // 50 s is 5.5 s late: `none` records it without running it.
        assert_eq!(
            d(CatchUp::None),
            Due {
                publish: vec![],
                record: Some(50_000)
            }
        );
        // A slot due now runs under every policy.
        let now = due(&every(10), Some(40_000), 50_200, CatchUp::None, 1000, 100);
        assert_eq!(now.publish, vec![50_000]);
    }

    #[test]
    fn all_publishes_a_long_backlog_in_bounded_batches() {
        let first = due(&every(1), Some(0), 10_500, CatchUp::All, 4, 4);
        assert_eq!(first.publish, vec![1000, 2000, 3000, 4000]);
        let next = due(&every(1), Some(4000), 10_500, CatchUp::All, 4, 4);
        assert_eq!(next.publish, vec![5000, 6000, 7000, 8000]);
    }
}
