//! Submitting and amending migrations: reading and analysing their scripts.

use super::*;

/// A submission, as the REST API receives it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The id the migration's file carries (`sluice new` writes it): kept as the migration's
    /// id. Submitting it again with the same scripts changes nothing; with other scripts it is
    /// an amendment. Absent: the server makes one.
    #[serde(default)]
    pub id: Option<String>,
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
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendRequest {
    pub up_sql: String,
    #[serde(default)]
    pub down_sql: Option<String>,
    #[serde(default)]
    pub reason: String,
}

pub(super) fn validate_duration(value: &str) -> Result<()> {
    if domain::freeze::parse_duration(value).is_some() {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "estimated_duration: \"{value}\" is not a duration like 30s, 5m, 2h or 1h30m"
        )))
    }
}

/// A submission checked and its scripts read, ready to be written.
pub(super) struct Prepared {
    pub(super) request: SubmitRequest,
    pub(super) given_id: Option<MigrationId>,
    pub(super) scripts: ReadScripts,
}

/// What writing a submission made.
pub(super) struct Inserted {
    pub(super) id: String,
    pub(super) migration: MigrationRow,
    pub(super) created: Vec<DeploymentRow>,
    /// Environments whose worker has something queued now.
    pub(super) wake: Vec<String>,
}

/// What Sluice knows of a migration's scripts once it has read them.
pub(super) struct ReadScripts {
    findings: Vec<lint::Finding>,
    effective_risk: Risk,
    checksum: String,
}

/// Checks both scripts and analyses the up script against the declared risk.
pub(super) fn read_scripts(
    up_sql: &str,
    down_sql: Option<&str>,
    declared: Risk,
    dialect: lint::Dialect,
) -> Result<ReadScripts> {
    let statements = check_script("up_sql", up_sql, dialect)?;
    let down_statements = match down_sql {
        Some(down) => Some(check_script("down_sql", down, dialect)?),
        None => None,
    };
    let findings = lint::analyse_migration(
        up_sql,
        &statements,
        down_sql.zip(down_statements.as_deref()),
        dialect,
    );
    Ok(ReadScripts {
        effective_risk: lint::effective_risk(declared, &findings),
        findings,
        checksum: domain::checksum(up_sql, down_sql),
    })
}

/// When a deployment created (or reset) at `at` expires if still awaiting approval.
pub(super) fn approval_deadline(policy: &domain::ApprovalPolicy, at: i64) -> Option<i64> {
    policy
        .timeout_hours
        .map(|hours| at + i64::from(hours) * 3_600_000)
}

impl Service {
    pub async fn submit(&self, caller: &Caller, request: SubmitRequest) -> Result<MigrationView> {
        Ok(self.submit_or_resubmit(caller, request).await?.0)
    }

    /// Submits a migration; with the id of one that exists, resubmits it: the same scripts
    /// change nothing, other scripts amend it (with the amendment's rules), other metadata is
    /// refused. Whether a migration was created.
    pub async fn submit_or_resubmit(
        &self,
        caller: &Caller,
        request: SubmitRequest,
    ) -> Result<(MigrationView, bool)> {
        let prepared = self.prepare(request)?;
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if let Some(id) = &prepared.given_id
            && let Some(existing) = self.store.migration(&mut tx, id.as_str()).await?
        {
            drop(tx);
            let checksum = prepared.scripts.checksum.clone();
            return self
                .resubmit(caller, existing, prepared.request, &checksum)
                .await;
        }
        // Kept for a second submission of the same new id racing this one.
        let retry = prepared.given_id.as_ref().map(|id| {
            (
                id.to_string(),
                prepared.request.clone(),
                prepared.scripts.checksum.clone(),
            )
        });
        let inserted = match self.insert_prepared(&mut tx, caller, prepared, now).await {
            Ok(inserted) => inserted,
            Err(e) => {
                drop(tx);
                if let Some((id, request, checksum)) = retry {
                    let mut conn = self.store.conn().await?;
                    if let Some(existing) = self.store.migration(&mut conn, &id).await? {
                        drop(conn);
                        return self.resubmit(caller, existing, request, &checksum).await;
                    }
                }
                return Err(e);
            }
        };
        tx.commit().await?;
        self.publish(&inserted.created);
        for env in &inserted.wake {
            self.signals.wake(env);
        }
        Ok((self.migration(&inserted.id).await?, true))
    }

