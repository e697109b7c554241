//! Caller-driven transitions of a deployment (reject, cancel, retry, rollback) and expiry.

use super::*;

impl Service {
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
        // A rejected deployment never reaches its environment, so neither does the migration
        // reach the later ones: it is withdrawn from them as a cancel would (else they wait
        // for ever for an environment that will never apply it).
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (mut deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        let allowed = self.policy_for(&deployment)?.allowed_roles();
        domain::authz::may_reject(
            &caller.name,
            &caller.roles,
            &allowed,
            &deployment.environment,
        )?;
        self.commit_change(
            &mut tx,
            &mut deployment,
            at,
            Change {
                event: DeploymentEvent::Reject,
                actor: caller.name.as_str(),
                action: "rejected",
                detail: serde_json::json!({"comment": comment}),
                events: Vec::new(),
            },
        )
        .await?;
        let env = self.environment(&deployment.environment)?;
        let cause = format!(
            "rejected in {} by {}: {}",
            env.name,
            caller.name,
            comment.trim()
        );
        let mut changed = vec![deployment];
        changed.extend(
            self.withdraw_from_later(
                &mut tx,
                env,
                &migration.id,
                Some((
                    caller,
                    &super::approvals::authors_of(&migration)?,
                    "rejecting",
                )),
                &cause,
                at,
            )
            .await?,
        );
        tx.commit().await?;
        self.publish(&changed);
        for d in &changed {
            self.signals.wake(&d.environment);
        }
        self.deployment(deployment_id).await
    }

