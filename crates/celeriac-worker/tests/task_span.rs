//! Each task runs in a `tracing` span named `task` that carries its id and
//! name: the worker's own lines about it, and what the task itself logs on
//! a pool thread, are inside it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use celeriac_core::{Call, Outgoing, Registry, ResultBackend, Transport};
use celeriac_embedded::{MemoryBackend, MemoryBroker};
use celeriac_worker::{TaskLog, Worker};

/// Everything logged, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_task_runs_in_a_span_with_its_id_and_name() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let broker = Arc::new(MemoryBroker::new());
        let backend = Arc::new(MemoryBackend::new());
        let mut registry = Registry::new();
        registry
            .register_fn("tasks.hello", |_, _| {
                tracing::info!("hello from inside the task");
                Ok(serde_json::json!(1))
            })
            .unwrap();
        let worker = Worker::builder(broker.clone(), backend.clone(), Arc::new(registry))
            .observer(Arc::new(TaskLog))
            .build()
            .unwrap();
        let running = tokio::spawn({
            let w = worker.clone();
            async move { w.run().await }
        });
        let msg = Call::<i64>::new("tasks.hello").to_message().unwrap();
        let watch = backend.watch(msg.id()).await.unwrap();
        broker
            .publish(Outgoing::from_message(&msg).unwrap())
            .await
            .unwrap();
        assert_eq!(watch.await.unwrap().result, 1);
        worker.shutdown();
        running.await.unwrap();
        msg.id().to_string()
    });

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let span = format!("task{{task_id={id} task=tasks.hello}}");
    for needle in ["hello from inside the task", "received", "succeeded"] {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"));
        assert!(
            line.contains(&span),
            "{needle:?} outside the task's span: {line}"
        );
    }
}
