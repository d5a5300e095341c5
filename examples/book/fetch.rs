//! Fetching one page for the crawler: an HTTP GET with timeouts, under a
//! per-host limit, and its links read with a real HTML parser (scraper,
//! on html5ever). The same rules run on every layer: the blocking client
//! on threads, processes, the job server and the queue, the async client
//! on the async executor.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// The largest body read from one page; the rest is ignored.
const MAX_BODY: u64 = 8 * 1024 * 1024;

/// What one fetch found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Page {
    /// HTTP 200: the page's links to its own host, absolute, without
    /// fragments, deduplicated, in document order.
    Fetched {
        /// The links to crawl next.
        links: Vec<String>,
    },
    /// A redirect (3xx): where it points, when that is on the same host.
    /// The crawler follows it as one more link, so a page reached both by
    /// a redirect and by a link is still fetched once.
    Redirected {
        /// The target, absolute and without its fragment.
        to: Option<String>,
    },
    /// Not a page: another status (404, 500, ...), a timeout, a refused
    /// connection, an unreadable body.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One fetch and the process that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The URL fetched.
    pub url: String,
    /// What it gave.
    pub page: Page,
    /// The process that fetched it (a pool child, a worker elsewhere).
    pub pid: u32,
}

impl Report {
    /// A failure of `url` for `reason`, seen by this process.
    pub fn failed(url: impl Into<String>, reason: impl Into<String>) -> Self {
        Report {
            url: url.into(),
            page: Page::Failed {
                reason: reason.into(),
            },
            pid: std::process::id(),
        }
    }
}

/// How to fetch: the whole-request timeout and how many requests may be
/// in flight to one host from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connect plus response timeout of one request.
    pub timeout: Duration,
    /// Requests in flight to one host at once, in this process.
    pub per_host: usize,
}

/// `href` resolved against `base`, without its fragment, if it is an
/// http(s) URL on `host`.
///
/// ```
/// use url::Url;
/// use celeriac_examples::book::fetch::same_host_link;
/// let base = Url::parse("http://127.0.0.1:8000/a/b.html").unwrap();
/// assert_eq!(
///     same_host_link(&base, "../c.html#top", "127.0.0.1").as_deref(),
///     Some("http://127.0.0.1:8000/c.html")
/// );
/// assert_eq!(same_host_link(&base, "http://localhost:8000/", "127.0.0.1"), None);
/// assert_eq!(same_host_link(&base, "mailto:a@b.c", "127.0.0.1"), None);
/// ```
pub fn same_host_link(base: &Url, href: &str, host: &str) -> Option<String> {
    let mut url = base.join(href.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str() != Some(host) {
        return None;
    }
    url.set_fragment(None);
    Some(url.into())
}

/// The same-host links of an HTML document fetched from `page`, honouring
/// `<base href>`.
///
/// ```
/// use url::Url;
/// use celeriac_examples::book::fetch::links_of;
/// let page = Url::parse("http://h/dir/").unwrap();
/// let html = r#"<a href="x">x</a><a href="/y#f">y</a><a href="x">again</a>
///               <a href="http://other/">o</a><a>no href</a>"#;
/// assert_eq!(links_of(&page, html, "h"), ["http://h/dir/x", "http://h/y"]);
/// ```
pub fn links_of(page: &Url, html: &str, host: &str) -> Vec<String> {
    let doc = scraper::Html::parse_document(html);
    let base = scraper::Selector::parse("base[href]").expect("valid selector");
    let anchors = scraper::Selector::parse("a[href]").expect("valid selector");
    let base = doc
        .select(&base)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| page.join(href).ok())
        .unwrap_or_else(|| page.clone());
    let mut seen = std::collections::HashSet::new();
    doc.select(&anchors)
        .filter_map(|a| a.value().attr("href"))
        .filter_map(|href| same_host_link(&base, href, host))
        .filter(|link| seen.insert(link.clone()))
        .collect()
}

/// What a response says, once its body (for a 200) is read.
fn classify(
    url: &Url,
    host: &str,
    status: u16,
    location: Option<&str>,
    body: Option<&str>,
) -> Page {
    match status {
        200 => Page::Fetched {
            links: body.map(|b| links_of(url, b, host)).unwrap_or_default(),
        },
        300..=399 => Page::Redirected {
            to: location.and_then(|l| same_host_link(url, l, host)),
        },
        _ => Page::Failed {
            reason: format!("HTTP {status}"),
        },
    }
}

