//! Caller-driven transitions of a deployment (reject, cancel, retry, rollback) and expiry.

use super::*;

impl Service {
    /// Applies a simple caller-driven transition with its audit entry.
    pub(super) async fn transition(
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
        if event == DeploymentEvent::Retry {
            deployment.error = None;
        }
        self.commit_change(
            &mut tx,
            &mut deployment,
            at,
            Change {
                event,
                actor: caller.name.as_str(),
                action,
                detail,
                events: Vec::new(),
            },
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
        if deployment.state == DeploymentState::Cancelled {
            // Only one that ran statement by statement and stopped part-way holds anything
            // to undo; undoing what someone chose to cancel is a lead's decision.
            if partly_applied(&deployment).is_none() {
                return Err(ServiceError::Conflict(format!(
                    "deployment {deployment_id} is cancelled and nothing of it is applied; there is nothing to roll back"
                )));
            }
            domain::authz::may_lead(
                &caller.name,
                &caller.roles,
                "roll back a cancelled deployment",
            )?;
        }
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
        deployment.error = None;
        self.commit_change(
            &mut tx,
            &mut deployment,
            at,
            Change {
                event: DeploymentEvent::RequestRollback,
                actor: caller.name.as_str(),
                action: "rollback_requested",
                detail: serde_json::json!({"reason": reason}),
                events: Vec::new(),
            },
        )
        .await?;
        tx.commit().await?;
        self.publish([&deployment]);
        self.signals.wake(&deployment.environment);
        self.deployment(deployment_id).await
    }

    /// Expires every deployment whose approval deadline has passed. Returns how many.
    pub async fn expire_overdue(&self) -> Result<usize> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let overdue = self.store.overdue(&mut tx, at).await?;
        let mut expired = Vec::with_capacity(overdue.len());
        for mut d in overdue {
            let deadline = d.deadline_at.map(format_millis);
            let change = Change {
                event: DeploymentEvent::Expire,
                actor: "sluice",
                action: "expired",
                detail: serde_json::json!({"deadline_at": deadline}),
                events: Vec::new(),
            };
            match self.commit_change(&mut tx, &mut d, at, change).await {
                Ok(()) => expired.push(d),
                // Approved, cancelled or expired by another replica since it was read: the
                // other writer's outcome stands (the conditional write changed nothing).
                Err(ServiceError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        tx.commit().await?;
        self.publish(&expired);
        Ok(expired.len())
    }
}

/// How many statements of a deployment that ran statement by statement and stopped part-way
/// are applied (failed or cancelled since), as its error says; None when none is.
pub(super) fn partly_applied(d: &DeploymentRow) -> Option<i64> {
    if d.transactional != Some(false)
        || !matches!(
            d.state,
            DeploymentState::Failed | DeploymentState::Cancelled
        )
    {
        return None;
    }
    let error = d.error.as_deref()?;
    let number = |rest: &str| -> Option<i64> {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    let done = if let Some(rest) = error.strip_prefix("interrupted after statement ") {
        number(rest)?
    } else if let Some(rest) = error.strip_prefix("statement ") {
        number(rest)? - 1
    } else {
        return None;
    };
    (done > 0).then_some(done)
}
