//! The SQLite broker's files: private to their owner, and never created in
//! a directory the URL names but that does not exist (a typo would put
//! tasks where no worker looks).

use std::os::unix::fs::PermissionsExt;

use celeriac_core::{Message, Outgoing, Transport};
use celeriac_embedded::{SqliteBackend, SqliteBroker, parse_sqlite_url};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_database_and_its_wal_and_shm_files_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let broker = SqliteBroker::open(&format!("sqlite://{}", db.display())).unwrap();
    let msg = Message::new("t", vec![], Default::default());
    broker
        .publish(Outgoing::from_message(&msg).unwrap())
        .await
        .unwrap();
    // While the broker is open, the WAL and shared-memory files exist.
    for name in ["q.db", "q.db-wal", "q.db-shm"] {
        assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
    }
    drop(broker);
    // The backend opening a new file does the same.
    let results = dir.path().join("r.db");
    let _backend = SqliteBackend::open(&format!("sqlite://{}", results.display())).unwrap();
    assert_eq!(mode(&results), 0o600);
}

#[test]
fn an_existing_file_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    let _broker = SqliteBroker::open(&format!("sqlite://{}", db.display())).unwrap();
    assert_eq!(mode(&db), 0o640);
}

#[test]
fn a_path_in_a_missing_directory_is_an_error_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("tpyo").join("q.db");
    let url = format!("sqlite://{}", typo.display());
    let err = SqliteBroker::open(&url).unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("tpyo"),
        "{err}"
    );
    let err = SqliteBackend::open(&url).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        !typo.parent().unwrap().exists(),
        "the directory was created"
    );

    // The default location may create its own directory.
    let mut opts = parse_sqlite_url(&url).unwrap();
    assert!(!opts.create_dir);
    opts.create_dir = true;
    SqliteBroker::open_with(&opts).unwrap();
    assert!(typo.exists());
}

#[test]
fn unknown_options_and_impossible_leases_are_errors() {
    for url in [
        "sqlite:///tmp/q.db?bogus=1",
        "sqlite:///tmp/q.db?lease=1e30",
        "sqlite:///tmp/q.db?lease=0",
        "sqlite:///tmp/q.db?lease=nan",
    ] {
        let err = SqliteBroker::open(url).unwrap_err().to_string();
        assert!(err.contains("invalid broker url"), "{url}: {err}");
    }
}

/// A claim waiting on an idle queue reads only the database's version
/// between attempts; it must still wake for a publish by another handle on
/// the file (another process), for a message whose eta comes due, and for
/// a lapsed lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_claim_still_sees_other_processes_etas_and_lapsed_leases() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?lease=1", dir.path().join("q.db").display());
    let waiting = SqliteBroker::open(&url).unwrap();
    let other = SqliteBroker::open(&url).unwrap();
    let queues = ["celery".to_string()];

    // Another handle publishes while the claim waits (it has long gone idle).
    let publisher = tokio::spawn({
        let other = other.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let msg = Message::new("t.other", vec![], Default::default());
            other
                .publish(Outgoing::from_message(&msg).unwrap())
                .await
                .unwrap();
        }
    });
    let started = Instant::now();
    let got = waiting
        .claim("w", &queues, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "another process's publish wakes the claim");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    publisher.await.unwrap();

    // A lapsed lease: the claimed message comes back after 1 s to a claim
    // that is already waiting, with nobody committing anything.
    let again = waiting
        .claim("w2", &queues, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the lapsed lease is seen");
    assert!(again[0].redelivered);
    waiting.ack(&again[0]).await.unwrap();

    // An eta that comes due while the claim waits.
    let mut msg =
        Outgoing::from_message(&Message::new("t.eta", vec![], Default::default())).unwrap();
    msg.eta = Some(celeriac_core::time::unix_now() + 1.0);
    other.publish(msg).await.unwrap();
    let started = Instant::now();
    let due = waiting
        .claim("w3", &queues, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "the eta message is claimed when due");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before its eta"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
