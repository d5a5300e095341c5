//! # celeriac-beat
//!
//! Periodic tasks, safe to run on every node: `celeriac beat` (and
//! `celeriac worker -B`). Python's `celery beat` must run as exactly one
//! process, or every task is sent twice. Here every beat of a **group**
//! asks the broker for the group's lease; the one holding it (the leader)
//! publishes, the others stand by and take over within the lease's TTL
//! when it dies, even by `kill -9`.
//!
//! - **The lease carries a fencing token**, and the publish is checked
//!   against it in the same atomic step as it happens (a Lua script on
//!   Redis, a transaction on SQLite), so a beat that lost the lease cannot
//!   publish. See [`BeatStore`].
//! - **Durable last runs.** That same step records each entry's slot, and
//!   a slot not later than the recorded one is never published again: a
//!   restart neither re-runs a slot nor, with [`CatchUp::All`], skips one.
//!   Missed runs follow the entry's [`CatchUp`] policy (`one` by default).
//! - **Messages** are Celery protocol v2 with the `celery_beat_task`
//!   header, as Python's beat sends them: Python workers run what a
//!   celeriac beat publishes.
//! - **Slots** are computed by every beat alike: intervals on a grid from
//!   the unix epoch, cron expressions in a time zone with croner's
//!   daylight-saving rules ([`Timing`]).
//!
//! On RabbitMQ, which has no shared store, the lease and the last runs
//! live in the result store (Redis or SQLite); the runs are recorded there
//! and then published to the broker, two steps, so a beat killed between
//! them loses that one run rather than doubling it.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use celeriac_beat::{Beat, Entry};
//! use celeriac_core::Call;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let beat = Beat::builder()
//!     .broker("memory://beat-doc")
//!     .entry(Entry::every("tick", Duration::from_millis(100), Call::<i64>::new("celeriac.add").arg(1).arg(2)).unwrap())
//!     .lock_ttl(Duration::from_secs(1))
//!     .build()
//!     .unwrap();
//! let handle = beat.spawn();
//! tokio::time::sleep(Duration::from_millis(450)).await;
//! assert!(handle.is_leader());
//! handle.stop().await;
//! # });
//! ```

mod catch_up;
pub mod cli;
mod message;
mod schedule;
mod schedule_file;
mod scheduler;
mod timing;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use celeriac_core::broker::BeatStore;
use celeriac_core::{Broker, BrokerError};
use tokio::sync::watch;

pub use catch_up::CatchUp;
pub use message::{BEAT_HEADER, MessageError, SLOT_HEADER};
pub use schedule::{Entry, Schedule};
pub use schedule_file::ScheduleError;
pub use scheduler::ON_TIME;
pub use timing::{Timing, TimingError};

use scheduler::{Config, Scheduler, Shared};

/// The lease's default TTL: a standby takes over at most this long (plus
/// a poll of half a second) after the leader dies.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(4);

/// The default group: beats of one group on one broker elect one leader
/// and share their last runs.
pub const DEFAULT_GROUP: &str = "default";

/// A beat could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeatError {
    /// The schedule is malformed; the message names the entry and field.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The broker or the store of the lease could not be opened.
    #[error("{context}")]
    Broker {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: BrokerError,
    },
    /// A setting is out of range or missing.
    #[error("{0}")]
    Config(String),
}

/// A periodic scheduler, ready to run; build it with [`Beat::builder`].
#[derive(Debug)]
pub struct Beat {
    scheduler: Scheduler,
    shared: Arc<Shared>,
}

impl Beat {
    /// A builder: a broker (or a store), the entries, and the group, lease
    /// TTL and catch-up policy.
    pub fn builder() -> BeatBuilder {
        BeatBuilder::default()
    }

    /// Runs until `shutdown` completes, then gives the lease up so that a
    /// standby takes over at once.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) {
        let (tx, rx) = watch::channel(false);
        let run = self.scheduler.run(rx);
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => return,
            _ = shutdown => {}
        }
        let _ = tx.send(true);
        run.await;
    }

    /// Runs on the current tokio runtime until [`BeatHandle::stop`].
    pub fn spawn(self) -> BeatHandle {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(self.scheduler.run(rx));
        BeatHandle {
            stop: tx,
            task,
            shared: self.shared,
        }
    }
}

/// A running beat.
#[derive(Debug)]
pub struct BeatHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl BeatHandle {
    /// Whether this beat holds its group's lease now.
    pub fn is_leader(&self) -> bool {
        self.fencing_token().is_some()
    }

    /// The fencing token this beat holds, if it is leader.
    pub fn fencing_token(&self) -> Option<u64> {
        match self.shared.token.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    /// How many messages this beat has published.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::SeqCst)
    }

