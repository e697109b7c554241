//! Restore and reset (issue 10; the legacy framework's `restore` and `reset` verbs): put a
//! target back as one of Sluice's backups holds it, or empty it so that its queue can be
//! replayed. Everything in the target's own schemas goes first (objects created after the
//! backup must not survive a restore), then the backup is loaded.
//!
//! - PostgreSQL: every schema but the system ones is dropped with all it holds (`public` is
//!   made again with its owner and privileges), and the backup is replayed by psql from
//!   pg_restore's script, all in one transaction: a failure changes nothing.
//! - MySQL/MariaDB: every table, view, routine and event of the database is dropped and the
//!   dump run statement by statement. MySQL's DDL commits as it goes: a failure part-way leaves
//!   the database part-restored (the caller keeps the environment locked and says so).
//! - SQLite: in one transaction, every object but Sluice's runner lease is dropped and the
//!   backup file's tables, rows, indexes, views and triggers copied in.

use super::{TargetError, TargetSession, TargetSettings};
use crate::config::{BackupSettings, redact_url};

/// PostgreSQL: drops every schema but the system ones and those an extension owns; `public`
/// is emptied by dropping it and making it again with the same owner, privileges and comment.
pub(super) const PG_CLEAR: &str = r#"DO $sluice_clear$
DECLARE
  s record;
  public_owner text;
  public_acl aclitem[];
  public_comment text;
  grant_row record;
BEGIN
  FOR s IN
    SELECT n.nspname FROM pg_namespace n
    WHERE n.nspname NOT IN ('public', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s.nspname);
  END LOOP;
  SELECT pg_get_userbyid(n.nspowner), n.nspacl, obj_description(n.oid, 'pg_namespace')
    INTO public_owner, public_acl, public_comment
    FROM pg_namespace n WHERE n.nspname = 'public';
  IF public_owner IS NOT NULL THEN
    DROP SCHEMA public CASCADE;
    EXECUTE format('CREATE SCHEMA public AUTHORIZATION %I', public_owner);
    IF public_acl IS NOT NULL THEN
      EXECUTE format('REVOKE ALL ON SCHEMA public FROM %I', public_owner);
      FOR grant_row IN SELECT * FROM aclexplode(public_acl) LOOP
        EXECUTE format('GRANT %s ON SCHEMA public TO %s%s', grant_row.privilege_type,
          CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grant_row.grantee)) END,
          CASE WHEN grant_row.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
      END LOOP;
    END IF;
    IF public_comment IS NOT NULL THEN
      EXECUTE format('COMMENT ON SCHEMA public IS %L', public_comment);
    END IF;
  END IF;
END
$sluice_clear$"#;

impl TargetSession {
    /// Empties the target: every table, view, routine and type in its schemas, the history
    /// table with them.
    pub async fn reset(&mut self) -> Result<(), TargetError> {
        match self {
            TargetSession::Postgres(s) => s.clear().await,
            TargetSession::MySql(s) => s.clear().await,
            TargetSession::Sqlite(s) => s.clear().await,
        }
    }

    /// Replaces everything in the target with what `file` (a backup Sluice took of it) holds.
    pub async fn restore(
        &mut self,
        file: &std::path::Path,
        settings: &TargetSettings,
        programs: &BackupSettings,
    ) -> Result<(), TargetError> {
        match self {
            TargetSession::Postgres(_) => restore_postgres(file, settings, programs).await,
            TargetSession::MySql(s) => s.restore(file).await,
            TargetSession::Sqlite(s) => s.restore(file).await,
        }
    }

    /// Whether a restore that fails may have left the target part-restored.
    pub fn restore_is_atomic(&self) -> bool {
        !matches!(self, TargetSession::MySql(_))
    }
}

/// pg_restore turns the custom-format dump into a script; psql runs the clearing and that
/// script in one transaction (COPY data needs psql). Lock waits are bounded by the
/// environment's lock budget; credentials go through the environment, as for pg_dump.
async fn restore_postgres(
    file: &std::path::Path,
    settings: &TargetSettings,
    programs: &BackupSettings,
) -> Result<(), TargetError> {
    let url = redact_url(&settings.url);
    let fail = |message: String| TargetError::Database {
        url: url.clone(),
        message: format!("restore failed, nothing was changed: {message}"),
    };
    let work = tempfile::Builder::new()
        .prefix("sluice-restore-")
        .tempdir()
        .map_err(|e| fail(format!("cannot make a work folder: {e}")))?;
    let script = work.path().join("backup.sql");
    let clear = work.path().join("clear.sql");
    std::fs::write(&clear, format!("{PG_CLEAR};\n"))
        .map_err(|e| fail(format!("cannot write {}: {e}", clear.display())))?;
    let mut convert = tokio::process::Command::new(&programs.pg_restore);
    convert
        .arg("--no-owner")
        .arg("--file")
        .arg(&script)
        .arg(file);
    run(convert, &programs.pg_restore, "backup.pg_restore")
        .await
        .map_err(fail)?;
    let mut replay =
        super::postgres::pg_program(&settings.url, &programs.psql, None).map_err(fail)?;
    replay
        .env(
            "PGOPTIONS",
            format!(
                "-c lock_timeout={}ms -c client_min_messages=warning",
                settings.lock_timeout.as_millis()
            ),
        )
        .arg("--no-psqlrc")
        .arg("--quiet")
        .arg("--set=ON_ERROR_STOP=1")
        .arg("--single-transaction")
        .arg("--file")
        .arg(&clear)
        .arg("--file")
        .arg(&script);
    run(replay, &programs.psql, "backup.psql")
        .await
        .map_err(fail)
}

/// Runs a client program; its own words on failure.
async fn run(
    mut command: tokio::process::Command,
    program: &str,
    setting: &str,
) -> Result<(), String> {
    let output = command
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            format!("cannot run {program} ({e}); install the client tools or set {setting}")
        })?;
    if !output.status.success() {
        return Err(format!(
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}
