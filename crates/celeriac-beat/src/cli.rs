//! The command-line glue: `celeriac beat` ([`BeatArgs`], [`run`]) and the
//! beat a worker embeds with `-B` ([`WorkerBeat`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::SecondsFormat;

use crate::message::now_ms;
use crate::{Beat, BeatBuilder, BeatError, BeatHandle, CatchUp, DEFAULT_GROUP, Schedule};

/// `celeriac beat`: run the schedule, or print its next run times.
#[derive(Debug, clap::Args)]
pub struct BeatArgs {
    /// The schedule file: TOML, one `[[entry]]` table per periodic task.
    #[arg(long, short = 's', env = "CELERIAC_BEAT_SCHEDULE", value_name = "FILE")]
    pub schedule: PathBuf,
    /// Print each entry's next run times and exit (the broker is not
    /// needed).
    #[arg(long)]
    pub list: bool,
    /// With --list: how many run times per entry.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub count: usize,
    /// The group, lease TTL and catch-up policy.
    #[command(flatten)]
    pub tuning: BeatTuning,
}

/// The settings `celeriac beat` and `celeriac worker -B` share.
#[derive(Debug, Clone, clap::Args)]
pub struct BeatTuning {
    /// The beat group: beats of one group on one broker elect one leader
    /// and share last runs. Give each distinct schedule its own group.
    #[arg(long, env = "CELERIAC_BEAT_GROUP", default_value = DEFAULT_GROUP, value_name = "NAME")]
    pub beat_group: String,
    /// The leader lease's TTL: a standby takes over at most this long
    /// (plus half a second) after the leader dies, even by kill -9.
    #[arg(long, default_value = "4s", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_ttl: Duration,
    /// What to do with runs missed while no beat led: `one` (run once, as
    /// Celery), `all` (run each), `none` (skip them). An entry's own
    /// `catch_up` wins.
    #[arg(long, default_value = "one", value_parser = parse_catch_up, value_name = "POLICY")]
    pub catch_up: CatchUp,
}

impl BeatTuning {
    fn builder(&self, schedule: Schedule) -> BeatBuilder {
        Beat::builder()
            .schedule(schedule)
            .group(self.beat_group.clone())
            .lock_ttl(self.lock_ttl)
            .catch_up(self.catch_up)
    }
}

/// `celeriac worker -B`: a beat inside the worker.
#[derive(Debug, clap::Args)]
pub struct WorkerBeat {
    /// Also run a beat in this worker, on the schedule of --schedule. It
    /// takes part in leader election, so every worker may have one.
    #[arg(short = 'B', long = "beat", requires = "schedule")]
    pub beat: bool,
    /// With -B: the schedule file (TOML, `[[entry]]` tables).
    #[arg(long, short = 's', env = "CELERIAC_BEAT_SCHEDULE", value_name = "FILE")]
    pub schedule: Option<PathBuf>,
    /// The group, lease TTL and catch-up policy.
    #[command(flatten)]
    pub tuning: BeatTuning,
}

impl WorkerBeat {
    /// Starts the beat on the current tokio runtime if `-B` was given.
    pub fn spawn(
        &self,
        broker_url: &str,
        backend_url: &str,
    ) -> Result<Option<BeatHandle>, BeatError> {
        let Some(path) = self.schedule.as_ref().filter(|_| self.beat) else {
            return Ok(None);
        };
        let schedule = Schedule::load(path)?;
        let beat = self
            .tuning
            .builder(schedule)
            .broker(broker_url)
            .result_backend(backend_url)
            .build()?;
        Ok(Some(beat.spawn()))
    }
}

/// Runs `celeriac beat` until SIGINT or SIGTERM, then gives the lease up;
/// or, with `--list`, prints the next run times. A malformed schedule is
/// an error that names the entry and the field.
pub async fn run(broker_url: &str, backend_url: &str, args: BeatArgs) -> Result<(), BeatError> {
    let schedule = Schedule::load(&args.schedule)?;
    if args.list {
        print!("{}", list(&schedule, args.count, now_ms()));
        return Ok(());
    }
    if broker_url.starts_with("memory://") {
        return Err(BeatError::Config(format!(
            "the broker {broker_url} lives inside one process, and a beat publishes for \
             other processes; use the default file broker (leave out --broker), \
             sqlite:///path.db or redis://"
        )));
    }
    let beat = args
        .tuning
        .builder(schedule)
        .broker(broker_url)
        .result_backend(backend_url)
        .build()?;
    beat.run_until(shutdown_signal()).await;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("beat: shutting down");
}

/// Each entry with its next `count` run times after `now_ms`, in its time
/// zone (and in UTC when that differs).
pub fn list(schedule: &Schedule, count: usize, now_ms: i64) -> String {
    let mut out = String::new();
    for e in schedule.entries() {
        let call = e.call();
        let _ = write!(out, "{}: {} {}", e.name(), call.name(), e.timing());
        if let Some(q) = &call.options().queue {
            let _ = write!(out, ", queue {q}");
        }
        if let Some(p) = e.catch_up_policy() {
            let _ = write!(out, ", catch-up {p}");
        }
        out.push('\n');
        let mut at = now_ms;
        for _ in 0..count {
            let Some(next) = e.timing().next_after(at) else {
                break;
            };
            at = next;
            let Some(local) = e.timing().local(next) else {
                break;
            };
            let _ = write!(
                out,
                "  {}",
                local.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
            if e.timing().time_zone() != chrono_tz::Tz::UTC {
                let utc = local.with_timezone(&chrono::Utc);
                let _ = write!(
                    out,
                    " ({})",
                    utc.to_rfc3339_opts(SecondsFormat::Millis, true)
                );
            }
            out.push('\n');
        }
    }
    out
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. \"4s\", \"500ms\")"))
}

fn parse_catch_up(s: &str) -> Result<CatchUp, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shows_the_next_runs_in_each_zone() {
        let s = Schedule::from_toml(
            r#"
            [[entry]]
            name = "tick"
            task = "celeriac.add"
            every = "10s"
            queue = "beats"

            [[entry]]
            name = "nightly"
            task = "reports.build"
            cron = "30 2 * * *"
            timezone = "Europe/Berlin"
            catch_up = "none"
            "#,
        )
        .unwrap();
        // 2026-03-28T12:00:00Z: the night after springs forward.
        let text = list(&s, 2, 1_774_699_200_000);
        assert_eq!(
            text,
            "tick: celeriac.add every 10s, queue beats\n  \
             2026-03-28T12:00:10.000Z\n  2026-03-28T12:00:20.000Z\n\
             nightly: reports.build cron \"30 2 * * *\" (Europe/Berlin), catch-up none\n  \
             2026-03-29T03:00:00.000+02:00 (2026-03-29T01:00:00.000Z)\n  \
             2026-03-30T02:30:00.000+02:00 (2026-03-30T00:30:00.000Z)\n"
        );
    }
}
