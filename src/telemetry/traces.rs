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
    // Colours only for a person at a terminal: not in files, pipes or log collectors, and not
    // when NO_COLOR is set (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = match settings.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
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
    with_parent(span, parent)
}

/// `span` as a child of `parent` (when it is a valid context), with its `trace_id` recorded.
fn with_parent(span: tracing::Span, parent: opentelemetry::Context) -> tracing::Span {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The W3C traceparent of the current span, when traces are on and it is sampled or not.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The span of one deployment's run by the worker: in the trace of the call that released it
/// (its stored traceparent), with the migration, environment and risk; the outcome is recorded
/// when known.
pub fn deployment_span(
    action: &'static str,
    migration_id: &str,
    environment: &str,
    risk: &str,
    trace_context: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "deployment",
        otel.name = %format!("{action} {environment}"),
        sluice.action = action,
        sluice.migration_id = %migration_id,
        sluice.environment = %environment,
        sluice.risk = %risk,
        sluice.outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let mut carrier = std::collections::HashMap::new();
    if let Some(traceparent) = trace_context {
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    with_parent(span, parent)
}

/// The span of one statement run against a target (`db.query.text` cut to 300 characters).
pub fn statement_span(system: &'static str, namespace: &str, text: &str) -> tracing::Span {
    let mut query: String = text.trim().chars().take(300).collect();
    if text.trim().chars().count() > 300 {
        query.push('…');
    }
    tracing::info_span!(
        "statement",
        otel.name = %format!("{system} statement"),
        otel.kind = "client",
        db.system = system,
        db.namespace = %namespace,
        db.query.text = %query,
        sluice.outcome = tracing::field::Empty,
    )
}

/// Runs one statement's future inside its span and counts it (`sluice_statement_duration_seconds`).
pub async fn observed_statement<T, E>(
    system: &'static str,
    environment: &str,
    namespace: &str,
    text: &str,
    run: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = statement_span(system, namespace, text);
    let result = run.instrument(span.clone()).await;
    span.record(
        "sluice.outcome",
        if result.is_ok() { "ok" } else { "error" },
    );
    super::statement_ran(environment, started.elapsed().as_secs_f64(), result.is_ok());
    result
}
