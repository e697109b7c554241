//! The REST API described as OpenAPI 3.1, generated from the handlers' `#[utoipa::path]`
//! attributes and the request and response types (`ToSchema`), served at
//! `/api/v1/openapi.json`, with Swagger UI (vendored: no CDN) at `/api/docs`.

use super::*;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Every error: `{"error": {"code": ..., "message": ...}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// unauthenticated, forbidden, not_found, invalid, malformed_json, conflict,
    /// payload_too_large, unavailable, internal.
    code: String,
    /// What was wrong, naming the field, file, line or id.
    message: String,
}

/// A refused batch: every item's error; nothing was submitted.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BatchErrorBody {
    error: BatchErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BatchErrorDetail {
    code: String,
    message: String,
    items: Vec<crate::service::BatchItemError>,
}

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from users.yml (`sluice token new` makes one): Authorization: Bearer <token>",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "The database-migration control plane: submit migrations, approve them by role, apply, roll back, restore. Every error names what was wrong and changes nothing."
    ),
    modifiers(&BearerToken),
    components(schemas(
        crate::target::rollback_test::RollbackTestReport,
        crate::target::rollback_test::RollbackTestStep,
        crate::target::dry_run::DryRunReport,
    )),
    paths(
        healthz, readyz, metrics,
        submit, list_migrations, get_migration, amend, submit_batch,
        get_deployment, get_deployment_log, approve, reject, cancel, retry, rollback, dry_run,
        test_rollback, emergency_override, review,
        environments, environment, lock, unlock, migrate, baseline, backups, backup_now, restore, reset,
        get_drift, accept_drift,
        audit,
        notifications, notification_channels, test_notification, retry_notification,
    ),
    tags(
        (name = "migrations", description = "Submit, list, read and amend migrations"),
        (name = "deployments", description = "A migration in one environment: approve, reject, cancel, retry, roll back, try"),
        (name = "environments", description = "Status, lock, migrate, baseline, backups, restore, reset, drift"),
        (name = "audit", description = "Every state change: who, what, when"),
        (name = "notifications", description = "Channels and undelivered notifications"),
        (name = "health", description = "Liveness, readiness and metrics (no token)"),
    )
)]
pub struct ApiDoc;

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// `/api/v1/openapi.json` and Swagger UI at `/api/docs`.
pub fn routes() -> Router<Service> {
    Router::new().merge(
        utoipa_swagger_ui::SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", document()),
    )
}
