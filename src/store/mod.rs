//! The state store: migrations, deployments, approvals, locks, logs and the audit trail, on
//! SQLite (embedded default) or PostgreSQL (several replicas), through sqlx's `Any` driver so
//! that one set of queries serves both. Owns the store's schema (migrations/ at the repository
//! root) and every query against it; no other module writes SQL for the state store. Holds no
//! rules: it stores what the service decided.

mod notifications;

pub use notifications::{ChannelStats, DeliveryRecord, DeliveryResult, OutboxRow, ReviewRow};

use crate::domain::{DeploymentState, LastAction};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Row};
use std::str::FromStr;

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("state store holds an unreadable value: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Setup(String),
    /// A conditional write found the row changed since it was read.
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Embedded schema migrations of the store, per backend, in order.
const SQLITE_SCHEMA: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_authors_versions.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_notifications.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_events_on_audit.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_trace_context.sql"),
    ),
    (6, include_str!("../../migrations/sqlite/0006_dry_runs.sql")),
    (
        7,
        include_str!("../../migrations/sqlite/0007_schema_snapshots.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_rollback_tests.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_migration_versions.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_undo_sql.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_applied_statements.sql"),
    ),
];
const POSTGRES_SCHEMA: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_authors_versions.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_notifications.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_events_on_audit.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_trace_context.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_dry_runs.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_schema_snapshots.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_rollback_tests.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_migration_versions.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_undo_sql.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_applied_statements.sql"),
    ),
];

/// An environment's reference schema (`snapshot`: the target's `SchemaSnapshot` as JSON) and
/// the drift found against it (`drift`: the differences as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    pub environment: String,
    pub at: i64,
    pub hash: String,
    pub snapshot: String,
    pub drift_found_at: Option<i64>,
    pub drift_hash: Option<String>,
    pub drift: Option<String>,
}

/// The checks kept with a deployment, the latest of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    DryRun,
    RollbackTest,
}

impl CheckKind {
    fn table(self) -> &'static str {
        match self {
            CheckKind::DryRun => "dry_runs",
            CheckKind::RollbackTest => "rollback_tests",
        }
    }
}

/// A deployment's latest check of a kind; `report` is the target's report (`DryRunReport`,
/// `RollbackTestReport`) as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    pub deployment_id: String,
    pub at: i64,
    pub actor: String,
    pub checksum: String,
    pub outcome: String,
    pub report: String,
}

