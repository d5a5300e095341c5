//! The broker and result-backend contract (`celeriac-testkit`), run against
//! `memory://` and `sqlite://`, plus what is specific to each.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::prelude::*;
use celeriac_embedded::{MemoryBackend, MemoryBroker, SqliteBackend, SqliteBroker};
use celeriac_testkit::{Fixture, LONG, id_of, out, q};

fn memory(lease: Duration) -> Fixture {
    let name = format!("contract-{}", uuid::Uuid::new_v4());
    let b = Arc::new(MemoryBroker::with_lease(&name, lease));
    let r = Arc::new(MemoryBackend::new());
    Fixture {
        broker: b.clone(),
        other: b,
        backend: r.clone(),
        other_backend: r,
        keep: None,
    }
}

fn sqlite(lease: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}/b.db?lease={}",
        dir.path().display(),
        lease.as_secs_f64()
    );
    Fixture {
        broker: SqliteBroker::open(&url).unwrap(),
        other: SqliteBroker::open(&url).unwrap(),
        backend: SqliteBackend::open(&url).unwrap(),
        other_backend: SqliteBackend::open(&url).unwrap(),
        keep: Some(Box::new(dir)),
    }
}

fn memory_beat() -> celeriac_testkit::beat_store::BeatFixture {
    let b = MemoryBroker::open(&format!("memory://beat-{}", uuid::Uuid::new_v4())).unwrap();
    celeriac_testkit::beat_store::BeatFixture {
        store: b.clone(),
        other: b.clone(),
        broker: b,
        keep: None,
    }
}

fn sqlite_beat() -> celeriac_testkit::beat_store::BeatFixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/beat.db", dir.path().display());
    celeriac_testkit::beat_store::BeatFixture {
        store: SqliteBroker::open(&url).unwrap(),
        other: SqliteBroker::open(&url).unwrap(),
        broker: SqliteBroker::open(&url).unwrap(),
        keep: Some(Box::new(dir)),
    }
}

celeriac_testkit::beat_store_contract!(memory_beat_store, super::memory_beat);
celeriac_testkit::beat_store_contract!(sqlite_beat_store, super::sqlite_beat);
celeriac_testkit::broker_contract!(memory_broker, super::memory);
celeriac_testkit::broker_contract!(sqlite_broker, super::sqlite);
celeriac_testkit::chord_join_contract!(memory_chord_join, super::memory);
celeriac_testkit::chord_join_contract!(sqlite_chord_join, super::sqlite);
celeriac_testkit::settle_together_contract!(sqlite_settle_together, super::sqlite);

#[test]
fn sqlite_settles_together_only_with_a_backend_on_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/one.db", dir.path().display());
    let broker = SqliteBroker::open(&url).unwrap();
    let same = SqliteBackend::open(&url).unwrap();
    // The same file by another spelling of its path.
    let spelled =
        SqliteBackend::open(&format!("sqlite://{}/./one.db", dir.path().display())).unwrap();
    let other = SqliteBackend::open(&format!("sqlite://{}/two.db", dir.path().display())).unwrap();
    let memory = MemoryBackend::new();
    assert!(broker.settle_with(same.as_ref()).is_some());
    assert!(broker.settle_with(spelled.as_ref()).is_some());
    assert!(broker.settle_with(other.as_ref()).is_none());
    assert!(broker.settle_with(&memory).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_messages_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/durable.db", dir.path().display());
    let (o, id) = out("celery", 0, None);
    {
        let b = SqliteBroker::open(&url).unwrap();
        b.publish(o).await.unwrap();
        b.close();
    }
    let b = SqliteBroker::open(&url).unwrap();
    let got = b.claim("w", &q(&["celery"]), 1, LONG).await.unwrap();
    assert_eq!(id_of(&got[0]), id);
}

#[test]
fn named_memory_instances_are_shared_private_ones_are_not() {
    let a = MemoryBroker::open("memory://shared-test").unwrap();
    let b = MemoryBroker::open("memory://shared-test").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let p1 = MemoryBroker::open("memory://").unwrap();
    let p2 = MemoryBroker::open("memory://").unwrap();
    assert!(!Arc::ptr_eq(&p1, &p2));
}
