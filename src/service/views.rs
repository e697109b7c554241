//! What the service returns: plain serialisable views, shared by every API.

use super::format_millis;
use crate::config::EnvironmentConfig;
use crate::domain::{ApprovalPolicy, DeploymentState, PolicyProgress, Role};
use crate::lint;
use crate::store::{
    ApprovalRow, AuditRow, DeploymentRow, LockRow, LogRow, MigrationRow, StoreError,
};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ApprovalView {
    pub approver: String,
    pub role: String,
    pub comment: String,
    pub approved_at: String,
    /// The checksum of the scripts the approver approved.
    pub checksum: String,
    /// False when the migration changed after this approval: it no longer counts.
    pub current: bool,
}

/// Why a deployment was rejected, and by whom (from the audit trail).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RejectionView {
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// A version of a migration's scripts that an amendment replaced, and where it was approved
/// or applied: what an approver compares the scripts with.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MigrationVersionView {
    pub checksum: String,
    /// The scripts of that version; null when it was replaced before Sluice kept the scripts of
    /// replaced versions (only its checksum is known, from the audit trail).
    pub up_sql: Option<String>,
    pub down_sql: Option<String>,
    pub replaced_at: String,
    pub replaced_by: String,
    /// Environments where an approval of this version was recorded.
    pub approved_in: Vec<String>,
    /// Environments where this version was applied.
    pub applied_in: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LogView {
    pub at: String,
    pub level: String,
    pub message: String,
}

impl From<LogRow> for LogView {
    fn from(row: LogRow) -> Self {
        LogView {
            at: format_millis(row.at),
            level: row.level,
            message: row.message,
        }
    }
}

/// One page of a deployment's log.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LogPage {
    pub deployment_id: String,
    /// Each line with its id, oldest first.
    pub lines: Vec<LogPageLine>,
    /// Pass as `after_id` for the next page; `None` when this page reached the end.
    pub next_after_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LogPageLine {
    pub id: i64,
    pub at: String,
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DeploymentView {
    pub id: String,
    pub migration_id: String,
    pub environment: String,
    pub state: DeploymentState,
    pub effective_risk: String,
    pub required_roles: Vec<Role>,
    pub required_approvals: u32,
    pub approvals: Vec<ApprovalView>,
    /// Roles still to sign, one entry per missing approval (empty once approved).
    pub missing_roles: Vec<Role>,
    pub additional_approvals_needed: u32,
    pub deadline_at: Option<String>,
    pub emergency_reason: Option<String>,
    /// The database's error, with the statement and line, when the deployment failed.
    pub error: Option<String>,
    /// Why a queued or approved deployment does not start yet (environment status only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// Environment status only: set when nothing lets this deployment move on without someone
    /// acting, saying who must do what (approvals by whom, a retry or cancel of the failed
    /// deployment that halts the queue, an unlock, the end of a freeze window). Absent while it
    /// moves on by itself. `migrate --wait` and REST `migrate?wait=true` end on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub execution_ms: Option<i64>,
    pub transactional: Option<bool>,
    pub updated_at: String,
    /// The checksum of the migration's scripts now: the one an approval must name.
    pub checksum: String,
    /// An emergency deployment applied ahead of earlier deployments that were waiting.
    pub out_of_order: bool,
    /// Server notices and Sluice's notes, in order (single-deployment view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<LogView>>,
    /// The post-deployment reviews an emergency override owes, recorded or not
    /// (single-deployment view only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewView>,
    /// Some review an emergency override owes is not recorded yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub review_owed: bool,
    /// The latest dry run (single-deployment view and environment status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<super::DryRunView>,
    /// The latest rollback test (single-deployment view and environment status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_test: Option<super::RollbackTestView>,
    /// A script run statement by statement that stopped part-way (failed, or cancelled since):
    /// how many of its statements are applied. A rollback undoes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statements_applied: Option<i64>,
    /// Who rejected it and why (a rejected deployment, in the migration and single-deployment
    /// views).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<RejectionView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ReviewView {
    pub role: String,
    pub owed_since: String,
    pub reviewer: Option<String>,
    pub comment: Option<String>,
    pub reviewed_at: Option<String>,
}

impl From<crate::store::ReviewRow> for ReviewView {
    fn from(r: crate::store::ReviewRow) -> Self {
        ReviewView {
            role: r.role,
            owed_since: format_millis(r.owed_at),
            reviewer: r.reviewer,
            comment: r.comment,
            reviewed_at: r.reviewed_at.map(format_millis),
        }
    }
}

/// A deployment whose post-emergency review is owed, for environment status.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct OwedReviewView {
    pub deployment_id: String,
    pub migration_id: String,
    pub roles: Vec<String>,
    pub owed_since: String,
}

