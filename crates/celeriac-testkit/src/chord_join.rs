//! The chord-join contract ([`ChordJoin`]): what every result backend with
//! a join keeps, whatever stores it (Redis keys, one SQLite transaction, one
//! in-memory critical section). Run with
//! [`chord_join_contract!`](crate::chord_join_contract) against the same
//! fixtures as the broker contract.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use celeriac_core::time::unix_now;
use celeriac_core::{ChordJoin, PartReturn, ResultBackend};
use serde_json::{Value, json};

use crate::{Fixture, LONG};

/// A group id no other test uses.
pub fn fresh_group() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "g-{}-{}-{}",
        std::process::id(),
        unix_now(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The join of a backend that must have one.
pub fn join(backend: &dyn ResultBackend) -> &dyn ChordJoin {
    backend
        .chord_join()
        .unwrap_or_else(|| panic!("{} has no chord join", backend.url()))
}

/// Celery's part record `[1, id, state, result]` of header task `h<i>`.
pub fn part(i: u64, result: Value) -> Value {
    json!([1, format!("h{i}"), "SUCCESS", result])
}

/// Returns part `i` (task `h<i>`, index `i`, result `i * 10`).
async fn ret(j: &dyn ChordJoin, g: &str, i: u64) -> Option<Vec<Value>> {
    j.part_return(g, &format!("h{i}"), Some(i), &part(i, json!(i * 10)))
        .await
        .unwrap()
}

/// Contract: `chord_join_one_winner_in_index_order`.
pub async fn chord_join_one_winner_in_index_order(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, b) = (join(&*f.backend), join(&*f.other_backend));
    let g = fresh_group();
    a.set_size(&g, 3).await.unwrap();
    assert_eq!(ret(a, &g, 2).await, None, "1 of 3");
    assert_eq!(ret(b, &g, 0).await, None, "2 of 3, through another handle");
    let parts = ret(a, &g, 1)
        .await
        .expect("the last part completes the chord");
    assert_eq!(
        parts,
        vec![part(0, json!(0)), part(1, json!(10)), part(2, json!(20))],
        "every part, in group_index order"
    );
}

/// Contract: `chord_join_redelivered_part_counts_once`.
pub async fn chord_join_redelivered_part_counts_once(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, b) = (join(&*f.backend), join(&*f.other_backend));
    let g = fresh_group();
    a.set_size(&g, 3).await.unwrap();
    assert_eq!(ret(a, &g, 0).await, None);
    // Its worker died after the join and before the ack: it runs again,
    // perhaps with another result, and returns again.
    let again = b
        .part_return(&g, "h0", Some(0), &part(0, json!("second run")))
        .await
        .unwrap();
    assert_eq!(again, None, "a redelivered part is not counted twice");
    assert_eq!(ret(b, &g, 1).await, None, "2 of 3, not 3 of 3");
    let parts = ret(a, &g, 2).await.expect("3 of 3");
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], part(0, json!(0)), "the first record of h0 stays");
}

/// Contract: `chord_join_parts_before_the_size_wait_for_it`.
pub async fn chord_join_parts_before_the_size_wait_for_it(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let a = join(&*f.backend);
    let g = fresh_group();
    // Celery's client records the size just before its last header: the
    // first ones may finish before that.
    assert_eq!(ret(a, &g, 0).await, None);
    assert_eq!(ret(a, &g, 1).await, None, "no size yet: no winner");
    a.set_size(&g, 3).await.unwrap();
    assert_eq!(ret(a, &g, 2).await.map(|p| p.len()), Some(3));
}

/// Contract: `chord_join_finished_chord_ignores_late_parts`.
pub async fn chord_join_finished_chord_ignores_late_parts(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, b) = (join(&*f.backend), join(&*f.other_backend));
    let g = fresh_group();
    a.set_size(&g, 2).await.unwrap();
    assert_eq!(ret(a, &g, 0).await, None);
    assert!(ret(a, &g, 1).await.is_some());
    a.finish(&g).await.unwrap();
    assert_eq!(ret(b, &g, 1).await, None, "a redelivered last part");
    assert_eq!(ret(b, &g, 5).await, None, "a late extra part");
    // The same id sent again as a new chord: the client clears the mark.
    b.set_size(&g, 1).await.unwrap();
    assert_eq!(
        ret(a, &g, 0).await,
        Some(vec![part(0, json!(0))]),
        "a new chord of the same id starts empty and completes"
    );
}

