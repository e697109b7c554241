//! The core promise under attack: only what distinct people approved runs, exactly once. Each
//! test here reproduces a way it was broken (issue 6) and fails without its fix.

use crate::harness::{AppOptions, migration, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn no_workers() -> AppOptions {
    AppOptions {
        background_workers: false,
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn whoever_amends_a_migration_is_an_author_and_cannot_approve_it() {
    let app = spawn_app_with(no_workers()).await;
    let id = app
        .submit(
            "dev",
            migration("amended", "low", "CREATE TABLE am (id int);", None),
        )
        .await;
    // An operator rewrites dev's script, then tries to approve it in production as lead.
    let (status, body) = app
        .request(
            Method::PUT,
            Some("lead"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE am (id bigint);", "reason": "wider"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let production = format!("{id}@production");
    let checksum = app.deployment(&production).await["checksum"].clone();
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{production}/approvals"),
            json!({"role": "data_ops_lead", "checksum": checksum}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("authors: dev, lead"),
        "{body}"
    );
    // Nor may they force it through.
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{production}/override"),
            json!({"reason": "outage"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.deployment(&production).await["state"],
        "awaiting_approval"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_author_cannot_force_their_own_migration_and_the_override_is_an_approval() {
    let app = spawn_app_with(no_workers()).await;
    // devlead holds developer and data_ops_lead: submits, then tries the emergency override.
    let id = app
        .submit(
            "devlead",
            migration("self forced", "high", "CREATE TABLE sf (id int);", None),
        )
        .await;
    let production = format!("{id}@production");
    let path = format!("/api/v1/deployments/{production}/override");
    let (status, body) = app
        .post("devlead", &path, json!({"reason": "outage"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must come from someone else"),
        "{body}"
    );
    assert_eq!(
        app.deployment(&production).await["state"],
        "awaiting_approval"
    );
    // Someone else holding the role may: the override is recorded as their approval.
    let (status, body) = app.post("lead", &path, json!({"reason": "outage"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
    let approvers: Vec<(&str, &str)> = body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["approver"].as_str().unwrap(), a["role"].as_str().unwrap()))
        .collect();
    assert_eq!(approvers, [("lead", "data_ops_lead")], "{body}");
    app.stop().await;
}

async fn approve_with(
    app: &crate::harness::TestApp,
    user: &str,
    deployment: &str,
    role: &str,
    checksum: Value,
) -> (StatusCode, Value) {
    app.post(
        user,
        &format!("/api/v1/deployments/{deployment}/approvals"),
        json!({"role": role, "comment": "reviewed", "checksum": checksum}),
    )
    .await
}

#[tokio::test]
async fn an_approval_names_the_checksum_it_reviewed() {
    let app = spawn_app_with(no_workers()).await;
    let id = app
        .submit(
            "dev",
            migration("reviewed", "low", "DELETE FROM t WHERE id = 1;", None),
        )
        .await;
    let staging = format!("{id}@staging");
    let reviewed = app.deployment(&staging).await["checksum"].clone();
    // The author swaps the script after ops1 read it.
    let (status, body) = app
        .request(
            Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "DELETE FROM t WHERE true;"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let current = body["checksum"].clone();
    let (status, body) = approve_with(&app, "ops1", &staging, "data_ops", reviewed.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(reviewed.as_str().unwrap()) && message.contains(current.as_str().unwrap()),
        "{body}"
    );
    // Without a checksum outside development: refused, naming the field.
    let (status, body) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{staging}/approvals"),
            json!({"role": "data_ops"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("checksum:"),
        "{body}"
    );
    assert_eq!(app.deployment(&staging).await["approvals"], json!([]));
    // Naming the current checksum counts.
    let (status, body) = approve_with(&app, "ops1", &staging, "data_ops", current).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["approvals"][0]["approver"], "ops1");

    // Over gRPC the same.
    let mut client = app.grpc().await;
    let refused = client
        .approve(app.grpc_request(
            "ops2",
            sluice::api::grpc::pb::ApproveRequest {
                deployment_id: staging.clone(),
                role: "data_ops".into(),
                comment: String::new(),
                checksum: reviewed.as_str().unwrap().into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn amending_back_to_an_approved_version_voids_the_approvals_and_can_be_approved_again() {
    let app = spawn_app_with(no_workers()).await;
    let v1 = "CREATE TABLE back (id int);";
    let id = app
        .submit("dev", migration("back and forth", "low", v1, None))
        .await;
    let staging = format!("{id}@staging");
    app.approve("ops1", &staging, "data_ops").await;
    for up in ["CREATE TABLE back (id bigint);", v1] {
        let (status, body) = app
            .request(
                Method::PUT,
                Some("dev"),
                &format!("/api/v1/migrations/{id}"),
                Some(json!({"up_sql": up})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let d = app.deployment(&staging).await;
    assert_eq!(d["state"], "awaiting_approval");
    assert_eq!(d["approvals"], json!([]), "{d}");
    assert_eq!(d["missing_roles"], json!(["data_ops"]), "{d}");
    assert_eq!(d["additional_approvals_needed"], 1, "{d}");
    // Not stuck: two approvals of the version as it is now move it on.
    app.approve("ops1", &staging, "data_ops").await;
    let approved = app.approve("ops2", &staging, "data_ops").await;
    assert_eq!(approved["state"], "queued", "{approved}");
    app.stop().await;
}

/// Reject and migrate at once on the PostgreSQL store: one of them wins, the other is told so,
/// and the deployment's state and audit tell one story (before, migrate could requeue a
/// deployment that had just been rejected).
#[tokio::test]
async fn reject_racing_migrate_has_one_coherent_outcome() {
    let app = spawn_app_with(no_workers()).await;
    for round in 0..8 {
        let id = app
            .submit(
                "dev",
                migration(
                    &format!("race {round}"),
                    "low",
                    &format!("CREATE TABLE race_{round} (id int);"),
                    None,
                ),
            )
            .await;
        let production = format!("{id}@production");
        app.approve("lead", &production, "data_ops_lead").await;
        let approved = app.approve("dba", &production, "dba").await;
        assert_eq!(approved["state"], "approved", "{approved}");
        let reject_path = format!("/api/v1/deployments/{production}/reject");
        let ((rejected, reject_body), (migrated, migrate_body)) = tokio::join!(
            app.post("dba", &reject_path, json!({"comment": "not now"})),
            app.post("lead", "/api/v1/environments/production/migrate", json!({})),
        );
        let state = app.deployment(&production).await["state"].clone();
        let released = migrated == StatusCode::ACCEPTED
            && migrate_body["released"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == &json!(production));
        match (rejected, released) {
            (StatusCode::OK, false) => assert_eq!(state, "rejected"),
            (StatusCode::CONFLICT, true) => assert_eq!(state, "queued"),
            other => panic!(
                "round {round}: reject {rejected} {reject_body}, migrate {migrated} {migrate_body}, state {state}: {other:?}"
            ),
        }
        if migrated != StatusCode::ACCEPTED {
            assert_eq!(migrated, StatusCode::CONFLICT, "{migrate_body}");
        }
        let (_, audit) = app
            .get("admin", &format!("/api/v1/audit?migration_id={id}"))
            .await;
        let actions: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["environment"] == "production")
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        let last = *actions.last().unwrap();
        assert_eq!(
            last,
            if state == "rejected" {
                "rejected"
            } else {
                "queued"
            },
            "{actions:?}"
        );
        assert!(
            !(actions.contains(&"rejected") && actions.contains(&"queued")),
            "{actions:?}"
        );
        // Clear the queue for the next round.
        if state == "queued" {
            let (status, body) = app
                .post(
                    "lead",
                    &format!("/api/v1/deployments/{production}/cancel"),
                    json!({"reason": "next round"}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    app.stop().await;
}

/// One migration's session settings must not reach the next one of the same worker round: a
/// `SET search_path = pg_temp, public` made the next migration's table a temporary one (gone
/// when the session ended, though recorded as applied) and `SET statement_timeout = 0` lifted
/// the environment's timeout for everything after it.
#[tokio::test]
async fn session_settings_do_not_leak_into_the_next_migration() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        edit_environments: Some(|text| text.replacen("timeout: 300 ", "timeout: 1 ", 1)),
        ..AppOptions::default()
    })
    .await;
    let setter = app
        .submit(
            "dev",
            migration(
                "sets things",
                "low",
                "SET search_path = pg_temp, public;\nSET statement_timeout = 0;\nCREATE TABLE leak_a (id int);",
                None,
            ),
        )
        .await;
    let next = app
        .submit(
            "dev",
            migration("next", "low", "CREATE TABLE leak_b (id int);", None),
        )
        .await;
    let slow = app
        .submit("dev", migration("slow", "low", "SELECT pg_sleep(3);", None))
        .await;
    app.run_worker("development").await;
    for id in [&setter, &next] {
        let d = app.deployment(&format!("{id}@development")).await;
        assert_eq!(d["state"], "applied", "{d}");
    }
    assert!(
        app.table_exists("development", "leak_b").await,
        "the next migration's table must be a real one"
    );
    let d = app.deployment(&format!("{slow}@development")).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("canceling statement due to statement timeout"),
        "{d}"
    );
    app.stop().await;
}

#[tokio::test]
async fn mysql_session_settings_do_not_leak_into_the_next_migration() {
    let app = spawn_app_with(AppOptions {
        backend: crate::harness::Backend::MySqlTargets,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let setter = app
        .submit(
            "dev",
            migration(
                "ansi quotes",
                "low",
                "SET SESSION sql_mode = 'ANSI_QUOTES';\nCREATE TABLE quoted (s varchar(10));",
                None,
            ),
        )
        .await;
    let next = app
        .submit(
            "dev",
            migration(
                "double quoted string",
                "low",
                "INSERT INTO quoted VALUES (\"x\");",
                None,
            ),
        )
        .await;
    app.run_worker("development").await;
    for id in [&setter, &next] {
        let d = app.deployment(&format!("{id}@development")).await;
        assert_eq!(d["state"], "applied", "{d}");
    }
    app.stop().await;
}

/// A password in the URL's query string reached every user through environment status.
#[tokio::test]
async fn credentials_in_a_target_url_are_never_shown() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        edit_config: Some(|config| {
            let env = &mut config.environments[0];
            env.url = sluice::config::Secret::new(format!(
                "{}?password=hunter2&application_name=x",
                env.url.expose()
            ));
        }),
        ..AppOptions::default()
    })
    .await;
    // The target still works with the URL as given.
    let id = app
        .submit(
            "dev",
            migration("t", "low", "CREATE TABLE creds (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{id}@development")).await["state"],
        "applied"
    );
    let (status, body) = app.get("dev", "/api/v1/environments/development").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.to_string();
    assert!(!text.contains("hunter"), "{text}");
    assert!(
        body["database"]
            .as_str()
            .unwrap()
            .contains("password=***&application_name=x"),
        "{text}"
    );
    let (_, all) = app.get("dev", "/api/v1/environments").await;
    assert!(!all.to_string().contains("hunter"));
    app.stop().await;
}

/// Hidden transaction control and a script built to overflow the parser's stack: both get a
/// 422 naming the line, and the daemon keeps answering.
#[tokio::test]
async fn hostile_scripts_are_refused_and_the_daemon_survives() {
    let app = spawn_app_with(no_workers()).await;
    for (up, line) in [
        (
            "INSERT INTO a VALUES (1);\nCOMMIT AND CHAIN;\nINSERT INTO b VALUES (2);".to_owned(),
            2,
        ),
        (
            "SELECT * FROM t AS begin;\nROLLBACK;\nDELETE FROM x;".to_owned(),
            2,
        ),
        (
            format!(
                "SELECT 1;\nSELECT {}1{};",
                "(".repeat(10_000),
                ")".repeat(10_000)
            ),
            2,
        ),
    ] {
        let (status, body) = app
            .post(
                "dev",
                "/api/v1/migrations",
                migration("hostile", "low", &up, None),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("up_sql: line {line}:")),
            "{message}"
        );
    }
    let (status, _) = app.get("dev", "/api/v1/migrations").await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = app.get("dev", "/api/v1/migrations").await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    app.stop().await;
}

/// Evading the risk analysis lowered the approval tier (production LOW needs two approvers,
/// HIGH four): each of these is now rated HIGH, and production asks for the cto.
#[tokio::test]
async fn evasions_of_the_risk_analysis_raise_the_approval_tier() {
    let app = spawn_app_with(no_workers()).await;
    for up in [
        "DELETE FROM users WHERE true;",
        "DELETE FROM users /* WHERE */;",
        "UPDATE t SET note = 'nowhere';",
        "WITH d AS (DELETE FROM users RETURNING id) SELECT count(*) FROM d;",
        "DO $$ BEGIN EXECUTE 'TRUNCATE users'; END $$;",
    ] {
        let id = app
            .submit("dev", migration("evasive", "low", up, None))
            .await;
        let (_, m) = app.get("dev", &format!("/api/v1/migrations/{id}")).await;
        assert_eq!(m["effective_risk"], "high", "{up}: {m}");
        let production = &m["deployments"][2];
        assert_eq!(production["environment"], "production");
        assert!(
            production["required_roles"]
                .as_array()
                .unwrap()
                .contains(&json!("cto")),
            "{up}: {production}"
        );
    }
    app.stop().await;
}

/// An emergency inside a freeze window waited forever behind an earlier, fully approved
/// deployment that the freeze held. It now goes ahead of deployments that are merely waiting
/// (and that it does not depend on), and status and audit say it went out of order.
#[tokio::test]
async fn an_emergency_goes_ahead_of_deployments_the_freeze_holds() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        manual_clock: true,
        edit_environments: Some(|text| {
            crate::harness::with_freeze_window(text, &[crate::harness::PRODUCTION_SETTINGS_END])
        }),
        ..AppOptions::default()
    })
    .await;
    let first = app
        .submit(
            "dev",
            migration("first", "low", "CREATE TABLE first_t (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    app.approve("ops1", &format!("{first}@staging"), "data_ops")
        .await;
    app.approve("ops2", &format!("{first}@staging"), "data_ops")
        .await;
    app.run_worker("staging").await;
    app.approve("lead", &format!("{first}@production"), "data_ops_lead")
        .await;
    let approved = app
        .approve("dba", &format!("{first}@production"), "dba")
        .await;
    assert_eq!(approved["state"], "approved", "{approved}");

    let hotfix = app
        .submit(
            "dev",
            migration("hotfix", "low", "CREATE TABLE hotfix_t (id int);", None),
        )
        .await;
    let (code, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{hotfix}@production/override"),
            json!({"reason": "outage"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = app
        .post("lead", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let (_, status) = app.get("lead", "/api/v1/environments/production").await;
    let queue = status["queue"].as_array().unwrap();
    let hotfix_view = queue
        .iter()
        .find(|d| d["migration_id"] == json!(hotfix))
        .unwrap();
    assert_eq!(hotfix_view["out_of_order"], true, "{status}");
    assert!(hotfix_view["blocked_by"].is_null(), "{status}");

    app.run_worker("production").await;
    let d = app.deployment(&format!("{hotfix}@production")).await;
    assert_eq!(d["state"], "applied", "{d}");
    assert_eq!(d["out_of_order"], true, "{d}");
    assert_eq!(
        app.deployment(&format!("{first}@production")).await["state"],
        "approved"
    );
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={hotfix}"))
        .await;
    let applied = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "applied" && a["environment"] == "production")
        .unwrap_or_else(|| panic!("{audit}"));
    let detail = if applied["detail"].is_string() {
        serde_json::from_str::<Value>(applied["detail"].as_str().unwrap()).unwrap()
    } else {
        applied["detail"].clone()
    };
    assert_eq!(detail["out_of_order"], true, "{detail}");
    assert_eq!(detail["ahead_of"], json!([first]), "{detail}");
    app.stop().await;
}

/// The last approval and expiry at once, past the deadline, on the PostgreSQL store: the
/// deployment expires and the approval is refused, never an approved deployment recorded as
/// expired or the other way round.
#[tokio::test]
async fn a_late_approval_racing_expiry_has_one_outcome() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        manual_clock: true,
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("late", "high", "CREATE TABLE late_t (id int);", None),
        )
        .await;
    let production = format!("{id}@production");
    for (user, role) in [
        ("lead", "data_ops_lead"),
        ("dba", "dba"),
        ("tech", "tech_lead"),
    ] {
        app.approve(user, &production, role).await;
    }
    app.clock
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::hours(25));
    let checksum = app.deployment(&production).await["checksum"].clone();
    let approvals = format!("/api/v1/deployments/{production}/approvals");
    let ((status, body), expired) = tokio::join!(
        app.post(
            "cto",
            &approvals,
            json!({"role": "cto", "checksum": checksum})
        ),
        app.service().expire_overdue(),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(expired.unwrap(), 1);
    let d = app.deployment(&production).await;
    assert_eq!(d["state"], "expired", "{d}");
    assert_eq!(d["approvals"].as_array().unwrap().len(), 3, "{d}");
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={id}"))
        .await;
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["environment"] == "production" && a["action"] == "approved"),
        "{audit}"
    );
    app.stop().await;
}

/// An amendment racing the worker's claim: whatever wins, what the target ran is what the store
/// says ran (before, the target could get v1 while the store recorded v2 as applied).
#[tokio::test]
async fn an_amendment_racing_a_claim_never_records_a_script_that_did_not_run() {
    let app = spawn_app_with(no_workers()).await;
    let target = app.targets["development"].client().await;
    for round in 0..6 {
        let v1 = format!("CREATE TABLE race_{round} (v1 int);");
        let v2 = format!("CREATE TABLE race_{round} (v2 int);");
        let id = app
            .submit("dev", migration(&format!("race {round}"), "low", &v1, None))
            .await;
        let path = format!("/api/v1/migrations/{id}");
        let (outcome, (status, body)) = tokio::join!(
            app.run_worker("development"),
            app.request(Method::PUT, Some("dev"), &path, Some(json!({"up_sql": v2})),),
        );
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{outcome:?} {status} {body}"
        );
        // Let the queue settle.
        app.run_worker("development").await;
        let deployment = format!("{id}@development");
        let d = app.deployment(&deployment).await;
        assert_eq!(d["state"], "applied", "round {round}: {d}");
        let (_, m) = app.get("dev", &format!("/api/v1/migrations/{id}")).await;
        let stored: String = m["checksum"].as_str().unwrap().into();
        let recorded: String = target
            .query_one(
                "SELECT checksum FROM sluice_schema_history WHERE migration_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded, stored, "round {round}");
        let column: String = target
            .query_one(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1",
                &[&format!("race_{round}")],
            )
            .await
            .unwrap()
            .get(0);
        let ran = if column == "v1" { &v1 } else { &v2 };
        assert_eq!(m["up_sql"].as_str().unwrap(), ran.as_str(), "round {round}");
    }
    app.stop().await;
}
