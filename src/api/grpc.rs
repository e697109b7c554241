//! The gRPC API (tonic): the same service calls as REST, another encoding. Each handler
//! authenticates from the `authorization` metadata, calls the service, converts the view.
//! `ServiceError` is mapped to a `Status` once, here.

use crate::auth::Caller;
use crate::domain::{DeploymentState, Role};
use crate::lint;
use crate::service::{
    self, AuditView, DeploymentView, EnvironmentStatus, EventKind, MigrationSummary, MigrationView,
    Service, ServiceError,
};
use crate::store::AuditFilter;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("sluice.v1");
}

/// The descriptor set server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));

/// The largest request message accepted (the same limit as REST bodies).
/// The largest request: a batch of migrations (a whole folder), as over REST.
pub const MESSAGE_LIMIT: usize = super::BATCH_BODY_LIMIT;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::Forbidden(m) => Status::permission_denied(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::Invalid(m) => Status::invalid_argument(m),
            ServiceError::Conflict(m) => Status::failed_precondition(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::Busy(m) => Status::resource_exhausted(m),
            ServiceError::Unexpected(inner) => {
                tracing::error!(error = ?inner, "unexpected error");
                Status::internal("internal error; the daemon's log has the details")
            }
        }
    }
}

pub struct GrpcApi {
    service: Service,
    /// One permit per open watch stream (`server.max_watch_streams`).
    watch_streams: Arc<tokio::sync::Semaphore>,
}

impl GrpcApi {
    pub fn new(service: Service) -> GrpcApi {
        let limit = service.config.settings.server.max_watch_streams.max(1);
        GrpcApi {
            service,
            watch_streams: Arc::new(tokio::sync::Semaphore::new(limit)),
        }
    }

    /// A permit for one more watch stream, held until the stream ends.
    fn watch_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.watch_streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} watch streams are open already (server.max_watch_streams); close one or try again later",
                self.service.config.settings.server.max_watch_streams
            ))
        })
    }

    pub fn server(service: Service) -> pb::sluice_server::SluiceServer<GrpcApi> {
        pb::sluice_server::SluiceServer::new(GrpcApi::new(service))
            .max_decoding_message_size(MESSAGE_LIMIT)
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        Ok(self.service.authenticate(token)?)
    }
}

fn invalid(field: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {e}"))
}

fn parse_enum<T: serde::de::DeserializeOwned>(field: &str, value: &str) -> Result<T, Status> {
    serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|e| {
        // serde's message names the allowed values ("expected one of ...").
        invalid(field, e)
    })
}

fn submit_request(r: pb::SubmitMigrationRequest) -> Result<service::SubmitRequest, Status> {
    Ok(service::SubmitRequest {
        id: (!r.id.is_empty()).then_some(r.id),
        kind: parse_enum("kind", &r.kind)?,
        description: r.description,
        risk: parse_enum("risk", &r.risk)?,
        ticket: r.ticket,
        estimated_duration: r.estimated_duration,
        up_sql: r.up_sql,
        down_sql: r.down_sql,
        depends_on: r.depends_on,
    })
}

fn dry_run(v: crate::service::DryRunView) -> pb::DryRun {
    pb::DryRun {
        deployment_id: v.deployment_id,
        at: v.at,
        by: v.by,
        checksum: v.checksum,
        stale: v.stale,
        outcome: v.report.outcome,
        duration_ms: v.report.duration_ms,
        statements: v
            .report
            .statements
            .into_iter()
            .map(|s| pb::DryRunStatement {
                index: s.index as u32,
                line: s.line as u32,
                status: s.status,
                duration_ms: s.duration_ms,
                reason: s.reason.unwrap_or_default(),
            })
            .collect(),
        locks: v
            .report
            .locks
            .into_iter()
            .map(|l| pb::DryRunLock {
                relation: l.relation,
                mode: l.mode,
                blocks: l.blocks,
            })
            .collect(),
        error: v.report.error.unwrap_or_default(),
        log: v.report.log,
    }
}

fn rollback_test(v: crate::service::RollbackTestView) -> pb::RollbackTest {
    pb::RollbackTest {
        deployment_id: v.deployment_id,
        at: v.at,
        by: v.by,
        checksum: v.checksum,
        stale: v.stale,
        outcome: v.report.outcome,
        steps: v
            .report
            .steps
            .into_iter()
            .map(|s| pb::RollbackTestStep {
                step: s.step,
                ok: s.ok,
                duration_ms: s.duration_ms,
                error: s.error.unwrap_or_default(),
            })
            .collect(),
        findings: v.report.findings,
        left_by_down: differences(v.report.left_by_down),
        second_up_differs: differences(v.report.second_up_differs),
    }
}

