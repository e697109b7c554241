//! Talks to the databases being migrated. Applies a script (inside one transaction where the
//! engine allows it, with lock_timeout and statement_timeout set), keeps the history table
//! `sluice_schema_history` in the same transaction as the script, takes a lock so that two
//! runners never apply to one database, and reports the database's own error with the statement
//! and line. Knows nothing of approvals or the state store.

pub mod dry_run;
mod mysql;
mod pg_watch;
mod postgres;
mod restore;
pub mod rollback_test;
pub mod schema;
mod sqlite;
mod steps;

use crate::lint::Statement;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How to reach a target and what limits to set there.
#[derive(Clone)]
pub struct TargetSettings {
    pub url: String,
    /// How long a statement may wait for its locks in all (PostgreSQL: across short attempts).
    pub lock_timeout: Duration,
    /// PostgreSQL: one attempt's lock_timeout; a statement that times out gives way to the
    /// sessions queued behind it, and tries again after a short pause, until `lock_timeout`.
    pub lock_attempt: Duration,
    pub statement_timeout: Duration,
    /// PostgreSQL: how long a statement may keep other sessions waiting for its locks before
    /// the blocking watchdog cancels it (None: no watchdog).
    pub blocking_limit: Option<Duration>,
}

impl TargetSettings {
    /// The settings an environment gives its target.
    pub fn for_environment(env: &crate::config::EnvironmentConfig) -> TargetSettings {
        TargetSettings {
            url: env.url.expose().to_owned(),
            lock_timeout: Duration::from_secs(env.lock_timeout_seconds),
            lock_attempt: Duration::from_millis(env.lock_attempt_ms),
            statement_timeout: Duration::from_secs(env.statement_timeout_seconds),
            blocking_limit: (env.blocking_limit_seconds > 0)
                .then(|| Duration::from_secs(env.blocking_limit_seconds)),
        }
    }
}

/// The attempts of one statement (or transactional script) to get its locks.
pub(crate) struct LockAttempts {
    started: Instant,
    budget: Duration,
    attempts: u32,
}

impl LockAttempts {
    pub(crate) fn new(budget: Duration) -> LockAttempts {
        LockAttempts {
            started: Instant::now(),
            budget,
            attempts: 0,
        }
    }

    /// After a lock timeout: how long to pause before the next attempt (50 ms doubling to
    /// 400 ms, with jitter), or None once the budget is spent.
    pub(crate) fn next_pause(&mut self) -> Option<Duration> {
        self.attempts += 1;
        let doubled = 50u64 << self.attempts.min(3);
        let mut byte = [0u8; 1];
        let _ = getrandom::fill(&mut byte);
        let pause = Duration::from_millis(doubled / 2 + doubled * u64::from(byte[0]) / 510);
        (self.started.elapsed() + pause < self.budget).then_some(pause)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the lock budget is spent.
    pub(crate) fn spent(&self) -> bool {
        self.started.elapsed() >= self.budget
    }

    /// The log's line for the attempt that just gave way: who held the lock (`held`), and
    /// when the next attempt comes (`next`).
    pub(crate) fn gave_way_line(&self, attempt: Duration, held: &str, next: &str) -> LogLine {
        LogLine::info(format!(
            "attempt {}: a lock was not granted within {} ms ({held}); gave way to the sessions queued behind, nothing applied; {next} ({} s of the {} s lock budget spent)",
            self.attempts,
            attempt.as_millis(),
            self.waited().as_secs(),
            self.budget.as_secs()
        ))
    }

    /// After attempts that gave way, the one that got its locks says so.
    pub(crate) fn got_locks(&self, script: &Script<'_>, log: &mut LogBuffer) {
        if self.attempts > 0 {
            script.waiting(None);
            script.emit(
                log,
                LogLine::info(format!(
                    "attempt {} got its locks, {:.1} s after the first began",
                    self.attempts + 1,
                    self.waited().as_secs_f64()
                )),
            );
        }
    }

    /// The failure once the lock budget is spent.
    pub(crate) fn gave_up(&self, script: &Script<'_>, message: &str) -> String {
        script.waiting(None);
        format!(
            "{message}\n  gave up waiting for locks after {} attempts over {} s (the lock budget: {} s)",
            self.attempts,
            self.waited().as_secs(),
            self.budget.as_secs()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot connect to target {url}: {message}")]
    Connect { url: String, message: String },
    #[error(
        "another runner holds the migration lock on {url}; nothing was applied (it is released when that runner finishes)"
    )]
    Busy { url: String },
    /// The target answered and refused something Sluice itself sent (its history write, the
    /// end of a transaction): the session still works.
    #[error("target {url}: {message}")]
    Database { url: String, message: String },
    /// The session ended or can no longer be used (the connection closed, the server ended the
    /// session, the protocol went out of step). Whether the target is unreachable or the
    /// script itself ended its session only a new connection tells (the worker tries one).
    #[error("the session with target {url} ended: {message}")]
    Session { url: String, message: String },
}

impl TargetError {
    /// Whether the session ended or the target could not be reached (as opposed to a refusal
    /// on a session that still works).
    pub fn session_lost(&self) -> bool {
        matches!(
            self,
            TargetError::Connect { .. } | TargetError::Session { .. }
        )
    }
}

/// What another migration tool's own history table on the target says is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolHistory {
    /// golang-migrate keeps the last version applied, and whether it stopped half-way.
    GolangMigrate { version: String, dirty: bool },
    /// dbmate: every version applied.
    Dbmate(Vec<String>),
    /// Flyway: every version that succeeded.
    Flyway(Vec<String>),
}