    /// Stops the beat and gives its lease up.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Builds a [`Beat`].
///
/// A beat needs a place for its lease and last runs: a broker URL
/// ([`broker`](Self::broker): `redis://`, `sqlite://`, `memory://NAME`; or
/// `amqp://` with a Redis or SQLite [`result_backend`](Self::result_backend))
/// or a [`BeatStore`] ([`store`](Self::store)).
#[derive(Debug)]
pub struct BeatBuilder {
    broker: Option<String>,
    backend: Option<String>,
    store: Option<Arc<dyn BeatStore>>,
    relay: Option<Arc<dyn Broker>>,
    schedule: Schedule,
    error: Option<ScheduleError>,
    group: String,
    lock_ttl: Duration,
    catch_up: CatchUp,
}

impl Default for BeatBuilder {
    fn default() -> Self {
        BeatBuilder {
            broker: None,
            backend: None,
            store: None,
            relay: None,
            schedule: Schedule::default(),
            error: None,
            group: DEFAULT_GROUP.to_string(),
            lock_ttl: DEFAULT_LOCK_TTL,
            catch_up: CatchUp::default(),
        }
    }
}

impl BeatBuilder {
    /// The broker to publish to, whose store holds the lease and last runs.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.broker = Some(url.into());
        self
    }

    /// The result backend: where the lease and last runs live when the
    /// broker is AMQP.
    pub fn result_backend(mut self, url: impl Into<String>) -> Self {
        self.backend = Some(url.into());
        self
    }

    /// An open store for the lease, last runs and fenced publish, instead
    /// of a broker URL.
    pub fn store(mut self, store: Arc<dyn BeatStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// With [`store`](Self::store): record runs in the store, then publish
    /// their messages to `broker` (as on AMQP) instead of publishing
    /// through the store.
    pub fn relay(mut self, broker: Arc<dyn Broker>) -> Self {
        self.relay = Some(broker);
        self
    }

    /// Replaces the entries with a schedule's.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Adds an entry (a duplicate name fails [`build`](Self::build)).
    pub fn entry(mut self, entry: Entry) -> Self {
        if let Err(e) = self.schedule.push(entry) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// The group (default [`DEFAULT_GROUP`]): beats of one group on one
    /// broker elect one leader and share their last runs, so give each
    /// distinct schedule its own group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The lease's TTL (default [`DEFAULT_LOCK_TTL`], at least 100 ms): how
    /// long after the leader's last renewal a standby may take over.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// The catch-up policy of entries that set none (default
    /// [`CatchUp::One`]).
    pub fn catch_up(mut self, policy: CatchUp) -> Self {
        self.catch_up = policy;
        self
    }

    /// Checks the settings and opens the store.
    pub fn build(self) -> Result<Beat, BeatError> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        if self.schedule.entries().is_empty() {
            return Err(BeatError::Config("the schedule has no entries".into()));
        }
        if self.group.is_empty() {
            return Err(BeatError::Config("the group name is empty".into()));
        }
        if self.lock_ttl < Duration::from_millis(100) {
            return Err(BeatError::Config(format!(
                "the lock TTL must be at least 100ms, got {:?}",
                self.lock_ttl
            )));
        }
        let (store, relay) = match (self.store, &self.broker) {
            (Some(store), _) => (store, self.relay),
            (None, Some(url)) => open_store(url, self.backend.as_deref())?,
            (None, None) => {
                return Err(BeatError::Config(
                    "no broker: give the beat a broker URL or a store".into(),
                ));
            }
        };
        let shared = Arc::new(Shared::default());
        let cfg = Config {
            group: self.group,
            lock_ttl: self.lock_ttl,
            catch_up: self.catch_up,
            schedule: self.schedule,
        };
        Ok(Beat {
            scheduler: Scheduler::new(cfg, store, relay, shared.clone()),
            shared,
        })
    }
}

/// The store for a broker URL, and on AMQP the broker to relay to.
type Opened = (Arc<dyn BeatStore>, Option<Arc<dyn Broker>>);

fn open_store(broker: &str, backend: Option<&str>) -> Result<Opened, BeatError> {
    let amqp = matches!(broker.split("://").next(), Some("amqp" | "amqps"));
    if !amqp {
        let store =
            celeriac_connect::open_beat_store(broker).map_err(|source| BeatError::Broker {
                context: "opening the beat's lease store on the broker".into(),
                source,
            })?;
        return Ok((store, None));
    }
    let backend = backend.filter(|b| !b.starts_with("amqp")).ok_or_else(|| {
        BeatError::Config(
            "a beat on an AMQP broker keeps its lease and last runs in the result store: \
             give a redis:// or sqlite:// result backend"
                .into(),
        )
    })?;
    let store = celeriac_connect::open_beat_store(backend).map_err(|source| BeatError::Broker {
        context: "opening the beat's lease store on the result backend".into(),
        source,
    })?;
    let relay = celeriac_connect::open_broker(broker).map_err(|source| BeatError::Broker {
        context: "opening the broker".into(),
        source,
    })?;
    Ok((store, Some(relay)))
}
