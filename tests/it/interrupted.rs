//! A script that cannot run in one transaction is never run again from the top after its runner
//! stops part-way (issue 6, item 1): the connection is cut (PostgreSQL's pg_terminate_backend,
//! MariaDB's KILL) or the daemon is killed with SIGKILL during a statement. The deployment halts
//! as "interrupted after statement k of n", and a retry resumes at statement k + 1.

use crate::harness::{AppOptions, Backend, TestDatabase, USERS, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const SCRIPT: &str = "INSERT INTO counter VALUES (1);\nSELECT pg_sleep(3);\nCREATE INDEX CONCURRENTLY counter_n ON counter (n);\n";

async fn counter_rows(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM counter", &[])
        .await
        .unwrap()
        .get(0)
}

/// One round of development's worker, running while the test cuts it off.
fn development_round_in_background(
    app: &crate::harness::TestApp,
) -> tokio::task::JoinHandle<Result<sluice::engine::Outcome, sluice::service::ServiceError>> {
    let service = app.service().clone();
    let env = app.config.environments[0].clone();
    tokio::spawn(async move {
        sluice::engine::Worker::new(service, env, tokio_util::sync::CancellationToken::new())
            .run_once()
            .await
    })
}

/// Waits (bounded) until the target shows a statement containing `text` running.
pub(crate) async fn wait_for_running_pg(client: &tokio_postgres::Client, text: &str) -> i32 {
    for _ in 0..400 {
        let row = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                &[&format!("%{text}%")],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no statement with {text:?} started on the target");
}

#[tokio::test]
async fn a_cut_connection_halts_a_non_transactional_script_and_retry_resumes_after_the_last_done_statement()
 {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let target = app.targets["development"].client().await;
    target
        .batch_execute("CREATE TABLE counter (n int)")
        .await
        .unwrap();
    let id = app
        .submit("dev", migration("counter", "low", SCRIPT, None))
        .await;
    let deployment = format!("{id}@development");
    let worker = development_round_in_background(&app);
    let pid = wait_for_running_pg(&target, "pg_sleep").await;
    target
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    worker
        .await
        .unwrap()
        .expect("the round ends without an error");
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(error.starts_with("interrupted"), "{d}");
    // The count comes from the target's history, read on a fresh session after the cut.
    assert_eq!(d["statements_applied"], 1, "{d}");
    assert_eq!(counter_rows(&target).await, 1);
    // Another round does not touch it: the failure halts the queue.
    app.run_worker("development").await;
    assert_eq!(counter_rows(&target).await, 1);

    // Retry resumes at statement 2: the INSERT is not run again.
    let (status, body) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{deployment}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "applied", "{d}");
    assert_eq!(counter_rows(&target).await, 1, "the INSERT ran twice");
    let log: Vec<&str> = d["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("resuming at statement 2 of 3")),
        "{log:?}"
    );
    let index: bool = target
        .query_one("SELECT to_regclass('counter_n') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(index);
    app.stop().await;
}

#[tokio::test]
async fn a_killed_mariadb_connection_halts_a_ddl_script_and_retry_resumes() {
    use sqlx::Row;
    let app = spawn_app_with(AppOptions {
        backend: Backend::MySqlTargets,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let script = "CREATE TABLE first_t (id int);\nINSERT INTO first_t VALUES (1);\nSELECT SLEEP(3);\nCREATE TABLE second_t (id int);\n";
    let id = app
        .submit("dev", migration("ddl steps", "low", script, None))
        .await;
    let deployment = format!("{id}@development");
    let worker = development_round_in_background(&app);
    let mut admin = app.mysql_targets["development"].connect().await;
    let mut killed = false;
    for _ in 0..400 {
        let row = sqlx::query(
            "SELECT id FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(3)%'",
        )
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some(row) = row {
            let connection: i64 = row.get::<i64, _>(0);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {connection}")))
                .execute(&mut admin)
                .await
                .unwrap();
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(killed, "the SLEEP never started");
    worker
        .await
        .unwrap()
        .expect("the round ends without an error");
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["error"].as_str().unwrap().starts_with("interrupted"),
        "{d}"
    );
    let (status, body) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{deployment}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    // Before: "Table 'first_t' already exists" on the re-run from the top.
    assert_eq!(d["state"], "applied", "{d}");
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM first_t")
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    assert!(app.table_exists("development", "second_t").await);
    app.stop().await;
}

/// What the target's history says of `migration_id` on MariaDB: (success, statements_done).
async fn mariadb_history(
    admin: &mut sqlx::mysql::MySqlConnection,
    migration_id: &str,
) -> (bool, i64) {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT success, statements_done FROM sluice_schema_history WHERE migration_id = ?",
    )
    .bind(migration_id)
    .fetch_one(admin)
    .await
    .unwrap();
    (row.get::<bool, _>(0), row.get::<i64, _>(1))
}

/// MariaDB (issue 19, item 9): the daemon dies right after the last statement of a script run
/// statement by statement, before the history row says applied. Simulated: a trigger holds the
/// final history write, the worker's round is dropped and its connection killed, so the target
/// records 2 of 2 statements done and the store still says running. The next round's reconcile
/// marks it applied (and the history row with it). Before, it failed as "interrupted after
/// statement 2 of 2 ... retry resumes at statement 3", halting the queue.
#[tokio::test]
async fn a_mariadb_script_cut_off_after_its_last_statement_is_applied() {
    use sqlx::Row;
    let app = spawn_app_with(AppOptions {
        backend: Backend::MySqlTargets,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    // A first migration makes the history table.
    let first = app
        .submit(
            "dev",
            migration("first", "low", "CREATE TABLE before_t (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    let mut admin = app.mysql_targets["development"].connect().await;
    sqlx::raw_sql(
        "CREATE TRIGGER hold_success BEFORE UPDATE ON sluice_schema_history FOR EACH ROW SET @held = IF(NEW.success, SLEEP(60), 0)",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let id = app
        .submit(
            "dev",
            migration(
                "two ddl",
                "low",
                "CREATE TABLE one_t (id int);\nCREATE TABLE two_t (id int);\n",
                None,
            ),
        )
        .await;
    let behind = app
        .submit(
            "dev",
            migration("behind", "low", "CREATE TABLE behind_t (id int);", None),
        )
        .await;
    let deployment = format!("{id}@development");
    let worker = development_round_in_background(&app);
    let mut held = None;
    for _ in 0..400 {
        let row = sqlx::query(
            "SELECT id FROM information_schema.processlist WHERE state = 'User sleep' AND info LIKE 'SET @held%'",
        )
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some(row) = row {
            held = Some(row.get::<i64, _>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let held = held.expect("the final history write never started");
    // The daemon dies: its round stops where it is, and its connection goes.
    worker.abort();
    let _ = worker.await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {held}")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql("DROP TRIGGER hold_success")
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(app.deployment(&deployment).await["state"], "running");
    assert_eq!(mariadb_history(&mut admin, &id).await, (false, 2));
    assert!(app.table_exists("development", "two_t").await);

    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "applied", "{d}");
    assert_eq!(mariadb_history(&mut admin, &id).await, (true, 2));
    // The queue behind it moves on.
    app.run_worker("development").await;
    let d = app.deployment(&format!("{behind}@development")).await;
    assert_eq!(d["state"], "applied", "{d}");
    app.stop().await;
}

/// What the target's history says of `migration_id` on PostgreSQL: (success, statements_done).
async fn pg_history(client: &tokio_postgres::Client, migration_id: &str) -> (bool, i64) {
    let row = client
        .query_one(
            "SELECT success, statements_done FROM sluice_schema_history WHERE migration_id = $1",
            &[&migration_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// MariaDB, the same cut while the daemon lives: the worker's session is killed during the
/// final history write, after the last statement. The worker looks with a new session, finds 2
/// of 2 statements done, and the deployment is applied in that round (before, it failed as
/// "interrupted: the target connection failed ...").
#[tokio::test]
async fn a_mariadb_session_killed_after_the_last_statement_leaves_it_applied() {
    use sqlx::Row;
    let app = spawn_app_with(AppOptions {
        backend: Backend::MySqlTargets,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let first = app
        .submit(
            "dev",
            migration("first", "low", "CREATE TABLE before_t (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    let mut admin = app.mysql_targets["development"].connect().await;
    sqlx::raw_sql(
        // Only the worker's own final write (it sets applied_at), not the one that marks the
        // row complete afterwards.
        "CREATE TRIGGER hold_success BEFORE UPDATE ON sluice_schema_history FOR EACH ROW SET @held = IF(NEW.success AND NEW.applied_at <> OLD.applied_at, SLEEP(60), 0)",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let id = app
        .submit(
            "dev",
            migration(
                "two ddl",
                "low",
                "CREATE TABLE one_t (id int);\nCREATE TABLE two_t (id int);\n",
                None,
            ),
        )
        .await;
    let deployment = format!("{id}@development");
    let worker = development_round_in_background(&app);
    let mut held = None;
    for _ in 0..400 {
        let row = sqlx::query(
            "SELECT id FROM information_schema.processlist WHERE state = 'User sleep' AND info LIKE 'SET @held%'",
        )
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some(row) = row {
            held = Some(row.get::<i64, _>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let held = held.expect("the final history write never started");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {held}")))
        .execute(&mut admin)
        .await
        .unwrap();
    worker
        .await
        .unwrap()
        .expect("the round ends without an error");
    sqlx::raw_sql("DROP TRIGGER hold_success")
        .execute(&mut admin)
        .await
        .unwrap();
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "applied", "{d}");
    assert_eq!(mariadb_history(&mut admin, &id).await, (true, 2));
    app.stop().await;
}

/// MariaDB: a deployment already failed although the target records every statement of it as
/// done (here the final history write was refused, by a trigger the test then drops; a daemon
/// before this fix left the same after a crash) is applied by the next round's reconcile: no
/// retry needed, and the queue behind it moves. Before, it stayed failed as "interrupted after
/// statement 2 of 2", halting the queue.
#[tokio::test]
async fn a_failed_mariadb_deployment_with_every_statement_done_is_reconciled_as_applied() {
    let app = spawn_app_with(AppOptions {
        backend: Backend::MySqlTargets,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let first = app
        .submit(
            "dev",
            migration("first", "low", "CREATE TABLE before_t (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    let mut admin = app.mysql_targets["development"].connect().await;
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_success BEFORE UPDATE ON sluice_schema_history FOR EACH ROW BEGIN IF NEW.success AND NEW.applied_at <> OLD.applied_at THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let id = app
        .submit(
            "dev",
            migration(
                "two ddl",
                "low",
                "CREATE TABLE one_t (id int);\nCREATE TABLE two_t (id int);\n",
                None,
            ),
        )
        .await;
    let behind = app
        .submit(
            "dev",
            migration("behind", "low", "CREATE TABLE behind_t (id int);", None),
        )
        .await;
    let deployment = format!("{id}@development");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!(mariadb_history(&mut admin, &id).await, (false, 2));
    sqlx::raw_sql("DROP TRIGGER refuse_success")
        .execute(&mut admin)
        .await
        .unwrap();

    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "applied", "{d}");
    assert!(d["error"].is_null(), "{d}");
    assert_eq!(mariadb_history(&mut admin, &id).await, (true, 2));
    app.run_worker("development").await;
    let d = app.deployment(&format!("{behind}@development")).await;
    assert_eq!(d["state"], "applied", "{d}");
    app.stop().await;
}

/// PostgreSQL, the same as above: a script with CREATE INDEX CONCURRENTLY, its final history
/// write held by a trigger while the worker's round is dropped and its backend terminated.
/// The target records 2 of 2 statements done: the next round marks it applied.
#[tokio::test]
async fn a_postgres_script_cut_off_after_its_last_statement_is_applied() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let target = app.targets["development"].client().await;
    let first = app
        .submit(
            "dev",
            migration("first", "low", "CREATE TABLE counter (n int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    target
        .batch_execute(
            "CREATE FUNCTION hold_success() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.success THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$;
             CREATE TRIGGER hold_success BEFORE UPDATE ON sluice_schema_history FOR EACH ROW EXECUTE FUNCTION hold_success();",
        )
        .await
        .unwrap();
    let id = app
        .submit(
            "dev",
            migration(
                "index steps",
                "low",
                "INSERT INTO counter VALUES (1);\nCREATE INDEX CONCURRENTLY counter_n ON counter (n);\n",
                None,
            ),
        )
        .await;
    let deployment = format!("{id}@development");
    let worker = development_round_in_background(&app);
    let mut held = None;
    for _ in 0..400 {
        let row = target
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep' AND query LIKE 'INSERT INTO%sluice_schema_history%'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            held = Some(row.get::<_, i32>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let held = held.expect("the final history write never started");
    worker.abort();
    let _ = worker.await;
    target
        .execute("SELECT pg_terminate_backend($1)", &[&held])
        .await
        .unwrap();
    target
        .batch_execute("DROP TRIGGER hold_success ON sluice_schema_history")
        .await
        .unwrap();
    assert_eq!(app.deployment(&deployment).await["state"], "running");
    assert_eq!(pg_history(&target, &id).await, (false, 2));

    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "applied", "{d}");
    assert_eq!(pg_history(&target, &id).await, (true, 2));
    assert_eq!(counter_rows(&target).await, 1);
    app.stop().await;
}

/// The real daemon, killed with SIGKILL while the script sleeps, then started again.
pub(crate) struct Daemon {
    pub child: std::process::Child,
    pub rest: String,
    pub grpc: String,
}

pub(crate) fn start_daemon(
    config: &std::path::Path,
    data: &std::path::Path,
    store: &str,
    dev: &str,
) -> Daemon {
    start_daemon_with(config, data, store, dev, &[])
}

/// `start_daemon` with more environment variables.
pub(crate) fn start_daemon_with(
    config: &std::path::Path,
    data: &std::path::Path,
    store: &str,
    dev: &str,
    env: &[(&str, &str)],
) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .envs(env.iter().copied())
        .args(["server", "--config-dir"])
        .arg(config)
        .current_dir(data)
        .env("SLUICE__SERVER__REST_ADDR", "127.0.0.1:0")
        .env("SLUICE__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("SLUICE__STORE__URL", store)
        .env("SLUICE__WORKER__POLL_INTERVAL_MS", "100")
        .env("DEV_DB_URL", dev)
        .env_remove("STAGING_DB_URL")
        .env_remove("PROD_DB_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // "sluice listening on http://A (REST) and http://B (gRPC)"
    let words: Vec<&str> = line.split_whitespace().collect();
    let (rest, grpc) = match words.as_slice() {
        ["sluice", "listening", "on", rest, "(REST)", "and", grpc, ..] => {
            (rest.to_string(), grpc.to_string())
        }
        _ => panic!("unexpected first line: {line:?}"),
    };
    Daemon { child, rest, grpc }
}

pub(crate) async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_state(
    http: &reqwest::Client,
    daemon: &Daemon,
    token: &str,
    id: &str,
    state: &str,
) -> Value {
    for _ in 0..400 {
        let (_, d) = call(
            http,
            reqwest::Method::GET,
            format!("{}/api/v1/deployments/{id}", daemon.rest),
            token,
            None,
        )
        .await;
        if d["state"] == state {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never became {state}");
}

#[tokio::test]
async fn sigkill_during_a_non_transactional_script_never_runs_it_again_from_the_top() {
    let (store, dev, dir, config, token) = daemon_setup("k9").await;
    let target = dev.client().await;
    target
        .batch_execute("CREATE TABLE counter (n int)")
        .await
        .unwrap();
    let http = reqwest::Client::new();

    let mut daemon = start_daemon(&config, &dir, &store.url, &dev.url);
    let (status, body) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/api/v1/migrations", daemon.rest),
        &token,
        Some(migration("counter", "low", SCRIPT, None)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deployment = format!("{}@development", body["id"].as_str().unwrap());
    wait_for_running_pg(&target, "pg_sleep").await;
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();

    let mut daemon = start_daemon(&config, &dir, &store.url, &dev.url);
    let d = wait_state(&http, &daemon, &token, &deployment, "failed").await;
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted after statement 1 of 3"),
        "{d}"
    );
    assert_eq!(counter_rows(&target).await, 1, "the INSERT ran again");
    let (status, body) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/api/v1/deployments/{deployment}/retry", daemon.rest),
        &token,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_state(&http, &daemon, &token, &deployment, "applied").await;
    assert_eq!(counter_rows(&target).await, 1, "the INSERT ran again");
    let _ = Command::new("kill")
        .arg(daemon.child.id().to_string())
        .status();
    daemon.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// SQLite: a script with VACUUM runs statement by statement too; after a failure a retry
/// resumes after the statements already applied.
#[tokio::test]
async fn a_failed_sqlite_script_with_vacuum_resumes_after_what_it_applied() {
    use sqlx::{ConnectOptions, Row};
    let app = spawn_app_with(AppOptions {
        backend: Backend::Sqlite,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let file = app.sqlite_dir.as_ref().unwrap().join("development.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let mut conn = options.connect().await.unwrap();
    // The last statement will collide with this table on the first attempt.
    sqlx::raw_sql("CREATE TABLE later (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    let script = "CREATE TABLE once (id int);\nINSERT INTO once VALUES (1);\nVACUUM;\nCREATE TABLE later (id int);\n";
    let id = app
        .submit("dev", migration("vacuum steps", "low", script, None))
        .await;
    let deployment = format!("{id}@development");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!(d["transactional"], false, "{d}");
    sqlx::raw_sql("DROP TABLE later")
        .execute(&mut conn)
        .await
        .unwrap();
    let (status, body) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{deployment}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "applied", "{d}");
    let rows: i64 = sqlx::query("SELECT count(*) FROM once")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the INSERT ran twice");
    app.stop().await;
}

/// A rollback script that cannot run in one transaction keeps its progress too: requested
/// again after a failure, it resumes after the statements it applied (DROP INDEX CONCURRENTLY
/// run twice would fail: the index is gone).
#[tokio::test]
async fn a_failed_non_transactional_rollback_resumes_when_requested_again() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let target = app.targets["development"].client().await;
    let id = app
        .submit(
            "dev",
            migration(
                "index concurrently",
                "low",
                "CREATE TABLE counter2 (n int);\nCREATE INDEX CONCURRENTLY c2_n ON counter2 (n);",
                Some("DROP INDEX CONCURRENTLY c2_n;\nCREATE TABLE rb_marker (id int);\nDROP TABLE counter2;"),
            ),
        )
        .await;
    let deployment = format!("{id}@development");
    app.run_worker("development").await;
    assert_eq!(app.deployment(&deployment).await["state"], "applied");
    // The rollback's second statement will fail the first time.
    target
        .batch_execute("CREATE TABLE rb_marker (id int)")
        .await
        .unwrap();
    let rollback = format!("/api/v1/deployments/{deployment}/rollback");
    let (status, body) = app.post("dev", &rollback, json!({"reason": "undo"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().contains("rb_marker"), "{d}");
    target.batch_execute("DROP TABLE rb_marker").await.unwrap();
    let (status, body) = app.post("dev", &rollback, json!({"reason": "again"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_worker("development").await;
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    assert!(!app.table_exists("development", "counter2").await);
    let log: Vec<&str> = d["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("resuming the rollback at statement 2 of 3")),
        "{log:?}"
    );
    app.stop().await;
}

/// A store and a development target, a configuration folder with one user (dev), its token.
pub(crate) async fn daemon_setup(
    name: &str,
) -> (
    TestDatabase,
    TestDatabase,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    // reqwest is built without a default TLS provider: install it whatever test runs first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store_name, dev_name) = (format!("{name}store"), format!("{name}dev"));
    let (store, dev) = tokio::join!(
        TestDatabase::create(&store_name),
        TestDatabase::create(&dev_name)
    );
    let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", dev.name));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let shipped = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    for file in ["sluice.yml", "environments.yml", "approval_matrix.yml"] {
        std::fs::copy(shipped.join(file), config.join(file)).unwrap();
    }
    let token = sluice::auth::new_token().unwrap();
    let roles = USERS
        .iter()
        .find(|(n, _)| *n == "dev")
        .unwrap()
        .1
        .join(", ");
    std::fs::write(
        config.join("users.yml"),
        format!(
            "users:\n  - name: dev\n    roles: [{roles}]\n    token_sha256: \"{}\"\n",
            sluice::auth::token_sha256(&token)
        ),
    )
    .unwrap();
    (store, dev, dir, config, token)
}

/// SQLite: a trigger's `BEGIN ... END` body is one statement (before, it was split at the
/// body's semicolons: the submission was refused for its `END`, or the apply failed); the
/// trigger fires afterwards. A PostgreSQL target still splits a `BEGIN` word's script at every
/// semicolon (nothing hides statements from the checks there).
#[tokio::test]
async fn a_sqlite_trigger_body_is_one_statement() {
    use sqlx::{ConnectOptions, Row};
    let app = spawn_app_with(AppOptions {
        backend: Backend::Sqlite,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let script = "CREATE TABLE orders (id int, total int);\nCREATE TABLE order_log (order_id int, note text);\nCREATE TRIGGER orders_logged AFTER INSERT ON orders\nWHEN new.total > 0\nBEGIN\n  INSERT INTO order_log VALUES (new.id, CASE WHEN new.total > 100 THEN 'big; really' ELSE 'small' END);\n  UPDATE orders SET total = total WHERE id = new.id;\nEND;\nINSERT INTO orders VALUES (1, 500);\n";
    let id = app
        .submit(
            "dev",
            migration(
                "trigger",
                "low",
                script,
                Some("DROP TRIGGER orders_logged;\nDROP TABLE order_log;\nDROP TABLE orders;\n"),
            ),
        )
        .await;
    app.run_worker("development").await;
    let d = app.deployment(&format!("{id}@development")).await;
    assert_eq!(d["state"], "applied", "{d}");
    let file = app.sqlite_dir.as_ref().unwrap().join("development.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .connect()
        .await
        .unwrap();
    let note: String = sqlx::query("SELECT note FROM order_log WHERE order_id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "big; really");
    // PostgreSQL's splitting is unchanged: the word BEGIN hides nothing there.
    let pg = sluice::lint::split_statements_for(
        "CREATE TRIGGER t BEGIN; COMMIT; DROP TABLE x; END;",
        sluice::lint::Dialect::Postgres,
    )
    .unwrap();
    assert_eq!(pg.len(), 4, "{pg:?}");
}