fn deployment(v: DeploymentView) -> pb::Deployment {
    pb::Deployment {
        id: v.id,
        migration_id: v.migration_id,
        environment: v.environment,
        state: v.state.as_str().into(),
        effective_risk: v.effective_risk,
        required_roles: v.required_roles.iter().map(|r| r.to_string()).collect(),
        required_approvals: v.required_approvals,
        approvals: v
            .approvals
            .into_iter()
            .map(|a| pb::Approval {
                approver: a.approver,
                role: a.role,
                comment: a.comment,
                approved_at: a.approved_at,
                current: a.current,
                checksum: a.checksum,
            })
            .collect(),
        missing_roles: v.missing_roles.iter().map(|r| r.to_string()).collect(),
        additional_approvals_needed: v.additional_approvals_needed,
        deadline_at: v.deadline_at,
        emergency_reason: v.emergency_reason,
        error: v.error,
        blocked_by: v.blocked_by,
        needs: v.needs,
        started_at: v.started_at,
        finished_at: v.finished_at,
        execution_ms: v.execution_ms,
        transactional: v.transactional,
        updated_at: v.updated_at,
        checksum: v.checksum,
        out_of_order: v.out_of_order,
        review_owed: v.review_owed,
        reviews: v
            .reviews
            .into_iter()
            .map(|r| pb::Review {
                role: r.role,
                owed_since: r.owed_since,
                reviewer: r.reviewer,
                comment: r.comment,
                reviewed_at: r.reviewed_at,
            })
            .collect(),
        log: v
            .log
            .unwrap_or_default()
            .into_iter()
            .map(|l| pb::LogLine {
                at: l.at,
                level: l.level,
                message: l.message,
            })
            .collect(),
        dry_run: v.dry_run.map(dry_run),
        rollback_test: v.rollback_test.map(rollback_test),
        statements_applied: v.statements_applied,
        rejection: v.rejection.map(|r| pb::Rejection {
            by: r.by,
            reason: r.reason,
            at: r.at,
        }),
    }
}

fn finding(f: lint::Finding) -> pb::Finding {
    pb::Finding {
        line: i64::try_from(f.line).unwrap_or(i64::MAX),
        risk: f.risk.as_str().into(),
        message: f.message,
        rule: f.rule,
        column: i64::try_from(f.column).unwrap_or(i64::MAX),
        fix: f.fix.unwrap_or_default(),
        script: f.script.unwrap_or_default(),
        ignored: f.ignored.unwrap_or_default(),
    }
}

fn migration(v: MigrationView) -> pb::Migration {
    let findings = v.findings.into_iter().map(finding).collect();
    pb::Migration {
        id: v.id,
        kind: v.kind,
        description: v.description,
        declared_risk: v.declared_risk,
        effective_risk: v.effective_risk,
        findings,
        author: v.author,
        ticket: v.ticket,
        estimated_duration: v.estimated_duration,
        checksum: v.checksum,
        depends_on: v.depends_on,
        submitted_at: v.submitted_at,
        up_sql: v.up_sql,
        down_sql: v.down_sql,
        deployments: v.deployments.into_iter().map(deployment).collect(),
        previous_versions: v
            .previous_versions
            .into_iter()
            .map(|p| pb::MigrationVersion {
                checksum: p.checksum,
                up_sql: p.up_sql,
                down_sql: p.down_sql,
                replaced_at: p.replaced_at,
                replaced_by: p.replaced_by,
                approved_in: p.approved_in,
                applied_in: p.applied_in,
            })
            .collect(),
    }
}

fn summary(v: MigrationSummary) -> pb::MigrationSummary {
    pb::MigrationSummary {
        id: v.id,
        kind: v.kind,
        description: v.description,
        effective_risk: v.effective_risk,
        author: v.author,
        ticket: v.ticket,
        submitted_at: v.submitted_at,
        states: v
            .states
            .into_iter()
            .map(|(env, state)| (env, state.as_str().to_owned()))
            .collect(),
    }
}

