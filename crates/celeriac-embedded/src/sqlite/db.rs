//! The connection to the SQLite file, owned by one thread.
//!
//! A [`Db`] hands its statements to a thread of its own that holds the
//! connection, instead of a `spawn_blocking` hop (and a lock on the
//! connection) per call. Calls come in two kinds:
//!
//! - [`batched`]: statements that run inside the thread's transaction
//!   (`BEGIN IMMEDIATE`). Every batched call queued when the thread begins
//!   shares that one transaction, so one commit (one WAL append) serves
//!   them all, and each hears back only once it has committed. A call that
//!   fails is answered with its error and the others run again without it.
//! - [`blocking`]: a closure that gets the bare connection and opens its
//!   own transactions (schema changes, the rare calls).
//!
//! The thread ends, and the connection closes, when the last handle is
//! dropped.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use celeriac_core::BoxError;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::open::{OpenError, open_connection};
use super::wake::FileWatch;
use crate::url::SqliteOptions;

/// The most batched calls that share one transaction: a bound on how long
/// the first of them waits for its commit.
const MAX_BATCH: usize = 256;

/// Why a call on the database failed.
#[derive(Debug)]
pub(super) enum DbError {
    /// The call's own statements failed (and were rolled back).
    Sql(rusqlite::Error),
    /// The transaction the call was batched in could not begin or commit;
    /// nothing of the call was written.
    Batch(Arc<rusqlite::Error>),
    /// The call panicked, or the database thread is gone.
    Gone,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Sql(e) => e.fmt(f),
            DbError::Batch(e) => write!(f, "the batch transaction failed: {e}"),
            DbError::Gone => f.write_str("the database call panicked or its thread stopped"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sql(e) => Some(e),
            DbError::Batch(e) => Some(&**e),
            DbError::Gone => None,
        }
    }
}

/// A batched call: its statements, then its answer once the outcome of
/// the transaction is known.
trait WriteJob: Send {
    /// Runs the statements inside the open transaction; false if they
    /// failed (the caller rolls the transaction back). May run again, after
    /// another call's failure rolled back its first run.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers: the call's value if its statements ran and the transaction
    /// committed, else the error.
    fn finish(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>);
}

struct Pending<T, F> {
    f: F,
    /// The outcome of its last run.
    out: Option<rusqlite::Result<T>>,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<T, F> WriteJob for Pending<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        // Cleared first: a run that panics leaves no outcome.
        self.out = None;
        let out = (self.f)(conn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>) {
        let answer = match (self.out, committed) {
            (Some(Err(e)), _) => Err(DbError::Sql(e)),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(DbError::Batch(e)),
            // Its last run panicked: the reply is dropped unanswered.
            (None, Ok(())) => return,
        };
        let _ = self.reply.send(answer);
    }
}

type RunJob = Box<dyn FnOnce(&mut Connection) + Send>;

enum Job {
    Write(Box<dyn WriteJob>),
    Run(RunJob),
}

/// A handle on the thread that owns the connection to one file.
#[derive(Debug)]
pub(super) struct Db {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The database file, as the URL named it.
    pub(super) path: String,
    /// Other processes' commits to the file.
    pub(super) watch: FileWatch,
}

impl Db {
    /// Opens the file and starts its thread. `init` runs first, on the
    /// new connection, before any call (for what an opener reads once).
    pub(super) fn open_with_init<T>(
        opts: &SqliteOptions,
        init: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<(Arc<Self>, T), OpenError> {
        let conn = open_connection(opts)?;
        let first = init(&conn)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("celeriac-sqlite".to_string())
            .spawn(move || serve(conn, rx))
            .map_err(|e| OpenError::new("cannot start the database thread".to_string(), e))?;
        let db = Db {
            jobs: Some(tx),
            thread: Some(thread),
            path: opts.path.display().to_string(),
            watch: FileWatch::new(&opts.path),
        };
        Ok((Arc::new(db), first))
    }

    /// Opens the file and starts its thread.
    pub(super) fn open(opts: &SqliteOptions) -> Result<Arc<Self>, OpenError> {
        Self::open_with_init(opts, |_| Ok(())).map(|(db, ())| db)
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // A send fails only if the thread is gone: the job, and its
            // reply, are dropped, and the caller hears `Gone`.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Db {
    /// Closes the connection: the thread finishes what is queued, then
    /// ends. Waits for it, so that the file is closed when this returns
    /// (unless dropped on that thread itself).
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

/// The database thread: runs the calls in the order they came, batched
/// calls in shared transactions.
fn serve(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(job) => queue.push_back(job),
                Err(_) => return,
            }
        }
        while queue.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => queue.push_back(job),
                Err(_) => break,
            }
        }
        match queue.pop_front() {
            Some(Job::Run(f)) => {
                // A panic drops the reply: the caller hears `Gone`.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut conn)));
                if !conn.is_autocommit() {
                    // A panic left its transaction open.
                    let _ = conn.execute_batch("ROLLBACK");
                }
            }
            Some(Job::Write(first)) => {
                let mut writes = vec![first];
                while let Some(Job::Write(_)) = queue.front() {
                    if let Some(Job::Write(w)) = queue.pop_front() {
                        writes.push(w);
                    }
                }
                write_batch(&conn, writes);
            }
            None => {}
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs batched calls in one transaction, and answers each once it has
/// committed (or failed).
///
/// There are no savepoints: a savepoint makes SQLite copy every page a
/// call changes into a statement journal first, which cost a fifth of the
/// worker's CPU on W1. Instead a call that fails rolls the whole
/// transaction back, hears its error, and the others run again in a new
/// transaction (a batched call may run more than once; only its last run
/// is committed).
fn write_batch(conn: &Connection, mut jobs: Vec<Box<dyn WriteJob>>) {
    while !jobs.is_empty() {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
            let e = Arc::new(e);
            for job in jobs {
                job.finish(Err(e.clone()));
            }
            return;
        }
        let failed = jobs.iter_mut().position(|job| {
            !std::panic::catch_unwind(AssertUnwindSafe(|| job.run(conn))).unwrap_or(false)
        });
        let Some(at) = failed else {
            let committed = exec(conn, "COMMIT").map_err(Arc::new);
            if committed.is_err() && !conn.is_autocommit() {
                let _ = exec(conn, "ROLLBACK");
            }
            for job in jobs {
                job.finish(committed.clone());
            }
            return;
        };
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        // Its own error (or, if it panicked, no answer); the rest again.
        jobs.remove(at).finish(Ok(()));
    }
}

