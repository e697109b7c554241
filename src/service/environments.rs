//! Environments: lock, unlock, migrate, and status (through the one queue planner).

use super::*;
use crate::domain::lock::Work;
use sqlx::AnyConnection;

pub(super) fn locked_error(env: &EnvironmentConfig, lock: &LockRow, prefix: &str) -> ServiceError {
    ServiceError::Conflict(format!(
        "{} is {prefix}locked by {} since {}: {}",
        env.name,
        lock.locked_by,
        format_millis(lock.locked_at),
        lock.reason
    ))
}

impl Service {
    /// The environment's lock, if it stops `work` there: the domain's one lock rule
    /// (`domain::lock::lock_stops`) fed with the stored lock. Everything that asks whether a
    /// lock is in the way (migrate, the waits, the worker) asks here.
    pub async fn lock_stopping(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
        work: Work,
    ) -> Result<Option<LockRow>> {
        let lock = self.store.lock(conn, environment).await?;
        let stops =
            domain::lock::lock_stops(lock.as_ref().map(Into::into).as_ref(), work).is_some();
        Ok(lock.filter(|_| stops))
    }

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
        let lock = LockRow {
            environment: env.name.to_string(),
            locked_by: caller.name.to_string(),
            reason: reason.trim().into(),
            locked_at: at,
        };
        // One conditional insert: of concurrent lock requests exactly one takes the lock; the
        // others read the lock that won (committed by then) and are told who holds it.
        if !self.store.insert_lock(&mut tx, &lock).await? {
            let held = self.store.lock(&mut tx, env.name.as_str()).await?;
            return Err(match held {
                Some(held) => locked_error(env, &held, "already "),
                None => ServiceError::Conflict(format!(
                    "{} was locked and unlocked by someone else while you asked; look at `sluice status {}` and lock again if it is still needed",
                    env.name, env.name
                )),
            });
        }
        let mut entry = audit(
            at,
            caller.name.as_str(),
            "environment_locked",
            None,
            None,
            serde_json::json!({"reason": reason.trim()}),
        );
        entry.environment = Some(env.name.to_string());
        let mut draft = notifications::Draft::new(
            crate::domain::notice::NoticeKind::EnvironmentLocked,
            caller.name.as_str(),
        );
        draft.reason = Some(reason.trim().to_owned());
        let events = self.notify_environment(env.name.as_str(), at, draft);
        let entry = notifications::carrying(entry, events.as_slice())?;
        self.store.insert_audit(&mut tx, &entry).await?;
        tx.commit().await?;
        self.events_written();
        self.signals
            .lock_generation(env.name.as_str())
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.signals.lock_changed();
        self.environment_status(environment).await
    }

    pub async fn unlock_environment(
        &self,
        caller: &Caller,
        environment: &str,
    ) -> Result<EnvironmentStatus> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "unlock")?;
        // A lock a stopped restore or reset left: the queue follows the database first.
        let left = {
            let mut conn = self.store.conn().await?;
            self.store.lock(&mut conn, env.name.as_str()).await?
        };
        if let Some(lock) = left
            && super::restore::left_by_replace(&lock.reason)
        {
            self.reconcile_left_by_replace(caller, env).await?;
        }
        let at = self.now();
        let mut tx = self.store.begin().await?;
        // One conditional delete: of concurrent unlocks exactly one removes the lock (and
        // writes the audit record); the others find nothing to remove.
        let Some(lock) = self
            .store
            .delete_lock(&mut tx, env.name.as_str(), None)
            .await?
        else {
            return Err(ServiceError::Conflict(format!(
                "{} is not locked",
                env.name
            )));
        };
        let mut entry = audit(
            at,
            caller.name.as_str(),
            "environment_unlocked",
            None,
            None,
            serde_json::json!({"locked_by": lock.locked_by, "reason": lock.reason}),
        );
        entry.environment = Some(env.name.to_string());
        let mut draft = notifications::Draft::new(
            crate::domain::notice::NoticeKind::EnvironmentUnlocked,
            caller.name.as_str(),
        );
        draft.note = Some(format!(
            "locked by {} since {}: {}",
            lock.locked_by,
            format_millis(lock.locked_at),
            lock.reason
        ));
        let events = self.notify_environment(env.name.as_str(), at, draft);
        let entry = notifications::carrying(entry, events.as_slice())?;
        self.store.insert_audit(&mut tx, &entry).await?;
        tx.commit().await?;
        self.events_written();
        self.signals.wake(env.name.as_str());
        self.signals.lock_changed();
        self.environment_status(environment).await
    }

    /// Releases every approved deployment of the environment to its worker (the seed's
    /// `migrate <environment>`). Returns the ids released.
    pub async fn migrate(&self, caller: &Caller, environment: &str) -> Result<MigrateResult> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "migrate")?;
        let at = self.now();
        let mut tx = self.store.begin().await?;
        if let Some(lock) = self
            .lock_stopping(&mut tx, env.name.as_str(), Work::Release)
            .await?
        {
            return Err(locked_error(env, &lock, ""));
        }
        let mut approved = self
            .store
            .deployments_in_states(&mut tx, env.name.as_str(), &[DeploymentState::Approved])
            .await?;
        if let Some((window, until)) =
            domain::freeze::describe(&env.freeze_windows, self.clock.now())
        {
            // Only emergency overrides start inside a freeze window (the one freeze rule).
            let in_force = Some((window.clone(), until.clone()));
            approved.retain(|d| {
                domain::freeze::stops(in_force.clone(), d.emergency_reason.is_some()).is_none()
            });
            if approved.is_empty() {
                return Err(ServiceError::Conflict(format!(
                    "{} is in the freeze window {window} until {until}; only an emergency override (sluice migrate {} --force --emergency \"<reason>\") starts now",
                    env.name, env.name
                )));
            }
        }
        let mut released = Vec::new();
        for mut deployment in approved {
            self.commit_change(
                &mut tx,
                &mut deployment,
                at,
                Change {
                    event: DeploymentEvent::Release,
                    actor: caller.name.as_str(),
                    action: "queued",
                    detail: serde_json::json!({"reason": "migrate"}),
                    events: Vec::new(),
                },
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
}

impl Service {
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
        // One query for the approvals of the whole queue, however long it is.
        let open_ids: Vec<String> = open.iter().map(|d| d.id.clone()).collect();
        let mut approvals_by_deployment: HashMap<String, Vec<ApprovalRow>> = HashMap::new();
        for approval in self.store.approvals_of_many(&mut conn, &open_ids).await? {
            approvals_by_deployment
                .entry(approval.deployment_id.clone())
                .or_default()
                .push(approval);
        }
        // The worker's own planner, fed by the one builder of its inputs: what status says is
        // what the worker will do.
        let inputs = self
            .queue_inputs(&mut conn, env, &open, &migrations)
            .await?;
        let frozen = inputs.frozen.clone();
        let plan = inputs.plan(&open, &migrations);
        let mut queue = Vec::new();
        let mut blockers = Vec::new();
        for (d, planned) in open.iter().zip(plan) {
            let Some(m) = migrations.get(&d.migration_id) else {
                continue;
            };
            let approvals = approvals_by_deployment.remove(&d.id).unwrap_or_default();
            let mut view = self.deployment_view(d, m, &approvals)?;
            view.blocked_by = planned.blocked_by;
            if let Some((holder, since)) = self.signals.lock_wait(&d.id) {
                view.blocked_by = Some(format!(
                    "running, waiting for a lock since {}: {holder}",
                    format_millis(since)
                ));
            }
            if view.blocked_by.is_none() && d.state == DeploymentState::Approved {
                // With auto_apply on, an approved deployment that is not queued was put back
                // by a restore or a reset (applied again only when someone asks).
                let why = if env.auto_apply {
                    "auto_apply applies new approvals only; this one was put back to approved by a restore or a reset"
                } else {
                    "auto_apply is off"
                };
                view.blocked_by = Some(format!(
                    "approved; waits for `migrate {}` ({why})",
                    env.name
                ));
            }
            if planned.out_of_order {
                view.blocked_by = None;
                view.out_of_order = true;
            }
            // The worker starts nothing in a locked environment (`Outcome::Locked`): a queued
            // deployment says so rather than look free to start.
            if let Some(lock) = &lock
                && d.state == DeploymentState::Queued
                && view.blocked_by.is_none()
            {
                view.blocked_by = Some(format!(
                    "{} is locked by {}: {} (nothing new starts until it is unlocked)",
                    env.name, lock.locked_by, lock.reason
                ));
            }
            queue.push(view);
            blockers.push(planned.blocker);
        }
        self.fill_needs(env, lock.as_ref(), &mut queue, &blockers)
            .await?;
        self.attach_checks(&mut conn, &mut queue).await?;
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
        let mut owed: BTreeMap<String, OwedReviewView> = BTreeMap::new();
        for review in self.store.owed_reviews(&mut conn).await? {
            let Ok((migration_id, environment)) =
                domain::parse_deployment_id(&review.deployment_id)
            else {
                continue;
            };
            if environment != env.name {
                continue;
            }
            owed.entry(review.deployment_id.clone())
                .or_insert_with(|| OwedReviewView {
                    deployment_id: review.deployment_id.clone(),
                    migration_id: migration_id.to_string(),
                    roles: Vec::new(),
                    owed_since: format_millis(review.owed_at),
                })
                .roles
                .push(review.role);
        }
        let mut status = EnvironmentStatus::new(env, lock, queue, last_applied);
        status.drift = self.recorded_drift(&mut conn, env.name.as_str()).await?;
        let cancelled = self
            .store
            .cancelled_step_by_step(&mut conn, env.name.as_str())
            .await?;
        for d in cancelled
            .iter()
            .filter(|d| super::lifecycle::partly_applied(d).is_some())
            .take(20)
        {
            if let Some(m) = self.store.migration(&mut conn, &d.migration_id).await? {
                status
                    .partly_applied
                    .push(self.deployment_view(d, &m, &[])?);
            }
        }
        status.owed_reviews = owed.into_values().collect();
        status.freeze = frozen.map(|(window, until)| FreezeView { window, until });
        if let Some((message, since)) = self.signals.target_error(env.name.as_str()) {
            status.target_error = Some(message);
            status.target_error_since = Some(format_millis(since));
        }
        Ok(status)
    }
}
