//! The one use-case layer. Every operation of the REST API (and later gRPC and the CLI) is a
//! method here: it checks who is calling, asks the domain for the transition, and persists the
//! new state together with its audit record in one store transaction. Handlers only translate
//! to and from these methods; no rule lives in a handler.

pub mod events;
mod views;

pub use events::{EventBus, EventKind};
pub use views::*;

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

/// Where the time comes from. Tests inject a clock they move by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock(Mutex::new(start))
    }
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// Wakes an environment's worker when work is queued for it.
#[derive(Default)]
pub struct WorkerSignals {
    notifiers: HashMap<String, Arc<Notify>>,
    /// Bumped whenever an environment is locked through this daemon, so that its worker checks
    /// the lock before its next migration rather than at its next periodic check.
    lock_generations: HashMap<String, Arc<std::sync::atomic::AtomicU64>>,
    /// The last error each worker met reaching its target, and since when (cleared once it
    /// reaches it again), for environment status.
    target_errors: Mutex<HashMap<String, (String, i64)>>,
    /// Every deployment state change and log line, for watchers.
    pub events: EventBus,
}

impl WorkerSignals {
    pub fn new(config: &Config) -> WorkerSignals {
        WorkerSignals {
            notifiers: config
                .environments
                .iter()
                .map(|e| (e.name.to_string(), Arc::new(Notify::new())))
                .collect(),
            lock_generations: config
                .environments
                .iter()
                .map(|e| (e.name.to_string(), Arc::default()))
                .collect(),
            target_errors: Mutex::default(),
            events: EventBus::default(),
        }
    }

    /// Records whether the worker of `environment` reached its target.
    pub fn report_target(&self, environment: &str, error: Option<String>, at: i64) {
        let mut errors = self.target_errors.lock().expect("target errors lock");
        match error {
            Some(message) => {
                let since = errors
                    .get(environment)
                    .filter(|(previous, _)| previous == &message)
                    .map_or(at, |(_, since)| *since);
                errors.insert(environment.to_owned(), (message, since));
            }
            None => {
                errors.remove(environment);
            }
        }
    }

    pub fn target_error(&self, environment: &str) -> Option<(String, i64)> {
        self.target_errors
            .lock()
            .expect("target errors lock")
            .get(environment)
            .cloned()
    }

    pub fn lock_generation(&self, environment: &str) -> Arc<std::sync::atomic::AtomicU64> {
        self.lock_generations
            .get(environment)
            .cloned()
            .unwrap_or_default()
    }

    pub fn notifier(&self, environment: &str) -> Arc<Notify> {
        self.notifiers
            .get(environment)
            .cloned()
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }

    pub fn wake(&self, environment: &str) {
        if let Some(n) = self.notifiers.get(environment) {
            n.notify_one();
        }
    }
}

/// A submission, as the REST API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub kind: MigrationKind,
    pub description: String,
    pub risk: Risk,
    pub ticket: String,
    pub estimated_duration: String,
    pub up_sql: String,
    #[serde(default)]
    pub down_sql: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// New scripts for a migration that has not touched any target yet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmendRequest {
    pub up_sql: String,
    #[serde(default)]
    pub down_sql: Option<String>,
    #[serde(default)]
    pub reason: String,
}

#[derive(Clone)]
pub struct Service {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub signals: Arc<WorkerSignals>,
    /// The users of users.yml: loaded at start, replaced by `reload_users` (SIGHUP or a change
    /// of the file) without a restart.
    users: Arc<std::sync::RwLock<Arc<Vec<crate::config::User>>>>,
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn audit(
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
    }
}

fn validate_duration(value: &str) -> Result<()> {
    if domain::freeze::parse_duration(value).is_some() {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "estimated_duration: \"{value}\" is not a duration like 30s, 5m, 2h or 1h30m"
        )))
    }
}

/// What Sluice knows of a migration's scripts once it has read them.
struct ReadScripts {
    findings: Vec<lint::Finding>,
    effective_risk: Risk,
    checksum: String,
}

/// Checks both scripts and analyses the up script against the declared risk.
fn read_scripts(
    up_sql: &str,
    down_sql: Option<&str>,
    declared: Risk,
    dialect: lint::Dialect,
) -> Result<ReadScripts> {
    let statements = check_script("up_sql", up_sql, dialect)?;
    if let Some(down) = down_sql {
        check_script("down_sql", down, dialect)?;
    }
    let findings = lint::analyse(up_sql, &statements, dialect);
    Ok(ReadScripts {
        effective_risk: lint::effective_risk(declared, &findings),
        findings,
        checksum: domain::checksum(up_sql, down_sql),
    })
}

/// When a deployment created (or reset) at `at` expires if still awaiting approval.
fn approval_deadline(policy: &domain::ApprovalPolicy, at: i64) -> Option<i64> {
    policy
        .timeout_hours
        .map(|hours| at + i64::from(hours) * 3_600_000)
}

fn locked_error(env: &EnvironmentConfig, lock: &LockRow, prefix: &str) -> ServiceError {
    ServiceError::Conflict(format!(
        "{} is {prefix}locked by {} since {}: {}",
        env.name,
        lock.locked_by,
        format_millis(lock.locked_at),
        lock.reason
    ))
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
    let statements = lint::split_statements_for(sql, dialect)
        .map_err(|e| ServiceError::Invalid(format!("{field}: {e}")))?;
    if statements.is_empty() {
        return Err(ServiceError::Invalid(format!(
            "{field}: the script has no SQL statement"
        )));
    }
    if let Some((line, problem)) = lint::transaction_control_problems(&statements)
        .into_iter()
        .next()
    {
        return Err(ServiceError::Invalid(format!(
            "{field}: line {line}: {problem}"
        )));
    }
    Ok(statements)
}