impl ToolHistory {
    /// The table that told.
    pub fn table(&self) -> &'static str {
        match self {
            ToolHistory::Flyway(_) => "flyway_schema_history",
            _ => "schema_migrations",
        }
    }

    /// Whether the tool records `version` as applied.
    pub fn has(&self, version: &str) -> bool {
        let wanted = crate::domain::version_parts(version);
        match self {
            ToolHistory::GolangMigrate { version, dirty } => {
                let last = crate::domain::version_parts(version);
                wanted < last || (wanted == last && !dirty)
            }
            ToolHistory::Dbmate(versions) | ToolHistory::Flyway(versions) => versions
                .iter()
                .any(|v| crate::domain::version_parts(v) == wanted),
        }
    }
}

/// Called with each log line as it is produced (server notices as the server sends them).
pub type LogObserver<'a> = &'a (dyn Fn(&LogLine) + Send + Sync);

/// One script to run, already split.
pub struct Script<'a> {
    pub migration_id: &'a str,
    pub checksum: &'a str,
    pub applied_by: &'a str,
    /// The environment's name (for metrics).
    pub environment: &'a str,
    /// The target database's name (for traces).
    pub namespace: &'a str,
    pub statements: &'a [Statement],
    pub observer: Option<LogObserver<'a>>,
    /// Told when a statement starts waiting for a lock (who holds it) and when it stops.
    pub lock_wait: Option<LockWaitObserver<'a>>,
}

/// Called with who holds the lock a statement waits for, or `None` once it waits no more.
pub type LockWaitObserver<'a> = &'a (dyn Fn(Option<String>) + Send + Sync);

impl Script<'_> {
    /// Adds a line to the log and tells the observer at once.
    fn emit(&self, log: &mut LogBuffer, line: LogLine) {
        if let Some(observe) = self.observer {
            observe(&line);
        }
        log.push(line);
    }

    fn waiting(&self, holder: Option<String>) {
        if let Some(tell) = self.lock_wait {
            tell(holder);
        }
    }

    /// A script runs in one transaction unless one of its statements refuses to.
    pub fn transactional(&self) -> bool {
        !self.statements.iter().any(|s| s.requires_no_transaction())
    }
}

/// A line of a deployment's log: a server notice, or Sluice's own note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

impl LogLine {
    pub fn info(message: impl Into<String>) -> LogLine {
        LogLine {
            level: "info".into(),
            message: message.into(),
        }
    }
}

/// Lines a deployment's log keeps from its start, and from its end: a script that raises
/// millions of notices cannot fill the daemon's memory or the state store.
pub const LOG_HEAD_LINES: usize = 1_000;
pub const LOG_TAIL_LINES: usize = 1_000;

/// A deployment's log while its script runs: the first `LOG_HEAD_LINES`, the last
/// `LOG_TAIL_LINES`, and a count of what lies between.
#[derive(Debug, Default)]
pub struct LogBuffer {
    head: Vec<LogLine>,
    tail: std::collections::VecDeque<LogLine>,
    left_out: u64,
}