/// Waits for a call's answer: on the async executor when there is one,
/// else by blocking the calling thread.
async fn answer<T>(rx: oneshot::Receiver<Result<T, DbError>>) -> Result<T, DbError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        rx.await.unwrap_or(Err(DbError::Gone))
    } else {
        rx.blocking_recv().unwrap_or(Err(DbError::Gone))
    }
}

/// Runs `f` on the database thread with the bare connection (it opens its
/// own transactions). `map_err` builds the error from a context (empty for
/// the database's own errors) and the underlying error.
pub(super) async fn blocking<T, E, F>(
    db: &Arc<Db>,
    f: F,
    map_err: fn(&str, BoxError) -> E,
) -> Result<T, E>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    db.send(Job::Run(Box::new(move |conn| {
        let _ = reply.send(f(conn).map_err(DbError::Sql));
    })));
    answer(rx).await.map_err(|e| map_err("", e.into()))
}

/// Runs `f` on the database thread inside a write transaction shared with
/// the other calls queued meanwhile (`f` must not begin or end a
/// transaction itself); answers once that transaction has committed. `f`
/// may run more than once (when another call's failure rolled back the
/// transaction); only what its last run wrote is committed.
pub(super) async fn batched<T, E, F>(
    db: &Arc<Db>,
    f: F,
    map_err: fn(&str, BoxError) -> E,
) -> Result<T, E>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    db.send(Job::Write(Box::new(Pending {
        f,
        out: None,
        reply,
    })));
    answer(rx).await.map_err(|e| map_err("", e.into()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn storage(context: &str, e: BoxError) -> String {
        format!("{context}{e}")
    }

    /// Calls queued together share a transaction; one that fails is
    /// answered with its error and leaves nothing behind, and the others
    /// commit all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_batched_call_leaves_nothing_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::url::parse_sqlite_url(&format!("sqlite://{}/t.db", dir.path().display()))
            .unwrap();
        let db = Db::open(&opts).unwrap();
        blocking(
            &db,
            |c| c.execute_batch("CREATE TABLE t (v INTEGER UNIQUE)"),
            storage,
        )
        .await
        .unwrap();
        // Hold the thread, so that the calls below queue up behind it and
        // run in one transaction.
        let hold = blocking(
            &db,
            |_| {
                std::thread::sleep(Duration::from_millis(200));
                Ok(())
            },
            storage,
        );
        let insert = |vals: &'static [i64]| {
            batched(
                &db,
                move |c| {
                    for v in vals {
                        c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                    }
                    Ok(vals.len())
                },
                storage,
            )
        };
        // The second call writes 3, then fails on 1 (already written by
        // the first, in the same transaction).
        let (held, a, b, c) = tokio::join!(hold, insert(&[1, 2]), insert(&[3, 1]), insert(&[4]));
        held.unwrap();
        assert_eq!(a.unwrap(), 2);
        assert!(b.unwrap_err().contains("UNIQUE"));
        assert_eq!(c.unwrap(), 1);
        let rows: Vec<i64> = blocking(
            &db,
            |c| {
                c.prepare("SELECT v FROM t ORDER BY v")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            },
            storage,
        )
        .await
        .unwrap();
        assert_eq!(rows, vec![1, 2, 4], "nothing of the failed call");
    }

    /// A call that panics is answered `Gone`; the thread lives on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_does_not_stop_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::url::parse_sqlite_url(&format!("sqlite://{}/t.db", dir.path().display()))
            .unwrap();
        let db = Db::open(&opts).unwrap();
        let err = batched(&db, |_| -> rusqlite::Result<()> { panic!("boom") }, storage)
            .await
            .unwrap_err();
        assert!(err.contains("panicked"), "{err}");
        let v: i64 = batched(
            &db,
            |c| c.query_row("SELECT 41 + 1", [], |r| r.get(0)),
            storage,
        )
        .await
        .unwrap();
        assert_eq!(v, 42);
    }
}
