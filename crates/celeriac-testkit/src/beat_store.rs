//! The contract of [`BeatStore`]: an exclusive lease whose fencing tokens
//! only grow, a publish fenced by the token, and each slot published at
//! most once. Each broker crate runs it with
//! [`beat_store_contract!`](crate::beat_store_contract).

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::{BeatRun, BeatStore, Fenced};
use celeriac_core::{Broker, Message};

use crate::{out, q};

/// Two handles on one store (two processes' view, where the broker has
/// one), and the broker its fenced publish goes to.
#[allow(missing_debug_implementations)]
pub struct BeatFixture {
    /// The store.
    pub store: Arc<dyn BeatStore>,
    /// A second handle on the same store.
    pub other: Arc<dyn BeatStore>,
    /// The broker the published messages land on.
    pub broker: Arc<dyn Broker>,
    /// Anything the fixture must keep alive.
    pub keep: Option<Box<dyn Any + Send>>,
}

const TTL: Duration = Duration::from_secs(30);
const SHORT_TTL: Duration = Duration::from_millis(300);

fn group() -> String {
    format!("g-{}", uuid::Uuid::new_v4().simple())
}

fn run(entry: &str, slot_ms: i64, queue: Option<&str>) -> BeatRun {
    BeatRun {
        entry: entry.to_string(),
        slot_ms,
        message: queue.map(|qn| out(qn, 0, None).0),
    }
}

/// Everything waiting on `queue` (claimed and acked), as messages.
async fn drain(broker: &dyn Broker, queue: &str) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        let batch = broker
            .claim(
                "beat-contract",
                &q(&[queue]),
                100,
                Duration::from_millis(200),
            )
            .await
            .expect("claim");
        if batch.is_empty() {
            return got;
        }
        for d in &batch {
            got.push(Message::decode(&d.payload).expect("a message"));
        }
        broker.ack_many(&batch).await.expect("ack");
    }
}

/// Contract: one holder at a time; renewing keeps the token; a released
/// lease goes to the next asker with a larger token; groups are separate.
pub async fn beat_lease_is_exclusive_and_tokens_grow(make: fn() -> BeatFixture) {
    let f = make();
    let g = group();
    let t1 = f
        .store
        .acquire_lease(&g, None, TTL)
        .await
        .unwrap()
        .expect("a free lease");
    assert_eq!(
        f.other.acquire_lease(&g, None, TTL).await.unwrap(),
        None,
        "held"
    );
    assert_eq!(
        f.other.acquire_lease(&g, Some(t1 + 7), TTL).await.unwrap(),
        None,
        "a wrong token"
    );
    assert_eq!(
        f.store.acquire_lease(&g, Some(t1), TTL).await.unwrap(),
        Some(t1),
        "renewed"
    );
    let other_group = group();
    assert!(
        f.other
            .acquire_lease(&other_group, None, TTL)
            .await
            .unwrap()
            .is_some()
    );
    f.store.release_lease(&g, t1).await.unwrap();
    let t2 = f
        .other
        .acquire_lease(&g, None, TTL)
        .await
        .unwrap()
        .expect("released");
    assert!(t2 > t1, "tokens grow: {t1} then {t2}");
    assert_eq!(
        f.store.acquire_lease(&g, Some(t1), TTL).await.unwrap(),
        None,
        "the old token"
    );
    // Releasing with a stale token leaves the holder alone.
    f.store.release_lease(&g, t1).await.unwrap();
    assert_eq!(f.store.acquire_lease(&g, None, TTL).await.unwrap(), None);
}

/// Contract: a lapsed lease goes to a standby with a larger token, and its
/// former holder can no longer renew it.
pub async fn beat_lapsed_lease_goes_to_a_standby(make: fn() -> BeatFixture) {
    let f = make();
    let g = group();
    let t1 = f
        .store
        .acquire_lease(&g, None, SHORT_TTL)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(200)).await;
    let t2 = f
        .other
        .acquire_lease(&g, None, TTL)
        .await
        .unwrap()
        .expect("lapsed");
    assert!(t2 > t1, "{t1} then {t2}");
    assert_eq!(
        f.store.acquire_lease(&g, Some(t1), TTL).await.unwrap(),
        None
    );
}

/// Contract: a publish with a token that no longer holds the lease sends
/// and records nothing; the holder's publish sends and records.
pub async fn beat_publish_is_fenced_by_the_token(make: fn() -> BeatFixture) {
    let f = make();
    let g = group();
    let queue = format!("beat-fenced-{}", uuid::Uuid::new_v4().simple());
    let t1 = f
        .store
        .acquire_lease(&g, None, SHORT_TTL)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(200)).await;
    // Lapsed, not yet taken: still refused.
    let stale = f
        .store
        .publish_fenced(&g, t1, vec![run("tick", 1000, Some(&queue))])
        .await;
    assert_eq!(stale.unwrap(), Fenced::Refused);
    let t2 = f.other.acquire_lease(&g, None, TTL).await.unwrap().unwrap();
    let stale = f
        .store
        .publish_fenced(&g, t1, vec![run("tick", 1000, Some(&queue))])
        .await;
    assert_eq!(stale.unwrap(), Fenced::Refused);
    assert_eq!(
        f.broker.queue_len(&queue).await.unwrap(),
        0,
        "nothing published"
    );
    assert!(
        f.store.last_runs(&g).await.unwrap().is_empty(),
        "nothing recorded"
    );
    let r = run("tick", 1000, Some(&queue));
    let id = r.message.as_ref().unwrap().task_id.clone();
    let done = f.other.publish_fenced(&g, t2, vec![r]).await.unwrap();
    assert_eq!(done, Fenced::Applied(vec![true]));
    let got = drain(f.broker.as_ref(), &queue).await;
    assert_eq!(
        got.iter().map(|m| m.id().to_string()).collect::<Vec<_>>(),
        [id]
    );
    assert_eq!(f.store.last_runs(&g).await.unwrap()["tick"], 1000);
}