impl LogBuffer {
    pub fn push(&mut self, line: LogLine) {
        if self.head.len() < LOG_HEAD_LINES {
            self.head.push(line);
            return;
        }
        if self.tail.len() == LOG_TAIL_LINES {
            self.tail.pop_front();
            self.left_out += 1;
        }
        self.tail.push_back(line);
    }

    /// The lines kept, with a note where lines were left out.
    pub fn into_lines(self) -> Vec<LogLine> {
        let mut lines = self.head;
        if self.left_out > 0 {
            lines.push(LogLine::info(format!(
                "... {} lines left out (the log keeps the first {LOG_HEAD_LINES} and the last {LOG_TAIL_LINES}) ...",
                self.left_out
            )));
        }
        lines.extend(self.tail);
        lines
    }
}

/// The result of running a script.
#[derive(Debug)]
pub struct RunReport {
    pub execution_ms: i64,
    pub transactional: bool,
    pub log: Vec<LogLine>,
    /// `None` on success; otherwise what went wrong, naming the statement and line.
    pub error: Option<String>,
    /// A script run statement by statement that failed: how many of its statements
    /// (BEGIN/COMMIT wrappers not counted) stay applied. `None` otherwise.
    pub statements_applied: Option<i64>,
}

/// What the history table says about one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub checksum: String,
    pub success: bool,
    pub transactional: bool,
    /// For a script run statement by statement: how many of its statements (BEGIN/COMMIT
    /// wrappers not counted) are applied, and how many it has. A row with `success = false`
    /// and an `IN_PROGRESS` error was being applied when its runner stopped.
    pub statements_done: Option<i64>,
    pub statements_total: Option<i64>,
    pub error: Option<String>,
}

/// The error a history row carries while its script is being applied statement by statement.
/// Finding it after a crash means: the script was cut off; never run it again from the top.
pub const IN_PROGRESS: &str = "in progress";

impl HistoryEntry {
    /// Statements of a non-transactional script already applied (0 for a transactional one,
    /// whose failures leave nothing behind).
    pub fn applied_statements(&self) -> i64 {
        if self.transactional || self.success {
            0
        } else {
            self.statements_done.unwrap_or(0)
        }
    }

    /// Was the script being applied when its runner stopped (the daemon died or the connection
    /// broke)?
    pub fn interrupted(&self) -> bool {
        !self.success && self.error.as_deref() == Some(IN_PROGRESS)
    }

    /// A script run statement by statement whose every statement is recorded as done, but
    /// whose runner stopped before the row said so (a crash between the last statement and the
    /// final history write): it is applied. Progress n of n is applied.
    pub fn all_statements_done(&self) -> bool {
        !self.success
            && !self.transactional
            && matches!(
                (self.statements_done, self.statements_total),
                (Some(done), Some(total)) if done >= total
            )
    }

    /// "interrupted after statement k of n", for status and the audit.
    pub fn describe_interruption(&self) -> String {
        let done = self.statements_done.unwrap_or(0);
        let total = self.statements_total.unwrap_or(0);
        let next = if done < total {
            format!(
                " (statement {} may have been cut off part-way: check it)",
                done + 1
            )
        } else {
            String::new()
        };
        format!(
            "interrupted after statement {done} of {total}{next}; statements 1 to {done} stay applied. Retry resumes at statement {}; or roll back, or cancel",
            done + 1
        )
    }
}

/// The statements of a script that run (BEGIN/COMMIT wrappers left out), with their index among
/// all statements (for error messages).
pub fn executable(statements: &[Statement]) -> Vec<(usize, &Statement)> {
    statements
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_transaction_wrapper())
        .collect()
}

/// An open, locked connection to one target.
pub enum TargetSession {
    // Boxed: a PostgreSQL session carries its client, notices and prepared statements.
    Postgres(Box<postgres::PgSession>),
    Sqlite(sqlite::SqliteSession),
    MySql(mysql::MySqlSession),
}

