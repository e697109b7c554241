//! Restore and reset (issue 10; the legacy framework's `restore` and `reset` verbs). A lead
//! puts an environment's database back as one of the backups Sluice took of it, or (where
//! allowed) empties it so that its queue can be replayed. While it runs the environment is
//! locked (nothing new starts) and the target's runner lock is held (no worker round runs);
//! the state before is kept as a backup first, so that the restore itself can be undone.
//! Then the queue follows the target's history as it now is: what the database no longer
//! holds goes back to the queue, approved, to be applied again only by `migrate`.

use super::*;
use crate::target::TargetSession;
use std::path::{Path, PathBuf};

/// What a restore or a reset did.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct RestoreResult {
    pub environment: String,
    /// restore or reset.
    pub action: String,
    /// The backup restored (restore only).
    pub backup: Option<String>,
    /// The backup of the database as it was just before, if one was taken.
    pub safety_backup: Option<String>,
    /// Migrations the database no longer holds: back in the queue, approved; `migrate`
    /// applies them again.
    pub undone: Vec<String>,
    /// Migrations Sluice had rolled back that the restored database holds: applied again.
    pub reapplied: Vec<String>,
}

impl Service {
    /// Replaces everything in the environment's database with one of its backups.
    pub async fn restore(
        &self,
        caller: &Caller,
        environment: &str,
        backup: &str,
        confirm: &str,
    ) -> Result<RestoreResult> {
        let env = self.environment(environment)?;
        domain::authz::may_lead(&caller.name, &caller.roles, "restore an environment")?;
        domain::text::field("backup", backup, 4_096)?;
        confirmed(env, confirm, "restore")?;
        if backup.trim().is_empty() {
            return Err(ServiceError::Invalid(format!(
                "backup: name the backup to restore (`sluice backups {}` lists them)",
                env.name
            )));
        }
        let listed = self.backups(caller, environment).await?;
        let Some(chosen) = listed.into_iter().find(|b| {
            b.file == backup
                || Path::new(&b.file).file_name().and_then(|n| n.to_str()) == Some(backup)
        }) else {
            return Err(ServiceError::NotFound(format!(
                "backup: {} has no backup \"{backup}\" (only the backups Sluice took of it can be restored; `sluice backups {}` lists them)",
                env.name, env.name
            )));
        };
        if chosen.size_bytes.is_none() {
            return Err(ServiceError::Conflict(format!(
                "backup: {} is gone (removed by hand, or by backup.keep_per_environment); nothing was changed",
                chosen.file
            )));
        }
        self.replace(caller, env, Some(PathBuf::from(chosen.file)))
            .await
    }

    /// Empties the environment's database (where `allow_reset`), so that its queue can be
    /// replayed from the start.
    pub async fn reset(
        &self,
        caller: &Caller,
        environment: &str,
        confirm: &str,
    ) -> Result<RestoreResult> {
        let env = self.environment(environment)?;
        domain::authz::may_lead(&caller.name, &caller.roles, "reset an environment")?;
        confirmed(env, confirm, "reset")?;
        if !env.allow_reset {
            return Err(ServiceError::Forbidden(format!(
                "{} may not be reset: only development may by default; set environments.{}.migration.allow_reset: true in environments.yml to allow it",
                env.name, env.name
            )));
        }
        self.replace(caller, env, None).await
    }

    async fn replace(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
        backup: Option<PathBuf>,
    ) -> Result<RestoreResult> {
        let verb = if backup.is_some() { "restore" } else { "reset" };
        let mut session = self
            .open_target(env, &format!("{verb}:{}", caller.name), verb)
            .await?;
        let result = self
            .replace_on(caller, env, &mut session, backup.as_deref(), verb)
            .await;
        session.close().await;
        result
    }

