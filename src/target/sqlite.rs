//! SQLite targets, through sqlx. SQLite has no advisory locks: a one-row lease table stands in,
//! refreshed in every migration's transaction and released at the end; `BEGIN IMMEDIATE` takes
//! the write lock up front so that a script never fails half-way on a lock upgrade.
//! SQLite has no statement timeout; the lock timeout becomes its busy timeout.

use super::{
    HistoryEntry, LogLine, RunReport, Script, TargetError, TargetSettings, describe_failure,
    wrapper_notes,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Instant;

/// How long a runner's lease lasts without being refreshed (milliseconds).
const LEASE_MS: i64 = 5 * 60 * 1000;

const SETUP: &str = "CREATE TABLE IF NOT EXISTS sluice_schema_history (
    migration_id TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    applied_by TEXT NOT NULL,
    execution_ms INTEGER NOT NULL,
    success INTEGER NOT NULL,
    transactional INTEGER NOT NULL,
    error TEXT,
    statements_done INTEGER,
    statements_total INTEGER,
    rollback_done INTEGER
);
CREATE TABLE IF NOT EXISTS sluice_runner_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);";

const RECORD: &str = "INSERT INTO sluice_schema_history (migration_id, checksum, applied_at, applied_by, execution_ms, success, transactional, error, statements_done, statements_total) \
     VALUES ($1, $2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (migration_id) DO UPDATE SET checksum = excluded.checksum, applied_at = excluded.applied_at, \
     applied_by = excluded.applied_by, execution_ms = excluded.execution_ms, success = excluded.success, \
     transactional = excluded.transactional, error = excluded.error, \
     statements_done = excluded.statements_done, statements_total = excluded.statements_total, rollback_done = NULL";

const HISTORY_COLUMNS: &str = "SELECT migration_id, checksum, success, transactional, error, statements_done, statements_total FROM sluice_schema_history";

pub struct SqliteSession {
    conn: SqliteConnection,
    url: String,
    owner: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SqliteSession {
    pub async fn open(
        settings: &TargetSettings,
        owner: &str,
    ) -> Result<SqliteSession, TargetError> {
        let url = settings.url.clone();
        let connect_error = |e: sqlx::Error| TargetError::Connect {
            url: url.clone(),
            message: e.to_string(),
        };
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        if let Some(parent) = std::path::Path::new(path.split('?').next().unwrap_or(""))
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| TargetError::Connect {
                url: url.clone(),
                message: format!("cannot create folder {}: {e}", parent.display()),
            })?;
        }
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(connect_error)?
            .create_if_missing(true)
            .busy_timeout(settings.lock_timeout);
        let conn = options.connect().await.map_err(connect_error)?;
        let mut session = SqliteSession {
            conn,
            url,
            owner: owner.to_owned(),
        };
        sqlx::raw_sql(SETUP)
            .execute(&mut session.conn)
            .await
            .map_err(|e| session.error(e))?;
        // History tables made before progress was kept get its columns.
        let has_progress: i64 = sqlx::query(
            "SELECT COUNT(*) FROM pragma_table_info('sluice_schema_history') WHERE name = 'statements_done'",
        )
        .fetch_one(&mut session.conn)
        .await
        .map_err(|e| session.error(e))?
        .get(0);
        if has_progress == 0 {
            sqlx::raw_sql(
                "ALTER TABLE sluice_schema_history ADD COLUMN statements_done INTEGER; ALTER TABLE sluice_schema_history ADD COLUMN statements_total INTEGER; ALTER TABLE sluice_schema_history ADD COLUMN rollback_done INTEGER",
            )
            .execute(&mut session.conn)
            .await
            .map_err(|e| session.error(e))?;
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sluice_runner_lock (id, owner, expires_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE sluice_runner_lock.expires_at < $3 OR sluice_runner_lock.owner = $1",
        )
        .bind(&session.owner)
        .bind(now + LEASE_MS)
        .bind(now)
        .execute(&mut session.conn)
        .await
        .map_err(|e| session.error(e))?;
        let holder: String = sqlx::query("SELECT owner FROM sluice_runner_lock WHERE id = 1")
            .fetch_one(&mut session.conn)
            .await
            .map_err(|e| session.error(e))?
            .get(0);
        if holder != session.owner {
            return Err(TargetError::Busy { url: session.url });
        }
        Ok(session)
    }