/// Whether a URL names a MySQL or MariaDB database.
pub fn is_mysql(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

/// How a target reads a script: statements are split the way its database splits them.
pub fn dialect_of(url: &str) -> crate::lint::Dialect {
    if is_mysql(url) {
        crate::lint::Dialect::MySql
    } else if url.starts_with("sqlite:") {
        crate::lint::Dialect::Sqlite
    } else {
        crate::lint::Dialect::Postgres
    }
}

/// Opens a session: connects, takes the runner lock, sets the timeouts and makes sure the
/// history table exists.
pub async fn open(settings: &TargetSettings, owner: &str) -> Result<TargetSession, TargetError> {
    if settings.url.starts_with("sqlite:") {
        Ok(TargetSession::Sqlite(
            sqlite::SqliteSession::open(settings, owner).await?,
        ))
    } else if is_mysql(&settings.url) {
        Ok(TargetSession::MySql(
            mysql::MySqlSession::open(settings).await?,
        ))
    } else {
        Ok(TargetSession::Postgres(Box::new(
            postgres::PgSession::open(settings).await?,
        )))
    }
}

impl TargetSession {
    pub async fn history(&mut self) -> Result<HashMap<String, HistoryEntry>, TargetError> {
        match self {
            TargetSession::Postgres(s) => s.history().await,
            TargetSession::Sqlite(s) => s.history().await,
            TargetSession::MySql(s) => s.history().await,
        }
    }

    /// Applies a script and records it in the history table: in the script's own transaction
    /// when it is transactional, so that it is either applied and recorded or neither.
    pub async fn apply(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        match self {
            TargetSession::Postgres(s) => s.apply(script).await,
            TargetSession::Sqlite(s) => s.apply(script).await,
            TargetSession::MySql(s) => s.apply(script).await,
        }
    }

    /// Applies the script in a transaction and rolls it back: whether it runs, how long it
    /// takes, which locks it takes. Nothing is recorded.
    pub async fn dry_run(
        &mut self,
        script: &Script<'_>,
    ) -> Result<dry_run::DryRunReport, TargetError> {
        match self {
            TargetSession::Postgres(s) => s.dry_run(script).await,
            TargetSession::Sqlite(s) => dry_run::dry_run(s, script, Duration::ZERO).await,
            TargetSession::MySql(s) => s.dry_run(script).await,
        }
    }

    /// golang-migrate's, dbmate's or Flyway's history table on the target, if there is one.
    pub async fn tool_history(&mut self) -> Result<Option<ToolHistory>, TargetError> {
        match self {
            TargetSession::Postgres(s) => s.tool_history().await,
            TargetSession::Sqlite(_) => Ok(None),
            TargetSession::MySql(s) => s.tool_history().await,
        }
    }

    /// The target's schema as its catalogs describe it (Sluice's own tables left out).
    pub async fn schema_snapshot(&mut self) -> Result<schema::SchemaSnapshot, TargetError> {
        match self {
            TargetSession::Postgres(s) => s.schema_snapshot().await,
            TargetSession::Sqlite(s) => s.schema_snapshot().await,
            TargetSession::MySql(s) => s.schema_snapshot().await,
        }
    }

    /// Whether this target runs the script in one transaction with its history row (else
    /// statement by statement, with its progress recorded).
    pub fn runs_in_one_transaction(&self, script: &Script<'_>) -> bool {
        match self {
            TargetSession::MySql(_) => mysql::MySqlSession::transactional(script),
            _ => script.transactional(),
        }
    }

    /// Runs a rollback script and removes the migration from the history table, together.
    pub async fn rollback(&mut self, script: &Script<'_>) -> Result<RunReport, TargetError> {
        match self {
            TargetSession::Postgres(s) => s.rollback(script).await,
            TargetSession::Sqlite(s) => s.rollback(script).await,
            TargetSession::MySql(s) => s.rollback(script).await,
        }
    }

    /// Marks as applied the history row of a script run statement by statement whose every
    /// statement is recorded as done (`HistoryEntry::all_statements_done`).
    pub async fn mark_complete(&mut self, migration_id: &str) -> Result<(), TargetError> {
        use steps::StepDriver;
        match self {
            TargetSession::Postgres(s) => s.mark_complete(migration_id).await,
            TargetSession::Sqlite(s) => s.mark_complete(migration_id).await,
            TargetSession::MySql(s) => s.mark_complete(migration_id).await,
        }
    }

    /// Removes the record of a failed attempt (nothing of it is applied).
    pub async fn forget(&mut self, migration_id: &str) -> Result<(), TargetError> {
        match self {
            TargetSession::Postgres(s) => s.forget(migration_id).await,
            TargetSession::Sqlite(s) => s.forget(migration_id).await,
            TargetSession::MySql(s) => s.forget(migration_id).await,
        }
    }

    /// Takes a full backup of the target into `file` (pg_dump's custom format for PostgreSQL,
    /// mysqldump for MySQL and MariaDB, `VACUUM INTO` for SQLite). The dump is written under a
    /// `.partial` name and renamed when complete, so that a file with the final name is always
    /// a whole backup; partial files a crash left behind are removed first.
    pub async fn backup(
        &mut self,
        file: &std::path::Path,
        settings: &TargetSettings,
        programs: &crate::config::BackupSettings,
    ) -> Result<(), TargetError> {
        let fail = |message: String| TargetError::Database {
            url: crate::config::redact_url(&settings.url),
            message,
        };
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("backup: cannot create {}: {e}", parent.display())))?;
            remove_partial_backups(parent);
        }
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let result = match self {
            TargetSession::Postgres(_) => {
                postgres::backup(settings, &partial, &programs.pg_dump).await
            }
            TargetSession::Sqlite(s) => s.backup(&partial).await,
            TargetSession::MySql(_) => mysql::backup(settings, &partial, &programs.mysqldump).await,
        };
        if let Err(e) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, file).map_err(|e| {
            fail(format!(
                "backup: cannot rename {} to {}: {e}",
                partial.display(),
                file.display()
            ))
        })
    }

    pub async fn close(self) {
        match self {
            TargetSession::Postgres(s) => s.close().await,
            TargetSession::Sqlite(s) => s.close().await,
            TargetSession::MySql(s) => s.close().await,
        }
    }
}

