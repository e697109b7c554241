//! MySQL and MariaDB targets, through sqlx. `GET_LOCK` keeps a second runner out. MySQL commits
//! every DDL statement implicitly, so only scripts of data statements run in one transaction
//! with their history row; a script with DDL runs statement by statement and is recorded as
//! non-transactional. Statement timeouts use MariaDB's `max_statement_time` or MySQL's
//! `max_execution_time` (which covers SELECTs only), whichever the server has.

use super::{
    HistoryEntry, LogLine, RunReport, Script, TargetError, TargetSettings, describe_failure,
    wrapper_notes,
};
use crate::config::redact_url;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Instant;

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
    error TEXT NULL
) ENGINE = InnoDB";

const RECORD: &str = "INSERT INTO sluice_schema_history (migration_id, checksum, applied_at, applied_by, execution_ms, success, transactional, error) \
     VALUES (?, ?, CURRENT_TIMESTAMP(3), ?, ?, ?, ?, ?) \
     ON DUPLICATE KEY UPDATE checksum = VALUES(checksum), applied_at = VALUES(applied_at), \
     applied_by = VALUES(applied_by), execution_ms = VALUES(execution_ms), success = VALUES(success), \
     transactional = VALUES(transactional), error = VALUES(error)";

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
        let mut session = MySqlSession { conn, url };
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
        session
            .exec(format!(
                "SET SESSION lock_wait_timeout = {lock_seconds}, SESSION innodb_lock_wait_timeout = {lock_seconds}"
            ))
            .await?;
        // One of the two exists, depending on the server.
        if session
            .exec(format!(
                "SET SESSION max_statement_time = {statement_seconds}"
            ))
            .await
            .is_err()
        {
            let _ = session
                .exec(format!(
                    "SET SESSION max_execution_time = {}",
                    statement_seconds * 1000
                ))
                .await;
        }
        session.exec(HISTORY_DDL.to_owned()).await?;
        Ok(session)
    }

    fn error(&self, e: sqlx::Error) -> TargetError {
        TargetError::Database {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    async fn exec(&mut self, sql: String) -> Result<(), TargetError> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn history(&mut self) -> Result<HashMap<String, HistoryEntry>, TargetError> {
        let rows = sqlx::query("SELECT migration_id, checksum, success FROM sluice_schema_history")
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut history = HashMap::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(|e| self.error(e))?;
            let checksum: String = row.try_get(1).map_err(|e| self.error(e))?;
            let success: bool = row.try_get(2).map_err(|e| self.error(e))?;
            history.insert(id, HistoryEntry { checksum, success });
        }
        Ok(history)
    }

    fn transactional(script: &Script<'_>) -> bool {
        script
            .statements
            .iter()
            .filter(|s| !s.is_transaction_wrapper())
            .all(is_data_statement)
    }

    async fn run_statements(&mut self, script: &Script<'_>) -> Option<String> {
        for (index, statement) in script.statements.iter().enumerate() {
            if statement.is_transaction_wrapper() {
                continue;
            }
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(statement.text.clone()))
                .execute(&mut self.conn)
                .await
            {
                let message = match &e {
                    sqlx::Error::Database(db) => match db.code() {
                        Some(code) => format!("{} (error {code})", db.message()),
                        None => db.message().to_owned(),
                    },
                    other => other.to_string(),
                };
                return Some(describe_failure(statement, index, statement.line, &message));
            }
        }
        None
    }

    async fn record(
        &mut self,
        script: &Script<'_>,
        execution_ms: i64,
        success: bool,
        transactional: bool,
        error: Option<&str>,
    ) -> Result<(), TargetError> {
        sqlx::query(RECORD)
            .bind(script.migration_id)
            .bind(script.checksum)
            .bind(script.applied_by)
            .bind(execution_ms)
            .bind(success)
            .bind(transactional)
            .bind(error)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn apply(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        let transactional = Self::transactional(script);
        let mut log = wrapper_notes(script);
        if !transactional {
            script.emit(
                &mut log,
                LogLine::info(
                    "MySQL commits DDL implicitly: the script runs statement by statement",
                ),
            );
        }
        let started = Instant::now();
        if transactional {
            self.exec("START TRANSACTION".into()).await?;
        }
        let failure = self.run_statements(script).await;
        let execution_ms = started.elapsed().as_millis() as i64;
        match &failure {
            None => {
                self.record(script, execution_ms, true, transactional, None)
                    .await?;
                if transactional {
                    self.exec("COMMIT".into()).await?;
                }
            }
            Some(message) => {
                if transactional {
                    self.exec("ROLLBACK".into()).await?;
                    script.emit(
                        &mut log,
                        LogLine::info("rolled back: nothing of it is applied"),
                    );
                } else {
                    script.emit(
                        &mut log,
                        LogLine::info(
                            "not transactional: statements before the failing one stay applied",
                        ),
                    );
                }
                self.record(script, execution_ms, false, transactional, Some(message))
                    .await?;
            }
        }
        Ok(RunReport {
            execution_ms,
            transactional,
            log,
            error: failure,
        })
    }

    pub async fn rollback(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        let transactional = Self::transactional(script);
        let log = wrapper_notes(script);
        let started = Instant::now();
        if transactional {
            self.exec("START TRANSACTION".into()).await?;
        }
        let failure = self.run_statements(script).await;
        let execution_ms = started.elapsed().as_millis() as i64;
        if failure.is_none() {
            sqlx::query("DELETE FROM sluice_schema_history WHERE migration_id = ?")
                .bind(script.migration_id)
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.error(e))?;
        }
        if transactional {
            let end = if failure.is_none() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            self.exec(end.into()).await?;
        }
        Ok(RunReport {
            execution_ms,
            transactional,
            log,
            error: failure,
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
    let normalised = settings.url.replacen("mariadb://", "mysql://", 1);
    let parsed =
        url_parts(&normalised).ok_or_else(|| fail("cannot read the database URL".into()))?;
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--single-transaction")
        .arg("--routines")
        .arg(format!("--host={}", parsed.host))
        .arg(format!("--port={}", parsed.port))
        .arg(format!("--user={}", parsed.user))
        .arg(format!("--result-file={}", file.display()))
        .arg(&parsed.database)
        .env_remove("MYSQL_PWD");
    if let Some(password) = &parsed.password {
        command.env("MYSQL_PWD", password);
    }
    super::run_dump(command, file, fail, "MySQL/MariaDB", "backup.mysqldump").await
}

struct UrlParts {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
}

/// mysql://user:password@host:port/database
fn url_parts(url: &str) -> Option<UrlParts> {
    let rest = url.strip_prefix("mysql://")?;
    let (authority, path) = rest.split_once('/')?;
    let database = path.split('?').next()?.to_owned();
    let (credentials, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (user, password) = match credentials {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
            None => (c.to_owned(), None),
        },
        None => ("root".to_owned(), None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().ok()?),
        None => (hostport.to_owned(), 3306),
    };
    Some(UrlParts {
        host,
        port,
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
    }
}
