//! Dry runs: a migration's script applied in a transaction on its target and rolled back, to
//! learn before approval whether it runs, how long it takes and which locks it takes. Nothing
//! is recorded in the target's history. A statement that cannot run in a transaction
//! (CREATE INDEX CONCURRENTLY; MySQL's DDL, which commits implicitly) is reported as not
//! dry-runnable, and the statements after it as not run: they may depend on it.

use super::{LockAttempts, LogBuffer, Script, TargetError, executable};
use crate::lint::Statement;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How long a dry run tries to get its locks in all: it answers a person waiting for it.
pub const DRY_RUN_LOCK_BUDGET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DryRunReport {
    /// `ok` (every statement ran), `error` (one failed), `partial` (a statement that cannot
    /// run in a transaction stopped it; what came before ran).
    pub outcome: String,
    /// How long the statements that ran took (with the look at their locks after each), in
    /// the transaction that was rolled back.
    pub duration_ms: i64,
    pub statements: Vec<DryRunStatement>,
    /// The table locks the script held just before the rollback (PostgreSQL).
    pub locks: Vec<DryRunLock>,
    /// The failing statement's error, as a deployment's error would say it.
    pub error: Option<String>,
    /// Server notices and Sluice's notes, in order.
    pub log: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DryRunStatement {
    /// 1-based, as errors count statements.
    pub index: usize,
    pub line: usize,
    /// `ok`, `error`, `not_dry_runnable` or `not_run`.
    pub status: String,
    pub duration_ms: Option<i64>,
    /// Why a statement was not dry-runnable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DryRunLock {
    /// Schema-qualified; a relation the script itself created is named by the script.
    pub relation: String,
    /// PostgreSQL's lock mode, e.g. AccessExclusiveLock.
    pub mode: String,
    /// What the lock keeps other sessions from doing while the migration holds it.
    pub blocks: String,
}

impl DryRunLock {
    pub fn new(relation: String, mode: String) -> DryRunLock {
        let blocks = match mode.as_str() {
            "AccessExclusiveLock" => "reads and writes",
            "ExclusiveLock" | "ShareRowExclusiveLock" | "ShareLock" => "writes",
            "ShareUpdateExclusiveLock" => "schema changes, VACUUM and concurrent index builds",
            _ => "only schema changes",
        }
        .to_owned();
        DryRunLock {
            relation,
            mode,
            blocks,
        }
    }
}

/// What a target does for a dry run.
pub(super) trait DryRunDriver {
    /// Why the statement cannot run in a transaction here, if it cannot.
    fn not_in_transaction(&self, statement: &Statement) -> Option<String>;
    /// Resets the session and opens the transaction.
    async fn begin(&mut self) -> Result<(), TargetError>;
    /// Runs one statement in the open transaction: its error (and whether it is a lock that
    /// was not granted in time) when it fails.
    async fn run(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        index: usize,
        statement: &Statement,
    ) -> Result<Result<(), (String, bool)>, TargetError>;
    /// The table locks the open transaction holds (asked after each statement that ran: a
    /// failed statement aborts the transaction, which lets its locks go).
    async fn locks(&mut self) -> Vec<DryRunLock>;
    async fn rollback(&mut self) -> Result<(), TargetError>;
}

pub(super) async fn dry_run<D: DryRunDriver>(
    driver: &mut D,
    script: &Script<'_>,
    lock_attempt: Duration,
) -> Result<DryRunReport, TargetError> {
    let mut log = LogBuffer::default();
    let mut attempts = LockAttempts::new(DRY_RUN_LOCK_BUDGET);
    loop {
        driver.begin().await?;
        let started = Instant::now();
        let mut statements = Vec::new();
        let mut error = None;
        let mut stopped = false;
        let mut gave_way = false;
        let mut locks: Vec<DryRunLock> = Vec::new();
        for (index, statement) in executable(script.statements) {
            let mut entry = DryRunStatement {
                index: index + 1,
                line: statement.line,
                status: "not_run".into(),
                duration_ms: None,
                reason: None,
            };
            if error.is_some() || stopped {
                statements.push(entry);
                continue;
            }
            if let Some(reason) = driver.not_in_transaction(statement) {
                entry.status = "not_dry_runnable".into();
                entry.reason = Some(reason);
                stopped = true;
                statements.push(entry);
                continue;
            }
            let t = Instant::now();
            let result = driver.run(script, &mut log, index, statement).await?;
            entry.duration_ms = Some(t.elapsed().as_millis() as i64);
            match result {
                Ok(()) => {
                    entry.status = "ok".into();
                    for lock in driver.locks().await {
                        if !locks.contains(&lock) {
                            locks.push(lock);
                        }
                    }
                }
                Err((message, lock)) => {
                    entry.status = "error".into();
                    if lock {
                        driver.rollback().await?;
                        match attempts.next_pause() {
                            Some(pause) => {
                                script.emit(
                                    &mut log,
                                    attempts.gave_way_line(
                                        lock_attempt,
                                        "another session holds it",
                                        &format!("trying again in {} ms", pause.as_millis()),
                                    ),
                                );
                                tokio::time::sleep(pause).await;
                                gave_way = true;
                                break;
                            }
                            None => {
                                driver.begin().await?;
                                error = Some(attempts.gave_up(script, &message));
                            }
                        }
                    } else {
                        error = Some(message);
                    }
                }
            }
            statements.push(entry);
        }
        if gave_way {
            continue;
        }
        let duration_ms = started.elapsed().as_millis() as i64;
        driver.rollback().await?;
        locks.sort_by(|a, b| (&a.relation, &a.mode).cmp(&(&b.relation, &b.mode)));
        let outcome = if error.is_some() {
            "error"
        } else if stopped {
            "partial"
        } else {
            "ok"
        };
        return Ok(DryRunReport {
            outcome: outcome.into(),
            duration_ms,
            statements,
            locks,
            error,
            log: log.into_lines().into_iter().map(|l| l.message).collect(),
        });
    }
}
