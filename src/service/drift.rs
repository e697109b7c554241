//! Drift detection (issue 9): changes made to a target's schema outside Sluice. The worker
//! keeps a reference snapshot of the schema after every round that ran something; the live
//! schema is compared with it on demand (`GET /environments/{env}/drift`, read only) and by the
//! scheduler every `scheduler.drift_check_seconds`, which records the drift it finds and voids
//! the approvals of the environment's open deployments (approved against a schema that is no
//! longer there). An operator accepts a drift (the live schema becomes the reference).

use super::*;
use crate::target::schema::{SchemaDifference, SchemaSnapshot};
use crate::target::{self, TargetError, TargetSession, TargetSettings};

/// How many differences a view lists (the count says how many there are).
const LISTED: usize = 200;

/// What the live schema looks like beside the reference.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct DriftView {
    pub environment: String,
    /// The reference: when it was taken and its hash (none before the first apply or check).
    pub reference_at: Option<String>,
    pub reference_hash: Option<String>,
    pub live_hash: String,
    pub checked_at: String,
    /// The live schema differs from the reference.
    pub drifted: bool,
    pub difference_count: usize,
    pub differences: Vec<SchemaDifference>,
    /// The drift the scheduler recorded, until an operator accepts it.
    pub recorded: Option<RecordedDrift>,
}

/// A drift the scheduler found and recorded (shown in environment status).
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct RecordedDrift {
    pub found_at: String,
    pub difference_count: usize,
    pub differences: Vec<SchemaDifference>,
}

impl RecordedDrift {
    pub(super) fn from_row(row: &crate::store::SnapshotRow) -> Option<RecordedDrift> {
        let found_at = row.drift_found_at?;
        let differences: Vec<SchemaDifference> = row
            .drift
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        Some(RecordedDrift {
            found_at: format_millis(found_at),
            difference_count: differences.len(),
            differences: differences.into_iter().take(LISTED).collect(),
        })
    }
}

impl Service {
    /// Opens an environment's target as a runner does (the runner lock keeps a worker and this
    /// call apart): 409 while a runner applies, 503 when the target cannot be reached.
    pub(super) async fn open_target(
        &self,
        env: &EnvironmentConfig,
        owner: &str,
        what: &str,
    ) -> Result<TargetSession> {
        target::open(&TargetSettings::for_environment(env), owner)
            .await
            .map_err(|e| target_unavailable(env, what, e))
    }

