//! Rollback tests (issue 9): up, down and up again on a scratch copy of the environment's
//! schema (pg_dump --schema-only into a temporary database, dropped after); a down script that
//! forgets an index is caught; environments may require a passing test before approval.

use crate::harness::{AppOptions, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_rollback_test_catches_a_down_script_that_forgets_an_index() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        edit_config: Some(|config| {
            for env in &mut config.environments {
                if env.name.as_str() == "staging" {
                    env.require_rollback_test = true;
                }
            }
        }),
        ..AppOptions::default()
    })
    .await;
    let target = app.targets["staging"].client().await;
    target
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL); \
             INSERT INTO orders SELECT g, g % 7 FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    let up = "CREATE INDEX orders_customer ON orders (customer);\nALTER TABLE orders ADD COLUMN note text;";
    let good = app
        .submit(
            "dev",
            migration(
                "index and note",
                "low",
                up,
                Some("ALTER TABLE orders DROP COLUMN note;\nDROP INDEX orders_customer;"),
            ),
        )
        .await;
    let forgetful = app
        .submit(
            "dev",
            migration(
                "forgets the index",
                "low",
                up,
                Some("ALTER TABLE orders DROP COLUMN note;"),
            ),
        )
        .await;
    let path = |id: &str| format!("/api/v1/deployments/{id}@staging/rollback-test");

    // Operators and approvers may run it; not a bystander, and not its author where the
    // environment takes approvals (the up script would run unreviewed on the server).
    let (status, body) = app.post("tech", &path(&good), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.post("dev", &path(&good), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("wrote this migration"), "{body}");
    let (status, test) = app.post("ops2", &path(&good), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{test}");
    assert_eq!(test["outcome"], "passed", "{test}");
    let steps: Vec<&str> = test["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["up", "down", "up again"], "{test}");
    assert!(test["findings"].as_array().unwrap().is_empty(), "{test}");

    // The forgotten index is a finding, named.
    let (status, test) = app.post("ops1", &path(&forgetful), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{test}");
    assert_eq!(test["outcome"], "failed", "{test}");
    assert_eq!(
        test["left_by_down"][0]["object"], "index public.orders_customer",
        "{test}"
    );
    assert_eq!(test["left_by_down"][0]["change"], "added", "{test}");
    assert!(
        test["findings"][0].as_str().unwrap().contains(
            "the down script does not bring the schema back: index public.orders_customer added"
        ),
        "{test}"
    );
    let dir = std::env::temp_dir();
    let run = crate::cli::sluice(
        &app,
        Some("ops1"),
        &dir,
        &["test-rollback", &forgetful, "staging"],
    )
    .await;
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("finding: the down script does not bring the schema back")
            && run
                .stdout
                .contains("left by down: added    index public.orders_customer"),
        "{}",
        run.stdout
    );

    // Nothing touched the environment's database, and no scratch database is left.
    let indexes: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 0);
    let history: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'sluice_schema_history'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 0, "the target itself was never opened as a runner");
    let scratch: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'sluice_rollback_test_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scratch, 0, "scratch databases are dropped");

    // Approval in staging needs a passing test of the current scripts.
    let (status, body) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{forgetful}@staging/approvals"),
            json!({"role": "data_ops", "checksum": app.deployment(&format!("{forgetful}@staging")).await["checksum"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.to_string().contains("staging requires a passing rollback test before approval and its last rollback test failed"),
        "{body}"
    );
    app.approve("ops1", &format!("{good}@staging"), "data_ops")
        .await;
    let d = app.deployment(&format!("{good}@staging")).await;
    assert_eq!(d["rollback_test"]["outcome"], "passed", "{d}");
    assert_eq!(d["rollback_test"]["stale"], false, "{d}");
    let (status, body) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{good}"),
            Some(json!({"up_sql": "CREATE INDEX orders_customer ON orders (customer);"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            "ops2",
            &format!("/api/v1/deployments/{good}@staging/approvals"),
            json!({"role": "data_ops", "checksum": app.deployment(&format!("{good}@staging")).await["checksum"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.to_string()
            .contains("an earlier version of the scripts"),
        "{body}"
    );

    // A down script that fails, and a migration with none.
    let broken = app
        .submit(
            "dev",
            migration("broken down", "low", up, Some("DROP TABLE no_such_table;")),
        )
        .await;
    let (_, test) = app.post("ops1", &path(&broken), json!({})).await;
    assert_eq!(test["outcome"], "failed", "{test}");
    assert_eq!(test["steps"][1]["ok"], false, "{test}");
    assert!(
        test["steps"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no_such_table"),
        "{test}"
    );
    let none = app
        .submit("dev", migration("no down", "low", up, None))
        .await;
    let (status, body) = app.post("ops1", &path(&none), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("has no down_sql"), "{body}");
    app.stop().await;
}
