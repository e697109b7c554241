//! MySQL and MariaDB targets, through sqlx. `GET_LOCK` keeps a second runner out. MySQL commits
//! every DDL statement implicitly, so only scripts of data statements run in one transaction
//! with their history row; a script with DDL runs statement by statement and is recorded as
//! non-transactional. Statement timeouts use MariaDB's `max_statement_time` or MySQL's
//! `max_execution_time` (which covers SELECTs only), whichever the server has.

use super::{
    HistoryEntry, LockAttempts, LogBuffer, LogLine, RunReport, Script, TargetError, TargetSettings,
    describe_failure, executable, wrapper_notes,
};
use crate::config::redact_url;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// User-level locks are server-wide: the name carries the database's, so runners of different
/// databases on one server do not exclude each other.
const LOCK_NAME: &str = "LEFT(CONCAT('sluice.', DATABASE()), 64)";

const HISTORY_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_schema_history (
    migration_id VARCHAR(255) NOT NULL PRIMARY KEY,
    checksum CHAR(64) NOT NULL,
    applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    applied_by VARCHAR(255) NOT NULL,
    execution_ms BIGINT NOT NULL,
    success BOOLEAN NOT NULL,
    transactional BOOLEAN NOT NULL,
    error TEXT NULL,
    statements_done BIGINT NULL,
    statements_total BIGINT NULL,
    rollback_done BIGINT NULL
) ENGINE = InnoDB";

/// History tables made before progress was kept get its columns (MySQL 8 has no
/// `ADD COLUMN IF NOT EXISTS`, so ask first).
const HISTORY_HAS_PROGRESS: &str = "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'sluice_schema_history' AND column_name = 'statements_done'";
const HISTORY_ADD_PROGRESS: &str = "ALTER TABLE sluice_schema_history ADD COLUMN statements_done BIGINT NULL, ADD COLUMN statements_total BIGINT NULL, ADD COLUMN rollback_done BIGINT NULL";

const RECORD: &str = "INSERT INTO sluice_schema_history (migration_id, checksum, applied_at, applied_by, execution_ms, success, transactional, error, statements_done, statements_total) \
     VALUES (?, ?, CURRENT_TIMESTAMP(3), ?, ?, ?, ?, ?, ?, ?) \
     ON DUPLICATE KEY UPDATE checksum = VALUES(checksum), applied_at = VALUES(applied_at), \
     applied_by = VALUES(applied_by), execution_ms = VALUES(execution_ms), success = VALUES(success), \
     transactional = VALUES(transactional), error = VALUES(error), \
     statements_done = VALUES(statements_done), statements_total = VALUES(statements_total), rollback_done = NULL";

const ADVANCE: &str = "UPDATE sluice_schema_history SET statements_done = ? WHERE migration_id = ?";

/// Session settings a script may change that would otherwise carry over to the next script.
/// Their values are read when the session opens and set again before every script (MySQL has
/// no RESET ALL, and COM_RESET_CONNECTION would also drop the runner's GET_LOCK).
const SESSION_VARIABLES: &[&str] = &[
    "sql_mode",
    "foreign_key_checks",
    "unique_checks",
    "time_zone",
    "autocommit",
    "sql_safe_updates",
    "character_set_client",
    "character_set_results",
    "collation_connection",
    "group_concat_max_len",
    "sql_select_limit",
    "max_heap_table_size",
    "div_precision_increment",
];
/// The isolation level's variable is named differently by MySQL 8 and MariaDB.
const ISOLATION_VARIABLES: &[&str] = &["transaction_isolation", "tx_isolation"];

/// `var = value` for a SET statement, from the value the server reported.
fn assignment(variable: &str, value: Option<String>) -> String {
    match value {
        None => format!("SESSION {variable} = NULL"),
        Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
            format!("SESSION {variable} = {v}")
        }
        Some(v) => format!(
            "SESSION {variable} = '{}'",
            v.replace('\\', "\\\\").replace('\'', "''")
        ),
    }
}