impl DeploymentView {
    pub fn new(
        d: &DeploymentRow,
        migration: &MigrationRow,
        approvals: &[ApprovalRow],
        policy: &ApprovalPolicy,
        progress: &PolicyProgress,
    ) -> DeploymentView {
        let awaiting = d.state == DeploymentState::AwaitingApproval;
        DeploymentView {
            id: d.id.clone(),
            migration_id: d.migration_id.clone(),
            environment: d.environment.clone(),
            state: d.state,
            effective_risk: d.effective_risk.clone(),
            required_roles: policy.required_roles.clone(),
            required_approvals: policy.required_approvals,
            approvals: approvals
                .iter()
                .map(|a| ApprovalView {
                    approver: a.approver.clone(),
                    role: a.role.clone(),
                    comment: a.comment.clone(),
                    approved_at: format_millis(a.approved_at),
                    checksum: a.checksum.clone(),
                    current: a.checksum == migration.checksum,
                })
                .collect(),
            missing_roles: if awaiting {
                progress.missing_roles.clone()
            } else {
                Vec::new()
            },
            additional_approvals_needed: if awaiting {
                progress.additional_approvals_needed
            } else {
                0
            },
            deadline_at: d.deadline_at.map(format_millis),
            emergency_reason: d.emergency_reason.clone(),
            error: d.error.clone(),
            blocked_by: None,
            needs: None,
            started_at: d.started_at.map(format_millis),
            finished_at: d.finished_at.map(format_millis),
            execution_ms: d.execution_ms,
            transactional: d.transactional,
            updated_at: format_millis(d.updated_at),
            checksum: migration.checksum.clone(),
            out_of_order: d.out_of_order,
            log: None,
            reviews: Vec::new(),
            review_owed: false,
            dry_run: None,
            rollback_test: None,
            statements_applied: super::lifecycle::partly_applied(d),
            rejection: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MigrationView {
    pub id: String,
    pub kind: String,
    pub description: String,
    pub declared_risk: String,
    pub effective_risk: String,
    pub findings: Vec<lint::Finding>,
    pub author: String,
    pub ticket: String,
    pub estimated_duration: String,
    pub checksum: String,
    pub depends_on: Vec<String>,
    pub submitted_at: String,
    pub up_sql: String,
    pub down_sql: Option<String>,
    /// One per environment, in promotion order.
    pub deployments: Vec<DeploymentView>,
    /// The versions of the scripts amendments replaced, newest first (the single-migration
    /// view; absent when the scripts never changed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_versions: Vec<MigrationVersionView>,
}

impl MigrationView {
    /// The view of a migration row; its findings (JSON text in the row) are decoded here, once:
    /// text that is not a list of findings is a corrupt row, not an empty list.
    pub fn new(
        m: MigrationRow,
        deployments: Vec<DeploymentView>,
    ) -> Result<MigrationView, StoreError> {
        let findings = serde_json::from_str(&m.findings)
            .map_err(|e| StoreError::Corrupt(format!("migrations.findings of {}: {e}", m.id)))?;
        Ok(MigrationView {
            findings,
            id: m.id,
            kind: m.kind,
            description: m.description,
            declared_risk: m.declared_risk,
            effective_risk: m.effective_risk,
            author: m.author,
            ticket: m.ticket,
            estimated_duration: m.estimated_duration,
            checksum: m.checksum,
            depends_on: m.depends_on,
            submitted_at: format_millis(m.submitted_at),
            up_sql: m.up_sql,
            down_sql: m.down_sql,
            deployments,
            previous_versions: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MigrationSummary {
    pub id: String,
    pub kind: String,
    pub description: String,
    pub effective_risk: String,
    pub author: String,
    pub ticket: String,
    pub submitted_at: String,
    /// Deployment state per environment.
    pub states: BTreeMap<String, DeploymentState>,
}

impl MigrationSummary {
    pub fn new(m: MigrationRow, states: BTreeMap<String, DeploymentState>) -> MigrationSummary {
        MigrationSummary {
            id: m.id,
            kind: m.kind,
            description: m.description,
            effective_risk: m.effective_risk,
            author: m.author,
            ticket: m.ticket,
            submitted_at: format_millis(m.submitted_at),
            states,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LockView {
    pub locked_by: String,
    pub reason: String,
    pub locked_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct EnvironmentStatus {
    pub name: String,
    pub database: String,
    pub auto_approve: bool,
    pub auto_apply: bool,
    pub lock: Option<LockView>,
    /// The failed deployment that halts this environment's queue, if any.
    pub halted_by: Option<String>,
    /// Every deployment not yet applied or finished, in id order.
    pub queue: Vec<DeploymentView>,
    /// The deployments awaiting approval, with the roles still missing.
    pub pending_approvals: Vec<DeploymentView>,
    pub last_applied: Option<DeploymentView>,
    /// The freeze window in force, if any: nothing but emergency overrides starts until it ends.
    pub freeze: Option<FreezeView>,
    /// Why the worker could not reach the target on its last try (it keeps retrying).
    pub target_error: Option<String>,
    pub target_error_since: Option<String>,
    /// Emergency deployments here whose post-deployment review is still owed.
    pub owed_reviews: Vec<OwedReviewView>,
    /// Cancelled deployments that left part of their script applied (not rolled back).
    pub partly_applied: Vec<DeploymentView>,
    /// Changes to the target's schema made outside Sluice, found by the scheduler's check and
    /// not yet accepted.
    pub drift: Option<super::RecordedDrift>,
}

impl EnvironmentStatus {
    pub fn new(
        env: &EnvironmentConfig,
        lock: Option<LockRow>,
        queue: Vec<DeploymentView>,
        last_applied: Option<DeploymentView>,
    ) -> EnvironmentStatus {
        EnvironmentStatus {
            name: env.name.to_string(),
            database: env.display_url(),
            auto_approve: env.auto_approve,
            auto_apply: env.auto_apply,
            lock: lock.map(|l| LockView {
                locked_by: l.locked_by,
                reason: l.reason,
                locked_at: format_millis(l.locked_at),
            }),
            halted_by: queue
                .iter()
                .find(|d| d.state == DeploymentState::Failed)
                .map(|d| d.id.clone()),
            pending_approvals: queue
                .iter()
                .filter(|d| d.state == DeploymentState::AwaitingApproval)
                .cloned()
                .collect(),
            queue,
            last_applied,
            target_error: None,
            target_error_since: None,
            freeze: None,
            owed_reviews: Vec::new(),
            partly_applied: Vec::new(),
            drift: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FreezeView {
    pub window: String,
    pub until: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub environment: Option<String>,
    pub migration_id: Option<String>,
    pub deployment_id: Option<String>,
    pub detail: serde_json::Value,
}

impl From<AuditRow> for AuditView {
    fn from(row: AuditRow) -> Self {
        AuditView {
            id: row.id,
            at: format_millis(row.at),
            actor: row.actor,
            action: row.action,
            environment: row.environment,
            migration_id: row.migration_id,
            deployment_id: row.deployment_id,
            detail: serde_json::from_str(&row.detail).unwrap_or(serde_json::Value::Null),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MigrateResult {
    pub environment: String,
    /// Deployments this call released from approved to queued.
    pub released: Vec<String>,
    /// Everything now queued or running in the environment.
    pub queued: Vec<String>,
}
