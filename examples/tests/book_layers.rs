//! The book's two running examples on every layer, end to end: the web
//! crawler against a site this test serves itself (cycles, a 404 and a
//! 410, a redirect, a page slower than the timeout, a refused port, a
//! non-HTML page, links to another host), and the Fibonacci job.
//!
//! Its own `main` (`harness = false`) calls `celeriac::init()` first, so
//! the process pool can re-execute this binary as a child, and serves
//! `worker --broker URL` when the queue layers start it as a worker. The
//! checks run in parallel threads, each with its own site.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use celeriac_examples::book::Layer;
use celeriac_examples::book::crawl::{CrawlOptions, Summary, crawl};
use celeriac_examples::book::fib::{FibOptions, fib_iter, run};
use celeriac_examples::book::workers::{EXIT_WITH_PARENT, WorkerProcesses, run_worker};
use celeriac_testkit::redis_server::RedisServer;

/// A small site on 127.0.0.1 that counts the requests of each path.
struct Site {
    port: u16,
    /// A port nothing listens on (a link there is refused).
    closed: u16,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Site {
    fn start() -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let hits: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let counted = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let counted = counted.clone();
                std::thread::spawn(move || serve(conn, port, closed, &counted));
            }
        });
        Site { port, closed, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The pages the crawl must find (HTTP 200).
    fn pages(&self) -> BTreeSet<String> {
        ["/", "/a", "/b", "/c", "/d?x=1", "/data.json"]
            .iter()
            .map(|p| self.url(p))
            .collect()
    }

    /// The links that must fail.
    fn failures(&self) -> BTreeSet<String> {
        let mut f: BTreeSet<String> = ["/missing", "/gone", "/slow"]
            .iter()
            .map(|p| self.url(p))
            .collect();
        f.insert(format!("http://127.0.0.1:{}/refused", self.closed));
        f
    }

    /// Checks a crawl's summary and that the site saw each page once and
    /// nothing off the crawl.
    fn check(&self, s: &Summary) -> anyhow::Result<()> {
        let failed: BTreeSet<String> = s.failed.iter().map(|(u, _)| u.clone()).collect();
        ensure!(s.to_string() == "crawled 6 pages, 4 failed", "summary: {s}");
        ensure!(s.pages == self.pages(), "pages: {:?}", s.pages);
        ensure!(failed == self.failures(), "failed: {:?}", s.failed);
        ensure!(s.redirects == 1, "redirects: {}", s.redirects);
        let hits = self.hits.lock().expect("lock").clone();
        for path in [
            "/",
            "/a",
            "/b",
            "/c",
            "/d?x=1",
            "/data.json",
            "/old",
            "/missing",
            "/gone",
            "/slow",
        ] {
            ensure!(
                hits.get(path) == Some(&1),
                "{path} fetched {:?} times: {hits:?}",
                hits.get(path)
            );
        }
        ensure!(hits.len() == 10, "requests off the crawl: {hits:?}");
        Ok(())
    }
}

