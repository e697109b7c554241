//! PostgreSQL targets, through tokio-postgres: the simple query protocol runs each statement as
//! written (DO blocks included), and the connection hands us every NOTICE the server raises.

use super::pg_watch::{Observed, Peer, Watch};
use super::{
    HistoryEntry, LockAttempts, LogBuffer, LogLine, RunReport, Script, TargetError, TargetSettings,
    describe_failure, executable, wrapper_notes,
};
use crate::config::redact_url;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};
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
    error TEXT,
    statements_done BIGINT,
    statements_total BIGINT,
    rollback_done BIGINT
);
DO $sluice$ BEGIN
    -- pg_attribute, not information_schema: its views cost a new session ~10 ms.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'sluice_schema_history'::regclass
                     AND attname = 'statements_done' AND NOT attisdropped) THEN
        ALTER TABLE sluice_schema_history ADD COLUMN statements_done BIGINT, ADD COLUMN statements_total BIGINT, ADD COLUMN rollback_done BIGINT;
    END IF;
END $sluice$";

pub struct PgSession {
    client: Client,
    record: tokio_postgres::Statement,
    notices: mpsc::UnboundedReceiver<LogLine>,
    connection: tokio::task::JoinHandle<()>,
    url: String,
    /// The history table, qualified by the schema it lives in: a script that changes
    /// search_path or creates a temporary table of the same name cannot divert the record.
    history: String,
    /// Sent before every script: forgets whatever the previous one set for the session.
    reset: String,
    /// How long a statement may wait for its locks in all, and in one attempt.
    lock_budget: Duration,
    lock_attempt: Duration,
    /// The second connection that watches this one's locks (None when it could not be had).
    watch: Option<Watch>,
    /// The session's backend pid.
    pid: i32,
    /// What the watch saw during the statement that runs (or ran last).
    observed: std::sync::Mutex<Observed>,
    /// Whether sluice_lock_waiting_seconds was set for this environment and not yet reset.
    lock_gauge_set: bool,
}