#[derive(Clone)]
pub struct Store {
    /// Every write, and on PostgreSQL every read too.
    pool: AnyPool,
    /// SQLite only: read-only connections, which WAL lets run beside the one writer.
    read_pool: Option<AnyPool>,
    backend: Backend,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRow {
    pub id: String,
    pub seq: i64,
    pub kind: String,
    pub description: String,
    pub declared_risk: String,
    pub effective_risk: String,
    pub findings: String,
    pub author: String,
    /// Everyone who wrote any version of the scripts (the submitter first).
    pub authors: Vec<String>,
    pub ticket: String,
    pub estimated_duration: String,
    pub up_sql: String,
    pub down_sql: Option<String>,
    pub depends_on: Vec<String>,
    pub checksum: String,
    pub submitted_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRow {
    pub id: String,
    pub migration_id: String,
    pub seq: i64,
    pub environment: String,
    pub state: DeploymentState,
    pub effective_risk: String,
    pub emergency_reason: Option<String>,
    pub deadline_at: Option<i64>,
    pub error: Option<String>,
    /// What the worker last ran for it on its target (None before the first run).
    pub last_action: Option<LastAction>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub execution_ms: Option<i64>,
    pub transactional: Option<bool>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every write; a write names the version it read and fails if it moved.
    pub version: i64,
    /// An emergency deployment applied ahead of earlier deployments that were waiting.
    pub out_of_order: bool,
    /// The W3C traceparent of the API call that submitted or released it (traces on).
    pub trace_context: Option<String>,
    /// The down script of the version applied here, kept by an amendment: the worker rolls
    /// that version back with it, then the deployment goes back to approval (schema v10).
    pub undo_sql: Option<String>,
    /// For a script run statement by statement that stopped part-way (failed, or cancelled
    /// since): how many of its statements are applied on the target. Written by the worker
    /// with the error that describes it, cleared with that error (schema v11); the error text
    /// is for people, this is what the service reads (`lifecycle::partly_applied`).
    pub applied_statements: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    pub deployment_id: String,
    pub approver: String,
    pub role: String,
    pub comment: String,
    pub checksum: String,
    pub approved_at: i64,
}

/// A version of a migration's scripts that an amendment replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationVersionRow {
    pub checksum: String,
    pub up_sql: String,
    pub down_sql: Option<String>,
    pub replaced_at: i64,
    pub replaced_by: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LockRow {
    pub environment: String,
    pub locked_by: String,
    pub reason: String,
    pub locked_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub environment: Option<String>,
    pub migration_id: Option<String>,
    pub deployment_id: Option<String>,
    pub detail: String,
    /// Notification events the change causes (a JSON array), until the notifier fans them
    /// out to the outbox; None when there are none, and once they are fanned out.
    pub events: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub deployment_id: String,
    pub at: i64,
    pub level: String,
    pub message: String,
}

/// Filters for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub environment: Option<String>,
    pub migration_id: Option<String>,
    pub actor: Option<String>,
    pub after_id: Option<i64>,
    /// Only records older than this one (paging newest first).
    pub before_id: Option<i64>,
    /// Only records at or after / at or before these times (Unix milliseconds).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Newest first (the CLI's default); oldest first otherwise (the API's, for paging on).
    pub newest_first: bool,
    pub limit: i64,
}

const MIGRATION_COLUMNS: &str = "id, seq, kind, description, declared_risk, effective_risk, findings, author, ticket, estimated_duration, up_sql, down_sql, depends_on, checksum, submitted_at, updated_at, authors";
const DEPLOYMENT_COLUMNS: &str = "id, migration_id, seq, environment, state, effective_risk, emergency_reason, deadline_at, error, last_action, started_at, finished_at, execution_ms, transactional, created_at, updated_at, version, out_of_order, trace_context, undo_sql, applied_statements";

fn migration_from_row(row: &AnyRow) -> Result<MigrationRow, StoreError> {
    let depends_on: String = row.try_get("depends_on")?;
    let authors: String = row.try_get("authors")?;
    Ok(MigrationRow {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        description: row.try_get("description")?,
        declared_risk: row.try_get("declared_risk")?,
        effective_risk: row.try_get("effective_risk")?,
        findings: row.try_get("findings")?,
        author: row.try_get("author")?,
        authors: serde_json::from_str(&authors)
            .map_err(|e| StoreError::Corrupt(format!("migrations.authors: {e}")))?,
        ticket: row.try_get("ticket")?,
        estimated_duration: row.try_get("estimated_duration")?,
        up_sql: row.try_get("up_sql")?,
        down_sql: row.try_get("down_sql")?,
        depends_on: serde_json::from_str(&depends_on)
            .map_err(|e| StoreError::Corrupt(format!("migrations.depends_on: {e}")))?,
        checksum: row.try_get("checksum")?,
        submitted_at: row.try_get("submitted_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn deployment_from_row(row: &AnyRow) -> Result<DeploymentRow, StoreError> {
    let state: String = row.try_get("state")?;
    let transactional: Option<i64> = row.try_get("transactional")?;
    let out_of_order: i64 = row.try_get("out_of_order")?;
    let last_action: Option<String> = row.try_get("last_action")?;
    Ok(DeploymentRow {
        id: row.try_get("id")?,
        migration_id: row.try_get("migration_id")?,
        seq: row.try_get("seq")?,
        environment: row.try_get("environment")?,
        state: DeploymentState::from_str(&state).map_err(StoreError::Corrupt)?,
        effective_risk: row.try_get("effective_risk")?,
        emergency_reason: row.try_get("emergency_reason")?,
        deadline_at: row.try_get("deadline_at")?,
        error: row.try_get("error")?,
        last_action: last_action
            .as_deref()
            .map(LastAction::from_str)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("deployments.last_action: {e}")))?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        execution_ms: row.try_get("execution_ms")?,
        transactional: transactional.map(|t| t != 0),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        out_of_order: out_of_order != 0,
        trace_context: row.try_get("trace_context")?,
        undo_sql: row.try_get("undo_sql")?,
        applied_statements: row.try_get("applied_statements")?,
    })
}

fn approval_from_row(row: &AnyRow) -> Result<ApprovalRow, StoreError> {
    Ok(ApprovalRow {
        deployment_id: row.try_get("deployment_id")?,
        approver: row.try_get("approver")?,
        role: row.try_get("role")?,
        comment: row.try_get("comment")?,
        checksum: row.try_get("checksum")?,
        approved_at: row.try_get("approved_at")?,
    })
}

impl Store {
    /// Connects and brings the schema up to date. `sqlite://path` files (and their folder) are
    /// created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Setup(format!(
                "store.url: \"{}\" is not a state store this daemon keeps (use sqlite://path or postgres://...)",
                crate::config::redact_url(url)
            )));
        };
        let mut url = url.to_owned();
        if backend == Backend::Sqlite {
            prepare_sqlite_path(&url)?;
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let options = AnyConnectOptions::from_str(&url)?;
        // SQLite allows one writer at a time: one write connection avoids SQLITE_BUSY on lock
        // upgrades, and a pool of read-only connections serves status queries beside it.
        let (connections, read_connections) = match backend {
            Backend::Sqlite if !url.contains(":memory:") => (1, max_connections.max(1)),
            Backend::Sqlite => (1, 0),
            Backend::Postgres => (max_connections.max(1), 0),
        };
        let pool = open_pool(options.clone(), connections, backend, false).await?;
        let mut store = Store {
            pool,
            read_pool: None,
            backend,
        };
        store.apply_schema().await?;
        if read_connections > 0 {
            store.read_pool = Some(open_pool(options, read_connections, backend, true).await?);
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn apply_schema(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Several replicas may start at once: one applies the schema, the others wait.
            sqlx::query("SELECT pg_advisory_lock(7426010001)")
                .execute(&mut *conn)
                .await?;
        }
        let result = self.apply_schema_locked(&mut conn).await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(7426010001)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn apply_schema_locked(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS sluice_store_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM sluice_store_schema")
            .fetch_one(&mut *conn)
            .await?
            .try_get("v")?;
        let current = current.unwrap_or(0);
        let steps = match self.backend {
            Backend::Sqlite => SQLITE_SCHEMA,
            Backend::Postgres => POSTGRES_SCHEMA,
        };
        for (version, sql) in steps.iter().filter(|(v, _)| *v > current) {
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO sluice_store_schema (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(read_pool) = &self.read_pool {
            read_pool.close().await;
        }
        self.pool.close().await;
    }

    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    pub async fn next_migration_seq(&self, tx: &mut Tx) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'migration_seq' RETURNING value",
        )
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get("value")?)
    }

    pub async fn insert_migration(&self, tx: &mut Tx, m: &MigrationRow) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO migrations ({MIGRATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        )))
        .bind(&m.id)
        .bind(m.seq)
        .bind(&m.kind)
        .bind(&m.description)
        .bind(&m.declared_risk)
        .bind(&m.effective_risk)
        .bind(&m.findings)
        .bind(&m.author)
        .bind(&m.ticket)
        .bind(&m.estimated_duration)
        .bind(&m.up_sql)
        .bind(&m.down_sql)
        .bind(serde_json::to_string(&m.depends_on).unwrap_or_else(|_| "[]".into()))
        .bind(&m.checksum)
        .bind(m.submitted_at)
        .bind(m.updated_at)
        .bind(serde_json::to_string(&m.authors).unwrap_or_else(|_| "[]".into()))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Writes a migration's new scripts on condition that it still has the scripts it was
    /// read with (`old_checksum`): of two amendments at once one wins, the other is a
    /// conflict, and no author is lost.
    pub async fn update_migration_scripts(
        &self,
        tx: &mut Tx,
        m: &MigrationRow,
        old_checksum: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE migrations SET up_sql = $2, down_sql = $3, checksum = $4, findings = $5, effective_risk = $6, updated_at = $7, authors = $8 WHERE id = $1 AND checksum = $9",
        )
        .bind(&m.id)
        .bind(&m.up_sql)
        .bind(&m.down_sql)
        .bind(&m.checksum)
        .bind(&m.findings)
        .bind(&m.effective_risk)
        .bind(m.updated_at)
        .bind(serde_json::to_string(&m.authors).unwrap_or_else(|_| "[]".into()))
        .bind(old_checksum)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "migration {} was amended by someone else while this amendment was being handled; nothing was changed: read it again (sluice show {}) and amend that version",
                m.id, m.id
            )));
        }
        Ok(())
    }

    /// Keeps the scripts of a version an amendment replaces (`m` as it was before).
    pub async fn keep_migration_version(
        &self,
        tx: &mut Tx,
        m: &MigrationRow,
        replaced_at: i64,
        replaced_by: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO migration_versions (migration_id, checksum, up_sql, down_sql, replaced_at, replaced_by) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (migration_id, checksum) DO UPDATE SET replaced_at = excluded.replaced_at, replaced_by = excluded.replaced_by",
        )
        .bind(&m.id)
        .bind(&m.checksum)
        .bind(&m.up_sql)
        .bind(&m.down_sql)
        .bind(replaced_at)
        .bind(replaced_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The versions of a migration's scripts that amendments replaced, newest first.
    pub async fn migration_versions(
        &self,
        conn: &mut AnyConnection,
        migration_id: &str,
    ) -> Result<Vec<MigrationVersionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT checksum, up_sql, down_sql, replaced_at, replaced_by FROM migration_versions WHERE migration_id = $1 ORDER BY replaced_at DESC",
        )
        .bind(migration_id)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MigrationVersionRow {
                    checksum: row.try_get("checksum")?,
                    up_sql: row.try_get("up_sql")?,
                    down_sql: row.try_get("down_sql")?,
                    replaced_at: row.try_get("replaced_at")?,
                    replaced_by: row.try_get("replaced_by")?,
                })
            })
            .collect()
    }

    pub async fn migration(
        &self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<Option<MigrationRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(conn)
        .await?;
        row.as_ref().map(migration_from_row).transpose()
    }

    /// Migrations by id, for the worker (one query for a whole queue).
    pub async fn migrations_by_ids(
        &self,
        conn: &mut AnyConnection,
        ids: &[String],
    ) -> Result<Vec<MigrationRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {MIGRATION_COLUMNS} FROM migrations WHERE id IN ({}) ORDER BY seq",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                out.push(migration_from_row(&row)?);
            }
        }
        Ok(out)
    }

    pub async fn list_migrations(
        &self,
        conn: &mut AnyConnection,
        limit: i64,
        before_seq: Option<i64>,
    ) -> Result<Vec<MigrationRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.iter().map(migration_from_row).collect()
    }

    pub async fn insert_deployment(
        &self,
        tx: &mut Tx,
        d: &DeploymentRow,
    ) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        )))
        .bind(&d.id)
        .bind(&d.migration_id)
        .bind(d.seq)
        .bind(&d.environment)
        .bind(d.state.as_str())
        .bind(&d.effective_risk)
        .bind(&d.emergency_reason)
        .bind(d.deadline_at)
        .bind(&d.error)
        .bind(d.last_action.map(LastAction::as_str))
        .bind(d.started_at)
        .bind(d.finished_at)
        .bind(d.execution_ms)
        .bind(d.transactional.map(i64::from))
        .bind(d.created_at)
        .bind(d.updated_at)
        .bind(d.version)
        .bind(i64::from(d.out_of_order))
        .bind(&d.trace_context)
        .bind(&d.undo_sql)
        .bind(d.applied_statements)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Writes every mutable field of a deployment, on condition that the row is still at the
    /// version it was read at; bumps the version in `d`. A row that moved in between is a
    /// conflict: nothing is written, and the caller's transaction should be abandoned.
    pub async fn update_deployment(
        &self,
        conn: &mut AnyConnection,
        d: &mut DeploymentRow,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET state = $2, emergency_reason = $3, deadline_at = $4, error = $5, last_action = $6, started_at = $7, finished_at = $8, execution_ms = $9, transactional = $10, updated_at = $11, effective_risk = $12, out_of_order = $14, trace_context = $15, undo_sql = $16, applied_statements = $17, version = version + 1 WHERE id = $1 AND version = $13",
        )
        .bind(&d.id)
        .bind(d.state.as_str())
        .bind(&d.emergency_reason)
        .bind(d.deadline_at)
        .bind(&d.error)
        .bind(d.last_action.map(LastAction::as_str))
        .bind(d.started_at)
        .bind(d.finished_at)
        .bind(d.execution_ms)
        .bind(d.transactional.map(i64::from))
        .bind(d.updated_at)
        .bind(&d.effective_risk)
        .bind(d.version)
        .bind(i64::from(d.out_of_order))
        .bind(&d.trace_context)
        .bind(&d.undo_sql)
        .bind(d.applied_statements)
        .execute(conn)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "deployment {} changed while this request was being handled (another request or replica got there first); nothing was changed, read it again and retry",
                d.id
            )));
        }
        d.version += 1;
        Ok(())
    }

    /// Marks a queued deployment running for the worker, on condition that it is still queued
    /// and that its migration still has the checksum the worker read (an amendment since then
    /// voids the claim); false otherwise. Bumps the version in `d`.
    pub async fn claim(
        &self,
        tx: &mut Tx,
        d: &mut DeploymentRow,
        checksum: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET state = 'running', updated_at = $2, version = version + 1 WHERE id = $1 AND state = 'queued' AND version = $3 AND (SELECT checksum FROM migrations WHERE migrations.id = deployments.migration_id) = $4",
        )
        .bind(&d.id)
        .bind(at)
        .bind(d.version)
        .bind(checksum)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            d.version += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// One deployment; inside a transaction on PostgreSQL the row is locked until commit, so
    /// concurrent approvals of one deployment are judged one after the other.
    pub async fn deployment(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        lock: bool,
    ) -> Result<Option<DeploymentRow>, StoreError> {
        let lock = if lock { self.for_update() } else { "" };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1{lock}"
        )))
        .bind(id)
        .fetch_optional(conn)
        .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    pub async fn deployments_of_migration(
        &self,
        conn: &mut AnyConnection,
        migration_id: &str,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE migration_id = $1"
        )))
        .bind(migration_id)
        .fetch_all(conn)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Whether the environment has anything for its worker: queued, running or rolling back.
    pub async fn has_work(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM deployments WHERE environment = $1 AND state IN ('queued', 'running', 'rolling_back') LIMIT 1",
        )
        .bind(environment)
        .fetch_optional(conn)
        .await?;
        Ok(row.is_some())
    }

    /// Deployments of an environment in the given states, in id order.
    pub async fn deployments_in_states(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
        states: &[DeploymentState],
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let placeholders: Vec<String> = (0..states.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 AND state IN ({}) ORDER BY seq",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(environment);
        for state in states {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(conn).await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Cancelled deployments of an environment that ran statement by statement (the only ones
    /// that can have left part of their script applied), newest first: the environment status
    /// reads these, not every cancelled deployment there ever was.
    pub async fn cancelled_step_by_step(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 AND state = $2 AND transactional = 0 ORDER BY seq DESC"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(environment)
            .bind(DeploymentState::Cancelled.as_str())
            .fetch_all(conn)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// The states of the given migrations' deployments in one environment.
    pub async fn states_in_environment(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
        migration_ids: &[String],
    ) -> Result<Vec<(String, DeploymentState)>, StoreError> {
        let mut out = Vec::new();
        for chunk in migration_ids.chunks(500) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT migration_id, state FROM deployments WHERE environment = $1 AND migration_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(environment);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                let state: String = row.try_get("state")?;
                out.push((
                    row.try_get("migration_id")?,
                    DeploymentState::from_str(&state).map_err(StoreError::Corrupt)?,
                ));
            }
        }
        Ok(out)
    }

    /// The last deployments applied in an environment, newest first.
    pub async fn last_applied(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
        limit: i64,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 AND state = 'applied' ORDER BY seq DESC LIMIT $2"
        )))
        .bind(environment)
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Every deployment awaiting approval that has a deadline (for reminders).
    pub async fn awaiting_with_deadline(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE state = 'awaiting_approval' AND deadline_at IS NOT NULL ORDER BY seq"
        )))
        .fetch_all(conn)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Deployments still awaiting approval whose deadline is at or before `now`.
    pub async fn overdue(
        &self,
        conn: &mut AnyConnection,
        now: i64,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE state = 'awaiting_approval' AND deadline_at IS NOT NULL AND deadline_at <= $1 ORDER BY seq"
        )))
        .bind(now)
        .fetch_all(conn)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    pub async fn approvals(
        &self,
        conn: &mut AnyConnection,
        deployment_id: &str,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT deployment_id, approver, role, comment, checksum, approved_at FROM approvals WHERE deployment_id = $1 ORDER BY approved_at, approver",
        )
        .bind(deployment_id)
        .fetch_all(conn)
        .await?;
        rows.iter().map(approval_from_row).collect()
    }

    /// The approvals of many deployments, in one query per 500.
    pub async fn approvals_of_many(
        &self,
        conn: &mut AnyConnection,
        deployment_ids: &[String],
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in deployment_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT deployment_id, approver, role, comment, checksum, approved_at FROM approvals WHERE deployment_id IN ({}) ORDER BY approved_at, approver",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                out.push(approval_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Removes every approval of a deployment, returning what was removed (for the audit).
    pub async fn delete_approvals(
        &self,
        tx: &mut Tx,
        deployment_id: &str,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let removed = self.approvals(tx, deployment_id).await?;
        sqlx::query("DELETE FROM approvals WHERE deployment_id = $1")
            .bind(deployment_id)
            .execute(&mut **tx)
            .await?;
        Ok(removed)
    }

    pub async fn insert_approval(&self, tx: &mut Tx, a: &ApprovalRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approvals (deployment_id, approver, role, comment, checksum, approved_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&a.deployment_id)
        .bind(&a.approver)
        .bind(&a.role)
        .bind(&a.comment)
        .bind(&a.checksum)
        .bind(a.approved_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn lock(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
    ) -> Result<Option<LockRow>, StoreError> {
        let row = sqlx::query(
            "SELECT environment, locked_by, reason, locked_at FROM environment_locks WHERE environment = $1",
        )
        .bind(environment)
        .fetch_optional(conn)
        .await?;
        row.map(|row| lock_row(&row)).transpose()
    }

    /// Locks an environment unless it is locked already: one conditional statement, so that of
    /// two concurrent lock requests exactly one inserts (the other gets `false`, never a unique
    /// violation).
    pub async fn insert_lock(&self, tx: &mut Tx, lock: &LockRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO environment_locks (environment, locked_by, reason, locked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (environment) DO NOTHING",
        )
        .bind(&lock.environment)
        .bind(&lock.locked_by)
        .bind(&lock.reason)
        .bind(lock.locked_at)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes an environment's lock (only if it is still `expected`, when given) and returns
    /// the lock removed: of two concurrent unlocks exactly one gets it back.
    pub async fn delete_lock(
        &self,
        tx: &mut Tx,
        environment: &str,
        expected: Option<&LockRow>,
    ) -> Result<Option<LockRow>, StoreError> {
        let row = match expected {
            None => {
                sqlx::query(
                    "DELETE FROM environment_locks WHERE environment = $1 \
                     RETURNING environment, locked_by, reason, locked_at",
                )
                .bind(environment)
                .fetch_optional(&mut **tx)
                .await?
            }
            Some(lock) => {
                sqlx::query(
                    "DELETE FROM environment_locks WHERE environment = $1 AND locked_by = $2 \
                     AND reason = $3 AND locked_at = $4 \
                     RETURNING environment, locked_by, reason, locked_at",
                )
                .bind(environment)
                .bind(&lock.locked_by)
                .bind(&lock.reason)
                .bind(lock.locked_at)
                .fetch_optional(&mut **tx)
                .await?
            }
        };
        row.map(|row| lock_row(&row)).transpose()
    }

    /// Replaces an environment's reference schema (a drift found before stays recorded).
    pub async fn put_snapshot(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
        at: i64,
        hash: &str,
        snapshot: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schema_snapshots (environment, at, hash, snapshot) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (environment) DO UPDATE SET at = EXCLUDED.at, hash = EXCLUDED.hash, snapshot = EXCLUDED.snapshot",
        )
        .bind(environment)
        .bind(at)
        .bind(hash)
        .bind(snapshot)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn snapshot(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        let row = sqlx::query(
            "SELECT environment, at, hash, snapshot, drift_found_at, drift_hash, drift FROM schema_snapshots WHERE environment = $1",
        )
        .bind(environment)
        .fetch_optional(conn)
        .await?;
        row.map(|row| {
            Ok(SnapshotRow {
                environment: row.try_get("environment")?,
                at: row.try_get("at")?,
                hash: row.try_get("hash")?,
                snapshot: row.try_get("snapshot")?,
                drift_found_at: row.try_get("drift_found_at")?,
                drift_hash: row.try_get("drift_hash")?,
                drift: row.try_get("drift")?,
            })
        })
        .transpose()
    }

    /// Records (or, with `None`, clears) the drift found against an environment's reference.
    pub async fn set_drift(
        &self,
        conn: &mut AnyConnection,
        environment: &str,
        drift: Option<(i64, &str, &str)>,
    ) -> Result<(), StoreError> {
        let (at, hash, text) = match drift {
            Some((at, hash, text)) => (Some(at), Some(hash), Some(text)),
            None => (None, None, None),
        };
        sqlx::query(
            "UPDATE schema_snapshots SET drift_found_at = $2, drift_hash = $3, drift = $4 WHERE environment = $1",
        )
        .bind(environment)
        .bind(at)
        .bind(hash)
        .bind(text)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Keeps a deployment's latest check of a kind (replacing the one before).
    pub async fn put_check(
        &self,
        conn: &mut AnyConnection,
        kind: CheckKind,
        run: &CheckRow,
    ) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (deployment_id, at, actor, checksum, outcome, report) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (deployment_id) DO UPDATE SET at = EXCLUDED.at, actor = EXCLUDED.actor, checksum = EXCLUDED.checksum, \
             outcome = EXCLUDED.outcome, report = EXCLUDED.report",
            kind.table()
        )))
        .bind(&run.deployment_id)
        .bind(run.at)
        .bind(&run.actor)
        .bind(&run.checksum)
        .bind(&run.outcome)
        .bind(&run.report)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The latest check of a kind of each of these deployments.
    pub async fn checks(
        &self,
        conn: &mut AnyConnection,
        kind: CheckKind,
        deployment_ids: &[String],
    ) -> Result<Vec<CheckRow>, StoreError> {
        let mut runs = Vec::new();
        for chunk in deployment_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT deployment_id, at, actor, checksum, outcome, report FROM {} WHERE deployment_id IN ({})",
                kind.table(),
                placeholders.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                runs.push(CheckRow {
                    deployment_id: row.try_get("deployment_id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    checksum: row.try_get("checksum")?,
                    outcome: row.try_get("outcome")?,
                    report: row.try_get("report")?,
                });
            }
        }
        Ok(runs)
    }

    pub async fn insert_audit(
        &self,
        conn: &mut AnyConnection,
        entry: &AuditRow,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, environment, migration_id, deployment_id, detail, events) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.environment)
        .bind(&entry.migration_id)
        .bind(&entry.deployment_id)
        .bind(&entry.detail)
        .bind(&entry.events)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Many audit records, in order, a hundred to a statement (a worker's claim of a run
    /// writes one per deployment).
    pub async fn insert_audits(
        &self,
        conn: &mut AnyConnection,
        entries: &[AuditRow],
    ) -> Result<(), StoreError> {
        for chunk in entries.chunks(100) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 8;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO audit_log (at, actor, action, environment, migration_id, deployment_id, detail, events) VALUES {}",
                rows.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for entry in chunk {
                query = query
                    .bind(entry.at)
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.environment)
                    .bind(&entry.migration_id)
                    .bind(&entry.deployment_id)
                    .bind(&entry.detail)
                    .bind(&entry.events);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    pub async fn audit(
        &self,
        conn: &mut AnyConnection,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, at, actor, action, environment, migration_id, deployment_id, detail FROM audit_log \
             WHERE ($1 IS NULL OR environment = $1) AND ($2 IS NULL OR migration_id = $2) AND ($3 IS NULL OR actor = $3) AND id > $4 \
             AND id < $6 AND at >= $7 AND at <= $8 \
             ORDER BY id {order} LIMIT $5"
        )))
        .bind(&filter.environment)
        .bind(&filter.migration_id)
        .bind(&filter.actor)
        .bind(filter.after_id.unwrap_or(0))
        .bind(filter.limit)
        .bind(filter.before_id.unwrap_or(i64::MAX))
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRow {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    environment: row.try_get("environment")?,
                    migration_id: row.try_get("migration_id")?,
                    deployment_id: row.try_get("deployment_id")?,
                    detail: row.try_get("detail")?,
                    events: None,
                })
            })
            .collect()
    }

    pub async fn append_log(
        &self,
        conn: &mut AnyConnection,
        log: &LogRow,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deployment_log (deployment_id, at, level, message) VALUES ($1, $2, $3, $4)",
        )
        .bind(&log.deployment_id)
        .bind(log.at)
        .bind(&log.level)
        .bind(&log.message)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn logs(
        &self,
        conn: &mut AnyConnection,
        deployment_id: &str,
    ) -> Result<Vec<LogRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT deployment_id, at, level, message FROM deployment_log WHERE deployment_id = $1 ORDER BY id",
        )
        .bind(deployment_id)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LogRow {
                    deployment_id: row.try_get("deployment_id")?,
                    at: row.try_get("at")?,
                    level: row.try_get("level")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }

    /// A page of a deployment's log: lines with an id above `after_id`, oldest first, with
    /// their ids.
    pub async fn logs_page(
        &self,
        conn: &mut AnyConnection,
        deployment_id: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, LogRow)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deployment_id, at, level, message FROM deployment_log WHERE deployment_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(deployment_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    LogRow {
                        deployment_id: row.try_get("deployment_id")?,
                        at: row.try_get("at")?,
                        level: row.try_get("level")?,
                        message: row.try_get("message")?,
                    },
                ))
            })
            .collect()
    }

    /// A connection for reads outside a transaction.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        Ok(self
            .read_pool
            .as_ref()
            .unwrap_or(&self.pool)
            .acquire()
            .await?)
    }
}

