//! The backups the workers took before changing an environment (`backup_required`), as the
//! audit records them: where each file is, how large, and which deployment it preceded.

use super::*;

#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct BackupView {
    pub file: String,
    pub taken_at: String,
    /// Absent when the file is gone (removed by hand, or by retention).
    pub size_bytes: Option<u64>,
    /// The first deployment the worker started (or rolled back) after taking it.
    pub preceded: Option<String>,
}

impl Service {
    /// Takes a full backup of the environment's database into the backup folder, named after
    /// the environment and the time, and records it in the audit (`backup_taken`). The
    /// file's path.
    pub async fn take_backup(
        &self,
        env: &EnvironmentConfig,
        session: &mut crate::target::TargetSession,
    ) -> std::result::Result<String, String> {
        self.take_backup_as("sluice", env, session).await
    }

    /// `take_backup`, audited as `actor`'s.
    async fn take_backup_as(
        &self,
        actor: &str,
        env: &EnvironmentConfig,
        session: &mut crate::target::TargetSession,
    ) -> std::result::Result<String, String> {
        let settings = &self.config.settings.backup;
        let now = self.clock.now();
        let file = std::path::Path::new(&settings.dir)
            .join(env.name.as_str())
            .join(format!(
                "{}-{}.{}",
                env.name,
                now.format("%Y%m%dT%H%M%S%.3fZ"),
                backup_extension(env)
            ));
        let started = std::time::Instant::now();
        let taken = session
            .backup(
                &file,
                &crate::target::TargetSettings::for_environment(env),
                settings,
            )
            .await;
        crate::telemetry::backup_done(
            env.name.as_str(),
            started.elapsed().as_secs_f64(),
            taken.is_ok(),
        );
        taken.map_err(|e| e.to_string())?;
        let path = file.display().to_string();
        tracing::info!(environment = %env.name, %path, "backup taken");
        let mut entry = audit(
            millis(now),
            actor,
            "backup_taken",
            None,
            None,
            serde_json::json!({"file": path}),
        );
        entry.environment = Some(env.name.to_string());
        let recorded = async {
            let mut tx = self.store.begin().await?;
            self.store.insert_audit(&mut tx, &entry).await?;
            tx.commit().await?;
            Ok::<_, ServiceError>(())
        };
        recorded
            .await
            .map_err(|e| format!("backup taken ({path}) but not recorded: {e}"))?;
        Ok(path)
    }

    /// Removes the environment's oldest backups beyond `backup.keep_per_environment` (the
    /// names sort by the time they were taken; only files named as Sluice names them are
    /// touched).
    pub fn prune_backups(&self, env: &EnvironmentConfig) {
        let keep = self.config.settings.backup.keep_per_environment;
        if keep == 0 {
            return;
        }
        let dir = std::path::Path::new(&self.config.settings.backup.dir).join(env.name.as_str());
        let prefix = format!("{}-", env.name);
        let suffix = format!(".{}", backup_extension(env));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(keep);
        for name in names.into_iter().take(excess) {
            match std::fs::remove_file(dir.join(&name)) {
                Ok(()) => {
                    tracing::info!(environment = %env.name, file = %name, "old backup removed (backup.keep_per_environment)")
                }
                Err(e) => {
                    tracing::warn!(environment = %env.name, file = %name, error = %e, "cannot remove an old backup")
                }
            }
        }
    }

    /// Takes a backup of the environment's database now, at an operator's request (the legacy
    /// backup-database.sh, and `migrate --backup`): under the target's runner lock, so no
    /// deployment starts while it runs (one running: 409, try again after). Kept and pruned
    /// like the workers' backups; restorable like them.
    pub async fn backup_now(&self, caller: &Caller, environment: &str) -> Result<BackupView> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "back up")?;
        let at = self.now();
        let mut session = self
            .open_target(env, &format!("backup:{}", caller.name), "backup")
            .await?;
        let taken = self
            .take_backup_as(caller.name.as_str(), env, &mut session)
            .await;
        session.close().await;
        let file = taken.map_err(|e| {
            ServiceError::Unavailable(format!("backup of {}: {e}; nothing was changed", env.name))
        })?;
        self.prune_backups(env);
        Ok(BackupView {
            size_bytes: std::fs::metadata(&file).ok().map(|m| m.len()),
            file,
            taken_at: format_millis(at),
            preceded: None,
        })
    }

    /// An environment's backups, newest first (operators).
    pub async fn backups(&self, caller: &Caller, environment: &str) -> Result<Vec<BackupView>> {
        let env = self.environment(environment)?;
        self.require_operator(caller, env, "list the backups of")?;
        let mut conn = self.store.conn().await?;
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .store
                .audit(
                    &mut conn,
                    &crate::store::AuditFilter {
                        environment: Some(env.name.to_string()),
                        migration_id: None,
                        actor: None,
                        after_id: Some(after),
                        limit: 5_000,
                        ..Default::default()
                    },
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() == 5_000;
            rows.extend(page);
            if !full {
                break;
            }
        }
        let mut views = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if row.action != "backup_taken" {
                continue;
            }
            let detail: serde_json::Value =
                serde_json::from_str(&row.detail).unwrap_or(serde_json::Value::Null);
            let Some(file) = detail["file"].as_str() else {
                continue;
            };
            let preceded = rows[i + 1..]
                .iter()
                .find(|r| {
                    matches!(
                        r.action.as_str(),
                        "started" | "rollback_started" | "rolling_back"
                    )
                })
                .and_then(|r| r.deployment_id.clone());
            views.push(BackupView {
                file: file.to_owned(),
                taken_at: format_millis(row.at),
                size_bytes: std::fs::metadata(file).ok().map(|m| m.len()),
                preceded,
            });
        }
        views.reverse();
        Ok(views)
    }
}

/// The backup file's extension: what kind of dump it is.
fn backup_extension(env: &EnvironmentConfig) -> &'static str {
    let url = env.url.expose();
    if url.starts_with("sqlite:") {
        "sqlite"
    } else if crate::target::is_mysql(url) {
        "sql"
    } else {
        "dump"
    }
}
