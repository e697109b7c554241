//! Reads: migrations, deployments and the audit trail, as views.

use super::*;

impl Service {
    pub async fn migration(&self, id: &str) -> Result<MigrationView> {
        let parsed: MigrationId = id.parse()?;
        let mut conn = self.store.conn().await?;
        let migration = self
            .store
            .migration(&mut conn, parsed.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no migration \"{id}\"")))?;
        let deployments = self
            .store
            .deployments_of_migration(&mut conn, &migration.id)
            .await?;
        let mut views = Vec::new();
        // Report deployments in promotion order.
        for env in &self.config.environments {
            if let Some(d) = deployments
                .iter()
                .find(|d| d.environment == env.name.as_str())
            {
                let approvals = self.store.approvals(&mut conn, &d.id).await?;
                views.push(self.deployment_view(d, &migration, &approvals)?);
            }
        }
        let kept = self
            .store
            .migration_versions(&mut conn, &migration.id)
            .await?;
        // The audit trail says where replaced versions were approved or applied, and why a
        // deployment was rejected: read it only when there is one of those to tell (a fresh
        // migration, as every submission answers, has neither; this read cost submissions
        // about a third of their throughput).
        let trail = if kept.is_empty()
            && !deployments
                .iter()
                .any(|d| d.state == DeploymentState::Rejected)
        {
            ReviewTrail::default()
        } else {
            self.review_trail(&mut conn, &migration.id).await?
        };
        for view in &mut views {
            view.rejection = trail.rejections.get(&view.id).cloned();
        }
        let checksum = migration.checksum.clone();
        let mut view = MigrationView::new(migration, views)?;
        view.previous_versions = trail.previous_versions(kept, &checksum);
        Ok(view)
    }

    /// What the audit trail says of a migration's reviews: the checksums approved and applied
    /// in each environment, the checksums amendments replaced, and each rejection.
    async fn review_trail(
        &self,
        conn: &mut sqlx::AnyConnection,
        migration_id: &str,
    ) -> Result<ReviewTrail> {
        let records = self
            .store
            .audit(
                conn,
                &AuditFilter {
                    migration_id: Some(migration_id.to_owned()),
                    limit: 100_000,
                    ..AuditFilter::default()
                },
            )
            .await?;
        let mut trail = ReviewTrail::default();
        for record in records {
            let detail: serde_json::Value =
                serde_json::from_str(&record.detail).unwrap_or_default();
            let text = |key: &str| detail.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            let environment = record.environment.clone().unwrap_or_default();
            match record.action.as_str() {
                "approval_recorded" | "applied" => {
                    if let Some(checksum) = text("checksum") {
                        let places = trail.seen.entry(checksum).or_default();
                        let list = if record.action == "applied" {
                            &mut places.1
                        } else {
                            &mut places.0
                        };
                        if !list.contains(&environment) {
                            list.push(environment);
                        }
                    }
                }
                "amended" => {
                    if let Some(old) = text("old_checksum") {
                        trail.replaced.push((old, record.at, record.actor.clone()));
                    }
                }
                "rejected" => {
                    if let Some(deployment) = record.deployment_id.clone() {
                        trail.rejections.insert(
                            deployment,
                            RejectionView {
                                by: record.actor.clone(),
                                reason: text("comment").unwrap_or_default(),
                                at: format_millis(record.at),
                            },
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(trail)
    }

    pub async fn list_migrations(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<MigrationSummary>> {
        let mut conn = self.store.conn().await?;
        let rows = self
            .store
            .list_migrations(&mut conn, limit.clamp(1, 500), before)
            .await?;
        let mut out = Vec::new();
        for m in rows {
            let deployments = self
                .store
                .deployments_of_migration(&mut conn, &m.id)
                .await?;
            let states: BTreeMap<String, DeploymentState> = deployments
                .into_iter()
                .map(|d| (d.environment, d.state))
                .collect();
            out.push(MigrationSummary::new(m, states));
        }
        Ok(out)
    }

    /// A deployment and its migration, read (not for a change): 422 for a malformed id, 404
    /// for an unknown one.
    pub(super) async fn read_deployment(
        &self,
        conn: &mut sqlx::AnyConnection,
        id: &str,
    ) -> Result<(DeploymentRow, MigrationRow)> {
        domain::parse_deployment_id(id)?;
        let d = self
            .store
            .deployment(conn, id, false)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no deployment \"{id}\"")))?;
        let migration = self
            .store
            .migration(conn, &d.migration_id)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!("no migration \"{}\"", d.migration_id))
            })?;
        Ok((d, migration))
    }

    pub async fn deployment(&self, id: &str) -> Result<DeploymentView> {
        let mut conn = self.store.conn().await?;
        let (d, migration) = self.read_deployment(&mut conn, id).await?;
        let approvals = self.store.approvals(&mut conn, id).await?;
        let mut view = self.deployment_view(&d, &migration, &approvals)?;
        view.reviews = self
            .store
            .reviews(&mut conn, id)
            .await?
            .into_iter()
            .map(ReviewView::from)
            .collect();
        view.review_owed = view.reviews.iter().any(|r| r.reviewer.is_none());
        if d.state == DeploymentState::Rejected {
            view.rejection = self
                .review_trail(&mut conn, &d.migration_id)
                .await?
                .rejections
                .remove(id);
        }
        self.attach_checks(&mut conn, std::slice::from_mut(&mut view))
            .await?;
        view.log = Some(
            self.store
                .logs(&mut conn, id)
                .await?
                .into_iter()
                .map(LogView::from)
                .collect(),
        );
        Ok(view)
    }

    pub(super) fn deployment_view(
        &self,
        d: &DeploymentRow,
        migration: &MigrationRow,
        approvals: &[ApprovalRow],
    ) -> Result<DeploymentView> {
        let policy = self.policy_for(d)?;
        let records = approval_records(approvals)?;
        let progress = policy.progress(&records, &migration.checksum);
        Ok(DeploymentView::new(
            d, migration, approvals, policy, &progress,
        ))
    }

    pub async fn audit_trail(&self, filter: AuditFilter) -> Result<Vec<AuditView>> {
        for (name, value) in [
            ("environment", &filter.environment),
            ("migration_id", &filter.migration_id),
            ("actor", &filter.actor),
        ] {
            if let Some(value) = value {
                domain::text::field(name, value, domain::text::NAME)?;
            }
        }
        if let Some(env) = &filter.environment {
            self.environment(env)?;
        }
        let mut conn = self.store.conn().await?;
        let rows = self.store.audit(&mut conn, &filter).await?;
        Ok(rows.into_iter().map(AuditView::from).collect())
    }

    /// A page of a deployment's log (at most `limit` lines, 1 to 5,000, after `after_id`).
    pub async fn deployment_log(
        &self,
        id: &str,
        after_id: Option<i64>,
        limit: Option<i64>,
    ) -> Result<LogPage> {
        domain::parse_deployment_id(id)?;
        let limit = limit.unwrap_or(1_000);
        if !(1..=5_000).contains(&limit) {
            return Err(ServiceError::Invalid(format!(
                "limit: {limit} is out of range; 1 to 5000"
            )));
        }
        let mut conn = self.store.conn().await?;
        if self.store.deployment(&mut conn, id, false).await?.is_none() {
            return Err(ServiceError::NotFound(format!("no deployment \"{id}\"")));
        }
        let rows = self
            .store
            .logs_page(&mut conn, id, after_id.unwrap_or(0), limit + 1)
            .await?;
        let more = rows.len() as i64 > limit;
        let lines: Vec<LogPageLine> = rows
            .into_iter()
            .take(limit as usize)
            .map(|(line_id, row)| LogPageLine {
                id: line_id,
                at: format_millis(row.at),
                level: row.level,
                message: row.message,
            })
            .collect();
        Ok(LogPage {
            deployment_id: id.to_owned(),
            next_after_id: if more {
                lines.last().map(|l| l.id)
            } else {
                None
            },
            lines,
        })
    }
}

