//! The seed's full story over HTTP: a HIGH risk change applied in development, two staging
//! approvals, four production approvals, a production `migrate`, the table in every target,
//! then a rollback. Once with PostgreSQL everywhere, once with SQLite everywhere.

use crate::harness::{AppOptions, Backend, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

async fn full_story(backend: Backend) {
    let app = spawn_app_with(AppOptions {
        backend,
        ..AppOptions::default()
    })
    .await;
    let (status, body) = app
        .request(reqwest::Method::GET, None, "/healthz", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let id = app
        .submit(
            "dev",
            migration(
                "Add user preferences table",
                "high",
                "CREATE TABLE user_preferences (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, preferences TEXT DEFAULT '{}');\nCREATE INDEX idx_user_preferences_user_id ON user_preferences (user_id);",
                Some("DROP TABLE user_preferences;"),
            ),
        )
        .await;
    assert!(
        id.starts_with("001_") && id.ends_with("_add_user_preferences_table"),
        "{id}"
    );

    // Development approves and applies by itself.
    let dev = app
        .wait_for_state(&format!("{id}@development"), &["applied", "failed"])
        .await;
    assert_eq!(dev["state"], "applied", "{dev}");
    assert!(app.table_exists("development", "user_preferences").await);
    assert!(!app.table_exists("staging", "user_preferences").await);

    // Staging: two distinct data_ops approvers.
    let staging = format!("{id}@staging");
    let after_first = app.approve("ops1", &staging, "data_ops").await;
    assert_eq!(after_first["state"], "awaiting_approval");
    assert_eq!(after_first["additional_approvals_needed"], 1);
    app.approve("ops2", &staging, "data_ops").await;
    let staged = app.wait_for_state(&staging, &["applied", "failed"]).await;
    assert_eq!(staged["state"], "applied", "{staged}");
    assert!(app.table_exists("staging", "user_preferences").await);

    // Production HIGH: data_ops_lead + dba + tech_lead + cto, in any order.
    let production = format!("{id}@production");
    let (_, status) = app.get("lead", "/api/v1/environments/production").await;
    let pending = &status["pending_approvals"][0];
    assert_eq!(pending["id"], production.as_str());
    assert_eq!(
        pending["missing_roles"],
        json!(["data_ops_lead", "dba", "tech_lead", "cto"])
    );
    app.approve("cto", &production, "cto").await;
    app.approve("dba", &production, "dba").await;
    app.approve("tech", &production, "tech_lead").await;
    let approved = app.approve("lead", &production, "data_ops_lead").await;
    // auto_apply is off in production: approved, not applied, until `migrate`.
    assert_eq!(approved["state"], "approved", "{approved}");
    assert!(!app.table_exists("production", "user_preferences").await);

    // A backup a crash left unfinished is recognisable by its name, and removed.
    let backups = app.config.config_dir.join("backups").join("production");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(backups.join("production-crashed.dump.partial"), b"half").unwrap();
    let (status, migrated) = app
        .post(
            "lead",
            "/api/v1/environments/production/migrate?wait=true&timeout_seconds=60",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{migrated}");
    assert_eq!(migrated["released"], json!([production]));
    assert_eq!(migrated["settled"], true);
    assert_eq!(
        migrated["status"]["last_applied"]["id"],
        production.as_str()
    );
    assert!(app.table_exists("production", "user_preferences").await);
    // Staging and production require a backup before they change: one was taken, and the
    // deployment's log says where.
    let files: Vec<_> = std::fs::read_dir(&backups).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        !files[0]
            .as_ref()
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".partial")
    );
    let file = files[0].as_ref().unwrap().path();
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    let deployed = app.deployment(&production).await;
    assert!(
        deployed["log"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("backup taken before this run: "),
        "{deployed}"
    );
    assert!(
        !app.config
            .config_dir
            .join("backups")
            .join("development")
            .exists()
    );
    // Listed, with its size and the deployment it preceded (operators only).
    let (status, listed) = app
        .get("lead", "/api/v1/environments/production/backups")
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["file"], file.display().to_string(), "{listed}");
    assert_eq!(
        listed[0]["size_bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{listed}"
    );
    assert_eq!(listed[0]["preceded"], production.as_str(), "{listed}");
    let (status, _) = app
        .get("dev", "/api/v1/environments/production/backups")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Roll production back with the down script.
    let (status, body) = app
        .post(
            "dba",
            &format!("/api/v1/deployments/{production}/rollback"),
            json!({"reason": "story rollback"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rolled = app
        .wait_for_state(&production, &["rolled_back", "failed"])
        .await;
    assert_eq!(rolled["state"], "rolled_back", "{rolled}");
    assert!(!app.table_exists("production", "user_preferences").await);
    assert!(app.table_exists("staging", "user_preferences").await);

    // The migration shows every deployment; the audit trail every change, with who did it.
    let (_, m) = app.get("dev", &format!("/api/v1/migrations/{id}")).await;
    let states: Vec<&str> = m["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied", "applied", "rolled_back"]);
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={id}"))
        .await;
    let trail: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap().to_owned(),
                a["action"].as_str().unwrap().to_owned(),
                a["environment"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("dev", "submitted", "-"),
        ("sluice", "auto_approved", "development"),
        ("sluice", "applied", "development"),
        ("ops2", "approved", "staging"),
        ("lead", "approved", "production"),
        ("lead", "queued", "production"),
        ("dba", "rollback_requested", "production"),
        ("sluice", "rolled_back", "production"),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(
            trail.contains(&expected),
            "{expected:?} missing from {trail:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn seed_story_on_postgres() {
    full_story(Backend::Postgres).await;
}

#[tokio::test]
async fn seed_story_on_sqlite() {
    full_story(Backend::Sqlite).await;
}