/// Statements that change data only: MySQL can run them inside a transaction.
fn is_data_statement(statement: &crate::lint::Statement) -> bool {
    matches!(
        statement.keywords.first().map(String::as_str),
        Some("INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "SELECT" | "WITH")
    )
}

pub struct MySqlSession {
    conn: MySqlConnection,
    url: String,
    /// Sent before every script: the session as it was opened (see SESSION_RESET), the
    /// timeouts again, and the target database selected again (a script's USE does not stick).
    reset: Vec<String>,
    /// How long a statement may wait for metadata locks in all, and in one attempt (the
    /// server's lock_wait_timeout counts whole seconds: MariaDB takes 0, no wait at all;
    /// MySQL's least is 1 s).
    lock_budget: Duration,
    lock_attempt: Duration,
}

impl MySqlSession {
    pub async fn open(settings: &TargetSettings) -> Result<MySqlSession, TargetError> {
        let url = redact_url(&settings.url);
        let connect_error = |e: sqlx::Error| TargetError::Connect {
            url: url.clone(),
            message: e.to_string(),
        };
        // sqlx speaks the same protocol to both; accept the mariadb:// spelling too.
        let normalised = settings.url.replacen("mariadb://", "mysql://", 1);
        let options = MySqlConnectOptions::from_str(&normalised).map_err(connect_error)?;
        let conn = options.connect().await.map_err(connect_error)?;
        let database = options
            .get_database()
            .unwrap_or_default()
            .replace('`', "``");
        let mut session = MySqlSession {
            conn,
            url,
            reset: Vec::new(),
            lock_budget: settings.lock_timeout,
            lock_attempt: settings.lock_attempt,
        };
        let locked: Option<i64> =
            sqlx::query(AssertSqlSafe(format!("SELECT GET_LOCK({LOCK_NAME}, 0)")))
                .fetch_one(&mut session.conn)
                .await
                .map_err(|e| session.error(e))?
                .try_get(0)
                .map_err(|e| session.error(e))?;
        if locked != Some(1) {
            return Err(TargetError::Busy { url: session.url });
        }
        let lock_seconds = settings.lock_timeout.as_secs().max(1);
        let statement_seconds = settings.statement_timeout.as_secs().max(1);
        // A DDL statement waits for its metadata lock one attempt at a time, so that the
        // sessions queued behind it are not held (row locks keep the whole budget: InnoDB's
        // readers do not queue behind them).
        let attempt_seconds = settings.lock_attempt.as_secs();
        let attempt = format!(
            "SET SESSION lock_wait_timeout = {attempt_seconds}, SESSION innodb_lock_wait_timeout = {lock_seconds}"
        );
        session.exec(attempt.clone()).await?;
        let effective: i64 = sqlx::query("SELECT CAST(@@SESSION.lock_wait_timeout AS SIGNED)")
            .fetch_one(&mut session.conn)
            .await
            .map_err(|e| session.error(e))?
            .try_get(0)
            .map_err(|e| session.error(e))?;
        session.lock_attempt = Duration::from_secs(effective.max(0) as u64);
        let mut reset = vec![session.read_session_variables().await?, attempt];
        if !database.is_empty() {
            reset.push(format!("USE `{database}`"));
        }
        // One of the two exists, depending on the server.
        let mariadb_timeout = format!("SET SESSION max_statement_time = {statement_seconds}");
        if session.exec(mariadb_timeout.clone()).await.is_ok() {
            reset.push(mariadb_timeout);
        } else {
            let mysql_timeout = format!(
                "SET SESSION max_execution_time = {}",
                statement_seconds * 1000
            );
            if session.exec(mysql_timeout.clone()).await.is_ok() {
                reset.push(mysql_timeout);
            }
        }
        session.reset = reset;
        session.reset_session().await?;
        session.exec(HISTORY_DDL.to_owned()).await?;
        let has_progress: i64 = sqlx::query(HISTORY_HAS_PROGRESS)
            .fetch_one(&mut session.conn)
            .await
            .map_err(|e| session.error(e))?
            .try_get(0)
            .map_err(|e| session.error(e))?;
        if has_progress == 0 {
            session.exec(HISTORY_ADD_PROGRESS.to_owned()).await?;
        }
        Ok(session)
    }

    fn error(&self, e: sqlx::Error) -> TargetError {
        match e {
            sqlx::Error::Database(_) => TargetError::Database {
                url: self.url.clone(),
                message: e.to_string(),
            },
            // I/O, a protocol out of step, a closed connection: the session is gone.
            other => TargetError::Session {
                url: self.url.clone(),
                message: other.to_string(),
            },
        }
    }

    /// A SET statement that puts back the session variables a script may change, as they are
    /// now (right after connecting).
    async fn read_session_variables(&mut self) -> Result<String, TargetError> {
        let select: Vec<String> = SESSION_VARIABLES
            .iter()
            .map(|v| format!("CAST(@@SESSION.{v} AS CHAR)"))
            .collect();
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {}", select.join(", "))))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut assignments = Vec::new();
        for (index, variable) in SESSION_VARIABLES.iter().enumerate() {
            let value: Option<String> = row.try_get(index).map_err(|e| self.error(e))?;
            assignments.push(assignment(variable, value));
        }
        for variable in ISOLATION_VARIABLES {
            let read = sqlx::query(AssertSqlSafe(format!(
                "SELECT CAST(@@SESSION.{variable} AS CHAR)"
            )))
            .fetch_one(&mut self.conn)
            .await;
            if let Ok(row) = read {
                let value: Option<String> = row.try_get(0).map_err(|e| self.error(e))?;
                assignments.push(assignment(variable, value));
                break;
            }
        }
        Ok(format!("SET {}", assignments.join(", ")))
    }

    /// Puts the session back as it was opened, before a script runs.
    async fn reset_session(&mut self) -> Result<(), TargetError> {
        for sql in self.reset.clone() {
            self.exec(sql).await?;
        }
        Ok(())
    }

    async fn exec(&mut self, sql: String) -> Result<(), TargetError> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Drops every table, view, routine and event of the database (`sluice reset`, and the
    /// first half of a restore). MySQL's DDL commits statement by statement.
    pub async fn clear(&mut self) -> Result<(), TargetError> {
        self.reset_session().await?;
        self.wait_whole_budget().await?;
        let objects: Vec<(String, String)> = sqlx::query(
            "SELECT CAST(kind AS CHAR), CAST(name AS CHAR) FROM ( \
               SELECT CASE table_type WHEN 'VIEW' THEN 'VIEW' ELSE 'TABLE' END AS kind, table_name AS name, 1 AS ord \
                 FROM information_schema.tables WHERE table_schema = DATABASE() \
               UNION ALL SELECT routine_type, routine_name, 2 FROM information_schema.routines WHERE routine_schema = DATABASE() \
               UNION ALL SELECT 'EVENT', event_name, 3 FROM information_schema.events WHERE event_schema = DATABASE() \
             ) o ORDER BY ord, kind DESC, name",
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.error(e))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
        self.exec("SET FOREIGN_KEY_CHECKS = 0".into()).await?;
        let mut result = Ok(());
        for (kind, name) in objects {
            let drop = format!("DROP {kind} IF EXISTS `{}`", name.replace('`', "``"));
            if let Err(e) = self.exec(drop).await {
                result = Err(e);
                break;
            }
        }
        let _ = self.exec("SET FOREIGN_KEY_CHECKS = 1".into()).await;
        result
    }

    /// A restore or reset waits for its metadata locks for the whole budget at once (the
    /// environment is locked and the change is the operator's; giving way would leave it
    /// half-done). The next reset_session puts the attempt back.
    async fn wait_whole_budget(&mut self) -> Result<(), TargetError> {
        let seconds = self.lock_budget.as_secs().max(1);
        self.exec(format!("SET SESSION lock_wait_timeout = {seconds}"))
            .await
    }

    /// Replaces the database's objects and rows with those of a mysqldump file, run statement
    /// by statement as the mysql client runs it.
    pub async fn restore(&mut self, file: &std::path::Path) -> Result<(), TargetError> {
        let text = std::fs::read_to_string(file).map_err(|e| TargetError::Database {
            url: self.url.clone(),
            message: format!("cannot read the backup {}: {e}", file.display()),
        })?;
        let statements = crate::lint::split_statements_for(&text, crate::lint::Dialect::MySql)
            .map_err(|e| TargetError::Database {
                url: self.url.clone(),
                message: format!(
                    "the backup {} does not read at line {}: {}",
                    file.display(),
                    e.line,
                    e.message
                ),
            })?;
        self.clear().await?;
        self.wait_whole_budget().await?;
        for statement in &statements {
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(statement.text.clone()))
                .execute(&mut self.conn)
                .await
            {
                let message = format!(
                    "restoring {} stopped at line {}: {}; the database is part-restored",
                    file.display(),
                    statement.line,
                    server_message(&e)
                );
                let _ = self.reset_session().await;
                return Err(TargetError::Database {
                    url: self.url.clone(),
                    message,
                });
            }
        }
        self.reset_session().await
    }

    pub async fn history(&mut self) -> Result<HashMap<String, HistoryEntry>, TargetError> {
        let rows = sqlx::query("SELECT migration_id, checksum, success, transactional, statements_done, statements_total, error FROM sluice_schema_history")
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut history = HashMap::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(|e| self.error(e))?;
            history.insert(id, self.entry_from_row(&row)?);
        }
        Ok(history)
    }

    fn entry_from_row(&self, row: &sqlx::mysql::MySqlRow) -> Result<HistoryEntry, TargetError> {
        let get = |e: sqlx::Error| self.error(e);
        Ok(HistoryEntry {
            checksum: row.try_get(1).map_err(get)?,
            success: row.try_get(2).map_err(get)?,
            transactional: row.try_get(3).map_err(get)?,
            statements_done: row.try_get(4).map_err(get)?,
            statements_total: row.try_get(5).map_err(get)?,
            error: row.try_get(6).map_err(get)?,
        })
    }

    async fn entry(&mut self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError> {
        let row = sqlx::query("SELECT migration_id, checksum, success, transactional, statements_done, statements_total, error FROM sluice_schema_history WHERE migration_id = ?")
            .bind(migration_id)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        row.map(|row| self.entry_from_row(&row)).transpose()
    }

    pub(super) fn transactional(script: &Script<'_>) -> bool {
        script
            .statements
            .iter()
            .filter(|s| !s.is_transaction_wrapper())
            .all(is_data_statement)
    }

    /// Runs one statement; the database's error, worded for the deployment, if it fails, and
    /// whether it failed for want of a lock (error 1205: a metadata lock within
    /// lock_wait_timeout, or a row lock within innodb_lock_wait_timeout).
    async fn run_statement(
        &mut self,
        script: &Script<'_>,
        statement: &crate::lint::Statement,
        index: usize,
    ) -> Result<(), (String, bool)> {
        let result = crate::telemetry::traces::observed_statement(
            "mysql",
            script.environment,
            script.namespace,
            &statement.text,
            sqlx::raw_sql(AssertSqlSafe(statement.text.clone())).execute(&mut self.conn),
        )
        .await;
        result.map(|_| ()).map_err(|e| {
            let lock_timeout = matches!(&e, sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|db| db.number() == 1205));
            let message = server_message(&e);
            (
                describe_failure(statement, index, statement.line, &message),
                lock_timeout,
            )
        })
    }

    async fn run_statements(&mut self, script: &Script<'_>) -> Option<(String, bool)> {
        for (index, statement) in executable(script.statements) {
            if let Err(failure) = self.run_statement(script, statement, index).await {
                return Some(failure);
            }
        }
        None
    }

    /// After an attempt that waited in vain for a lock (rolled back by the caller where it ran
    /// in a transaction): the log's line and the pause before the next attempt, or false once
    /// the lock budget is spent.
    async fn give_way(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        attempts: &mut LockAttempts,
    ) -> bool {
        let Some(pause) = attempts.next_pause() else {
            return false;
        };
        crate::telemetry::lock_gave_way(script.environment);
        let held = self.open_transactions().await;
        script.waiting(Some(format!("{held} (attempt {})", attempts.attempts())));
        script.emit(
            log,
            attempts.gave_way_line(
                self.lock_attempt,
                &held,
                &format!("trying again in {} ms", pause.as_millis()),
            ),
        );
        tokio::time::sleep(pause).await;
        true
    }

    /// Who may hold the lock: MySQL/MariaDB do not say which session holds a metadata lock
    /// without a plugin, but the holder is one with an open transaction (the oldest first).
    async fn open_transactions(&mut self) -> String {
        let rows = sqlx::query(
            "SELECT CAST(t.trx_mysql_thread_id AS SIGNED), CAST(COALESCE(p.USER, '') AS CHAR), \
                    CAST(TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) AS SIGNED), \
                    CAST(LEFT(COALESCE(p.INFO, t.trx_query, ''), 120) AS CHAR) \
               FROM information_schema.INNODB_TRX t \
               LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
              WHERE t.trx_mysql_thread_id <> CONNECTION_ID() \
              ORDER BY t.trx_started LIMIT 5",
        )
        .fetch_all(&mut self.conn)
        .await;
        let sessions: Vec<String> = match rows {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    let id: i64 = r.try_get(0).unwrap_or_default();
                    let user: String = r.try_get(1).unwrap_or_default();
                    let open: i64 = r.try_get(2).unwrap_or_default();
                    let query: String = r.try_get(3).unwrap_or_default();
                    let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
                    if query.is_empty() {
                        format!("id {id} (user {user}, transaction open {open} s, idle)")
                    } else {
                        format!("id {id} (user {user}, transaction open {open} s, query: {query})")
                    }
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot list open transactions");
                Vec::new()
            }
        };
        if sessions.is_empty() {
            "another session holds it".to_owned()
        } else {
            format!(
                "another session holds it; sessions with open transactions: {}",
                sessions.join("; ")
            )
        }
    }

    /// Runs the script in one transaction (left open for the caller to finish), starting over
    /// when a lock is not granted within an attempt. The failure description, if any.
    async fn run_giving_way(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
    ) -> Result<Option<String>, TargetError> {
        let mut attempts = LockAttempts::new(self.lock_budget);
        loop {
            self.exec("START TRANSACTION".into()).await?;
            match self.run_statements(script).await {
                None => {
                    attempts.got_locks(script, log);
                    return Ok(None);
                }
                Some((message, true)) => {
                    self.exec("ROLLBACK".into()).await?;
                    if !self.give_way(script, log, &mut attempts).await {
                        self.exec("START TRANSACTION".into()).await?;
                        return Ok(Some(attempts.gave_up(script, &message)));
                    }
                }
                Some((message, false)) => return Ok(Some(message)),
            }
        }
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
        statements_done: i64,
        statements_total: i64,
    ) -> Result<(), TargetError> {
        sqlx::query(RECORD)
            .bind(script.migration_id)
            .bind(script.checksum)
            .bind(script.applied_by)
            .bind(execution_ms)
            .bind(success)
            .bind(transactional)
            .bind(error)
            .bind(statements_done)
            .bind(statements_total)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn apply(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        if !Self::transactional(script) {
            return super::steps::apply_in_steps(self, script).await;
        }
        let mut log = wrapper_notes(script);
        let total = executable(script.statements).len() as i64;
        self.reset_session().await?;
        let started = Instant::now();
        let failure = self.run_giving_way(script, &mut log).await?;
        let execution_ms = started.elapsed().as_millis() as i64;
        match &failure {
            None => {
                let recorded = match self
                    .record(script, execution_ms, true, true, None, total, total)
                    .await
                {
                    Ok(()) => self.exec("COMMIT".into()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = recorded {
                    let _ = self.exec("ROLLBACK".into()).await;
                    return Err(match e {
                        TargetError::Database { url, message } => TargetError::Database {
                            url,
                            message: format!(
                                "the script ran, but Sluice could not record it in sluice_schema_history ({message}); its transaction was rolled back"
                            ),
                        },
                        other => other,
                    });
                }
            }
            Some(message) => {
                if let Err(e) = self.exec("ROLLBACK".into()).await {
                    return Err(match e {
                        TargetError::Session {
                            url,
                            message: ended,
                        } => TargetError::Session {
                            url,
                            message: format!("{message}\n  the session ended with it: {ended}"),
                        },
                        other => other,
                    });
                }
                script.emit(
                    &mut log,
                    LogLine::info("rolled back: nothing of it is applied"),
                );
                self.record(script, execution_ms, false, true, Some(message), 0, total)
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
        if !Self::transactional(script) {
            return super::steps::rollback_in_steps(self, script).await;
        }
        let mut log = wrapper_notes(script);
        self.reset_session().await?;
        let started = Instant::now();
        let failure = self.run_giving_way(script, &mut log).await?;
        let execution_ms = started.elapsed().as_millis() as i64;
        if failure.is_none() {
            super::steps::StepDriver::remove_history(self, script.migration_id).await?;
        }
        let end = if failure.is_none() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        self.exec(end.into()).await?;
        Ok(RunReport {
            execution_ms,
            transactional: true,
            log: log.into_lines(),
            error: failure,
            statements_applied: None,
        })
    }

    pub async fn forget(&mut self, migration_id: &str) -> Result<(), TargetError> {
        sqlx::query("DELETE FROM sluice_schema_history WHERE migration_id = ? AND NOT success")
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = sqlx::query(AssertSqlSafe(format!("SELECT RELEASE_LOCK({LOCK_NAME})")))
            .execute(&mut self.conn)
            .await;
    }
}

impl super::dry_run::DryRunDriver for MySqlSession {
    fn not_in_transaction(&self, statement: &crate::lint::Statement) -> Option<String> {
        (!is_data_statement(statement)).then(|| {
            "MySQL commits DDL implicitly, so it cannot be tried and rolled back".to_owned()
        })
    }

    async fn begin(&mut self) -> Result<(), TargetError> {
        self.reset_session().await?;
        self.exec("START TRANSACTION".into()).await
    }

    async fn run(
        &mut self,
        script: &Script<'_>,
        _log: &mut LogBuffer,
        index: usize,
        statement: &crate::lint::Statement,
    ) -> Result<Result<(), (String, bool)>, TargetError> {
        Ok(self.run_statement(script, statement, index).await)
    }

    async fn locks(&mut self) -> Vec<super::dry_run::DryRunLock> {
        Vec::new()
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        self.exec("ROLLBACK".into()).await
    }
}

impl MySqlSession {
    pub async fn tool_history(&mut self) -> Result<Option<super::ToolHistory>, TargetError> {
        let row = sqlx::query(
            "SELECT \
               CAST((SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'flyway_schema_history') AS SIGNED), \
               CAST((SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'schema_migrations') AS SIGNED), \
               CAST((SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'schema_migrations' AND COLUMN_NAME = 'dirty') AS SIGNED)",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.error(e))?;
        let count = |i: usize| row.try_get::<i64, _>(i).unwrap_or_default() > 0;
        let (flyway, migrations, dirty) = (count(0), count(1), count(2));
        let versions = |rows: Vec<sqlx::mysql::MySqlRow>| -> Vec<String> {
            rows.iter()
                .filter_map(|r| r.try_get::<Option<String>, _>(0).ok().flatten())
                .collect()
        };
        if flyway {
            let rows = sqlx::query(
                "SELECT CAST(version AS CHAR) FROM flyway_schema_history WHERE success AND version IS NOT NULL",
            )
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
            return Ok(Some(super::ToolHistory::Flyway(versions(rows))));
        }
        if migrations && dirty {
            let row = sqlx::query(
                "SELECT CAST(version AS CHAR), CAST(dirty AS SIGNED) FROM schema_migrations LIMIT 1",
            )
            .fetch_optional(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
            return Ok(row.map(|r| super::ToolHistory::GolangMigrate {
                version: r.try_get::<String, _>(0).unwrap_or_default(),
                dirty: r.try_get::<i64, _>(1).unwrap_or_default() != 0,
            }));
        }
        if migrations {
            let rows = sqlx::query("SELECT CAST(version AS CHAR) FROM schema_migrations")
                .fetch_all(&mut self.conn)
                .await
                .map_err(|e| self.error(e))?;
            return Ok(Some(super::ToolHistory::Dbmate(versions(rows))));
        }
        Ok(None)
    }

    pub async fn schema_snapshot(&mut self) -> Result<super::schema::SchemaSnapshot, TargetError> {
        let rows = sqlx::query(super::schema::MYSQL)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        // information_schema's texts come back as strings or as bytes, by server and column.
        let text = |row: &sqlx::mysql::MySqlRow, i: usize| -> String {
            row.try_get::<Option<String>, _>(i)
                .ok()
                .flatten()
                .or_else(|| {
                    row.try_get::<Option<Vec<u8>>, _>(i)
                        .ok()
                        .flatten()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                })
                .unwrap_or_default()
        };
        Ok(super::schema::SchemaSnapshot(
            rows.iter().map(|r| (text(r, 0), text(r, 1))).collect(),
        ))
    }

    pub async fn dry_run(
        &mut self,
        script: &Script<'_>,
    ) -> Result<super::dry_run::DryRunReport, TargetError> {
        let attempt = self.lock_attempt;
        super::dry_run::dry_run(self, script, attempt).await
    }
}

impl super::steps::StepDriver for MySqlSession {
    fn opening_note(&self) -> Option<&'static str> {
        Some("MySQL commits DDL implicitly: the script runs statement by statement")
    }

    fn atomic(&self, statement: &crate::lint::Statement) -> bool {
        is_data_statement(statement)
    }

    async fn reset(&mut self) -> Result<(), TargetError> {
        self.reset_session().await
    }

    async fn entry(&mut self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError> {
        MySqlSession::entry(self, migration_id).await
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
        MySqlSession::record(
            self,
            script,
            execution_ms,
            success,
            false,
            error,
            statements_done,
            statements_total,
        )
        .await
    }

    async fn run_step(
        &mut self,
        script: &Script<'_>,
        log: &mut super::LogBuffer,
        index: usize,
        statement: &crate::lint::Statement,
        atomic: bool,
    ) -> Result<Result<(), String>, TargetError> {
        let mut attempts = LockAttempts::new(self.lock_budget);
        loop {
            if atomic {
                self.exec("START TRANSACTION".into()).await?;
            }
            match self.run_statement(script, statement, index).await {
                Ok(()) => {
                    attempts.got_locks(script, log);
                    return Ok(Ok(()));
                }
                Err((message, false)) => return Ok(Err(message)),
                Err((message, true)) => {
                    if atomic {
                        self.exec("ROLLBACK".into()).await?;
                    }
                    if !self.give_way(script, log, &mut attempts).await {
                        return Ok(Err(attempts.gave_up(script, &message)));
                    }
                }
            }
        }
    }

    async fn advance(&mut self, migration_id: &str, done: i64) -> Result<(), TargetError> {
        sqlx::query(ADVANCE)
            .bind(done)
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn end_step(&mut self, commit: bool) -> Result<(), TargetError> {
        self.exec(if commit { "COMMIT" } else { "ROLLBACK" }.into())
            .await
    }

    async fn rollback_progress(&mut self, migration_id: &str) -> Result<Option<i64>, TargetError> {
        let row =
            sqlx::query("SELECT rollback_done FROM sluice_schema_history WHERE migration_id = ?")
                .bind(migration_id)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| self.error(e))?;
        match row {
            Some(row) => row.try_get(0).map_err(|e| self.error(e)),
            None => Ok(None),
        }
    }

    async fn set_rollback_progress(
        &mut self,
        migration_id: &str,
        done: i64,
    ) -> Result<(), TargetError> {
        sqlx::query("UPDATE sluice_schema_history SET rollback_done = ? WHERE migration_id = ?")
            .bind(done)
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn remove_history(&mut self, migration_id: &str) -> Result<(), TargetError> {
        sqlx::query("DELETE FROM sluice_schema_history WHERE migration_id = ?")
            .bind(migration_id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn mark_complete(&mut self, migration_id: &str) -> Result<(), TargetError> {
        sqlx::query(
            "UPDATE sluice_schema_history SET success = TRUE, error = NULL WHERE migration_id = ? AND NOT success AND statements_done IS NOT NULL AND statements_total IS NOT NULL AND statements_done >= statements_total",
        )
        .bind(migration_id)
        .execute(&mut self.conn)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// Runs mysqldump (mariadb-dump) against the target; the password goes through the
/// environment (`MYSQL_PWD`), never the command line.
pub async fn backup(
    settings: &TargetSettings,
    file: &std::path::Path,
    program: &str,
) -> Result<(), TargetError> {
    let url = redact_url(&settings.url);
    let fail = |message: String| TargetError::Database {
        url: url.clone(),
        message: format!("backup with {program} failed: {message}"),
    };
    let command = dump_command(&settings.url, program, file, false).map_err(fail)?;
    super::run_dump(command, file, fail, "MySQL/MariaDB", "backup.mysqldump").await
}

/// The server's error as the mysql client shows it: `ERROR 1364 (HY000): Field 'created_at'
/// doesn't have a default value`.
fn server_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                Some(my) => match my.code() {
                    Some(state) => format!("ERROR {} ({state}): {}", my.number(), my.message()),
                    None => format!("ERROR {}: {}", my.number(), my.message()),
                },
                None => db.message().to_owned(),
            }
        }
        other => other.to_string(),
    }
}

/// mysqldump of the URL's database into `file` (only its schema when `schema_only`), the
/// password in its environment, never on its command line.
pub(super) fn dump_command(
    url: &str,
    program: &str,
    file: &std::path::Path,
    schema_only: bool,
) -> Result<tokio::process::Command, String> {
    let normalised = url.replacen("mariadb://", "mysql://", 1);
    let parsed = url_parts(&normalised).ok_or_else(|| "cannot read the database URL".to_owned())?;
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--single-transaction")
        .arg("--routines")
        .arg(format!("--host={}", parsed.host))
        .arg(format!("--port={}", parsed.port))
        .arg(format!("--user={}", parsed.user))
        .arg(format!("--result-file={}", file.display()));
    if schema_only {
        command.arg("--no-data").arg("--skip-comments");
    }
    command.arg(&parsed.database).env_remove("MYSQL_PWD");
    if let Some(password) = &parsed.password {
        command.env("MYSQL_PWD", password);
    }
    Ok(command)
}

struct UrlParts {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
}

/// mysql://user:password@host:port/database, parsed as a URL: user, password and database
/// are percent-decoded (a password with `@`, `:` or `/` in it is written percent-encoded in
/// the URL, and the dump program must get it as it is).
fn url_parts(url: &str) -> Option<UrlParts> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.scheme() != "mysql" {
        return None;
    }
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .ok()
            .map(|t| t.into_owned())
    };
    let user = if parsed.username().is_empty() {
        "root".to_owned()
    } else {
        decode(parsed.username())?
    };
    let password = match parsed.password() {
        Some(p) => Some(decode(p)?),
        None => None,
    };
    let database = decode(parsed.path().trim_start_matches('/'))?;
    Some(UrlParts {
        host: parsed.host_str()?.trim_matches(['[', ']']).to_owned(),
        port: parsed.port().unwrap_or(3306),
        user,
        password,
        database,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_urls() {
        let p = url_parts("mysql://migrator:s3cret@db.internal:3307/app").unwrap();
        assert_eq!(
            (
                p.host.as_str(),
                p.port,
                p.user.as_str(),
                p.password.as_deref(),
                p.database.as_str()
            ),
            ("db.internal", 3307, "migrator", Some("s3cret"), "app")
        );
        let p = url_parts("mysql://root@127.0.0.1/test").unwrap();
        assert_eq!((p.port, p.password), (3306, None));
        // Percent-encoded credentials reach the dump program decoded.
        let p = url_parts("mysql://mig%40rator:p%40ss%3Aw%2Frd@db:3306/my%5Fapp?ssl-mode=DISABLED")
            .unwrap();
        assert_eq!(
            (p.user.as_str(), p.password.as_deref(), p.database.as_str()),
            ("mig@rator", Some("p@ss:w/rd"), "my_app")
        );
    }
}
