//! Approvals and emergency overrides, and moving a deployment on once its policy is satisfied.

use super::*;

/// Everyone who wrote a version of the migration's scripts.
pub(super) fn authors_of(migration: &MigrationRow) -> Result<Vec<UserName>> {
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

pub(super) fn approval_records(approvals: &[ApprovalRow]) -> Result<Vec<ApprovalRecord>> {
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

impl Service {
    /// Moves a deployment whose policy is satisfied to approved, and on to queued where the
    /// environment applies automatically. Audits both steps.
    pub(super) async fn advance_approved(
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
        deployment.deadline_at = None;
        self.commit_change(
            tx,
            deployment,
            at,
            Change {
                event,
                actor,
                action,
                detail: serde_json::json!({}),
                events: Vec::new(),
            },
        )
        .await?;
        if env.auto_apply {
            self.commit_change(
                tx,
                deployment,
                at,
                Change {
                    event: DeploymentEvent::Release,
                    actor: "sluice",
                    action: "queued",
                    detail: serde_json::json!({"reason": "auto_apply"}),
                    events: Vec::new(),
                },
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn load_for_change(
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
            allow_self_approval: env.authors_act_alone(),
            environment: env.name.as_str(),
            checksum: &migration.checksum,
            reviewed_checksum,
        };
        let progress = check_approval(policy, &records, &request)?;
        self.require_rollback_test(&mut tx, env, &deployment, &migration)
            .await?;
        let approval = ApprovalRow {
            deployment_id: deployment.id.clone(),
            approver: caller.name.to_string(),
            role: role.to_string(),
            comment: comment.to_owned(),
            checksum: migration.checksum.clone(),
            approved_at: at,
        };
        self.store.insert_approval(&mut tx, &approval).await?;
        let mut events = Vec::new();
        if !progress.satisfied && self.notifications_on() {
            let mut draft = notifications::Draft::new(
                crate::domain::notice::NoticeKind::ApprovalRecorded,
                caller.name.as_str(),
            );
            draft.people = vec![migration.author.clone()];
            draft.migration = Some(&migration);
            let mut all = approvals.clone();
            all.push(approval);
            draft.approvals = Some(&all);
            draft.reason = (!comment.trim().is_empty()).then(|| comment.trim().to_owned());
            draft.note = Some(format!("{} approved as {role}", caller.name));
            events.extend(
                self.notify_deployment(&mut tx, &deployment, at, draft)
                    .await?,
            );
        }
        let entry = audit(
            at,
            caller.name.as_str(),
            "approval_recorded",
            Some(&deployment),
            None,
            serde_json::json!({"role": role, "comment": comment, "checksum": migration.checksum}),
        );
        self.store
            .insert_audit(&mut tx, &notifications::carrying(entry, &events)?)
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
        crate::telemetry::approval_recorded(
            &deployment.environment,
            role.as_str(),
            (at - deployment.created_at).max(0) as f64 / 1000.0,
        );
        if progress.satisfied {
            self.publish([&deployment]);
        } else {
            self.events_written();
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
        let mut approvals = self.store.approvals(&mut tx, deployment_id).await?;
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
            let approval = ApprovalRow {
                deployment_id: deployment.id.clone(),
                approver: caller.name.to_string(),
                role: forcer_role.to_string(),
                comment: format!("emergency override: {}", reason.trim()),
                checksum: migration.checksum.clone(),
                approved_at: at,
            };
            self.store.insert_approval(&mut tx, &approval).await?;
            approvals.push(approval);
        }
        // The roles whose approval the override skipped owe a review afterwards (the
        // forcer's own approval fills the role it was given as).
        let skipped = policy
            .progress(&approval_records(&approvals)?, &migration.checksum)
            .missing_roles;
        deployment.emergency_reason = Some(reason.trim().to_owned());
        // The override's notices say where it leaves the deployment (approved, or queued
        // where the environment applies automatically).
        let mut after = deployment.clone();
        after.state = after.state.on(DeploymentEvent::EmergencyOverride)?;
        if env.auto_apply {
            after.state = after.state.on(DeploymentEvent::Release)?;
        }
        after.deadline_at = None;
        let events = self
            .open_reviews(
                &mut tx,
                &after,
                &skipped,
                at,
                caller.name.as_str(),
                reason.trim(),
            )
            .await?;
        let entry = audit(
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
        );
        self.store
            .insert_audit(&mut tx, &notifications::carrying(entry, &events)?)
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
}
