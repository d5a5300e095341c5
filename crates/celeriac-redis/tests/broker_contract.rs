//! The broker and result-backend contract (`celeriac-testkit`) against a
//! real Redis: the private `redis-server` that `scripts/test.sh` starts and
//! names in `CELERIAC_TEST_REDIS_URL`. Every fixture uses its own
//! `global_keyprefix`, so tests running at once do not share keys.

use std::time::Duration;

use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_testkit::Fixture;

fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL").expect(
        "CELERIAC_TEST_REDIS_URL is not set: run scripts/test.sh, which starts a private redis-server",
    )
}

fn redis(lease: Duration) -> Fixture {
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let url = format!(
        "{}?visibility_timeout={}&global_keyprefix={prefix}",
        redis_url(),
        lease.as_secs_f64()
    );
    Fixture {
        broker: RedisBroker::open(&url).unwrap(),
        other: RedisBroker::open(&url).unwrap(),
        backend: RedisBackend::open(&url).unwrap(),
        other_backend: RedisBackend::open(&url).unwrap(),
        keep: None,
    }
}

fn redis_beat() -> celeriac_testkit::beat_store::BeatFixture {
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let url = format!("{}?global_keyprefix={prefix}", redis_url());
    celeriac_testkit::beat_store::BeatFixture {
        store: RedisBroker::open(&url).unwrap(),
        other: RedisBroker::open(&url).unwrap(),
        broker: RedisBroker::open(&url).unwrap(),
        keep: None,
    }
}

celeriac_testkit::broker_contract!(redis_broker, super::redis);
celeriac_testkit::beat_store_contract!(redis_beat_store, super::redis_beat);
celeriac_testkit::chord_join_contract!(redis_chord_join, super::redis);

/// With results that never expire (`result_expires=0`), the join's keys
/// do not expire either: `EXPIRE key 0` would delete them, and the chord
/// would never complete (Celery's #5237).
#[tokio::test]
async fn a_chord_joins_when_results_never_expire() {
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let url = format!("{}?result_expires=0&global_keyprefix={prefix}", redis_url());
    let backend = RedisBackend::open(&url).unwrap();
    let join = celeriac_testkit::chord_join::join(&*backend);
    let g = celeriac_testkit::chord_join::fresh_group();
    join.set_size(&g, 2).await.unwrap();
    let part = celeriac_testkit::chord_join::part;
    let first = join
        .part_return(&g, "h0", Some(0), &part(0, serde_json::json!(0)))
        .await
        .unwrap();
    assert_eq!(first, None);
    let all = join
        .part_return(&g, "h1", Some(1), &part(1, serde_json::json!(1)))
        .await
        .unwrap();
    assert_eq!(all.map(|p| p.len()), Some(2), "the chord completes");
}

/// The claim script reads a message's task id and delivery tag without
/// decoding it when each key occurs once; a message where `"id"` also
/// occurs in a nested header takes the full decode, and its revoke is
/// still honoured and its ack still finds it.
#[tokio::test]
async fn ambiguous_envelopes_are_decoded_in_full() {
    let f = redis(Duration::from_secs(5));
    let (mut o, id) = celeriac_testkit::out("celery", 0, None);
    let mut env: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
    env["headers"]["meta"] = serde_json::json!({"id": "not-the-task-id", "exchange": 1});
    o.payload = serde_json::to_vec(&env).unwrap();
    let (plain, plain_id) = celeriac_testkit::out("celery", 0, None);
    f.broker
        .revoke(&[id.clone(), plain_id.clone()], Duration::from_secs(60))
        .await
        .unwrap();
    f.broker.publish_batch(vec![o, plain]).await.unwrap();
    let got = f
        .broker
        .claim(
            "w",
            &celeriac_testkit::q(&["celery"]),
            2,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let tag = env["properties"]["delivery_tag"].as_str().unwrap();
    for d in &got {
        let task = celeriac_testkit::id_of(d);
        assert!(d.revoked, "{task} is revoked");
        if task == id {
            assert!(
                d.tag.starts_with(&format!("{tag}#")),
                "its own tag: {}",
                d.tag
            );
        }
    }
    assert_eq!(f.broker.ack_many(&got).await.unwrap(), vec![true, true]);
}

/// `celeriac.delayed` is read a page (1,000 entries) at a time: counting,
/// listing (`inspect scheduled`) and purging see every entry across pages.
#[tokio::test]
async fn delayed_messages_across_pages_are_counted_listed_and_purged() {
    let f = redis(Duration::from_secs(30));
    let now = celeriac_core::time::unix_now();
    // 2,500 on `paged` (priority 0 and 9 alternating) and 1,000 on `other`,
    // interleaved by eta.
    let mut batch = Vec::new();
    for i in 0..3500u32 {
        let queue = if i % 7 < 5 { "paged" } else { "other" };
        let priority = if i % 2 == 0 { 0 } else { 9 };
        batch.push(celeriac_testkit::out(queue, priority, Some(now + 600.0 + f64::from(i))).0);
    }
    f.broker.publish_batch(batch).await.unwrap();
    assert_eq!(f.broker.queue_len("paged").await.unwrap(), 2500);
    assert_eq!(f.broker.queue_len("other").await.unwrap(), 1000);
    let by_priority = f.broker.queue_len_by_priority("paged").await.unwrap();
    assert_eq!(by_priority.iter().map(|(_, n)| n).sum::<usize>(), 2500);
    assert_eq!(by_priority.len(), 2, "{by_priority:?}");

    let listed = f
        .other
        .delayed(&[String::from("paged")], 2200)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2200, "the limit, reached across pages");
    assert!(listed.iter().all(|(_, q, _)| q == "paged"));
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "soonest first");
    let all = f
        .other
        .delayed(&[String::from("paged")], 10_000)
        .await
        .unwrap();
    assert_eq!(all.len(), 2500);

    assert_eq!(f.broker.purge("paged").await.unwrap(), 2500);
    assert_eq!(f.broker.queue_len("paged").await.unwrap(), 0);
    assert_eq!(
        f.broker.queue_len("other").await.unwrap(),
        1000,
        "another queue's delayed messages stay"
    );
}