async fn open_pool(
    options: AnyConnectOptions,
    connections: u32,
    backend: Backend,
    read_only: bool,
) -> Result<AnyPool, StoreError> {
    Ok(AnyPoolOptions::new()
        .max_connections(connections)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .execute(&mut *conn)
                    .await?;
                    if read_only {
                        sqlx::raw_sql("PRAGMA query_only = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?)
}

fn prepare_sqlite_path(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Setup(format!("cannot create folder {}: {e}", parent.display()))
        })?;
    }
    Ok(())
}

fn lock_row(row: &AnyRow) -> Result<LockRow, StoreError> {
    Ok(LockRow {
        environment: row.try_get("environment")?,
        locked_by: row.try_get("locked_by")?,
        reason: row.try_get("reason")?,
        locked_at: row.try_get("locked_at")?,
    })
}

impl From<&LockRow> for crate::domain::lock::EnvironmentLock {
    fn from(row: &LockRow) -> Self {
        crate::domain::lock::EnvironmentLock {
            locked_by: row.locked_by.clone(),
            reason: row.reason.clone(),
            locked_at: row.locked_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in memory holding one migration and one deployment of it (failed, as left by a
    /// statement-by-statement apply), written with raw SQL so that a test can store what the
    /// daemon never would.
    async fn store_with_deployment(last_action: &str) -> Store {
        let store = Store::connect("sqlite::memory:", 1).await.expect("store");
        let mut conn = store.conn().await.expect("connection");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO migrations (id, seq, kind, description, declared_risk, effective_risk, findings, author, ticket, estimated_duration, up_sql, depends_on, checksum, submitted_at, updated_at) \
             VALUES ('m1', 1, 'schema', 'd', 'low', 'low', '[]', 'dev', '', '', 'SELECT 1;', '[]', 'c', 0, 0); \
             INSERT INTO deployments (id, migration_id, seq, environment, state, effective_risk, error, last_action, transactional, created_at, updated_at) \
             VALUES ('m1@dev', 'm1', 1, 'dev', 'failed', 'low', 'boom', '{last_action}', 0, 0, 0);"
        )))
        .execute(&mut *conn)
        .await
        .expect("rows");
        drop(conn);
        store
    }

