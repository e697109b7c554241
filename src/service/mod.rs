//! The one use-case layer. Every operation of the REST API (and later gRPC and the CLI) is a
//! method here: it checks who is calling, asks the domain for the transition, and persists the
//! new state together with its audit record in one store transaction. Handlers only translate
//! to and from these methods; no rule lives in a handler.

mod approvals;
mod backups;
mod baseline;
mod clock;
mod drift;
mod dry_run;
mod environments;
pub mod events;
mod lifecycle;
pub mod notifications;
mod queries;
mod queue_inputs;
mod reminders;
mod restore;
mod rollback_test;
mod signals;
mod submit;
mod views;
mod waits;

pub use backups::BackupView;
pub use baseline::BaselineResult;
pub use clock::{Clock, ManualClock, SystemClock};
pub use drift::{DriftView, RecordedDrift};
pub use dry_run::{CheckView, DryRunView, RollbackTestView, database_name};
pub use events::{EventBus, EventKind};
pub use notifications::{ChannelView, Notice, NotificationView, TestResult};
pub use queries::{newest_first, parse_time};
pub use queue_inputs::QueueInputs;
pub use reminders::ScheduledRound;
pub use restore::RestoreResult;
pub use signals::WorkerSignals;
pub use submit::{AmendRequest, BatchItemError, BatchResult, SubmitRequest};
pub use views::*;
pub use waits::{RETRY_AFTER_SECONDS, Settled, WAIT_DEFAULT_SECONDS, WAIT_MAX_SECONDS, WaitPermit};

// A helper of one use-case group that another group needs too.
use approvals::approval_records;

use crate::auth::Caller;
use crate::config::{Config, EnvironmentConfig};
use crate::domain::{
    self, ApprovalRecord, DeploymentEvent, DeploymentState, DomainError, EnvironmentName,
    MigrationId, MigrationKind, Risk, Role, UserName, check_approval,
};
use crate::lint;
use crate::store::{
    ApprovalRow, AuditFilter, AuditRow, DeploymentRow, LockRow, MigrationRow, Store, StoreError, Tx,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The single error type of the service layer, mapped once per API.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// Too many callers hold what this call would hold (waits): try again later.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => ServiceError::Conflict(message),
            other => ServiceError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        ServiceError::Unexpected(anyhow::Error::new(e))
    }
}

impl From<DomainError> for ServiceError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(m) => ServiceError::Invalid(m),
            DomainError::Conflict(m) => ServiceError::Conflict(m),
            DomainError::Forbidden(m) => ServiceError::Forbidden(m),
        }
    }
}

