//! The reply to a claim is lost: Redis ran the claim script (the batch is
//! recorded as held by the worker), and the connection dropped before the
//! reply came back. With the default visibility timeout (an hour) the batch
//! must still run, well before the hour is up.

use std::time::{Duration, Instant};

use celeriac_testkit::proxy::FaultProxy;
use celeriac_testkit::redis_server::RedisServer;

use crate::{Client, port_of, worker};

#[test]
fn a_claim_whose_reply_is_lost_is_not_stranded() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let client = Client::new(&url);
    let logs = tempfile::tempdir().unwrap();
    // Load the claim script into the server's script cache, so that the
    // worker's first claim runs at once (an unknown script's first try
    // fails with NOSCRIPT without running).
    client
        .rt
        .block_on(client.broker.claim(
            "warm-up",
            &["warm-up".to_string()],
            1,
            Duration::from_millis(10),
        ))
        .unwrap();
    let tasks = client.send_adds(0, 40);
    // The claim script is the first request of a worker that names the
    // deliveries counter: its reply is lost, its batch is recorded as held.
    let proxy = FaultProxy::start(port_of(&url));
    proxy.lose_reply_to(b"celeriac.deliveries");
    let w = worker(
        &proxy.redis_url(""),
        logs.path(),
        "cut@faults",
        &["--result-backend", &url],
    );
    let started = Instant::now();
    let tally = client.tally(&tasks, Duration::from_secs(60));
    eprintln!(
        "faults/lost_reply: {tally:?}; every task had run {:.1} s after the worker started \
         (the visibility timeout is 3600 s)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(proxy.cuts(), 1, "the proxy cut the claim's connection");
    assert!(
        w.log().contains("claim failed"),
        "the worker saw the claim fail:\n{}",
        w.log()
    );
    assert_eq!(
        (tally.lost, tally.wrong),
        (0, 0),
        "the batch whose reply was lost runs, well before the visibility timeout: {tally:?}\n{}",
        w.log()
    );
    let held: usize = client.redis(redis::cmd("HLEN").arg("unacked"));
    assert_eq!(held, 0, "nothing is left claimed");
}
