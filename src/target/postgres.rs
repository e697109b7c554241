//! PostgreSQL targets, through tokio-postgres: the simple query protocol runs each statement as
//! written (DO blocks included), and the connection hands us every NOTICE the server raises.

use super::{
    HistoryEntry, LogLine, RunReport, Script, TargetError, TargetSettings, describe_failure,
    wrapper_notes,
};
use crate::config::redact_url;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The advisory lock key all Sluice runners take on a PostgreSQL target.
const RUNNER_LOCK_KEY: i64 = 7_426_010_002;

const HISTORY_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_schema_history (
    migration_id TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by TEXT NOT NULL,
    execution_ms BIGINT NOT NULL,
    success BOOLEAN NOT NULL,
    transactional BOOLEAN NOT NULL,
    error TEXT
)";

const RECORD: &str = "INSERT INTO sluice_schema_history (migration_id, checksum, applied_at, applied_by, execution_ms, success, transactional, error) \
     VALUES ($1, $2, now(), $3, $4, $5, $6, $7) \
     ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = EXCLUDED.applied_at, \
     applied_by = EXCLUDED.applied_by, execution_ms = EXCLUDED.execution_ms, success = EXCLUDED.success, \
     transactional = EXCLUDED.transactional, error = EXCLUDED.error";

pub struct PgSession {
    client: Client,
    record: tokio_postgres::Statement,
    notices: mpsc::UnboundedReceiver<LogLine>,
    connection: tokio::task::JoinHandle<()>,
    url: String,
}