    /// Makes a schema the environment's reference and closes any drift recorded: after a
    /// restore or a reset the database is what the backup held, nothing made by hand is left.
    pub async fn reset_reference(
        &self,
        environment: &str,
        snapshot: &SchemaSnapshot,
    ) -> Result<()> {
        let text = serde_json::to_string(snapshot)
            .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
        let mut tx = self.store.begin().await?;
        self.store
            .put_snapshot(&mut tx, environment, self.now(), &snapshot.hash(), &text)
            .await?;
        self.store.set_drift(&mut tx, environment, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keeps the schema a worker round left (`after`; `before`: the schema it found, read
    /// under the same runner lock) as the environment's reference. The reference is the
    /// schema right after Sluice's own last apply, never a capture of a hand change: while a
    /// drift is open, only what the round itself changed (from `before` to `after`) is
    /// carried into the reference, and the open drift is kept, so `sluice drift` and status
    /// keep agreeing until an operator accepts it.
    pub async fn record_snapshot(
        &self,
        environment: &str,
        before: Option<&SchemaSnapshot>,
        after: &SchemaSnapshot,
    ) -> Result<()> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let reference = self.store.snapshot(&mut tx, environment).await?;
        let open_drift = reference.as_ref().filter(|r| r.drift_found_at.is_some());
        let Some(open) = open_drift else {
            let text = serde_json::to_string(after)
                .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
            self.store
                .put_snapshot(&mut tx, environment, at, &after.hash(), &text)
                .await?;
            tx.commit().await?;
            return Ok(());
        };
        let Some(before) = before else {
            // Without the schema the round started from, what it changed cannot be told
            // apart from the hand change: the reference stays as it is.
            return Ok(());
        };
        let mut rebased = parse_snapshot(open)?;
        rebased.carry(before, after);
        let text = serde_json::to_string(&rebased)
            .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
        self.store
            .put_snapshot(&mut tx, environment, at, &rebased.hash(), &text)
            .await?;
        let differences = rebased.differences(after);
        if differences.is_empty() {
            // The round undid the hand change itself (a migration that dropped what was
            // added by hand): nothing differs any more.
            self.store.set_drift(&mut tx, environment, None).await?;
        } else {
            let text = serde_json::to_string(&differences)
                .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
            let found_at = open.drift_found_at.unwrap_or(at);
            self.store
                .set_drift(&mut tx, environment, Some((found_at, &after.hash(), &text)))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The live schema against the reference (read only).
    pub async fn drift(&self, _caller: &Caller, environment: &str) -> Result<DriftView> {
        let env = self.environment(environment)?;
        // The comparison is made while the runner lock is held: an apply in progress is
        // never reported as drift, and no round can replace the reference in between.
        let mut session = self.open_target(env, "sluice-drift", "drift check").await?;
        let view = async {
            let live = session
                .schema_snapshot()
                .await
                .map_err(|e| target_unavailable(env, "drift check", e))?;
            let mut conn = self.store.conn().await?;
            let reference = self.store.snapshot(&mut conn, env.name.as_str()).await?;
            self.drift_view(env, reference.as_ref(), &live)
        }
        .await;
        session.close().await;
        view
    }

    fn drift_view(
        &self,
        env: &EnvironmentConfig,
        reference: Option<&crate::store::SnapshotRow>,
        live: &SchemaSnapshot,
    ) -> Result<DriftView> {
        let differences = match reference {
            Some(row) => parse_snapshot(row)?.differences(live),
            None => Vec::new(),
        };
        Ok(DriftView {
            environment: env.name.to_string(),
            reference_at: reference.map(|r| format_millis(r.at)),
            reference_hash: reference.map(|r| r.hash.clone()),
            live_hash: live.hash(),
            checked_at: format_millis(self.now()),
            drifted: !differences.is_empty(),
            difference_count: differences.len(),
            differences: differences.into_iter().take(LISTED).collect(),
            recorded: reference.and_then(RecordedDrift::from_row),
        })
    }

    /// The scheduler's check of one environment: takes the first reference when there is
    /// none; records a drift not recorded yet (or one that changed since) and voids the
    /// approvals of the environment's open deployments. Skipped while a runner applies.
    /// Whether a new drift was recorded.
    pub async fn check_drift(&self, environment: &str) -> Result<bool> {
        let env = self.environment(environment)?;
        let mut session =
            match target::open(&TargetSettings::for_environment(env), "sluice-drift").await {
                Ok(session) => session,
                Err(TargetError::Busy { .. }) => return Ok(false),
                Err(e) => return Err(target_unavailable(env, "drift check", e)),
            };
        // Compared before the runner lock is let go (see `drift`).
        let noted = async {
            let live = session
                .schema_snapshot()
                .await
                .map_err(|e| target_unavailable(env, "drift check", e))?;
            self.note_drift(environment, &live).await
        }
        .await;
        session.close().await;
        noted
    }

    /// Compares a live schema (read by the caller, who holds the runner lock) with the
    /// reference: the first reference when there is none; a drift not recorded yet (or one
    /// that changed since) is recorded and voids the approvals of the environment's open
    /// deployments. The worker calls it before it applies anything, so that a change made
    /// outside Sluice is never folded silently into the next reference. Whether a new drift
    /// was recorded.
    pub async fn note_drift(&self, environment: &str, live: &SchemaSnapshot) -> Result<bool> {
        let env = self.environment(environment)?;
        let name = env.name.as_str();
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let Some(reference) = self.store.snapshot(&mut tx, name).await? else {
            let text = serde_json::to_string(live)
                .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
            self.store
                .put_snapshot(&mut tx, name, at, &live.hash(), &text)
                .await?;
            tx.commit().await?;
            return Ok(false);
        };
        let live_hash = live.hash();
        if live_hash == reference.hash || reference.drift_hash.as_deref() == Some(&live_hash) {
            return Ok(false);
        }
        let differences = parse_snapshot(&reference)?.differences(live);
        let text = serde_json::to_string(&differences)
            .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
        self.store
            .set_drift(&mut tx, name, Some((at, &live_hash, &text)))
            .await?;
        self.audit_drift(
            &mut tx,
            at,
            "sluice",
            "drift_found",
            name,
            &differences,
            serde_json::json!({"reference_hash": reference.hash, "live_hash": live_hash}),
        )
        .await?;
        // Approvals given against the schema as it was are void: approval starts again.
        let open = self
            .store
            .deployments_in_states(
                &mut tx,
                name,
                &[
                    DeploymentState::AwaitingApproval,
                    DeploymentState::Approved,
                    DeploymentState::Queued,
                ],
            )
            .await?;
        let mut changed = Vec::new();
        let mut wake = false;
        for mut d in open {
            if d.state == DeploymentState::AwaitingApproval
                && self.store.approvals(&mut tx, &d.id).await?.is_empty()
                && d.emergency_reason.is_none()
            {
                continue;
            }
            let migration = self
                .store
                .migration(&mut tx, &d.migration_id)
                .await?
                .ok_or_else(|| {
                    ServiceError::Unexpected(anyhow::anyhow!("{} has no migration", d.id))
                })?;
            let reason = format!(
                "the schema of {name} drifted from what Sluice applied ({} differences)",
                differences.len()
            );
            wake |= self
                .reopen_for_approval(
                    &mut tx,
                    &mut d,
                    env,
                    at,
                    "sluice",
                    DeploymentEvent::Amend,
                    &reason,
                    &migration.checksum,
                )
                .await?;
            changed.push(d);
        }
        tx.commit().await?;
        self.publish(&changed);
        if wake {
            self.signals.wake(name);
        }
        Ok(true)
    }

    /// An operator accepts the live schema as the reference; the recorded drift is cleared.
    pub async fn accept_drift(&self, caller: &Caller, environment: &str) -> Result<DriftView> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "accept a drift")?;
        let mut session = self
            .open_target(env, "sluice-drift", "drift acceptance")
            .await?;
        let live = session.schema_snapshot().await;
        session.close().await;
        let live = live.map_err(|e| target_unavailable(env, "drift acceptance", e))?;
        let name = env.name.as_str();
        let at = self.now();
        let text = serde_json::to_string(&live)
            .map_err(|e| ServiceError::Unexpected(anyhow::Error::new(e)))?;
        let mut tx = self.store.begin().await?;
        let before = self.store.snapshot(&mut tx, name).await?;
        let differences = match &before {
            Some(row) => parse_snapshot(row)?.differences(&live),
            None => Vec::new(),
        };
        self.store
            .put_snapshot(&mut tx, name, at, &live.hash(), &text)
            .await?;
        self.store.set_drift(&mut tx, name, None).await?;
        self.audit_drift(
            &mut tx,
            at,
            caller.name.as_str(),
            "drift_accepted",
            name,
            &differences,
            serde_json::json!({"live_hash": live.hash()}),
        )
        .await?;
        tx.commit().await?;
        let mut conn = self.store.conn().await?;
        let reference = self.store.snapshot(&mut conn, name).await?;
        self.drift_view(env, reference.as_ref(), &live)
    }

    /// An audit record of a drift found or accepted: how many differences, the first objects.
    #[allow(clippy::too_many_arguments)]
    async fn audit_drift(
        &self,
        tx: &mut sqlx::AnyConnection,
        at: i64,
        actor: &str,
        action: &str,
        environment: &str,
        differences: &[SchemaDifference],
        mut detail: serde_json::Value,
    ) -> Result<()> {
        detail["differences"] = differences.len().into();
        detail["objects"] = differences
            .iter()
            .take(20)
            .map(|d| format!("{} {}", d.object, d.change))
            .collect::<Vec<_>>()
            .into();
        self.store
            .insert_audit(
                tx,
                &AuditRow {
                    id: 0,
                    at,
                    actor: actor.to_owned(),
                    action: action.to_owned(),
                    environment: Some(environment.to_owned()),
                    migration_id: None,
                    deployment_id: None,
                    detail: detail.to_string(),
                    events: None,
                },
            )
            .await?;
        Ok(())
    }

    /// The drift recorded for an environment, for its status.
    pub(super) async fn recorded_drift(
        &self,
        conn: &mut sqlx::AnyConnection,
        environment: &str,
    ) -> Result<Option<RecordedDrift>> {
        Ok(self
            .store
            .snapshot(conn, environment)
            .await?
            .as_ref()
            .and_then(RecordedDrift::from_row))
    }
}

fn parse_snapshot(row: &crate::store::SnapshotRow) -> Result<SchemaSnapshot> {
    serde_json::from_str(&row.snapshot).map_err(|e| {
        ServiceError::Unexpected(anyhow::anyhow!(
            "the stored schema snapshot of {} does not read: {e}",
            row.environment
        ))
    })
}

/// A target that cannot be had: 409 while a runner applies, 503 otherwise.
pub(super) fn target_unavailable(
    env: &EnvironmentConfig,
    what: &str,
    e: TargetError,
) -> ServiceError {
    match e {
        TargetError::Busy { .. } => ServiceError::Conflict(format!(
            "a runner is applying migrations to {} now; try the {what} again when it has finished",
            env.name
        )),
        other => ServiceError::Unavailable(format!("{what} of {}: {other}", env.name)),
    }
}
