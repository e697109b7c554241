//! Telemetry: Prometheus metrics at `GET /metrics`. What happens (deployment outcomes and
//! durations, HTTP requests) is counted through the `metrics` facade into one Prometheus
//! recorder per process; what *is* (queues, pending approvals, locks, halts, freezes, targets,
//! undelivered notifications) is derived from the state store at each scrape, so those gauges
//! are right after a restart and belong to the daemon scraped. Label values are bounded:
//! environments, states, outcomes, channels, routes and methods, never ids.

pub mod traces;

use crate::domain::DeploymentState;
use crate::service::{Service, ServiceError};
use crate::store::DeploymentRow;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// Histogram buckets (seconds) for request and deployment durations.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    1800.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use (None if another recorder was
/// installed first: the store-derived gauges are still served).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the Prometheus recorder; /metrics serves the store's gauges only");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        "sluice_deployments_total",
        "Deployments that reached an outcome, by environment and outcome."
    );
    metrics::describe_histogram!(
        "sluice_deployment_duration_seconds",
        metrics::Unit::Seconds,
        "How long applying a deployment took, by environment."
    );
    metrics::describe_histogram!(
        "sluice_statement_duration_seconds",
        metrics::Unit::Seconds,
        "How long each statement of a migration took on its target, by environment and outcome."
    );
    metrics::describe_counter!(
        "sluice_lock_wait_retries_total",
        "Attempts of a migration's statement that gave way because a lock was not granted in time, by environment."
    );
    metrics::describe_gauge!(
        "sluice_lock_waiting_seconds",
        metrics::Unit::Seconds,
        "How long the running migration's statement has been waiting for locks other sessions hold (0: not waiting), by environment."
    );
    metrics::describe_counter!(
        "sluice_blocking_watchdog_cancels_total",
        "Statements the blocking watchdog cancelled because they kept other sessions waiting too long, by environment."
    );
    metrics::describe_histogram!(
        "sluice_approval_wait_seconds",
        metrics::Unit::Seconds,
        "From a deployment's submission to each approval of it, by environment and role."
    );
    metrics::describe_counter!(
        "sluice_backups_total",
        "Backups before applying, by environment and outcome (taken, failed)."
    );
    metrics::describe_histogram!(
        "sluice_backup_duration_seconds",
        metrics::Unit::Seconds,
        "How long taking a backup took, by environment."
    );
    metrics::describe_counter!(
        "sluice_notification_attempts_total",
        "Attempts to send a notification, by channel and outcome (delivered, failed, dead)."
    );
    metrics::describe_histogram!(
        "sluice_notification_send_duration_seconds",
        metrics::Unit::Seconds,
        "How long sending a notification took, by channel."
    );
    metrics::describe_counter!(
        "sluice_grpc_requests_total",
        "gRPC calls by method and status code."
    );
    metrics::describe_histogram!(
        "sluice_grpc_request_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC call durations (to the response headers) by method."
    );
    metrics::describe_counter!(
        "sluice_http_requests_total",
        "REST requests by route, method and status."
    );
    metrics::describe_histogram!(
        "sluice_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "REST request durations by route and method."
    );
}

/// The outcome a committed state counts as, if it is one.
fn outcome(state: DeploymentState) -> Option<&'static str> {
    Some(match state {
        DeploymentState::Applied => "applied",
        DeploymentState::Failed => "failed",
        DeploymentState::RolledBack => "rolled_back",
        DeploymentState::Expired => "expired",
        DeploymentState::Rejected => "rejected",
        DeploymentState::Cancelled => "cancelled",
        _ => return None,
    })
}

/// Counts a committed state change (called where committed changes are announced).
pub fn deployment_changed(deployment: &DeploymentRow) {
    let Some(outcome) = outcome(deployment.state) else {
        return;
    };
    if recorder().is_none() {
        return;
    }
    metrics::counter!(
        "sluice_deployments_total",
        "environment" => deployment.environment.clone(),
        "outcome" => outcome
    )
    .increment(1);
    if let Some(ms) = deployment
        .execution_ms
        .filter(|_| matches!(outcome, "applied" | "failed" | "rolled_back"))
    {
        metrics::histogram!(
            "sluice_deployment_duration_seconds",
            "environment" => deployment.environment.clone()
        )
        .record(ms as f64 / 1000.0);
    }
}

/// One statement run against a target.
pub fn statement_ran(environment: &str, seconds: f64, ok: bool) {
    if recorder().is_none() {
        return;
    }
    metrics::histogram!(
        "sluice_statement_duration_seconds",
        "environment" => environment.to_owned(),
        "outcome" => if ok { "ok" } else { "error" }
    )
    .record(seconds);
}

/// A statement gave way: its lock was not granted within one attempt (PostgreSQL).
pub fn lock_gave_way(environment: &str) {
    if recorder().is_none() {
        return;
    }
    metrics::counter!(
        "sluice_lock_wait_retries_total",
        "environment" => environment.to_owned()
    )
    .increment(1);
}

