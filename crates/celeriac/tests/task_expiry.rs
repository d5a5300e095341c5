//! `expires`: a task not started in time becomes REVOKED (expired), as in
//! Celery; one started in time runs.

use std::time::Duration;

use celeriac::builtins::echo;
use celeriac::{JobError, Server, TaskErrorKind};

#[test]
fn expired_tasks_become_revoked_and_fresh_ones_run() {
    let s = Server::builder().workers(1).build().unwrap();
    let wait = Duration::from_secs(30);
    // Occupy the only worker so the next jobs wait in the queue.
    let blocker = s.submit(celeriac::builtins::sleep::call(0.6));
    let stale = s.submit(echo::call("late".into()).expires_in(Duration::from_millis(100)));
    let fresh = s.submit(echo::call("on time".into()).expires_in(Duration::from_secs(60)));
    assert_eq!(blocker.wait_timeout(wait).unwrap(), 0.6);
    match stale.wait_timeout(wait) {
        Err(JobError::Task(e)) => {
            assert_eq!(e.kind(), TaskErrorKind::Revoked);
            assert_eq!((e.exc_type(), e.message()), ("TaskRevokedError", "expired"));
        }
        other => panic!("expected an expired task, got {other:?}"),
    }
    assert_eq!(fresh.wait_timeout(wait).unwrap(), "on time");
}
