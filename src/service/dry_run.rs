//! Dry runs (issue 9): a deployment's up script applied in a transaction on its environment's
//! target and rolled back, before approval. The result is kept with the deployment (the latest
//! one, with the checksum it ran) and shown wherever the deployment is, so approvers see
//! whether it runs, for how long, and which locks it takes.

use super::*;
use crate::store::{CheckKind, CheckRow};
use crate::target::{self, dry_run::DryRunReport, rollback_test::RollbackTestReport};

/// A check kept with a deployment (its latest dry run or rollback test), as the APIs show it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct CheckView<R> {
    pub deployment_id: String,
    pub at: String,
    pub by: String,
    /// The checksum of the scripts it ran.
    pub checksum: String,
    /// The scripts changed since: this check says nothing of the current version.
    pub stale: bool,
    #[serde(flatten)]
    pub report: R,
}

pub type DryRunView = CheckView<DryRunReport>;
pub type RollbackTestView = CheckView<RollbackTestReport>;

impl<R: serde::de::DeserializeOwned> CheckView<R> {
    pub(super) fn from_row(row: CheckRow, current_checksum: &str) -> Result<CheckView<R>> {
        let report: R = serde_json::from_str(&row.report).map_err(|e| {
            ServiceError::Unexpected(anyhow::anyhow!(
                "the stored check of {} does not read: {e}",
                row.deployment_id
            ))
        })?;
        Ok(CheckView {
            stale: row.checksum != current_checksum,
            deployment_id: row.deployment_id,
            at: format_millis(row.at),
            by: row.actor,
            checksum: row.checksum,
            report,
        })
    }
}

impl Service {
    /// Keeps a check's report with the deployment and audits it, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn keep_check<R: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        kind: CheckKind,
        caller: &Caller,
        deployment: &DeploymentRow,
        migration: &MigrationRow,
        outcome: &str,
        report: R,
        action: &str,
        mut detail: serde_json::Value,
    ) -> Result<CheckView<R>> {
        let row = CheckRow {
            deployment_id: deployment.id.clone(),
            at: self.now(),
            actor: caller.name.to_string(),
            checksum: migration.checksum.clone(),
            outcome: outcome.to_owned(),
            report: serde_json::to_string(&report)
                .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?,
        };
        detail["outcome"] = outcome.into();
        detail["checksum"] = migration.checksum.clone().into();
        let mut tx = self.store.begin().await?;
        self.store.put_check(&mut tx, kind, &row).await?;
        self.store
            .insert_audit(
                &mut tx,
                &AuditRow {
                    id: 0,
                    at: row.at,
                    actor: row.actor.clone(),
                    action: action.to_owned(),
                    environment: Some(deployment.environment.clone()),
                    migration_id: Some(migration.id.clone()),
                    deployment_id: Some(deployment.id.clone()),
                    detail: detail.to_string(),
                    events: None,
                },
            )
            .await?;
        tx.commit().await?;
        Ok(CheckView {
            deployment_id: row.deployment_id,
            at: format_millis(row.at),
            by: row.actor,
            checksum: row.checksum,
            stale: false,
            report,
        })
    }

    /// Fills a deployment view's latest dry run and rollback test.
    pub(super) async fn attach_checks(
        &self,
        conn: &mut sqlx::AnyConnection,
        views: &mut [DeploymentView],
    ) -> Result<()> {
        let ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
        let mut dry: HashMap<String, CheckRow> = self
            .store
            .checks(conn, CheckKind::DryRun, &ids)
            .await?
            .into_iter()
            .map(|r| (r.deployment_id.clone(), r))
            .collect();
        let mut tests: HashMap<String, CheckRow> = self
            .store
            .checks(conn, CheckKind::RollbackTest, &ids)
            .await?
            .into_iter()
            .map(|r| (r.deployment_id.clone(), r))
            .collect();
        for view in views {
            if let Some(row) = dry.remove(&view.id) {
                view.dry_run = Some(CheckView::from_row(row, &view.checksum)?);
            }
            if let Some(row) = tests.remove(&view.id) {
                view.rollback_test = Some(CheckView::from_row(row, &view.checksum)?);
            }
        }
        Ok(())
    }
}

impl Service {
    /// Applies the deployment's up script in a transaction on its target and rolls it back;
    /// keeps and returns what happened. Operators (developers too where the environment
    /// approves itself), for a deployment that has not run: awaiting approval, approved,
    /// queued, or failed.
    pub async fn dry_run(&self, caller: &Caller, deployment_id: &str) -> Result<DryRunView> {
        let (deployment, migration) = {
            let mut conn = self.store.conn().await?;
            self.read_deployment(&mut conn, deployment_id).await?
        };
        let env = self.environment(&deployment.environment)?;
        self.require_operator(caller, env, "dry-run")?;
        domain::authz::may_try_unapproved(
            &caller.name,
            &super::approvals::authors_of(&migration)?,
            env.name.as_str(),
            env.authors_act_alone(),
            "dry-run",
        )?;
        if !matches!(
            deployment.state,
            DeploymentState::AwaitingApproval
                | DeploymentState::Approved
                | DeploymentState::Queued
                | DeploymentState::Failed
        ) {
            return Err(ServiceError::Conflict(format!(
                "deployment {deployment_id} is {}; a dry run tries a migration that has not run (awaiting_approval, approved, queued or failed)",
                deployment.state
            )));
        }
        let dialect = target::dialect_of(env.url.expose());
        let statements = check_script("up_sql", &migration.up_sql, dialect)?;
        let mut session = self
            .open_target(env, &format!("dry-run:{}", caller.name), "dry run")
            .await?;
        let namespace = database_name(env.url.expose());
        let script = target::Script {
            migration_id: &migration.id,
            checksum: &migration.checksum,
            applied_by: caller.name.as_str(),
            environment: env.name.as_str(),
            namespace: &namespace,
            statements: &statements,
            observer: None,
            lock_wait: None,
        };
        let result = session.dry_run(&script).await;
        session.close().await;
        let report = result.map_err(|e| super::drift::target_unavailable(env, "dry run", e))?;
        let detail = serde_json::json!({
            "duration_ms": report.duration_ms,
            "error": report.error,
        });
        let outcome = report.outcome.clone();
        self.keep_check(
            CheckKind::DryRun,
            caller,
            &deployment,
            &migration,
            &outcome,
            report,
            "dry_run",
            detail,
        )
        .await
    }
}

/// The database's name in a target URL (for traces).
pub fn database_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default().to_owned()
}