    async fn replace_on(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
        session: &mut TargetSession,
        backup: Option<&Path>,
        verb: &str,
    ) -> Result<RestoreResult> {
        // The runner lock is ours: no worker round runs. Nothing may be half-way either.
        let our_lock = self.lock_for(caller, env, backup, verb).await?;
        let lock = our_lock.as_ref();
        let unlock = |reason: &'static str| async move {
            if let Some(lock) = lock {
                self.release_lock(env, lock, reason).await;
            }
        };
        let safety_backup = if backup.is_some() || env.backup_required {
            match self.take_backup(env, session).await {
                Ok(path) => Some(path),
                Err(e) => {
                    unlock("the backup before it failed").await;
                    return Err(ServiceError::Unavailable(format!(
                        "{verb} of {}: the backup of the database as it is failed, so nothing was changed: {e}",
                        env.name
                    )));
                }
            }
        } else {
            None
        };
        let settings = crate::target::TargetSettings::for_environment(env);
        let done = match backup {
            Some(file) => {
                session
                    .restore(file, &settings, &self.config.settings.backup)
                    .await
            }
            None => session.reset().await,
        };
        if let Err(e) = done {
            let atomic = session.restore_is_atomic();
            if atomic {
                unlock("it failed and changed nothing").await;
            }
            let stays = if atomic || our_lock.is_none() {
                String::new()
            } else {
                format!(
                    "; {} stays locked: {verb} again, or look at the database and unlock it",
                    env.name
                )
            };
            let kept = safety_backup
                .as_ref()
                .map(|p| format!("; the database as it was before is in {p}"))
                .unwrap_or_default();
            return Err(ServiceError::Unavailable(format!(
                "{verb} of {}: {e}{kept}{stays}",
                env.name
            )));
        }
        // The target's history, as the backup holds it (nothing, after a reset).
        let history = match backup {
            Some(_) => session
                .history()
                .await
                .map_err(|e| super::drift::target_unavailable(env, verb, e))?,
            None => Default::default(),
        };
        let (undone, reapplied) = self
            .reconcile(
                caller,
                env,
                &history,
                backup,
                safety_backup.as_deref(),
                verb,
            )
            .await?;
        match session.schema_snapshot().await {
            Ok(snapshot) => self.reset_reference(env.name.as_str(), &snapshot).await?,
            Err(e) => {
                tracing::warn!(environment = %env.name, error = %e, "cannot read the schema after the {verb}")
            }
        }
        unlock("done").await;
        self.prune_backups(env);
        self.signals.wake(env.name.as_str());
        Ok(RestoreResult {
            environment: env.name.to_string(),
            action: verb.to_owned(),
            backup: backup.map(|p| p.display().to_string()),
            safety_backup,
            undone,
            reapplied,
        })
    }

    /// Refuses while a deployment is half-way; locks the environment unless it already is
    /// (that lock then stays as it was). The lock taken, if one was.
    /// Refuses while a deployment is half-way; locks the environment unless it already is
    /// (that lock then stays as it was). The lock taken, if one was.
    async fn lock_for(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
        backup: Option<&Path>,
        verb: &str,
    ) -> Result<Option<LockRow>> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let busy = self
            .store
            .deployments_in_states(
                &mut tx,
                env.name.as_str(),
                &[DeploymentState::Running, DeploymentState::RollingBack],
            )
            .await?;
        if let Some(d) = busy.first() {
            return Err(ServiceError::Conflict(format!(
                "{} is {} in {}: wait until it has finished, then {verb}; nothing was changed",
                d.migration_id, d.state, env.name
            )));
        }
        let what = match backup {
            Some(file) => format!(
                "restore from {} in progress",
                file.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => "reset in progress".to_owned(),
        };
        let lock = LockRow {
            environment: env.name.to_string(),
            locked_by: caller.name.to_string(),
            reason: what.clone(),
            locked_at: at,
        };
        // Conditional: a lock already there (or one taken at the same moment) is left as it
        // was.
        if !self.store.insert_lock(&mut tx, &lock).await? {
            return Ok(None);
        }
        let mut entry = audit(
            at,
            caller.name.as_str(),
            "environment_locked",
            None,
            None,
            serde_json::json!({"reason": what}),
        );
        entry.environment = Some(env.name.to_string());
        self.store.insert_audit(&mut tx, &entry).await?;
        tx.commit().await?;
        self.signals
            .lock_generation(env.name.as_str())
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.signals.lock_changed();
        Ok(Some(lock))
    }

    /// Removes the lock a restore took, if it is still that one.
    async fn release_lock(&self, env: &EnvironmentConfig, lock: &LockRow, why: &str) {
        let released = async {
            let mut tx = self.store.begin().await?;
            // Only if it is still that lock, in one conditional delete.
            if self
                .store
                .delete_lock(&mut tx, env.name.as_str(), Some(lock))
                .await?
                .is_none()
            {
                return Ok::<_, ServiceError>(());
            }
            let mut entry = audit(
                self.now(),
                lock.locked_by.as_str(),
                "environment_unlocked",
                None,
                None,
                serde_json::json!({"locked_by": lock.locked_by, "reason": lock.reason, "because": why}),
            );
            entry.environment = Some(env.name.to_string());
            self.store.insert_audit(&mut tx, &entry).await?;
            tx.commit().await?;
            self.signals.lock_changed();
            Ok(())
        };
        if let Err(e) = released.await {
            tracing::warn!(environment = %env.name, error = %e, "cannot remove the lock the restore took; unlock the environment by hand");
        }
    }

    /// Makes the queue follow the target's history: applied deployments it does not record go
    /// back to approved; rolled-back ones it records as applied are applied again. Audited
    /// as one `restored` (or `reset`) entry beside each deployment's change.
    async fn reconcile(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
        history: &std::collections::HashMap<String, crate::target::HistoryEntry>,
        backup: Option<&Path>,
        safety_backup: Option<&str>,
        verb: &str,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let mut deployments = self
            .store
            .deployments_in_states(
                &mut tx,
                env.name.as_str(),
                &[DeploymentState::Applied, DeploymentState::RolledBack],
            )
            .await?;
        deployments.sort_by_key(|d| d.seq);
        let reason = match backup {
            _ if verb == RECONCILE => {
                "the database as a restore or reset that did not finish left it".to_owned()
            }
            Some(file) => format!("the database was restored from {}", file.display()),
            None => "the database was reset".to_owned(),
        };
        let (mut undone, mut reapplied, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        for mut d in deployments {
            let holds = history.get(&d.migration_id).is_some_and(|h| h.success);
            let (list, action) = match (d.state, holds) {
                (DeploymentState::Applied, false) => (&mut undone, "undone_by_restore"),
                (DeploymentState::RolledBack, true) => (&mut reapplied, "reapplied_by_restore"),
                _ => continue,
            };
            list.push(d.migration_id.clone());
            if d.state == DeploymentState::Applied {
                d.started_at = None;
                d.finished_at = None;
                d.execution_ms = None;
            }
            self.commit_change(
                &mut tx,
                &mut d,
                at,
                Change {
                    event: DeploymentEvent::Restore,
                    actor: caller.name.as_str(),
                    action,
                    detail: serde_json::json!({"reason": reason}),
                    events: Vec::new(),
                },
            )
            .await?;
            changed.push(d);
        }
        let mut entry = audit(
            at,
            caller.name.as_str(),
            if verb == RECONCILE {
                "reconciled"
            } else if backup.is_some() {
                "restored"
            } else {
                "reset"
            },
            None,
            None,
            serde_json::json!({
                "backup": backup.map(|p| p.display().to_string()),
                "safety_backup": safety_backup,
                "undone": undone,
                "reapplied": reapplied,
            }),
        );
        entry.environment = Some(env.name.to_string());
        // The channels hear of it as of a lock: a database replaced is news for every operator.
        let kind = if backup.is_some() || verb == RECONCILE {
            crate::domain::notice::NoticeKind::Restored
        } else {
            crate::domain::notice::NoticeKind::Reset
        };
        let mut draft = notifications::Draft::new(kind, caller.name.as_str());
        draft.roles = vec![Role::DataOpsLead, Role::Dba];
        let mut note = match backup {
            _ if verb == RECONCILE => "a restore or reset did not finish (its daemon stopped); on unlocking, the queue follows the database as it was left".to_owned(),
            Some(path) => format!(
                "from the backup {}",
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            ),
            None => "everything dropped, its migration history included".to_owned(),
        };
        if let Some(safety) = safety_backup {
            note.push_str(&format!("; the database as it was is kept as {safety}"));
        }
        if !undone.is_empty() {
            note.push_str(&format!(
                "; back to approved, for `sluice migrate {}`: {}",
                env.name,
                undone.join(", ")
            ));
        }
        if !reapplied.is_empty() {
            note.push_str(&format!("; applied again: {}", reapplied.join(", ")));
        }
        draft.note = Some(note);
        let events = self.notify_environment(env.name.as_str(), at, draft);
        let entry = notifications::carrying(entry, events.as_slice())?;
        self.store.insert_audit(&mut tx, &entry).await?;
        tx.commit().await?;
        self.events_written();
        self.publish(&changed);
        tracing::info!(environment = %env.name, undone = undone.len(), reapplied = reapplied.len(), "{verb} done");
        Ok((undone, reapplied))
    }
}

