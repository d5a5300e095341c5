//! The schedule: its entries, built in Rust or read from the TOML schedule
//! file, whose errors name the entry and the field.

use std::collections::HashSet;
use std::time::Duration;

use celeriac_core::{Call, validate_queue_name};
use serde_json::Value;

use crate::catch_up::CatchUp;
use crate::schedule_file::ScheduleError;
use crate::timing::Timing;

/// One periodic task: a name unique in its schedule, the call it sends,
/// and when.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use celeriac_beat::{CatchUp, Entry};
/// use celeriac_core::Call;
///
/// let tick = Entry::every("tick", Duration::from_secs(1), Call::<i64>::new("celeriac.add").arg(1).arg(2))
///     .unwrap()
///     .expires(Duration::from_secs(30))
///     .catch_up(CatchUp::All);
/// assert_eq!(tick.name(), "tick");
/// let nightly = Entry::cron("nightly", "0 3 * * *", Call::<()>::new("reports.build"))
///     .unwrap()
///     .timezone("Europe/Berlin")
///     .unwrap();
/// assert_eq!(nightly.timing().to_string(), "cron \"0 3 * * *\" (Europe/Berlin)");
/// ```
#[derive(Debug, Clone)]
pub struct Entry {
    name: String,
    call: Call<Value>,
    timing: Timing,
    expires: Option<Duration>,
    catch_up: Option<CatchUp>,
}

impl Entry {
    /// An entry that sends `call` at `timing`.
    pub fn new<T>(
        name: impl Into<String>,
        timing: Timing,
        call: Call<T>,
    ) -> Result<Self, ScheduleError> {
        let name = name.into();
        let call = call.cast::<Value>();
        let err =
            |field: &str, reason: String| ScheduleError::at_field(Some(&name), 0, field, reason);
        if name.is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        if call.name().is_empty() {
            return Err(err("task", "must not be empty".into()));
        }
        if let Some(e) = call.error() {
            return Err(err("args", e.to_string()));
        }
        if let Some(q) = &call.options().queue {
            validate_queue_name(q).map_err(|e| err("queue", e.to_string()))?;
        }
        Ok(Entry {
            name,
            call,
            timing,
            expires: None,
            catch_up: None,
        })
    }

    /// An entry that sends `call` every `interval` (see [`Timing::every`]).
    pub fn every<T>(
        name: impl Into<String>,
        interval: Duration,
        call: Call<T>,
    ) -> Result<Self, ScheduleError> {
        let name = name.into();
        let timing = Timing::every(interval)
            .map_err(|e| ScheduleError::at_field(Some(&name), 0, "every", e.to_string()))?;
        Self::new(name, timing, call)
    }

    /// An entry that sends `call` at the times of a cron expression, in UTC
    /// unless [`timezone`](Self::timezone) says otherwise (see
    /// [`Timing::cron`]).
    pub fn cron<T>(
        name: impl Into<String>,
        expr: &str,
        call: Call<T>,
    ) -> Result<Self, ScheduleError> {
        let name = name.into();
        let timing = Timing::cron(expr, "UTC")
            .map_err(|e| ScheduleError::at_field(Some(&name), 0, "cron", e.to_string()))?;
        Self::new(name, timing, call)
    }

    /// Evaluates the entry's cron expression in time zone `tz` (an IANA
    /// name). Refused for interval entries, whose slots do not depend on a
    /// time zone.
    pub fn timezone(mut self, tz: &str) -> Result<Self, ScheduleError> {
        let err = |reason: String| ScheduleError::at_field(Some(&self.name), 0, "timezone", reason);
        let Some(expr) = self.timing.cron_expr().map(str::to_string) else {
            return Err(err(
                "applies to cron entries only (an interval does not depend on a time zone)".into(),
            ));
        };
        self.timing = Timing::cron(&expr, tz).map_err(|e| err(e.to_string()))?;
        Ok(self)
    }

    /// Each message expires (a worker records it REVOKED instead of running
    /// it) if not started within `ttl` of its sending.
    pub fn expires(mut self, ttl: Duration) -> Self {
        self.expires = Some(ttl);
        self
    }

    /// This entry's catch-up policy, instead of the beat's default.
    pub fn catch_up(mut self, policy: CatchUp) -> Self {
        self.catch_up = Some(policy);
        self
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The call it sends.
    pub fn call(&self) -> &Call<Value> {
        &self.call
    }

    /// When it runs.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// How long each message stays valid, if it expires.
    pub fn expires_after(&self) -> Option<Duration> {
        self.expires
    }

    /// Its own catch-up policy, if it has one.
    pub fn catch_up_policy(&self) -> Option<CatchUp> {
        self.catch_up
    }
}

/// The entries of one beat, with unique names.
///
/// # Examples
///
/// ```
/// use celeriac_beat::Schedule;
///
/// let s = Schedule::from_toml(r#"
///     [[entry]]
///     name = "tick"
///     task = "celeriac.add"
///     args = [1, 2]
///     every = "1s"
///
///     [[entry]]
///     name = "nightly"
///     task = "reports.build"
///     cron = "0 3 * * *"
///     timezone = "Europe/Berlin"
///     queue = "reports"
///     priority = 3
///     expires = "30m"
/// "#).unwrap();
/// assert_eq!(s.entries().len(), 2);
///
/// let e = Schedule::from_toml("[[entry]]\nname = \"tick\"\ntask = \"t\"\nevery = \"1x\"\n").unwrap_err();
/// assert_eq!((e.entry(), e.field()), (Some("tick"), Some("every")));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    entries: Vec<Entry>,
}

impl Schedule {
    /// A schedule of `entries`; refused if two share a name.
    pub fn new(entries: Vec<Entry>) -> Result<Self, ScheduleError> {
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            if !seen.insert(e.name.clone()) {
                return Err(ScheduleError::at_field(
                    Some(&e.name),
                    i + 1,
                    "name",
                    "is used by an earlier entry; names must be unique".into(),
                ));
            }
        }
        Ok(Schedule { entries })
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds an entry; refused if its name is taken.
    pub fn push(&mut self, entry: Entry) -> Result<(), ScheduleError> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(ScheduleError::at_field(
                Some(&entry.name),
                self.entries.len() + 1,
                "name",
                "is used by an earlier entry; names must be unique".into(),
            ));
        }
        self.entries.push(entry);
        Ok(())
    }
}
