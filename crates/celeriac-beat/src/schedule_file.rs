//! The schedule file: TOML, read into a [`Schedule`], with errors that
//! name the file, the entry and the field.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use celeriac_core::{Call, validate_queue_name};
use serde_json::{Map, Value};

use crate::schedule::{Entry, Schedule};
use crate::timing::Timing;

impl Schedule {
    /// Reads a schedule file (TOML, see [`Schedule::from_toml`]).
    pub fn load(path: &Path) -> Result<Self, ScheduleError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScheduleError {
            file: Some(path.display().to_string()),
            kind: Kind::Read(e.to_string()),
        })?;
        Self::from_toml(&text).map_err(|mut e| {
            e.file = Some(path.display().to_string());
            e
        })
    }

    /// Parses the schedule file format: one `[[entry]]` table per entry
    /// with `name`, `task`, optional `args` (a list) and `kwargs` (a
    /// table), and either `every` (a duration: `"1s"`, `"5m"`, `"1h30m"`,
    /// or a number of seconds) or `cron` (5 fields, or 6 with seconds
    /// first), plus optional `timezone` (cron only), `queue`, `priority`
    /// (0-9), `expires` (a duration) and `catch_up` (`"one"`, `"all"`,
    /// `"none"`). Anything else is an error that names the entry and the
    /// field.
    pub fn from_toml(text: &str) -> Result<Self, ScheduleError> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| ScheduleError {
            file: None,
            kind: Kind::Syntax(e.to_string()),
        })?;
        let mut entries = Vec::new();
        for (key, value) in &doc {
            if key != "entry" {
                return Err(ScheduleError {
                    file: None,
                    kind: Kind::TopLevel(key.clone()),
                });
            }
            let toml::Value::Array(tables) = value else {
                return Err(ScheduleError {
                    file: None,
                    kind: Kind::TopLevel(key.clone()),
                });
            };
            for (i, t) in tables.iter().enumerate() {
                let toml::Value::Table(t) = t else {
                    return Err(ScheduleError::at_field(
                        None,
                        i + 1,
                        "entry",
                        "must be a table ([[entry]])".into(),
                    ));
                };
                entries.push(parse_entry(t, i + 1)?);
            }
        }
        if entries.is_empty() {
            return Err(ScheduleError {
                file: None,
                kind: Kind::NoEntries,
            });
        }
        Self::new(entries)
    }
}

const FIELDS: &[&str] = &[
    "name", "task", "args", "kwargs", "every", "cron", "timezone", "queue", "priority", "expires",
    "catch_up",
];

/// One `[[entry]]` table (number `n`, from 1).
fn parse_entry(t: &toml::Table, n: usize) -> Result<Entry, ScheduleError> {
    let name = match t.get("name") {
        Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(toml::Value::String(_)) => {
            return Err(ScheduleError::at_field(
                None,
                n,
                "name",
                "must not be empty".into(),
            ));
        }
        Some(v) => {
            return Err(ScheduleError::at_field(
                None,
                n,
                "name",
                format!("must be a string, got {}", kind(v)),
            ));
        }
        None => {
            return Err(ScheduleError::at_field(
                None,
                n,
                "name",
                "is missing (every entry needs a unique name)".into(),
            ));
        }
    };
    let err = |field: &str, reason: String| ScheduleError::at_field(Some(&name), n, field, reason);
    for key in t.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(err(
                key,
                format!(
                    "is not a field of an entry (expected one of: {})",
                    FIELDS.join(", ")
                ),
            ));
        }
    }
    let string = |field: &str| -> Result<Option<&str>, ScheduleError> {
        match t.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(err(field, format!("must be a string, got {}", kind(v)))),
        }
    };
    let task = match string("task")? {
        Some(s) if !s.is_empty() => s,
        Some(_) => return Err(err("task", "must not be empty".into())),
        None => {
            return Err(err(
                "task",
                "is missing (the name of the task to send)".into(),
            ));
        }
    };
    let mut call = Call::<Value>::new(task.to_string());
    if let Some(v) = t.get("args") {
        let toml::Value::Array(_) = v else {
            return Err(err("args", format!("must be a list, got {}", kind(v))));
        };
        match json(v) {
            Value::Array(args) => call = call.with_args(args),
            _ => unreachable!("a TOML array converts to a JSON array"),
        }
    }
    if let Some(v) = t.get("kwargs") {
        let toml::Value::Table(_) = v else {
            return Err(err("kwargs", format!("must be a table, got {}", kind(v))));
        };
        match json(v) {
            Value::Object(kwargs) => call = call.with_kwargs(kwargs),
            _ => unreachable!("a TOML table converts to a JSON object"),
        }
    }
    if let Some(q) = string("queue")? {
        validate_queue_name(q).map_err(|e| err("queue", e.to_string()))?;
        call = call.queue(q);
    }
    if let Some(v) = t.get("priority") {
        match v {
            toml::Value::Integer(p) if (0..=9).contains(p) => call = call.priority(*p as u8),
            toml::Value::Integer(p) => {
                return Err(err("priority", format!("must be 0-9, got {p}")));
            }
            v => {
                return Err(err(
                    "priority",
                    format!("must be an integer 0-9, got {}", kind(v)),
                ));
            }
        }
    }
    let timing = match (t.get("every"), string("cron")?) {
        (Some(_), Some(_)) => {
            return Err(err(
                "cron",
                "and `every` are both set; an entry has one of them".into(),
            ));
        }
        (None, None) => {
            return Err(err(
                "every",
                "is missing: an entry needs `every` (an interval) or `cron` (an expression)".into(),
            ));
        }
        (Some(v), None) => {
            let d = duration(v).map_err(|r| err("every", r))?;
            Timing::every(d).map_err(|e| err("every", e.to_string()))?
        }
        (None, Some(expr)) => {
            let tz = string("timezone")?.unwrap_or("UTC");
            Timing::cron(expr, tz).map_err(|e| {
                let field = if e.to_string().contains("time zone") {
                    "timezone"
                } else {
                    "cron"
                };
                err(field, e.to_string())
            })?
        }
    };
    if t.contains_key("timezone") && t.contains_key("every") {
        return Err(err(
            "timezone",
            "applies to cron entries only (an interval does not depend on a time zone)".into(),
        ));
    }
    let mut entry = Entry::new(name.clone(), timing, call).map_err(|mut e| {
        e.set_position(n);
        e
    })?;
    if let Some(v) = t.get("expires") {
        let d = duration(v).map_err(|r| err("expires", r))?;
        entry = entry.expires(d);
    }
    if let Some(p) = string("catch_up")? {
        entry = entry.catch_up(p.parse().map_err(|r| err("catch_up", r))?);
    }
    Ok(entry)
}