/// The verb of making the queue follow a database an unfinished restore or reset left.
const RECONCILE: &str = "reconcile";

/// Whether a lock is the one a restore or reset takes while it runs (`lock_for`'s reason).
pub(super) fn left_by_replace(reason: &str) -> bool {
    reason.ends_with(" in progress")
        && (reason.starts_with("restore from ") || reason == "reset in progress")
}

impl Service {
    /// A restore or reset whose daemon stopped part-way left its lock, and maybe a database
    /// replaced while the queue still says `applied` for what it lost. Before that lock is
    /// lifted, the queue follows the database's history as it is (a no-op when the replay had
    /// not begun). The target's runner lock is taken: a restore still running refuses this.
    pub(super) async fn reconcile_left_by_replace(
        &self,
        caller: &Caller,
        env: &EnvironmentConfig,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut session = self
            .open_target(env, &format!("unlock:{}", caller.name), "unlock")
            .await?;
        let done = async {
            let history = session
                .history()
                .await
                .map_err(|e| super::drift::target_unavailable(env, "unlock", e))?;
            let changed = self
                .reconcile(caller, env, &history, None, None, RECONCILE)
                .await?;
            if let Ok(snapshot) = session.schema_snapshot().await {
                self.reset_reference(env.name.as_str(), &snapshot).await?;
            }
            Ok(changed)
        }
        .await;
        session.close().await;
        done
    }
}

/// The caller must type the environment's name: replacing a database is not done by a
/// stray call.
fn confirmed(env: &EnvironmentConfig, confirm: &str, verb: &str) -> Result<()> {
    if confirm != env.name.as_str() {
        return Err(ServiceError::Invalid(format!(
            "confirm: a {verb} replaces everything in the database of {}; confirm with the environment's name (\"confirm\": \"{}\", or --confirm on the command line)",
            env.name, env.name
        )));
    }
    Ok(())
}
