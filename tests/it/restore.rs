//! Restore and reset (issue 10): a lead puts an environment's database back as a backup
//! Sluice took of it, or empties a development database so that its queue can be replayed;
//! the queue then follows the target's history. PostgreSQL, MariaDB and SQLite targets.

use crate::harness::{AppOptions, Backend, TestApp, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::engine::Outcome;

fn options(backend: Backend) -> AppOptions {
    AppOptions {
        backend,
        background_workers: false,
        ..AppOptions::default()
    }
}

/// Submits a migration and applies it to development, then to staging (which takes a
/// backup before it changes). Its id.
async fn apply_to_staging(app: &TestApp, description: &str, up: &str, down: &str) -> String {
    let id = app
        .submit("dev", migration(description, "low", up, Some(down)))
        .await;
    app.run_worker("development").await;
    app.approve("ops1", &format!("{id}@staging"), "data_ops")
        .await;
    app.approve("ops2", &format!("{id}@staging"), "data_ops")
        .await;
    let outcome = app.run_worker("staging").await;
    let d = app.deployment(&format!("{id}@staging")).await;
    assert_eq!(d["state"], "applied", "{outcome:?} {d}");
    id
}

async fn backups(app: &TestApp, environment: &str) -> Vec<Value> {
    let (status, listed) = app
        .get(
            "lead",
            &format!("/api/v1/environments/{environment}/backups"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    listed.as_array().unwrap().clone()
}

fn file_name(backup: &Value) -> String {
    std::path::Path::new(backup["file"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

async fn pg_rows(app: &TestApp, environment: &str, sql: &str) -> Vec<String> {
    let client = app.targets[environment].client().await;
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test]
async fn a_backup_taken_before_a_destructive_migration_brings_the_data_back() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    let accounts = apply_to_staging(
        &app,
        "accounts with their emails",
        "CREATE SCHEMA billing;\nCREATE TABLE billing.invoices (id int PRIMARY KEY, amount numeric NOT NULL);\nINSERT INTO billing.invoices VALUES (1, 9.50);\nCREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);\nINSERT INTO accounts VALUES (1, 'ada@example.com'), (2, 'bob@example.com');",
        "DROP TABLE accounts;\nDROP SCHEMA billing CASCADE;",
    )
    .await;
    let destructive = apply_to_staging(
        &app,
        "drop the emails",
        "ALTER TABLE accounts DROP COLUMN email;\nDROP TABLE billing.invoices;\nCREATE TABLE audit_log (id bigint);",
        "ALTER TABLE accounts ADD COLUMN email text;\nDROP TABLE audit_log;",
    )
    .await;
    // Rows written after the destructive migration are lost by the restore, as in any restore.
    let listed = backups(&app, "staging").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        listed[0]["preceded"],
        format!("{destructive}@staging"),
        "{listed:?}"
    );
    let before_destructive = file_name(&listed[0]);
    let path = "/api/v1/environments/staging/restore";

    // Refused, changing nothing: not a lead; no or a wrong confirmation; a file that is not
    // one of this environment's backups; an unknown field.
    let body = json!({"backup": before_destructive, "confirm": "staging"});
    let (status, refused) = app.post("dev", path, body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, refused) = app.post("ops1", path, body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, refused) = app
        .post(
            "lead",
            path,
            json!({"backup": before_destructive, "confirm": "production"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("confirm: "),
        "{refused}"
    );
    for hostile in [
        "../../../../etc/passwd".to_owned(),
        "/etc/passwd".to_owned(),
        format!("../staging/{before_destructive}"),
        before_destructive.replace("staging", "production"),
    ] {
        let (status, refused) = app
            .post(
                "lead",
                path,
                json!({"backup": hostile, "confirm": "staging"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{hostile}: {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("backup: "),
            "{refused}"
        );
    }
    let (status, refused) = app
        .post(
            "lead",
            path,
            json!({"backup": before_destructive, "confirm": "staging", "force": true}),
        )
        .await;
    assert!(status.is_client_error(), "{status} {refused}");
    let (status, refused) = app
        .post("lead", "/api/v1/environments/nowhere/restore", body.clone())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
    assert!(app.table_exists("staging", "audit_log").await);
    assert_eq!(backups(&app, "staging").await.len(), 2);

    // The restore.
    let (status, done) = app.post("lead", path, body).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["action"], "restore");
    assert_eq!(done["undone"], json!([destructive]), "{done}");
    assert_eq!(done["reapplied"], json!([]), "{done}");
    let safety = done["safety_backup"].as_str().unwrap().to_owned();
    assert!(std::fs::metadata(&safety).unwrap().len() > 0);
    // The data is back, in both schemas; what came after the backup is gone.
    assert_eq!(
        pg_rows(&app, "staging", "SELECT email FROM accounts ORDER BY id").await,
        ["ada@example.com", "bob@example.com"]
    );
    assert_eq!(
        pg_rows(&app, "staging", "SELECT amount::text FROM billing.invoices").await,
        ["9.50"]
    );
    assert!(!app.table_exists("staging", "audit_log").await);
    assert_eq!(
        pg_rows(
            &app,
            "staging",
            "SELECT migration_id FROM sluice_schema_history ORDER BY migration_id"
        )
        .await,
        [accounts.as_str()]
    );
    // The queue follows: the destructive migration waits, approved, for `migrate`; the
    // environment is unlocked; no drift is seen; the audit says who restored what.
    assert_eq!(
        app.deployment(&format!("{destructive}@staging")).await["state"],
        "approved"
    );
    assert_eq!(
        app.deployment(&format!("{accounts}@staging")).await["state"],
        "applied"
    );
    let (_, status_view) = app.get("lead", "/api/v1/environments/staging").await;
    assert!(status_view["lock"].is_null(), "{status_view}");
    // Staging applies automatically, yet this one waits: status says why (it said
    // "auto_apply is off", which is false here).
    let waiting = status_view["queue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["migration_id"] == destructive.as_str())
        .unwrap_or_else(|| panic!("{status_view}"));
    let why = waiting["blocked_by"].as_str().unwrap();
    assert!(
        why.contains("migrate staging") && why.contains("put back to approved by a restore"),
        "{why}"
    );
    assert_eq!(app.run_worker("staging").await, Outcome::Idle);
    let (_, drift) = app.get("lead", "/api/v1/environments/staging/drift").await;
    assert_eq!(drift["drifted"], false, "{drift}");
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["actor"].as_str().unwrap(), a["action"].as_str().unwrap()))
        .collect();
    for expected in [
        ("lead", "environment_locked"),
        ("sluice", "backup_taken"),
        ("lead", "undone_by_restore"),
        ("lead", "restored"),
        ("lead", "environment_unlocked"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    // The state before the restore is one of the backups now.
    let listed = backups(&app, "staging").await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["file"], safety.as_str());

    // `migrate` applies the destructive migration again, on the restored data.
    let (status, migrated) = app
        .post("lead", "/api/v1/environments/staging/migrate", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{migrated}");
    app.run_worker("staging").await;
    assert_eq!(
        app.deployment(&format!("{destructive}@staging")).await["state"],
        "applied"
    );
    assert!(app.table_exists("staging", "audit_log").await);
    app.stop().await;
}

#[tokio::test]
async fn a_restore_that_fails_part_way_changes_nothing_and_unlocks() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    // A role granted in the backup that no longer exists when it is restored: the replay
    // fails after everything was dropped, in the same transaction.
    let role = format!(
        "sluice_gone_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let admin = crate::harness::admin_client().await;
    admin
        .batch_execute(&format!("CREATE ROLE {role}"))
        .await
        .unwrap();
    apply_to_staging(
        &app,
        "granted",
        &format!("CREATE TABLE granted (id int);\nGRANT SELECT ON granted TO {role};"),
        "DROP TABLE granted;",
    )
    .await;
    let later = apply_to_staging(
        &app,
        "later",
        "CREATE TABLE later (id int);",
        "DROP TABLE later;",
    )
    .await;
    for environment in ["development", "staging"] {
        app.targets[environment]
            .client()
            .await
            .batch_execute(&format!("REVOKE ALL ON granted FROM {role}"))
            .await
            .unwrap();
    }
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
    let listed = backups(&app, "staging").await;
    let (status, failed) = app
        .post(
            "lead",
            "/api/v1/environments/staging/restore",
            json!({"backup": file_name(&listed[0]), "confirm": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains(&role), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(app.table_exists("staging", "later").await);
    assert!(app.table_exists("staging", "granted").await);
    assert_eq!(
        app.deployment(&format!("{later}@staging")).await["state"],
        "applied"
    );
    let (_, status_view) = app.get("lead", "/api/v1/environments/staging").await;
    assert!(status_view["lock"].is_null(), "{status_view}");
    app.stop().await;
}

#[tokio::test]
async fn development_is_reset_and_its_queue_replayed_but_staging_is_not() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    let first = apply_to_staging(
        &app,
        "first",
        "CREATE TABLE first_table (id int);\nCREATE VIEW first_view AS SELECT id FROM first_table;",
        "DROP VIEW first_view;\nDROP TABLE first_table;",
    )
    .await;
    let (status, refused) = app
        .post(
            "lead",
            "/api/v1/environments/staging/reset",
            json!({"confirm": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_reset"),
        "{refused}"
    );
    let (status, refused) = app
        .post(
            "dev",
            "/api/v1/environments/development/reset",
            json!({"confirm": "development"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, refused) = app
        .post("lead", "/api/v1/environments/development/reset", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(app.table_exists("development", "first_table").await);

    let (status, done) = app
        .post(
            "lead",
            "/api/v1/environments/development/reset",
            json!({"confirm": "development"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["undone"], json!([first]), "{done}");
    assert!(done["safety_backup"].is_null(), "{done}");
    assert!(!app.table_exists("development", "first_table").await);
    assert!(
        !app.table_exists("development", "sluice_schema_history")
            .await
    );
    assert!(app.table_exists("staging", "first_table").await);
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "approved"
    );
    let (status, _) = app
        .post("dev", "/api/v1/environments/development/migrate", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    assert!(app.table_exists("development", "first_table").await);
    app.stop().await;
}

/// The first column of a query's rows on a MariaDB or SQLite target, as text.
async fn sqlx_rows(app: &TestApp, environment: &str, sql: &str) -> Vec<String> {
    use sqlx::{ConnectOptions, Row};
    if let Some(db) = app.mysql_targets.get(environment) {
        let mut conn = db.connect().await;
        return sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
    }
    let file = app
        .sqlite_dir
        .as_ref()
        .unwrap()
        .join(format!("{environment}.db"));
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

/// The same story on MariaDB (mysqldump's file replayed) and SQLite (the backup copied in,
/// in one transaction): the data a destructive migration removed is back, the queue follows.
async fn restore_story(backend: Backend, extra_object: &str) {
    let app = spawn_app_with(options(backend)).await;
    apply_to_staging(
        &app,
        "accounts",
        &format!("CREATE TABLE accounts (id int PRIMARY KEY, email varchar(100) NOT NULL);\nINSERT INTO accounts VALUES (1, 'ada@example.com'), (2, 'bob@example.com');\n{extra_object}"),
        "DROP TABLE accounts;",
    )
    .await;
    let destructive = apply_to_staging(
        &app,
        "drop the emails",
        "DELETE FROM accounts WHERE id = 2;\nCREATE TABLE audit_log (id int);",
        "DROP TABLE audit_log;",
    )
    .await;
    let listed = backups(&app, "staging").await;
    let (status, done) = app
        .post(
            "lead",
            "/api/v1/environments/staging/restore",
            json!({"backup": file_name(&listed[0]), "confirm": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["undone"], json!([destructive]), "{done}");
    assert_eq!(
        sqlx_rows(&app, "staging", "SELECT email FROM accounts ORDER BY id").await,
        ["ada@example.com", "bob@example.com"]
    );
    assert!(!app.table_exists("staging", "audit_log").await);
    assert_eq!(
        app.deployment(&format!("{destructive}@staging")).await["state"],
        "approved"
    );
    let (_, status_view) = app.get("lead", "/api/v1/environments/staging").await;
    assert!(status_view["lock"].is_null(), "{status_view}");
    assert_eq!(app.run_worker("staging").await, Outcome::Idle);
    // Development is reset through the CLI (which asks for --confirm): nothing of it is left.
    let dir = app.config.config_dir.clone();
    let refused = crate::cli::sluice(&app, Some("lead"), &dir, &["reset", "development"]).await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--confirm"), "{}", refused.stderr);
    assert!(app.table_exists("development", "accounts").await);
    let done = crate::cli::sluice(
        &app,
        Some("lead"),
        &dir,
        &["reset", "development", "--confirm"],
    )
    .await;
    crate::cli::ok(&done);
    assert!(
        done.stdout
            .contains("development: reset, its database is empty"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains("2 migrations wait for `sluice migrate development`"),
        "{}",
        done.stdout
    );
    assert!(!app.table_exists("development", "accounts").await);
    assert!(!app.table_exists("development", "audit_log").await);
    app.stop().await;
}

#[tokio::test]
async fn a_mariadb_target_is_restored_and_reset() {
    restore_story(
        Backend::MySqlTargets,
        "CREATE VIEW account_emails AS SELECT email FROM accounts;",
    )
    .await;
}

#[tokio::test]
async fn a_sqlite_target_is_restored_and_reset() {
    restore_story(
        Backend::Sqlite,
        "CREATE TABLE counters (id INTEGER PRIMARY KEY AUTOINCREMENT, n int);\nCREATE INDEX accounts_email ON accounts (email);\nINSERT INTO counters (n) VALUES (1), (2);\nCREATE VIEW account_emails AS SELECT email FROM accounts;",
    )
    .await;
}

/// Two migrations applied to staging, the second destructive; the backup taken before it.
async fn destructive_setup(app: &TestApp) -> (String, String) {
    apply_to_staging(
        app,
        "accounts",
        "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);\nINSERT INTO accounts VALUES (1, 'ada@example.com');",
        "DROP TABLE accounts;",
    )
    .await;
    let destructive = apply_to_staging(
        app,
        "drop the emails",
        "ALTER TABLE accounts DROP COLUMN email;",
        "ALTER TABLE accounts ADD COLUMN email text;",
    )
    .await;
    let listed = backups(app, "staging").await;
    (destructive, file_name(&listed[0]))
}

/// Two leads restoring at once: one restores, the other is told the target is busy (or
/// restores the same backup after it); either way the data is back once, the queue follows,
/// the environment ends unlocked, and each restore that answered 200 is audited once.
#[tokio::test]
async fn two_restores_at_once_end_coherently() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    let (destructive, backup) = destructive_setup(&app).await;
    let body = json!({"backup": backup, "confirm": "staging"});
    let path = "/api/v1/environments/staging/restore";
    let ((a, first), (b, second)) = tokio::join!(
        app.post("lead", path, body.clone()),
        app.post("admin", path, body.clone())
    );
    for (status, answer) in [(a, &first), (b, &second)] {
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{status} {answer}"
        );
    }
    let done = [a, b].iter().filter(|s| **s == StatusCode::OK).count();
    assert!(done >= 1, "{first} {second}");
    assert_eq!(
        pg_rows(&app, "staging", "SELECT email FROM accounts").await,
        ["ada@example.com"]
    );
    assert_eq!(
        app.deployment(&format!("{destructive}@staging")).await["state"],
        "approved"
    );
    let (_, status_view) = app.get("lead", "/api/v1/environments/staging").await;
    assert!(status_view["lock"].is_null(), "{status_view}");
    let (_, audit) = app
        .get("admin", "/api/v1/audit?environment=staging&limit=5000")
        .await;
    let restored = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "restored")
        .count();
    assert_eq!(restored, done, "{audit}");
    app.stop().await;
}

/// A restore whose daemon died mid-way leaves its lock (nothing new starts). Restoring again
/// under that lock completes: the data is back, the queue follows, each migration has one
/// history row, and the lock stays for the operator to lift, as any lock already there.
#[tokio::test]
async fn a_restore_again_under_the_lock_a_dead_one_left_completes() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    let (destructive, backup) = destructive_setup(&app).await;
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/staging/lock",
            json!({"reason": format!("restore from {backup} in progress")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, done) = app
        .post(
            "lead",
            "/api/v1/environments/staging/restore",
            json!({"backup": backup, "confirm": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["undone"], json!([destructive]));
    assert_eq!(
        pg_rows(&app, "staging", "SELECT email FROM accounts").await,
        ["ada@example.com"]
    );
    assert_eq!(
        pg_rows(
            &app,
            "staging",
            "SELECT count(*)::text FROM sluice_schema_history"
        )
        .await,
        ["1"]
    );
    let (_, status_view) = app.get("lead", "/api/v1/environments/staging").await;
    assert!(status_view["lock"].is_object(), "{status_view}");
    // Nothing starts while it stays locked, even once released.
    let (status, refused) = app
        .post("lead", "/api/v1/environments/staging/migrate", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    app.stop().await;
}

/// A restore and a reset are news for every operator: the channels get a `restored` (or
/// `reset`) event naming the backup, the safety backup and the migrations back to approved.
#[tokio::test]
async fn restore_and_reset_are_announced_to_the_channels() {
    let hook = crate::receivers::Receiver::start().await;
    let app = spawn_app_with(AppOptions {
        backend: Backend::Sqlite,
        notifications: Some(format!(
            "channels:\n  audit:\n    type: webhook\n    url: {}\n    secret: test-secret\n    events: [restored, reset]\ndelivery:\n  first_retry_seconds: 0.05\n  max_retry_seconds: 0.2\n",
            hook.url("/hook")
        )),
        ..AppOptions::default()
    })
    .await;
    let first = app
        .submit(
            "dev",
            migration(
                "gadgets",
                "low",
                "CREATE TABLE gadgets (id int);",
                Some("DROP TABLE gadgets;"),
            ),
        )
        .await;
    for (user, role) in [("ops1", "data_ops"), ("ops2", "data_ops")] {
        app.approve(user, &format!("{first}@staging"), role).await;
    }
    app.wait_for_state(&format!("{first}@staging"), &["applied"])
        .await;
    let second = app
        .submit(
            "dev",
            migration(
                "widgets",
                "low",
                "CREATE TABLE widgets (id int);",
                Some("DROP TABLE widgets;"),
            ),
        )
        .await;
    for (user, role) in [("ops1", "data_ops"), ("ops2", "data_ops")] {
        app.approve(user, &format!("{second}@staging"), role).await;
    }
    app.wait_for_state(&format!("{second}@staging"), &["applied"])
        .await;
    // The newest backup was taken before the second migration.
    let listed = backups(&app, "staging").await;
    let backup = file_name(&listed[0]);
    let (status, answer) = app
        .post(
            "lead",
            "/api/v1/environments/staging/restore",
            json!({"backup": backup, "confirm": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let delivered = hook
        .wait_for("/hook", "a restored event", |r| {
            r.iter().any(|r| r.header("x-sluice-event") == "restored")
        })
        .await;
    let event = delivered
        .iter()
        .find(|r| r.header("x-sluice-event") == "restored")
        .unwrap();
    let text = event.json.to_string();
    for expected in [
        "\"environment\":\"staging\"",
        "lead",
        &backup,
        "kept as",
        &format!("back to approved, for `sluice migrate staging`: {second}"),
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    // A reset of development: announced as such.
    let (status, answer) = app
        .post(
            "lead",
            "/api/v1/environments/development/reset",
            json!({"confirm": "development"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let delivered = hook
        .wait_for("/hook", "a reset event", |r| {
            r.iter().any(|r| r.header("x-sluice-event") == "reset")
        })
        .await;
    let reset = delivered
        .iter()
        .find(|r| r.header("x-sluice-event") == "reset")
        .unwrap();
    assert!(
        reset
            .json
            .to_string()
            .contains("\"environment\":\"development\""),
        "{}",
        reset.json
    );
    app.stop().await;
}

/// A restore whose daemon stopped after replaying the database and before the queue followed
/// it leaves its lock and a queue that says `applied` for what the database lost. Unlocking
/// makes the queue follow the database first: the lost migration is approved again, for
/// `migrate` (before, it stayed `applied` and was never run again).
#[tokio::test]
async fn unlocking_what_a_stopped_restore_left_makes_the_queue_follow_the_database() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    let (destructive, backup) = destructive_setup(&app).await;
    // What the stopped restore left: its lock, and the database as the backup holds it (the
    // destructive migration's history row gone).
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/staging/lock",
            json!({"reason": format!("restore from {backup} in progress")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let client = app.targets["staging"].client().await;
    client
        .execute(
            "DELETE FROM sluice_schema_history WHERE migration_id = $1",
            &[&destructive],
        )
        .await
        .unwrap();
    assert_eq!(
        app.deployment(&format!("{destructive}@staging")).await["state"],
        "applied"
    );
    let (status, answer) = app
        .delete("lead", "/api/v1/environments/staging/lock")
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        app.deployment(&format!("{destructive}@staging")).await["state"],
        "approved"
    );
    let (_, audit) = app
        .get("lead", "/api/v1/audit?environment=staging&limit=5000")
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"reconciled"), "{actions:?}");
    assert!(answer["lock"].is_null(), "{answer}");
    // An ordinary lock is lifted as ever: nothing else changes.
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/staging/lock",
            json!({"reason": "release freeze"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .delete("lead", "/api/v1/environments/staging/lock")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, audit) = app
        .get("lead", "/api/v1/audit?environment=staging&limit=5000")
        .await;
    let reconciled = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "reconciled")
        .count();
    assert_eq!(reconciled, 1, "{audit}");
    app.stop().await;
}

/// A backup on demand (the legacy backup-database.sh and `migrate --backup`): operators only,
/// audited as theirs, listed first, restorable like the workers' backups.
#[tokio::test]
async fn a_backup_taken_on_demand_is_listed_and_restorable() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    let id = apply_to_staging(
        &app,
        "notes",
        "CREATE TABLE notes (id int PRIMARY KEY, body text);\nINSERT INTO notes VALUES (1, 'kept');",
        "DROP TABLE notes;",
    )
    .await;
    let before = backups(&app, "staging").await.len();
    let (status, refused) = app
        .post("dev", "/api/v1/environments/staging/backups", json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, taken) = app
        .post("lead", "/api/v1/environments/staging/backups", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    assert!(taken["size_bytes"].as_u64().unwrap() > 0, "{taken}");
    let listed = backups(&app, "staging").await;
    assert_eq!(listed.len(), before + 1);
    assert_eq!(listed[0]["file"], taken["file"]);
    let (_, audit) = app
        .get("lead", "/api/v1/audit?environment=staging&limit=5000")
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "backup_taken" && a["actor"] == "lead"),
        "{audit}"
    );
    // The CLI: `backup`, and `migrate --backup` (a backup first, whatever backup_required).
    let dir = tempfile::tempdir().unwrap();
    let cli = crate::cli::sluice(&app, Some("lead"), dir.path(), &["backup", "staging"]).await;
    crate::cli::ok(&cli);
    assert!(
        cli.stdout.contains("staging: backup taken: "),
        "{}",
        cli.stdout
    );
    let migrated = crate::cli::sluice(
        &app,
        Some("lead"),
        dir.path(),
        &["migrate", "development", "--backup"],
    )
    .await;
    crate::cli::ok(&migrated);
    assert!(
        migrated
            .stdout
            .contains("development: backup taken before migrating"),
        "{}",
        migrated.stdout
    );
    assert_eq!(backups(&app, "staging").await.len(), before + 2);
    // Data changes after the backup, then the backup is restored: the row is back.
    let client = app.targets["staging"].client().await;
    client.execute("DELETE FROM notes", &[]).await.unwrap();
    let (status, done) = app
        .post(
            "lead",
            "/api/v1/environments/staging/restore",
            json!({"backup": file_name(&taken), "confirm": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        pg_rows(&app, "staging", "SELECT body FROM notes").await,
        ["kept"]
    );
    assert_eq!(done["undone"], json!([]), "{id} is in the backup: {done}");
    app.stop().await;
}

/// Two operators asking for a backup at once: each is taken (one after the other) or told the
/// target is busy (409); every backup answered 201 is listed once, with its own file.
#[tokio::test]
async fn two_backups_at_once_end_coherently() {
    let app = spawn_app_with(options(Backend::Postgres)).await;
    apply_to_staging(
        &app,
        "gears",
        "CREATE TABLE gears (id int);",
        "DROP TABLE gears;",
    )
    .await;
    let before = backups(&app, "staging").await.len();
    let path = "/api/v1/environments/staging/backups";
    let ((a, first), (b, second)) = tokio::join!(
        app.post("lead", path, json!({})),
        app.post("admin", path, json!({}))
    );
    let mut files = Vec::new();
    for (status, answer) in [(a, &first), (b, &second)] {
        match status {
            StatusCode::CREATED => files.push(answer["file"].as_str().unwrap().to_owned()),
            StatusCode::CONFLICT => assert!(
                answer.to_string().contains("try the backup again"),
                "{answer}"
            ),
            other => panic!("{other}: {answer}"),
        }
    }
    assert!(!files.is_empty(), "{first} {second}");
    files.sort();
    files.dedup();
    let listed = backups(&app, "staging").await;
    assert_eq!(listed.len(), before + files.len(), "{listed:?}");
    for file in &files {
        assert_eq!(
            listed.iter().filter(|b| b["file"] == file.as_str()).count(),
            1,
            "{file}: {listed:?}"
        );
    }
    app.stop().await;
}
