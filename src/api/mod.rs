//! The REST API (axum). Each handler decodes, calls the service, encodes: no rule lives here.
//! `ServiceError` is mapped to an HTTP response once, in `ApiError`; every error body is
//! `{"error": {"code": ..., "message": ...}}`. The gRPC API is in `grpc`.

pub mod grpc;
mod openapi;
use openapi::{BatchErrorBody, ErrorBody};

use crate::auth::Caller;
use crate::domain::Role;
use crate::service::{Service, ServiceError, SubmitRequest};
use crate::store::AuditFilter;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::time::Duration;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// A batch of migrations (a whole folder) may be larger.
pub const BATCH_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// `GET /metrics` alone, for `server.metrics_addr`.
pub fn metrics_router(service: Service) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(service)
}

/// The REST API (and `GET /metrics`, unless `server.metrics_addr` moves it).
pub fn router(service: Service) -> Router {
    let metrics_here = service.config.settings.server.metrics_addr().is_none();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/migrations", post(submit).get(list_migrations))
        .route("/api/v1/migrations/{id}", get(get_migration).put(amend))
        .route(
            "/api/v1/migrations:batch",
            post(submit_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/api/v1/deployments/{id}", get(get_deployment))
        .route("/api/v1/deployments/{id}/log", get(get_deployment_log))
        .route("/api/v1/deployments/{id}/approvals", post(approve))
        .route("/api/v1/deployments/{id}/reject", post(reject))
        .route("/api/v1/deployments/{id}/cancel", post(cancel))
        .route("/api/v1/deployments/{id}/retry", post(retry))
        .route("/api/v1/deployments/{id}/rollback", post(rollback))
        .route("/api/v1/deployments/{id}/dry-run", post(dry_run))
        .route(
            "/api/v1/deployments/{id}/rollback-test",
            post(test_rollback),
        )
        .route(
            "/api/v1/deployments/{id}/override",
            post(emergency_override),
        )
        .route("/api/v1/environments", get(environments))
        .route("/api/v1/environments/{env}", get(environment))
        .route("/api/v1/environments/{env}/lock", post(lock).delete(unlock))
        .route("/api/v1/environments/{env}/migrate", post(migrate))
        .route("/api/v1/environments/{env}/baseline", post(baseline))
        .route(
            "/api/v1/environments/{env}/backups",
            get(backups).post(backup_now),
        )
        .route("/api/v1/environments/{env}/restore", post(restore))
        .route("/api/v1/environments/{env}/reset", post(reset))
        .route(
            "/api/v1/environments/{env}/drift",
            get(get_drift).delete(accept_drift),
        )
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/deployments/{id}/review", post(review))
        .route("/api/v1/notifications", get(notifications))
        .route("/api/v1/notifications/channels", get(notification_channels))
        .route(
            "/api/v1/notifications/channels/{name}/test",
            post(test_notification),
        )
        .route("/api/v1/notifications/{id}/retry", post(retry_notification))
        .merge(openapi::routes());
    let router = if metrics_here {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router
        .route_layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |request: &axum::http::Request<axum::body::Body>| {
                    crate::telemetry::traces::request_span(
                        "http",
                        request.method().as_str(),
                        request.uri().path(),
                        request.headers(),
                    )
                },
            ),
        )
        .with_state(service)
}

/// An HTTP error with a machine-readable code and a message naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match &e {
            ServiceError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ServiceError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ServiceError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            ServiceError::Unexpected(inner) => {
                tracing::error!(error = ?inner, "unexpected error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &e {
            ServiceError::Unexpected(_) => {
                "internal error; the daemon's log has the details".into()
            }
            other => other.to_string(),
        };
        ApiError::new(status, code, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "request body is larger than the limit ({BODY_LIMIT} bytes, 1 MiB; {BATCH_BODY_LIMIT} bytes for migrations:batch)"
            )
        } else {
            rejection.body_text()
        };
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::BAD_REQUEST => "malformed_json",
            _ => "invalid",
        };
        ApiError::new(status, code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({
            "error": {"code": self.code, "message": self.message}
        }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(crate::service::RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// JSON body whose errors come back as `ApiError`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query string whose errors come back as `ApiError`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub struct Authenticated(pub Caller);

impl FromRequestParts<Service> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        Ok(Authenticated(service.authenticate(token)?))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Prometheus metrics (unauthenticated, like the health checks: they carry no ids or secrets).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(service): State<Service>) -> Result<Response, ApiError> {
    let body = crate::telemetry::render(&service).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the daemon runs", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "the state store answers", body = String, content_type = "text/plain"), (status = 503, description = "the state store does not answer", body = ErrorBody)))]
async fn readyz(State(service): State<Service>) -> Result<&'static str, ApiError> {
    service.store.ping().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    Ok("ready")
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API lives under /api/v1",
    )
}

#[utoipa::path(post, path = "/api/v1/migrations", tag = "migrations", request_body = crate::service::SubmitRequest, responses((status = 201, description = "submitted", body = crate::service::MigrationView), (status = 200, description = "the same id with the same scripts: unchanged", body = crate::service::MigrationView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn submit(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Json(request): Json<SubmitRequest>,
) -> Result<(StatusCode, Json<crate::service::MigrationView>), ApiError> {
    let (view, created) = service.submit_or_resubmit(&caller, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    migrations: Vec<SubmitRequest>,
}

/// Many migrations in one transaction: 201 with what was created (and the ids left
/// unchanged), or 422 with every item's error and nothing submitted.
#[utoipa::path(post, path = "/api/v1/migrations:batch", tag = "migrations", request_body = BatchRequest, responses((status = 201, description = "all submitted, in one transaction", body = crate::service::BatchResult), (status = 422, description = "nothing submitted: every item's error", body = BatchErrorBody), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn submit_batch(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Json(request): Json<BatchRequest>,
) -> Result<Response, ApiError> {
    let total = request.migrations.len();
    match service.submit_batch(&caller, request.migrations).await? {
        Ok(result) => Ok((StatusCode::CREATED, axum::Json(result)).into_response()),
        Err(items) => {
            let body = axum::Json(serde_json::json!({
                "error": {
                    "code": "invalid",
                    "message": format!("{} of {total} migrations refused; nothing was submitted", items.len()),
                    "items": items,
                }
            }));
            Ok((StatusCode::UNPROCESSABLE_ENTITY, body).into_response())
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: i64,
    before_seq: Option<i64>,
}

fn default_limit() -> i64 {
    100
}

#[utoipa::path(get, path = "/api/v1/migrations", tag = "migrations", params(ListQuery), responses((status = 200, description = "newest first", body = Vec<crate::service::MigrationSummary>), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn list_migrations(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
    Query(query): Query<ListQuery>,
) -> ApiResult<Vec<crate::service::MigrationSummary>> {
    Ok(Json(
        service
            .list_migrations(query.limit, query.before_seq)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/migrations/{id}", tag = "migrations", params(("id" = String, Path, description = "the migration id")), responses((status = 200, description = "the migration with every deployment", body = crate::service::MigrationView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn get_migration(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<crate::service::MigrationView> {
    Ok(Json(service.migration(&id).await?))
}

#[utoipa::path(put, path = "/api/v1/migrations/{id}", tag = "migrations", request_body = crate::service::AmendRequest, params(("id" = String, Path, description = "the migration id")), responses((status = 200, description = "amended: every approval is void", body = crate::service::MigrationView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn amend(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Json(request): Json<crate::service::AmendRequest>,
) -> ApiResult<crate::service::MigrationView> {
    Ok(Json(service.amend(&caller, &id, request).await?))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/override", tag = "deployments", request_body = ReasonBody, params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "approved by override; a review is owed", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn emergency_override(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<crate::service::DeploymentView> {
    Ok(Json(
        service
            .emergency_override(&caller, &id, &body.reason)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "the deployment", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn get_deployment(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<crate::service::DeploymentView> {
    Ok(Json(service.deployment(&id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    after_id: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}/log", tag = "deployments", params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>"), LogQuery), responses((status = 200, description = "log lines after after_id", body = crate::service::LogPage), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn get_deployment_log(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<crate::service::LogPage> {
    Ok(Json(
        service
            .deployment_log(&id, query.after_id, query.limit)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    role: Role,
    #[serde(default)]
    comment: String,
    /// The checksum of the scripts the approver reviewed.
    #[serde(default)]
    checksum: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/approvals", tag = "deployments", request_body = ApproveBody, params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "approved for that role", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn approve(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<ApproveBody>,
) -> ApiResult<crate::service::DeploymentView> {
    Ok(Json(
        service
            .approve(
                &caller,
                &id,
                body.role,
                &body.comment,
                body.checksum.as_deref(),
            )
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    #[serde(default)]
    comment: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/reject", tag = "deployments", request_body = CommentBody, params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "rejected", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn reject(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<CommentBody>,
) -> ApiResult<crate::service::DeploymentView> {
    Ok(Json(service.reject(&caller, &id, &body.comment).await?))
}

/// A body that may be absent: `{}` and no body at all mean the same.
async fn optional_reason(body: axum::body::Bytes) -> Result<ReasonBody, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(ReasonBody::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("request body: {e}"),
        )
    })
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/cancel", tag = "deployments", request_body = ReasonBody, params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "cancelled (the body may be absent)", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn cancel(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<crate::service::DeploymentView> {
    let body = optional_reason(body).await?;
    Ok(Json(service.cancel(&caller, &id, &body.reason).await?))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/retry", tag = "deployments", params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "queued again", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn retry(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<crate::service::DeploymentView> {
    Ok(Json(service.retry(&caller, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/dry-run", tag = "deployments", params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "the scripts ran in a transaction rolled back", body = crate::service::DryRunView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn dry_run(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<crate::service::DryRunView> {
    Ok(Json(service.dry_run(&caller, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/rollback-test", tag = "deployments", params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "up, down, up again on a scratch copy", body = crate::service::RollbackTestView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn test_rollback(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<crate::service::RollbackTestView> {
    Ok(Json(service.test_rollback(&caller, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/rollback", tag = "deployments", request_body = ReasonBody, params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "rolling back (the body may be absent)", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn rollback(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<crate::service::DeploymentView> {
    let body = optional_reason(body).await?;
    Ok(Json(service.rollback(&caller, &id, &body.reason).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BaselineBody {
    up_to: String,
}

#[utoipa::path(post, path = "/api/v1/environments/{env}/baseline", tag = "environments", request_body = BaselineBody, params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "recorded as applied without running", body = crate::service::BaselineResult), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn baseline(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
    Json(body): Json<BaselineBody>,
) -> ApiResult<crate::service::BaselineResult> {
    Ok(Json(service.baseline(&caller, &env, &body.up_to).await?))
}

#[utoipa::path(get, path = "/api/v1/environments/{env}/backups", tag = "environments", params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "newest first", body = Vec<crate::service::BackupView>), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn backups(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
) -> ApiResult<Vec<crate::service::BackupView>> {
    Ok(Json(service.backups(&caller, &env).await?))
}

#[utoipa::path(post, path = "/api/v1/environments/{env}/backups", tag = "environments", params(("env" = String, Path, description = "the environment name")), responses((status = 201, description = "taken now (operators); kept and pruned like the workers' backups", body = crate::service::BackupView), (status = "4XX", description = "refused: the message names what was wrong (409: a deployment is running there); nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer, or the backup program failed", body = ErrorBody)), security(("bearer" = [])))]
async fn backup_now(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
) -> Result<(StatusCode, Json<crate::service::BackupView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(service.backup_now(&caller, &env).await?),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    backup: String,
    confirm: String,
}

#[utoipa::path(post, path = "/api/v1/environments/{env}/restore", tag = "environments", request_body = RestoreBody, params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "restored; the queue follows the restored history", body = crate::service::RestoreResult), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn restore(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
    Json(body): Json<RestoreBody>,
) -> ApiResult<crate::service::RestoreResult> {
    Ok(Json(
        service
            .restore(&caller, &env, &body.backup, &body.confirm)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    confirm: String,
}

#[utoipa::path(post, path = "/api/v1/environments/{env}/reset", tag = "environments", request_body = ResetBody, params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "emptied; applied migrations approved again", body = crate::service::RestoreResult), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn reset(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
    Json(body): Json<ResetBody>,
) -> ApiResult<crate::service::RestoreResult> {
    Ok(Json(service.reset(&caller, &env, &body.confirm).await?))
}

#[utoipa::path(get, path = "/api/v1/environments/{env}/drift", tag = "environments", params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "the live schema against the reference", body = crate::service::DriftView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn get_drift(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
) -> ApiResult<crate::service::DriftView> {
    Ok(Json(service.drift(&caller, &env).await?))
}

#[utoipa::path(delete, path = "/api/v1/environments/{env}/drift", tag = "environments", params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "the live schema is the reference now", body = crate::service::DriftView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn accept_drift(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
) -> ApiResult<crate::service::DriftView> {
    Ok(Json(service.accept_drift(&caller, &env).await?))
}

#[utoipa::path(get, path = "/api/v1/environments", tag = "environments", responses((status = 200, description = "every environment in promotion order", body = Vec<crate::service::EnvironmentStatus>), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn environments(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
) -> ApiResult<Vec<crate::service::EnvironmentStatus>> {
    Ok(Json(service.environments().await?))
}

#[utoipa::path(get, path = "/api/v1/environments/{env}", tag = "environments", params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "its queue, lock, freeze and last applied", body = crate::service::EnvironmentStatus), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn environment(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
    Path(env): Path<String>,
) -> ApiResult<crate::service::EnvironmentStatus> {
    Ok(Json(service.environment_status(&env).await?))
}

#[utoipa::path(post, path = "/api/v1/environments/{env}/lock", tag = "environments", request_body = ReasonBody, params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "locked", body = crate::service::EnvironmentStatus), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn lock(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<crate::service::EnvironmentStatus> {
    Ok(Json(
        service
            .lock_environment(&caller, &env, &body.reason)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/environments/{env}/lock", tag = "environments", params(("env" = String, Path, description = "the environment name")), responses((status = 200, description = "unlocked", body = crate::service::EnvironmentStatus), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn unlock(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
) -> ApiResult<crate::service::EnvironmentStatus> {
    Ok(Json(service.unlock_environment(&caller, &env).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct MigrateQuery {
    /// Answer once nothing released can move on by itself: all finished, or what someone must
    /// do (approvals, a retry or cancel of a failure, an unlock, a freeze window's end).
    #[serde(default)]
    wait: bool,
    /// The longest the wait lasts (default 600, at most 3600).
    #[serde(default = "default_wait")]
    timeout_seconds: u64,
}

fn default_wait() -> u64 {
    crate::service::WAIT_DEFAULT_SECONDS
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct MigrateResponse {
    #[serde(flatten)]
    result: crate::service::MigrateResult,
    /// With `wait=true`: whether everything queued finished before the timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    settled: Option<bool>,
    /// With `wait=true`: why the wait ended before everything finished: for each deployment
    /// left, what someone must do (approvals by whom, a retry or cancel of the failure that
    /// halts the queue, an unlock, a freeze window's end); or the timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<String>,
    /// With `wait=true`: the environment once settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<crate::service::EnvironmentStatus>,
}

#[utoipa::path(post, path = "/api/v1/environments/{env}/migrate", tag = "environments", params(("env" = String, Path, description = "the environment name"), MigrateQuery), responses((status = 202, description = "released to the worker", body = MigrateResponse), (status = 200, description = "wait=true: settled, or what someone must do for the rest to move on", body = MigrateResponse), (status = 429, description = "wait=true: server.max_migrate_waiters waits are in progress; nothing was released; Retry-After says when to try again", body = ErrorBody), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn migrate(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(env): Path<String>,
    Query(query): Query<MigrateQuery>,
) -> Result<(StatusCode, Json<MigrateResponse>), ApiError> {
    // A place among the waiters first: a caller refused for too many waiters released nothing.
    let permit = if query.wait {
        Some(service.wait_permit()?)
    } else {
        None
    };
    let result = service.migrate(&caller, &env).await?;
    let Some(permit) = permit else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(MigrateResponse {
                result,
                settled: None,
                stopped: None,
                status: None,
            }),
        ));
    };
    let timeout = Duration::from_secs(
        query
            .timeout_seconds
            .clamp(1, crate::service::WAIT_MAX_SECONDS),
    );
    let settled = service
        .wait_settled(&permit, &result.environment, &result.queued, timeout)
        .await?;
    let stopped = match settled {
        crate::service::Settled::Done => None,
        crate::service::Settled::Stopped(why) => Some(why),
        crate::service::Settled::TimedOut => Some(format!(
            "the wait timed out after {} s with deployments still queued or running",
            timeout.as_secs()
        )),
    };
    let status = service.environment_status(&env).await?;
    Ok((
        StatusCode::OK,
        Json(MigrateResponse {
            result,
            settled: Some(stopped.is_none()),
            stopped,
            status: Some(status),
        }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    environment: Option<String>,
    migration_id: Option<String>,
    actor: Option<String>,
    after_id: Option<i64>,
    /// Only records older than this id (paging with order=desc).
    before_id: Option<i64>,
    /// RFC 3339: only records at or after this time.
    since: Option<String>,
    /// RFC 3339: only records at or before this time.
    until: Option<String>,
    /// asc (oldest first, the default) or desc.
    order: Option<String>,
    #[serde(default = "default_audit_limit")]
    limit: i64,
}

fn default_audit_limit() -> i64 {
    500
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, description = "oldest first after after_id", body = Vec<crate::service::AuditView>), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn audit(
    State(service): State<Service>,
    Authenticated(_caller): Authenticated,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Vec<crate::service::AuditView>> {
    Ok(Json(
        service
            .audit_trail(AuditFilter {
                environment: query.environment,
                migration_id: query.migration_id,
                actor: query.actor,
                after_id: query.after_id,
                before_id: query.before_id,
                since: crate::service::parse_time("since", query.since.as_deref())?,
                until: crate::service::parse_time("until", query.until.as_deref())?,
                newest_first: crate::service::newest_first(query.order.as_deref())?,
                limit: query.limit.clamp(1, 5000),
            })
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/review", tag = "deployments", request_body = CommentBody, params(("id" = String, Path, description = "the deployment id, <migration id>@<environment>")), responses((status = 200, description = "the review an override owes, recorded", body = crate::service::DeploymentView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn review(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<CommentBody>,
) -> ApiResult<crate::service::DeploymentView> {
    Ok(Json(service.review(&caller, &id, &body.comment).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct NotificationsQuery {
    #[serde(default = "default_notification_state")]
    state: String,
    limit: Option<i64>,
}

fn default_notification_state() -> String {
    "pending".into()
}

#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", params(NotificationsQuery), responses((status = 200, description = "undelivered notifications", body = Vec<crate::service::NotificationView>), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn notifications(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Query(query): Query<NotificationsQuery>,
) -> ApiResult<Vec<crate::service::NotificationView>> {
    Ok(Json(
        service
            .notifications(&caller, &query.state, query.limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/retry", tag = "notifications", params(("id" = String, Path, description = "the notification id")), responses((status = 200, description = "pending again", body = crate::service::NotificationView), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn retry_notification(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<crate::service::NotificationView> {
    Ok(Json(service.retry_notification(&caller, &id).await?))
}

#[utoipa::path(get, path = "/api/v1/notifications/channels", tag = "notifications", responses((status = 200, description = "the configured channels", body = Vec<crate::service::ChannelView>), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn notification_channels(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
) -> ApiResult<Vec<crate::service::ChannelView>> {
    Ok(Json(service.notification_channels(&caller).await?))
}

#[utoipa::path(post, path = "/api/v1/notifications/channels/{name}/test", tag = "notifications", params(("name" = String, Path, description = "the channel name")), responses((status = 200, description = "what the channel answered", body = crate::service::TestResult), (status = "4XX", description = "refused: the message names what was wrong; nothing changed", body = ErrorBody), (status = 503, description = "a database Sluice needs does not answer", body = ErrorBody)), security(("bearer" = [])))]
async fn test_notification(
    State(service): State<Service>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> ApiResult<crate::service::TestResult> {
    Ok(Json(service.test_notification(&caller, &name).await?))
}