impl From<domain::InvalidTransition> for ServiceError {
    fn from(e: domain::InvalidTransition) -> Self {
        ServiceError::Conflict(e.to_string())
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Service {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub signals: Arc<WorkerSignals>,
    /// The users of users.yml: loaded at start, replaced by `reload_users` (SIGHUP or a change
    /// of the file) without a restart.
    users: Arc<std::sync::RwLock<Arc<Vec<crate::config::User>>>>,
    /// One permit per REST `migrate?wait=true` waiting (`server.max_migrate_waiters`).
    waiters: Arc<tokio::sync::Semaphore>,
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn audit(
    at: i64,
    actor: &str,
    action: &str,
    deployment: Option<&DeploymentRow>,
    migration_id: Option<&str>,
    detail: serde_json::Value,
) -> AuditRow {
    AuditRow {
        id: 0,
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        environment: deployment.map(|d| d.environment.clone()),
        migration_id: migration_id
            .map(str::to_owned)
            .or_else(|| deployment.map(|d| d.migration_id.clone())),
        deployment_id: deployment.map(|d| d.id.clone()),
        detail: detail.to_string(),
        events: None,
    }
}

/// Splits and checks a script as the targets of `dialect` read it (with environments of both
/// kinds, as each of them reads it); `field` names it in errors.
pub fn check_script(
    field: &str,
    sql: &str,
    dialect: lint::Dialect,
) -> Result<Vec<lint::Statement>> {
    if dialect == lint::Dialect::Both {
        check_script(field, sql, lint::Dialect::MySql)?;
    }
    // A script with no statement (empty, or comments only: common in real folders) is a
    // no-op: applied, it is recorded; as a down script it means "nothing to undo".
    let statements = lint::split_statements_for(sql, dialect)
        .map_err(|e| ServiceError::Invalid(format!("{field}: {e}")))?;
    // Transaction control, statements Sluice cannot run (COPY FROM STDIN, LOAD DATA LOCAL
    // INFILE) and writes to its history table: the same check as `sluice validate`.
    if let Some((line, problem)) = lint::script_problems(&statements, dialect)
        .into_iter()
        .next()
    {
        return Err(ServiceError::Invalid(format!(
            "{field}: line {line}: {problem}"
        )));
    }
    Ok(statements)
}

/// A change of a deployment's state, as the one commit path writes it.
pub(super) struct Change<'a> {
    pub event: DeploymentEvent,
    pub actor: &'a str,
    pub action: &'a str,
    pub detail: serde_json::Value,
    /// Events the caller's part of the change causes (they ride on the audit record, before
    /// the state's own event).
    pub events: Vec<notifications::Event>,
}

impl Service {
    /// The one commit path for a caller's change of a deployment's state: the transition the
    /// state machine allows, the row written on condition that it is still at the version it
    /// was read at (a conflict otherwise, never a silent overwrite), and the audit record with
    /// both states, in the caller's transaction. The worker's outcomes take the same
    /// conditional write through its recorder.
    pub(super) async fn commit_change(
        &self,
        tx: &mut Tx,
        deployment: &mut DeploymentRow,
        at: i64,
        change: Change<'_>,
    ) -> Result<()> {
        let from = deployment.state;
        let transition = deployment.state.transition(change.event)?;
        deployment.state = transition.to;
        deployment.updated_at = at;
        let mut voided = Vec::new();
        if transition.has(domain::Effect::VoidApprovals) {
            voided = self.store.delete_approvals(tx, &deployment.id).await?;
        }
        if transition.has(domain::Effect::ClearEmergency) {
            deployment.emergency_reason = None;
        }
        if transition.has(domain::Effect::ClearError) {
            // The count of statements applied goes with the error that describes it.
            deployment.error = None;
            deployment.applied_statements = None;
        }
        if transition.to == DeploymentState::AwaitingApproval {
            // Whatever version an amendment had to undo is undone by now.
            deployment.undo_sql = None;
        }
        if transition.has(domain::Effect::NewDeadline) {
            let policy = self.policy_for(deployment)?;
            deployment.deadline_at = submit::approval_deadline(policy, at);
        }
        // The call that releases it to the worker is where its trace continues.
        if matches!(
            deployment.state,
            DeploymentState::Queued | DeploymentState::RollingBack
        ) && let Some(context) = crate::telemetry::traces::current_traceparent()
        {
            deployment.trace_context = Some(context);
        }
        self.store.update_deployment(tx, deployment).await?;
        let mut detail = change.detail;
        if let Some(fields) = detail.as_object_mut() {
            fields.insert("from".into(), serde_json::json!(from));
            fields.insert("to".into(), serde_json::json!(deployment.state));
            if !voided.is_empty() {
                fields.insert(
                    "voided".into(),
                    voided
                        .iter()
                        .map(|a| {
                            serde_json::json!({
                                "approver": a.approver, "role": a.role, "checksum": a.checksum,
                            })
                        })
                        .collect(),
                );
            }
        }
        let reason = ["comment", "reason"]
            .iter()
            .find_map(|k| detail.get(k).and_then(|v| v.as_str()).map(str::to_owned));
        // Approvals by the daemon itself (auto_approve environments) concern no one.
        let automatic = change.action == "auto_approved";
        let mut events = change.events;
        if from != deployment.state && !automatic {
            events.extend(
                self.notify_state(tx, deployment, at, change.actor, reason, None)
                    .await?,
            );
        }
        let entry = audit(
            at,
            change.actor,
            change.action,
            Some(deployment),
            None,
            detail,
        );
        self.store
            .insert_audit(tx, &notifications::carrying(entry, &events)?)
            .await?;
        Ok(())
    }

    /// An amendment voids every approval of the old checksum, those of deployments that have
    /// ended (rejected, expired, cancelled) too: no transition leaves an ended state, so
    /// `commit_change` never reaches them, yet an approval of a script that no longer exists
    /// must not stay listed as if given to the new one. Audited (`approvals_voided`, naming
    /// them) when there were any.
    pub(super) async fn void_ended_approvals(
        &self,
        tx: &mut Tx,
        deployment: &DeploymentRow,
        at: i64,
        actor: &str,
        reason: &str,
    ) -> Result<()> {
        debug_assert!(deployment.state.is_terminal());
        let voided = self.store.delete_approvals(tx, &deployment.id).await?;
        if voided.is_empty() {
            return Ok(());
        }
        let detail = serde_json::json!({
            "reason": reason,
            "voided": voided
                .iter()
                .map(|a| serde_json::json!({
                    "approver": a.approver, "role": a.role, "checksum": a.checksum,
                }))
                .collect::<Vec<_>>(),
        });
        self.store
            .insert_audit(
                tx,
                &audit(
                    at,
                    actor,
                    "approvals_voided",
                    Some(deployment),
                    None,
                    detail,
                ),
            )
            .await?;
        Ok(())
    }

    pub fn new(config: Arc<Config>, store: Store, clock: Arc<dyn Clock>) -> Service {
        let signals = Arc::new(WorkerSignals::new(&config));
        let users = Arc::new(std::sync::RwLock::new(Arc::new(config.users.clone())));
        let waiters = Arc::new(tokio::sync::Semaphore::new(
            config.settings.server.max_migrate_waiters.max(1),
        ));
        Service {
            config,
            store,
            clock,
            signals,
            users,
            waiters,
        }
    }

    /// Re-reads users.yml. On an error the users in force stay as they were.
    pub fn reload_users(&self) -> Result<usize, crate::config::ConfigError> {
        let users = crate::config::load_users(&self.config.config_dir.join("users.yml"))?;
        let count = users.len();
        *self.users.write().expect("users lock") = Arc::new(users);
        Ok(count)
    }

    pub(super) fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Tells watchers about committed state changes.
    pub(super) fn publish<'a>(&self, deployments: impl IntoIterator<Item = &'a DeploymentRow>) {
        for d in deployments {
            self.signals.events.state(d, format_millis(d.updated_at));
        }
        self.events_written();
    }

    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller> {
        let token = token.ok_or_else(|| {
            ServiceError::Unauthenticated(
                "missing bearer token: send Authorization: Bearer <token>".into(),
            )
        })?;
        let users = self.users.read().expect("users lock").clone();
        crate::auth::authenticate(&users, token).ok_or_else(|| {
            ServiceError::Unauthenticated("unknown token: it matches no user in users.yml".into())
        })
    }

    pub fn environment(&self, name: &str) -> Result<&EnvironmentConfig> {
        let parsed: Option<EnvironmentName> = name.parse().ok();
        parsed
            .and_then(|n| self.config.environment(&n))
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "unknown environment \"{name}\" (known: {}){}",
                    self.config.environment_names(),
                    domain::text::did_you_mean(
                        name,
                        self.config.environments.iter().map(|e| e.name.as_str())
                    )
                ))
            })
    }

    pub(super) fn require_operator(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
        what: &str,
    ) -> Result<()> {
        Ok(domain::authz::may_operate(
            &caller.name,
            &caller.roles,
            env.name.as_str(),
            env.auto_approve,
            what,
        )?)
    }

    /// The SQL the targets speak, for the risk analysis and the checks at submission: MySQL
    /// where every environment is a MySQL/MariaDB database, SQLite's splitting (PostgreSQL's
    /// rules) where every one is a SQLite file, PostgreSQL where none is MySQL, both otherwise.
    pub(super) fn dialect(&self) -> lint::Dialect {
        let environments = &self.config.environments;
        let mysql = environments
            .iter()
            .filter(|e| crate::target::is_mysql(e.url.expose()))
            .count();
        let sqlite = environments
            .iter()
            .all(|e| crate::target::dialect_of(e.url.expose()) == lint::Dialect::Sqlite);
        match mysql {
            0 if sqlite => lint::Dialect::Sqlite,
            0 => lint::Dialect::Postgres,
            n if n == environments.len() => lint::Dialect::MySql,
            _ => lint::Dialect::Both,
        }
    }

    pub(super) fn policy_for(&self, d: &DeploymentRow) -> Result<&domain::ApprovalPolicy> {
        let env = self.environment(&d.environment)?;
        let risk: Risk = d.effective_risk.parse()?;
        Ok(self.config.matrix.policy(&env.name, risk))
    }
}

pub fn format_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::submit::validate_duration;
    use super::*;

    #[test]
    fn durations() {
        for ok in ["5m", "30s", "2h", "1h30m", "1d"] {
            assert!(validate_duration(ok).is_ok(), "{ok}");
        }
        for bad in ["", "5", "m", "5 minutes", "-1m"] {
            assert!(validate_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scripts_with_rollback_statements_are_refused_with_their_line() {
        let e = check_script(
            "up_sql",
            "CREATE TABLE t (id int);\nROLLBACK;",
            lint::Dialect::Postgres,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("up_sql: line 2:"), "{e}");
        // No statement at all is a no-op script, not an error (issue 10).
        assert!(
            check_script("down_sql", "-- nothing\n", lint::Dialect::Postgres)
                .unwrap()
                .is_empty()
        );
    }
}
