//! OpenTelemetry traces: the daemon (its own process, as deployed) exports spans over OTLP/gRPC
//! to a collector served by the test; a caller's `traceparent` (REST header, gRPC metadata)
//! becomes the parent of the request's span.

use crate::interrupted::{Daemon, daemon_setup as setup, start_daemon_with};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP collector: keeps every span it receives, with its resource's service name.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        port
    }

    /// Waits (bounded) for a span of this trace.
    async fn span_of(&self, trace_id: &str) -> (String, Span) {
        for _ in 0..200 {
            if let Some(found) = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|(_, s)| hex::encode(&s.trace_id) == trace_id)
            {
                return found.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no span of trace {trace_id} arrived");
    }
}

fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_callers_traceparent_becomes_the_parent_of_the_requests_span_over_rest_and_grpc() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let collector = Collector::default();
    let port = collector.start().await;
    let (store, dev, dir, config, token) = setup("otel").await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut daemon: Daemon = start_daemon_with(
        &config,
        &dir,
        &store.url,
        &dev.url,
        &[
            ("SLUICE__TRACING__OTLP_ENDPOINT", endpoint.as_str()),
            ("SLUICE__TRACING__SERVICE_NAME", "sluice-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    // REST: the caller's span is the parent.
    let rest_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/environments/development", daemon.rest))
        .bearer_auth(&token)
        .header(
            "traceparent",
            format!("00-{rest_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let (service, span) = collector.span_of(rest_trace).await;
    assert!(service.contains("sluice-under-test"), "{service}");
    assert_eq!(hex::encode(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(span.name, "http GET");
    assert!(
        attribute(&span, "url.path").contains("/api/v1/environments/development"),
        "{span:?}"
    );

    // A hostile or broken traceparent (bad hex, the invalid all-zero trace id, 8 KB of junk)
    // is ignored: the request is served and its span starts a trace of its own.
    for junk in [
        "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01".to_owned(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
        format!("00-{}", "f".repeat(8192)),
    ] {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/environments/staging", daemon.rest))
            .bearer_auth(&token)
            .header("traceparent", junk)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    let mut roots = Vec::new();
    for _ in 0..200 {
        roots = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| attribute(s, "url.path").contains("/api/v1/environments/staging"))
            .map(|(_, s)| s.clone())
            .collect::<Vec<Span>>();
        if roots.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(roots.len(), 3, "{roots:#?}");
    for root in &roots {
        assert!(root.parent_span_id.is_empty(), "{root:?}");
        assert_ne!(hex::encode(&root.trace_id), "0".repeat(32));
    }

    // gRPC: the same through metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut client =
        sluice::api::grpc::pb::sluice_client::SluiceClient::connect(daemon.grpc.clone())
            .await
            .unwrap();
    let mut request = tonic::Request::new(sluice::api::grpc::pb::GetEnvironmentStatusRequest {
        environment: "development".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    client.get_environment_status(request).await.unwrap();
    let (_, span) = collector.span_of(grpc_trace).await;
    assert_eq!(hex::encode(&span.parent_span_id), "b7ad6b7169203331");
    assert_eq!(span.name, "grpc /sluice.v1.Sluice/GetEnvironmentStatus");

    // A submission's trace continues into the worker: the deployment's run is a child of the
    // call that submitted (and, in development, released) it, each statement a child of that.
    let story = "5bf92f3577b34da6a3ce929d0e0e4799";
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/migrations", daemon.rest))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{story}-10f067aa0ba902b7-01"))
        .json(&crate::harness::migration(
            "Traced",
            "low",
            "CREATE TABLE traced (id int);\nINSERT INTO traced VALUES (1);",
            None,
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let spans_of_story = || {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex::encode(&s.trace_id) == story)
            .map(|(_, s)| s.clone())
            .collect::<Vec<Span>>()
    };
    let mut story_spans = Vec::new();
    for _ in 0..200 {
        story_spans = spans_of_story();
        if story_spans
            .iter()
            .filter(|s| s.name == "postgresql statement")
            .count()
            >= 2
            && story_spans.iter().any(|s| s.name == "apply development")
            && story_spans.iter().any(|s| s.name == "record development")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = story_spans
        .iter()
        .find(|s| s.name == "http POST")
        .unwrap_or_else(|| panic!("no request span: {story_spans:#?}"));
    assert_eq!(hex::encode(&request.parent_span_id), "10f067aa0ba902b7");
    let apply = story_spans
        .iter()
        .find(|s| s.name == "apply development")
        .unwrap_or_else(|| panic!("no apply span: {story_spans:#?}"));
    assert_eq!(apply.parent_span_id, request.span_id, "{apply:?}");
    assert!(
        attribute(apply, "sluice.migration_id").contains(&id),
        "{apply:?}"
    );
    assert!(
        attribute(apply, "sluice.outcome").contains("applied"),
        "{apply:?}"
    );
    assert!(attribute(apply, "sluice.risk").contains("low"), "{apply:?}");
    // So does the target's history row, written by the run.
    assert!(
        story_spans
            .iter()
            .any(|s| s.name == "history write" && s.parent_span_id == apply.span_id),
        "{story_spans:#?}"
    );
    // The outcome's write to the state store joins the trace too.
    let record = story_spans
        .iter()
        .find(|s| s.name == "record development")
        .unwrap_or_else(|| panic!("no record span: {story_spans:#?}"));
    assert_eq!(record.parent_span_id, request.span_id);
    assert!(
        attribute(record, "sluice.outcome").contains("applied"),
        "{record:?}"
    );
    let statements: Vec<&Span> = story_spans
        .iter()
        .filter(|s| s.name == "postgresql statement")
        .collect();
    assert_eq!(statements.len(), 2, "{statements:#?}");
    for statement in &statements {
        assert_eq!(statement.parent_span_id, apply.span_id);
        assert!(
            attribute(statement, "db.namespace").contains(&dev.name),
            "{statement:?}"
        );
        assert!(attribute(statement, "sluice.outcome").contains("ok"));
    }
    assert!(
        statements
            .iter()
            .any(|s| attribute(s, "db.query.text").contains("CREATE TABLE traced")),
        "{statements:#?}"
    );

    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A collector that is down costs dropped spans, nothing else: requests are answered and
/// migrations applied.
#[tokio::test]
async fn a_collector_that_is_down_costs_only_the_spans() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (store, dev, dir, config, token) = setup("oteldown").await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut daemon: Daemon = start_daemon_with(
        &config,
        &dir,
        &store.url,
        &dev.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let http = reqwest::Client::new();
    let mut last = String::new();
    for n in 0..5 {
        let response = http
            .post(format!("{}/api/v1/migrations", daemon.rest))
            .bearer_auth(&token)
            .header(
                "traceparent",
                format!("00-{:032x}-00f067aa0ba902b7-01", n + 1),
            )
            .json(&crate::harness::migration(
                &format!("Untraced {n}"),
                "low",
                &format!("CREATE TABLE untraced_{n} (id int);"),
                None,
            ))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        last = response.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let mut state = serde_json::Value::Null;
    for _ in 0..400 {
        state = http
            .get(format!(
                "{}/api/v1/deployments/{last}@development",
                daemon.rest
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["state"] == "applied" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "applied", "{state}");
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
