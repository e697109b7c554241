//! Rollback tests (issue 9; the legacy framework's test-rollback.sh): on a scratch copy of an
//! environment's schema, apply the up script, then the down script, then the up script again,
//! and compare schema snapshots: the down script must bring back the schema as it was before
//! the up script, and the up script must apply again to the same result. PostgreSQL: the
//! scratch database is created on the target's server from `pg_dump --schema-only` (restored
//! with pg_restore) and dropped after, whatever happens. MySQL/MariaDB: the same from
//! `mysqldump --no-data`. SQLite: a copy of the file.

use super::schema::{SchemaDifference, SchemaSnapshot};
use super::{Script, TargetError, TargetSession, TargetSettings};
use crate::config::{BackupSettings, redact_url};
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RollbackTestReport {
    /// passed, or failed (a step failed, or the schemas differ).
    pub outcome: String,
    pub steps: Vec<RollbackTestStep>,
    /// What is wrong, in words (empty when passed).
    pub findings: Vec<String>,
    /// What the down script leaves different from the schema before the up script.
    pub left_by_down: Vec<SchemaDifference>,
    /// Where applying the up script again differs from applying it the first time.
    pub second_up_differs: Vec<SchemaDifference>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RollbackTestStep {
    /// up, down or up again.
    pub step: String,
    pub ok: bool,
    pub duration_ms: i64,
    pub error: Option<String>,
}

/// Runs the test for a script pair against a scratch copy of `settings`' database.
pub async fn run(
    settings: &TargetSettings,
    programs: &BackupSettings,
    up: &Script<'_>,
    down: &Script<'_>,
) -> Result<RollbackTestReport, TargetError> {
    let scratch = Scratch::create(settings, programs).await?;
    let result = test_on(&scratch.settings(settings), up, down).await;
    scratch.drop().await;
    result
}

async fn test_on(
    settings: &TargetSettings,
    up: &Script<'_>,
    down: &Script<'_>,
) -> Result<RollbackTestReport, TargetError> {
    let mut session = super::open(settings, "sluice-rollback-test").await?;
    let result = steps(&mut session, up, down).await;
    session.close().await;
    result
}

async fn steps(
    session: &mut TargetSession,
    up: &Script<'_>,
    down: &Script<'_>,
) -> Result<RollbackTestReport, TargetError> {
    let mut report = RollbackTestReport {
        outcome: "failed".into(),
        steps: Vec::new(),
        findings: Vec::new(),
        left_by_down: Vec::new(),
        second_up_differs: Vec::new(),
    };
    let before = session.schema_snapshot().await?;
    if !step(session, up, "up", false, &mut report).await? {
        report
            .findings
            .push("the up script fails on a copy of the environment's schema".into());
        return Ok(report);
    }
    let after_up = session.schema_snapshot().await?;
    if !step(session, down, "down", true, &mut report).await? {
        report
            .findings
            .push("the down script fails after the up script".into());
        return Ok(report);
    }
    let after_down = session.schema_snapshot().await?;
    report.left_by_down = before.differences(&after_down);
    if !report.left_by_down.is_empty() {
        report.findings.push(format!(
            "the down script does not bring the schema back: {}",
            summary(&report.left_by_down)
        ));
    }
    if !step(session, up, "up again", false, &mut report).await? {
        report
            .findings
            .push("the up script fails when applied again after the down script".into());
        return Ok(report);
    }
    let again: SchemaSnapshot = session.schema_snapshot().await?;
    report.second_up_differs = after_up.differences(&again);
    if !report.second_up_differs.is_empty() {
        report.findings.push(format!(
            "applying the up script again gives another schema: {}",
            summary(&report.second_up_differs)
        ));
    }
    if report.findings.is_empty() {
        report.outcome = "passed".into();
    }
    Ok(report)
}

/// Runs one step; whether it succeeded.
async fn step(
    session: &mut TargetSession,
    script: &Script<'_>,
    name: &str,
    rollback: bool,
    report: &mut RollbackTestReport,
) -> Result<bool, TargetError> {
    let started = Instant::now();
    let run = if rollback {
        session.rollback(script).await?
    } else {
        session.apply(script).await?
    };
    report.steps.push(RollbackTestStep {
        step: name.into(),
        ok: run.error.is_none(),
        duration_ms: started.elapsed().as_millis() as i64,
        error: run.error.clone(),
    });
    Ok(run.error.is_none())
}

/// "index public.t_a added, column public.t.b changed" (the first five).
fn summary(differences: &[SchemaDifference]) -> String {
    let mut parts: Vec<String> = differences
        .iter()
        .take(5)
        .map(|d| format!("{} {}", d.object, d.change))
        .collect();
    if differences.len() > 5 {
        parts.push(format!("and {} more", differences.len() - 5));
    }
    parts.join(", ")
}

/// A scratch copy of a target's schema, dropped by `drop`.
enum Scratch {
    Postgres {
        /// The target's URL with the scratch database's name.
        url: String,
        name: String,
        admin: tokio_postgres::Client,
        connection: tokio::task::JoinHandle<()>,
    },
    Sqlite {
        file: std::path::PathBuf,
    },
    MySql {
        url: String,
        name: String,
        admin: sqlx::mysql::MySqlConnection,
    },
}

impl Scratch {
    async fn create(
        settings: &TargetSettings,
        programs: &BackupSettings,
    ) -> Result<Scratch, TargetError> {
        let shown = redact_url(&settings.url);
        let fail = |message: String| TargetError::Database {
            url: shown.clone(),
            message,
        };
        let mut suffix = [0u8; 6];
        let _ = getrandom::fill(&mut suffix);
        let name = format!("sluice_rollback_test_{}", hex::encode(suffix));
        if settings.url.starts_with("sqlite:") {
            let file = std::env::temp_dir().join(format!("{name}.db"));
            let mut source = super::open(settings, "sluice-rollback-test").await?;
            let copied = source.backup(&file, settings, programs).await;
            source.close().await;
            copied?;
            return Ok(Scratch::Sqlite { file });
        }
        if super::is_mysql(&settings.url) {
            return Scratch::create_mysql(settings, programs, name)
                .await
                .map_err(fail);
        }
        let config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| fail(e.to_string()))?;
        let (admin, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| TargetError::Connect {
                    url: shown.clone(),
                    message: e.to_string(),
                })?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot create the scratch database {name} for the rollback test (the target's user needs CREATEDB): {}",
                    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
                ))
            })?;
        let scratch = Scratch::Postgres {
            url: with_database(&settings.url, &name),
            name,
            admin,
            connection,
        };
        if let Err(e) = scratch.copy_schema(settings, programs).await {
            scratch.drop().await;
            return Err(fail(e));
        }
        Ok(scratch)
    }

    /// MySQL/MariaDB: `mysqldump --no-data` of the target, run statement by statement (split
    /// as the mysql client splits) in a scratch database on the same server.
    async fn create_mysql(
        settings: &TargetSettings,
        programs: &BackupSettings,
        name: String,
    ) -> Result<Scratch, String> {
        use sqlx::{ConnectOptions, Connection};
        let normalised = settings.url.replacen("mariadb://", "mysql://", 1);
        let options: sqlx::mysql::MySqlConnectOptions =
            normalised.parse().map_err(|e: sqlx::Error| e.to_string())?;
        let mut admin = options.connect().await.map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&mut admin)
            .await
            .map_err(|e| {
                format!("cannot create the scratch database {name} for the rollback test (the target's user needs CREATE): {e}")
            })?;
        let scratch = Scratch::MySql {
            url: with_database(&normalised, &name),
            name,
            admin,
        };
        let copied: Result<(), String> = async {
            let Scratch::MySql { url, name, .. } = &scratch else {
                unreachable!()
            };
            let file = std::env::temp_dir().join(format!("{name}.sql"));
            let dump = super::mysql::dump_command(&settings.url, &programs.mysqldump, &file, true)?;
            let dumped = run_program(dump, &programs.mysqldump, "backup.mysqldump").await;
            let text = std::fs::read_to_string(&file);
            let _ = std::fs::remove_file(&file);
            dumped?;
            let text = text.map_err(|e| e.to_string())?;
            let statements = crate::lint::split_statements_for(&text, crate::lint::Dialect::MySql)
                .map_err(|e| {
                    format!(
                        "the schema dump does not read at line {}: {}",
                        e.line, e.message
                    )
                })?;
            let mut conn = sqlx::mysql::MySqlConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            for statement in &statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.text.clone()))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("restoring the schema (line {}): {e}", statement.line))?;
            }
            let _ = conn.close().await;
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            scratch.drop().await;
            return Err(e);
        }
        Ok(scratch)
    }

    /// pg_dump --schema-only of the target, restored into the scratch database.
    async fn copy_schema(
        &self,
        settings: &TargetSettings,
        programs: &BackupSettings,
    ) -> Result<(), String> {
        let Scratch::Postgres { name, .. } = self else {
            return Ok(());
        };
        let file = std::env::temp_dir().join(format!("{name}.dump"));
        let mut dump = super::postgres::pg_program(&settings.url, &programs.pg_dump, None)?;
        dump.arg("--schema-only")
            .arg("--format=custom")
            .arg("--file")
            .arg(&file);
        let dumped = run_program(dump, &programs.pg_dump, "backup.pg_dump").await;
        let restored = match dumped {
            Ok(()) => {
                let mut restore =
                    super::postgres::pg_program(&settings.url, &programs.pg_restore, Some(name))?;
                restore
                    .arg("--no-owner")
                    .arg("--no-privileges")
                    .arg("--exit-on-error")
                    .arg(format!("--dbname={name}"))
                    .arg(&file);
                run_program(restore, &programs.pg_restore, "backup.pg_restore").await
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&file);
        restored
    }

    fn settings(&self, base: &TargetSettings) -> TargetSettings {
        let mut settings = base.clone();
        settings.url = match self {
            Scratch::Postgres { url, .. } | Scratch::MySql { url, .. } => url.clone(),
            Scratch::Sqlite { file } => format!("sqlite://{}", file.display()),
        };
        settings
    }

    async fn drop(self) {
        match self {
            Scratch::Postgres {
                name,
                admin,
                connection,
                ..
            } => {
                if let Err(e) = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                {
                    tracing::warn!(database = %name, error = %e, "cannot drop the rollback test's scratch database");
                }
                drop(admin);
                let _ = connection.await;
            }
            Scratch::Sqlite { file } => {
                let _ = std::fs::remove_file(&file);
            }
            Scratch::MySql {
                name, mut admin, ..
            } => {
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{name}`"
                )))
                .execute(&mut admin)
                .await
                {
                    tracing::warn!(database = %name, error = %e, "cannot drop the rollback test's scratch database");
                }
            }
        }
    }
}

async fn run_program(
    mut command: tokio::process::Command,
    program: &str,
    setting: &str,
) -> Result<(), String> {
    let output = command.kill_on_drop(true).output().await.map_err(|e| {
        format!("cannot run {program} ({e}); install the PostgreSQL client tools or set {setting}")
    })?;
    if !output.status.success() {
        return Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// The URL with another database name (URL form or libpq's key=value form).
fn with_database(url: &str, name: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && parsed.has_host()
    {
        parsed.set_path(&format!("/{name}"));
        return parsed.to_string();
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|part| !part.starts_with("dbname="))
        .collect();
    format!("{} dbname={name}", kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_scratch_url_names_the_scratch_database() {
        assert_eq!(
            with_database("postgres://u:p%40ss@db:5432/app?sslmode=disable", "scratch"),
            "postgres://u:p%40ss@db:5432/scratch?sslmode=disable"
        );
        assert_eq!(
            with_database("host=db user=u dbname=app password=x", "scratch"),
            "host=db user=u password=x dbname=scratch"
        );
    }
}