/// How long the running statement has been waiting for locks (0: it is not waiting).
pub fn lock_waiting(environment: &str, seconds: f64) {
    if recorder().is_none() {
        return;
    }
    metrics::gauge!(
        "sluice_lock_waiting_seconds",
        "environment" => environment.to_owned()
    )
    .set(seconds);
}

/// The blocking watchdog cancelled a migration's statement (PostgreSQL).
pub fn watchdog_cancelled(environment: &str) {
    if recorder().is_none() {
        return;
    }
    metrics::counter!(
        "sluice_blocking_watchdog_cancels_total",
        "environment" => environment.to_owned()
    )
    .increment(1);
}

/// An approval recorded, `seconds` after the deployment was submitted.
pub fn approval_recorded(environment: &str, role: &str, seconds: f64) {
    if recorder().is_none() {
        return;
    }
    metrics::histogram!(
        "sluice_approval_wait_seconds",
        "environment" => environment.to_owned(),
        "role" => role.to_owned()
    )
    .record(seconds);
}

/// A backup before applying, taken or failed.
pub fn backup_done(environment: &str, seconds: f64, ok: bool) {
    if recorder().is_none() {
        return;
    }
    metrics::counter!(
        "sluice_backups_total",
        "environment" => environment.to_owned(),
        "outcome" => if ok { "taken" } else { "failed" }
    )
    .increment(1);
    if ok {
        metrics::histogram!(
            "sluice_backup_duration_seconds",
            "environment" => environment.to_owned()
        )
        .record(seconds);
    }
}

/// One attempt to send a notification: `outcome` is delivered, failed (retried) or dead.
pub fn notification_sent(channel: &str, outcome: &'static str, seconds: f64) {
    if recorder().is_none() {
        return;
    }
    metrics::counter!(
        "sluice_notification_attempts_total",
        "channel" => channel.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        "sluice_notification_send_duration_seconds",
        "channel" => channel.to_owned()
    )
    .record(seconds);
}

/// Counts gRPC calls by method and status code (a tower layer on the gRPC server). A path
/// that names no method of the service is answered UNIMPLEMENTED and counted as "unknown",
/// so that clients cannot make up label values.
#[derive(Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if recorder().is_some() {
                // Trailers-only answers (errors) carry the status in the headers; a success
                // carries it in the trailers, after the body: OK.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let method = match path.rsplit_once('/') {
                    Some((_, method)) if code != 12 && !method.is_empty() && method.len() <= 64 => {
                        method.to_owned()
                    }
                    _ => "unknown".to_owned(),
                };
                let code = tonic::Code::from_i32(code);
                metrics::counter!(
                    "sluice_grpc_requests_total",
                    "method" => method.clone(),
                    "code" => format!("{code:?}")
                )
                .increment(1);
                metrics::histogram!(
                    "sluice_grpc_request_duration_seconds",
                    "method" => method
                )
                .record(started.elapsed().as_secs_f64());
            }
            Ok(response)
        })
    }
}

/// Axum middleware (a route layer: the route is the matched pattern, never the raw path).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    if recorder().is_some() {
        metrics::counter!(
            "sluice_http_requests_total",
            "route" => route.clone(),
            "method" => method,
            "status" => response.status().as_u16().to_string()
        )
        .increment(1);
        metrics::histogram!(
            "sluice_http_request_duration_seconds",
            "route" => route,
            "method" => method
        )
        .record(started.elapsed().as_secs_f64());
    }
    response
}

