//! Prefetch: a worker reserves up to `prefetch_multiplier` messages per
//! slot while its tasks are short, and only for free slots once they are
//! long. Reserved messages are held with a renewed lease, start in claim
//! order, honour revokes and expiry that arrive while they wait, and are
//! given back (not run) by a warm shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac::prelude::*;
use celeriac::{
    Call, MemoryBackend, MemoryBroker, Outgoing, Registry, ResultBackend, ResultMeta, State,
    TaskError, Worker,
};

/// Short tasks run before a test's own, so that the worker has measured
/// them (each is one more run of `t.count`).
const WARM: usize = 8;

/// What the tasks of a test share with it.
#[derive(Default)]
struct Probe {
    /// `t.block` is running.
    blocking: AtomicBool,
    /// `t.block` may return.
    release: AtomicBool,
    /// Runs of `t.count`.
    counted: AtomicUsize,
}

fn registry(probe: &Arc<Probe>) -> Arc<Registry> {
    let mut r = Registry::new();
    let p = probe.clone();
    r.register_fn("t.block", move |_, _| {
        p.blocking.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !p.release.load(Ordering::SeqCst) {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(TaskError::new("never released"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(serde_json::json!("unblocked"))
    })
    .unwrap();
    r.register_fn("t.slow", |_, _| {
        std::thread::sleep(Duration::from_millis(120));
        Ok(serde_json::json!("slow"))
    })
    .unwrap();
    let p = probe.clone();
    r.register_fn("t.count", move |_, _| {
        p.counted.fetch_add(1, Ordering::SeqCst);
        Ok(serde_json::json!("counted"))
    })
    .unwrap();
    Arc::new(r)
}

struct Setup {
    broker: Arc<MemoryBroker>,
    backend: Arc<MemoryBackend>,
    probe: Arc<Probe>,
}

fn setup(lease: Duration) -> Setup {
    Setup {
        broker: Arc::new(MemoryBroker::with_lease("prefetch", lease)),
        backend: Arc::new(MemoryBackend::new()),
        probe: Arc::new(Probe::default()),
    }
}

impl Setup {
    fn worker(&self, prefetch: usize) -> Worker {
        Worker::builder(
            self.broker.clone(),
            self.backend.clone(),
            registry(&self.probe),
        )
        .concurrency(1)
        .prefetch_multiplier(prefetch)
        .build()
        .unwrap()
    }

    /// Publishes `name` (with `expires_in`), returning its task id.
    async fn send(&self, name: &'static str, expires_in: Option<Duration>) -> String {
        let mut call = Call::<serde_json::Value>::new(name);
        if let Some(e) = expires_in {
            call = call.expires_in(e);
        }
        let msg = call.to_message().unwrap();
        self.broker
            .publish(Outgoing::from_message(&msg).unwrap())
            .await
            .unwrap();
        msg.id().to_string()
    }

    async fn result(&self, id: &str) -> ResultMeta {
        let watch = self.backend.watch(id).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), watch)
            .await
            .expect("no result in time")
            .unwrap()
    }

    async fn until(&self, what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts a worker of one slot reserving up to `prefetch` per slot.
    fn start(&self, prefetch: usize) -> (Worker, tokio::task::JoinHandle<()>) {
        let w = self.worker(prefetch);
        let running = tokio::spawn({
            let w = w.clone();
            async move { w.run().await }
        });
        (w, running)
    }

    /// After a warm-up, occupies the only slot with `t.block` and waits
    /// until `n` more `t.count` messages are all reserved behind it.
    /// Returns the ids of `t.block` and of the `t.count` messages.
    async fn block_with_reserved(&self, n: usize) -> (String, Vec<String>) {
        self.warm_up().await;
        let block = self.send("t.block", None).await;
        let mut counts = Vec::new();
        for _ in 0..n {
            counts.push(self.send("t.count", None).await);
        }
        self.until("t.block runs", || {
            self.probe.blocking.load(Ordering::SeqCst)
        })
        .await;
        self.until_queued(0).await;
        (block, counts)
    }

    /// Runs [`WARM`] short tasks, so that the worker knows its tasks are
    /// short and reserves ahead (one slow run on a busy machine is averaged
    /// away by the others).
    async fn warm_up(&self) {
        let mut ids = Vec::new();
        for _ in 0..WARM {
            ids.push(self.send("t.count", None).await);
        }
        for id in &ids {
            assert_eq!(self.result(id).await.status, State::Success);
        }
    }

    /// Waits until `n` messages are left on the queue.
    async fn until_queued(&self, n: usize) {
        let start = Instant::now();
        while self.queued().await != n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {n} queued"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn queued(&self) -> usize {
        self.broker.queue_len("celery").await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_reserves_up_to_the_multiplier_while_tasks_are_short() {
    // (multiplier, warm-up task, messages left on the queue while t.block
    // runs): short tasks fill the multiplier; after long ones (120 ms, more
    // than the 50 ms a reserved message may expect to wait) the worker
    // claims only for its free slot.
    for (prefetch, warm, left_waiting) in [(1, "t.count", 4), (3, "t.count", 2), (4, "t.slow", 4)] {
        let s = setup(Duration::from_secs(30));
        let (w, running) = s.start(prefetch);
        let mut warmup = Vec::new();
        for _ in 0..WARM {
            warmup.push(s.send(warm, None).await);
        }
        for id in &warmup {
            assert_eq!(s.result(id).await.status, State::Success);
        }
        let before = s.probe.counted.load(Ordering::SeqCst);
        let block = s.send("t.block", None).await;
        let mut counts = Vec::new();
        for _ in 0..4 {
            counts.push(s.send("t.count", None).await);
        }
        s.until("t.block runs", || s.probe.blocking.load(Ordering::SeqCst))
            .await;
        // Give the claim loop time to reserve more than it should.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            s.queued().await,
            left_waiting,
            "prefetch {prefetch} after {warm}: messages reserved, the running one included"
        );
        assert_eq!(
            s.probe.counted.load(Ordering::SeqCst),
            before,
            "one slot: nothing else runs"
        );
        s.probe.release.store(true, Ordering::SeqCst);
        assert_eq!(s.result(&block).await.status, State::Success);
        for id in &counts {
            assert_eq!(s.result(id).await.status, State::Success);
        }
        assert_eq!(
            s.probe.counted.load(Ordering::SeqCst),
            before + 4,
            "each ran once"
        );
        w.shutdown();
        running.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_messages_keep_their_lease_while_they_wait() {
    // A lease far shorter than the wait: only renewal keeps them held.
    let s = setup(Duration::from_millis(300));
    let (w, running) = s.start(4);
    let (block, counts) = s.block_with_reserved(3).await;
    // Four leases later, another consumer still finds nothing to take.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stolen = s
        .broker
        .claim(
            "thief",
            &["celery".to_string()],
            10,
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert!(stolen.is_empty(), "a reserved message's lease lapsed");
    s.probe.release.store(true, Ordering::SeqCst);
    assert_eq!(s.result(&block).await.status, State::Success);
    for id in &counts {
        assert_eq!(s.result(id).await.status, State::Success);
    }
    assert_eq!(s.probe.counted.load(Ordering::SeqCst), WARM + 3);
    w.shutdown();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_or_expiry_reaches_a_reserved_message() {
    let s = setup(Duration::from_secs(30));
    let (w, running) = s.start(4);
    s.warm_up().await;
    let block = s.send("t.block", None).await;
    let revoked = s.send("t.count", None).await;
    let expiring = s.send("t.count", Some(Duration::from_millis(500))).await;
    let fresh = s.send("t.count", None).await;
    s.until("t.block runs", || s.probe.blocking.load(Ordering::SeqCst))
        .await;
    s.until_queued(0).await;
    // Claimed before these happened: the claim-time checks passed.
    s.broker
        .revoke(std::slice::from_ref(&revoked), Duration::from_secs(60))
        .await
        .unwrap();
    // The worker looks for revokes of waiting messages every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.probe.release.store(true, Ordering::SeqCst);
    assert_eq!(s.result(&block).await.status, State::Success);
    for (id, why) in [(&revoked, "revoked"), (&expiring, "expired")] {
        let meta = s.result(id).await;
        assert_eq!(meta.status, State::Revoked, "{why}");
        assert_eq!(
            meta.result["exc_message"],
            serde_json::json!([why]),
            "{meta:?}"
        );
    }
    assert_eq!(s.result(&fresh).await.status, State::Success);
    assert_eq!(
        s.probe.counted.load(Ordering::SeqCst),
        WARM + 1,
        "only the fresh one ran"
    );
    w.shutdown();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_shutdown_finishes_running_tasks_and_gives_reserved_ones_back() {
    let s = setup(Duration::from_secs(30));
    let (w, running) = s.start(4);
    let (block, counts) = s.block_with_reserved(3).await;
    w.shutdown();
    s.probe.release.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the worker stops")
        .unwrap();
    assert_eq!(
        s.result(&block).await.status,
        State::Success,
        "the running task finished"
    );
    assert_eq!(
        s.probe.counted.load(Ordering::SeqCst),
        WARM,
        "reserved ones did not start"
    );
    assert_eq!(s.queued().await, 3, "they are back on the queue, at once");
    // A new worker runs them.
    let (w, running) = s.start(4);
    for id in &counts {
        assert_eq!(s.result(id).await.status, State::Success);
    }
    assert_eq!(s.probe.counted.load(Ordering::SeqCst), WARM + 3);
    w.shutdown();
    running.await.unwrap();
}
