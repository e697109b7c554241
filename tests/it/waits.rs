//! Waiting for deployments (`sluice migrate ENV --wait`, REST `migrate?wait=true`) ends as
//! soon as nothing waited for can move on without someone acting, and says who must act; REST
//! waiters are bounded. Workers are driven by the tests (`run_worker`), so every step happens
//! when the test says.

use crate::harness::{AppOptions, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

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
