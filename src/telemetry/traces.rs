//! Logs and OpenTelemetry traces. Log lines go to stderr as text or JSON; with an OTLP endpoint
//! set, spans are exported in batches over OTLP/gRPC (a collector that is down costs dropped
//! spans, nothing else). A caller's W3C `traceparent` (REST header or gRPC metadata) becomes
//! the parent of the request's span, so that a CI pipeline's trace continues into Sluice.

use crate::config::{LogFormat, Settings};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes the spans not yet exported when the daemon stops.
pub struct TraceGuard(Option<SdkTracerProvider>);

impl TraceGuard {
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            eprintln!("sluice: flushing traces at shutdown failed: {e}");
        }
    }
}

/// Installs the process's log and trace pipeline. Call within a Tokio runtime (the OTLP
/// exporter's connection lives on it).
pub fn init(settings: &Settings) -> anyhow::Result<TraceGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into());
    let fmt = match settings.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (otel, provider) = match settings.tracing.endpoint() {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    settings.tracing.sampling_ratio,
                ))))
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(settings.tracing.service_name.clone())
                        .build(),
                )
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let tracer = provider.tracer("sluice");
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TraceGuard(provider))
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one API request (REST or gRPC), a child of the caller's `traceparent` when it
/// sends one; `trace_id` is recorded on it, so that log lines within carry it.
pub fn request_span(
    protocol: &'static str,
    method: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> tracing::Span {
    // The span's name stays low in cardinality: a gRPC method's path, or the HTTP method
    // (the REST path, with its ids, is an attribute).
    let name = match protocol {
        "grpc" => format!("grpc {path}"),
        _ => format!("{protocol} {method}"),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        rpc.system = protocol,
        http.request.method = %method,
        url.path = %path,
        trace_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}
