//! The backups the workers took before changing an environment (`backup_required`), as the
//! audit records them: where each file is, how large, and which deployment it preceded.

use super::*;

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct BackupView {
    pub file: String,
    pub taken_at: String,
    /// Absent when the file is gone (removed by hand, or by retention).
    pub size_bytes: Option<u64>,
    /// The first deployment the worker started (or rolled back) after taking it.
    pub preceded: Option<String>,
}

impl Service {
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
