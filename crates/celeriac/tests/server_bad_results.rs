//! The job server reads results other processes stored; a stored runtime
//! that is negative, or too large for a `Duration`, must not panic its
//! statistics.

use std::sync::Arc;
use std::time::Duration;

use celeriac::{Call, ResultBackend, ResultMeta, Server, SqliteBackend};
use serde_json::{Value, json};

#[test]
fn stats_survive_a_stored_runtime_that_is_negative_or_huge() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shared.db", dir.path().display());
    let client = Server::builder().broker(&url).workers(0).build().unwrap();
    let backend: Arc<SqliteBackend> = SqliteBackend::open(&url).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (id, runtime) in [("neg", -5.0), ("huge", 1e300)] {
        let job = client.submit(Call::<Value>::new("t.remote").task_id(id));
        let mut meta = ResultMeta::success(id, json!(id));
        meta.runtime = Some(runtime);
        meta.worker = Some("hostile@node".into());
        rt.block_on(backend.store(&meta)).unwrap();
        assert_eq!(
            job.wait_timeout(Duration::from_secs(60)).unwrap(),
            json!(id)
        );
    }
    let stats = client.stats();
    let node = stats
        .nodes
        .iter()
        .find(|n| n.node == "hostile@node")
        .expect("the node is counted");
    assert_eq!(node.jobs, 2);
    assert!(!stats.to_string().is_empty());
}