impl PgSession {
    pub async fn open(settings: &TargetSettings) -> Result<PgSession, TargetError> {
        let url = redact_url(&settings.url);
        // The timeouts and the application name travel as startup options: they are then the
        // session's defaults, which the RESET ALL before every script returns to.
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| TargetError::Connect {
                url: url.clone(),
                message: pg_message(&e),
            })?;
        let startup = format!(
            "-c lock_timeout={}ms -c statement_timeout={}ms",
            settings.lock_timeout.as_millis(),
            settings.statement_timeout.as_millis()
        );
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {startup}"),
            _ => startup,
        };
        config.options(options).application_name("sluice");
        let (client, mut connection) =
            config
                .connect(NoTls)
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
        let reset = "RESET ALL; DISCARD TEMP".to_owned();
        let mut session = PgSession {
            client,
            record: placeholder,
            notices,
            connection,
            url,
            history: "sluice_schema_history".into(),
            reset,
            lock_budget: settings.lock_timeout,
            lock_attempt: settings.lock_attempt,
            watch: None,
            pid: 0,
            observed: Default::default(),
            lock_gauge_set: false,
        };
        let row = session
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
                &[&RUNNER_LOCK_KEY],
            )
            .await
            .map_err(|e| session.error(e))?;
        if !row.get::<_, bool>(0) {
            return Err(TargetError::Busy { url: session.url });
        }
        session.pid = row.get(1);
        session.watch = Watch::open(
            &config,
            row.get(1),
            settings.blocking_limit,
            settings.lock_attempt,
        )
        .await;
        session
            .client
            .batch_execute(&format!("{}; {HISTORY_DDL}", session.reset))
            .await
            .map_err(|e| session.error(e))?;
        let schema: String = session
            .client
            .query_one(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'sluice_schema_history'::regclass",
                &[],
            )
            .await
            .map_err(|e| session.error(e))?
            .get(0);
        session.history = format!("\"{}\".sluice_schema_history", schema.replace('"', "\"\""));
        session.record = session
            .client
            .prepare(&format!(
                "INSERT INTO {} (migration_id, checksum, applied_at, applied_by, execution_ms, success, transactional, error, statements_done, statements_total) \
                 VALUES ($1, $2, now(), $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = EXCLUDED.applied_at, \
                 applied_by = EXCLUDED.applied_by, execution_ms = EXCLUDED.execution_ms, success = EXCLUDED.success, \
                 transactional = EXCLUDED.transactional, error = EXCLUDED.error, \
                 statements_done = EXCLUDED.statements_done, statements_total = EXCLUDED.statements_total, rollback_done = NULL",
                session.history
            ))
            .await
            .map_err(|e| session.error(e))?;
        // Notices of the setup ("already exists, skipping") belong to no deployment.
        while session.notices.try_recv().is_ok() {}
        Ok(session)
    }

    /// The INVALID indexes of the database, as (schema-qualified name, name).
    async fn invalid_indexes(&self) -> Result<Vec<(String, String)>, TargetError> {
        let rows = self
            .client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname), c.relname::text FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT i.indisvalid",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// A failed CREATE INDEX CONCURRENTLY leaves its index behind, INVALID: it slows every
    /// write to the table and makes a retry fail ("already exists"). Drops (concurrently) the
    /// INVALID indexes that appeared during the statement and that it names, and says so.
    async fn drop_left_invalid_indexes(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        statement: &crate::lint::Statement,
        before: &[(String, String)],
    ) -> Result<(), TargetError> {
        let text = statement.text.to_lowercase();
        for (qualified, name) in self.invalid_indexes().await? {
            if before.iter().any(|(q, _)| *q == qualified) || !text.contains(&name.to_lowercase()) {
                continue;
            }
            let line = match self
                .client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"))
                .await
            {
                Ok(()) => LogLine::info(format!(
                    "the failed statement left the INVALID index {qualified}; dropped it (concurrently), so that a retry builds it again"
                )),
                Err(e) => LogLine::info(format!(
                    "the failed statement left the INVALID index {qualified}, and dropping it failed ({}); drop it by hand (DROP INDEX CONCURRENTLY {qualified}) before a retry",
                    pg_message(&e)
                )),
            };
            script.emit(log, line);
        }
        Ok(())
    }

    /// What a statement's failure says: the watchdog's reason when it cancelled the statement,
    /// otherwise the server's message.
    fn failure_message(&self, e: &tokio_postgres::Error) -> String {
        let observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match (&observed.cancelled, e.code()) {
            (Some(reason), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)) => {
                format!("{reason} ({})", pg_message(e))
            }
            _ => pg_message(e),
        }
    }

    fn error(&self, e: tokio_postgres::Error) -> TargetError {
        let message = pg_message(&e);
        if session_ended(&e) {
            TargetError::Session {
                url: self.url.clone(),
                message,
            }
        } else {
            TargetError::Database {
                url: self.url.clone(),
                message,
            }
        }
    }

    /// Drops everything in the database's own schemas, in one transaction (`sluice reset`).
    pub async fn clear(&mut self) -> Result<(), TargetError> {
        let result = self
            .client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL client_min_messages = warning; {}; COMMIT",
                super::restore::PG_CLEAR
            ))
            .await;
        if let Err(e) = result {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(self.error(e));
        }
        Ok(())
    }

    pub async fn history(&mut self) -> Result<HashMap<String, HistoryEntry>, TargetError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT migration_id, checksum, success, transactional, statements_done, statements_total, error FROM {}",
                    self.history
                ),
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
                        transactional: row.get(3),
                        statements_done: row.get(4),
                        statements_total: row.get(5),
                        error: row.get(6),
                    },
                )
            })
            .collect())
    }

    fn drain_notices(&mut self, script: &Script<'_>, log: &mut LogBuffer) {
        while let Ok(line) = self.notices.try_recv() {
            script.emit(log, line);
        }
    }

    /// Sends `before` (session reset, BEGIN, ...: each its own message) and the statement,
    /// pipelined in one round trip, passing notices on as the server sends them. The outer
    /// error is the connection's (or a failure of `before`); the inner one the statement's.
    async fn run_one(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        before: &[&str],
        statement: &str,
    ) -> Result<Result<(), tokio_postgres::Error>, TargetError> {
        let started = std::time::Instant::now();
        let span =
            crate::telemetry::traces::statement_span("postgresql", script.namespace, statement);
        *self.observed.get_mut().unwrap_or_else(|p| p.into_inner()) = Observed::default();
        let (prepared, result) = {
            let client = &self.client;
            let notices = &mut self.notices;
            let observed = &self.observed;
            let watch = self.watch.as_ref();
            let watching = async move {
                match watch {
                    Some(watch) => watch.watch(observed, statement).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(watching);
            let run = async {
                let before = futures_util::future::try_join_all(
                    before.iter().map(|sql| client.batch_execute(sql)),
                );
                let (prepared, result) = tokio::join!(before, client.batch_execute(statement));
                (prepared.map(|_| ()), result)
            };
            let run = tracing::Instrument::instrument(run, span.clone());
            tokio::pin!(run);
            loop {
                tokio::select! {
                    biased;
                    Some(line) = notices.recv() => script.emit(log, line),
                    done = &mut run => break done,
                    () = &mut watching => {}
                }
            }
        };
        prepared.map_err(|e| self.error(e))?;
        crate::telemetry::statement_ran(
            script.environment,
            started.elapsed().as_secs_f64(),
            result.is_ok(),
        );
        span.record(
            "sluice.outcome",
            if result.is_ok() { "ok" } else { "error" },
        );
        if self.lock_gauge_set && !result.as_ref().is_err_and(lock_timed_out) {
            // The statement no longer waits for locks.
            crate::telemetry::lock_waiting(script.environment, 0.0);
            self.lock_gauge_set = false;
        }
        if result.is_err()
            && self
                .observed
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .cancelled
                .is_some()
        {
            crate::telemetry::watchdog_cancelled(script.environment);
        }
        self.drain_notices(script, log);
        Ok(result)
    }

    /// After an attempt whose lock was not granted in time: waiting longer would queue every
    /// session that touches the table behind this one, so the attempt's transaction (if it
    /// ran in one) is rolled back, nothing applied, and the next attempt follows a pause
    /// (true). Once the lock budget is spent, false, with a fresh transaction open where the
    /// attempt had one, for the caller to close as a failure.
    async fn give_way(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        attempts: &mut LockAttempts,
        in_transaction: bool,
    ) -> Result<bool, TargetError> {
        if in_transaction {
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| self.error(e))?;
        }
        let Some(pause) = attempts.next_pause() else {
            crate::telemetry::lock_waiting(script.environment, 0.0);
            self.lock_gauge_set = false;
            if in_transaction {
                self.client
                    .batch_execute("BEGIN")
                    .await
                    .map_err(|e| self.error(e))?;
            }
            return Ok(false);
        };
        crate::telemetry::lock_gave_way(script.environment);
        crate::telemetry::lock_waiting(script.environment, attempts.waited().as_secs_f64());
        self.lock_gauge_set = true;
        let holders = std::mem::take(
            &mut self
                .observed
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .holders,
        );
        let waits_out = self.watch.is_some() && !holders.is_empty();
        let next = if waits_out {
            format!(
                "the next attempt starts when {} transaction ends",
                if holders.len() == 1 { "that" } else { "each" }
            )
        } else {
            format!("trying again in {} ms", pause.as_millis())
        };
        let held = held_by(&holders);
        script.waiting(Some(format!("{held} (attempt {})", attempts.attempts())));
        script.emit(log, attempts.gave_way_line(self.lock_attempt, &held, &next));
        match &self.watch {
            Some(watch) if waits_out => {
                let waited = Instant::now();
                let ended = self
                    .wait_out(watch, &holders, attempts, script.environment)
                    .await;
                script.emit(
                    log,
                    LogLine::info(match ended {
                        true => format!(
                            "the holder's transaction ended after {:.1} s; attempt {} starts",
                            waited.elapsed().as_secs_f64(),
                            attempts.attempts() + 1
                        ),
                        false => format!(
                            "still held after {:.1} s; attempt {} starts",
                            waited.elapsed().as_secs_f64(),
                            attempts.attempts() + 1
                        ),
                    }),
                );
            }
            _ => tokio::time::sleep(pause).await,
        }
        Ok(true)
    }

    /// Waits until the transactions that held the locks end (looking every 20 ms), for
    /// `HOLDER_RECHECK` at most (then an attempt tells afresh), or until the lock budget is
    /// spent. Whether they ended.
    async fn wait_out(
        &self,
        watch: &Watch,
        holders: &[Peer],
        attempts: &LockAttempts,
        environment: &str,
    ) -> bool {
        let started = Instant::now();
        loop {
            if !watch.still_open(holders).await {
                return true;
            }
            if started.elapsed() >= HOLDER_RECHECK || attempts.spent() {
                return false;
            }
            crate::telemetry::lock_waiting(environment, attempts.waited().as_secs_f64());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `SET [LOCAL] lock_timeout` to one attempt's.
    fn attempt_timeout(&self, local: bool) -> String {
        format!(
            "SET {}lock_timeout = '{}ms'",
            if local { "LOCAL " } else { "" },
            self.lock_attempt.as_millis().max(1)
        )
    }

    /// Runs the script in one transaction (left open for the caller to finish), giving way
    /// when a lock is not granted within one attempt's lock_timeout: rolled back (nothing
    /// applied), a pause, another attempt, until the lock budget is spent. Returns the
    /// failure description, if any.
    async fn run_giving_way(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
    ) -> Result<Option<String>, TargetError> {
        let mut attempts = LockAttempts::new(self.lock_budget);
        Ok(loop {
            match self.run_in_transaction(script, log).await? {
                Some((message, true)) => {
                    if !self.give_way(script, log, &mut attempts, true).await? {
                        break Some(attempts.gave_up(script, &message));
                    }
                }
                Some((message, false)) => break Some(message),
                None => {
                    attempts.got_locks(script, log);
                    break None;
                }
            }
        })
    }

    /// Runs the statements in one transaction (the session reset first, BEGIN with the first
    /// statement, to save round trips); returns the failure description if one fails. The
    /// transaction is left open for the caller to finish.
    async fn run_in_transaction(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
    ) -> Result<Option<(String, bool)>, TargetError> {
        let reset = self.reset.clone();
        let attempt = self.attempt_timeout(true);
        let mut before: Vec<&str> = vec![&reset, "BEGIN", &attempt];
        for (index, statement) in executable(script.statements) {
            let result = self
                .run_one(script, log, &std::mem::take(&mut before), &statement.text)
                .await?;
            if let Err(e) = result {
                let line = error_line(statement, &e);
                return Ok(Some((
                    describe_failure(statement, index, line, &self.failure_message(&e)),
                    lock_timed_out(&e),
                )));
            }
        }
        if !before.is_empty() {
            // Nothing but BEGIN/COMMIT lines: an empty transaction still records the script.
            self.client
                .batch_execute(&format!("{reset}; BEGIN"))
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "history_write", skip_all, fields(otel.name = "history write", db.namespace = %script.namespace))]
    async fn record(
        &self,
        script: &Script<'_>,
        execution_ms: i64,
        success: bool,
        transactional: bool,
        error: Option<&str>,
        statements_done: Option<i64>,
        statements_total: Option<i64>,
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
                    &statements_done,
                    &statements_total,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn apply(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        if !script.transactional() {
            return super::steps::apply_in_steps(self, script).await;
        }
        let mut log = wrapper_notes(script);
        let started = Instant::now();
        let failure = self.run_giving_way(script, &mut log).await?;
        let execution_ms = started.elapsed().as_millis() as i64;
        let total = executable(script.statements).len() as i64;
        match &failure {
            None => {
                // The history row and the commit travel together: one round trip.
                let (recorded, committed) = tokio::join!(
                    self.record(
                        script,
                        execution_ms,
                        true,
                        true,
                        None,
                        Some(total),
                        Some(total)
                    ),
                    self.client.batch_execute("COMMIT")
                );
                let ended = match (recorded, committed) {
                    (Ok(()), Ok(())) => None,
                    (Err(e), _) => Some(e),
                    (Ok(()), Err(e)) => Some(self.error(e)),
                };
                if let Some(e) = ended {
                    // Whatever the script did that made the history write fail (a dropped or
                    // altered sluice_schema_history), none of it stays: the transaction goes.
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    return Err(match e {
                        TargetError::Database { url, message } => TargetError::Database {
                            url,
                            message: format!(
                                "the script ran, but Sluice could not record it in {} ({message}); its transaction was rolled back, nothing of it is applied",
                                self.history
                            ),
                        },
                        other => other,
                    });
                }
            }
            Some(message) => {
                if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                    // The statement that failed took the session with it (it ended its own
                    // backend, or left the protocol out of step): say which statement.
                    return Err(match self.error(e) {
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
        self.drain_notices(script, &mut log);
        Ok(RunReport {
            execution_ms,
            transactional: true,
            log: log.into_lines(),
            error: failure,
            statements_applied: None,
        })
    }

    async fn entry(&self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT checksum, success, transactional, statements_done, statements_total, error FROM {} WHERE migration_id = $1",
                    self.history
                ),
                &[&migration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.map(|row| HistoryEntry {
            checksum: row.get(0),
            success: row.get(1),
            transactional: row.get(2),
            statements_done: row.get(3),
            statements_total: row.get(4),
            error: row.get(5),
        }))
    }

    pub async fn rollback(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        if !script.transactional() {
            return super::steps::rollback_in_steps(self, script).await;
        }
        let mut log = wrapper_notes(script);
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
        self.client
            .batch_execute(end)
            .await
            .map_err(|e| self.error(e))?;
        self.drain_notices(script, &mut log);
        Ok(RunReport {
            execution_ms,
            transactional: true,
            log: log.into_lines(),
            error: failure,
            statements_applied: None,
        })
    }

    pub async fn forget(&mut self, migration_id: &str) -> Result<(), TargetError> {
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE migration_id = $1 AND NOT success",
                    self.history
                ),
                &[&migration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn close(self) {
        if let Some(watch) = self.watch {
            watch.close().await;
        }
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&RUNNER_LOCK_KEY])
            .await;
        drop(self.client);
        let _ = self.connection.await;
    }
}

impl super::steps::StepDriver for PgSession {
    fn atomic(&self, statement: &crate::lint::Statement) -> bool {
        !statement.requires_no_transaction()
    }

    async fn reset(&mut self) -> Result<(), TargetError> {
        let reset = self.reset.clone();
        self.client
            .batch_execute(&reset)
            .await
            .map_err(|e| self.error(e))
    }

    async fn entry(&mut self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError> {
        PgSession::entry(self, migration_id).await
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
        PgSession::record(
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
        log: &mut LogBuffer,
        index: usize,
        statement: &crate::lint::Statement,
        atomic: bool,
    ) -> Result<Result<(), String>, TargetError> {
        // BEGIN travels with the statement: one round trip. Each attempt waits for its locks
        // no longer than one attempt's lock_timeout (SET, not SET LOCAL, outside a transaction).
        let local = self.attempt_timeout(true);
        let attempt = self.attempt_timeout(false);
        let before: Vec<&str> = if atomic {
            vec!["BEGIN", &local]
        } else {
            vec![&attempt]
        };
        let builds_index = !atomic && builds_index_concurrently(&statement.text);
        let mut attempts = LockAttempts::new(self.lock_budget);
        loop {
            let invalid_before = if builds_index {
                self.invalid_indexes().await?
            } else {
                Vec::new()
            };
            let result = self.run_one(script, log, &before, &statement.text).await?;
            if result.is_err() && builds_index {
                self.drop_left_invalid_indexes(script, log, statement, &invalid_before)
                    .await?;
            }
            match result {
                Ok(()) => {
                    attempts.got_locks(script, log);
                    return Ok(Ok(()));
                }
                Err(e) => {
                    let line = error_line(statement, &e);
                    let message =
                        describe_failure(statement, index, line, &self.failure_message(&e));
                    if !lock_timed_out(&e) {
                        return Ok(Err(message));
                    }
                    if !self.give_way(script, log, &mut attempts, atomic).await? {
                        return Ok(Err(attempts.gave_up(script, &message)));
                    }
                }
            }
        }
    }

    async fn advance(&mut self, migration_id: &str, done: i64) -> Result<(), TargetError> {
        let advanced = self
            .client
            .execute(
                &format!(
                    "UPDATE {} SET statements_done = $2 WHERE migration_id = $1",
                    self.history
                ),
                &[&migration_id, &done],
            )
            .await
            .map_err(|e| self.error(e))?;
        if advanced != 1 {
            return Err(TargetError::Database {
                url: self.url.clone(),
                message: format!(
                    "the history row of {migration_id} disappeared while it was being applied"
                ),
            });
        }
        Ok(())
    }

    async fn end_step(&mut self, commit: bool) -> Result<(), TargetError> {
        self.client
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
            .map_err(|e| self.error(e))
    }

    async fn rollback_progress(&mut self, migration_id: &str) -> Result<Option<i64>, TargetError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT rollback_done FROM {} WHERE migration_id = $1",
                    self.history
                ),
                &[&migration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.and_then(|row| row.get(0)))
    }

    async fn set_rollback_progress(
        &mut self,
        migration_id: &str,
        done: i64,
    ) -> Result<(), TargetError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET rollback_done = $2 WHERE migration_id = $1",
                    self.history
                ),
                &[&migration_id, &done],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn remove_history(&mut self, migration_id: &str) -> Result<(), TargetError> {
        self.client
            .execute(
                &format!("DELETE FROM {} WHERE migration_id = $1", self.history),
                &[&migration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn mark_complete(&mut self, migration_id: &str) -> Result<(), TargetError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET success = true, error = NULL WHERE migration_id = $1 AND NOT success AND statements_done IS NOT NULL AND statements_total IS NOT NULL AND statements_done >= statements_total",
                    self.history
                ),
                &[&migration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    fn drain(&mut self, script: &Script<'_>, log: &mut LogBuffer) {
        self.drain_notices(script, log);
    }
}

impl super::dry_run::DryRunDriver for PgSession {
    fn not_in_transaction(&self, statement: &crate::lint::Statement) -> Option<String> {
        statement.requires_no_transaction().then(|| {
            "it cannot run inside a transaction block (PostgreSQL), so it cannot be tried and rolled back".to_owned()
        })
    }

    async fn begin(&mut self) -> Result<(), TargetError> {
        let sql = format!("{}; BEGIN; {}", self.reset, self.attempt_timeout(true));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.error(e))
    }

    async fn run(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        index: usize,
        statement: &crate::lint::Statement,
    ) -> Result<Result<(), (String, bool)>, TargetError> {
        let result = self.run_one(script, log, &[], &statement.text).await?;
        Ok(result.map_err(|e| {
            let line = error_line(statement, &e);
            let lock = lock_timed_out(&e);
            let mut message = self.failure_message(&e);
            if lock {
                let holders = std::mem::take(
                    &mut self
                        .observed
                        .get_mut()
                        .unwrap_or_else(|p| p.into_inner())
                        .holders,
                );
                message = format!("{message} ({})", held_by(&holders));
            }
            (describe_failure(statement, index, line, &message), lock)
        }))
    }

    async fn locks(&mut self) -> Vec<super::dry_run::DryRunLock> {
        // Asked inside the transaction: the relations the script created have their names.
        const LOCKS: &str = "SELECT format('%I.%I', n.nspname, c.relname), l.mode \
             FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE l.pid = $1 AND l.locktype = 'relation' AND l.granted \
               AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
             ORDER BY 1, 2";
        match self.client.query(LOCKS, &[&self.pid]).await {
            Ok(rows) => rows
                .iter()
                .map(|r| super::dry_run::DryRunLock::new(r.get(0), r.get(1)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the dry run's locks");
                Vec::new()
            }
        }
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| self.error(e))
    }
}

impl PgSession {
    pub async fn tool_history(&mut self) -> Result<Option<super::ToolHistory>, TargetError> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass('flyway_schema_history') IS NOT NULL, to_regclass('schema_migrations') IS NOT NULL, \
                 EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() \
                         AND table_name = 'schema_migrations' AND column_name = 'dirty')",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        let (flyway, migrations, dirty): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let texts = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter()
                .filter_map(|r| r.get::<_, Option<String>>(0))
                .collect()
        };
        if flyway {
            let rows = self
                .client
                .query("SELECT version FROM flyway_schema_history WHERE success AND version IS NOT NULL", &[])
                .await
                .map_err(|e| self.error(e))?;
            return Ok(Some(super::ToolHistory::Flyway(texts(rows))));
        }
        if migrations && dirty {
            let row = self
                .client
                .query_opt(
                    "SELECT version::text, dirty FROM schema_migrations LIMIT 1",
                    &[],
                )
                .await
                .map_err(|e| self.error(e))?;
            return Ok(row.map(|r| super::ToolHistory::GolangMigrate {
                version: r.get(0),
                dirty: r.get(1),
            }));
        }
        if migrations {
            let rows = self
                .client
                .query("SELECT version::text FROM schema_migrations", &[])
                .await
                .map_err(|e| self.error(e))?;
            return Ok(Some(super::ToolHistory::Dbmate(texts(rows))));
        }
        Ok(None)
    }

    pub async fn schema_snapshot(&mut self) -> Result<super::schema::SchemaSnapshot, TargetError> {
        let rows = self
            .client
            .query(super::schema::POSTGRES, &[])
            .await
            .map_err(|e| self.error(e))?;
        Ok(super::schema::SchemaSnapshot(
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, Option<String>>(0).unwrap_or_default(),
                        r.get::<_, Option<String>>(1).unwrap_or_default(),
                    )
                })
                .collect(),
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
    let mut command = pg_program(&settings.url, pg_dump, None).map_err(fail)?;
    command.arg("--format=custom").arg("--file").arg(file);
    super::run_dump(command, file, fail, "PostgreSQL", "backup.pg_dump").await
}

/// A PostgreSQL client program (pg_dump, pg_restore) pointed at the URL's server and database
/// (or `dbname`), credentials in its environment, never on its command line.
pub(super) fn pg_program(
    url: &str,
    program: &str,
    dbname: Option<&str>,
) -> Result<tokio::process::Command, String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| e.to_string())?;
    let mut command = tokio::process::Command::new(program);
    command.arg("--no-password").env_remove("PGPASSWORD");
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
    if let Some(dbname) = dbname.or(config.get_dbname()) {
        command.env("PGDATABASE", dbname);
    }
    Ok(command)
}

/// Whether an error means the session is gone or unusable: the connection closed, an error
/// that is not the server's answer to a statement (I/O, a message out of protocol), or a FATAL
/// one (the server ends the session after it).
fn session_ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || match e.as_db_error() {
            None => true,
            Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
        }
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

/// Whether a statement builds an index concurrently (CREATE [UNIQUE] INDEX CONCURRENTLY, or
/// REINDEX ... CONCURRENTLY, whose failure also leaves an INVALID index).
fn builds_index_concurrently(text: &str) -> bool {
    // Block comments out first (not nested: enough to find the first words).
    let mut bare = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        bare.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    bare.push_str(rest);
    let words: Vec<String> = bare
        .lines()
        .map(|l| l.split("--").next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .map(str::to_lowercase)
        .collect();
    let concurrently = words.iter().any(|w| w == "concurrently");
    match words.first().map(String::as_str) {
        Some("create") => concurrently && words.iter().take(3).any(|w| w == "index"),
        Some("reindex") => concurrently,
        _ => false,
    }
}

/// Whether a statement failed for want of a lock within lock_timeout.
fn lock_timed_out(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// The longest an attempt waits for holders to end before it tries anyway (a holder the
/// watch did not see may have been the one in the way).
const HOLDER_RECHECK: Duration = Duration::from_secs(10);

/// Who held the lock an attempt waited for, as the log says it.
fn held_by(holders: &[Peer]) -> String {
    if holders.is_empty() {
        return "another session holds it".to_owned();
    }
    let named: Vec<String> = holders.iter().map(Peer::describe).collect();
    format!("held by {}", named.join("; "))
}

#[cfg(test)]
mod index_tests {
    use super::builds_index_concurrently;

    #[test]
    fn concurrent_index_builds_are_recognised_through_comments_and_case() {
        for yes in [
            "CREATE INDEX CONCURRENTLY a ON t (x)",
            "create unique index concurrently if not exists a on t (x)",
            "-- why\nCREATE INDEX\n  CONCURRENTLY a ON t (x)",
            "/* why */ CREATE UNIQUE INDEX CONCURRENTLY a ON t (x)",
            "REINDEX INDEX CONCURRENTLY a",
        ] {
            assert!(builds_index_concurrently(yes), "{yes}");
        }
        for no in [
            "CREATE INDEX a ON t (x)",
            "DROP INDEX CONCURRENTLY a",
            "CREATE TABLE concurrently (index int)",
            "-- CREATE INDEX CONCURRENTLY a ON t (x)\nSELECT 1",
        ] {
            assert!(!builds_index_concurrently(no), "{no}");
        }
    }
}
