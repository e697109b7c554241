//! Drift detection (issue 9): schema changes made with psql behind Sluice's back are found,
//! listed, recorded by the scheduler's check (voiding approvals given against the old schema)
//! and by the worker before it applies, shown in status, and accepted by an operator.

use crate::harness::{AppOptions, Backend, TestApp, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::Value;

fn changes(drift: &Value) -> Vec<(String, String)> {
    drift["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["object"].as_str().unwrap().to_owned(),
                d["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn manual(backend: Backend) -> TestApp {
    spawn_app_with(AppOptions {
        backend,
        background_workers: false,
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn drift_made_with_psql_is_found_recorded_voids_approvals_and_is_accepted() {
    let app = manual(Backend::Postgres).await;
    // Sluice applies a table to development: the schema it leaves is the reference.
    let first = app
        .submit(
            "dev",
            migration(
                "accounts",
                "low",
                "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL DEFAULT '');",
                None,
            ),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    let (status, drift) = app
        .get("dev", "/api/v1/environments/development/drift")
        .await;
    assert_eq!(status, StatusCode::OK, "{drift}");
    assert_eq!(drift["drifted"], false, "{drift}");
    assert!(drift["reference_at"].is_string(), "{drift}");

    // Behind Sluice's back.
    let dev_db = app.targets["development"].client().await;
    dev_db
        .batch_execute(
            "ALTER TABLE accounts ADD COLUMN secret text; CREATE INDEX accounts_secret ON accounts (secret); \
             ALTER TABLE accounts ALTER COLUMN name DROP DEFAULT",
        )
        .await
        .unwrap();
    let (_, drift) = app
        .get("dev", "/api/v1/environments/development/drift")
        .await;
    assert_eq!(drift["drifted"], true, "{drift}");
    assert_eq!(
        changes(&drift),
        [
            (
                "column public.accounts.name".to_owned(),
                "changed".to_owned()
            ),
            (
                "column public.accounts.secret".to_owned(),
                "added".to_owned()
            ),
            (
                "index public.accounts_secret".to_owned(),
                "added".to_owned()
            ),
        ],
        "{drift}"
    );
    assert_eq!(
        drift["differences"][0]["before"],
        "text NOT NULL DEFAULT ''::text"
    );
    assert_eq!(drift["differences"][0]["after"], "text NOT NULL");
    assert!(drift["recorded"].is_null(), "GET only reads: {drift}");

    // The CLI says so and exits 1.
    let dir = std::env::temp_dir();
    let run = crate::cli::sluice(&app, Some("dev"), &dir, &["drift", "development"]).await;
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("development: 3 differences from the schema Sluice left at")
            && run.stdout.contains("added    column public.accounts.secret: text")
            && run
                .stdout
                .contains("changed  column public.accounts.name: text NOT NULL DEFAULT ''::text -> text NOT NULL"),
        "{}",
        run.stdout
    );

    // Staging: approved before a drift that the scheduler's check finds.
    let second = app
        .submit(
            "dev",
            migration(
                "more",
                "low",
                "ALTER TABLE accounts ADD COLUMN more int;",
                None,
            ),
        )
        .await;
    let staged = format!("{second}@staging");
    assert!(
        !app.service().check_drift("staging").await.unwrap(),
        "first: the reference"
    );
    app.approve("ops1", &staged, "data_ops").await;
    app.approve("ops2", &staged, "data_ops").await;
    assert_eq!(
        app.deployment(&staged).await["state"],
        "queued",
        "staging applies on approval"
    );
    app.targets["staging"]
        .client()
        .await
        .batch_execute("CREATE TABLE shadow (id int)")
        .await
        .unwrap();
    assert!(app.service().check_drift("staging").await.unwrap());
    assert!(
        !app.service().check_drift("staging").await.unwrap(),
        "the same drift is recorded once"
    );
    let d = app.deployment(&staged).await;
    assert_eq!(d["state"], "awaiting_approval", "{d}");
    assert!(d["approvals"].as_array().unwrap().is_empty(), "{d}");
    let (_, status) = app.get("dev", "/api/v1/environments/staging").await;
    assert_eq!(status["drift"]["difference_count"], 2, "{status}");
    assert_eq!(
        changes(&status["drift"]),
        [
            ("column public.shadow.id".to_owned(), "added".to_owned()),
            ("table public.shadow".to_owned(), "added".to_owned()),
        ]
    );
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    let audit = audit.to_string();
    assert!(audit.contains("drift_found"), "{audit}");
    assert!(
        audit.contains("drifted from what Sluice applied"),
        "{audit}"
    );

    // Accepting: operators only; the live schema becomes the reference, the record goes.
    let (status, body) = app
        .delete("dev", "/api/v1/environments/staging/drift")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let run = crate::cli::sluice(&app, Some("lead"), &dir, &["drift", "staging", "--accept"]).await;
    crate::cli::ok(&run);
    let (_, status) = app.get("dev", "/api/v1/environments/staging").await;
    assert!(status["drift"].is_null(), "{status}");
    let (_, drift) = app.get("dev", "/api/v1/environments/staging/drift").await;
    assert_eq!(drift["drifted"], false, "{drift}");
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    assert!(audit.to_string().contains("drift_accepted"), "{audit}");

    // The worker looks before it applies: development's drift is recorded, not folded into
    // the reference the round leaves.
    let third = app
        .submit(
            "dev",
            migration("third", "low", "CREATE TABLE later (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{third}@development")).await["state"],
        "applied"
    );
    let (_, status) = app.get("dev", "/api/v1/environments/development").await;
    assert_eq!(status["drift"]["difference_count"], 3, "{status}");
    let (_, drift) = app
        .get("dev", "/api/v1/environments/development/drift")
        .await;
    // The reference moved on by what Sluice applied (the table later) and nothing else:
    // `drift` and status agree on the three hand changes (issue 19; it said "clean" before).
    assert_eq!(drift["drifted"], true, "{drift}");
    assert_eq!(drift["difference_count"], 3, "{drift}");
    assert!(
        !drift.to_string().contains("public.later"),
        "what Sluice applied is not drift: {drift}"
    );

    // Unknown environment; a runner at work.
    let (status, _) = app.get("dev", "/api/v1/environments/nowhere/drift").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let runner = app.targets["staging"].client().await;
    runner
        .batch_execute("SELECT pg_advisory_lock(7426010002)")
        .await
        .unwrap();
    let (status, body) = app.get("dev", "/api/v1/environments/staging/drift").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        !app.service().check_drift("staging").await.unwrap(),
        "the scheduler skips a target a runner holds"
    );
    app.stop().await;
}

/// The same on MariaDB and SQLite targets: their catalogs feed the snapshot.
#[tokio::test]
async fn drift_is_found_on_mariadb_and_sqlite_targets() {
    for backend in [Backend::MySqlTargets, Backend::Sqlite] {
        let app = manual(backend).await;
        app.submit(
            "dev",
            migration(
                "t",
                "low",
                "CREATE TABLE t (id INT PRIMARY KEY, name TEXT);",
                None,
            ),
        )
        .await;
        app.run_worker("development").await;
        let (_, drift) = app
            .get("dev", "/api/v1/environments/development/drift")
            .await;
        assert_eq!(drift["drifted"], false, "{drift}");
        match backend {
            Backend::MySqlTargets => {
                use sqlx::Executor;
                let mut conn = app.mysql_targets["development"].connect().await;
                conn.execute("ALTER TABLE t ADD COLUMN extra INT NOT NULL DEFAULT 0")
                    .await
                    .unwrap();
            }
            _ => {
                app.sqlite_execute("development", "ALTER TABLE t ADD COLUMN extra INTEGER")
                    .await;
            }
        }
        let (_, drift) = app
            .get("dev", "/api/v1/environments/development/drift")
            .await;
        assert_eq!(drift["drifted"], true, "{drift}");
        let objects: Vec<String> = changes(&drift).into_iter().map(|c| c.0).collect();
        let expected = if backend == Backend::MySqlTargets {
            vec!["column t.extra".to_owned()]
        } else {
            vec!["table t".to_owned()]
        };
        assert_eq!(objects, expected, "{drift}");
        app.stop().await;
    }
}

/// The scheduler checks every `scheduler.drift_check_seconds` on its own.
#[tokio::test]
async fn the_scheduler_finds_drift_on_its_own() {
    let app = spawn_app_with(AppOptions {
        edit_config: Some(|config| config.settings.scheduler.drift_check_seconds = 1),
        ..AppOptions::default()
    })
    .await;
    // The first check takes the reference; then a change behind Sluice's back.
    for _ in 0..100 {
        let (_, drift) = app
            .get("dev", "/api/v1/environments/production/drift")
            .await;
        if drift["reference_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.targets["production"]
        .client()
        .await
        .batch_execute("CREATE TABLE hand_made (id int)")
        .await
        .unwrap();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = app.get("dev", "/api/v1/environments/production").await.1;
        if !status["drift"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status["drift"]["difference_count"], 2, "{status}");
    app.stop().await;
}

/// Issue 19: once drift is found, a worker round that applies something afterwards must not
/// fold the hand change into the reference: `drift` and status keep agreeing (drifted, the
/// hand change listed), and what Sluice applied is not reported as drift.
#[tokio::test]
async fn an_apply_after_drift_keeps_the_drift_open_and_lists_only_the_hand_change() {
    let app = manual(Backend::Postgres).await;
    let first = app
        .submit(
            "dev",
            migration("base", "low", "CREATE TABLE base (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{first}@development")).await["state"],
        "applied"
    );
    let dev_db = app.targets["development"].client().await;
    dev_db
        .batch_execute("ALTER TABLE base ADD COLUMN by_hand text")
        .await
        .unwrap();
    // The next migration: the worker notes the drift first, then applies it.
    let second = app
        .submit(
            "dev",
            migration("later", "low", "CREATE TABLE later (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{second}@development")).await["state"],
        "applied"
    );
    let (status, drift) = app
        .get("dev", "/api/v1/environments/development/drift")
        .await;
    assert_eq!(status, StatusCode::OK, "{drift}");
    assert_eq!(drift["drifted"], true, "{drift}");
    assert_eq!(
        changes(&drift),
        [("column public.base.by_hand".to_owned(), "added".to_owned())],
        "{drift}"
    );
    let (_, status) = app.get("dev", "/api/v1/environments/development").await;
    assert!(
        status["drift"].is_object(),
        "status shows the drift: {status}"
    );
    // A third round with nothing to apply records no new drift and keeps the same one.
    app.run_worker("development").await;
    let (_, again) = app
        .get("dev", "/api/v1/environments/development/drift")
        .await;
    assert_eq!(changes(&again), changes(&drift));
    app.stop().await;
}