/// Contract: `chord_join_abandoned_chord_never_completes`.
pub async fn chord_join_abandoned_chord_never_completes(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, b) = (join(&*f.backend), join(&*f.other_backend));
    let g = fresh_group();
    a.set_size(&g, 2).await.unwrap();
    assert_eq!(ret(a, &g, 0).await, None);
    b.abandon(&g).await.unwrap();
    assert_eq!(ret(a, &g, 1).await, None, "a failed part abandoned it");
}

/// Contract: `chord_join_a_part_without_an_index_sorts_last`.
pub async fn chord_join_a_part_without_an_index_sorts_last(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let a = join(&*f.backend);
    let g = fresh_group();
    a.set_size(&g, 2).await.unwrap();
    let loose = json!([1, "x", "SUCCESS", "no index"]);
    assert_eq!(a.part_return(&g, "x", None, &loose).await.unwrap(), None);
    let parts = ret(a, &g, 7).await.unwrap();
    assert_eq!(parts, vec![part(7, json!(70)), loose]);
}

/// Contract: `chord_join_concurrent_parts_make_exactly_one_winner`.
pub async fn chord_join_concurrent_parts_make_exactly_one_winner(make: fn(Duration) -> Fixture) {
    const N: u64 = 64;
    let f = make(LONG);
    let backends: [Arc<dyn ResultBackend>; 2] = [f.backend.clone(), f.other_backend.clone()];
    for round in 0..3 {
        let g = fresh_group();
        join(&*f.backend).set_size(&g, N).await.unwrap();
        let mut tasks = Vec::new();
        // Every part once, and every fourth one twice more (redelivered),
        // from both handles at once.
        for i in (0..N).chain((0..N).step_by(4)).chain((0..N).step_by(4)) {
            let b = backends[((i + round) % 2) as usize].clone();
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                let j = join(&*b);
                ret(j, &g, i).await
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(parts) = t.await.unwrap() {
                winners.push(parts);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one winner, round {round}");
        let parts = &winners[0];
        assert_eq!(parts.len() as u64, N, "no part counted twice");
        let ids: Vec<&str> = parts.iter().map(|p| p[1].as_str().unwrap()).collect();
        let want: Vec<String> = (0..N).map(|i| format!("h{i}")).collect();
        assert_eq!(ids, want, "in group_index order");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len() as u64, N);
    }
}

/// Contract: `chord_join_many_parts_in_one_call`.
pub async fn chord_join_many_parts_in_one_call(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let (a, b) = (join(&*f.backend), join(&*f.other_backend));
    let g = fresh_group();
    a.set_size(&g, 5).await.unwrap();
    let records: Vec<(String, Value)> = (0..5)
        .map(|i| (format!("h{i}"), part(i, json!(i * 10))))
        .collect();
    let many = |idx: &[u64]| -> Vec<PartReturn<'_>> {
        idx.iter()
            .map(|&i| PartReturn {
                task_id: &records[i as usize].0,
                group_index: Some(i),
                part: &records[i as usize].1,
            })
            .collect()
    };
    assert_eq!(
        a.part_return_many(&g, &many(&[3, 0])).await.unwrap(),
        None,
        "2 of 5"
    );
    // h0 again (redelivered) with h1 and h1 twice in one call: 4 of 5.
    assert_eq!(
        b.part_return_many(&g, &many(&[0, 1, 1])).await.unwrap(),
        None,
        "a part is counted once, within a call and across calls"
    );
    assert_eq!(a.part_return_many(&g, &[]).await.unwrap(), None);
    let all = b
        .part_return_many(&g, &many(&[4, 2]))
        .await
        .unwrap()
        .expect("the call whose parts complete the chord wins");
    assert_eq!(
        all,
        (0..5).map(|i| part(i, json!(i * 10))).collect::<Vec<_>>(),
        "every part once, in group_index order"
    );
    assert_eq!(
        a.part_return_many(&g, &many(&[2])).await.unwrap(),
        None,
        "one winner"
    );
}

/// Runs every chord-join contract function against fixtures made by
/// `$make`, one `#[tokio::test]` each, in a module called `$module`.
#[macro_export]
macro_rules! chord_join_contract {
    ($module:ident, $make:path) => {
        mod $module {
            $crate::chord_join_contract!(@tests $make;
                chord_join_one_winner_in_index_order,
                chord_join_redelivered_part_counts_once,
                chord_join_parts_before_the_size_wait_for_it,
                chord_join_finished_chord_ignores_late_parts,
                chord_join_abandoned_chord_never_completes,
                chord_join_a_part_without_an_index_sorts_last,
                chord_join_concurrent_parts_make_exactly_one_winner,
                chord_join_many_parts_in_one_call,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::chord_join::$name($make).await
            }
        )*
    };
}
