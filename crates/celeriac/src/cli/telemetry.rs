//! What the worker tells monitoring: the Prometheus endpoint
//! (`--metrics-addr`, through `metrics-exporter-prometheus`), its gauge
//! sampler, and, with the `otlp` feature, task spans exported by
//! OpenTelemetry OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use celeriac::{TaskMetrics, Worker};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::registry::LookupSpan;

/// Histogram buckets for every `*_seconds` metric: 1 ms to 5 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// How often the gauges (reserved, active, pool children) are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Serves `/metrics` in the Prometheus text format on `addr` (HOST:PORT)
/// from a thread of its own, and installs the recorder every `metrics`
/// call in the process reports to. Must be called outside any async
/// runtime.
fn serve_metrics(addr: &str) -> Result<SocketAddr> {
    let at: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("--metrics-addr {addr:?}: not a HOST:PORT"))?
        .next()
        .with_context(|| format!("--metrics-addr {addr:?}: no address"))?;
    PrometheusBuilder::new()
        .with_http_listener(at)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), BUCKETS)
        .context("histogram buckets")?
        .install()
        .with_context(|| format!("serving metrics on {at}"))?;
    TaskMetrics::describe();
    tracing::info!(addr = %at, "serving Prometheus metrics at /metrics");
    Ok(at)
}

/// With `--metrics-addr`, serves `/metrics` there and returns the
/// observer to add to the worker.
pub(crate) fn worker_metrics(
    addr: Option<&str>,
    registry: &celeriac::Registry,
) -> Result<Option<Arc<TaskMetrics>>> {
    let Some(addr) = addr else { return Ok(None) };
    serve_metrics(addr)?;
    Ok(Some(Arc::new(TaskMetrics::for_registry(registry))))
}

/// Sets the worker's gauges now and every [`SAMPLE_EVERY`], until the
/// task is dropped.
pub(crate) async fn sample_gauges(worker: Worker, metrics: Arc<TaskMetrics>) {
    loop {
        metrics.sample(&worker);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Installs `subscriber` as the global one; with the `otlp` feature and
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans also go out by OTLP.
pub(crate) fn install_subscriber<S>(subscriber: S)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    #[cfg(feature = "otlp")]
    {
        if let Some(layer) = otlp::layer::<S>() {
            use tracing_subscriber::layer::SubscriberExt as _;
            let _ = tracing::subscriber::set_global_default(subscriber.with(layer));
            return;
        }
    }
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Sends the spans not yet exported (with the `otlp` feature).
pub(crate) fn flush() {
    #[cfg(feature = "otlp")]
    otlp::shutdown();
}

#[cfg(feature = "otlp")]
mod otlp {
    //! OTLP export of spans (`http/protobuf`, as configured by the standard
    //! `OTEL_EXPORTER_OTLP_*` variables).

    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::registry::LookupSpan;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The OpenTelemetry layer, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
    /// traces-only variable) is set.
    pub(super) fn layer<S>()
    -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: OTLP span exporter: {e}; spans are not exported");
                return None;
            }
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "celeriac".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("celeriac");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Flushes and stops the exporter.
    pub(super) fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            let _ = p.shutdown();
        }
    }
}
