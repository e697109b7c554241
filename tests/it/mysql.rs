//! MariaDB (MySQL) targets: the seed's story, DDL run statement by statement, data scripts in
//! one transaction with their history row, GET_LOCK against a second runner, mysqldump backups.

use crate::harness::{AppOptions, Backend, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use sluice::engine::Outcome;
use sqlx::Row;

fn options() -> AppOptions {
    AppOptions {
        backend: Backend::MySqlTargets,
        background_workers: false,
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn seed_story_on_mariadb_targets() {
    let app = spawn_app_with(options()).await;
    let id = app
        .submit(
            "dev",
            migration(
                "Add user preferences table",
                "high",
                "CREATE TABLE user_preferences (id INT PRIMARY KEY, user_id INT NOT NULL);\nINSERT INTO user_preferences VALUES (1, 42);",
                Some("DROP TABLE user_preferences;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    let dev = app.deployment(&format!("{id}@development")).await;
    assert_eq!(dev["state"], "applied", "{dev}");
    assert_eq!(dev["transactional"], false);
    assert!(
        dev["log"].as_array().unwrap().iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .contains("MySQL commits DDL implicitly")),
        "{dev}"
    );
    app.approve("ops1", &format!("{id}@staging"), "data_ops")
        .await;
    app.approve("ops2", &format!("{id}@staging"), "data_ops")
        .await;
    app.run_worker("staging").await;
    assert_eq!(
        app.deployment(&format!("{id}@staging")).await["state"],
        "applied"
    );
    // Staging requires a backup: mysqldump wrote one.
    let backups = app.config.config_dir.join("backups").join("staging");
    let file = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("MariaDB dump")
            || std::fs::metadata(&file).unwrap().len() > 0
    );
    let production = format!("{id}@production");
    for (user, role) in [
        ("lead", "data_ops_lead"),
        ("dba", "dba"),
        ("tech", "tech_lead"),
        ("cto", "cto"),
    ] {
        app.approve(user, &production, role).await;
    }
    let (code, body) = app
        .post("lead", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    app.run_worker("production").await;
    assert_eq!(app.deployment(&production).await["state"], "applied");
    assert!(app.table_exists("production", "user_preferences").await);
    let mut conn = app.mysql_targets["production"].connect().await;
    let row =
        sqlx::query("SELECT checksum, success FROM sluice_schema_history WHERE migration_id = ?")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(row.get::<String, _>(0).len(), 64);
    assert!(row.get::<bool, _>(1));

    app.post(
        "dba",
        &format!("/api/v1/deployments/{production}/rollback"),
        json!({"reason": "story"}),
    )
    .await;
    app.run_worker("production").await;
    assert_eq!(app.deployment(&production).await["state"], "rolled_back");
    assert!(!app.table_exists("production", "user_preferences").await);
    assert!(app.table_exists("staging", "user_preferences").await);
    app.stop().await;
}

#[tokio::test]
async fn a_data_script_is_one_transaction_with_its_history_row() {
    let app = spawn_app_with(options()).await;
    let setup = app
        .submit(
            "dev",
            migration("table", "low", "CREATE TABLE counters (n INT);", None),
        )
        .await;
    let data = app
        .submit(
            "dev",
            migration(
                "fill",
                "low",
                "INSERT INTO counters VALUES (1);\nINSERT INTO counters VALUES (2);\nINSERT INTO missing_table VALUES (3);",
                None,
            ),
        )
        .await;
    let outcome = app.run_worker("development").await;
    assert_eq!(
        outcome,
        Outcome::Worked {
            applied: 1,
            rolled_back: 0,
            failed: Some(format!("{data}@development"))
        }
    );
    assert_eq!(
        app.deployment(&format!("{setup}@development")).await["state"],
        "applied"
    );
    let failed = app.deployment(&format!("{data}@development")).await;
    assert_eq!(failed["transactional"], true);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("statement 3 (line 3): ")
            && error.contains("missing_table")
            && error.contains(": ERROR 1146 (42S02): Table '"),
        "{error}"
    );
    let mut conn = app.mysql_targets["development"].connect().await;
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM counters")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 0,
        "the first two inserts were rolled back with the failure"
    );
    app.stop().await;
}

#[tokio::test]
async fn get_lock_keeps_a_second_runner_out() {
    let app = spawn_app_with(options()).await;
    let id = app
        .submit(
            "dev",
            migration("locked", "low", "CREATE TABLE locked_t (id INT);", None),
        )
        .await;
    let mut other = app.mysql_targets["development"].connect().await;
    let got: i64 = sqlx::query("SELECT GET_LOCK(CONCAT('sluice.', DATABASE()), 0)")
        .fetch_one(&mut other)
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, 1);
    assert!(matches!(
        app.run_worker("development").await,
        Outcome::TargetUnavailable(_)
    ));
    assert_eq!(
        app.deployment(&format!("{id}@development")).await["state"],
        "queued"
    );
    sqlx::query("SELECT RELEASE_LOCK(CONCAT('sluice.', DATABASE()))")
        .execute(&mut other)
        .await
        .unwrap();
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{id}@development")).await["state"],
        "applied"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_statement_timeout_reaches_mariadb() {
    let app = spawn_app_with(AppOptions {
        edit_environments: Some(|text| text.replacen("timeout: 300 ", "timeout: 1 ", 1)),
        ..options()
    })
    .await;
    let id = app
        .submit("dev", migration("slow", "low", "SELECT SLEEP(3);", None))
        .await;
    app.run_worker("development").await;
    let d = app.deployment(&format!("{id}@development")).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("max_statement_time exceeded"),
        "{d}"
    );
    app.stop().await;
}

/// A password with `@`, `:` and `/` is written percent-encoded in the URL: the connection
/// decoded it but the backup handed it to mysqldump encoded ("access denied"), and the
/// deployment stayed queued.
#[tokio::test]
async fn a_percent_encoded_password_reaches_the_backup_program_decoded() {
    let mut admin = crate::harness::TestMySqlDatabase::create("pctsetup")
        .await
        .connect()
        .await;
    for sql in [
        "CREATE USER IF NOT EXISTS 'sluice_pct'@'%' IDENTIFIED BY 'p@ss:w/rd'",
        "CREATE USER IF NOT EXISTS 'sluice_pct'@'localhost' IDENTIFIED BY 'p@ss:w/rd'",
        "GRANT ALL PRIVILEGES ON *.* TO 'sluice_pct'@'%'",
        "GRANT ALL PRIVILEGES ON *.* TO 'sluice_pct'@'localhost'",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let app = spawn_app_with(AppOptions {
        edit_config: Some(|config| {
            let staging = &mut config.environments[1];
            let url = staging.url.expose().replacen(
                "mysql://root@",
                "mysql://sluice_pct:p%40ss%3Aw%2Frd@",
                1,
            );
            assert!(url.contains("sluice_pct"), "{url}");
            staging.url = sluice::config::Secret::new(url);
        }),
        ..options()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("pct", "low", "CREATE TABLE pct (id INT);", None),
        )
        .await;
    app.run_worker("development").await;
    app.approve("ops1", &format!("{id}@staging"), "data_ops")
        .await;
    app.approve("ops2", &format!("{id}@staging"), "data_ops")
        .await;
    let outcome = app.run_worker("staging").await;
    let d = app.deployment(&format!("{id}@staging")).await;
    assert_eq!(d["state"], "applied", "{outcome:?} {d}");
    assert!(
        d["log"].as_array().unwrap().iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .starts_with("backup taken before this run")),
        "{d}"
    );
    app.stop().await;
}

/// `#` comments holding a semicolon and DELIMITER blocks around a procedure: split as the mysql
/// client splits them (before, the PostgreSQL lexer cut them in the wrong places).
#[tokio::test]
async fn hash_comments_and_delimiter_blocks_apply_on_mariadb() {
    use sqlx::Row;
    let app = spawn_app_with(options()).await;
    let script = "# setup; first the table\nCREATE TABLE hc (id INT); # trailing; comment\nDELIMITER //\nCREATE PROCEDURE hc_count()\nBEGIN\n  SELECT COUNT(*) FROM hc;\nEND //\nDELIMITER ;\nINSERT INTO hc VALUES (1); -- done; really\n";
    let id = app
        .submit("dev", migration("mysql client syntax", "low", script, None))
        .await;
    app.run_worker("development").await;
    let d = app.deployment(&format!("{id}@development")).await;
    assert_eq!(d["state"], "applied", "{d}");
    let mut conn = app.mysql_targets["development"].connect().await;
    let procedures: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = DATABASE() AND routine_name = 'hc_count'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(procedures, 1);
    let statements: i64 =
        sqlx::query("SELECT statements_total FROM sluice_schema_history WHERE migration_id = ?")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
    assert_eq!(statements, 3);
    app.stop().await;
}

/// MariaDB: a DDL statement waiting for a metadata lock another transaction holds queues every
/// later reader of the table behind it. Each attempt waits no longer than lock_attempt_ms
/// (MariaDB: not at all), then gives way and tries again, and the migration applies once the
/// holder commits. Before, it waited for the whole lock_timeout (600 s) with every reader
/// stuck behind it.
#[tokio::test]
async fn a_ddl_waiting_for_a_metadata_lock_gives_way_to_readers() {
    use sqlx::Executor;
    let app = spawn_app_with(options()).await;
    let db = &app.mysql_targets["development"];
    let mut setup = db.connect().await;
    setup
        .execute("CREATE TABLE hot (id INT); INSERT INTO hot VALUES (1)")
        .await
        .unwrap();
    let mut blocker = db.connect().await;
    let blocker_id: i64 = sqlx::query("SELECT CAST(CONNECTION_ID() AS SIGNED)")
        .fetch_one(&mut blocker)
        .await
        .unwrap()
        .get(0);
    blocker.execute("START TRANSACTION").await.unwrap();
    blocker.execute("SELECT * FROM hot").await.unwrap();
    let id = app
        .submit(
            "dev",
            migration(
                "add column",
                "low",
                "ALTER TABLE hot ADD COLUMN note TEXT;",
                None,
            ),
        )
        .await;
    let service = app.service().clone();
    let env = app.config.environments[0].clone();
    let worker = tokio::spawn(async move {
        sluice::engine::Worker::new(service, env, tokio_util::sync::CancellationToken::new())
            .run_once()
            .await
    });
    let mut reader = db.connect().await;
    let mut slowest = std::time::Duration::ZERO;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let t = std::time::Instant::now();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sqlx::query("SELECT COUNT(*) FROM hot").fetch_one(&mut reader),
        )
        .await;
        assert!(read.is_ok(), "a reader waited 5 s behind the migration");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        slowest < std::time::Duration::from_millis(2_000),
        "a reader waited {slowest:?} behind the migration"
    );
    blocker.execute("COMMIT").await.unwrap();
    worker.await.unwrap().unwrap();
    let d = app.deployment(&format!("{id}@development")).await;
    assert_eq!(d["state"], "applied", "{d}");
    let log = d["log"].to_string();
    assert!(log.contains("a lock was not granted within"), "{log}");
    assert!(
        log.contains(&format!(
            "sessions with open transactions: id {blocker_id} (user root"
        )),
        "{log}"
    );
    assert!(log.contains("got its locks"), "{log}");
    let columns: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'hot' AND column_name = 'note'",
    )
    .fetch_one(&mut setup)
    .await
    .unwrap()
    .get(0);
    assert_eq!(columns, 1);
    app.stop().await;
}

