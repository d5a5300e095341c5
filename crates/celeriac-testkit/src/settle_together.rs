//! The settle-together contract ([`SettleTogether`]): what a broker that
//! stores results, joins chord parts and acks messages in one step keeps,
//! whatever its store (one Redis script, one SQLite transaction). Run with
//! [`settle_together_contract!`](crate::settle_together_contract) against
//! fixtures whose broker and backend share a store (the broker must offer
//! the joint settle for them).

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::{Fate, Finished, SettleTogether};
use celeriac_core::{BrokerError, Delivery, PartReturn, ResultMeta, State};
use serde_json::{Value, json};

use crate::chord_join::{fresh_group, join, part};
use crate::{Fixture, LONG, SHORT, out};

/// The joint settle the fixture's broker offers for its backend.
pub fn joint(f: &Fixture) -> Arc<dyn SettleTogether> {
    f.broker.settle_with(f.backend.as_ref()).unwrap_or_else(|| {
        panic!(
            "{} offers no joint settle with {}",
            f.broker.url(),
            f.backend.url()
        )
    })
}

/// Publishes `n` messages on `queue` and claims them all.
async fn claimed(f: &Fixture, queue: &str, n: usize) -> Vec<Delivery> {
    let mut outs = Vec::new();
    for _ in 0..n {
        outs.push(out(queue, 0, None).0);
    }
    f.broker.publish_batch(outs).await.unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let more = f
            .broker
            .claim("w1", &[queue.to_string()], n - got.len(), LONG)
            .await
            .unwrap();
        assert!(!more.is_empty(), "claimed {} of {n}", got.len());
        got.extend(more);
    }
    got
}

/// A part of chord `g`: task `h<i>`, index `i`.
fn part_of<'a>(
    g: &'a str,
    ids: &'a [String],
    records: &'a [Value],
    i: usize,
) -> (&'a str, PartReturn<'a>) {
    (
        g,
        PartReturn {
            task_id: &ids[i],
            group_index: Some(i as u64),
            part: &records[i],
        },
    )
}

/// The ids `h0`, `h1`, ... and the part records of a chord of `n`.
fn chord_parts(n: usize) -> (Vec<String>, Vec<Value>) {
    let ids = (0..n).map(|i| format!("h{i}")).collect();
    let records = (0..n as u64).map(|i| part(i, json!(i * 10))).collect();
    (ids, records)
}

/// Contract: `settle_together_stores_then_acks`.
pub async fn settle_together_stores_then_acks(make: fn(Duration) -> Fixture) {
    let f = make(Duration::from_secs(1));
    let joint = joint(&f);
    let got = claimed(&f, "joint", 3).await;
    let ok = ResultMeta::success("r-ok", json!(42));
    let failed = ResultMeta::failure("r-failed", &celeriac_core::TaskError::new("no"));
    let batch = [
        Finished {
            meta: Some(&ok),
            part: None,
            delivery: &got[0],
        },
        Finished {
            meta: Some(&failed),
            part: None,
            delivery: &got[1],
        },
        // A task whose result is ignored: only acked.
        Finished {
            meta: None,
            part: None,
            delivery: &got[2],
        },
    ];
    let settled = joint.settle_together(&batch).await.unwrap();
    assert_eq!(settled.fates, vec![Fate::Acked; 3]);
    assert!(settled.completed.is_empty());
    let stored = f.other_backend.get("r-ok").await.unwrap().expect("stored");
    assert_eq!((stored.status, stored.result), (State::Success, json!(42)));
    let stored = f
        .other_backend
        .get("r-failed")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.status, State::Failure);
    for d in &got {
        assert!(
            matches!(f.other.ack(d).await, Err(BrokerError::NotHeld(_))),
            "acked already"
        );
    }
    // Past the lease: nothing comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = f
        .other
        .claim("w2", &["joint".to_string()], 10, SHORT)
        .await
        .unwrap();
    assert!(again.is_empty(), "an acked message came back: {again:?}");
}

/// Contract: `settle_together_keeps_a_stored_success`.
pub async fn settle_together_keeps_a_stored_success(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let joint = joint(&f);
    let got = claimed(&f, "joint", 1).await;
    f.backend
        .store(&ResultMeta::success("r-kept", json!("first")))
        .await
        .unwrap();
    let second = ResultMeta::failure("r-kept", &celeriac_core::TaskError::new("later"));
    let batch = [Finished {
        meta: Some(&second),
        part: None,
        delivery: &got[0],
    }];
    let settled = joint.settle_together(&batch).await.unwrap();
    assert_eq!(settled.fates, vec![Fate::Acked]);
    let stored = f.backend.get("r-kept").await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.result),
        (State::Success, json!("first")),
        "a stored SUCCESS is never overwritten"
    );
}