/// A duration field: a string such as `"1s"`, `"5m"`, `"1h30m"`,
/// `"250ms"`, or a positive number of seconds.
fn duration(v: &toml::Value) -> Result<Duration, String> {
    let d = match v {
        toml::Value::String(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            format!("invalid duration {s:?}: {e} (write e.g. \"30s\", \"5m\", \"1h30m\")")
        })?,
        toml::Value::Integer(n) if *n > 0 => Duration::from_secs(*n as u64),
        toml::Value::Float(f) if f.is_finite() && *f > 0.0 && *f < 1e12 => {
            Duration::from_secs_f64(*f)
        }
        v => {
            return Err(format!(
                "must be a duration such as \"30s\" or a positive number of seconds, got {}",
                kind(v)
            ));
        }
    };
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A TOML value as JSON (dates become their TOML text).
fn json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), json(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

fn kind(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "a list".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

/// A schedule that cannot be used: the file, and which entry and field
/// are wrong and why.
///
/// Its message names them: `schedule.toml: entry "tick" (#1), field
/// "every": invalid duration "1x": ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    file: Option<String>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Read(String),
    Syntax(String),
    TopLevel(String),
    NoEntries,
    Field {
        entry: Option<String>,
        /// The entry's position in the file, from 1 (0: not from a file).
        position: usize,
        field: String,
        reason: String,
    },
}

impl ScheduleError {
    pub(crate) fn at_field(
        entry: Option<&str>,
        position: usize,
        field: &str,
        reason: String,
    ) -> Self {
        ScheduleError {
            file: None,
            kind: Kind::Field {
                entry: entry.map(str::to_string),
                position,
                field: field.to_string(),
                reason,
            },
        }
    }

    fn set_position(&mut self, n: usize) {
        if let Kind::Field { position, .. } = &mut self.kind {
            *position = n;
        }
    }

    /// The name of the entry that is wrong, if it has one.
    pub fn entry(&self) -> Option<&str> {
        match &self.kind {
            Kind::Field { entry, .. } => entry.as_deref(),
            _ => None,
        }
    }

    /// The field that is wrong, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match &self.kind {
            Kind::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match &self.kind {
            Kind::Read(e) => write!(f, "cannot read the schedule: {e}"),
            Kind::Syntax(e) => write!(f, "not a valid TOML schedule: {}", e.trim_end()),
            Kind::TopLevel(key) => write!(
                f,
                "unexpected top-level key {key:?}: a schedule is a list of [[entry]] tables"
            ),
            Kind::NoEntries => write!(f, "the schedule has no [[entry]]"),
            Kind::Field {
                entry,
                position,
                field,
                reason,
            } => {
                match (entry, position) {
                    (Some(name), 0) => write!(f, "entry {name:?}")?,
                    (Some(name), n) => write!(f, "entry {name:?} (#{n})")?,
                    (None, n) => write!(f, "entry #{n}")?,
                }
                write!(f, ", field {field:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catch_up::CatchUp;

    fn refused(text: &str) -> ScheduleError {
        Schedule::from_toml(text).unwrap_err()
    }

    #[test]
    fn the_issue_s_format_parses() {
        let s = Schedule::from_toml(
            r#"
            [[entry]]
            name = "tick"             # unique
            task = "celeriac.add"
            args = [1, 2]             # optional; also kwargs = { ... }
            every = "1s"              # an interval ("1s", "5m", "1h30m")

            [[entry]]
            name = "report"
            task = "reports.build"
            kwargs = { k = 1, nested = { a = [true, 1.5] } }
            cron = "*/5 * * * *"
            timezone = "Europe/Berlin"
            queue = "reports"
            priority = 0
            expires = "30s"
            catch_up = "all"

            [[entry]]
            name = "long"
            task = "t"
            every = "1h30m"
            "#,
        )
        .unwrap();
        let [tick, report, long] = s.entries() else {
            panic!()
        };
        assert_eq!(tick.call().name(), "celeriac.add");
        assert_eq!(tick.call().args(), &[Value::from(1), Value::from(2)]);
        assert_eq!(tick.timing().to_string(), "every 1s");
        assert_eq!(
            report.timing().to_string(),
            "cron \"*/5 * * * *\" (Europe/Berlin)"
        );
        assert_eq!(
            Value::Object(report.call().kwargs().clone()),
            serde_json::json!({"k": 1, "nested": {"a": [true, 1.5]}})
        );
        assert_eq!(report.call().options().queue.as_deref(), Some("reports"));
        assert_eq!(report.call().options().priority, Some(0));
        assert_eq!(report.expires_after(), Some(Duration::from_secs(30)));
        assert_eq!(report.catch_up_policy(), Some(CatchUp::All));
        assert_eq!(long.timing().to_string(), "every 1h 30m");
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1x\"",
                Some("a"),
                "every",
                "invalid duration",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"0s\"",
                Some("a"),
                "every",
                "longer than zero",
            ),
            (
                "name = \"a\"\ntask = \"t\"\ncron = \"* * *\"",
                Some("a"),
                "cron",
                "5 fields",
            ),
            (
                "name = \"a\"\ntask = \"t\"\ncron = \"* * * * *\"\ntimezone = \"Nowhere/X\"",
                Some("a"),
                "timezone",
                "unknown time zone",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\ntimezone = \"UTC\"",
                Some("a"),
                "timezone",
                "cron entries only",
            ),
            ("name = \"a\"\ntask = \"t\"", Some("a"), "every", "`every`"),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\ncron = \"* * * * *\"",
                Some("a"),
                "cron",
                "both",
            ),
            ("name = \"a\"\nevery = \"1s\"", Some("a"), "task", "missing"),
            ("task = \"t\"\nevery = \"1s\"", None, "name", "missing"),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\nargs = 3",
                Some("a"),
                "args",
                "list",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\nkwargs = [1]",
                Some("a"),
                "kwargs",
                "table",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\npriority = 12",
                Some("a"),
                "priority",
                "0-9",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\nqueue = \"\"",
                Some("a"),
                "queue",
                "empty",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\nexpires = \"soon\"",
                Some("a"),
                "expires",
                "invalid duration",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevery = \"1s\"\ncatch_up = \"some\"",
                Some("a"),
                "catch_up",
                "one",
            ),
            (
                "name = \"a\"\ntask = \"t\"\nevry = \"1s\"",
                Some("a"),
                "evry",
                "not a field",
            ),
        ];
        for (body, entry, field, needle) in cases {
            let e = refused(&format!("[[entry]]\n{body}\n"));
            let text = e.to_string();
            assert_eq!(e.entry(), *entry, "{text}");
            assert_eq!(e.field(), Some(*field), "{text}");
            assert!(text.contains(needle), "{text} lacks {needle:?}");
            assert!(text.contains(&format!("field {field:?}")), "{text}");
            if let Some(name) = entry {
                assert!(text.contains(&format!("entry {name:?} (#1)")), "{text}");
            }
        }
    }

    #[test]
    fn file_level_mistakes() {
        let dup = refused(
            "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\n[[entry]]\nname = \"a\"\ntask = \"u\"\nevery = \"2s\"\n",
        );
        assert_eq!((dup.entry(), dup.field()), (Some("a"), Some("name")));
        assert!(dup.to_string().contains("(#2)"), "{dup}");
        assert!(refused("").to_string().contains("no [[entry]]"));
        assert!(
            refused("[entry]\nname = 1")
                .to_string()
                .contains("top-level")
        );
        assert!(
            refused("[[entry]\n")
                .to_string()
                .contains("not a valid TOML")
        );
        assert!(refused("name = \"x\"").to_string().contains("\"name\""));
        let read = Schedule::load(Path::new("/nonexistent/beat.toml")).unwrap_err();
        assert!(
            read.to_string()
                .starts_with("/nonexistent/beat.toml: cannot read"),
            "{read}"
        );
    }

    #[test]
    fn numbers_of_seconds_are_durations_too() {
        let s = Schedule::from_toml(
            "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = 2\nexpires = 1.5\n",
        )
        .unwrap();
        assert_eq!(s.entries()[0].timing().to_string(), "every 2s");
        assert_eq!(
            s.entries()[0].expires_after(),
            Some(Duration::from_millis(1500))
        );
    }
}