/// Removes backups a crash left unfinished (`*.partial`) from a backup folder.
fn remove_partial_backups(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "partial") {
            tracing::warn!(file = %path.display(), "removing an unfinished backup left by an earlier run");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Runs a dump program prepared by the caller; on failure removes the partial file and reports
/// the program's own words. `setting` names the key that chooses the program.
async fn run_dump(
    mut command: tokio::process::Command,
    file: &std::path::Path,
    fail: impl Fn(String) -> TargetError,
    tools: &str,
    setting: &str,
) -> Result<(), TargetError> {
    let output = command.kill_on_drop(true).output().await.map_err(|e| {
        fail(format!(
            "cannot run it ({e}); install the {tools} client tools or set {setting}"
        ))
    })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(file);
        return Err(fail(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Explains a failure at statement `index` (0-based among all statements of the script).
fn describe_failure(statement: &Statement, index: usize, line: usize, message: &str) -> String {
    let mut excerpt: String = statement.text.chars().take(200).collect();
    if excerpt.len() < statement.text.len() {
        excerpt.push_str("...");
    }
    format!(
        "statement {} (line {line}): {message}\n  in: {excerpt}",
        index + 1
    )
}

/// Where a script run statement by statement starts, from what the target's history records
/// of an earlier attempt: after the statements it applied (noted in the log), or at the first.
/// An error when the history holds part of another version of the script.
fn resume_point(
    script: &Script<'_>,
    previous: Option<&HistoryEntry>,
    total: i64,
    log: &mut LogBuffer,
) -> Result<i64, String> {
    let Some(entry) = previous.filter(|e| !e.success && e.applied_statements() > 0) else {
        return Ok(0);
    };
    if entry.checksum != script.checksum {
        return Err(format!(
            "the target records statements 1 to {} of another version of {} (checksum {}) as applied; roll that back by hand or cancel this deployment",
            entry.applied_statements(),
            script.migration_id,
            entry.checksum
        ));
    }
    let resume_from = entry.applied_statements().min(total);
    script.emit(
        log,
        LogLine::info(format!(
            "resuming at statement {} of {total}: statements 1 to {resume_from} were applied by an earlier attempt and are not run again",
            resume_from + 1
        )),
    );
    Ok(resume_from)
}

/// Notes for the log about BEGIN/COMMIT statements Sluice leaves out.
fn wrapper_notes(script: &Script<'_>) -> LogBuffer {
    let mut log = LogBuffer::default();
    for statement in script
        .statements
        .iter()
        .filter(|s| s.is_transaction_wrapper())
    {
        script.emit(
            &mut log,
            LogLine::info(format!(
                "line {}: skipped \"{}\": Sluice runs the script in its own transaction",
                statement.line, statement.text
            )),
        );
    }
    log
}
