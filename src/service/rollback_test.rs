//! Rollback tests (issue 9; the legacy framework's test-rollback.sh): up, down and up again on
//! a scratch copy of an environment's schema, the schemas compared. The result is kept with
//! the deployment and shown to approvers; environments with `require_rollback_test` take no
//! approval without a passing test of the current scripts.

use super::*;
use crate::store::CheckKind;
use crate::target::{self, TargetSettings};

impl Service {
    /// Runs the rollback test of a deployment's migration against a scratch copy of its
    /// environment's schema. Operators, the migration's authors, and holders of a role its
    /// approval needs.
    pub async fn test_rollback(
        &self,
        caller: &Caller,
        deployment_id: &str,
    ) -> Result<RollbackTestView> {
        let (deployment, migration) = {
            let mut conn = self.store.conn().await?;
            self.read_deployment(&mut conn, deployment_id).await?
        };
        let env = self.environment(&deployment.environment)?;
        let risk: Risk = deployment.effective_risk.parse()?;
        let policy = self.config.matrix.policy(&env.name, risk);
        let allowed = self
            .require_operator(caller, env, "test a rollback")
            .is_ok()
            || migration.authors.iter().any(|a| a == caller.name.as_str())
            || caller
                .roles
                .iter()
                .any(|r| policy.required_roles.contains(r));
        domain::authz::may_try_unapproved(
            &caller.name,
            &super::approvals::authors_of(&migration)?,
            env.name.as_str(),
            env.authors_act_alone(),
            "test the rollback of",
        )?;
        if !allowed {
            return Err(ServiceError::Forbidden(format!(
                "{} may not test the rollback of {deployment_id}: operators, its authors and its approvers may",
                caller.name
            )));
        }
        let Some(down_sql) = migration.down_sql.as_deref() else {
            return Err(ServiceError::Conflict(format!(
                "migration {} has no down_sql (rollback script): there is nothing to test",
                migration.id
            )));
        };
        let dialect = target::dialect_of(env.url.expose());
        let up_statements = check_script("up_sql", &migration.up_sql, dialect)?;
        let down_statements = check_script("down_sql", down_sql, dialect)?;
        let namespace = database_name(env.url.expose());
        let script = |statements| target::Script {
            migration_id: &migration.id,
            checksum: &migration.checksum,
            applied_by: caller.name.as_str(),
            environment: env.name.as_str(),
            namespace: &namespace,
            statements,
            observer: None,
            lock_wait: None,
        };
        let report = target::rollback_test::run(
            &TargetSettings::for_environment(env),
            &self.config.settings.backup,
            &script(&up_statements),
            &script(&down_statements),
        )
        .await
        .map_err(|e| super::drift::target_unavailable(env, "rollback test", e))?;
        let detail = serde_json::json!({"findings": report.findings});
        let outcome = report.outcome.clone();
        self.keep_check(
            CheckKind::RollbackTest,
            caller,
            &deployment,
            &migration,
            &outcome,
            report,
            "rollback_tested",
            detail,
        )
        .await
    }

    /// Where the environment requires it: a passing rollback test of the current scripts,
    /// before an approval is taken.
    pub(super) async fn require_rollback_test(
        &self,
        conn: &mut sqlx::AnyConnection,
        env: &EnvironmentConfig,
        deployment: &DeploymentRow,
        migration: &MigrationRow,
    ) -> Result<()> {
        if !env.require_rollback_test {
            return Ok(());
        }
        let test = self
            .store
            .checks(
                conn,
                CheckKind::RollbackTest,
                std::slice::from_ref(&deployment.id),
            )
            .await?
            .pop();
        let why = match test {
            Some(t) if t.checksum == migration.checksum && t.outcome == "passed" => return Ok(()),
            Some(t) if t.checksum != migration.checksum => {
                "its last rollback test is of an earlier version of the scripts"
            }
            Some(_) => "its last rollback test failed",
            None => "it has no rollback test",
        };
        Err(ServiceError::Conflict(format!(
            "{} requires a passing rollback test before approval and {why}: run `sluice test-rollback {} {}`",
            env.name, migration.id, env.name
        )))
    }
}
