//! The dashboard as a value: its builder, the state its handlers share,
//! and serving it on a listener (routes, auth layer, background
//! collectors, shutdown).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use celeriac_core::monitor::Monitor;
use celeriac_core::{Broker, ResultBackend};
use tokio::net::TcpListener;

use crate::DashboardError;
use crate::auth::Auth;
use crate::collect::{Collected, Live};
use crate::throttle::Throttle;
use crate::{api, assets, auth, collect, throttle};

/// Builds a [`Dashboard`]. See [`Dashboard::builder`].
#[derive(Debug)]
pub struct DashboardBuilder {
    broker: Arc<dyn Broker>,
    backend: Option<Arc<dyn ResultBackend>>,
    max_tasks: usize,
    token: Option<String>,
    insecure_no_auth: bool,
    enable_events: bool,
}

impl DashboardBuilder {
    /// The result backend, for results and tracebacks of tasks whose
    /// events did not carry them. Default: none.
    pub fn backend(mut self, backend: Option<Arc<dyn ResultBackend>>) -> Self {
        self.backend = backend;
        self
    }

    /// How many tasks are remembered (the least recently changed are
    /// forgotten). Default: 10,000, as `celeriac events`.
    pub fn max_tasks(mut self, n: usize) -> Self {
        self.max_tasks = n;
        self
    }

    /// The token every request must carry (`Authorization: Bearer TOKEN`,
    /// or the cookie the login form sets). Default: none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Serve without a token on any address. Default: false, and
    /// [`Dashboard::serve`] refuses a non-loopback address without a token.
    pub fn insecure_no_auth(mut self, yes: bool) -> Self {
        self.insecure_no_auth = yes;
        self
    }

    /// Ask the workers to send task events (`enable_events`) at start and
    /// every half minute, as Flower does; without them only worker events
    /// arrive from workers started without `-E`. Default: true.
    pub fn enable_events(mut self, yes: bool) -> Self {
        self.enable_events = yes;
        self
    }

    /// The dashboard, or why not.
    pub fn build(self) -> Result<Dashboard, DashboardError> {
        if self.max_tasks == 0 {
            return Err(DashboardError::NoTasks);
        }
        if let Some(t) = &self.token
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(DashboardError::BadToken);
        }
        Ok(Dashboard {
            hub: Arc::new(Hub {
                collected: Collected::new(Monitor::new(self.max_tasks)),
                live: Live::new(),
                auth: Auth::new(self.token, !self.insecure_no_auth),
                throttle: Throttle::default(),
                broker: self.broker,
                backend: self.backend,
                enable_events: self.enable_events,
            }),
            insecure_no_auth: self.insecure_no_auth,
        })
    }
}

/// What the handlers and collectors share.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) backend: Option<Arc<dyn ResultBackend>>,
    pub(crate) collected: Collected,
    pub(crate) live: Live,
    pub(crate) auth: Auth,
    pub(crate) throttle: Throttle,
    pub(crate) enable_events: bool,
}

/// A dashboard over one broker: build it with [`Dashboard::builder`],
/// then [`serve`](Dashboard::serve) it.
#[derive(Debug)]
pub struct Dashboard {
    hub: Arc<Hub>,
    insecure_no_auth: bool,
}

impl Dashboard {
    /// A dashboard of the workers on `broker`.
    pub fn builder(broker: Arc<dyn Broker>) -> DashboardBuilder {
        DashboardBuilder {
            broker,
            backend: None,
            max_tasks: celeriac_core::monitor::DEFAULT_MAX_TASKS,
            token: None,
            insecure_no_auth: false,
            enable_events: true,
        }
    }

    pub(crate) fn has_token(&self) -> bool {
        self.hub.auth.has_token()
    }

    /// Serves the page and the API on `listener` until `shutdown`
    /// completes, collecting events and remote-control replies meanwhile.
    /// Refuses ([`DashboardError::PublicWithoutToken`]) a listener on a
    /// non-loopback address without a token, unless built with
    /// [`insecure_no_auth`](DashboardBuilder::insecure_no_auth).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DashboardError> {
        let addr = listener.local_addr().map_err(|source| DashboardError::Io {
            addr: "the listener".into(),
            source,
        })?;
        auth::check_bind(addr, self.hub.auth.has_token(), self.insecure_no_auth)?;
        let collectors = collect::start(self.hub.clone()).await;
        let app = router(self.hub.clone());
        tracing::info!(%addr, auth = self.hub.auth.has_token(), "dashboard serving");
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| DashboardError::Io {
            addr: addr.to_string(),
            source,
        });
        for c in collectors {
            c.abort();
        }
        self.hub.live.close();
        served
    }
}

fn router(hub: Arc<Hub>) -> Router {
    let guarded = Router::new()
        .route("/", get(assets::index))
        .route("/static/{file}", get(assets::file))
        .route("/api/summary", get(api::summary))
        .route("/api/workers", get(api::workers))
        .route("/api/tasks", get(api::tasks))
        .route("/api/tasks/{id}", get(api::task))
        .route("/api/queues", get(api::queues))
        .route("/api/dlq", get(api::dlq))
        .route("/api/live", get(api::live))
        .route("/api/tasks/{id}/revoke", post(api::revoke))
        .route("/api/workers/{node}/pool", post(api::pool))
        .route("/api/rate_limit", post(api::rate_limit))
        .route("/api/dlq/{id}/requeue", post(api::requeue))
        .route("/logout", post(auth::logout))
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth::guard));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .merge(guarded)
        .layer(middleware::from_fn_with_state(hub.clone(), throttle::layer))
        .layer(middleware::from_fn(auth::headers))
        .with_state(hub)
}
