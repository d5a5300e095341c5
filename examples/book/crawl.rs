//! The book's web crawler on every layer. One frontier (which URLs are
//! new, how many are in flight) drives the crawl; each [`Layer`] only
//! decides what runs one page fetch.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use anyhow::{Context, bail};
use celeriac::{ProcessJob, ProcessPool, Server, ThreadPool, task};
use serde_json::json;
use url::Url;

use super::fetch::{Limits, Page, Report, fetch_async, fetch_blocking};
use super::workers::WorkerProcesses;
use super::{AsyncTask, Layer};

/// Fetches one page (blocking client): the task of the threads, processes,
/// server and queue layers.
#[task(name = "examples.crawl.fetch")]
pub fn fetch_page(url: String, host: String, timeout_ms: u64, per_host: usize) -> Report {
    fetch_blocking(&url, &host, limits(timeout_ms, per_host))
}

/// Fetches one page (async client): the task of the async layer, an
/// `async fn` on the async executor.
#[task(name = "examples.crawl.fetch_async")]
pub async fn fetch_page_async(
    url: String,
    host: String,
    timeout_ms: u64,
    per_host: usize,
) -> Report {
    fetch_async(&url, &host, limits(timeout_ms, per_host)).await
}

fn limits(timeout_ms: u64, per_host: usize) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        per_host,
    }
}

/// How to crawl.
#[derive(Debug, Clone)]
pub struct CrawlOptions {
    /// What runs the pages.
    pub layer: Layer,
    /// The queue layer's broker (`None`: a temporary SQLite file); the
    /// server layer's, to share its pages with `crawler worker` nodes
    /// (`None`: in process).
    pub broker: Option<String>,
    /// Fetch at most this many URLs (pages, failures and redirects).
    pub max_pages: usize,
    /// Fetches in flight at once (threads, children, async tasks, worker
    /// slots).
    pub concurrency: usize,
    /// Requests in flight to one host from one process.
    pub per_host: usize,
    /// Timeout of one request.
    pub timeout: Duration,
    /// The queue layer: worker processes the crawl starts itself (`crawler
    /// worker`); 0 relies on workers started elsewhere.
    pub spawn_workers: usize,
    /// The queue layer: the crawl's name in its tasks' idempotency keys
    /// (default: a fresh UUID). A second crawler given the same name on
    /// the same broker shares the crawl: each URL is still fetched once.
    pub crawl_id: Option<String>,
}

impl CrawlOptions {
    /// Defaults for `layer`: at most 1000 URLs, 8 at once, 4 per host, a
    /// 10 s timeout, 2 queue workers.
    pub fn new(layer: Layer) -> Self {
        CrawlOptions {
            layer,
            broker: None,
            max_pages: 1000,
            concurrency: 8,
            per_host: 4,
            timeout: Duration::from_secs(10),
            spawn_workers: 2,
            crawl_id: None,
        }
    }
}

/// What a crawl found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Pages fetched with HTTP 200.
    pub pages: BTreeSet<String>,
    /// Links that failed, with why (404s, timeouts, refused).
    pub failed: Vec<(String, String)>,
    /// Redirects followed (counted as neither).
    pub redirects: usize,
    /// The processes that fetched pages.
    pub pids: BTreeSet<u32>,
}

impl fmt::Display for Summary {
    /// `crawled P pages, F failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crawled {} pages, {} failed",
            self.pages.len(),
            self.failed.len()
        )
    }
}

/// The crawl's bookkeeping: each URL is queued once, pages and failures
/// are counted as reports come back.
struct Frontier {
    host: String,
    seen: HashSet<String>,
    todo: VecDeque<String>,
    max: usize,
    sent: usize,
    in_flight: usize,
    summary: Summary,
}

impl Frontier {
    fn new(start: &Url, max: usize) -> anyhow::Result<Self> {
        let host = start
            .host_str()
            .context("the start URL has no host")?
            .to_string();
        let mut f = Frontier {
            host,
            seen: HashSet::new(),
            todo: VecDeque::new(),
            max,
            sent: 0,
            in_flight: 0,
            summary: Summary::default(),
        };
        let mut start = start.clone();
        start.set_fragment(None);
        f.offer(start.into());
        Ok(f)
    }

    /// Queues `url` if it is new and on the crawl's host (a report from a
    /// worker of another version is checked, not trusted).
    fn offer(&mut self, url: String) {
        let ours = Url::parse(&url).is_ok_and(|u| u.host_str() == Some(&self.host));
        if ours && self.seen.insert(url.clone()) {
            self.todo.push_back(url);
        }
    }

    fn next(&mut self) -> Option<String> {
        if self.sent >= self.max {
            return None;
        }
        let url = self.todo.pop_front()?;
        self.sent += 1;
        self.in_flight += 1;
        Some(url)
    }

    fn record(&mut self, r: Report) {
        self.in_flight -= 1;
        self.summary.pids.insert(r.pid);
        match r.page {
            Page::Fetched { links } => {
                self.summary.pages.insert(r.url);
                links.into_iter().for_each(|l| self.offer(l));
            }
            Page::Redirected { to } => {
                self.summary.redirects += 1;
                if let Some(to) = to {
                    self.offer(to);
                }
            }
            Page::Failed { reason } => self.summary.failed.push((r.url, reason)),
        }
    }
}

/// Sends one fetch of a URL to the layer; the layer sends its report.
type Dispatch<'a> = dyn FnMut(String, Sender<Report>) + 'a;

