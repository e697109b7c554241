//! The one implementation of a script run statement by statement (PostgreSQL scripts with a
//! statement that refuses a transaction, MySQL/MariaDB scripts with DDL), over a small driver
//! trait, so that the bookkeeping that keeps "never run again from the top" is written once:
//! the history row says "in progress" with its statement count before the first statement,
//! every statement advances it (in the statement's own transaction where the statement allows
//! one), and a later attempt resumes after the last statement recorded as done.

use super::{
    HistoryEntry, IN_PROGRESS, LogBuffer, LogLine, RunReport, Script, TargetError, executable,
    resume_point, wrapper_notes,
};
use crate::lint::Statement;
use std::time::Instant;

/// What a target must do for `apply_in_steps`.
pub(super) trait StepDriver {
    /// A note for the log before the first statement, if the target has something to say.
    fn opening_note(&self) -> Option<&'static str> {
        None
    }
    /// Whether the statement may run inside a transaction (with its progress).
    fn atomic(&self, statement: &Statement) -> bool;
    /// Puts the session back as it was opened.
    async fn reset(&mut self) -> Result<(), TargetError>;
    /// What the history table records of a migration.
    async fn entry(&mut self, migration_id: &str) -> Result<Option<HistoryEntry>, TargetError>;
    /// Writes the migration's history row.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &mut self,
        script: &Script<'_>,
        execution_ms: i64,
        success: bool,
        error: Option<&str>,
        statements_done: i64,
        statements_total: i64,
    ) -> Result<(), TargetError>;
    /// Runs one statement, in a transaction opened first when `atomic`. The outer error is the
    /// connection's; the inner one the statement's, worded for the deployment.
    async fn run_step(
        &mut self,
        script: &Script<'_>,
        log: &mut LogBuffer,
        index: usize,
        statement: &Statement,
        atomic: bool,
    ) -> Result<Result<(), String>, TargetError>;
    /// Records `done` statements as applied (in the open transaction when atomic).
    async fn advance(&mut self, migration_id: &str, done: i64) -> Result<(), TargetError>;
    /// Ends the transaction a step opened.
    async fn end_step(&mut self, commit: bool) -> Result<(), TargetError>;
    /// Passes on what the server said after the last statement.
    fn drain(&mut self, _script: &Script<'_>, _log: &mut LogBuffer) {}
    /// How many statements of a rollback script an earlier, interrupted rollback applied.
    async fn rollback_progress(&mut self, migration_id: &str) -> Result<Option<i64>, TargetError>;
    /// Records `done` statements of the rollback script as applied.
    async fn set_rollback_progress(
        &mut self,
        migration_id: &str,
        done: i64,
    ) -> Result<(), TargetError>;
    /// Removes the migration's history row: it is no longer applied.
    async fn remove_history(&mut self, migration_id: &str) -> Result<(), TargetError>;
    /// Marks as applied a row whose every statement is recorded as done but whose runner
    /// stopped before saying so (`HistoryEntry::all_statements_done`); nothing else.
    async fn mark_complete(&mut self, migration_id: &str) -> Result<(), TargetError>;
}

/// Applies a script statement by statement through `driver`; see the module's documentation.
pub(super) async fn apply_in_steps<D: StepDriver>(
    driver: &mut D,
    script: &Script<'_>,
) -> Result<RunReport, TargetError> {
    let mut log = wrapper_notes(script);
    if let Some(note) = driver.opening_note() {
        script.emit(&mut log, LogLine::info(note));
    }
    let steps = executable(script.statements);
    let total = steps.len() as i64;
    let previous = driver.entry(script.migration_id).await?;
    let resume_from = match resume_point(script, previous.as_ref(), total, &mut log) {
        Ok(resume_from) => resume_from,
        Err(message) => {
            return Ok(RunReport {
                execution_ms: 0,
                transactional: false,
                log: log.into_lines(),
                error: Some(message),
                statements_applied: None,
            });
        }
    };
    driver.reset().await?;
    let started = Instant::now();
    driver
        .record(script, 0, false, Some(IN_PROGRESS), resume_from, total)
        .await?;
    let mut done = resume_from;
    let mut failure = None;
    for &(index, statement) in steps.iter().skip(resume_from as usize) {
        let atomic = driver.atomic(statement);
        match driver
            .run_step(script, &mut log, index, statement, atomic)
            .await?
        {
            Ok(()) => {
                driver.advance(script.migration_id, done + 1).await?;
                if atomic {
                    driver.end_step(true).await?;
                }
                done += 1;
            }
            Err(message) => {
                if atomic {
                    driver.end_step(false).await?;
                }
                failure = Some(message);
                break;
            }
        }
    }
    let execution_ms = started.elapsed().as_millis() as i64;
    match &failure {
        None => {
            driver
                .record(script, execution_ms, true, None, total, total)
                .await?
        }
        Some(message) => {
            script.emit(
                &mut log,
                LogLine::info(format!(
                    "not transactional: statements 1 to {done} of {total} stay applied; a retry resumes at statement {}",
                    done + 1
                )),
            );
            driver
                .record(script, execution_ms, false, Some(message), done, total)
                .await?;
        }
    }
    driver.drain(script, &mut log);
    Ok(RunReport {
        execution_ms,
        transactional: false,
        log: log.into_lines(),
        statements_applied: failure.is_some().then_some(done),
        error: failure,
    })
}

/// Runs a rollback script that cannot run in one transaction, statement by statement, with its
/// progress in the history row (`rollback_done`): a rollback interrupted by a crash, or failed,
/// resumes after the statements it applied when it is requested again. The history row goes
/// once the whole script has run.
pub(super) async fn rollback_in_steps<D: StepDriver>(
    driver: &mut D,
    script: &Script<'_>,
) -> Result<RunReport, TargetError> {
    let mut log = wrapper_notes(script);
    let steps = executable(script.statements);
    let total = steps.len() as i64;
    let resume_from = driver
        .rollback_progress(script.migration_id)
        .await?
        .unwrap_or(0)
        .clamp(0, total);
    if resume_from > 0 {
        script.emit(
            &mut log,
            LogLine::info(format!(
                "resuming the rollback at statement {} of {total}: statements 1 to {resume_from} of the rollback script were applied by an earlier attempt and are not run again",
                resume_from + 1
            )),
        );
    }
    driver.reset().await?;
    let started = Instant::now();
    driver
        .set_rollback_progress(script.migration_id, resume_from)
        .await?;
    let mut done = resume_from;
    let mut failure = None;
    for &(index, statement) in steps.iter().skip(resume_from as usize) {
        let atomic = driver.atomic(statement);
        match driver
            .run_step(script, &mut log, index, statement, atomic)
            .await?
        {
            Ok(()) => {
                driver
                    .set_rollback_progress(script.migration_id, done + 1)
                    .await?;
                if atomic {
                    driver.end_step(true).await?;
                }
                done += 1;
            }
            Err(message) => {
                if atomic {
                    driver.end_step(false).await?;
                }
                failure = Some(message);
                break;
            }
        }
    }
    let execution_ms = started.elapsed().as_millis() as i64;
    match &failure {
        None => driver.remove_history(script.migration_id).await?,
        Some(_) => script.emit(
            &mut log,
            LogLine::info(format!(
                "not transactional: statements 1 to {done} of the rollback script stay applied; requesting the rollback again resumes at statement {}",
                done + 1
            )),
        ),
    }
    driver.drain(script, &mut log);
    Ok(RunReport {
        execution_ms,
        transactional: false,
        log: log.into_lines(),
        error: failure,
        statements_applied: None,
    })
}
