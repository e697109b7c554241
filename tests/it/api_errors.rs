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
        "unknown environment \"prodution\" (known: development, staging, production); did you mean \"production\"?"
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

/// A NUL byte in any text field gave 500 on the PostgreSQL store; no field had a length limit.
/// Each is now a 422 naming the field, and nothing is stored.
#[tokio::test]
async fn nul_bytes_and_oversized_fields_are_refused_naming_the_field() {
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        background_workers: false,
        ..Default::default()
    })
    .await;
    for (field, value) in [
        ("description", json!("add\u{0}table")),
        ("ticket", json!("PROJ-\u{0}1")),
        ("up_sql", json!("SELECT 1; -- \u{0}")),
        ("down_sql", json!("SELECT '\u{0}';")),
        ("ticket", json!("T".repeat(900_000))),
        ("depends_on", json!(vec!["001_20260101_000000_x"; 20_000])),
    ] {
        let mut body = migration("x", "low", "SELECT 1;", None);
        body[field] = value;
        let (status, answer) = app.post("dev", "/api/v1/migrations", body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{field}: {answer}"
        );
    }
    // A number where a risk belongs names the field.
    let mut body = migration("x", "low", "SELECT 1;", None);
    body["risk"] = json!(5);
    let (status, answer) = app.post("dev", "/api/v1/migrations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("risk"),
        "{answer}"
    );
    let id = app
        .submit("dev", migration("fine", "low", "SELECT 1;", None))
        .await;
    let staging = format!("{id}@staging");
    for (user, path, body, field) in [
        (
            "ops1",
            format!("/api/v1/deployments/{staging}/approvals"),
            json!({"role": "data_ops", "comment": "ok\u{0}"}),
            "comment",
        ),
        (
            "ops1",
            format!("/api/v1/deployments/{staging}/reject"),
            json!({"comment": "no\u{0}"}),
            "comment",
        ),
        (
            "dev",
            format!("/api/v1/deployments/{staging}/cancel"),
            json!({"reason": "r".repeat(10_000)}),
            "reason",
        ),
        (
            "lead",
            format!("/api/v1/deployments/{id}@production/override"),
            json!({"reason": "outage\u{0}"}),
            "reason",
        ),
        (
            "ops1",
            "/api/v1/environments/staging/lock".to_owned(),
            json!({"reason": "x".repeat(10_000)}),
            "reason",
        ),
    ] {
        let (status, answer) = app.post(user, &path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{path}: {answer}"
        );
    }
    let (status, answer) = app.get("admin", "/api/v1/audit?actor=a%00b").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    // Nothing was stored or changed.
    let d = app.deployment(&staging).await;
    assert_eq!(d["state"], "awaiting_approval");
    assert_eq!(d["approvals"], json!([]));
    let (_, list) = app.get("dev", "/api/v1/migrations").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // gRPC: INVALID_ARGUMENT.
    let mut client = app.grpc().await;
    let refused = client
        .reject(app.grpc_request(
            "ops1",
            sluice::api::grpc::pb::RejectRequest {
                deployment_id: staging.clone(),
                comment: "bad\u{0}".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    app.stop().await;
}
