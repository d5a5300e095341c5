//! The `celeriac worker` startup banner, laid out as Celery's: version,
//! node name, broker, result backend, pool and concurrency, task events,
//! queues and the registered tasks.

use celeriac::Worker;

/// What the banner shows besides the worker itself.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    /// The broker URL, password redacted.
    pub(crate) broker: &'a str,
    /// The result backend URL, password redacted.
    pub(crate) backend: &'a str,
    /// Registered task names, sorted.
    pub(crate) tasks: Vec<&'a str>,
    /// Autoscale bounds `(min, max)`, if any.
    pub(crate) autoscale: Option<(usize, usize)>,
    /// Messages reserved per execution slot.
    pub(crate) prefetch: usize,
}

/// The banner of `worker`.
pub(crate) fn banner(worker: &Worker, facts: &Facts<'_>) -> String {
    let events = worker
        .events_enabled()
        .load(std::sync::atomic::Ordering::SeqCst);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let platform = format!(
        "{}-{}-{}",
        capitalized(std::env::consts::OS),
        kernel.trim(),
        std::env::consts::ARCH
    );
    let now = celeriac::time::iso_from_unix(celeriac::time::unix_now());
    let when = now.get(..19).unwrap_or(&now).replace('T', " ");
    let concurrency = match facts.autoscale {
        Some((min, max)) => format!("{{min={min}, max={max}}} ({})", worker.pool_kind()),
        None => format!("{} ({})", worker.concurrency(), worker.pool_kind()),
    };
    let events = if events {
        "ON".to_string()
    } else {
        "OFF (enable -E to monitor tasks in this worker)".to_string()
    };
    let mut out = format!(
        " \n -------------- {node} v{version} (rust)\n--- ***** ----- \n-- ******* ---- {platform} {when}\n- *** --- * --- \n- ** ---------- [config]\n- ** ---------- .> app:         {app}\n- ** ---------- .> transport:   {broker}\n- ** ---------- .> results:     {backend}\n- *** --- * --- .> concurrency: {concurrency}\n-- ******* ---- .> task events: {events}\n--- ***** ----- .> prefetch:    {prefetch} per slot\n -------------- [queues]\n",
        node = worker.nodename(),
        version = env!("CARGO_PKG_VERSION"),
        broker = facts.broker,
        backend = facts.backend,
        app = program(),
        prefetch = facts.prefetch,
    );
    for q in worker.queues() {
        out.push_str(&format!(
            "                .> {q:<16} exchange={q}(direct) key={q}\n"
        ));
    }
    out.push_str("                \n\n[tasks]\n");
    for t in &facts.tasks {
        out.push_str(&format!("  . {t}\n"));
    }
    out
}

/// This program's name: `celeriac`, or the user's binary that runs
/// `celeriac::cli::main()`.
fn program() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map_or_else(
            || "celeriac".into(),
            |n| celeriac::escape::Escaped(&n.to_string_lossy()).to_string(),
        )
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
