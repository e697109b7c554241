//! Baseline (issue 10): adopting Sluice on a database where migrations already ran. A lead
//! records every migration up to a given one as applied to an environment without running
//! it: a history row on the target (the same as a real apply leaves) and the deployment
//! applied, audited. Where golang-migrate's, dbmate's or Flyway's own history table is on the
//! target, every imported version baselined must be recorded there as applied.

use super::*;
use crate::target::{Script, ToolHistory};

/// What a baseline recorded.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct BaselineResult {
    pub environment: String,
    /// The migrations now recorded as applied, in order.
    pub baselined: Vec<String>,
    /// The other tool's table that vouched for them, if one was there.
    pub verified_by: Option<String>,
}

impl Service {
    pub async fn baseline(
        &self,
        caller: &Caller,
        environment: &str,
        up_to: &str,
    ) -> Result<BaselineResult> {
        let env = self.environment(environment)?;
        domain::authz::may_lead(&caller.name, &caller.roles, "baseline an environment")?;
        domain::text::field("up_to", up_to, domain::text::NAME)?;
        let open = {
            let mut conn = self.store.conn().await?;
            self.store
                .deployments_in_states(
                    &mut conn,
                    env.name.as_str(),
                    &[
                        DeploymentState::AwaitingApproval,
                        DeploymentState::Approved,
                        DeploymentState::Queued,
                    ],
                )
                .await?
        };
        // The cutoff: the migration with that id, or the imported one with that version.
        let matches = |id: &str| {
            id == up_to
                || id
                    .parse::<MigrationId>()
                    .ok()
                    .and_then(|m| m.imported_version().map(domain::version_parts))
                    .is_some_and(|v| v == domain::version_parts(up_to))
        };
        let Some(cutoff) = open
            .iter()
            .find(|d| matches(&d.migration_id))
            .map(|d| d.seq)
        else {
            return Err(ServiceError::NotFound(format!(
                "no migration \"{up_to}\" (id, or version of an imported one) waits in {}; baseline takes migrations not yet applied there",
                env.name
            )));
        };
        let mut chosen: Vec<DeploymentRow> = open.into_iter().filter(|d| d.seq <= cutoff).collect();
        chosen.sort_by_key(|d| d.seq);
        let mut session = self
            .open_target(env, &format!("baseline:{}", caller.name), "baseline")
            .await?;
        let result = self
            .baseline_on(caller, env, &mut session, chosen, up_to)
            .await;
        session.close().await;
        result
    }

    async fn baseline_on(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
        session: &mut crate::target::TargetSession,
        chosen: Vec<DeploymentRow>,
        up_to: &str,
    ) -> Result<BaselineResult> {
        let unavailable = |e| super::drift::target_unavailable(env, "baseline", e);
        let tool = session.tool_history().await.map_err(unavailable)?;
        let mut migrations = Vec::with_capacity(chosen.len());
        {
            let mut conn = self.store.conn().await?;
            for d in &chosen {
                let m = self
                    .store
                    .migration(&mut conn, &d.migration_id)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::NotFound(format!("no migration \"{}\"", d.migration_id))
                    })?;
                migrations.push(m);
            }
        }
        if let Some(tool) = &tool {
            let missing: Vec<&str> = migrations
                .iter()
                .filter_map(|m| {
                    let id: MigrationId = m.id.parse().ok()?;
                    let version = id.imported_version()?.to_owned();
                    (!tool.has(&version)).then_some(m.id.as_str())
                })
                .collect();
            if !missing.is_empty() {
                return Err(ServiceError::Conflict(format!(
                    "{} on {} does not record as applied: {}; nothing was baselined",
                    tool.table(),
                    env.name,
                    missing.join(", ")
                )));
            }
            if let ToolHistory::GolangMigrate {
                dirty: true,
                version,
            } = tool
            {
                tracing::warn!(environment = %env.name, %version, "golang-migrate's history is dirty at this version");
            }
        }
        let applied_by = format!("baseline by {}", caller.name);
        let history = session.history().await.map_err(unavailable)?;
        for m in &migrations {
            if history
                .get(&m.id)
                .is_some_and(|h| h.success && h.checksum == m.checksum)
            {
                continue;
            }
            // An empty script records the migration as applied, as an apply would.
            let script = Script {
                migration_id: &m.id,
                checksum: &m.checksum,
                applied_by: &applied_by,
                environment: env.name.as_str(),
                namespace: "",
                statements: &[],
                observer: None,
                lock_wait: None,
            };
            let report = session.apply(&script).await.map_err(unavailable)?;
            if let Some(error) = report.error {
                return Err(ServiceError::Unavailable(format!(
                    "baseline of {} on {}: {error}",
                    m.id, env.name
                )));
            }
        }
        let at = self.now();
        let verified_by = tool.as_ref().map(|t| t.table().to_owned());
        let mut tx = self.store.begin().await?;
        let mut changed = Vec::new();
        for mut d in chosen {
            d.finished_at = Some(at);
            d.transactional = Some(true);
            d.execution_ms = Some(0);
            self.commit_change(
                &mut tx,
                &mut d,
                at,
                Change {
                    event: DeploymentEvent::Baseline,
                    actor: caller.name.as_str(),
                    action: "baselined",
                    detail: serde_json::json!({"up_to": up_to, "verified_by": verified_by}),
                    events: Vec::new(),
                },
            )
            .await?;
            changed.push(d);
        }
        tx.commit().await?;
        self.publish(&changed);
        self.signals.wake(env.name.as_str());
        Ok(BaselineResult {
            environment: env.name.to_string(),
            baselined: changed.into_iter().map(|d| d.migration_id).collect(),
            verified_by,
        })
    }
}