    fn error(&self, e: sqlx::Error) -> TargetError {
        TargetError::Database {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> HistoryEntry {
        HistoryEntry {
            checksum: row.get(1),
            success: row.get::<i64, _>(2) != 0,
            transactional: row.get::<i64, _>(3) != 0,
            error: row.get(4),
            statements_done: row.get(5),
            statements_total: row.get(6),
        }
    }

    pub async fn history(&mut self) -> Result<HashMap<String, HistoryEntry>, TargetError> {
        let rows = sqlx::query(HISTORY_COLUMNS)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<String, _>(0), Self::entry_from_row(row)))
            .collect())
    }

    async fn entry(&mut self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{HISTORY_COLUMNS} WHERE migration_id = $1"
        )))
        .bind(migration_id)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| self.error(e))?;
        Ok(row.as_ref().map(Self::entry_from_row))
    }

    /// Runs one statement; the database's error, worded for the deployment, if it fails.
    async fn run_statement(
        &mut self,
        script: &Script<'_>,
        statement: &crate::lint::Statement,
        index: usize,
    ) -> Result<(), String> {
        let result = crate::telemetry::traces::observed_statement(
            "sqlite",
            script.environment,
            script.namespace,
            &statement.text,
            sqlx::raw_sql(AssertSqlSafe(statement.text.clone())).execute(&mut self.conn),
        )
        .await;
        result.map(|_| ()).map_err(|e| {
            let message = match &e {
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            describe_failure(statement, index, statement.line, &message)
        })
    }

    async fn run_statements(&mut self, script: &Script<'_>) -> Option<String> {
        for (index, statement) in super::executable(script.statements) {
            if let Err(failure) = self.run_statement(script, statement, index).await {
                return Some(failure);
            }
        }
        None
    }

    async fn exec(&mut self, sql: &'static str) -> Result<(), TargetError> {
        sqlx::raw_sql(sql)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "history_write", skip_all, fields(otel.name = "history write", db.namespace = %script.namespace))]
    async fn record(
        &mut self,
        script: &Script<'_>,
        execution_ms: i64,
        success: bool,
        transactional: bool,
        error: Option<&str>,
        statements_done: Option<i64>,
        statements_total: Option<i64>,
    ) -> Result<(), TargetError> {
        sqlx::query(RECORD)
            .bind(script.migration_id)
            .bind(script.checksum)
            .bind(script.applied_by)
            .bind(execution_ms)
            .bind(i64::from(success))
            .bind(i64::from(transactional))
            .bind(error)
            .bind(statements_done)
            .bind(statements_total)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        sqlx::query("UPDATE sluice_runner_lock SET expires_at = $1 WHERE owner = $2")
            .bind(now_ms() + LEASE_MS)
            .bind(&self.owner)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn apply(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        if !script.transactional() {
            return super::steps::apply_in_steps(self, script).await;
        }
        let total = super::executable(script.statements).len() as i64;
        let mut log = wrapper_notes(script);
        let started = Instant::now();
        self.exec("BEGIN IMMEDIATE").await?;
        let failure = self.run_statements(script).await;
        let execution_ms = started.elapsed().as_millis() as i64;
        match &failure {
            None => {
                let recorded = match self
                    .record(
                        script,
                        execution_ms,
                        true,
                        true,
                        None,
                        Some(total),
                        Some(total),
                    )
                    .await
                {
                    Ok(()) => self.exec("COMMIT").await,
                    Err(e) => Err(e),
                };
                if let Err(e) = recorded {
                    // Whatever the script did that made the history write fail (a dropped or
                    // altered sluice_schema_history), none of it stays.
                    let _ = self.exec("ROLLBACK").await;
                    return Err(match e {
                        TargetError::Database { url, message } => TargetError::Database {
                            url,
                            message: format!(
                                "the script ran, but Sluice could not record it in sluice_schema_history ({message}); its transaction was rolled back, nothing of it is applied"
                            ),
                        },
                        other => other,
                    });
                }
            }
            Some(message) => {
                self.exec("ROLLBACK").await?;
                script.emit(
                    &mut log,
                    LogLine::info("rolled back: nothing of it is applied"),
                );
                self.record(
                    script,
                    execution_ms,
                    false,
                    true,
                    Some(message),
                    Some(0),
                    Some(total),
                )
                .await?;
            }
        }
        Ok(RunReport {
            execution_ms,
            transactional: true,
            log: log.into_lines(),
            error: failure,
            statements_applied: None,
        })
    }

    pub async fn rollback(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        if !script.transactional() {
            return super::steps::rollback_in_steps(self, script).await;
        }
        let log = wrapper_notes(script);
        let started = Instant::now();
        self.exec("BEGIN IMMEDIATE").await?;
        let failure = self.run_statements(script).await;
        let execution_ms = started.elapsed().as_millis() as i64;
        if failure.is_none() {
            super::steps::StepDriver::remove_history(self, script.migration_id).await?;
        }
        self.exec(if failure.is_none() {
            "COMMIT"
        } else {
            "ROLLBACK"
        })
        .await?;
        Ok(RunReport {
            execution_ms,
            transactional: true,
            log: log.into_lines(),
            error: failure,
            statements_applied: None,
        })
    }

    pub async fn forget(&mut self, migration_id: &str) -> Result<(), TargetError> {
        sqlx::query("DELETE FROM sluice_schema_history WHERE migration_id = $1 AND success = 0")
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Drops every table, view, index and trigger but the runner lease, in one transaction.
    pub async fn clear(&mut self) -> Result<(), TargetError> {
        self.replace_with(None).await
    }

    /// Replaces everything but the runner lease with what the backup file (a `VACUUM INTO`
    /// copy) holds, in one transaction: tables and their rows, then indexes, views, triggers
    /// and AUTOINCREMENT counters.
    pub async fn restore(&mut self, file: &std::path::Path) -> Result<(), TargetError> {
        if !file.is_file() {
            return Err(TargetError::Database {
                url: self.url.clone(),
                message: format!("the backup {} is not there", file.display()),
            });
        }
        self.replace_with(Some(file)).await
    }

    async fn replace_with(&mut self, backup: Option<&std::path::Path>) -> Result<(), TargetError> {
        if let Some(file) = backup {
            sqlx::query("ATTACH DATABASE $1 AS sluice_backup")
                .bind(file.to_string_lossy().into_owned())
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.error(e))?;
        }
        let result = self.replace_in_transaction(backup.is_some()).await;
        if result.is_err() {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut self.conn).await;
        }
        if backup.is_some() {
            let _ = sqlx::raw_sql("DETACH DATABASE sluice_backup")
                .execute(&mut self.conn)
                .await;
        }
        result
    }

    async fn replace_in_transaction(&mut self, from_backup: bool) -> Result<(), TargetError> {
        let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let objects = |schema: &str| {
            format!(
                "SELECT type, name, sql FROM {schema}.sqlite_master \
                 WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> 'sluice_runner_lock' AND sql IS NOT NULL \
                 ORDER BY CASE type WHEN 'table' THEN 1 WHEN 'index' THEN 2 WHEN 'view' THEN 3 ELSE 4 END, name"
            )
        };
        let mut statements = vec![
            "BEGIN IMMEDIATE".to_owned(),
            "PRAGMA defer_foreign_keys = ON".to_owned(),
        ];
        let existing: Vec<(String, String)> = sqlx::raw_sql(sqlx::AssertSqlSafe(objects("main")))
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (kind, name) in existing.iter().rev() {
            if kind == "table" || kind == "view" || kind == "trigger" {
                statements.push(format!(
                    "DROP {} IF EXISTS main.{}",
                    kind.to_uppercase(),
                    quote(name)
                ));
            }
        }
        let mut has_sequence = false;
        if from_backup {
            let wanted: Vec<(String, String, String)> =
                sqlx::raw_sql(sqlx::AssertSqlSafe(objects("sluice_backup")))
                    .fetch_all(&mut self.conn)
                    .await
                    .map_err(|e| self.error(e))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
            for (kind, name, sql) in &wanted {
                statements.push(sql.clone());
                if kind == "table" {
                    statements.push(format!(
                        "INSERT INTO main.{0} SELECT * FROM sluice_backup.{0}",
                        quote(name)
                    ));
                }
            }
            has_sequence = sqlx::query(
                "SELECT COUNT(*) FROM sluice_backup.sqlite_master WHERE name = 'sqlite_sequence'",
            )
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?
            .get::<i64, _>(0)
                > 0;
        }
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut self.conn)
                .await
                .map_err(|e| TargetError::Database {
                    url: self.url.clone(),
                    message: format!("{e} (in: {statement}); nothing was changed"),
                })?;
        }
        let main_sequence: i64 =
            sqlx::query("SELECT COUNT(*) FROM main.sqlite_master WHERE name = 'sqlite_sequence'")
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| self.error(e))?
                .get(0);
        if main_sequence > 0 {
            self.exec("DELETE FROM main.sqlite_sequence").await?;
            if has_sequence {
                self.exec(
                    "INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM sluice_backup.sqlite_sequence",
                )
                .await?;
            }
        }
        self.exec("COMMIT").await
    }

    /// A consistent copy of the database file.
    pub async fn backup(&mut self, file: &std::path::Path) -> Result<(), TargetError> {
        let _ = std::fs::remove_file(file);
        sqlx::query("VACUUM INTO $1")
            .bind(file.to_string_lossy().into_owned())
            .execute(&mut self.conn)
            .await
            .map_err(|e| TargetError::Database {
                url: self.url.clone(),
                message: format!("backup failed: {e}"),
            })?;
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = sqlx::query("DELETE FROM sluice_runner_lock WHERE owner = $1")
            .bind(&self.owner)
            .execute(&mut self.conn)
            .await;
    }
}