fn environment(v: EnvironmentStatus) -> pb::EnvironmentStatus {
    pb::EnvironmentStatus {
        name: v.name,
        database: v.database,
        auto_approve: v.auto_approve,
        auto_apply: v.auto_apply,
        lock: v.lock.map(|l| pb::Lock {
            locked_by: l.locked_by,
            reason: l.reason,
            locked_at: l.locked_at,
        }),
        halted_by: v.halted_by,
        queue: v.queue.into_iter().map(deployment).collect(),
        pending_approvals: v.pending_approvals.into_iter().map(deployment).collect(),
        last_applied: v.last_applied.map(deployment),
        target_error: v.target_error,
        target_error_since: v.target_error_since,
        freeze: v.freeze.map(|f| pb::Freeze {
            window: f.window,
            until: f.until,
        }),
        owed_reviews: v
            .owed_reviews
            .into_iter()
            .map(|o| pb::OwedReview {
                deployment_id: o.deployment_id,
                migration_id: o.migration_id,
                roles: o.roles,
                owed_since: o.owed_since,
            })
            .collect(),
        drift: v.drift.map(recorded_drift),
        partly_applied: v.partly_applied.into_iter().map(deployment).collect(),
    }
}

fn differences(v: Vec<crate::target::schema::SchemaDifference>) -> Vec<pb::SchemaDifference> {
    v.into_iter()
        .map(|d| pb::SchemaDifference {
            object: d.object,
            change: d.change,
            before: d.before.unwrap_or_default(),
            after: d.after.unwrap_or_default(),
        })
        .collect()
}

fn recorded_drift(v: crate::service::RecordedDrift) -> pb::RecordedDrift {
    pb::RecordedDrift {
        found_at: v.found_at,
        difference_count: v.difference_count as u32,
        differences: differences(v.differences),
    }
}

fn drift(v: crate::service::DriftView) -> pb::Drift {
    pb::Drift {
        environment: v.environment,
        reference_at: v.reference_at.unwrap_or_default(),
        reference_hash: v.reference_hash.unwrap_or_default(),
        live_hash: v.live_hash,
        checked_at: v.checked_at,
        drifted: v.drifted,
        difference_count: v.difference_count as u32,
        differences: differences(v.differences),
        recorded: v.recorded.map(recorded_drift),
    }
}

fn notification(v: crate::service::NotificationView) -> pb::Notification {
    pb::Notification {
        id: v.id,
        event_id: v.event_id,
        channel: v.channel,
        kind: v.kind,
        state: v.state,
        environment: v.environment,
        migration_id: v.migration_id,
        deployment_id: v.deployment_id,
        subject: v.subject,
        attempts: v.attempts,
        created_at: v.created_at,
        next_attempt_at: v.next_attempt_at,
        last_attempt_at: v.last_attempt_at,
        last_error: v.last_error,
    }
}

fn audit_entry(v: AuditView) -> pb::AuditEntry {
    pb::AuditEntry {
        id: v.id,
        at: v.at,
        actor: v.actor,
        action: v.action,
        environment: v.environment,
        migration_id: v.migration_id,
        deployment_id: v.deployment_id,
        detail_json: v.detail.to_string(),
    }
}

fn event(e: service::events::DeploymentEvent) -> pb::DeploymentEvent {
    let (kind, error) = match e.kind {
        EventKind::State { state, error } => (
            pb::deployment_event::Event::State(state.as_str().into()),
            error,
        ),
        EventKind::Log(line) => (
            pb::deployment_event::Event::Log(pb::LogLine {
                at: line.at,
                level: line.level,
                message: line.message,
            }),
            None,
        ),
    };
    pb::DeploymentEvent {
        deployment_id: e.deployment_id,
        migration_id: e.migration_id,
        environment: e.environment,
        at: e.at,
        event: Some(kind),
        error,
    }
}

fn missed(count: u64, deployment_id: &str) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        deployment_id: deployment_id.into(),
        event: Some(pb::deployment_event::Event::Missed(count)),
        ..Default::default()
    }
}

