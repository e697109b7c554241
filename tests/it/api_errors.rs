//! Bad input gets a clear 4xx naming what was wrong, and changes nothing.

use crate::harness::{migration, spawn_app};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn bad_requests_are_named_and_change_nothing() {
    let app = spawn_app().await;
    let url = format!("{}/api/v1/migrations", app.base);

    // Malformed JSON.
    let response = app
        .http
        .post(&url)
        .bearer_auth(app.token("dev"))
        .header("content-type", "application/json")
        .body("{\"kind\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");

    // A missing field is named.
    let (status, body) = app
        .post("dev", "/api/v1/migrations", json!({"kind": "schema_change", "description": "x", "risk": "low", "ticket": "T-1", "estimated_duration": "5m"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("up_sql"),
        "{body}"
    );

    // An unknown value is named with what is allowed.
    let mut bad_risk = migration("x", "low", "SELECT 1;", None);
    bad_risk["risk"] = json!("extreme");
    let (status, body) = app.post("dev", "/api/v1/migrations", bad_risk).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extreme"),
        "{body}"
    );

    // A typo'd key is refused rather than ignored.
    let mut typo = migration("x", "low", "SELECT 1;", None);
    typo["dependson"] = json!([]);
    let (status, body) = app.post("dev", "/api/v1/migrations", typo).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dependson"),
        "{body}"
    );

    // A script that does not lex, with its line.
    let (status, body) = app
        .post(
            "dev",
            "/api/v1/migrations",
            migration("x", "low", "SELECT 1;\nSELECT 'open;", None),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["message"],
        "up_sql: line 2: unterminated string or dollar-quoted literal"
    );

    // An unknown dependency.
    let mut dependent = migration("x", "low", "SELECT 1;", None);
    dependent["depends_on"] = json!(["007_20260101_000000_nothing"]);
    let (status, body) = app.post("dev", "/api/v1/migrations", dependent).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("depends_on[0]"),
        "{body}"
    );

    // A body over 1 MiB.
    let huge = "-- x\n".repeat(300_000);
    let (status, body) = app
        .post(
            "dev",
            "/api/v1/migrations",
            migration("x", "low", &huge, None),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // Unknown environment, unknown deployment, malformed ids.
    let (status, body) = app.get("dev", "/api/v1/environments/prodution").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"]["message"],
        "unknown environment \"prodution\" (known: development, staging, production)"
    );
    let (status, _) = app
        .get("dev", "/api/v1/deployments/001_20260101_000000_x@staging")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get("dev", "/api/v1/migrations/not-an-id").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = app.get("dev", "/api/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get("dev", "/api/v1/audit?limit=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // None of it created anything.
    let (status, list) = app.get("dev", "/api/v1/migrations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    let (_, audit) = app.get("admin", "/api/v1/audit").await;
    assert_eq!(audit, json!([]));
    app.stop().await;
}
