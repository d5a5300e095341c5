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

celeriac_testkit::broker_contract!(redis_broker, super::redis);
