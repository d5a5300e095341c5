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
