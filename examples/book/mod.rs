//! The book's two running examples, the Fibonacci job and the web
//! crawler, on every layer celeriac offers: `examples/fibonacci.rs` and
//! `examples/crawler.rs` are thin command lines over this module, and
//! `tests/book_layers.rs` runs every layer of both.

use std::fmt;
use std::str::FromStr;

pub mod crawl;
pub mod fetch;
pub mod fib;
pub mod workers;

/// What runs the jobs: the book's chapters, one per tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The thread pool (`celeriac::ThreadPool`; the book's `threading`).
    Threads,
    /// The process pool (`celeriac::ProcessPool`; `multiprocessing`): each
    /// job in a child process.
    Processes,
    /// `#[task] async fn` on the async executor (`asyncio`).
    Async,
    /// The pp-style job server (`celeriac::Server`; Parallel Python) with
    /// callbacks.
    Server,
    /// A task per job on a broker, run by worker processes (Celery).
    Queue,
}

impl Layer {
    /// Every layer, in the book's order.
    pub const ALL: [Layer; 5] = [
        Layer::Threads,
        Layer::Processes,
        Layer::Async,
        Layer::Server,
        Layer::Queue,
    ];
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Threads => "threads",
            Layer::Processes => "processes",
            Layer::Async => "async",
            Layer::Server => "server",
            Layer::Queue => "queue",
        })
    }
}

impl FromStr for Layer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Layer::ALL
            .into_iter()
            .find(|l| l.to_string() == s)
            .ok_or_else(|| {
                format!("unknown layer {s:?}: threads, processes, async, server or queue")
            })
    }
}
