//! One worker per environment: applies released deployments in id order and runs requested
//! rollbacks, against the target through `target`, recording outcomes in the state store.
//!
//! Bookkeeping is designed so the state store is never on the critical path of a migration:
//! the worker claims a whole run of eligible deployments in one store commit, then applies them
//! one after another while a recorder task writes each outcome (state, log, audit) behind it,
//! grouping whatever has piled up into one commit. The target's history table, written in the
//! migration's own transaction, is the truth: if the daemon dies before an outcome reaches the
//! store, the next run reconciles from it.

use crate::config::EnvironmentConfig;
use crate::domain::{self, DeploymentEvent, DeploymentState, LastAction};
use crate::service::notifications::events_column;
use crate::service::{LogView, Service, ServiceError, check_script, format_millis, millis};
use crate::store::{AuditRow, DeploymentRow, LogRow, MigrationRow};
use crate::target::{self, RunReport, Script, TargetSettings};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a worker trusts its last look at the environment lock while applying a run.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What one `run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was released to this environment.
    Idle,
    /// The environment is locked: nothing new starts.
    Locked,
    /// Released work exists but cannot start yet (the reason is in environment status).
    Blocked,
    /// The target could not be reached or another runner holds it.
    TargetUnavailable(String),
    Worked {
        applied: usize,
        rolled_back: usize,
        failed: Option<String>,
    },
}

/// What became of a deployment whose apply ended in an error (`Worker::after_apply_error`).
enum AfterError {
    /// The target records it as applied after all (how we know).
    Applied(&'static str),
    /// The script's failure, with its reason, and for a script run statement by statement
    /// how many of its statements the target's history records as applied, when it could be
    /// read.
    Failed(String, Option<i64>),
    /// The target cannot be reached: try again later.
    Unreachable(String),
}

/// A deployment's outcome on its way to the state store.
struct Record {
    deployment: DeploymentRow,
    logs: Vec<LogRow>,
    audits: Vec<AuditRow>,
}

pub struct Worker {
    service: Service,
    environment: EnvironmentConfig,
    owner: String,
    cancel: CancellationToken,
    /// Whether this worker has looked, once, for amendments a dead daemon left half done.
    recovered: std::sync::atomic::AtomicBool,
}

impl Worker {
    pub fn new(
        service: Service,
        environment: EnvironmentConfig,
        cancel: CancellationToken,
    ) -> Worker {
        let mut random = [0u8; 4];
        let _ = getrandom::fill(&mut random);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice".into());
        let owner = format!("{host}-{}-{}", std::process::id(), hex::encode(random));
        Worker {
            service,
            environment,
            owner,
            cancel,
            recovered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The target database's name (`db.namespace` of statement spans): the URL's path, or the
    /// SQLite file's name.
    fn namespace(&self) -> String {
        crate::service::database_name(self.environment.url.expose())
    }

    pub fn environment(&self) -> &EnvironmentConfig {
        &self.environment
    }

    fn now(&self) -> i64 {
        millis(self.service.clock.now())
    }

    fn publish(&self, d: &DeploymentRow) {
        self.service
            .signals
            .events
            .state(d, format_millis(d.updated_at));
    }

    fn audit(&self, d: &DeploymentRow, action: &str, detail: serde_json::Value) -> AuditRow {
        AuditRow {
            id: 0,
            at: self.now(),
            actor: "sluice".into(),
            action: action.into(),
            environment: Some(d.environment.clone()),
            migration_id: Some(d.migration_id.clone()),
            deployment_id: Some(d.id.clone()),
            detail: detail.to_string(),
            events: None,
        }
    }

    /// How this worker's target reads SQL: statements are split the way it splits them.
    fn dialect(&self) -> crate::lint::Dialect {
        target::dialect_of(self.environment.url.expose())
    }

    fn settings(&self) -> TargetSettings {
        TargetSettings::for_environment(&self.environment)
    }

    /// Whether the environment's lock stops new deployments (the service's one lock check).
    async fn locked(&self) -> Result<bool, ServiceError> {
        let mut conn = self.service.store.conn().await?;
        let env = self.environment.name.as_str();
        let work = crate::domain::lock::Work::Start;
        Ok(self
            .service
            .lock_stopping(&mut conn, env, work)
            .await?
            .is_some())
    }

    /// Every deployment of the environment that is not finished, in id order.
    async fn open_deployments(&self) -> Result<Vec<DeploymentRow>, ServiceError> {
        let store = &self.service.store;
        let mut conn = store.conn().await?;
        Ok(store
            .deployments_in_states(
                &mut conn,
                self.environment.name.as_str(),
                &DeploymentState::OPEN,
            )
            .await?)
    }

    /// Does one round of work: reconcile, roll back what was asked, apply what may start.
    pub async fn run_once(&self) -> Result<Outcome, ServiceError> {
        let store = &self.service.store;
        let env_name = self.environment.name.as_str();
        // A daemon killed between an amendment's rollback and its reopening left the
        // deployment rolled back with the down script it kept: the first round of a new
        // worker finishes that (after a round that rolls back, the round itself does).
        if !self
            .recovered
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.service.reopen_amended(env_name).await?;
        }
        // A lock stops new deployments, not rollbacks: undoing a change is what an incident
        // often locks an environment for.
        let locked = self.locked().await?;
        {
            let mut conn = store.conn().await?;
            // The cheap question first: an idle worker polls every second.
            if !store.has_work(&mut conn, env_name).await? {
                return Ok(Outcome::Idle);
            }
            if locked
                && store
                    .deployments_in_states(&mut conn, env_name, &[DeploymentState::RollingBack])
                    .await?
                    .is_empty()
            {
                return Ok(Outcome::Locked);
            }
        }
        let signals = &self.service.signals;
        let mut session = match target::open(&self.settings(), &self.owner).await {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(environment = env_name, error = %e, "target unavailable");
                signals.report_target(env_name, Some(e.to_string()), self.now());
                return Ok(Outcome::TargetUnavailable(e.to_string()));
            }
        };
        // A change made outside Sluice since the last reference is recorded (and voids the
        // approvals given against the schema as it was) before anything is applied.
        let before = match session.schema_snapshot().await {
            Ok(live) => {
                if let Err(e) = self.service.note_drift(env_name, &live).await {
                    tracing::warn!(environment = env_name, error = %e, "cannot check for drift");
                }
                Some(live)
            }
            Err(e) => {
                tracing::warn!(environment = env_name, error = %e, "cannot read the schema to check for drift");
                None
            }
        };
        // Read the queue only once the target's lock is ours: whatever another runner did
        // before is recorded by then.
        let result = match self.open_deployments().await {
            Ok(open) => self.work(&mut session, open, locked).await,
            Err(e) => Err(e),
        };
        if matches!(result, Ok(Outcome::Worked { .. })) {
            // The schema this round left is the reference drift checks compare with.
            match session.schema_snapshot().await {
                Ok(snapshot) => {
                    if let Err(e) = self
                        .service
                        .record_snapshot(env_name, before.as_ref(), &snapshot)
                        .await
                    {
                        tracing::warn!(environment = env_name, error = %e, "cannot keep the schema snapshot");
                    }
                }
                Err(e) => {
                    tracing::warn!(environment = env_name, error = %e, "cannot read the schema for its snapshot")
                }
            }
        }
        session.close().await;
        if let Ok(Outcome::Worked { rolled_back, .. }) = &result
            && *rolled_back > 0
        {
            // An amended migration's old version is undone here: the amended one goes back
            // to approval (re-approved and queued again where the environment does that).
            if let Err(e) = self.service.reopen_amended(env_name).await {
                tracing::warn!(environment = env_name, error = %e, "cannot reopen the amended deployments");
            }
        }
        match &result {
            Ok(Outcome::TargetUnavailable(message)) => {
                signals.report_target(env_name, Some(message.clone()), self.now())
            }
            Ok(_) => signals.report_target(env_name, None, self.now()),
            Err(_) => {}
        }
        result
    }

    async fn work(
        &self,
        session: &mut target::TargetSession,
        mut open: Vec<DeploymentRow>,
        locked: bool,
    ) -> Result<Outcome, ServiceError> {
        let store = &self.service.store;
        let history = match session.history().await {
            Ok(h) => h,
            Err(e) => return Ok(Outcome::TargetUnavailable(e.to_string())),
        };
        let ids: Vec<String> = open.iter().map(|d| d.migration_id.clone()).collect();
        let migrations: HashMap<String, MigrationRow> = {
            let mut conn = store.conn().await?;
            store
                .migrations_by_ids(&mut conn, &ids)
                .await?
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect()
        };

        // Reconcile what the store believes with what the target records.
        let mut reconciled: Vec<(usize, AuditRow)> = Vec::new();
        for (index, d) in open.iter_mut().enumerate() {
            let Some(m) = migrations.get(&d.migration_id) else {
                continue;
            };
            let entry = history.get(&d.migration_id);
            let applied_here = entry.is_some_and(|e| e.success && e.checksum == m.checksum);
            // Every statement of a script run statement by statement is recorded as done, but
            // its runner stopped before the row said "applied": progress n of n is applied.
            // A deployment already failed that way (the final history write refused, or a
            // daemon before this rule) is applied too: nothing is left to run.
            let completed_here = (d.state == DeploymentState::Running
                || (d.state == DeploymentState::Failed
                    && d.last_action == Some(LastAction::Apply)))
                && entry.is_some_and(|e| e.all_statements_done() && e.checksum == m.checksum);
            match d.state {
                DeploymentState::Running | DeploymentState::Queued | DeploymentState::Failed
                    if (applied_here && d.state != DeploymentState::Failed) || completed_here =>
                {
                    if completed_here && let Err(e) = session.mark_complete(&d.migration_id).await {
                        return Ok(Outcome::TargetUnavailable(e.to_string()));
                    }
                    if d.state == DeploymentState::Failed {
                        d.state = d.state.on(DeploymentEvent::Retry)?;
                    }
                    if d.state == DeploymentState::Queued {
                        d.state = d.state.on(DeploymentEvent::Start)?;
                    }
                    d.state = d.state.on(DeploymentEvent::Succeed)?;
                    d.error = None;
                    d.transactional = entry.map(|e| e.transactional).or(d.transactional);
                    d.last_action = Some(LastAction::Apply);
                    d.applied_statements = None;
                    d.finished_at = Some(self.now());
                    d.updated_at = self.now();
                    let audit = self.audit(
                        d,
                        "applied",
                        if completed_here {
                            serde_json::json!({
                                "reconciled": "the script's last statement ran, but its runner stopped (or its history write failed) before recording it as applied; the target's sluice_schema_history records every statement as done",
                                "statements_done": entry.and_then(|e| e.statements_done),
                                "statements_total": entry.and_then(|e| e.statements_total),
                                "checksum": m.checksum,
                            })
                        } else {
                            serde_json::json!({"reconciled": "the target's sluice_schema_history records it as applied"})
                        },
                    );
                    reconciled.push((index, audit));
                }
                // A script run statement by statement that the target records as started:
                // part of it may be applied. It is never run again from the top; it halts the
                // queue until someone resumes (retry), rolls back or cancels it.
                DeploymentState::Running
                    if entry.is_some_and(|e| !e.success && !e.transactional) =>
                {
                    let entry = entry.expect("checked above");
                    d.state = d.state.on(DeploymentEvent::Fail)?;
                    d.transactional = Some(false);
                    d.last_action = Some(LastAction::Apply);
                    d.applied_statements = Some(entry.applied_statements());
                    d.finished_at = Some(self.now());
                    d.updated_at = self.now();
                    d.error = Some(if entry.interrupted() {
                        entry.describe_interruption()
                    } else {
                        entry
                            .error
                            .clone()
                            .unwrap_or_else(|| entry.describe_interruption())
                    });
                    let audit = self.audit(
                        d,
                        "failed",
                        serde_json::json!({
                            "error": d.error,
                            "reconciled": "the daemon stopped while the script ran statement by statement",
                            "statements_done": entry.statements_done,
                            "statements_total": entry.statements_total,
                            "checksum": entry.checksum,
                        }),
                    );
                    reconciled.push((index, audit));
                }
                DeploymentState::Running => {
                    d.state = d.state.on(DeploymentEvent::Requeue)?;
                    d.updated_at = self.now();
                    let audit = self.audit(
                        d,
                        "requeued",
                        serde_json::json!({"reason": "was running when the daemon stopped; the target does not record it (its transaction never committed)"}),
                    );
                    reconciled.push((index, audit));
                }
                DeploymentState::Queued
                    if entry.is_some_and(|e| e.success && e.checksum != m.checksum) =>
                {
                    d.state = d
                        .state
                        .on(DeploymentEvent::Start)?
                        .on(DeploymentEvent::Fail)?;
                    d.error = Some(format!(
                        "the target already records {} as applied with another checksum ({}); it was changed after being applied there",
                        d.migration_id,
                        entry.map(|e| e.checksum.as_str()).unwrap_or("")
                    ));
                    d.last_action = Some(LastAction::Apply);
                    d.applied_statements = None;
                    d.updated_at = self.now();
                    let audit = self.audit(d, "failed", serde_json::json!({"error": d.error}));
                    reconciled.push((index, audit));
                }
                _ => {}
            }
        }
        if !reconciled.is_empty() {
            let mut tx = store.begin().await?;
            for (index, audit) in reconciled.iter_mut() {
                store.update_deployment(&mut tx, &mut open[*index]).await?;
                let event = self
                    .service
                    .notify_state(
                        &mut tx,
                        &open[*index],
                        audit.at,
                        "sluice",
                        None,
                        migrations.get(&open[*index].migration_id),
                    )
                    .await?;
                audit.events = events_column(event.as_slice())?;
                store.insert_audit(&mut tx, audit).await?;
            }
            tx.commit().await?;
            self.service.events_written();
            for (index, _) in &reconciled {
                self.publish(&open[*index]);
            }
        }

        let (sender, receiver) = mpsc::channel::<Record>(1024);
        let recorder = tokio::spawn(record_outcomes(self.service.clone(), receiver));
        let result = self
            .rollbacks_then_applies(session, &mut open, &migrations, &history, &sender, locked)
            .await;
        drop(sender);
        let recorded = recorder
            .await
            .map_err(|e| ServiceError::Unexpected(anyhow::anyhow!("recorder task: {e}")))?;
        recorded?;
        result
    }

    async fn rollbacks_then_applies(
        &self,
        session: &mut target::TargetSession,
        open: &mut [DeploymentRow],
        migrations: &HashMap<String, MigrationRow>,
        history: &HashMap<String, target::HistoryEntry>,
        sender: &mpsc::Sender<Record>,
        locked: bool,
    ) -> Result<Outcome, ServiceError> {
        let mut rolled_back = 0;
        // Environments with backup_required get one backup per round, before anything runs.
        let mut backup: Option<String> = None;
        if open.iter().any(|d| d.state == DeploymentState::RollingBack) {
            match self.backup_if_required(session).await {
                Ok(path) => backup = path,
                Err(message) => return Ok(Outcome::TargetUnavailable(message)),
            }
        }
        // Rollbacks, newest first.
        for d in open.iter_mut().rev() {
            if d.state != DeploymentState::RollingBack {
                continue;
            }
            let Some(m) = migrations.get(&d.migration_id) else {
                continue;
            };
            let applied = history.get(&d.migration_id).is_some_and(|e| e.success);
            let run_down = applied || d.transactional == Some(false);
            d.started_at = Some(self.now());
            let mut logs = Vec::new();
            // An amendment keeps the down script of the version applied here: that version
            // is the one to undo.
            let down_sql = d.undo_sql.as_deref().or(m.down_sql.as_deref());
            let outcome: Result<Option<RunReport>, String> = if run_down {
                match down_sql.map(|sql| check_script("down_sql", sql, self.dialect())) {
                    Some(Ok(statements)) => {
                        let observer = self.observer(d);
                        let lock_wait = self.lock_wait_observer(d);
                        let script = Script {
                            migration_id: &m.id,
                            checksum: &m.checksum,
                            applied_by: &self.owner,
                            environment: self.environment.name.as_str(),
                            namespace: &self.namespace(),
                            statements: &statements,
                            observer: Some(&observer),
                            lock_wait: Some(&lock_wait),
                        };
                        let span = crate::telemetry::traces::deployment_span(
                            "rollback",
                            &m.id,
                            self.environment.name.as_str(),
                            &d.effective_risk,
                            d.trace_context.as_deref(),
                        );
                        let result = session.rollback(&script).instrument(span.clone()).await;
                        lock_wait(None);
                        span.record(
                            "sluice.outcome",
                            match &result {
                                Ok(r) if r.error.is_none() => "rolled_back",
                                Ok(_) => "failed",
                                Err(_) => "interrupted",
                            },
                        );
                        result.map(Some).map_err(|e| e.to_string())
                    }
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err(format!("migration {} has no down_sql", m.id)),
                }
            } else {
                logs.push(self.log(
                    d,
                    "nothing of the failed attempt is applied; no rollback script needed",
                ));
                session
                    .forget(&m.id)
                    .await
                    .map(|_| None)
                    .map_err(|e| e.to_string())
            };
            let error = match outcome {
                Ok(Some(report)) => {
                    logs.extend(report.log.iter().map(|l| self.log_line(d, l)));
                    d.execution_ms = Some(report.execution_ms);
                    report.error
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            d.finished_at = Some(self.now());
            d.updated_at = self.now();
            d.last_action = Some(LastAction::Rollback);
            // Whatever the rollback left, it is not part of an apply that stopped part-way.
            d.applied_statements = None;
            let audit = match &error {
                None => {
                    d.state = d.state.on(DeploymentEvent::RollbackSucceeded)?;
                    d.error = None;
                    rolled_back += 1;
                    self.audit(d, "rolled_back", serde_json::json!({}))
                }
                Some(message) => {
                    d.state = d.state.on(DeploymentEvent::RollbackFailed)?;
                    d.error = Some(format!("rollback failed: {message}"));
                    self.audit(d, "rollback_failed", serde_json::json!({"error": message}))
                }
            };
            send(sender, d.clone(), logs, vec![audit]).await?;
        }

        if locked {
            return Ok(Outcome::Worked {
                applied: 0,
                rolled_back,
                failed: None,
            });
        }

        // Applies: the longest run of queued deployments, in id order, that may start now.
        let store = &self.service.store;
        if !open.iter().any(|d| d.state == DeploymentState::Queued) {
            return Ok(Outcome::Worked {
                applied: 0,
                rolled_back,
                failed: None,
            });
        }
        // The one planner (status asks it too), fed by the one builder of its inputs: id
        // order, dependencies, promotion order, freeze windows, and emergencies going ahead of
        // deployments that are merely waiting.
        let plan = {
            let mut conn = store.conn().await?;
            self.service
                .queue_inputs(&mut conn, &self.environment, open, migrations)
                .await?
                .plan(open, migrations)
        };
        let batch: Vec<usize> = plan
            .iter()
            .enumerate()
            .filter(|(index, p)| p.start && migrations.contains_key(&open[*index].migration_id))
            .map(|(index, _)| index)
            .collect();
        let ahead_of: HashMap<usize, Vec<String>> = plan
            .iter()
            .enumerate()
            .filter(|(_, p)| p.start && p.out_of_order)
            .map(|(index, p)| (index, p.ahead_of.clone()))
            .collect();
        if batch.is_empty() {
            return Ok(if rolled_back > 0 {
                Outcome::Worked {
                    applied: 0,
                    rolled_back,
                    failed: None,
                }
            } else {
                Outcome::Blocked
            });
        }

        if backup.is_none() {
            // In the trace of the first deployment it is taken for.
            let first = &open[batch[0]];
            let span = if self.environment.backup_required {
                crate::telemetry::traces::deployment_span(
                    "backup",
                    &first.migration_id,
                    self.environment.name.as_str(),
                    &first.effective_risk,
                    first.trace_context.as_deref(),
                )
            } else {
                tracing::Span::none()
            };
            match self
                .backup_if_required(session)
                .instrument(span.clone())
                .await
            {
                Ok(path) => backup = path,
                Err(message) => return Ok(Outcome::TargetUnavailable(message)),
            }
        }

        // Claim the run in one commit: from here on no one else may cancel these.
        let claimed_at = self.now();
        let mut claimed = Vec::new();
        {
            let mut audits = Vec::with_capacity(batch.len());
            let mut tx = store.begin().await?;
            for &index in &batch {
                let d = &mut open[index];
                let checksum = &migrations[&d.migration_id].checksum;
                if !store.claim(&mut tx, d, checksum, claimed_at).await? {
                    // Changed since we read it (cancelled, or its scripts amended): the run
                    // stops before it, and nothing read before the change runs.
                    break;
                }
                d.state = d.state.on(DeploymentEvent::Start)?;
                d.updated_at = claimed_at;
                let mut audit = self.audit(
                    d,
                    "started",
                    serde_json::json!({"runner": self.owner, "checksum": checksum}),
                );
                let event = self
                    .service
                    .notify_state(
                        &mut tx,
                        d,
                        claimed_at,
                        "sluice",
                        None,
                        Some(&migrations[&d.migration_id]),
                    )
                    .await?;
                audit.events = events_column(event.as_slice())?;
                audits.push(audit);
                claimed.push(index);
            }
            store.insert_audits(&mut tx, &audits).await?;
            tx.commit().await?;
            self.service.events_written();
        }
        for &index in &claimed {
            self.publish(&open[index]);
        }

        let mut applied = 0;
        let mut failed = None;
        let mut unreachable: Option<String> = None;
        let mut stop_reason: Option<&str> = None;
        // The lock is read from the store at most every LOCK_CHECK_INTERVAL (another replica
        // may have set it), and at once when this daemon locked the environment.
        let generation = self
            .service
            .signals
            .lock_generation(self.environment.name.as_str());
        let mut seen_generation = generation.load(std::sync::atomic::Ordering::SeqCst);
        let mut last_lock_check = std::time::Instant::now();
        for &index in &claimed {
            if stop_reason.is_none() {
                if self.cancel.is_cancelled() {
                    stop_reason = Some("the daemon is shutting down");
                } else if failed.is_some() {
                    stop_reason = Some("an earlier deployment failed");
                } else if domain::freeze::stops(
                    domain::freeze::describe(
                        &self.environment.freeze_windows,
                        self.service.clock.now(),
                    ),
                    open[index].emergency_reason.is_some(),
                )
                .is_some()
                {
                    stop_reason = Some("a freeze window began");
                } else {
                    let current = generation.load(std::sync::atomic::Ordering::SeqCst);
                    if (current != seen_generation
                        || last_lock_check.elapsed() >= LOCK_CHECK_INTERVAL)
                        && {
                            seen_generation = current;
                            last_lock_check = std::time::Instant::now();
                            self.locked().await?
                        }
                    {
                        stop_reason = Some("the environment was locked");
                    }
                }
            }
            let d = &mut open[index];
            if let Some(reason) = stop_reason {
                d.state = d.state.on(DeploymentEvent::Requeue)?;
                d.updated_at = self.now();
                let audit = self.audit(d, "requeued", serde_json::json!({"reason": reason}));
                send(sender, d.clone(), Vec::new(), vec![audit]).await?;
                continue;
            }
            let m = &migrations[&d.migration_id];
            d.started_at = Some(self.now());
            let statements = match check_script("up_sql", &m.up_sql, self.dialect()) {
                Ok(s) => s,
                Err(e) => {
                    d.state = d.state.on(DeploymentEvent::Fail)?;
                    d.error = Some(e.to_string());
                    d.last_action = Some(LastAction::Apply);
                    d.applied_statements = None;
                    d.finished_at = Some(self.now());
                    failed = Some(d.id.clone());
                    let audit = self.audit(d, "failed", serde_json::json!({"error": d.error}));
                    send(sender, d.clone(), Vec::new(), vec![audit]).await?;
                    continue;
                }
            };
            let observer = self.observer(d);
            let lock_wait = self.lock_wait_observer(d);
            let script = Script {
                migration_id: &m.id,
                checksum: &m.checksum,
                applied_by: &self.owner,
                environment: self.environment.name.as_str(),
                namespace: &self.namespace(),
                statements: &statements,
                observer: Some(&observer),
                lock_wait: Some(&lock_wait),
            };
            let span = crate::telemetry::traces::deployment_span(
                "apply",
                &m.id,
                self.environment.name.as_str(),
                &d.effective_risk,
                d.trace_context.as_deref(),
            );
            let result = session.apply(&script).instrument(span.clone()).await;
            lock_wait(None);
            span.record(
                "sluice.outcome",
                match &result {
                    Ok(r) if r.error.is_none() => "applied",
                    Ok(_) => "failed",
                    Err(_) => "interrupted",
                },
            );
            let in_steps = !session.runs_in_one_transaction(&script);
            let report = match result {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(deployment = %d.id, error = %e, "target error while applying");
                    match self.after_apply_error(session, e, m, in_steps).await {
                        AfterError::Applied(how) => {
                            d.state = d.state.on(DeploymentEvent::Succeed)?;
                            d.error = None;
                            d.transactional = Some(!in_steps);
                            d.last_action = Some(LastAction::Apply);
                            d.applied_statements = None;
                            d.finished_at = Some(self.now());
                            d.updated_at = self.now();
                            applied += 1;
                            let audit = self.audit(
                                d,
                                "applied",
                                serde_json::json!({"reconciled": how, "checksum": m.checksum}),
                            );
                            send(sender, d.clone(), Vec::new(), vec![audit]).await?;
                        }
                        AfterError::Failed(message, applied_statements) => {
                            d.state = d.state.on(DeploymentEvent::Fail)?;
                            d.transactional = Some(!in_steps);
                            d.last_action = Some(LastAction::Apply);
                            d.applied_statements = applied_statements;
                            d.finished_at = Some(self.now());
                            d.updated_at = self.now();
                            d.error = Some(message);
                            failed = Some(d.id.clone());
                            let audit = self.audit(
                                d,
                                "failed",
                                serde_json::json!({"error": d.error, "checksum": m.checksum}),
                            );
                            send(sender, d.clone(), Vec::new(), vec![audit]).await?;
                        }
                        AfterError::Unreachable(message) => {
                            // Nothing of it committed (the history does not have it, or could
                            // not be read: the next round reconciles from it). It goes back
                            // to the queue; the round reports the target unavailable, so the
                            // worker backs off and status shows why.
                            d.state = d.state.on(DeploymentEvent::Requeue)?;
                            d.updated_at = self.now();
                            let audit = self.audit(
                                d,
                                "requeued",
                                serde_json::json!({"reason": format!("the target became unreachable while the script ran: {message}")}),
                            );
                            send(sender, d.clone(), Vec::new(), vec![audit]).await?;
                            unreachable = Some(message);
                        }
                    }
                    if unreachable.is_some() {
                        stop_reason = Some("the target became unreachable");
                    }
                    // Failed: the next one stops for "an earlier deployment failed"; applied
                    // after all: the run goes on.
                    continue;
                }
            };
            let mut logs: Vec<LogRow> = Vec::new();
            if let Some(path) = &backup {
                logs.push(self.log(d, &format!("backup taken before this run: {path}")));
            }
            logs.extend(report.log.iter().map(|l| self.log_line(d, l)));
            d.execution_ms = Some(report.execution_ms);
            d.transactional = Some(report.transactional);
            d.finished_at = Some(self.now());
            d.updated_at = self.now();
            d.last_action = Some(LastAction::Apply);
            d.applied_statements = report.statements_applied;
            let audit = match &report.error {
                None => {
                    d.state = d.state.on(DeploymentEvent::Succeed)?;
                    d.error = None;
                    applied += 1;
                    let mut detail = serde_json::json!({"execution_ms": report.execution_ms, "transactional": report.transactional, "checksum": m.checksum});
                    if let Some(earlier) = ahead_of.get(&index) {
                        d.out_of_order = true;
                        detail["out_of_order"] = serde_json::json!(true);
                        detail["ahead_of"] = serde_json::json!(earlier);
                    }
                    self.audit(d, "applied", detail)
                }
                Some(message) => {
                    d.state = d.state.on(DeploymentEvent::Fail)?;
                    d.error = Some(message.clone());
                    failed = Some(d.id.clone());
                    self.audit(
                        d,
                        "failed",
                        serde_json::json!({"error": message, "checksum": m.checksum}),
                    )
                }
            };
            send(sender, d.clone(), logs, vec![audit]).await?;
        }
        if let Some(message) = unreachable
            && applied == 0
            && rolled_back == 0
        {
            return Ok(Outcome::TargetUnavailable(message));
        }
        Ok(Outcome::Worked {
            applied,
            rolled_back,
            failed,
        })
    }

    /// What became of a deployment whose apply ended in an error instead of a report. A
    /// refusal on a session that still works (Sluice's history write after the script dropped
    /// or altered the table) is the script's failure. A lost session is looked into with a new
    /// one: if the target cannot be reached, the deployment is retried later (with backoff);
    /// if it can, the target's history decides: applied if it records the script as applied
    /// (or every statement of it done), otherwise the script's failure: the session ended
    /// while its statement ran (`pg_terminate_backend` of its own backend, a statement that
    /// leaves the protocol out of step) with the target up. A script run statement by
    /// statement that is cut off part-way halts as interrupted, as it always has.
    async fn after_apply_error(
        &self,
        session: &mut target::TargetSession,
        error: target::TargetError,
        m: &MigrationRow,
        in_steps: bool,
    ) -> AfterError {
        let interrupted = |e: &dyn std::fmt::Display| {
            format!(
                "interrupted while the script ran statement by statement ({e}); the statements before the interruption stay applied and the target's sluice_schema_history records how many. Retry resumes after them; or roll back, or cancel"
            )
        };
        if !error.session_lost() {
            return AfterError::Failed(
                if in_steps {
                    interrupted(&error)
                } else {
                    format!("{error}")
                },
                None,
            );
        }
        let fresh = match target::open(&self.settings(), &self.owner).await {
            Ok(fresh) => fresh,
            Err(reopen) => {
                return if in_steps {
                    AfterError::Failed(interrupted(&error), None)
                } else {
                    AfterError::Unreachable(format!("{error}; reconnecting: {reopen}"))
                };
            }
        };
        std::mem::replace(session, fresh).close().await;
        let entry = match session.history().await {
            Ok(history) => history.get(&m.id).cloned(),
            Err(e) => {
                return if in_steps {
                    AfterError::Failed(interrupted(&error), None)
                } else {
                    AfterError::Unreachable(format!("{error}; reading its history: {e}"))
                };
            }
        };
        let ours = entry.as_ref().filter(|e| e.checksum == m.checksum);
        if ours.is_some_and(|e| e.success) {
            return AfterError::Applied(
                "the session ended after the script's commit; the target's sluice_schema_history records it as applied",
            );
        }
        if ours.is_some_and(|e| e.all_statements_done())
            && session.mark_complete(&m.id).await.is_ok()
        {
            return AfterError::Applied(
                "the session ended after the script's last statement; the target's sluice_schema_history records every statement as done",
            );
        }
        if in_steps {
            // The fresh session read the history: the count of statements applied is known.
            AfterError::Failed(
                interrupted(&error),
                ours.map(target::HistoryEntry::applied_statements),
            )
        } else {
            AfterError::Failed(
                format!(
                    "{error}\n  the target is reachable, so the script is taken as the cause (a statement that ends its own session, or that Sluice cannot run); its transaction never committed, nothing of it is applied"
                ),
                None,
            )
        }
    }

    /// Takes the backup the environment asks for before it changes: the file's path, or `None`
    /// when the environment does not require one. An error stops the round: nothing runs
    /// without the backup it was promised.
    async fn backup_if_required(
        &self,
        session: &mut target::TargetSession,
    ) -> Result<Option<String>, String> {
        if !self.environment.backup_required {
            return Ok(None);
        }
        let path = self
            .service
            .take_backup(&self.environment, session)
            .await
            .map_err(|e| format!("backup before apply failed: {e}"))?;
        self.service.prune_backups(&self.environment);
        Ok(Some(path))
    }

    /// Passes each log line to watchers as the target produces it.
    fn observer(&self, d: &DeploymentRow) -> impl Fn(&target::LogLine) + Send + Sync + use<> {
        let events = self.service.signals.events.clone();
        let clock = self.service.clock.clone();
        let deployment = d.clone();
        move |line: &target::LogLine| {
            events.log(
                &deployment,
                LogView {
                    at: format_millis(millis(clock.now())),
                    level: line.level.clone(),
                    message: line.message.clone(),
                },
            )
        }
    }

    /// Tells environment status who holds the lock a running deployment waits for.
    fn lock_wait_observer(
        &self,
        d: &DeploymentRow,
    ) -> impl Fn(Option<String>) + Send + Sync + use<> {
        let service = self.service.clone();
        let id = d.id.clone();
        move |holder: Option<String>| {
            let at = millis(service.clock.now());
            service.signals.report_lock_wait(&id, holder, at);
        }
    }

    fn log(&self, d: &DeploymentRow, message: &str) -> LogRow {
        LogRow {
            deployment_id: d.id.clone(),
            at: self.now(),
            level: "info".into(),
            message: message.into(),
        }
    }

    fn log_line(&self, d: &DeploymentRow, line: &target::LogLine) -> LogRow {
        LogRow {
            deployment_id: d.id.clone(),
            at: self.now(),
            level: line.level.clone(),
            message: line.message.clone(),
        }
    }
}

async fn send(
    sender: &mpsc::Sender<Record>,
    deployment: DeploymentRow,
    logs: Vec<LogRow>,
    audits: Vec<AuditRow>,
) -> Result<(), ServiceError> {
    sender
        .send(Record {
            deployment,
            logs,
            audits,
        })
        .await
        .map_err(|_| ServiceError::Unexpected(anyhow::anyhow!("the outcome recorder stopped")))
}

/// Writes outcomes to the state store, as many per commit as have piled up.
async fn record_outcomes(
    service: Service,
    mut receiver: mpsc::Receiver<Record>,
) -> Result<(), ServiceError> {
    let store = &service.store;
    let batch_size = service.config.settings.worker.record_batch_size.max(1);
    let mut pending = Vec::with_capacity(batch_size);
    while receiver.recv_many(&mut pending, batch_size).await > 0 {
        let mut tx = store.begin().await?;
        let mut committed = Vec::with_capacity(pending.len());
        for mut record in pending.drain(..) {
            // The outcome's write to the state store, in the deployment's trace.
            let d = &record.deployment;
            let span = crate::telemetry::traces::deployment_span(
                "record",
                &d.migration_id,
                &d.environment,
                &d.effective_risk,
                d.trace_context.as_deref(),
            );
            span.record("sluice.outcome", d.state.as_str());
            write_record(&service, &mut tx, &mut record)
                .instrument(span)
                .await?;
            committed.push(record);
        }
        tx.commit().await?;
        service.events_written();
        for record in &committed {
            service.signals.events.state(
                &record.deployment,
                format_millis(record.deployment.updated_at),
            );
        }
        committed.clear();
    }
    Ok(())
}

/// Writes one outcome (the deployment, its log lines, its audit records with their events) in
/// the recorder's transaction.
async fn write_record(
    service: &Service,
    tx: &mut crate::store::Tx,
    record: &mut Record,
) -> Result<(), ServiceError> {
    service
        .store
        .update_deployment(&mut *tx, &mut record.deployment)
        .await?;
    for log in &record.logs {
        service.store.append_log(&mut *tx, log).await?;
    }
    // Requeued deployments (Queued) announce nothing; applied, failed and rolled back
    // ones do, on the record's last audit record.
    let at = record.deployment.updated_at;
    let event = service
        .notify_state(&mut *tx, &record.deployment, at, "sluice", None, None)
        .await?;
    if !event.is_empty() && record.audits.is_empty() {
        record.audits.push(AuditRow {
            id: 0,
            at,
            actor: "sluice".into(),
            action: record.deployment.state.to_string(),
            environment: Some(record.deployment.environment.clone()),
            migration_id: Some(record.deployment.migration_id.clone()),
            deployment_id: Some(record.deployment.id.clone()),
            detail: "{}".into(),
            events: None,
        });
    }
    if let Some(last) = record.audits.last_mut() {
        last.events = events_column(event.as_slice())?;
    }
    for audit in &record.audits {
        service.store.insert_audit(&mut *tx, audit).await?;
    }
    Ok(())
}