/// What the crawler reads of a response's head: the status, the
/// redirect target, and whether the body is HTML worth parsing for links.
fn head(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> (u16, Option<String>, bool) {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let location = header(reqwest::header::LOCATION).map(str::to_string);
    let html = header(reqwest::header::CONTENT_TYPE).is_none_or(|t| t.contains("html"));
    (status.as_u16(), location, html)
}

/// An error with its causes, one line (`error sending request: ...:
/// Connection refused`).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() { "timed out: " } else { "" };
    let mut text = format!("{kind}{e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// rustls on the workspace's pure-Rust `ring` provider, installed once.
fn install_tls_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err only if another provider is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The process's blocking client for `timeout` (one per timeout, kept:
/// connections to a host are reused across pages).
fn blocking_client(timeout: Duration) -> reqwest::Result<reqwest::blocking::Client> {
    static CLIENTS: OnceLock<Mutex<HashMap<Duration, reqwest::blocking::Client>>> = OnceLock::new();
    install_tls_provider();
    let mut clients = CLIENTS.get_or_init(Default::default).lock().expect("lock");
    if let Some(c) = clients.get(&timeout) {
        return Ok(c.clone());
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("celeriac-crawler/", env!("CARGO_PKG_VERSION")))
        .build()?;
    clients.insert(timeout, client.clone());
    Ok(client)
}

/// An async client for `timeout`. Idle connections are not kept: a
/// connection belongs to the runtime that opened it, and one process may
/// run several runtimes.
fn async_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("celeriac-crawler/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Requests in flight per host in this process, for blocking fetches.
#[derive(Default)]
struct HostGate {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

/// A request slot on one host; freed on drop.
struct Slot<'a> {
    gate: &'a HostGate,
    host: String,
}

impl HostGate {
    fn global() -> &'static HostGate {
        static GATE: OnceLock<HostGate> = OnceLock::new();
        GATE.get_or_init(HostGate::default)
    }

    fn enter(&self, host: &str, limit: usize) -> Slot<'_> {
        let mut busy = self.busy.lock().expect("lock");
        while busy.get(host).copied().unwrap_or(0) >= limit.max(1) {
            busy = self.freed.wait(busy).expect("lock");
        }
        *busy.entry(host.to_string()).or_insert(0) += 1;
        Slot {
            gate: self,
            host: host.to_string(),
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.gate.busy.lock().expect("lock");
        if let Some(n) = busy.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.host);
            }
        }
        self.gate.freed.notify_all();
    }
}

/// One host's request slots for async fetches.
type HostSemaphore = Arc<tokio::sync::Semaphore>;

/// The per-host semaphore for async fetches (one per host and limit).
fn host_semaphore(host: &str, limit: usize) -> HostSemaphore {
    static SEMAPHORES: OnceLock<Mutex<HashMap<(String, usize), HostSemaphore>>> = OnceLock::new();
    SEMAPHORES
        .get_or_init(Default::default)
        .lock()
        .expect("lock")
        .entry((host.to_string(), limit))
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit.max(1))))
        .clone()
}

/// Fetches `url` with the blocking client; links outside `host` are
/// dropped.
pub fn fetch_blocking(url: &str, host: &str, limits: Limits) -> Report {
    let page = match Url::parse(url) {
        Err(e) => Page::Failed {
            reason: format!("bad URL: {e}"),
        },
        Ok(parsed) => {
            let _slot = HostGate::global().enter(parsed.host_str().unwrap_or(""), limits.per_host);
            get_blocking(&parsed, host, limits.timeout)
        }
    };
    Report {
        url: url.to_string(),
        page,
        pid: std::process::id(),
    }
}

fn get_blocking(url: &Url, host: &str, timeout: Duration) -> Page {
    let failed = |e: &reqwest::Error| Page::Failed {
        reason: describe(e),
    };
    let client = match blocking_client(timeout) {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    let resp = match client.get(url.clone()).send() {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let (status, location, html) = head(resp.status(), resp.headers());
    let mut body = Vec::new();
    if status == 200 && html {
        // A body cut by the timeout is a failed page, as a refused one is.
        if let Err(e) = resp.take(MAX_BODY).read_to_end(&mut body) {
            return Page::Failed {
                reason: format!("reading the body: {e}"),
            };
        }
    }
    let text = String::from_utf8_lossy(&body);
    classify(
        url,
        host,
        status,
        location.as_deref(),
        html.then_some(&*text),
    )
}

/// Fetches `url` with the async client; links outside `host` are dropped.
pub async fn fetch_async(url: &str, host: &str, limits: Limits) -> Report {
    let page = match Url::parse(url) {
        Err(e) => Page::Failed {
            reason: format!("bad URL: {e}"),
        },
        Ok(parsed) => {
            let semaphore = host_semaphore(parsed.host_str().unwrap_or(""), limits.per_host);
            let _permit = semaphore.acquire().await.expect("never closed");
            get_async(&parsed, host, limits.timeout).await
        }
    };
    Report {
        url: url.to_string(),
        page,
        pid: std::process::id(),
    }
}

async fn get_async(url: &Url, host: &str, timeout: Duration) -> Page {
    let failed = |e: &reqwest::Error| Page::Failed {
        reason: describe(e),
    };
    let client = match async_client(timeout) {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    let mut resp = match client.get(url.clone()).send().await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let (status, location, html) = head(resp.status(), resp.headers());
    let mut body = Vec::new();
    if status == 200 && html {
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = (MAX_BODY as usize).saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return failed(&e),
            }
        }
    }
    let text = String::from_utf8_lossy(&body);
    classify(
        url,
        host,
        status,
        location.as_deref(),
        html.then_some(&*text),
    )
}
