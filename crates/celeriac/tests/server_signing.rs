//! The job server with a secret: every job it publishes is signed, and its
//! local worker runs them (it would dead-letter an unsigned one).

use std::time::Duration;

use celeriac::builtins::fib;
use celeriac::prelude::*;
use celeriac::{MemoryBroker, Message, Secret, Server};

#[test]
fn a_server_with_a_secret_signs_its_jobs_and_its_worker_runs_them() {
    let secret = Secret::new("server secret").unwrap();
    let server = Server::builder().workers(2).secret(secret).build().unwrap();
    let jobs: Vec<_> = (0..15).map(|i| server.submit(fib::call(i))).collect();
    let total: u64 = jobs.iter().map(|j| j.wait().unwrap()).sum();
    assert_eq!(total, 986, "fib(0) + ... + fib(14)");
}

#[test]
fn what_a_server_with_a_secret_publishes_verifies_with_that_secret_only() {
    let secret = Secret::new("server secret").unwrap();
    let url = "memory://server-signing-published";
    let broker = MemoryBroker::open(url).unwrap();
    let server = Server::builder()
        .broker(url)
        .workers(0)
        .secret(secret.clone())
        .build()
        .unwrap();
    let _job = server.submit(fib::call(10));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let claimed = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = broker
                .claim(
                    "test",
                    &["celery".to_string()],
                    1,
                    Duration::from_millis(200),
                )
                .await
                .unwrap();
            if !got.is_empty() || tokio::time::Instant::now() > deadline {
                return got;
            }
        }
    });
    let d = claimed.first().expect("the job was published");
    let msg = Message::decode(&d.payload).unwrap();
    assert_eq!(secret.verify(&msg, &d.payload), Ok(()));
    let other = Secret::new("another").unwrap();
    assert!(other.verify(&msg, &d.payload).is_err());
}