/// States a deployment may rest in for a long time: a deployment watch ends on them.
fn rests(state: DeploymentState) -> bool {
    matches!(
        state,
        DeploymentState::Applied
            | DeploymentState::Failed
            | DeploymentState::RolledBack
            | DeploymentState::Rejected
            | DeploymentState::Expired
            | DeploymentState::Cancelled
    )
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DeploymentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::sluice_server::Sluice for GrpcApi {
    async fn submit_migration(
        &self,
        request: Request<pb::SubmitMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let caller = self.caller(&request)?;
        let submit = submit_request(request.into_inner())?;
        let view = self.service.submit(&caller, submit).await?;
        Ok(Response::new(migration(view)))
    }

    async fn submit_migrations(
        &self,
        request: Request<pb::SubmitMigrationsRequest>,
    ) -> Result<Response<pb::SubmitMigrationsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let total = r.migrations.len();
        let mut requests = Vec::with_capacity(total);
        for (i, m) in r.migrations.into_iter().enumerate() {
            requests.push(submit_request(m).map_err(|s| {
                Status::invalid_argument(format!("migrations[{i}]: {}", s.message()))
            })?);
        }
        match self.service.submit_batch(&caller, requests).await? {
            Ok(result) => Ok(Response::new(pb::SubmitMigrationsResponse {
                created: result.created.into_iter().map(migration).collect(),
                unchanged: result.unchanged,
            })),
            Err(items) => {
                let listed: Vec<String> = items
                    .iter()
                    .map(|e| match &e.id {
                        Some(id) => format!("migrations[{}] ({id}): {}", e.index, e.message),
                        None => format!("migrations[{}]: {}", e.index, e.message),
                    })
                    .collect();
                Err(Status::invalid_argument(format!(
                    "{} of {total} migrations refused; nothing was submitted: {}",
                    items.len(),
                    listed.join("; ")
                )))
            }
        }
    }

    async fn amend_migration(
        &self,
        request: Request<pb::AmendMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .amend(
                &caller,
                &r.migration_id,
                service::AmendRequest {
                    up_sql: r.up_sql,
                    down_sql: r.down_sql,
                    reason: r.reason,
                },
            )
            .await?;
        Ok(Response::new(migration(view)))
    }

    async fn list_migrations(
        &self,
        request: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsResponse>, Status> {
        self.caller(&request)?;
        let r = request.into_inner();
        if !r.environment.is_empty() {
            self.service.environment(&r.environment)?;
        }
        let limit = if r.limit <= 0 { 100 } else { r.limit };
        let list = self.service.list_migrations(limit, r.before_seq).await?;
        Ok(Response::new(pb::ListMigrationsResponse {
            migrations: list.into_iter().map(summary).collect(),
        }))
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        self.caller(&request)?;
        let view = self.service.migration(&request.into_inner().id).await?;
        Ok(Response::new(migration(view)))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.caller(&request)?;
        let view = self.service.deployment(&request.into_inner().id).await?;
        Ok(Response::new(deployment(view)))
    }

    async fn get_deployment_log(
        &self,
        request: Request<pb::GetDeploymentLogRequest>,
    ) -> Result<Response<pb::DeploymentLog>, Status> {
        self.caller(&request)?;
        let r = request.into_inner();
        let page = self
            .service
            .deployment_log(&r.deployment_id, r.after_id, r.limit)
            .await?;
        Ok(Response::new(pb::DeploymentLog {
            deployment_id: page.deployment_id,
            lines: page
                .lines
                .into_iter()
                .map(|l| pb::DeploymentLogLine {
                    id: l.id,
                    at: l.at,
                    level: l.level,
                    message: l.message,
                })
                .collect(),
            next_after_id: page.next_after_id,
        }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let role: Role = parse_enum("role", &r.role)?;
        let view = self
            .service
            .approve(
                &caller,
                &r.deployment_id,
                role,
                &r.comment,
                Some(r.checksum.as_str()),
            )
            .await?;
        Ok(Response::new(deployment(view)))
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .reject(&caller, &r.deployment_id, &r.comment)
            .await?;
        Ok(Response::new(deployment(view)))
    }

    async fn cancel(
        &self,
        request: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .cancel(&caller, &r.deployment_id, &r.reason)
            .await?;
        Ok(Response::new(deployment(view)))
    }

    async fn retry(
        &self,
        request: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self.service.retry(&caller, &r.deployment_id).await?;
        Ok(Response::new(deployment(view)))
    }

    async fn dry_run(
        &self,
        request: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::DryRun>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self.service.dry_run(&caller, &r.deployment_id).await?;
        Ok(Response::new(dry_run(view)))
    }

    async fn test_rollback(
        &self,
        request: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::RollbackTest>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .test_rollback(&caller, &r.deployment_id)
            .await?;
        Ok(Response::new(rollback_test(view)))
    }

    async fn rollback(
        &self,
        request: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .rollback(&caller, &r.deployment_id, &r.reason)
            .await?;
        Ok(Response::new(deployment(view)))
    }

    async fn emergency_override(
        &self,
        request: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .emergency_override(&caller, &r.deployment_id, &r.reason)
            .await?;
        Ok(Response::new(deployment(view)))
    }

    async fn lock_environment(
        &self,
        request: Request<pb::LockEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentStatus>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .lock_environment(&caller, &r.environment, &r.reason)
            .await?;
        Ok(Response::new(environment(view)))
    }

    async fn unlock_environment(
        &self,
        request: Request<pb::UnlockEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentStatus>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .unlock_environment(&caller, &r.environment)
            .await?;
        Ok(Response::new(environment(view)))
    }

    async fn migrate_environment(
        &self,
        request: Request<pb::MigrateEnvironmentRequest>,
    ) -> Result<Response<pb::MigrateEnvironmentResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let result = self.service.migrate(&caller, &r.environment).await?;
        Ok(Response::new(pb::MigrateEnvironmentResponse {
            environment: result.environment,
            released: result.released,
            queued: result.queued,
        }))
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        self.caller(&request)?;
        let list = self.service.environments().await?;
        Ok(Response::new(pb::ListEnvironmentsResponse {
            environments: list.into_iter().map(environment).collect(),
        }))
    }

    async fn get_environment_status(
        &self,
        request: Request<pb::GetEnvironmentStatusRequest>,
    ) -> Result<Response<pb::EnvironmentStatus>, Status> {
        self.caller(&request)?;
        let view = self
            .service
            .environment_status(&request.into_inner().environment)
            .await?;
        Ok(Response::new(environment(view)))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let caller = self.caller(&request)?;
        let list = self
            .service
            .backups(&caller, &request.into_inner().environment)
            .await?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: list
                .into_iter()
                .map(|b| pb::Backup {
                    file: b.file,
                    taken_at: b.taken_at,
                    size_bytes: b.size_bytes,
                    preceded: b.preceded,
                })
                .collect(),
        }))
    }

    async fn take_backup(
        &self,
        request: Request<pb::TakeBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        let caller = self.caller(&request)?;
        let b = self
            .service
            .backup_now(&caller, &request.into_inner().environment)
            .await?;
        Ok(Response::new(pb::Backup {
            file: b.file,
            taken_at: b.taken_at,
            size_bytes: b.size_bytes,
            preceded: b.preceded,
        }))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let done = self
            .service
            .restore(&caller, &r.environment, &r.backup, &r.confirm)
            .await?;
        Ok(Response::new(restore_response(done)))
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let done = self
            .service
            .reset(&caller, &r.environment, &r.confirm)
            .await?;
        Ok(Response::new(restore_response(done)))
    }

    async fn baseline(
        &self,
        request: Request<pb::BaselineRequest>,
    ) -> Result<Response<pb::BaselineResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let done = self
            .service
            .baseline(&caller, &r.environment, &r.up_to)
            .await?;
        Ok(Response::new(pb::BaselineResponse {
            environment: done.environment,
            baselined: done.baselined,
            verified_by: done.verified_by.unwrap_or_default(),
        }))
    }

    async fn get_drift(
        &self,
        request: Request<pb::DriftRequest>,
    ) -> Result<Response<pb::Drift>, Status> {
        let caller = self.caller(&request)?;
        let view = self
            .service
            .drift(&caller, &request.into_inner().environment)
            .await?;
        Ok(Response::new(drift(view)))
    }

    async fn accept_drift(
        &self,
        request: Request<pb::DriftRequest>,
    ) -> Result<Response<pb::Drift>, Status> {
        let caller = self.caller(&request)?;
        let view = self
            .service
            .accept_drift(&caller, &request.into_inner().environment)
            .await?;
        Ok(Response::new(drift(view)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.caller(&request)?;
        let r = request.into_inner();
        let entries = self
            .service
            .audit_trail(AuditFilter {
                environment: r.environment,
                migration_id: r.migration_id,
                actor: r.actor,
                after_id: r.after_id,
                before_id: r.before_id,
                since: crate::service::parse_time("since", r.since.as_deref())?,
                until: crate::service::parse_time("until", r.until.as_deref())?,
                newest_first: r.newest_first,
                limit: if r.limit <= 0 { 500 } else { r.limit.min(5000) },
            })
            .await?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(audit_entry).collect(),
        }))
    }

    async fn review(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self
            .service
            .review(&caller, &r.deployment_id, &r.comment)
            .await?;
        Ok(Response::new(deployment(view)))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let state = if r.state.is_empty() {
            "pending"
        } else {
            r.state.as_str()
        };
        let views = self.service.notifications(&caller, state, r.limit).await?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: views.into_iter().map(notification).collect(),
        }))
    }

    async fn retry_notification(
        &self,
        request: Request<pb::RetryNotificationRequest>,
    ) -> Result<Response<pb::Notification>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let view = self.service.retry_notification(&caller, &r.id).await?;
        Ok(Response::new(notification(view)))
    }

    async fn list_notification_channels(
        &self,
        request: Request<pb::ListNotificationChannelsRequest>,
    ) -> Result<Response<pb::ListNotificationChannelsResponse>, Status> {
        let caller = self.caller(&request)?;
        let channels = self.service.notification_channels(&caller).await?;
        Ok(Response::new(pb::ListNotificationChannelsResponse {
            channels: channels
                .into_iter()
                .map(|c| pb::NotificationChannel {
                    name: c.name,
                    r#type: c.kind,
                    enabled: c.enabled,
                    disabled_reason: c.disabled_reason,
                    pending: c.pending,
                    dead: c.dead,
                    delivered: c.delivered,
                    last_success_at: c.last_success_at,
                    last_error: c.last_error,
                    last_error_at: c.last_error_at,
                })
                .collect(),
        }))
    }

    async fn test_notification(
        &self,
        request: Request<pb::TestNotificationRequest>,
    ) -> Result<Response<pb::TestNotificationResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let result = self.service.test_notification(&caller, &r.channel).await?;
        Ok(Response::new(pb::TestNotificationResponse {
            channel: result.channel,
            delivered: result.delivered,
            answer: result.answer,
            duration_ms: result.duration_ms,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.caller(&request)?;
        Ok(Response::new(pb::WhoAmIResponse {
            name: caller.name.to_string(),
            roles: caller.roles.iter().map(|r| r.to_string()).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.caller(&request)?;
        Ok(Response::new(pb::PingResponse {}))
    }

    type WatchDeploymentStream = EventStream;

    async fn watch_deployment(
        &self,
        request: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        self.caller(&request)?;
        let permit = self.watch_permit()?;
        let r = request.into_inner();
        // Subscribe before reading the current state, so that nothing falls between the two.
        let mut events = self.service.signals.events.subscribe();
        let current = self.service.deployment(&r.deployment_id).await?;
        let id = current.id.clone();
        let first = pb::DeploymentEvent {
            deployment_id: current.id.clone(),
            migration_id: current.migration_id.clone(),
            environment: current.environment.clone(),
            at: current.updated_at.clone(),
            event: Some(pb::deployment_event::Event::State(
                current.state.as_str().into(),
            )),
            error: current.error.clone(),
        };
        let done_already = rests(current.state) && !r.follow_resting;
        let stream = async_stream(move |sender| async move {
            let _permit = permit;
            if sender.send(Ok(first)).await.is_err() || done_already {
                return;
            }
            loop {
                let received = tokio::select! {
                    _ = sender.closed() => return,
                    received = events.recv() => received,
                };
                match received {
                    Ok(e) if e.deployment_id == id => {
                        let resting = matches!(
                            &e.kind,
                            EventKind::State { state, .. } if rests(*state)
                        );
                        if sender.send(Ok(event(e))).await.is_err() || resting {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        if sender.send(Ok(missed(n, &id))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    type WatchEnvironmentStream = EventStream;

    async fn watch_environment(
        &self,
        request: Request<pb::WatchEnvironmentRequest>,
    ) -> Result<Response<Self::WatchEnvironmentStream>, Status> {
        self.caller(&request)?;
        let r = request.into_inner();
        let env = self.service.environment(&r.environment)?.name.to_string();
        let permit = self.watch_permit()?;
        let mut events = self.service.signals.events.subscribe();
        let stream = async_stream(move |sender| async move {
            let _permit = permit;
            loop {
                let received = tokio::select! {
                    _ = sender.closed() => return,
                    received = events.recv() => received,
                };
                match received {
                    Ok(e) if e.environment == env => {
                        if sender.send(Ok(event(e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        if sender.send(Ok(missed(n, ""))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task; the task stops when the client goes away (its sends fail).
fn async_stream<F, Fut>(produce: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::DeploymentEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(256);
    tokio::spawn(produce(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

fn restore_response(done: crate::service::RestoreResult) -> pb::RestoreResponse {
    pb::RestoreResponse {
        environment: done.environment,
        action: done.action,
        backup: done.backup.unwrap_or_default(),
        safety_backup: done.safety_backup.unwrap_or_default(),
        undone: done.undone,
        reapplied: done.reapplied,
    }
}