    /// Cancels a deployment and withdraws its migration from every later environment of the
    /// promotion order (those deployments end as cancelled, with the same reason), so that
    /// nothing waits for ever on an environment the migration will never reach, and later
    /// migrations pass it. The earlier environments keep what they applied.
    pub async fn cancel(
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
        let authors = super::approvals::authors_of(&migration)?;
        domain::authz::may_change_own_or_operate(
            &caller.name,
            &caller.roles,
            &authors,
            env.name.as_str(),
            env.auto_approve,
            "cancel",
        )?;
        self.commit_change(
            &mut tx,
            &mut deployment,
            at,
            Change {
                event: DeploymentEvent::Cancel,
                actor: caller.name.as_str(),
                action: "cancelled",
                detail: serde_json::json!({"reason": reason}),
                events: Vec::new(),
            },
        )
        .await?;
        let mut changed = vec![deployment];
        let cause = format!(
            "cancelled in {} by {}{}",
            env.name,
            caller.name,
            if reason.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", reason.trim())
            }
        );
        changed.extend(
            self.withdraw_from_later(
                &mut tx,
                env,
                &migration.id,
                Some((caller, &authors, "cancelling")),
                &cause,
                at,
            )
            .await?,
        );
        tx.commit().await?;
        self.publish(&changed);
        for d in &changed {
            self.signals.wake(&d.environment);
        }
        self.deployment(deployment_id).await
    }

    /// Withdraws a migration from every environment after `env` in the promotion order: its
    /// deployments there that can still be cancelled end as cancelled, audited with `cause`
    /// (e.g. "cancelled in development by dev: reason"). Called when the migration can no
    /// longer be applied in `env` (cancelled, rejected or expired there), so that nothing
    /// waits for ever on an environment the migration will never reach, and later
    /// migrations pass it. The earlier environments keep what they applied.
    pub(super) async fn withdraw_from_later(
        &self,
        tx: &mut Tx,
        env: &EnvironmentConfig,
        migration_id: &str,
        by: Option<(&Caller, &[UserName], &str)>,
        cause: &str,
        at: i64,
    ) -> Result<Vec<DeploymentRow>> {
        let actor = by.map_or("sluice", |(caller, _, _)| caller.name.as_str());
        let later: Vec<&EnvironmentConfig> = self
            .config
            .environments
            .iter()
            .skip_while(|e| e.name != env.name)
            .skip(1)
            .collect();
        let mut changed = Vec::new();
        if later.is_empty() {
            return Ok(changed);
        }
        let reason = format!("withdrawn: {cause}");
        for mut other in self
            .store
            .deployments_of_migration(tx, migration_id)
            .await?
        {
            let Some(later_env) = later.iter().find(|e| e.name.as_str() == other.environment)
            else {
                continue;
            };
            if other.state.on(DeploymentEvent::Cancel).is_err() {
                continue;
            }
            // Withdrawing is cancelling there too: a developer who may cancel (or reject)
            // anything in development (it approves itself) may not reach production through
            // it. An expiry is the daemon's own (no caller).
            if let Some((caller, authors, doing)) = by {
                domain::authz::may_change_own_or_operate(
                    &caller.name,
                    &caller.roles,
                    authors,
                    later_env.name.as_str(),
                    later_env.auto_approve,
                    "cancel",
                )
                .map_err(|e| {
                    ServiceError::Forbidden(format!(
                        "{doing} {migration_id} in {} withdraws it from {} too, where {e}",
                        env.name, later_env.name
                    ))
                })?;
            }
            self.commit_change(
                tx,
                &mut other,
                at,
                Change {
                    event: DeploymentEvent::Cancel,
                    actor,
                    action: "cancelled",
                    detail: serde_json::json!({
                        "reason": reason,
                        "cancelled_in": env.name.as_str(),
                    }),
                    events: Vec::new(),
                },
            )
            .await?;
            changed.push(other);
        }
        Ok(changed)
    }

    /// Retries a failed deployment (back to the queue), or one rolled back (back to approval,
    /// as the matrix demands for its environment: the approvals before were spent on the
    /// version that was undone; where the environment approves itself it is re-approved and,
    /// with auto_apply, applied again).
    pub async fn retry(&self, caller: &Caller, deployment_id: &str) -> Result<DeploymentView> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (mut deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        let env = self.environment(&deployment.environment)?;
        self.require_operator(caller, env, "retry")?;
        let wake = match deployment.state {
            DeploymentState::RolledBack => {
                self.reopen_for_approval(
                    &mut tx,
                    &mut deployment,
                    env,
                    at,
                    caller.name.as_str(),
                    DeploymentEvent::Retry,
                    "retried after its rollback: approval starts again",
                    &migration.checksum,
                )
                .await?
            }
            DeploymentState::Failed
                if deployment.last_action == Some(domain::LastAction::Rollback) =>
            {
                return Err(ServiceError::Conflict(format!(
                    "deployment {deployment_id} failed while rolling back; request the rollback again (sluice rollback {} {}) or cancel it",
                    deployment.environment, deployment.migration_id
                )));
            }
            _ => {
                self.commit_change(
                    &mut tx,
                    &mut deployment,
                    at,
                    Change {
                        event: DeploymentEvent::Retry,
                        actor: caller.name.as_str(),
                        action: "retried",
                        detail: serde_json::json!({}),
                        events: Vec::new(),
                    },
                )
                .await?;
                true
            }
        };
        tx.commit().await?;
        self.publish([&deployment]);
        if wake {
            self.signals.wake(&deployment.environment);
        }
        self.deployment(deployment_id).await
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
        // A later deployment of this environment that failed with part of it applied (its
        // rollback failed, or it stopped part-way) halts the queue, and its objects sit on
        // top of this one: rolling this one back first could undo what that one still needs
        // and leave its objects behind. Refused, naming it, so that what the caller is told
        // is what runs (rollbacks otherwise run newest first).
        let failed = self
            .store
            .deployments_in_states(&mut tx, &deployment.environment, &[DeploymentState::Failed])
            .await?;
        if let Some(other) = failed.iter().find(|d| {
            d.id != deployment.id
                && d.seq > deployment.seq
                && (d.last_action == Some(domain::LastAction::Rollback)
                    || partly_applied(d).is_some())
        }) {
            let what = if other.last_action == Some(domain::LastAction::Rollback) {
                "its rollback failed"
            } else {
                "it stopped part-way"
            };
            return Err(ServiceError::Conflict(format!(
                "the queue of {} is halted by {}, which comes later and failed ({what}); deal with it first (sluice rollback {} {} again, or cancel it), then roll {} back",
                deployment.environment,
                other.migration_id,
                other.environment,
                other.migration_id,
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
        let mut withdrawn_later = Vec::new();
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
                Ok(()) => {
                    // Never applied here, so never in the later environments either.
                    let env = self.environment(&d.environment)?;
                    let cause = format!(
                        "expired in {} (its approval deadline {} passed)",
                        env.name,
                        deadline.as_deref().unwrap_or("-")
                    );
                    let withdrawn = self
                        .withdraw_from_later(&mut tx, env, &d.migration_id, None, &cause, at)
                        .await?;
                    expired.push(d);
                    withdrawn_later.extend(withdrawn);
                }
                // Approved, cancelled or expired by another replica since it was read: the
                // other writer's outcome stands (the conditional write changed nothing).
                Err(ServiceError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        tx.commit().await?;
        self.publish(&expired);
        self.publish(&withdrawn_later);
        for d in &withdrawn_later {
            self.signals.wake(&d.environment);
        }
        Ok(expired.len())
    }
}

/// How many statements of a deployment that ran statement by statement and stopped part-way
/// are applied (failed or cancelled since), as the worker recorded with its error
/// (`DeploymentRow::applied_statements`); None when none is.
pub(super) fn partly_applied(d: &DeploymentRow) -> Option<i64> {
    if d.transactional != Some(false)
        || !matches!(
            d.state,
            DeploymentState::Failed | DeploymentState::Cancelled
        )
    {
        return None;
    }
    d.applied_statements.filter(|&done| done > 0)
}
