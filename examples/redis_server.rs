//! The pp-style job server on Redis, the queue Python Celery shares: the
//! same program as on one machine, pointed at `redis://`.
//! Run: `CELERIAC_BROKER_URL=redis://127.0.0.1:<port>/0 cargo run -p celeriac-examples --example redis_server`,
//! with the URL of a Redis you own: the example writes to it, so it has no
//! default and never falls back to a shared server on 6379.
//!
//! While it runs, a Python client on the same Redis can call the same
//! tasks: `Celery(broker=url, backend=url).send_task('celeriac.fib', args=(20,)).get()`.

use celeriac::Server;
use celeriac::builtins::{add, fib};

fn main() -> anyhow::Result<()> {
    let url = std::env::var("CELERIAC_BROKER_URL").map_err(|_| {
        anyhow::anyhow!(
            "set CELERIAC_BROKER_URL to the redis:// URL of a Redis you own; \
             this example writes to it, so it does not guess one"
        )
    })?;
    let server = Server::builder().broker(&url).workers(2).build()?;
    println!("broker: {}", server.broker_url());
    let jobs: Vec<_> = (20..25).map(|n| server.submit(fib::call(n))).collect();
    for (n, job) in (20..25).zip(&jobs) {
        println!("fib({n}) = {}", job.wait()?);
    }
    println!(
        "2 + 3 = {}",
        server.submit(add::call(2.into(), 3.into())).wait()?
    );
    println!("nodes on this Redis: {:?}", server.active_nodes());
    server.print_stats();
    Ok(())
}
