//! Opening the SQLite file: the schema, WAL mode, the pragmas, and the
//! file's private mode.

use std::time::Duration;

use celeriac_core::{BackendError, BoxError, BrokerError};
use rusqlite::Connection;

use super::chord;
use crate::url::SqliteOptions;

/// Pages of write-ahead log (4 KiB each) after which a commit
/// checkpoints it into the database file.
const WAL_CHECKPOINT_PAGES: u32 = 8000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    tag TEXT NOT NULL,
    task_id TEXT NOT NULL DEFAULT '',
    payload BLOB NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    consumer TEXT,
    claim_token TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages(queue, priority, id);
CREATE INDEX IF NOT EXISTS messages_visible ON messages(queue, visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    meta TEXT NOT NULL,
    expires_at REAL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_seq ON results(seq);
CREATE TABLE IF NOT EXISTS group_results (
    group_id TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_limits (
    key TEXT PRIMARY KEY,
    tat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked (
    task_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS terminations (
    task_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    concurrency INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sent_at REAL NOT NULL,
    routing_key TEXT NOT NULL,
    hostname TEXT NOT NULL,
    body BLOB NOT NULL
);
";

/// Why a database file could not be opened: what was being done (empty if
/// the error says it all), and the underlying error if there is one.
#[derive(Debug)]
pub(super) struct OpenError {
    context: String,
    source: Option<BoxError>,
}

impl OpenError {
    pub(super) fn new(context: String, source: impl Into<BoxError>) -> Self {
        OpenError {
            context,
            source: Some(source.into()),
        }
    }

    pub(super) fn into_broker(self) -> BrokerError {
        BrokerError::Connection {
            context: self.context,
            source: self.source,
        }
    }

    pub(super) fn into_backend(self) -> BackendError {
        BackendError::Connection {
            context: self.context,
            source: self.source,
        }
    }
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::new(String::new(), e)
    }
}

pub(super) fn open_connection(opts: &SqliteOptions) -> Result<Connection, OpenError> {
    if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if opts.create_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| OpenError::new(format!("cannot create {}", dir.display()), e))?;
        } else if !dir.is_dir() {
            return Err(OpenError {
                context: format!(
                    "directory {} does not exist (only the default location's directory is created; check the path or create it)",
                    dir.display()
                ),
                source: None,
            });
        }
    }
    create_private(&opts.path)?;
    let conn = Connection::open(&opts.path)
        .map_err(|e| OpenError::new(format!("cannot open {}", opts.path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Switching a new file to WAL needs exclusive access. When another
    // process opens the same new file at that moment, SQLite may leave the
    // mode unchanged (or report busy) instead of waiting, so retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mode = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0));
        match mode {
            Ok(m) if m.eq_ignore_ascii_case("wal") => break,
            other if std::time::Instant::now() >= deadline => {
                let context = format!("{} cannot use WAL mode", opts.path.display());
                return Err(match other {
                    Err(e) => OpenError::new(context, e),
                    Ok(mode) => OpenError {
                        context: format!("{context}: journal mode is {mode:?}"),
                        source: None,
                    },
                });
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let sync = if opts.full_sync { "FULL" } else { "NORMAL" };
    // Checkpoints (copying the log into the file, with two fsyncs) every
    // WAL_CHECKPOINT_PAGES pages of log instead of SQLite's 1,000: a
    // message's rows are written and deleted within seconds, so a longer
    // log copies each hot page once for more commits.
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF; \
         PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES};"
    ))?;
    // Several processes may create the schema at once; IF NOT EXISTS inside
    // an immediate transaction makes that safe.
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA} {} COMMIT;",
        chord::CHORD_SCHEMA
    ))?;
    // Files made before messages carried their task id.
    let has_task_id: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'task_id'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    if !has_task_id {
        conn.execute_batch("ALTER TABLE messages ADD COLUMN task_id TEXT NOT NULL DEFAULT ''")
            .or_else(|e| {
                // Another process may have added it meanwhile.
                if e.to_string().contains("duplicate column") {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
    }
    Ok(conn)
}

/// Creates the database file, if it does not exist yet, readable and
/// writable by its owner only (0600): SQLite gives its `-wal` and `-shm`
/// files the database file's mode, so they are private too. An existing
/// file keeps its mode.
fn create_private(path: &std::path::Path) -> Result<(), OpenError> {
    if path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(OpenError::new(
            format!("cannot create {}", path.display()),
            e,
        )),
    }
}