impl PgSession {
    pub async fn open(settings: &TargetSettings) -> Result<PgSession, TargetError> {
        let url = redact_url(&settings.url);
        let (client, mut connection) = tokio_postgres::connect(&settings.url, NoTls)
            .await
            .map_err(|e| TargetError::Connect {
                url: url.clone(),
                message: pg_message(&e),
            })?;
        let (notice_tx, notices) = mpsc::unbounded_channel();
        let connection = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notice(notice)) => {
                        let _ = notice_tx.send(LogLine {
                            level: notice.severity().to_ascii_lowercase(),
                            message: notice.message().to_owned(),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "target connection ended");
                        break;
                    }
                }
            }
        });
        // Prepared once the history table surely exists (below); a placeholder until then.
        let placeholder = client
            .prepare("SELECT 1")
            .await
            .map_err(|e| TargetError::Connect {
                url: url.clone(),
                message: pg_message(&e),
            })?;
        let session = PgSession {
            client,
            record: placeholder,
            notices,
            connection,
            url,
        };
        let locked: bool = session
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RUNNER_LOCK_KEY])
            .await
            .map_err(|e| session.error(e))?
            .get(0);
        if !locked {
            return Err(TargetError::Busy { url: session.url });
        }
        session
            .client
            .batch_execute(&format!(
                "SET application_name = 'sluice'; SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'; {HISTORY_DDL}",
                settings.lock_timeout.as_millis(),
                settings.statement_timeout.as_millis()
            ))
            .await
            .map_err(|e| session.error(e))?;
        let mut session = session;
        session.record = session
            .client
            .prepare(RECORD)
            .await
            .map_err(|e| session.error(e))?;
        // Notices of the setup ("already exists, skipping") belong to no deployment.
        while session.notices.try_recv().is_ok() {}
        Ok(session)
    }

    fn error(&self, e: tokio_postgres::Error) -> TargetError {
        TargetError::Database {
            url: self.url.clone(),
            message: pg_message(&e),
        }
    }

    pub async fn history(&mut self) -> Result<HashMap<String, HistoryEntry>, TargetError> {
        let rows = self
            .client
            .query(
                "SELECT migration_id, checksum, success FROM sluice_schema_history",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    HistoryEntry {
                        checksum: row.get(1),
                        success: row.get(2),
                    },
                )
            })
            .collect())
    }

    fn drain_notices(&mut self, script: &Script<'_>, log: &mut Vec<LogLine>) {
        while let Ok(line) = self.notices.try_recv() {
            script.emit(log, line);
        }
    }

    /// Runs the statements, opening a transaction first when `begin` is set (sent together
    /// with the first statement, to save a round trip); returns the failure description if one
    /// fails.
    async fn run_statements(
        &mut self,
        script: &Script<'_>,
        log: &mut Vec<LogLine>,
        begin: bool,
    ) -> Result<Option<String>, TargetError> {
        let mut pending_begin = begin;
        for (index, statement) in script.statements.iter().enumerate() {
            if statement.is_transaction_wrapper() {
                continue;
            }
            let begin_now = std::mem::take(&mut pending_begin);
            let (began, result) = {
                // Notices are passed on as the server sends them, while the statement runs.
                let client = &self.client;
                let notices = &mut self.notices;
                let run = async {
                    if begin_now {
                        tokio::join!(
                            client.batch_execute("BEGIN"),
                            client.batch_execute(&statement.text)
                        )
                    } else {
                        (Ok(()), client.batch_execute(&statement.text).await)
                    }
                };
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        biased;
                        Some(line) = notices.recv() => script.emit(log, line),
                        done = &mut run => break done,
                    }
                }
            };
            began.map_err(|e| self.error(e))?;
            self.drain_notices(script, log);
            if let Err(e) = result {
                let line = error_line(statement, &e);
                return Ok(Some(describe_failure(
                    statement,
                    index,
                    line,
                    &pg_message(&e),
                )));
            }
        }
        if pending_begin {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(None)
    }

    async fn record(
        &self,
        script: &Script<'_>,
        execution_ms: i64,
        success: bool,
        transactional: bool,
        error: Option<&str>,
    ) -> Result<(), TargetError> {
        self.client
            .execute(
                &self.record,
                &[
                    &script.migration_id,
                    &script.checksum,
                    &script.applied_by,
                    &execution_ms,
                    &success,
                    &transactional,
                    &error,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn apply(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        let transactional = script.transactional();
        let mut log = wrapper_notes(script);
        let started = Instant::now();
        let failure = self.run_statements(script, &mut log, transactional).await?;
        let execution_ms = started.elapsed().as_millis() as i64;
        match &failure {
            None if transactional => {
                // The history row and the commit travel together: one round trip.
                let (recorded, committed) = tokio::join!(
                    self.record(script, execution_ms, true, true, None),
                    self.client.batch_execute("COMMIT")
                );
                recorded?;
                committed.map_err(|e| self.error(e))?;
            }
            None => {
                self.record(script, execution_ms, true, false, None).await?;
            }
            Some(message) => {
                if transactional {
                    self.client
                        .batch_execute("ROLLBACK")
                        .await
                        .map_err(|e| self.error(e))?;
                }
                let note = if transactional {
                    "rolled back: nothing of it is applied".to_owned()
                } else {
                    "not transactional: statements before the failing one stay applied".to_owned()
                };
                script.emit(&mut log, LogLine::info(note));
                self.record(script, execution_ms, false, transactional, Some(message))
                    .await?;
            }
        }
        self.drain_notices(script, &mut log);
        Ok(RunReport {
            execution_ms,
            transactional,
            log,
            error: failure,
        })
    }

    pub async fn rollback(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        let transactional = script.transactional();
        let mut log = wrapper_notes(script);
        let started = Instant::now();
        let failure = self.run_statements(script, &mut log, transactional).await?;
        let execution_ms = started.elapsed().as_millis() as i64;
        if failure.is_none() {
            self.client
                .execute(
                    "DELETE FROM sluice_schema_history WHERE migration_id = $1",
                    &[&script.migration_id],
                )
                .await
                .map_err(|e| self.error(e))?;
        }
        if transactional {
            let end = if failure.is_none() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            self.client
                .batch_execute(end)
                .await
                .map_err(|e| self.error(e))?;
        }
        self.drain_notices(script, &mut log);
        Ok(RunReport {
            execution_ms,
            transactional,
            log,
            error: failure,
        })
    }

    pub async fn forget(&mut self, migration_id: &str) -> Result<(), TargetError> {
        self.client
            .execute(
                "DELETE FROM sluice_schema_history WHERE migration_id = $1 AND NOT success",
                &[&migration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&RUNNER_LOCK_KEY])
            .await;
        drop(self.client);
        let _ = self.connection.await;
    }
}

/// Runs pg_dump against the target. Credentials go to pg_dump through its environment, never
/// on its command line, where any user of the machine could read them.
pub async fn backup(
    settings: &TargetSettings,
    file: &std::path::Path,
    pg_dump: &str,
) -> Result<(), TargetError> {
    let url = redact_url(&settings.url);
    let fail = |message: String| TargetError::Database {
        url: url.clone(),
        message: format!("backup with {pg_dump} failed: {message}"),
    };
    let config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| fail(e.to_string()))?;
    let mut command = tokio::process::Command::new(pg_dump);
    command
        .arg("--format=custom")
        .arg("--no-password")
        .arg("--file")
        .arg(file)
        .env_remove("PGPASSWORD");
    if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
        command.env("PGHOST", host);
    }
    if let Some(port) = config.get_ports().first() {
        command.env("PGPORT", port.to_string());
    }
    if let Some(user) = config.get_user() {
        command.env("PGUSER", user);
    }
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
    if let Some(dbname) = config.get_dbname() {
        command.env("PGDATABASE", dbname);
    }
    super::run_dump(command, file, fail, "PostgreSQL", "backup.pg_dump").await
}

/// The server's message with its SQLSTATE, detail and hint.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut message = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                message.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!("; hint: {hint}"));
            }
            if let Some(context) = db.where_() {
                message.push_str(&format!("; where: {context}"));
            }
            message
        }
        None => e.to_string(),
    }
}

/// The script line of the error's position, when the server gives one.
fn error_line(statement: &crate::lint::Statement, e: &tokio_postgres::Error) -> usize {
    let position = e.as_db_error().and_then(|db| match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p as usize),
        _ => None,
    });
    match position {
        Some(p) if p > 0 => {
            let before: String = statement.text.chars().take(p - 1).collect();
            statement.line + before.matches('\n').count()
        }
        _ => statement.line,
    }
}