/// One gauge family in the Prometheus text format.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        for (labels, value) in &self.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {value}", self.name, labels.join(","));
        }
    }
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything `GET /metrics` serves.
pub async fn render(service: &Service) -> Result<String, ServiceError> {
    let mut out = String::new();
    if let Some(handle) = recorder() {
        // Series that alerts use exist from the start, at 0, per environment.
        for env in &service.config.environments {
            for name in [
                "sluice_lock_wait_retries_total",
                "sluice_blocking_watchdog_cancels_total",
            ] {
                metrics::counter!(name, "environment" => env.name.to_string()).increment(0);
            }
            metrics::gauge!("sluice_lock_waiting_seconds", "environment" => env.name.to_string())
                .increment(0.0);
        }
        handle.run_upkeep();
        out.push_str(&handle.render());
    }
    let now = crate::service::millis(service.clock.now());
    let mut build = Family::new("sluice_build_info", "The running build (always 1).");
    build.add(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0);
    let mut depth = Family::new(
        "sluice_queue_depth",
        "Deployments not yet finished, by environment and state.",
    );
    let mut pending = Family::new(
        "sluice_pending_approvals",
        "Deployments awaiting approval, by environment.",
    );
    let mut oldest = Family::new(
        "sluice_oldest_pending_approval_age_seconds",
        "How long the oldest deployment awaiting approval has waited (0: none).",
    );
    let mut locked = Family::new(
        "sluice_environment_locked",
        "1 while the environment is locked.",
    );
    let mut halted = Family::new(
        "sluice_environment_halted",
        "1 while a failed deployment halts the environment's queue.",
    );
    let mut freeze = Family::new(
        "sluice_freeze_active",
        "1 while a freeze window is in force in the environment.",
    );
    let mut lock_age = Family::new(
        "sluice_environment_locked_seconds",
        "How long the environment has been locked (0: not locked).",
    );
    let mut next_deadline = Family::new(
        "sluice_next_approval_deadline_seconds",
        "Seconds until the nearest approval deadline of a deployment awaiting approval (absent: none).",
    );
    let mut overrun = Family::new(
        "sluice_deployment_overrun_seconds",
        "How far the running deployment is past its estimated duration (0: within it, or none running).",
    );
    let mut target_up = Family::new(
        "sluice_target_up",
        "1 unless the worker's last attempt to reach the environment's database failed.",
    );
    for env in &service.config.environments {
        let name = env.name.to_string();
        let status = service.environment_status(env.name.as_str()).await?;
        let open: Vec<DeploymentRow> = {
            let mut conn = service.store.conn().await?;
            service
                .store
                .deployments_in_states(&mut conn, env.name.as_str(), &DeploymentState::OPEN)
                .await?
        };
        for state in DeploymentState::OPEN {
            let n = open.iter().filter(|d| d.state == state).count();
            depth.add(
                vec![("environment", name.clone()), ("state", state.to_string())],
                n as f64,
            );
        }
        let waiting: Vec<&DeploymentRow> = open
            .iter()
            .filter(|d| d.state == DeploymentState::AwaitingApproval)
            .collect();
        pending.add(vec![("environment", name.clone())], waiting.len() as f64);
        let age = waiting
            .iter()
            .map(|d| (now - d.created_at).max(0))
            .max()
            .unwrap_or(0);
        oldest.add(vec![("environment", name.clone())], age as f64 / 1000.0);
        if let Some(deadline) = waiting.iter().filter_map(|d| d.deadline_at).min() {
            next_deadline.add(
                vec![("environment", name.clone())],
                (deadline - now) as f64 / 1000.0,
            );
        }
        let mut over = 0i64;
        for d in open.iter().filter(|d| d.state == DeploymentState::Running) {
            let mut conn = service.store.conn().await?;
            let estimate = service
                .store
                .migration(&mut conn, &d.migration_id)
                .await?
                .and_then(|m| crate::domain::freeze::parse_duration(&m.estimated_duration));
            if let (Some(started), Some(estimate)) = (d.started_at, estimate) {
                over = over.max(now - started - estimate.num_milliseconds());
            }
        }
        overrun.add(
            vec![("environment", name.clone())],
            over.max(0) as f64 / 1000.0,
        );
        let locked_since = {
            let mut conn = service.store.conn().await?;
            service
                .store
                .lock(&mut conn, env.name.as_str())
                .await?
                .map(|l| l.locked_at)
        };
        lock_age.add(
            vec![("environment", name.clone())],
            locked_since.map_or(0, |at| (now - at).max(0)) as f64 / 1000.0,
        );
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        locked.add(
            vec![("environment", name.clone())],
            flag(status.lock.is_some()),
        );
        halted.add(
            vec![("environment", name.clone())],
            flag(status.halted_by.is_some()),
        );
        freeze.add(
            vec![("environment", name.clone())],
            flag(status.freeze.is_some()),
        );
        target_up.add(
            vec![("environment", name)],
            flag(status.target_error.is_none()),
        );
    }
    let mut last_round = Family::new(
        "sluice_worker_last_round_timestamp_seconds",
        "When this daemon's worker for the environment last finished a round (Unix time).",
    );
    for (environment, at) in service.signals.last_rounds() {
        last_round.add(vec![("environment", environment)], at as f64 / 1000.0);
    }
    let mut undelivered = Family::new(
        "sluice_notifications_pending",
        "Notifications waiting for delivery or a retry, by channel.",
    );
    let mut dead = Family::new(
        "sluice_notifications_dead",
        "Notifications given up on (listed by `sluice notifications --dead`), by channel.",
    );
    if service.notifications_on() {
        let stats = {
            let mut conn = service.store.conn().await?;
            service.store.channel_stats(&mut conn).await?
        };
        for channel in &service.config.notifications.channels {
            let s = stats.iter().find(|s| s.channel == channel.name);
            undelivered.add(
                vec![("channel", channel.name.clone())],
                s.map_or(0, |s| s.pending) as f64,
            );
            dead.add(
                vec![("channel", channel.name.clone())],
                s.map_or(0, |s| s.dead) as f64,
            );
        }
    }
    for family in [
        &build,
        &depth,
        &pending,
        &oldest,
        &locked,
        &lock_age,
        &halted,
        &freeze,
        &next_deadline,
        &overrun,
        &target_up,
        &last_round,
        &undelivered,
        &dead,
    ] {
        family.render(&mut out);
    }
    Ok(out)
}
