//! Waiting for deployments (`sluice migrate ENV --wait`, REST `migrate?wait=true`) ends as
//! soon as nothing waited for can move on without someone acting, and says who must act; REST
//! waiters are bounded. Workers are driven by the tests (`run_worker`), so every step happens
//! when the test says.

use crate::cli::sluice;
use crate::harness::{AppOptions, TestApp, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use std::path::PathBuf;

/// Workers driven by the test; staging waits for `migrate` (auto_apply off), so that the
/// CLI's own `migrate` releases what it then waits for.
async fn app_without_workers() -> TestApp {
    spawn_app_with(AppOptions {
        background_workers: false,
        edit_config: Some(|config| {
            for env in &mut config.environments {
                if env.name.as_str() == "staging" {
                    env.auto_apply = false;
                }
            }
        }),
        ..AppOptions::default()
    })
    .await
}

fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-waits-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Submits, applies in development, and approves in staging (two data_ops).
async fn ready_for_staging(app: &TestApp, description: &str, up: &str) -> String {
    let id = app
        .submit("dev", migration(description, "low", up, None))
        .await;
    app.run_worker("development").await;
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    let staging = format!("{id}@staging");
    app.approve("ops1", &staging, "data_ops").await;
    app.approve("ops2", &staging, "data_ops").await;
    app.wait_for_state(&staging, &["approved"]).await;
    id
}

#[tokio::test]
async fn a_wait_ends_when_a_failure_halts_the_queue_and_never_shows_a_later_one_running() {
    let app = app_without_workers().await;
    let dir = scratch("halted");
    let v1 = ready_for_staging(&app, "first", "CREATE TABLE w1 (id int);").await;
    // Runs in development, fails in staging (its database's name says which it is).
    let v2 = ready_for_staging(
        &app,
        "second",
        "DO $$ BEGIN IF current_database() LIKE 'sluice_test_stag%' THEN RAISE EXCEPTION 'second cannot run in staging'; END IF; END $$;",
    )
    .await;
    let v3 = ready_for_staging(&app, "third", "CREATE TABLE w3 (id int);").await;
    let (run, ()) = tokio::join!(
        sluice(&app, Some("ops1"), &dir, &["migrate", "staging", "--wait"]),
        async {
            app.wait_for_state(&format!("{v3}@staging"), &["queued"])
                .await;
            // One round claims all three, applies the first, fails the second and puts the
            // third back in the queue.
            app.run_worker("staging").await;
        }
    );
    app.wait_for_state(&format!("{v1}@staging"), &["applied"])
        .await;
    app.wait_for_state(&format!("{v2}@staging"), &["failed"])
        .await;
    println!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    for expected in [
        format!("{v2}@staging"),
        "second cannot run in staging".to_owned(),
        format!("sluice retry staging {v2}"),
        format!("sluice cancel staging {v2}"),
    ] {
        assert!(
            run.stderr.contains(&expected),
            "{expected}: stdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    }
    assert!(
        !run.stdout.contains(&format!("{v3}@staging: running")),
        "the third never ran: {}",
        run.stdout
    );
    let (_, third) = app
        .get("dev", &format!("/api/v1/deployments/{v3}@staging"))
        .await;
    assert_eq!(third["state"], "queued", "{third}");
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn a_wait_ends_when_drift_voids_the_approvals_it_waited_on() {
    let app = app_without_workers().await;
    let dir = scratch("voided");
    // A first apply in staging leaves the reference schema drift is measured against.
    let v0 = ready_for_staging(&app, "reference", "CREATE TABLE w0 (id int);").await;
    let (status, body) = app
        .post("ops1", "/api/v1/environments/staging/migrate", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.run_worker("staging").await;
    app.wait_for_state(&format!("{v0}@staging"), &["applied"])
        .await;
    let v1 = ready_for_staging(&app, "voided", "CREATE TABLE w1 (id int);").await;
    let (run, ()) = tokio::join!(
        sluice(&app, Some("ops1"), &dir, &["migrate", "staging", "--wait"]),
        async {
            app.wait_for_state(&format!("{v1}@staging"), &["queued"])
                .await;
            // A change by hand: the worker's next round finds the drift and voids approvals.
            app.targets["staging"]
                .client()
                .await
                .batch_execute("CREATE TABLE by_hand (id int)")
                .await
                .unwrap();
            app.run_worker("staging").await;
        }
    );
    app.wait_for_state(&format!("{v1}@staging"), &["awaiting_approval"])
        .await;
    println!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    for expected in [
        format!("{v1}@staging"),
        "approval".to_owned(),
        "data_ops".to_owned(),
    ] {
        assert!(
            run.stderr.contains(&expected),
            "{expected}: stdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn rest_waiters_over_the_cap_are_refused_before_anything_is_released() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        edit_config: Some(|config| config.settings.server.max_migrate_waiters = 2),
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("waited for", "low", "CREATE TABLE w (id int);", None),
        )
        .await;
    let deployment = format!("{id}@development");
    app.wait_for_state(&deployment, &["queued"]).await;
    let wait = "/api/v1/environments/development/migrate?wait=true&timeout_seconds=60";
    let ((first, second), ()) = tokio::join!(
        async {
            tokio::join!(
                app.post("dev", wait, json!({})),
                app.post("dev", wait, json!({}))
            )
        },
        async {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            while app.service().migrate_waiters() < 2 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the two waiters never started waiting"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let response = app
                .http
                .post(format!(
                    "{}/api/v1/environments/development/migrate?wait=true&timeout_seconds=1",
                    app.base
                ))
                .bearer_auth(app.token("dev"))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(
                response.headers().get("retry-after").is_some(),
                "{:?}",
                response.headers()
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("max_migrate_waiters"),
                "{body}"
            );
            // The waiters are woken by the apply, not by a timer.
            app.run_worker("development").await;
        }
    );
    for (status, body) in [first, second] {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["settled"], true, "{body}");
    }
    assert_eq!(app.service().migrate_waiters(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_rest_wait_ends_when_the_environment_is_locked_and_names_the_holder() {
    let app = app_without_workers().await;
    let id = app
        .submit(
            "dev",
            migration("held", "low", "CREATE TABLE held (id int);", None),
        )
        .await;
    let deployment = format!("{id}@development");
    app.wait_for_state(&deployment, &["queued"]).await;
    let wait = "/api/v1/environments/development/migrate?wait=true&timeout_seconds=60";
    let ((status, body), ()) = tokio::join!(app.post("dev", wait, json!({})), async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while app.service().migrate_waiters() < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the wait never began"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (status, body) = app
            .post(
                "lead",
                "/api/v1/environments/development/lock",
                json!({"reason": "incident 42"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    });
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settled"], false, "{body}");
    let stopped = body["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains(&deployment)
            && stopped.contains("locked by lead")
            && stopped.contains("incident 42")
            && stopped.contains("sluice unlock development"),
        "{body}"
    );
    assert_eq!(app.deployment(&deployment).await["state"], "queued");
    app.stop().await;
}