impl SqliteSession {
    pub async fn schema_snapshot(&mut self) -> Result<super::schema::SchemaSnapshot, TargetError> {
        let rows = sqlx::query(super::schema::SQLITE)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut snapshot = super::schema::SchemaSnapshot::default();
        for row in rows {
            let object: String = row.try_get(0).map_err(|e| self.error(e))?;
            let sql: String = row.try_get(1).map_err(|e| self.error(e))?;
            snapshot.0.insert(object, sql);
        }
        Ok(snapshot)
    }
}

impl super::dry_run::DryRunDriver for SqliteSession {
    fn not_in_transaction(&self, statement: &crate::lint::Statement) -> Option<String> {
        statement.requires_no_transaction().then(|| {
            "it cannot run inside a transaction, so it cannot be tried and rolled back".to_owned()
        })
    }

    async fn begin(&mut self) -> Result<(), TargetError> {
        self.exec("BEGIN IMMEDIATE").await
    }

    async fn run(
        &mut self,
        script: &Script<'_>,
        _log: &mut super::LogBuffer,
        index: usize,
        statement: &crate::lint::Statement,
    ) -> Result<Result<(), (String, bool)>, TargetError> {
        Ok(self
            .run_statement(script, statement, index)
            .await
            .map_err(|message| (message, false)))
    }