impl Service {
    pub fn new(config: Arc<Config>, store: Store, clock: Arc<dyn Clock>) -> Service {
        let signals = Arc::new(WorkerSignals::new(&config));
        let users = Arc::new(std::sync::RwLock::new(Arc::new(config.users.clone())));
        Service {
            config,
            store,
            clock,
            signals,
            users,
        }
    }

    /// Re-reads users.yml. On an error the users in force stay as they were.
    pub fn reload_users(&self) -> Result<usize, crate::config::ConfigError> {
        let users = crate::config::load_users(&self.config.config_dir.join("users.yml"))?;
        let count = users.len();
        *self.users.write().expect("users lock") = Arc::new(users);
        Ok(count)
    }

    fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Tells watchers about committed state changes.
    fn publish<'a>(&self, deployments: impl IntoIterator<Item = &'a DeploymentRow>) {
        for d in deployments {
            self.signals.events.state(d, format_millis(d.updated_at));
        }
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
                    "unknown environment \"{name}\" (known: {})",
                    self.config.environment_names()
                ))
            })
    }

    fn require_operator(&self, caller: &Caller, env: &EnvironmentConfig, what: &str) -> Result<()> {
        Ok(domain::authz::may_operate(
            &caller.name,
            &caller.roles,
            env.name.as_str(),
            env.auto_approve,
            what,
        )?)
    }

    /// The SQL the targets speak, for the risk analysis: MySQL where every environment is a
    /// MySQL/MariaDB database, PostgreSQL where none is (SQLite targets get PostgreSQL's rules),
    /// both otherwise.
    fn dialect(&self) -> lint::Dialect {
        let environments = &self.config.environments;
        let mysql = environments
            .iter()
            .filter(|e| crate::target::is_mysql(e.url.expose()))
            .count();
        match mysql {
            0 => lint::Dialect::Postgres,
            n if n == environments.len() => lint::Dialect::MySql,
            _ => lint::Dialect::Both,
        }
    }

    fn policy_for(&self, d: &DeploymentRow) -> Result<&domain::ApprovalPolicy> {
        let env = self.environment(&d.environment)?;
        let risk: Risk = d.effective_risk.parse()?;
        Ok(self.config.matrix.policy(&env.name, risk))
    }

    // ----- submission -----

    pub async fn submit(&self, caller: &Caller, request: SubmitRequest) -> Result<MigrationView> {
        use domain::text;
        text::field("description", &request.description, text::DESCRIPTION)?;
        text::field("ticket", &request.ticket, text::TICKET)?;
        text::field(
            "estimated_duration",
            &request.estimated_duration,
            text::DURATION,
        )?;
        text::script("up_sql", &request.up_sql)?;
        if let Some(down) = &request.down_sql {
            text::script("down_sql", down)?;
        }
        if request.depends_on.len() > text::DEPENDENCIES {
            return Err(ServiceError::Invalid(format!(
                "depends_on: {} entries; at most {}",
                request.depends_on.len(),
                text::DEPENDENCIES
            )));
        }
        for (i, dependency) in request.depends_on.iter().enumerate() {
            text::field(&format!("depends_on[{i}]"), dependency, text::NAME)?;
            if let Some(first) = request.depends_on[..i].iter().position(|d| d == dependency) {
                return Err(ServiceError::Invalid(format!(
                    "depends_on[{i}]: \"{dependency}\" is already named at depends_on[{first}]"
                )));
            }
        }
        let description = request.description.trim();
        if description.is_empty() {
            return Err(ServiceError::Invalid(
                "description: must be 1 to 500 characters".into(),
            ));
        }
        if request.ticket.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "ticket: must name the ticket this change belongs to (e.g. PROJ-123)".into(),
            ));
        }
        validate_duration(&request.estimated_duration)?;
        let ReadScripts {
            findings,
            effective_risk: effective,
            checksum,
        } = read_scripts(
            &request.up_sql,
            request.down_sql.as_deref(),
            request.risk,
            self.dialect(),
        )?;
        let now = self.clock.now();
        let at = millis(now);

        let mut tx = self.store.begin().await?;
        let mut dependencies = Vec::new();
        for (i, dependency) in request.depends_on.iter().enumerate() {
            let id: MigrationId = dependency
                .parse()
                .map_err(|e: DomainError| ServiceError::Invalid(format!("depends_on[{i}]: {e}")))?;
            if self.store.migration(&mut tx, id.as_str()).await?.is_none() {
                return Err(ServiceError::Invalid(format!(
                    "depends_on[{i}]: no migration \"{id}\" exists"
                )));
            }
            dependencies.push(id.to_string());
        }
        let seq = self.store.next_migration_seq(&mut tx).await?;
        let id = MigrationId::compose(seq, &now.format("%Y%m%d_%H%M%S").to_string(), description);
        let migration = MigrationRow {
            id: id.to_string(),
            seq,
            kind: request.kind.as_str().into(),
            description: description.into(),
            declared_risk: request.risk.as_str().into(),
            effective_risk: effective.as_str().into(),
            findings: serde_json::to_string(&findings).unwrap_or_else(|_| "[]".into()),
            author: caller.name.to_string(),
            authors: vec![caller.name.to_string()],
            ticket: request.ticket.trim().into(),
            estimated_duration: request.estimated_duration.trim().into(),
            up_sql: request.up_sql,
            down_sql: request.down_sql,
            depends_on: dependencies,
            checksum: checksum.clone(),
            submitted_at: at,
            updated_at: at,
        };
        self.store.insert_migration(&mut tx, &migration).await?;
        self.store
            .insert_audit(
                &mut tx,
                &audit(
                    at,
                    caller.name.as_str(),
                    "submitted",
                    None,
                    Some(&migration.id),
                    serde_json::json!({
                        "checksum": checksum,
                        "declared_risk": migration.declared_risk,
                        "effective_risk": migration.effective_risk,
                        "findings": findings,
                    }),
                ),
            )
            .await?;
        let mut wake = Vec::new();
        let mut created = Vec::new();
        for env in &self.config.environments {
            let policy = self.config.matrix.policy(&env.name, effective);
            let mut deployment = DeploymentRow {
                id: domain::deployment_id(&id, &env.name),
                migration_id: migration.id.clone(),
                seq,
                environment: env.name.to_string(),
                state: DeploymentState::AwaitingApproval,
                effective_risk: effective.as_str().into(),
                emergency_reason: None,
                deadline_at: approval_deadline(policy, at),
                error: None,
                last_action: None,
                started_at: None,
                finished_at: None,
                execution_ms: None,
                transactional: None,
                created_at: at,
                updated_at: at,
                version: 0,
                out_of_order: false,
            };
            self.store.insert_deployment(&mut tx, &deployment).await?;
            if env.auto_approve {
                self.advance_approved(&mut tx, &mut deployment, env, at, "sluice", "auto_approved")
                    .await?;
                if deployment.state == DeploymentState::Queued {
                    wake.push(env.name.to_string());
                }
            }
            created.push(deployment);
        }
        tx.commit().await?;
        self.publish(&created);
        for env in wake {
            self.signals.wake(&env);
        }
        self.migration(&id.to_string()).await
    }

    /// Moves a deployment whose policy is satisfied to approved, and on to queued where the
    /// environment applies automatically. Audits both steps.
    async fn advance_approved(
        &self,
        tx: &mut Tx,
        deployment: &mut DeploymentRow,
        env: &EnvironmentConfig,
        at: i64,
        actor: &str,
        action: &str,
    ) -> Result<()> {
        let event = if deployment.emergency_reason.is_some() {
            DeploymentEvent::EmergencyOverride
        } else {
            DeploymentEvent::PolicySatisfied
        };
        deployment.state = deployment.state.on(event)?;
        deployment.deadline_at = None;
        deployment.updated_at = at;
        self.store
            .insert_audit(
                tx,
                &audit(
                    at,
                    actor,
                    action,
                    Some(deployment),
                    None,
                    serde_json::json!({}),
                ),
            )
            .await?;
        if env.auto_apply {
            deployment.state = deployment.state.on(DeploymentEvent::Release)?;
            self.store
                .insert_audit(
                    tx,
                    &audit(
                        at,
                        "sluice",
                        "queued",
                        Some(deployment),
                        None,
                        serde_json::json!({"reason": "auto_apply"}),
                    ),
                )
                .await?;
        }
        self.store.update_deployment(tx, deployment).await?;
        Ok(())
    }

    // ----- approvals -----

    async fn load_for_change(
        &self,
        tx: &mut Tx,
        deployment_id: &str,
    ) -> Result<(DeploymentRow, MigrationRow)> {
        domain::parse_deployment_id(deployment_id)?;
        let deployment = self
            .store
            .deployment(tx, deployment_id, true)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no deployment \"{deployment_id}\"")))?;
        let migration = self
            .store
            .migration(tx, &deployment.migration_id)
            .await?
            .ok_or_else(|| {
                ServiceError::Unexpected(anyhow::anyhow!(
                    "deployment {deployment_id} has no migration"
                ))
            })?;
        Ok((deployment, migration))
    }

    pub async fn approve(
        &self,
        caller: &Caller,
        deployment_id: &str,
        role: Role,
        comment: &str,
        reviewed_checksum: Option<&str>,
    ) -> Result<DeploymentView> {
        domain::text::field("comment", comment, domain::text::COMMENT)?;
        if let Some(checksum) = reviewed_checksum {
            domain::text::field("checksum", checksum, domain::text::NAME)?;
        }
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (mut deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        let env = self.environment(&deployment.environment)?;
        if deployment.state != DeploymentState::AwaitingApproval {
            return Err(ServiceError::Conflict(format!(
                "deployment {deployment_id} is {}; approvals are taken only while it is awaiting_approval",
                deployment.state
            )));
        }
        // Past its deadline a deployment is expired, whether or not the scheduler has marked it
        // yet: a late approval must not win a race against expiry.
        if let Some(deadline) = deployment.deadline_at
            && deadline <= at
        {
            return Err(ServiceError::Conflict(format!(
                "deployment {deployment_id} passed its approval deadline at {}; it expires and takes no more approvals (submit it again)",
                format_millis(deadline)
            )));
        }
        let policy = self.policy_for(&deployment)?;
        let approvals = self.store.approvals(&mut tx, deployment_id).await?;
        let records = approval_records(&approvals)?;
        let authors = authors_of(&migration)?;
        let request = domain::ApprovalRequest {
            approver: &caller.name,
            approver_roles: &caller.roles,
            role,
            authors: &authors,
            allow_self_approval: env.allow_self_approval,
            environment: env.name.as_str(),
            checksum: &migration.checksum,
        };
        let progress = check_approval(policy, &records, &request)?;
        // An approval is of the scripts the approver read: it names their checksum, and a
        // script changed since then is not what they approved.
        match reviewed_checksum.map(str::trim).filter(|c| !c.is_empty()) {
            Some(reviewed) if reviewed != migration.checksum => {
                return Err(ServiceError::Conflict(format!(
                    "checksum: you reviewed {reviewed} but {} now has the checksum {}: its scripts changed; read them again before approving",
                    migration.id, migration.checksum
                )));
            }
            Some(_) => {}
            None if env.allow_self_approval => {}
            None => {
                return Err(ServiceError::Invalid(format!(
                    "checksum: an approval in {} must name the checksum of the scripts reviewed (now {}, shown by GET /api/v1/migrations/{})",
                    env.name, migration.checksum, migration.id
                )));
            }
        }
        self.store
            .insert_approval(
                &mut tx,
                &ApprovalRow {
                    deployment_id: deployment.id.clone(),
                    approver: caller.name.to_string(),
                    role: role.to_string(),
                    comment: comment.to_owned(),
                    checksum: migration.checksum.clone(),
                    approved_at: at,
                },
            )
            .await?;
        self.store
            .insert_audit(
                &mut tx,
                &audit(
                    at,
                    caller.name.as_str(),
                    "approval_recorded",
                    Some(&deployment),
                    None,
                    serde_json::json!({"role": role, "comment": comment, "checksum": migration.checksum}),
                ),
            )
            .await?;
        if progress.satisfied {
            self.advance_approved(
                &mut tx,
                &mut deployment,
                env,
                at,
                caller.name.as_str(),
                "approved",
            )
            .await?;
        }
        tx.commit().await?;
        if progress.satisfied {
            self.publish([&deployment]);
        }
        if deployment.state == DeploymentState::Queued {
            self.signals.wake(&deployment.environment);
        }
        self.deployment(deployment_id).await
    }

    /// Approves a deployment without the full set of approvals, for an emergency. Allowed only
    /// where the approval matrix says `emergency_override: true`, only to a data_ops_lead or an
    /// admin, and only with a reason; the audit trail records that a review is owed.
    pub async fn emergency_override(
        &self,
        caller: &Caller,
        deployment_id: &str,
        reason: &str,
    ) -> Result<DeploymentView> {
        domain::text::field("reason", reason, domain::text::REASON)?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (mut deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        domain::authz::may_force(
            &caller.name,
            &caller.roles,
            &authors_of(&migration)?,
            reason,
        )?;
        let env = self.environment(&deployment.environment)?;
        let policy = self.policy_for(&deployment)?;
        if !policy.emergency_override {
            return Err(ServiceError::Forbidden(format!(
                "the approval matrix does not allow an emergency override in {} for {} risk",
                deployment.environment, deployment.effective_risk
            )));
        }
        if deployment.state != DeploymentState::AwaitingApproval {
            return Err(ServiceError::Conflict(format!(
                "deployment {deployment_id} is {}; only a deployment awaiting approval can be forced",
                deployment.state
            )));
        }
        let approvals = self.store.approvals(&mut tx, deployment_id).await?;
        let progress = policy.progress(&approval_records(&approvals)?, &migration.checksum);
        // The override is the forcer's own approval: recorded like any other, so the
        // deployment shows who signed it off besides its author.
        let forcer_role = if caller.roles.contains(&Role::DataOpsLead) {
            Role::DataOpsLead
        } else {
            Role::Admin
        };
        if !approvals
            .iter()
            .any(|a| a.approver == caller.name.as_str() && a.checksum == migration.checksum)
        {
            self.store
                .insert_approval(
                    &mut tx,
                    &ApprovalRow {
                        deployment_id: deployment.id.clone(),
                        approver: caller.name.to_string(),
                        role: forcer_role.to_string(),
                        comment: format!("emergency override: {}", reason.trim()),
                        checksum: migration.checksum.clone(),
                        approved_at: at,
                    },
                )
                .await?;
        }
        deployment.emergency_reason = Some(reason.trim().to_owned());
        self.store
            .insert_audit(
                &mut tx,
                &audit(
                    at,
                    caller.name.as_str(),
                    "emergency_override",
                    Some(&deployment),
                    None,
                    serde_json::json!({
                        "reason": reason.trim(),
                        "missing_roles": progress.missing_roles,
                        "checksum": migration.checksum,
                        "review_owed": true,
                    }),
                ),
            )
            .await?;
        self.advance_approved(
            &mut tx,
            &mut deployment,
            env,
            at,
            caller.name.as_str(),
            "approved",
        )
        .await?;
        tx.commit().await?;
        self.publish([&deployment]);
        self.signals.wake(&deployment.environment);
        self.deployment(deployment_id).await
    }

    /// Replaces a migration's scripts before it has touched any target. The checksum changes,
    /// so every approval is void and each open deployment goes back to awaiting approval.
    pub async fn amend(
        &self,
        caller: &Caller,
        migration_id: &str,
        request: AmendRequest,
    ) -> Result<MigrationView> {
        let parsed: MigrationId = migration_id.parse()?;
        domain::text::script("up_sql", &request.up_sql)?;
        if let Some(down) = &request.down_sql {
            domain::text::script("down_sql", down)?;
        }
        domain::text::field("reason", &request.reason, domain::text::REASON)?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let mut migration = self
            .store
            .migration(&mut tx, parsed.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no migration \"{migration_id}\"")))?;
        domain::authz::may_change_own_or_operate(
            &caller.name,
            &caller.roles,
            &migration.author,
            "every environment",
            false,
            "amend",
        )?;
        let declared: Risk = migration.declared_risk.parse()?;
        let ReadScripts {
            findings,
            effective_risk: effective,
            checksum,
        } = read_scripts(
            &request.up_sql,
            request.down_sql.as_deref(),
            declared,
            self.dialect(),
        )?;
        if checksum == migration.checksum {
            return Err(ServiceError::Conflict(
                "the scripts are unchanged; nothing to amend".into(),
            ));
        }
        let deployments = self
            .store
            .deployments_of_migration(&mut tx, &migration.id)
            .await?;
        if let Some(d) = deployments.iter().find(|d| {
            matches!(
                d.state,
                DeploymentState::Running | DeploymentState::Applied | DeploymentState::RollingBack
            ) || (d.state == DeploymentState::Failed && d.transactional == Some(false))
        }) {
            return Err(ServiceError::Conflict(format!(
                "{} is {} in {}: a migration that has touched a target cannot be changed; submit a new one",
                migration.id, d.state, d.environment
            )));
        }
        let old_checksum = std::mem::replace(&mut migration.checksum, checksum.clone());
        // Whoever writes a version of the scripts is one of their authors from now on.
        if !migration.authors.iter().any(|a| a == caller.name.as_str()) {
            migration.authors.push(caller.name.to_string());
        }
        migration.up_sql = request.up_sql;
        migration.down_sql = request.down_sql;
        migration.findings = serde_json::to_string(&findings).unwrap_or_else(|_| "[]".into());
        migration.effective_risk = effective.as_str().into();
        migration.updated_at = at;
        self.store
            .update_migration_scripts(&mut tx, &migration)
            .await?;
        self.store
            .insert_audit(
                &mut tx,
                &audit(
                    at,
                    caller.name.as_str(),
                    "amended",
                    None,
                    Some(&migration.id),
                    serde_json::json!({
                        "old_checksum": old_checksum,
                        "checksum": checksum,
                        "effective_risk": effective,
                        "reason": request.reason,
                    }),
                ),
            )
            .await?;
        let mut wake = Vec::new();
        let mut changed = Vec::new();
        for mut d in deployments {
            if d.state.on(DeploymentEvent::Amend).is_err() {
                continue; // finished deployments (rejected, cancelled, ...) stay as they are
            }
            let env = self.environment(&d.environment)?;
            let policy = self.config.matrix.policy(&env.name, effective);
            d.state = d.state.on(DeploymentEvent::Amend)?;
            d.effective_risk = effective.as_str().into();
            d.emergency_reason = None;
            d.error = None;
            d.deadline_at = approval_deadline(policy, at);
            d.updated_at = at;
            self.store.update_deployment(&mut tx, &mut d).await?;
            // Every approval given before an amendment is void, whatever checksum the scripts
            // take later (amending back to an approved version does not revive them).
            let voided = self.store.delete_approvals(&mut tx, &d.id).await?;
            self.store
                .insert_audit(
                    &mut tx,
                    &audit(
                        at,
                        caller.name.as_str(),
                        "approvals_voided",
                        Some(&d),
                        None,
                        serde_json::json!({
                            "reason": "the migration's scripts changed",
                            "checksum": checksum,
                            "voided": voided.iter().map(|a| serde_json::json!({
                                "approver": a.approver, "role": a.role, "checksum": a.checksum,
                            })).collect::<Vec<_>>(),
                        }),
                    ),
                )
                .await?;
            if env.auto_approve {
                self.advance_approved(&mut tx, &mut d, env, at, "sluice", "auto_approved")
                    .await?;
                wake.push(d.environment.clone());
            }
            changed.push(d);
        }
        tx.commit().await?;
        self.publish(&changed);
        for env in wake {
            self.signals.wake(&env);
        }
        self.migration(&migration.id).await
    }

    /// Applies a simple caller-driven transition with its audit entry.
    async fn transition(
        &self,
        caller: &Caller,
        deployment_id: &str,
        event: DeploymentEvent,
        action: &str,
        detail: serde_json::Value,
        authorize: impl FnOnce(&DeploymentRow, &MigrationRow) -> Result<()>,
    ) -> Result<DeploymentView> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (mut deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        authorize(&deployment, &migration)?;
        deployment.state = deployment.state.on(event)?;
        deployment.updated_at = at;
        if event == DeploymentEvent::Retry {
            deployment.error = None;
        }
        self.store
            .update_deployment(&mut tx, &mut deployment)
            .await?;
        self.store
            .insert_audit(
                &mut tx,
                &audit(
                    at,
                    caller.name.as_str(),
                    action,
                    Some(&deployment),
                    None,
                    detail,
                ),
            )
            .await?;
        tx.commit().await?;
        self.publish([&deployment]);
        self.signals.wake(&deployment.environment);
        self.deployment(deployment_id).await
    }

    pub async fn reject(
        &self,
        caller: &Caller,
        deployment_id: &str,
        comment: &str,
    ) -> Result<DeploymentView> {
        domain::text::field("comment", comment, domain::text::COMMENT)?;
        if comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "comment: say why the deployment is rejected".into(),
            ));
        }
        self.transition(
            caller,
            deployment_id,
            DeploymentEvent::Reject,
            "rejected",
            serde_json::json!({"comment": comment}),
            |d, _| {
                let allowed = self.policy_for(d)?.allowed_roles();
                Ok(domain::authz::may_reject(
                    &caller.name,
                    &caller.roles,
                    &allowed,
                    &d.environment,
                )?)
            },
        )
        .await
    }

    pub async fn cancel(
        &self,
        caller: &Caller,
        deployment_id: &str,
        reason: &str,
    ) -> Result<DeploymentView> {
        domain::text::field("reason", reason, domain::text::REASON)?;
        self.transition(
            caller,
            deployment_id,
            DeploymentEvent::Cancel,
            "cancelled",
            serde_json::json!({"reason": reason}),
            |d, m| {
                let env = self.environment(&d.environment)?;
                Ok(domain::authz::may_change_own_or_operate(
                    &caller.name,
                    &caller.roles,
                    &m.author,
                    env.name.as_str(),
                    env.auto_approve,
                    "cancel",
                )?)
            },
        )
        .await
    }

    pub async fn retry(&self, caller: &Caller, deployment_id: &str) -> Result<DeploymentView> {
        self.transition(
            caller,
            deployment_id,
            DeploymentEvent::Retry,
            "retried",
            serde_json::json!({}),
            |d, _| {
                if d.last_action.as_deref() == Some("rollback") {
                    return Err(ServiceError::Conflict(format!(
                        "deployment {deployment_id} failed while rolling back; request the rollback again instead"
                    )));
                }
                self.require_operator(caller, self.environment(&d.environment)?, "retry")
            },
        )
        .await
    }

    pub async fn rollback(
        &self,
        caller: &Caller,
        deployment_id: &str,
        reason: &str,
    ) -> Result<DeploymentView> {
        domain::text::field("reason", reason, domain::text::REASON)?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (mut deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        let env = self.environment(&deployment.environment)?;
        self.require_operator(caller, env, "roll back")?;
        let needs_down =
            deployment.state == DeploymentState::Applied || deployment.transactional == Some(false);
        if needs_down && migration.down_sql.is_none() {
            return Err(ServiceError::Conflict(format!(
                "migration {} has no down_sql (rollback script); nothing can undo it",
                migration.id
            )));
        }
        if deployment.state == DeploymentState::Applied {
            // Do not pull a migration out from under one that depends on it.
            let later = self
                .store
                .deployments_in_states(
                    &mut tx,
                    &deployment.environment,
                    &[DeploymentState::Applied, DeploymentState::Running],
                )
                .await?;
            let later_ids: Vec<String> = later
                .iter()
                .filter(|d| d.seq > deployment.seq)
                .map(|d| d.migration_id.clone())
                .collect();
            for dependent in self.store.migrations_by_ids(&mut tx, &later_ids).await? {
                if dependent.depends_on.contains(&migration.id) {
                    return Err(ServiceError::Conflict(format!(
                        "{} depends on {} and is applied in {}; roll it back first",
                        dependent.id, migration.id, deployment.environment
                    )));
                }
            }
        }
        let from = deployment.state;
        deployment.state = deployment.state.on(DeploymentEvent::RequestRollback)?;
        deployment.updated_at = at;
        deployment.error = None;
        self.store
            .update_deployment(&mut tx, &mut deployment)
            .await?;
        self.store
            .insert_audit(
                &mut tx,
                &audit(
                    at,
                    caller.name.as_str(),
                    "rollback_requested",
                    Some(&deployment),
                    None,
                    serde_json::json!({"reason": reason, "from": from}),
                ),
            )
            .await?;
        tx.commit().await?;
        self.publish([&deployment]);
        self.signals.wake(&deployment.environment);
        self.deployment(deployment_id).await
    }

    // ----- environments -----

    pub async fn lock_environment(
        &self,
        caller: &Caller,
        environment: &str,
        reason: &str,
    ) -> Result<EnvironmentStatus> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "lock")?;
        domain::text::field("reason", reason, domain::text::REASON)?;
        if reason.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "reason: say why the environment is locked".into(),
            ));
        }
        let at = self.now();
        let mut tx = self.store.begin().await?;
        if let Some(lock) = self.store.lock(&mut tx, env.name.as_str()).await? {
            return Err(locked_error(env, &lock, "already "));
        }
        self.store
            .insert_lock(
                &mut tx,
                &LockRow {
                    environment: env.name.to_string(),
                    locked_by: caller.name.to_string(),
                    reason: reason.trim().into(),
                    locked_at: at,
                },
            )
            .await?;
        let mut entry = audit(
            at,
            caller.name.as_str(),
            "environment_locked",
            None,
            None,
            serde_json::json!({"reason": reason.trim()}),
        );
        entry.environment = Some(env.name.to_string());
        self.store.insert_audit(&mut tx, &entry).await?;
        tx.commit().await?;
        self.signals
            .lock_generation(env.name.as_str())
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.environment_status(environment).await
    }

    pub async fn unlock_environment(
        &self,
        caller: &Caller,
        environment: &str,
    ) -> Result<EnvironmentStatus> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "unlock")?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let Some(lock) = self.store.lock(&mut tx, env.name.as_str()).await? else {
            return Err(ServiceError::Conflict(format!(
                "{} is not locked",
                env.name
            )));
        };
        self.store.delete_lock(&mut tx, env.name.as_str()).await?;
        let mut entry = audit(
            at,
            caller.name.as_str(),
            "environment_unlocked",
            None,
            None,
            serde_json::json!({"locked_by": lock.locked_by, "reason": lock.reason}),
        );
        entry.environment = Some(env.name.to_string());
        self.store.insert_audit(&mut tx, &entry).await?;
        tx.commit().await?;
        self.signals.wake(env.name.as_str());
        self.environment_status(environment).await
    }

    /// Releases every approved deployment of the environment to its worker (the seed's
    /// `migrate <environment>`). Returns the ids released.
    pub async fn migrate(&self, caller: &Caller, environment: &str) -> Result<MigrateResult> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "migrate")?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        if let Some(lock) = self.store.lock(&mut tx, env.name.as_str()).await? {
            return Err(locked_error(env, &lock, ""));
        }
        let mut approved = self
            .store
            .deployments_in_states(&mut tx, env.name.as_str(), &[DeploymentState::Approved])
            .await?;
        if let Some((window, until)) =
            domain::freeze::describe(&env.freeze_windows, self.clock.now())
        {
            // Only emergency overrides start inside a freeze window.
            approved.retain(|d| d.emergency_reason.is_some());
            if approved.is_empty() {
                return Err(ServiceError::Conflict(format!(
                    "{} is in the freeze window {window} until {until}; only an emergency override (sluice migrate {} --force --emergency \"<reason>\") starts now",
                    env.name, env.name
                )));
            }
        }
        let mut released = Vec::new();
        for mut deployment in approved {
            deployment.state = deployment.state.on(DeploymentEvent::Release)?;
            deployment.updated_at = at;
            self.store
                .update_deployment(&mut tx, &mut deployment)
                .await?;
            self.store
                .insert_audit(
                    &mut tx,
                    &audit(
                        at,
                        caller.name.as_str(),
                        "queued",
                        Some(&deployment),
                        None,
                        serde_json::json!({"reason": "migrate"}),
                    ),
                )
                .await?;
            released.push(deployment);
        }
        let queued = self
            .store
            .deployments_in_states(
                &mut tx,
                env.name.as_str(),
                &[DeploymentState::Queued, DeploymentState::Running],
            )
            .await?;
        tx.commit().await?;
        self.publish(&released);
        self.signals.wake(env.name.as_str());
        Ok(MigrateResult {
            environment: env.name.to_string(),
            released: released.into_iter().map(|d| d.id).collect(),
            queued: queued.into_iter().map(|d| d.id).collect(),
        })
    }

    /// Waits until none of the given deployments of `environment` is queued, running or rolling
    /// back, or the timeout passes. Returns whether they settled. One query per poll, however
    /// many deployments are waited for.
    pub async fn wait_settled(
        &self,
        environment: &str,
        ids: &[String],
        timeout: std::time::Duration,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        let wanted: std::collections::HashSet<&String> = ids.iter().collect();
        loop {
            let busy = {
                let mut conn = self.store.conn().await?;
                self.store
                    .deployments_in_states(
                        &mut conn,
                        environment,
                        &[
                            DeploymentState::Queued,
                            DeploymentState::Running,
                            DeploymentState::RollingBack,
                        ],
                    )
                    .await?
            };
            if !busy.iter().any(|d| wanted.contains(&d.id)) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    // ----- reads -----

    pub async fn migration(&self, id: &str) -> Result<MigrationView> {
        let parsed: MigrationId = id.parse()?;
        let mut conn = self.store.conn().await?;
        let migration = self
            .store
            .migration(&mut conn, parsed.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no migration \"{id}\"")))?;
        let deployments = self
            .store
            .deployments_of_migration(&mut conn, &migration.id)
            .await?;
        let mut views = Vec::new();
        // Report deployments in promotion order.
        for env in &self.config.environments {
            if let Some(d) = deployments
                .iter()
                .find(|d| d.environment == env.name.as_str())
            {
                let approvals = self.store.approvals(&mut conn, &d.id).await?;
                views.push(self.deployment_view(d, &migration, &approvals)?);
            }
        }
        Ok(MigrationView::new(migration, views))
    }

    pub async fn list_migrations(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<MigrationSummary>> {
        let mut conn = self.store.conn().await?;
        let rows = self
            .store
            .list_migrations(&mut conn, limit.clamp(1, 500), before)
            .await?;
        let mut out = Vec::new();
        for m in rows {
            let deployments = self
                .store
                .deployments_of_migration(&mut conn, &m.id)
                .await?;
            let states: BTreeMap<String, DeploymentState> = deployments
                .into_iter()
                .map(|d| (d.environment, d.state))
                .collect();
            out.push(MigrationSummary::new(m, states));
        }
        Ok(out)
    }

    pub async fn deployment(&self, id: &str) -> Result<DeploymentView> {
        domain::parse_deployment_id(id)?;
        let mut conn = self.store.conn().await?;
        let d = self
            .store
            .deployment(&mut conn, id, false)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no deployment \"{id}\"")))?;
        let migration = self
            .store
            .migration(&mut conn, &d.migration_id)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!("no migration \"{}\"", d.migration_id))
            })?;
        let approvals = self.store.approvals(&mut conn, id).await?;
        let mut view = self.deployment_view(&d, &migration, &approvals)?;
        view.log = Some(
            self.store
                .logs(&mut conn, id)
                .await?
                .into_iter()
                .map(LogView::from)
                .collect(),
        );
        Ok(view)
    }

    fn deployment_view(
        &self,
        d: &DeploymentRow,
        migration: &MigrationRow,
        approvals: &[ApprovalRow],
    ) -> Result<DeploymentView> {
        let policy = self.policy_for(d)?;
        let records = approval_records(approvals)?;
        let progress = policy.progress(&records, &migration.checksum);
        Ok(DeploymentView::new(
            d, migration, approvals, policy, &progress,
        ))
    }

    pub async fn environments(&self) -> Result<Vec<EnvironmentStatus>> {
        let mut out = Vec::new();
        for env in &self.config.environments {
            out.push(self.environment_status(env.name.as_str()).await?);
        }
        Ok(out)
    }

    pub async fn environment_status(&self, environment: &str) -> Result<EnvironmentStatus> {
        let env = self.environment(environment)?;
        let mut conn = self.store.conn().await?;
        let lock = self.store.lock(&mut conn, env.name.as_str()).await?;
        let open = self
            .store
            .deployments_in_states(&mut conn, env.name.as_str(), &DeploymentState::OPEN)
            .await?;
        let ids: Vec<String> = open.iter().map(|d| d.migration_id.clone()).collect();
        let migrations: HashMap<String, MigrationRow> = self
            .store
            .migrations_by_ids(&mut conn, &ids)
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let previous_states: HashMap<String, DeploymentState> =
            match self.config.previous_environment(&env.name) {
                Some(prev) => self
                    .store
                    .states_in_environment(&mut conn, prev.name.as_str(), &ids)
                    .await?
                    .into_iter()
                    .collect(),
                None => HashMap::new(),
            };
        let frozen = domain::freeze::describe(&env.freeze_windows, self.clock.now());
        // One query for the approvals of the whole queue, however long it is.
        let open_ids: Vec<String> = open.iter().map(|d| d.id.clone()).collect();
        let mut approvals_by_deployment: HashMap<String, Vec<ApprovalRow>> = HashMap::new();
        for approval in self.store.approvals_of_many(&mut conn, &open_ids).await? {
            approvals_by_deployment
                .entry(approval.deployment_id.clone())
                .or_default()
                .push(approval);
        }
        // And one for the dependencies of everything that could start.
        let dependencies: Vec<String> = open
            .iter()
            .filter(|d| matches!(d.state, DeploymentState::Queued | DeploymentState::Approved))
            .filter_map(|d| migrations.get(&d.migration_id))
            .flat_map(|m| m.depends_on.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let dependency_states: HashMap<String, DeploymentState> = self
            .store
            .states_in_environment(&mut conn, env.name.as_str(), &dependencies)
            .await?
            .into_iter()
            .collect();
        let previous = self.config.previous_environment(&env.name);
        // The worker's own planner: what status says is what the worker will do.
        let entries: Vec<domain::queue::QueueEntry<'_>> = open
            .iter()
            .map(|d| domain::queue::QueueEntry {
                migration_id: d.migration_id.as_str(),
                state: d.state,
                emergency: d.emergency_reason.is_some(),
                dependencies: migrations
                    .get(&d.migration_id)
                    .map(|m| {
                        m.depends_on
                            .iter()
                            .map(|dep| (dep.as_str(), dependency_states.get(dep).copied()))
                            .collect()
                    })
                    .unwrap_or_default(),
                previous_environment: previous.map(|p| {
                    (
                        p.name.as_str(),
                        previous_states.get(&d.migration_id).copied(),
                    )
                }),
            })
            .collect();
        let plan = domain::queue::plan(&entries, frozen.clone());
        let mut queue = Vec::new();
        for (d, planned) in open.iter().zip(plan) {
            let Some(m) = migrations.get(&d.migration_id) else {
                continue;
            };
            let approvals = approvals_by_deployment.remove(&d.id).unwrap_or_default();
            let mut view = self.deployment_view(d, m, &approvals)?;
            view.blocked_by = planned.blocked_by;
            if view.blocked_by.is_none() && d.state == DeploymentState::Approved {
                view.blocked_by = Some(format!(
                    "approved; waits for `migrate {}` (auto_apply is off)",
                    env.name
                ));
            }
            if planned.out_of_order {
                view.blocked_by = None;
                view.out_of_order = true;
            }
            queue.push(view);
        }
        let last = self
            .store
            .last_applied(&mut conn, env.name.as_str(), 1)
            .await?;
        let last_applied = match last.first() {
            Some(d) => {
                let m = self.store.migration(&mut conn, &d.migration_id).await?;
                match m {
                    Some(m) => {
                        let approvals = self.store.approvals(&mut conn, &d.id).await?;
                        Some(self.deployment_view(d, &m, &approvals)?)
                    }
                    None => None,
                }
            }
            None => None,
        };
        let mut status = EnvironmentStatus::new(env, lock, queue, last_applied);
        status.freeze = frozen.map(|(window, until)| FreezeView { window, until });
        if let Some((message, since)) = self.signals.target_error(env.name.as_str()) {
            status.target_error = Some(message);
            status.target_error_since = Some(format_millis(since));
        }
        Ok(status)
    }

    pub async fn audit_trail(&self, filter: AuditFilter) -> Result<Vec<AuditView>> {
        for (name, value) in [
            ("environment", &filter.environment),
            ("migration_id", &filter.migration_id),
            ("actor", &filter.actor),
        ] {
            if let Some(value) = value {
                domain::text::field(name, value, domain::text::NAME)?;
            }
        }
        if let Some(env) = &filter.environment {
            self.environment(env)?;
        }
        let mut conn = self.store.conn().await?;
        let rows = self.store.audit(&mut conn, &filter).await?;
        Ok(rows.into_iter().map(AuditView::from).collect())
    }

    // ----- scheduler -----

    /// Expires every deployment whose approval deadline has passed. Returns how many.
    pub async fn expire_overdue(&self) -> Result<usize> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let overdue = self.store.overdue(&mut tx, at).await?;
        let mut expired = Vec::with_capacity(overdue.len());
        for mut d in overdue {
            d.state = d.state.on(DeploymentEvent::Expire)?;
            d.updated_at = at;
            match self.store.update_deployment(&mut tx, &mut d).await {
                Ok(()) => {}
                // Approved, cancelled or expired by another replica since it was read: the
                // other writer's outcome stands.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            self.store
                .insert_audit(
                    &mut tx,
                    &audit(
                        at,
                        "sluice",
                        "expired",
                        Some(&d),
                        None,
                        serde_json::json!({"deadline_at": d.deadline_at.map(format_millis)}),
                    ),
                )
                .await?;
            expired.push(d);
        }
        tx.commit().await?;
        self.publish(&expired);
        Ok(expired.len())
    }
}