/// An RFC 3339 time given by a caller, as Unix milliseconds; the error names the field.
pub fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|e| {
            ServiceError::Invalid(format!(
                "{field}: \"{value}\" is not an RFC 3339 time such as 2026-11-29T10:00:00Z ({e})"
            ))
        })
}

/// `order=asc` (the default: oldest first) or `order=desc`; the error names the field.
pub fn newest_first(order: Option<&str>) -> Result<bool> {
    match order {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ServiceError::Invalid(format!(
            "order: \"{other}\" is neither asc nor desc"
        ))),
    }
}

/// A migration's reviews as its audit trail records them (`Service::review_trail`).
#[derive(Default)]
struct ReviewTrail {
    /// Per checksum: the environments where an approval of it was recorded, and where it
    /// was applied.
    seen: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// The checksums amendments replaced, oldest first: (checksum, when, by whom).
    replaced: Vec<(String, i64, String)>,
    /// Per deployment id: its rejection.
    rejections: BTreeMap<String, RejectionView>,
}

impl ReviewTrail {
    /// The versions amendments replaced, newest first, with their scripts where they are kept
    /// (`kept`, newest first) and where each was approved or applied; not `current`.
    fn previous_versions(
        mut self,
        kept: Vec<crate::store::MigrationVersionRow>,
        current: &str,
    ) -> Vec<MigrationVersionView> {
        let mut versions: Vec<MigrationVersionView> = Vec::new();
        let mut place = |checksum: &str| self.seen.remove(checksum).unwrap_or_default();
        for row in kept.into_iter().filter(|r| r.checksum != current) {
            let (approved_in, applied_in) = place(&row.checksum);
            versions.push(MigrationVersionView {
                checksum: row.checksum,
                up_sql: Some(row.up_sql),
                down_sql: row.down_sql,
                replaced_at: format_millis(row.replaced_at),
                replaced_by: row.replaced_by,
                approved_in,
                applied_in,
            });
        }
        // Replaced before the scripts of replaced versions were kept: the checksum only.
        let mut unkept: Vec<MigrationVersionView> = Vec::new();
        for (checksum, at, by) in std::mem::take(&mut self.replaced).into_iter().rev() {
            if checksum == current
                || versions
                    .iter()
                    .chain(&unkept)
                    .any(|v| v.checksum == checksum)
            {
                continue;
            }
            let (approved_in, applied_in) = place(&checksum);
            unkept.push(MigrationVersionView {
                checksum,
                up_sql: None,
                down_sql: None,
                replaced_at: format_millis(at),
                replaced_by: by,
                approved_in,
                applied_in,
            });
        }
        versions.extend(unkept);
        versions
    }
}
