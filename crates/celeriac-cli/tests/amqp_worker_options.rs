//! A `celeriac worker` and `celeriac call` on RabbitMQ options, end to end,
//! on nodes of the tests' own: TLS (`amqps://`) verified against a CA made
//! for the test, and quorum task queues; results come back over Celery's
//! `rpc://` backend, so RabbitMQ is the only server.

use std::process::Command;

use celeriac_testkit::process::LoggedChild;
use celeriac_testkit::rabbit_server::{self, PrivateNode};

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

/// `celeriac call celeriac.add [2, 3] --wait` on `broker` with a worker
/// running there: what it prints, and the worker (still running). Neither
/// names a result backend: `rpc://` is the default with an AMQP broker.
fn add_over(broker: &str) -> (String, LoggedChild) {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--broker", broker])
        .args(["--diagnostic-tasks", "-c", "1"]);
    let worker = LoggedChild::spawn(cmd, &std::env::temp_dir(), "celeriac-amqp-options");
    let out = Command::new(BIN)
        .args(["call", "celeriac.add", "--args", "[2,3]", "--wait"])
        .args(["--timeout", "60", "--broker", broker])
        .output()
        .expect("run celeriac call");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (printed, worker)
}

#[test]
fn a_worker_and_a_client_run_a_task_over_amqps_verifying_the_ca() {
    if !rabbit_server::available() {
        return;
    }
    let node = PrivateNode::start_tls();
    let broker = format!(
        "{}?ssl_ca_certs={}",
        node.tls_url(),
        node.ca_path().display()
    );
    let (printed, worker) = add_over(&broker);
    assert_eq!(printed, "5\n", "worker log:\n{}", worker.log());
    // The worker's connection is a TLS one.
    let conns = node.rabbitmqctl(&["list_connections", "ssl", "ssl_protocol"]);
    assert!(conns.lines().any(|l| l.starts_with("true")), "{conns}");

    // Without the CA, the client refuses the server's certificate.
    let out = Command::new(BIN)
        .args(["call", "celeriac.add", "--args", "[2,3]"])
        .args(["--broker", &node.tls_url(), "--result-backend", "rpc://"])
        .output()
        .expect("run celeriac call");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the broker"), "{err}");
}

#[test]
fn a_worker_serves_quorum_queues() {
    if !rabbit_server::available() {
        return;
    }
    let vhost = rabbit_server::vhost_url();
    let (printed, worker) = add_over(&format!("{vhost}?queue_type=quorum"));
    assert_eq!(printed, "5\n", "worker log:\n{}", worker.log());
    let queues = rabbit_server::queue_types(&vhost);
    assert!(
        queues.contains(&("celery".to_string(), "quorum".to_string())),
        "{queues:?}"
    );
}