/// Everyone who wrote a version of the migration's scripts.
fn authors_of(migration: &MigrationRow) -> Result<Vec<UserName>> {
    let mut names: Vec<&str> = vec![migration.author.as_str()];
    names.extend(migration.authors.iter().map(String::as_str));
    let mut authors: Vec<UserName> = Vec::new();
    for name in names {
        let user: UserName = name
            .parse()
            .map_err(|e: DomainError| ServiceError::Unexpected(anyhow::anyhow!(e)))?;
        if !authors.contains(&user) {
            authors.push(user);
        }
    }
    Ok(authors)
}

fn approval_records(approvals: &[ApprovalRow]) -> Result<Vec<ApprovalRecord>> {
    approvals
        .iter()
        .map(|a| {
            Ok(ApprovalRecord {
                approver: a
                    .approver
                    .parse()
                    .map_err(|e: DomainError| ServiceError::Unexpected(anyhow::anyhow!(e)))?,
                role: a
                    .role
                    .parse()
                    .map_err(|e: DomainError| ServiceError::Unexpected(anyhow::anyhow!(e)))?,
                checksum: a.checksum.clone(),
            })
        })
        .collect()
}

pub fn format_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
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
        assert!(check_script("down_sql", "-- nothing\n", lint::Dialect::Postgres).is_err());
    }
}