    /// Checks a submission's fields and reads its scripts (no I/O).
    pub(super) fn prepare(&self, request: SubmitRequest) -> Result<Prepared> {
        use domain::text;
        let given_id = match &request.id {
            Some(id) => Some(
                id.parse::<MigrationId>()
                    .map_err(|e: DomainError| ServiceError::Invalid(format!("id: {e}")))?,
            ),
            None => None,
        };
        text::line("description", &request.description, text::DESCRIPTION)?;
        text::line("ticket", &request.ticket, text::TICKET)?;
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
        let scripts = read_scripts(
            &request.up_sql,
            request.down_sql.as_deref(),
            request.risk,
            self.dialect(),
        )?;
        Ok(Prepared {
            request,
            given_id,
            scripts,
        })
    }

    /// `prepare` of many submissions, spread over the machine's cores; in the given order.
    #[allow(clippy::type_complexity)]
    async fn prepare_all(
        &self,
        todo: Vec<(usize, SubmitRequest)>,
    ) -> Result<Vec<(usize, Option<String>, Result<Prepared>)>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let share = todo.len().div_ceil(cores).max(16);
        let mut shares = Vec::new();
        let mut rest = todo.into_iter();
        loop {
            let part: Vec<_> = rest.by_ref().take(share).collect();
            if part.is_empty() {
                break;
            }
            let service = self.clone();
            shares.push(tokio::task::spawn_blocking(move || {
                part.into_iter()
                    .map(|(index, request)| {
                        let id = request.id.clone();
                        (index, id, service.prepare(request))
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut out = Vec::new();
        for share in shares {
            out.extend(
                share
                    .await
                    .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?,
            );
        }
        Ok(out)
    }

    /// Writes a prepared submission in `tx`: the migration, a deployment per environment
    /// (auto-approved where the environment approves itself), the audit record and its events.
    pub(super) async fn insert_prepared(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        prepared: Prepared,
        now: DateTime<Utc>,
    ) -> Result<Inserted> {
        let at = millis(now);
        let Prepared {
            request,
            given_id,
            scripts:
                ReadScripts {
                    findings,
                    effective_risk: effective,
                    checksum,
                },
        } = prepared;
        let mut dependencies = Vec::new();
        for (i, dependency) in request.depends_on.iter().enumerate() {
            let id: MigrationId = dependency
                .parse()
                .map_err(|e: DomainError| ServiceError::Invalid(format!("depends_on[{i}]: {e}")))?;
            if self.store.migration(tx, id.as_str()).await?.is_none() {
                return Err(ServiceError::Invalid(format!(
                    "depends_on[{i}]: no migration \"{id}\" exists"
                )));
            }
            dependencies.push(id.to_string());
        }
        let seq = self.store.next_migration_seq(tx).await?;
        let id = match given_id {
            Some(id) => id,
            None => MigrationId::compose(
                seq,
                &now.format("%Y%m%d_%H%M%S").to_string(),
                request.description.trim(),
            ),
        };
        let migration = MigrationRow {
            id: id.to_string(),
            seq,
            kind: request.kind.as_str().into(),
            description: request.description.trim().into(),
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
        self.store.insert_migration(tx, &migration).await?;
        let mut created = Vec::new();
        for env in &self.config.environments {
            let policy = self.config.matrix.policy(&env.name, effective);
            created.push(DeploymentRow {
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
                trace_context: crate::telemetry::traces::current_traceparent(),
                undo_sql: None,
                applied_statements: None,
            });
        }
        // One "submitted" for the migration, then an approval request per environment that
        // waits for people; they ride on the submission's audit record.
        let mut events = Vec::new();
        if self.notifications_on() {
            use crate::domain::notice::NoticeKind;
            if let Some(first) = created.first() {
                let mut draft =
                    notifications::Draft::new(NoticeKind::Submitted, caller.name.as_str());
                draft.whole_migration = true;
                draft.migration = Some(&migration);
                draft.approvals = Some(&[]);
                events.extend(self.notify_deployment(tx, first, at, draft).await?);
            }
            for (d, env) in created.iter().zip(&self.config.environments) {
                if !env.auto_approve {
                    let mut draft = notifications::Draft::new(
                        NoticeKind::ApprovalRequested,
                        caller.name.as_str(),
                    );
                    draft.migration = Some(&migration);
                    draft.approvals = Some(&[]);
                    events.extend(self.notify_deployment(tx, d, at, draft).await?);
                }
            }
        }
        let entry = audit(
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
        );
        self.store
            .insert_audit(tx, &notifications::carrying(entry, &events)?)
            .await?;
        let mut wake = Vec::new();
        for (deployment, env) in created.iter_mut().zip(&self.config.environments) {
            self.store.insert_deployment(tx, deployment).await?;
            if env.auto_approve {
                self.advance_approved(tx, deployment, env, at, "sluice", "auto_approved")
                    .await?;
                if deployment.state == DeploymentState::Queued {
                    wake.push(env.name.to_string());
                }
            }
        }
        Ok(Inserted {
            id: id.to_string(),
            migration,
            created,
            wake,
        })
    }

    /// A submission of an id that exists: nothing changes when the scripts are the same; other
    /// scripts are an amendment (its rules apply); other metadata is refused, naming it.
    async fn resubmit(
        &self,
        caller: &Caller,
        existing: MigrationRow,
        request: SubmitRequest,
        checksum: &str,
    ) -> Result<(MigrationView, bool)> {
        if let Some(refusal) = metadata_conflict(&existing, &request) {
            return Err(ServiceError::Conflict(refusal));
        }
        if existing.checksum == checksum {
            return Ok((self.migration(&existing.id).await?, false));
        }
        let view = self
            .amend(
                caller,
                &existing.id,
                AmendRequest {
                    up_sql: request.up_sql,
                    down_sql: request.down_sql,
                    reason: "submitted again with other scripts".into(),
                },
            )
            .await?;
        Ok((view, false))
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
            &super::approvals::authors_of(&migration)?,
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
        // Amending is allowed while no environment past the first of the promotion order has
        // applied the migration; there, an applied old version is rolled back by its own down
        // script before the new one is applied.
        let first = self.config.environments.first().map(|e| e.name.as_str());
        for d in &deployments {
            let partly = d.state == DeploymentState::Failed && d.transactional == Some(false);
            let moving = matches!(
                d.state,
                DeploymentState::Running | DeploymentState::RollingBack
            );
            if moving {
                return Err(ServiceError::Conflict(format!(
                    "{} is {} in {} now; amend it once that has finished",
                    migration.id, d.state, d.environment
                )));
            }
            let touched = d.state == DeploymentState::Applied || partly;
            if touched && Some(d.environment.as_str()) != first {
                return Err(ServiceError::Conflict(format!(
                    "{} is {} in {}: a migration that has reached an environment past {} cannot be changed; submit a new one",
                    migration.id,
                    d.state,
                    d.environment,
                    first.unwrap_or("the first")
                )));
            }
            if partly {
                return Err(ServiceError::Conflict(format!(
                    "{} failed part-way in {} (statements of it are applied); roll it back there first (sluice rollback {} {}), then amend it",
                    migration.id, d.environment, d.environment, migration.id
                )));
            }
            if d.state == DeploymentState::Applied {
                // The amendment rolls the applied version back there: where the environment
                // takes approvals, that is an operator's decision, not an author's alone.
                let env = self.environment(&d.environment)?;
                if !env.auto_approve {
                    self.require_operator(caller, env, "roll back (to amend)")?;
                }
            }
            if d.state == DeploymentState::Applied
                && migration
                    .down_sql
                    .as_deref()
                    .is_none_or(|sql| sql.trim().is_empty())
            {
                return Err(ServiceError::Conflict(format!(
                    "{} is applied in {} and the version applied there has no down_sql: nothing can undo it to apply the amended one; submit a new migration instead",
                    migration.id, d.environment
                )));
            }
        }
        let old_down_sql = migration.down_sql.clone();
        // The version replaced is kept: approvers are shown what changed since they read it.
        self.store
            .keep_migration_version(&mut tx, &migration, at, caller.name.as_str())
            .await?;
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
            .update_migration_scripts(&mut tx, &migration, &old_checksum)
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
            if d.state.is_terminal() {
                // Ended (rejected, expired, cancelled): it stays so, but the approvals it
                // holds were given to the old scripts.
                self.void_ended_approvals(
                    &mut tx,
                    &d,
                    at,
                    caller.name.as_str(),
                    "the migration's scripts changed",
                )
                .await?;
                continue;
            }
            if d.state.on(DeploymentEvent::Amend).is_err() {
                continue; // running or rolling back: refused above
            }
            let env = self.environment(&d.environment)?;
            d.effective_risk = effective.as_str().into();
            let reason = "the migration's scripts changed";
            if d.state == DeploymentState::Applied {
                // The version applied here is undone by its own down script; once that has
                // succeeded the deployment goes back to approval for the amended version.
                d.undo_sql = old_down_sql.clone();
                self.commit_change(
                    &mut tx,
                    &mut d,
                    at,
                    Change {
                        event: DeploymentEvent::Amend,
                        actor: caller.name.as_str(),
                        action: "rollback_requested",
                        detail: serde_json::json!({
                            "reason": format!("{reason}: the applied version is rolled back, then the amended one applied"),
                            "checksum": checksum,
                        }),
                        events: Vec::new(),
                    },
                )
                .await?;
                wake.push(d.environment.clone());
            } else if self
                .reopen_for_approval(
                    &mut tx,
                    &mut d,
                    env,
                    at,
                    caller.name.as_str(),
                    DeploymentEvent::Amend,
                    reason,
                    &checksum,
                )
                .await?
            {
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
}

impl Service {
    /// Sends a deployment back to awaiting approval (`event`: an amendment, a drift, a retry
    /// after a rollback), audited with `reason`: the transition voids its approvals and its
    /// emergency standing and sets a new deadline (the one place that does, for every cause).
    /// Re-approves it at once where the environment approves itself. Whether it was
    /// re-approved (its worker should be woken).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reopen_for_approval(
        &self,
        tx: &mut Tx,
        d: &mut DeploymentRow,
        env: &EnvironmentConfig,
        at: i64,
        actor: &str,
        event: DeploymentEvent,
        reason: &str,
        checksum: &str,
    ) -> Result<bool> {
        self.commit_change(
            tx,
            d,
            at,
            Change {
                event,
                actor,
                action: "approvals_voided",
                detail: serde_json::json!({
                    "reason": reason,
                    "checksum": checksum,
                }),
                events: Vec::new(),
            },
        )
        .await?;
        if d.state == DeploymentState::AwaitingApproval && env.auto_approve {
            self.advance_approved(tx, d, env, at, "sluice", "auto_approved")
                .await?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Service {
    /// The deployments of an environment whose old version an amendment had rolled back
    /// (rolled back, with the down script it kept): each goes back to approval for the
    /// amended version. The worker calls it after a round that rolled something back, and a
    /// new worker on its first round (a daemon killed in between left them rolled back).
    pub async fn reopen_amended(&self, environment: &str) -> Result<usize> {
        let env = self.environment(environment)?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let rolled_back = self
            .store
            .deployments_in_states(&mut tx, env.name.as_str(), &[DeploymentState::RolledBack])
            .await?;
        let mut changed = Vec::new();
        let mut wake = false;
        for mut d in rolled_back.into_iter().filter(|d| d.undo_sql.is_some()) {
            let Some(migration) = self.store.migration(&mut tx, &d.migration_id).await? else {
                continue;
            };
            wake |= self
                .reopen_for_approval(
                    &mut tx,
                    &mut d,
                    env,
                    at,
                    "sluice",
                    DeploymentEvent::Amend,
                    "the version applied before the amendment is rolled back; the amended one is applied next",
                    &migration.checksum,
                )
                .await?;
            changed.push(d);
        }
        tx.commit().await?;
        self.publish(&changed);
        if wake {
            self.signals.wake(env.name.as_str());
        }
        Ok(changed.len())
    }
}

/// The most migrations one batch takes.
pub const BATCH_LIMIT: usize = 5_000;

/// Why one migration of a batch was refused.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct BatchItemError {
    /// Its place in the batch, from 0.
    pub index: usize,
    pub id: Option<String>,
    pub message: String,
}

/// Why a resubmission with this metadata is refused: only a migration's scripts may change
/// after it is submitted.
fn metadata_conflict(existing: &MigrationRow, request: &SubmitRequest) -> Option<String> {
    let fields = [
        ("kind", existing.kind.as_str(), request.kind.as_str()),
        (
            "description",
            existing.description.as_str(),
            request.description.trim(),
        ),
        (
            "risk",
            existing.declared_risk.as_str(),
            request.risk.as_str(),
        ),
        ("ticket", existing.ticket.as_str(), request.ticket.trim()),
        (
            "estimated_duration",
            existing.estimated_duration.as_str(),
            request.estimated_duration.trim(),
        ),
    ];
    if let Some((field, was, now)) = fields.iter().find(|(_, was, now)| was != now) {
        return Some(format!(
            "migration {} exists with {field} \"{was}\", not \"{now}\"; a resubmission may change only its scripts (submit it under another id for a new migration)",
            existing.id
        ));
    }
    if existing.depends_on != request.depends_on {
        return Some(format!(
            "migration {} exists with other depends_on; a resubmission may change only its scripts",
            existing.id
        ));
    }
    None
}

/// What a batch submission made.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct BatchResult {
    /// The migrations created, in the batch's order.
    pub created: Vec<MigrationView>,
    /// Ids that exist already with the same scripts: nothing changed.
    pub unchanged: Vec<String>,
}

impl Service {
    /// Submits many migrations in one transaction: all, or none with every item's error.
    /// An item may name a migration of the batch before it in `depends_on`. An id that exists
    /// with the same scripts is left unchanged; with other scripts it is an item error (amend
    /// it on its own).
    pub async fn submit_batch(
        &self,
        caller: &Caller,
        requests: Vec<SubmitRequest>,
    ) -> Result<std::result::Result<BatchResult, Vec<BatchItemError>>> {
        if requests.is_empty() {
            return Err(ServiceError::Invalid(
                "migrations: the batch is empty".into(),
            ));
        }
        if requests.len() > BATCH_LIMIT {
            return Err(ServiceError::Invalid(format!(
                "migrations: {} in one batch; at most {BATCH_LIMIT}",
                requests.len()
            )));
        }
        let mut errors = Vec::new();
        let mut prepared = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            if let Some(id) = &request.id
                && !seen.insert(id.clone())
            {
                errors.push(BatchItemError {
                    index,
                    id: Some(id.clone()),
                    message: format!("id: \"{id}\" appears twice in the batch"),
                });
                continue;
            }
            todo.push((index, request));
        }
        // Reading the scripts (parse, lint, risk) is CPU work: on blocking threads, one share
        // per core, off the runtime's threads.
        for (index, id, result) in self.prepare_all(todo).await? {
            match result {
                Ok(p) => prepared.push((index, p)),
                Err(e) => errors.push(BatchItemError {
                    index,
                    id,
                    message: e.to_string(),
                }),
            }
        }
        // Even with refusals so far, the rest is written in a transaction that is then rolled
        // back, so that every item's error (a dependency that does not exist, an id taken by
        // other scripts) comes back at once.
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let mut inserted = Vec::new();
        let mut unchanged = Vec::new();
        for (index, p) in prepared {
            let id = p.given_id.as_ref().map(|id| id.to_string());
            if let Some(given) = &id
                && let Some(existing) = self.store.migration(&mut tx, given).await?
            {
                if let Some(refusal) = metadata_conflict(&existing, &p.request) {
                    errors.push(BatchItemError {
                        index,
                        id: id.clone(),
                        message: refusal,
                    });
                } else if existing.checksum == p.scripts.checksum {
                    unchanged.push(given.clone());
                } else {
                    errors.push(BatchItemError {
                        index,
                        id: id.clone(),
                        message: format!(
                            "migration {given} exists with other scripts: amend it on its own (PUT /api/v1/migrations/{given}, or submit that file alone)"
                        ),
                    });
                }
                continue;
            }
            match self.insert_prepared(&mut tx, caller, p, now).await {
                Ok(done) => inserted.push(done),
                // A check of the request: the transaction is still good; look at the rest.
                Err(ServiceError::Invalid(message)) => {
                    errors.push(BatchItemError { index, id, message })
                }
                Err(other) => return Err(other),
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.index);
            return Ok(Err(errors));
        }
        tx.commit().await?;
        let mut wake = std::collections::BTreeSet::new();
        for done in &inserted {
            self.publish(&done.created);
            wake.extend(done.wake.iter().cloned());
        }
        for env in wake {
            self.signals.wake(&env);
        }
        // The views from what was written (a new migration has no approval yet): the same as
        // reading each back, without five queries a migration.
        let mut created = Vec::with_capacity(inserted.len());
        for done in inserted {
            let views = done
                .created
                .iter()
                .map(|d| self.deployment_view(d, &done.migration, &[]))
                .collect::<Result<Vec<_>>>()?;
            created.push(MigrationView::new(done.migration, views)?);
        }
        Ok(Ok(BatchResult { created, unchanged }))
    }
}