/// Contract: `settle_together_holds_back_the_parts_that_complete_a_chord`.
pub async fn settle_together_holds_back_the_parts_that_complete_a_chord(
    make: fn(Duration) -> Fixture,
) {
    let f = make(LONG);
    let joint = joint(&f);
    let g = fresh_group();
    join(&*f.backend).set_size(&g, 3).await.unwrap();
    let (ids, records) = chord_parts(3);
    let got = claimed(&f, "joint", 4).await;
    let metas: Vec<ResultMeta> = (0..3)
        .map(|i| ResultMeta::success(&ids[i], json!(i * 10)))
        .collect();
    let first = [
        Finished {
            meta: Some(&metas[0]),
            part: Some(part_of(&g, &ids, &records, 0)),
            delivery: &got[0],
        },
        Finished {
            meta: None,
            part: None,
            delivery: &got[1],
        },
    ];
    let settled = joint.settle_together(&first).await.unwrap();
    assert_eq!(settled.fates, vec![Fate::Acked, Fate::Acked], "1 of 3");
    assert!(settled.completed.is_empty());
    let last = [
        Finished {
            meta: Some(&metas[2]),
            part: Some(part_of(&g, &ids, &records, 2)),
            delivery: &got[2],
        },
        Finished {
            meta: Some(&metas[1]),
            part: Some(part_of(&g, &ids, &records, 1)),
            delivery: &got[3],
        },
    ];
    let settled = joint.settle_together(&last).await.unwrap();
    assert_eq!(
        settled.fates,
        vec![Fate::HeldBack, Fate::HeldBack],
        "the parts that complete the chord stay held until its body is sent"
    );
    assert_eq!(settled.completed, vec![(g.clone(), records.clone())]);
    for i in [0, 1, 2] {
        let r = f.backend.get(&ids[i]).await.unwrap().expect("stored");
        assert_eq!(r.result, json!(i * 10));
    }
    // Held back means still held: the worker acks them after the body.
    f.broker.ack_many(&got[2..]).await.unwrap();
    assert!(matches!(
        f.broker.ack(&got[2]).await,
        Err(BrokerError::NotHeld(_))
    ));
}

/// Contract: `settle_together_counts_a_redelivered_part_once`.
pub async fn settle_together_counts_a_redelivered_part_once(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let joint = joint(&f);
    let g = fresh_group();
    let j = join(&*f.backend);
    j.set_size(&g, 3).await.unwrap();
    let (ids, records) = chord_parts(3);
    // h0 settled the separate way, and its worker died before the ack:
    // its result stored and its part joined.
    let first = ResultMeta::success(&ids[0], json!("first run"));
    f.backend.store(&first).await.unwrap();
    assert_eq!(
        j.part_return(&g, &ids[0], Some(0), &records[0])
            .await
            .unwrap(),
        None
    );
    // Its message came back, ran again, and settles together with h1.
    let got = claimed(&f, "joint", 3).await;
    let again = ResultMeta::success(&ids[0], json!("second run"));
    let one = ResultMeta::success(&ids[1], json!(10));
    let rerun = json!([1, "h0", "SUCCESS", "second run"]);
    let batch = [
        Finished {
            meta: Some(&again),
            part: Some((
                &g,
                PartReturn {
                    task_id: &ids[0],
                    group_index: Some(0),
                    part: &rerun,
                },
            )),
            delivery: &got[0],
        },
        Finished {
            meta: Some(&one),
            part: Some(part_of(&g, &ids, &records, 1)),
            delivery: &got[1],
        },
    ];
    let settled = joint.settle_together(&batch).await.unwrap();
    assert_eq!(settled.fates, vec![Fate::Acked, Fate::Acked]);
    assert!(
        settled.completed.is_empty(),
        "2 of 3: the redelivered part is not counted twice"
    );
    assert_eq!(
        f.backend.get(&ids[0]).await.unwrap().unwrap().result,
        json!("first run"),
        "its stored SUCCESS stays"
    );
    let two = ResultMeta::success(&ids[2], json!(20));
    let settled = joint
        .settle_together(&[Finished {
            meta: Some(&two),
            part: Some(part_of(&g, &ids, &records, 2)),
            delivery: &got[2],
        }])
        .await
        .unwrap();
    assert_eq!(settled.fates, vec![Fate::HeldBack]);
    let (_, parts) = &settled.completed[0];
    assert_eq!(parts.len(), 3, "3 of 3");
    assert_eq!(parts[0], records[0], "the first record of h0 stays");
}

/// Contract: `settle_together_a_lapsed_claim_is_not_acked`.
pub async fn settle_together_a_lapsed_claim_is_not_acked(make: fn(Duration) -> Fixture) {
    let f = make(Duration::from_millis(300));
    let joint = joint(&f);
    let got = claimed(&f, "joint", 1).await;
    // The lease lapses and another worker claims it.
    let theirs = f
        .other
        .claim("w2", &["joint".to_string()], 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1, "redelivered to the other worker");
    let meta = ResultMeta::success("r-late", json!(1));
    let settled = joint
        .settle_together(&[Finished {
            meta: Some(&meta),
            part: None,
            delivery: &got[0],
        }])
        .await
        .unwrap();
    assert_eq!(settled.fates, vec![Fate::NotHeld]);
    assert!(
        f.backend.get("r-late").await.unwrap().is_some(),
        "the result is stored anyway"
    );
    f.other.ack(&theirs[0]).await.expect("still the other's");
}

/// Runs the settle-together contract against a fixture constructor
/// `fn(lease) -> Fixture` whose broker offers a joint settle with its
/// backend.
#[macro_export]
macro_rules! settle_together_contract {
    ($module:ident, $make:path) => {
        mod $module {
            $crate::settle_together_contract!(@tests $make;
                settle_together_stores_then_acks,
                settle_together_keeps_a_stored_success,
                settle_together_holds_back_the_parts_that_complete_a_chord,
                settle_together_counts_a_redelivered_part_once,
                settle_together_a_lapsed_claim_is_not_acked,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::settle_together::$name($make).await
            }
        )*
    };
}
