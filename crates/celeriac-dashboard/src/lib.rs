//! # celeriac-dashboard
//!
//! `celeriac dashboard`: a live web dashboard of the workers on a broker,
//! celeriac and Python Celery alike, served by celeriac itself (Flower's
//! job, in one static binary). Everything it shows comes from Celery's
//! monitoring events ([`celeriac_core::monitor`], the same state
//! `celeriac events` draws) and from remote-control replies (`stats`,
//! `active_queues`), so any worker that speaks Celery's wire appears.
//!
//! - **Page**: workers (online, pool, concurrency, active, processed,
//!   load, last heartbeat), queues (depth and consumers), recent tasks
//!   (filter by state and name; detail with arguments, result or
//!   traceback, runtime, retries, parent and children), live charts of
//!   tasks per second, successes, failures and runtime percentiles (pushed
//!   by server-sent events), and the dead-letter queue.
//! - **Actions** (POSTs with a CSRF token): revoke or terminate a task,
//!   grow or shrink a worker's pool, set a task's rate limit, requeue a
//!   dead letter.
//! - **API**: JSON under `/api`, documented in `docs/dashboard-api.md`.
//! - **Memory** is bounded: the last [`DashboardBuilder::max_tasks`]
//!   tasks, and the page says how many.
//! - **Security**: with a token, every page and API call needs
//!   `Authorization: Bearer TOKEN` or the login cookie, and gets 401
//!   otherwise; without one, [`Dashboard::serve`] refuses a non-loopback
//!   address unless told [`DashboardBuilder::insecure_no_auth`].
//!
//! Assets (the page, its script and the vendored uPlot chart library, MIT)
//! are compiled into the binary: nothing is fetched at run time.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = celeriac_connect::open_broker("redis://127.0.0.1:6379/0")?;
//! let dashboard = celeriac_dashboard::Dashboard::builder(broker)
//!     .max_tasks(5_000)
//!     .token(Some("s3cret".to_string()))
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5555").await?;
//! dashboard.serve(listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod assets;
mod auth;
mod cli;
mod collect;
mod server;
mod throttle;

pub use cli::{DashboardArgs, run};
pub use server::{Dashboard, DashboardBuilder};

/// What can go wrong building or serving the dashboard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// No token, and the address is reachable from other hosts.
    #[error(
        "refusing to serve {0} without a token: it is reachable from other hosts; \
         give --token (or CELERIAC_DASHBOARD_TOKEN), bind 127.0.0.1, or pass --insecure-no-auth"
    )]
    PublicWithoutToken(std::net::SocketAddr),
    /// The token is empty or holds characters a header cannot carry.
    #[error("the token must be non-empty printable ASCII without spaces")]
    BadToken,
    /// `max_tasks` is zero.
    #[error("max_tasks must be at least 1")]
    NoTasks,
    /// The broker or backend URL could not be opened, or is in-process.
    #[error("opening {what} {url}")]
    Open {
        /// `broker` or `result backend`.
        what: &'static str,
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Binding or serving the socket failed.
    #[error("serving {addr}")]
    Io {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