/// MariaDB dry runs: data statements run in a transaction and are rolled back; DDL commits
/// implicitly, so it is reported as not dry-runnable and nothing after it runs.
#[tokio::test]
async fn dry_runs_on_mariadb_roll_data_back_and_do_not_touch_ddl() {
    use sqlx::Executor;
    let app = spawn_app_with(options()).await;
    let db = &app.mysql_targets["staging"];
    let mut conn = db.connect().await;
    conn.execute("CREATE TABLE counters (n INT); INSERT INTO counters VALUES (1)")
        .await
        .unwrap();
    let data = app
        .submit(
            "dev",
            migration(
                "bump",
                "low",
                "UPDATE counters SET n = n + 1 WHERE n > 0;\nINSERT INTO counters VALUES (5);",
                None,
            ),
        )
        .await;
    let (status, run) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{data}@staging/dry-run"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["outcome"], "ok", "{run}");
    let sum: i64 = sqlx::query("SELECT CAST(SUM(n) AS SIGNED) FROM counters")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 1, "rolled back");
    let ddl = app
        .submit(
            "dev",
            migration(
                "ddl",
                "low",
                "INSERT INTO counters VALUES (7);\nALTER TABLE counters ADD COLUMN note TEXT;\nINSERT INTO counters VALUES (8, 'x');",
                None,
            ),
        )
        .await;
    let (status, run) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{ddl}@staging/dry-run"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["outcome"], "partial", "{run}");
    let statuses: Vec<&str> = run["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "not_dry_runnable", "not_run"], "{run}");
    assert!(
        run["statements"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("commits DDL implicitly"),
        "{run}"
    );
    let columns: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'counters'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(columns, 1, "the ALTER did not run");
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM counters")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the INSERT before it was rolled back");
    app.stop().await;
}

