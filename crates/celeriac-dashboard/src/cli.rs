//! `celeriac dashboard`: its command-line options and the glue that opens
//! the broker, binds the address and serves until Ctrl-C.

use std::net::SocketAddr;

use clap::Args;

use crate::{Dashboard, DashboardError};

/// `celeriac dashboard` options (the broker and result backend come from
/// the command's global `--broker` and `--result-backend`).
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct DashboardArgs {
    /// Address to serve on. Without a token only a loopback address is
    /// allowed (see --insecure-no-auth).
    #[arg(long, default_value = "127.0.0.1:5555")]
    pub bind: String,
    /// Every page and API call then needs `Authorization: Bearer TOKEN` or
    /// the login cookie (401 otherwise).
    #[arg(long, env = "CELERIAC_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve a non-loopback address without a token (anyone who reaches
    /// it can revoke tasks and resize pools).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Tasks remembered (the least recently changed are forgotten); the
    /// page says how many.
    #[arg(long, default_value_t = celeriac_core::monitor::DEFAULT_MAX_TASKS)]
    pub max_tasks: usize,
    /// Do not ask the workers to send task events (by default
    /// `enable_events` is broadcast at start and every 30 s, as Flower
    /// does).
    #[arg(long)]
    pub no_enable_events: bool,
}

/// Runs `celeriac dashboard` on `broker_url` (and `backend_url` for
/// stored results) until Ctrl-C.
pub async fn run(
    args: DashboardArgs,
    broker_url: &str,
    backend_url: Option<&str>,
) -> Result<(), DashboardError> {
    for (what, url) in [
        ("broker", Some(broker_url)),
        ("result backend", backend_url),
    ] {
        if let Some(url) = url.filter(|u| u.starts_with("memory://")) {
            return Err(DashboardError::Open {
                what,
                url: url.to_string(),
                source: "a memory:// store lives inside one process; the dashboard watches others"
                    .into(),
            });
        }
    }
    let broker = celeriac_connect::open_broker(broker_url).map_err(|e| DashboardError::Open {
        what: "broker",
        url: broker_url.to_string(),
        source: e.into(),
    })?;
    let backend = match backend_url {
        Some(url) => {
            Some(
                celeriac_connect::open_backend(url).map_err(|e| DashboardError::Open {
                    what: "result backend",
                    url: url.to_string(),
                    source: e.into(),
                })?,
            )
        }
        None => None,
    };
    let dashboard = Dashboard::builder(broker)
        .backend(backend)
        .max_tasks(args.max_tasks)
        .token(args.token)
        .insecure_no_auth(args.insecure_no_auth)
        .enable_events(!args.no_enable_events)
        .build()?;
    let io = |source| DashboardError::Io {
        addr: args.bind.clone(),
        source,
    };
    // Every address the name resolves to is checked before any is bound.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&args.bind)
        .await
        .map_err(io)?
        .collect();
    for a in &addrs {
        crate::auth::check_bind(*a, dashboard.has_token(), args.insecure_no_auth)?;
    }
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    eprintln!("-> celeriac dashboard: http://{local}/");
    dashboard
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