/// Runs the frontier: keeps `concurrency` fetches in flight until no URL
/// is left. A layer that stays silent past `stall` is an error, not a hang.
fn drive(
    mut frontier: Frontier,
    concurrency: usize,
    stall: Duration,
    dispatch: &mut Dispatch<'_>,
) -> anyhow::Result<Summary> {
    let (tx, rx): (Sender<Report>, Receiver<Report>) = channel();
    loop {
        while frontier.in_flight < concurrency.max(1) {
            match frontier.next() {
                Some(url) => dispatch(url, tx.clone()),
                None => break,
            }
        }
        if frontier.in_flight == 0 {
            break;
        }
        match rx.recv_timeout(stall) {
            Ok(report) => frontier.record(report),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "no page came back for {stall:?} ({} in flight)",
                    frontier.in_flight
                )
            }
            Err(RecvTimeoutError::Disconnected) => unreachable!("the frontier holds a sender"),
        }
    }
    Ok(frontier.summary)
}

/// A task's JSON result as a report (a failed task is a failed page).
fn report_of(url: &str, result: Result<serde_json::Value, celeriac::TaskError>) -> Report {
    match result.map(serde_json::from_value::<Report>) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Report::failed(url, format!("bad report: {e}")),
        Err(e) => Report::failed(url, format!("task failed: {e}")),
    }
}

/// Crawls from `start` on `opts.layer`.
pub fn crawl(start: &str, opts: &CrawlOptions) -> anyhow::Result<Summary> {
    let start = Url::parse(start).with_context(|| format!("bad start URL {start:?}"))?;
    let frontier = Frontier::new(&start, opts.max_pages)?;
    let host = frontier.host.clone();
    let ms = u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX);
    let per_host = opts.per_host;
    // Generous: a fetch ends by its own timeout long before.
    let stall = opts.timeout * 10 + Duration::from_secs(60);
    let n = opts.concurrency.max(1);
    match opts.layer {
        Layer::Threads => {
            let pool = ThreadPool::builder().threads(n).build()?;
            drive(frontier, n, stall, &mut |url, tx| {
                let host = host.clone();
                let job = move || {
                    let _ = tx.send(fetch_page(url, host, ms, per_host));
                };
                if let Err(refused) = pool.spawn(job) {
                    // Shut down: run it here rather than lose it.
                    refused.into_inner()();
                }
            })
        }
        Layer::Processes => {
            // Each page is fetched in a child process: this same binary,
            // re-executed (`celeriac::init()` first in `main`).
            let pool = ProcessPool::builder().processes(n).build()?;
            let summary = drive(frontier, n, stall, &mut |url, tx| {
                let job = ProcessJob::call(
                    "examples.crawl.fetch",
                    vec![json!(url), json!(host), json!(ms), json!(per_host)],
                );
                let sent = pool.submit(job, {
                    let (url, tx) = (url.clone(), tx.clone());
                    move |o| {
                        let _ = tx.send(report_of(&url, o.result));
                    }
                });
                if sent.is_err() {
                    let _ = tx.send(Report::failed(url, "the process pool is shut down"));
                }
            });
            pool.shutdown(Duration::from_secs(5));
            summary
        }
        Layer::Async => {
            let fetch = AsyncTask::new("examples.crawl.fetch_async")?;
            drive(frontier, n, stall, &mut |url, tx| {
                let run = fetch.call(vec![json!(url), json!(host), json!(ms), json!(per_host)]);
                fetch.runtime().spawn(async move {
                    let report = match run.await {
                        Some(ran) => report_of(&url, ran.result),
                        None => Report::failed(url, "the async executor is shut down"),
                    };
                    let _ = tx.send(report);
                });
            })
        }
        Layer::Server => {
            // pp's submit(fetch, callback=...): the callback hands each
            // report to the frontier.
            // On --broker, `crawler worker` nodes elsewhere share the pages.
            let mut builder = Server::builder().workers(n);
            if let Some(url) = &opts.broker {
                builder = builder.broker(url);
            }
            let server = builder.build()?;
            let summary = drive(frontier, n, stall, &mut |url, tx| {
                let call = fetch_page::call(url.clone(), host.clone(), ms, per_host);
                server
                    .job(call)
                    .callback(move |r| {
                        let _ = tx.send(r.unwrap_or_else(|e| Report::failed(url, e.to_string())));
                    })
                    .submit();
            });
            server.destroy();
            summary
        }
        Layer::Queue => crawl_on_queue(frontier, opts, ms, stall),
    }
}

/// The queue layer: a task per page on a broker, run by `crawler worker`
/// processes (the ones started here and any started elsewhere). Each
/// URL's task carries the idempotency key `crawler:CRAWL:URL`, so it runs
/// once across all workers, even when its message is delivered twice.
fn crawl_on_queue(
    frontier: Frontier,
    opts: &CrawlOptions,
    ms: u64,
    stall: Duration,
) -> anyhow::Result<Summary> {
    let tmp = tempfile::tempdir()?;
    let broker = match &opts.broker {
        Some(b) => b.clone(),
        None => format!("sqlite://{}", tmp.path().join("crawl.db").display()),
    };
    if opts.spawn_workers == 0 && opts.broker.is_none() {
        bail!("a temporary broker needs workers: --workers must be at least 1");
    }
    let workers = WorkerProcesses::spawn(&broker, opts.spawn_workers, opts.concurrency)?;
    let client = Server::builder().broker(&broker).workers(0).build()?;
    let crawl_id = opts
        .crawl_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let host = frontier.host.clone();
    let per_host = opts.per_host;
    let summary = drive(frontier, opts.concurrency, stall, &mut |url, tx| {
        let call = fetch_page::call(url.clone(), host.clone(), ms, per_host)
            .idempotency_key(format!("crawler:{crawl_id}:{url}"));
        client
            .job(call)
            .callback(move |r| {
                let _ = tx.send(r.unwrap_or_else(|e| Report::failed(url, e.to_string())));
            })
            .submit();
    });
    client.destroy();
    drop(workers);
    summary
}