/// Contract: a slot not later than the entry's last run is skipped; a
/// run without a message records its slot only; entries are separate.
pub async fn beat_slots_are_published_once(make: fn() -> BeatFixture) {
    let f = make();
    let g = group();
    let queue = format!("beat-once-{}", uuid::Uuid::new_v4().simple());
    let t = f.store.acquire_lease(&g, None, TTL).await.unwrap().unwrap();
    let publish = |runs| f.store.publish_fenced(&g, t, runs);
    assert_eq!(
        publish(vec![run("a", 1000, Some(&queue))]).await.unwrap(),
        Fenced::Applied(vec![true])
    );
    assert_eq!(
        publish(vec![
            run("a", 1000, Some(&queue)),
            run("a", 500, Some(&queue))
        ])
        .await
        .unwrap(),
        Fenced::Applied(vec![false, false]),
        "the same slot or an older one"
    );
    assert_eq!(
        publish(vec![
            run("a", 2000, Some(&queue)),
            run("b", 1000, Some(&queue)),
            run("a", 3000, None)
        ])
        .await
        .unwrap(),
        Fenced::Applied(vec![true, true, true])
    );
    assert_eq!(
        publish(vec![run("a", 2500, Some(&queue))]).await.unwrap(),
        Fenced::Applied(vec![false]),
        "a record-only slot counts as run"
    );
    let last = f.store.last_runs(&g).await.unwrap();
    assert_eq!((last["a"], last["b"], last.len()), (3000, 1000, 2));
    assert_eq!(drain(f.broker.as_ref(), &queue).await.len(), 3);
    assert!(f.other.last_runs(&group()).await.unwrap().is_empty());
}

/// Contract: two handles racing for a lease that lapses all the time, each
/// publishing every slot it thinks is next, publish each slot exactly
/// once.
pub async fn beat_racing_leaders_publish_each_slot_once(make: fn() -> BeatFixture) {
    let f = make();
    let g = group();
    let queue = format!("beat-race-{}", uuid::Uuid::new_v4().simple());
    const SLOTS: i64 = 40;
    let racer = |store: Arc<dyn BeatStore>, g: String, queue: String| async move {
        let mut token = None;
        let mut sent = 0;
        for _ in 0..400 {
            token = store
                .acquire_lease(&g, token, Duration::from_millis(20))
                .await
                .unwrap();
            let Some(t) = token else {
                tokio::time::sleep(Duration::from_millis(3)).await;
                continue;
            };
            let last = store
                .last_runs(&g)
                .await
                .unwrap()
                .get("e")
                .copied()
                .unwrap_or(0);
            if last >= SLOTS {
                break;
            }
            // Often stale: the other racer may have moved on meanwhile.
            let slot = last + 1;
            if let Fenced::Applied(done) = store
                .publish_fenced(&g, t, vec![run("e", slot, Some(&queue))])
                .await
                .unwrap()
            {
                sent += done.iter().filter(|d| **d).count();
            }
            tokio::task::yield_now().await;
        }
        sent
    };
    let a = tokio::spawn(racer(f.store.clone(), g.clone(), queue.clone()));
    let b = tokio::spawn(racer(f.other.clone(), g.clone(), queue.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let got = drain(f.broker.as_ref(), &queue).await;
    let ids: HashSet<String> = got.iter().map(|m| m.id().to_string()).collect();
    assert_eq!(ids.len(), got.len());
    assert_eq!(a + b, got.len(), "each applied run is one message");
    let last = f.store.last_runs(&g).await.unwrap()["e"];
    assert!(last > 1, "the racers got somewhere: {last}");
    assert_eq!(got.len() as i64, last, "slots 1..={last}, each once");
}

/// Runs the [`BeatStore`] contract against a fixture:
///
/// ```ignore
/// celeriac_testkit::beat_store_contract!(redis_beat, super::redis_beat);
/// ```
#[macro_export]
macro_rules! beat_store_contract {
    ($module:ident, $make:path) => {
        mod $module {
            $crate::beat_store_contract!(@tests $make;
                beat_lease_is_exclusive_and_tokens_grow,
                beat_lapsed_lease_goes_to_a_standby,
                beat_publish_is_fenced_by_the_token,
                beat_slots_are_published_once,
                beat_racing_leaders_publish_each_slot_once,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::beat_store::$name($make).await
            }
        )*
    };
}