/// Answers one request: `/` links to everything, the rest forms cycles.
fn serve(mut conn: TcpStream, port: u16, closed: u16, hits: &Mutex<BTreeMap<String, usize>>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    *hits.lock().expect("lock").entry(path.clone()).or_insert(0) += 1;
    let html = |links: &[String]| {
        let body: String = links
            .iter()
            .map(|l| format!("<li><a href=\"{l}\">{l}</a></li>\n"))
            .collect();
        (
            200,
            "text/html; charset=utf-8",
            format!("<!doctype html><title>t</title><ul>\n{body}</ul>"),
        )
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (status, ctype, body, location) = match path.as_str() {
        "/" => {
            let (st, ct, b) = html(
                &[
                    s(&[
                        "a",
                        "/b#section",
                        "/missing",
                        "/old",
                        "/slow",
                        "mailto:x@example.com",
                        "#top",
                    ]),
                    vec![
                        format!("http://localhost:{port}/elsewhere"),
                        format!("http://127.0.0.1:{closed}/refused"),
                    ],
                ]
                .concat(),
            );
            (st, ct, b, None)
        }
        "/a" => {
            let (st, ct, b) = html(&s(&["/", "b", "../c", "/a#self"]));
            (st, ct, b, None)
        }
        "/b" => {
            let (st, ct, b) = html(&s(&["/a", "/d?x=1", "/data.json"]));
            (st, ct, b, None)
        }
        "/c" => {
            let (st, ct, b) = html(&s(&["/", "/missing", "/gone"]));
            (st, ct, b, None)
        }
        "/d?x=1" => {
            let (st, ct, b) = html(&s(&["/c", "./d?x=1#again"]));
            (st, ct, b, None)
        }
        // Not HTML: its text looks like a link, and must not be followed.
        "/data.json" => (
            200,
            "application/json",
            r#"{"html": "<a href=\"/never\">x</a>"}"#.to_string(),
            None,
        ),
        "/old" => (301, "text/plain", String::new(), Some("/c")),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(4));
            let (st, ct, b) = html(&s(&["/never"]));
            (st, ct, b, None)
        }
        "/gone" => (410, "text/plain", "gone".to_string(), None),
        _ => (404, "text/plain", "not found".to_string(), None),
    };
    let reason = match status {
        200 => "OK",
        301 => "Moved Permanently",
        410 => "Gone",
        _ => "Not Found",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(l) = location {
        head.push_str(&format!("Location: {l}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}

fn crawl_options(layer: Layer) -> CrawlOptions {
    CrawlOptions {
        concurrency: 4,
        timeout: Duration::from_secs(1),
        ..CrawlOptions::new(layer)
    }
}

/// Every layer finds the same pages and failures, each page fetched once.
fn crawl_on(layer: Layer) -> anyhow::Result<()> {
    let site = Site::start();
    let summary = crawl(&site.url("/"), &crawl_options(layer))?;
    site.check(&summary)?;
    let me = std::process::id();
    match layer {
        Layer::Processes | Layer::Queue => ensure!(
            !summary.pids.contains(&me) && !summary.pids.is_empty(),
            "{layer}: pages fetched in this process: {:?}",
            summary.pids
        ),
        _ => ensure!(
            summary.pids == BTreeSet::from([me]),
            "{layer}: {:?}",
            summary.pids
        ),
    }
    Ok(())
}

/// Two crawlers with one crawl id on one broker, with a worker started
/// on its own beside theirs: each URL is fetched once across all of them,
/// and both report the whole crawl.
fn shared_crawl() -> anyhow::Result<()> {
    let site = Site::start();
    let dir = tempfile::tempdir()?;
    let broker = format!("sqlite://{}", dir.path().join("shared.db").display());
    let outside = WorkerProcesses::spawn(&broker, 1, 2)?;
    let opts = CrawlOptions {
        broker: Some(broker),
        spawn_workers: 1,
        crawl_id: Some("shared".into()),
        ..crawl_options(Layer::Queue)
    };
    let start = site.url("/");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| crawl(&start, &opts));
        let b = s.spawn(|| crawl(&start, &opts));
        (a.join(), b.join())
    });
    let a = a.map_err(|_| anyhow::anyhow!("crawler a panicked"))??;
    let b = b.map_err(|_| anyhow::anyhow!("crawler b panicked"))??;
    site.check(&a)?;
    site.check(&b)?;
    ensure!(
        a.pids == b.pids,
        "both see the same fetches: {:?} {:?}",
        a.pids,
        b.pids
    );
    drop(outside);
    Ok(())
}

/// `--max-pages` caps the URLs fetched.
fn crawl_max_pages() -> anyhow::Result<()> {
    let site = Site::start();
    let opts = CrawlOptions {
        max_pages: 3,
        ..crawl_options(Layer::Threads)
    };
    let s = crawl(&site.url("/"), &opts)?;
    let fetched = s.pages.len() + s.failed.len() + s.redirects;
    ensure!(fetched == 3, "fetched {fetched}: {s:?}");
    let hits: usize = site.hits.lock().expect("lock").values().sum();
    ensure!(hits == 3, "the site saw {hits} requests");
    Ok(())
}

/// fib on `layer`: every result right, in input order, each job on a node.
fn fib_on(layer: Layer) -> anyhow::Result<()> {
    let opts = FibOptions {
        inputs: vec![4, 3, 8, 6, 10, 20, 21, 22],
        ..FibOptions::new(layer)
    };
    let r = run(&opts)?;
    let expected: Vec<(u64, u64)> = opts.inputs.iter().map(|&n| (n, fib_iter(n))).collect();
    ensure!(r.results == expected, "{layer}: {:?}", r.results);
    let jobs: u64 = r.nodes.values().map(|t| t.jobs).sum();
    ensure!(
        jobs == 8,
        "{layer}: {jobs} jobs in the stats: {:?}",
        r.nodes
    );
    let me = format!("pid {}", std::process::id());
    match layer {
        Layer::Processes => ensure!(
            r.nodes.keys().all(|n| n.starts_with("pid ") && *n != me),
            "{layer}: {:?}",
            r.nodes
        ),
        Layer::Server => ensure!(r.nodes.keys().all(|n| n == "local"), "{:?}", r.nodes),
        Layer::Queue => ensure!(
            r.nodes.keys().all(|n| n.starts_with("book-")),
            "the queue's jobs ran on its worker processes: {:?}",
            r.nodes
        ),
        _ => {}
    }
    r.print_stats();
    Ok(())
}

/// pp's cluster with the book's job: the server layer on Redis with no
/// local worker, every job on remote worker processes (ppservers).
fn fib_server_on_redis_nodes() -> anyhow::Result<()> {
    if !RedisServer::available() {
        return Ok(());
    }
    let redis = RedisServer::start();
    let url = redis.url("");
    let nodes = WorkerProcesses::spawn(&url, 2, 1)?;
    let opts = FibOptions {
        broker: Some(url),
        workers: 0,
        inputs: vec![20, 21, 22, 23, 24, 25],
        ..FibOptions::new(Layer::Server)
    };
    let r = run(&opts)?;
    let expected: Vec<(u64, u64)> = opts.inputs.iter().map(|&n| (n, fib_iter(n))).collect();
    ensure!(r.results == expected, "{:?}", r.results);
    let names: Vec<String> = nodes.pids().iter().map(|p| format!("book-{p}@")).collect();
    ensure!(
        r.nodes
            .keys()
            .all(|n| names.iter().any(|p| n.starts_with(p.as_str()))),
        "every job ran on a remote node: {:?}",
        r.nodes
    );
    r.print_stats();
    Ok(())
}

type Check = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

fn main() {
    celeriac::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        // A queue layer's worker: `worker --broker URL --concurrency N`.
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let broker = value("--broker").expect("--broker");
        let n = value("--concurrency")
            .and_then(|c| c.parse().ok())
            .unwrap_or(2);
        run_worker(&broker, n, args.iter().any(|a| a == EXIT_WITH_PARENT)).expect("worker");
        return;
    }
    let filter: Option<String> = args.iter().find(|a| !a.starts_with('-')).cloned();
    let mut checks: Vec<(String, Check)> = Vec::new();
    for layer in Layer::ALL {
        checks.push((format!("crawl_{layer}"), Box::new(move || crawl_on(layer))));
        checks.push((format!("fib_{layer}"), Box::new(move || fib_on(layer))));
    }
    checks.push((
        "crawl_queue_shared_by_two_crawlers_and_an_outside_worker".into(),
        Box::new(shared_crawl),
    ));
    checks.push(("crawl_max_pages".into(), Box::new(crawl_max_pages)));
    checks.push((
        "fib_server_on_redis_nodes".into(),
        Box::new(fib_server_on_redis_nodes),
    ));
    checks.retain(|(name, _)| filter.as_ref().is_none_or(|f| name.contains(f.as_str())));

    let started = Instant::now();
    let running: Vec<_> = checks
        .into_iter()
        .map(|(name, check)| {
            let t = std::thread::Builder::new()
                .name(name.clone())
                .spawn(check)
                .context("spawn")
                .expect("a thread per check");
            (name, t)
        })
        .collect();
    let total = running.len();
    let mut failed = 0;
    for (name, t) in running {
        match t.join() {
            Ok(Ok(())) => println!("test {name} ... ok"),
            Ok(Err(e)) => {
                failed += 1;
                println!("test {name} ... FAILED: {e:#}");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED (panicked)");
            }
        }
    }
    println!(
        "test result: {}. {} passed; {failed} failed; in {:.1}s",
        if failed == 0 { "ok" } else { "FAILED" },
        total - failed,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