    async fn locks(&mut self) -> Vec<super::dry_run::DryRunLock> {
        // SQLite locks the whole database file while a transaction writes.
        Vec::new()
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        self.exec("ROLLBACK").await
    }
}

impl super::steps::StepDriver for SqliteSession {
    fn atomic(&self, statement: &crate::lint::Statement) -> bool {
        !statement.requires_no_transaction()
    }

    async fn reset(&mut self) -> Result<(), TargetError> {
        // SQLite keeps no session settings a script could leave behind that matter here.
        Ok(())
    }

    async fn entry(&mut self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError> {
        SqliteSession::entry(self, migration_id).await
    }

    #[tracing::instrument(name = "history_write", skip_all, fields(otel.name = "history write", db.namespace = %script.namespace))]
    async fn record(
        &mut self,
        script: &Script<'_>,
        execution_ms: i64,
        success: bool,
        error: Option<&str>,
        statements_done: i64,
        statements_total: i64,
    ) -> Result<(), TargetError> {
        SqliteSession::record(
            self,
            script,
            execution_ms,
            success,
            false,
            error,
            Some(statements_done),
            Some(statements_total),
        )
        .await
    }

    async fn run_step(
        &mut self,
        script: &Script<'_>,
        _log: &mut super::LogBuffer,
        index: usize,
        statement: &crate::lint::Statement,
        atomic: bool,
    ) -> Result<Result<(), String>, TargetError> {
        if atomic {
            self.exec("BEGIN IMMEDIATE").await?;
        }
        Ok(self.run_statement(script, statement, index).await)
    }

    async fn advance(&mut self, migration_id: &str, done: i64) -> Result<(), TargetError> {
        sqlx::query(
            "UPDATE sluice_schema_history SET statements_done = $1 WHERE migration_id = $2",
        )
        .bind(done)
        .bind(migration_id)
        .execute(&mut self.conn)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn end_step(&mut self, commit: bool) -> Result<(), TargetError> {
        self.exec(if commit { "COMMIT" } else { "ROLLBACK" }).await
    }

    async fn rollback_progress(&mut self, migration_id: &str) -> Result<Option<i64>, TargetError> {
        let row =
            sqlx::query("SELECT rollback_done FROM sluice_schema_history WHERE migration_id = $1")
                .bind(migration_id)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| self.error(e))?;
        Ok(row.and_then(|row| row.get(0)))
    }

    async fn set_rollback_progress(
        &mut self,
        migration_id: &str,
        done: i64,
    ) -> Result<(), TargetError> {
        sqlx::query("UPDATE sluice_schema_history SET rollback_done = $1 WHERE migration_id = $2")
            .bind(done)
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn remove_history(&mut self, migration_id: &str) -> Result<(), TargetError> {
        sqlx::query("DELETE FROM sluice_schema_history WHERE migration_id = $1")
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn mark_complete(&mut self, migration_id: &str) -> Result<(), TargetError> {
        sqlx::query(
            "UPDATE sluice_schema_history SET success = 1, error = NULL WHERE migration_id = $1 AND success = 0 AND statements_done IS NOT NULL AND statements_total IS NOT NULL AND statements_done >= statements_total",
        )
        .bind(migration_id)
        .execute(&mut self.conn)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }
}