    /// A store at schema v10 (before `applied_statements`) holding deployments as an older
    /// daemon wrote them is brought to v11: the count is taken from their error text.
    #[tokio::test]
    async fn schema_v11_backfills_applied_statements_from_the_error_text() {
        let path = std::env::temp_dir().join(format!(
            "sluice-v11-{}-{}.db",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql(
            "CREATE TABLE sluice_store_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .expect("schema table");
        for (version, sql) in SQLITE_SCHEMA.iter().filter(|(v, _)| *v <= 10) {
            sqlx::raw_sql(*sql)
                .execute(&mut conn)
                .await
                .expect("old step");
            sqlx::query("INSERT INTO sluice_store_schema (version, applied_at) VALUES ($1, 0)")
                .bind(*version)
                .execute(&mut conn)
                .await
                .expect("old version");
        }
        let rows = [
            (
                "a",
                "failed",
                0,
                "interrupted after statement 2 of 3 (statement 3 may have been cut off part-way: check it); statements 1 to 2 stay applied.",
            ),
            (
                "b",
                "cancelled",
                0,
                "statement 4 (line 9): boom\n  in: ALTER TABLE t",
            ),
            ("c", "failed", 1, "statement 4 (line 9): boom"),
            (
                "d",
                "failed",
                0,
                "rollback failed: statement 2 (line 2): boom",
            ),
            ("e", "queued", 0, "interrupted after statement 2 of 3"),
        ];
        sqlx::raw_sql(
            "INSERT INTO migrations (id, seq, kind, description, declared_risk, effective_risk, findings, author, ticket, estimated_duration, up_sql, depends_on, checksum, submitted_at, updated_at) \
             VALUES ('m1', 1, 'schema', 'd', 'low', 'low', '[]', 'dev', '', '', 'SELECT 1;', '[]', 'c', 0, 0)",
        )
        .execute(&mut conn)
        .await
        .expect("migration");
        for (seq, (id, state, transactional, error)) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO deployments (id, migration_id, seq, environment, state, effective_risk, error, last_action, transactional, created_at, updated_at) \
                 VALUES ($1, 'm1', $2, 'dev', $3, 'low', $4, 'apply', $5, 0, 0)",
            )
            .bind(*id)
            .bind(seq as i64)
            .bind(*state)
            .bind(*error)
            .bind(*transactional)
            .execute(&mut conn)
            .await
            .expect("deployment");
        }
        conn.close().await.expect("close");

        let store = Store::connect(&url, 1).await.expect("upgraded");
        let mut conn = store.conn().await.expect("connection");
        let mut counts = Vec::new();
        for (id, ..) in rows {
            let d = store.deployment(&mut conn, id, false).await;
            counts.push(d.expect("readable").expect("present").applied_statements);
        }
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        assert_eq!(counts, [Some(2), Some(3), None, None, None]);
    }

    #[tokio::test]
    async fn last_action_is_decoded_into_its_enum() {
        let store = store_with_deployment("rollback").await;
        let mut conn = store.conn().await.expect("connection");
        let d = store.deployment(&mut conn, "m1@dev", false).await;
        assert_eq!(
            d.expect("readable").expect("present").last_action,
            Some(LastAction::Rollback)
        );
    }

    #[tokio::test]
    async fn an_unknown_last_action_is_a_corrupt_row_not_none() {
        let store = store_with_deployment("rolled_back").await;
        let mut conn = store.conn().await.expect("connection");
        match store.deployment(&mut conn, "m1@dev", false).await {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains("deployments.last_action"), "{message}");
                assert!(message.contains("rolled_back"), "{message}");
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }
    }
}