/// MariaDB rollback tests: the schema copied with mysqldump --no-data into a scratch database,
/// up, down and up again there; a forgotten index is a finding; nothing is left behind.
#[tokio::test]
async fn rollback_tests_on_mariadb_catch_a_forgotten_index() {
    use sqlx::Executor;
    let app = spawn_app_with(options()).await;
    let db = &app.mysql_targets["staging"];
    let mut conn = db.connect().await;
    conn.execute("CREATE TABLE orders (id INT PRIMARY KEY, customer INT NOT NULL)")
        .await
        .unwrap();
    let up = "ALTER TABLE orders ADD COLUMN note TEXT;\nCREATE INDEX orders_customer ON orders (customer);";
    let good = app
        .submit(
            "dev",
            migration(
                "good",
                "low",
                up,
                Some("DROP INDEX orders_customer ON orders;\nALTER TABLE orders DROP COLUMN note;"),
            ),
        )
        .await;
    let forgetful = app
        .submit(
            "dev",
            migration(
                "forgetful",
                "low",
                up,
                Some("ALTER TABLE orders DROP COLUMN note;"),
            ),
        )
        .await;
    let (status, test) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{good}@staging/rollback-test"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{test}");
    assert_eq!(test["outcome"], "passed", "{test}");
    let (_, test) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{forgetful}@staging/rollback-test"),
            json!({}),
        )
        .await;
    assert_eq!(test["outcome"], "failed", "{test}");
    assert_eq!(
        test["left_by_down"][0]["object"], "index orders.orders_customer",
        "{test}"
    );
    let scratch: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'sluice\\_rollback\\_test\\_%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(scratch, 0, "scratch databases are dropped");
    let columns: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'orders'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(columns, 2, "the target is untouched");
    app.stop().await;
}

/// The statements `validate --dialect mysql` must never call a syntax error are real MySQL:
/// MariaDB runs every one of them, in order (the lint unit test checks the other half).
#[tokio::test]
async fn the_real_world_mysql_fixture_runs_on_mariadb() {
    let db = crate::harness::TestMySqlDatabase::create("fixture").await;
    let mut conn = db.connect().await;
    let script = include_str!("../fixtures/mysql-real-world.sql");
    let statements =
        sluice::lint::split_statements_for(script, sluice::lint::Dialect::MySql).unwrap();
    assert!(statements.len() > 40, "{}", statements.len());
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.text.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("line {}: {}: {e}", statement.line, statement.text));
    }
}
