//! The executor contract (`celeriac-testkit`), run by each of the three
//! executors. Process-pool children are re-executions of this test binary,
//! which is why it has its own `main` (`harness = false`) that turns a
//! child into a contract-task runner first.

use std::time::Duration;

use celeriac_core::Executor;
use celeriac_pool::process::{ProcessPool, init_child};
use celeriac_pool::{AsyncExecutor, ProcessExecutor, ThreadExecutor, ThreadPool};
use celeriac_testkit::executor::{contract_registry, run_contract};

fn main() {
    init_child(contract_registry);
    let registry = contract_registry();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let threads = ThreadExecutor::new(ThreadPool::builder().threads(2).build().expect("threads"));
    let processes = ProcessExecutor::new(
        ProcessPool::builder()
            .processes(2)
            .build()
            .expect("a process pool"),
    );
    let asyncs = AsyncExecutor::new();
    let executors: [&dyn Executor; 3] = [&threads, &processes, &asyncs];
    rt.block_on(async {
        for ex in executors {
            println!("executor contract: {:?}", ex.kind());
            run_contract(ex, &registry).await;
            println!("executor contract: {:?} ok", ex.kind());
        }
        processes.shutdown(Duration::from_secs(5)).await;
        threads.shutdown(Duration::from_secs(5)).await;
        // A shut-down executor runs nothing: the message would go back.
        let task = registry
            .get(celeriac_testkit::executor::ECHO)
            .expect("echo")
            .clone();
        let ctx = celeriac_core::TaskContext::detached("contract.echo");
        let args = celeriac_core::Args::new(vec![serde_json::json!(1)], Default::default());
        assert!(
            processes
                .execute(&task, ctx.clone(), args.clone())
                .await
                .is_none()
        );
        assert!(threads.execute(&task, ctx, args).await.is_none());
    });
    println!("3 passed, 0 failed");
}
