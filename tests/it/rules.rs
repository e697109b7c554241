//! Rules that hold whatever the caller does: identity, roles, who may approve, checksum binding,
//! deadlines, locks.

use crate::harness::{AppOptions, migration, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    let app = spawn_app().await;
    let (status, body) = app
        .request(Method::GET, None, "/api/v1/environments", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bearer token")
    );

    let response = app
        .http
        .get(format!("{}/api/v1/environments", app.base))
        .bearer_auth("slc_not_a_real_token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let id = app
        .submit(
            "dev",
            migration("create t", "low", "CREATE TABLE t (id int);", None),
        )
        .await;
    let staging = format!("{id}@staging");
    // A role the user does not hold.
    let (status, body) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{staging}/approvals"),
            json!({"role": "dba", "comment": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"]["message"],
        "ops1 does not hold the role dba (holds: data_ops)"
    );
    // A developer may not operate staging.
    let (status, body) = app
        .post(
            "dev",
            "/api/v1/environments/staging/lock",
            json!({"reason": "mine"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn approval_rules() {
    let app = spawn_app().await;
    let id = app
        .submit(
            "dev",
            migration("create t", "medium", "CREATE TABLE t (id int);", None),
        )
        .await;
    let staging = format!("{id}@staging");
    let production = format!("{id}@production");

    // The author cannot approve outside development, even holding the role: make "dev" the
    // author and have nobody else... here the author only holds developer, which staging does
    // not need; the check on the role comes first.
    let (status, _) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{staging}/approvals"),
            json!({"role": "developer", "comment": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // One person fills at most one role.
    app.approve("ops1", &staging, "data_ops").await;
    let (status, body) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{staging}/approvals"),
            json!({"role": "data_ops", "comment": "again"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A role the policy does not need (production MEDIUM needs no cto).
    let (status, body) = app
        .post(
            "cto",
            &format!("/api/v1/deployments/{production}/approvals"),
            json!({"role": "cto", "comment": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs: data_ops_lead, dba, tech_lead"),
        "{body}"
    );

    // Rejection ends the deployment; further approvals conflict.
    let (status, body) = app
        .post(
            "tech",
            &format!("/api/v1/deployments/{production}/reject"),
            json!({"comment": "needs a backfill plan"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "rejected");
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{production}/approvals"),
            json!({"role": "data_ops_lead", "comment": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn author_cannot_approve_own_migration_outside_development() {
    let app = spawn_app().await;
    // ops1 writes a migration and tries to approve it in staging with a role they hold.
    let id = app
        .submit(
            "ops1",
            migration("ops change", "low", "CREATE TABLE t2 (id int);", None),
        )
        .await;
    let (status, body) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{id}@staging/approvals"),
            json!({"role": "data_ops", "comment": "mine"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("author")
    );
    app.stop().await;
}

#[tokio::test]
async fn deadline_expires_deployments_awaiting_approval() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        manual_clock: true,
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("risky", "high", "CREATE TABLE t3 (id int);", None),
        )
        .await;
    let production = format!("{id}@production");
    let d = app.deployment(&production).await;
    assert!(d["deadline_at"].is_string(), "{d}");
    let clock = app.clock.clone().unwrap();
    clock.advance(chrono::Duration::hours(23));
    assert_eq!(app.service().expire_overdue().await.unwrap(), 0);
    clock.advance(chrono::Duration::hours(2));
    // Production HIGH (24h) expires; staging (72h) does not yet.
    assert_eq!(app.service().expire_overdue().await.unwrap(), 1);
    assert_eq!(app.deployment(&production).await["state"], "expired");
    assert_eq!(
        app.deployment(&format!("{id}@staging")).await["state"],
        "awaiting_approval"
    );
    let (status, _) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{production}/approvals"),
            json!({"role": "data_ops_lead", "comment": "late"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.stop().await;
}

#[tokio::test]
async fn locked_environment_starts_nothing_and_status_says_who_and_why() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let (status, body) = app
        .post(
            "dev",
            "/api/v1/environments/development/lock",
            json!({"reason": "schema freeze for release 4.2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lock"]["locked_by"], "dev");
    assert_eq!(body["lock"]["reason"], "schema freeze for release 4.2");
    let id = app
        .submit(
            "dev",
            migration("locked out", "low", "CREATE TABLE t4 (id int);", None),
        )
        .await;
    assert_eq!(
        app.run_worker("development").await,
        sluice::engine::Outcome::Locked
    );
    let (status, _) = app
        .post(
            "dev",
            "/api/v1/environments/development/lock",
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!app.table_exists("development", "t4").await);
    let (status, body) = app
        .delete("dev", "/api/v1/environments/development/lock")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["lock"].is_null());
    app.run_worker("development").await;
    assert_eq!(
        app.deployment(&format!("{id}@development")).await["state"],
        "applied"
    );
    assert!(app.table_exists("development", "t4").await);
    app.stop().await;
}

#[tokio::test]
async fn changing_a_script_voids_every_approval() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("amend me", "low", "CREATE TABLE t6 (id int);", None),
        )
        .await;
    let staging = format!("{id}@staging");
    app.approve("ops1", &staging, "data_ops").await;
    // Development has not run yet (no background worker): the migration may still change.
    let (status, body) = app
        .request(
            Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE t6 (id bigint);", "reason": "wider id"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let d = app.deployment(&staging).await;
    assert_eq!(d["state"], "awaiting_approval");
    // The approval given before the amendment is void and gone (the audit keeps it).
    assert_eq!(d["approvals"], json!([]), "{d}");
    // The old approval no longer counts: one more approval is not enough.
    let after = app.approve("ops2", &staging, "data_ops").await;
    assert_eq!(after["state"], "awaiting_approval", "{after}");
    assert_eq!(after["additional_approvals_needed"], 1);
    // ops1 may approve again, for the new checksum.
    let approved = app.approve("ops1", &staging, "data_ops").await;
    assert_eq!(approved["state"], "queued", "{approved}");

    // Once applied somewhere, the scripts are frozen.
    app.run_worker("development").await;
    let (status, body) = app
        .request(
            Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE t6 (id text);"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn emergency_override_is_reasoned_restricted_and_audited() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("hotfix", "high", "CREATE TABLE t7 (id int);", None),
        )
        .await;
    let production = format!("{id}@production");
    let path = format!("/api/v1/deployments/{production}/override");
    let (status, _) = app.post("dba", &path, json!({"reason": "outage"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.post("lead", &path, json!({"reason": " "})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Staging's policy has no emergency override.
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{id}@staging/override"),
            json!({"reason": "outage"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = app
        .post("lead", &path, json!({"reason": "Critical security fix"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["emergency_reason"], "Critical security fix");
    // It skips the promotion order: production applies before staging.
    let (status, body) = app
        .post("lead", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.run_worker("production").await;
    assert_eq!(app.deployment(&production).await["state"], "applied");
    assert!(app.table_exists("production", "t7").await);
    let (_, audit) = app
        .get(
            "admin",
            &format!("/api/v1/audit?migration_id={id}&actor=lead"),
        )
        .await;
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "emergency_override")
        .expect("override audited");
    assert_eq!(entry["detail"]["review_owed"], true);
    assert_eq!(
        entry["detail"]["missing_roles"],
        json!(["data_ops_lead", "dba", "tech_lead", "cto"])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_lock_stops_new_deployments_but_not_rollbacks() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let bad = app
        .submit(
            "dev",
            migration(
                "bad idea",
                "low",
                "CREATE TABLE regret (id int);",
                Some("DROP TABLE regret;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    assert!(app.table_exists("development", "regret").await);
    let next = app
        .submit(
            "dev",
            migration("next", "low", "CREATE TABLE next_one (id int);", None),
        )
        .await;
    let (status, _) = app
        .post(
            "dev",
            "/api/v1/environments/development/lock",
            json!({"reason": "incident 42"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{bad}@development/rollback"),
            json!({"reason": "incident 42"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcome = app.run_worker("development").await;
    assert_eq!(
        outcome,
        sluice::engine::Outcome::Worked {
            applied: 0,
            rolled_back: 1,
            failed: None
        }
    );
    assert!(!app.table_exists("development", "regret").await);
    assert_eq!(
        app.deployment(&format!("{next}@development")).await["state"],
        "queued"
    );
    assert!(!app.table_exists("development", "next_one").await);
    app.stop().await;
}

#[tokio::test]
async fn users_are_reloaded_without_a_restart() {
    let app = spawn_app().await;
    let users_file = app.config.config_dir.join("users.yml");
    let token = sluice::auth::new_token().unwrap();
    let mut text = std::fs::read_to_string(&users_file).unwrap();
    text.push_str(&format!(
        "  - name: newbie\n    roles: [developer]\n    token_sha256: \"{}\"\n",
        sluice::auth::token_sha256(&token)
    ));
    std::fs::write(&users_file, &text).unwrap();
    assert_eq!(
        app.service().reload_users().unwrap(),
        crate::harness::USERS.len() + 1
    );
    let response = app
        .http
        .get(format!("{}/api/v1/environments", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A broken file is refused and the users in force stay.
    std::fs::write(&users_file, "users:\n  - name: x\n    roles: [cfo]\n").unwrap();
    let error = app.service().reload_users().unwrap_err().to_string();
    assert!(
        error.contains("users.yml") && error.contains("cfo"),
        "{error}"
    );
    let response = app
        .http
        .get(format!("{}/api/v1/environments", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_freeze_window_starts_nothing_but_emergency_overrides() {
    // Staging and production are frozen for the next two hours from "now" (the manual clock
    // starts at the real time; the window is written relative to it).
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        manual_clock: true,
        edit_environments: Some(|text| {
            crate::harness::with_freeze_window(
                text,
                &[
                    crate::harness::PRODUCTION_SETTINGS_END,
                    crate::harness::STAGING_SETTINGS_END,
                ],
            )
        }),
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("frozen", "low", "CREATE TABLE frozen_t (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    app.approve("ops1", &format!("{id}@staging"), "data_ops")
        .await;
    app.approve("ops2", &format!("{id}@staging"), "data_ops")
        .await;
    // Queued in staging, but the freeze holds it.
    assert_eq!(
        app.run_worker("staging").await,
        sluice::engine::Outcome::Blocked
    );
    let (_, status) = app.get("ops1", "/api/v1/environments/staging").await;
    assert!(
        status["freeze"]["window"]
            .as_str()
            .unwrap()
            .contains("release freeze"),
        "{status}"
    );
    assert!(
        status["queue"][0]["blocked_by"]
            .as_str()
            .unwrap()
            .contains("freeze window"),
        "{status}"
    );
    // Production: migrate is refused while frozen...
    app.approve("lead", &format!("{id}@production"), "data_ops_lead")
        .await;
    app.approve("dba", &format!("{id}@production"), "dba").await;
    let (code, body) = app
        .post("lead", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("release freeze"),
        "{body}"
    );
    // ...and once the window has passed, everything moves.
    app.clock
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::hours(3));
    app.run_worker("staging").await;
    assert_eq!(
        app.deployment(&format!("{id}@staging")).await["state"],
        "applied"
    );
    let (code, body) = app
        .post("lead", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    app.run_worker("production").await;
    assert_eq!(
        app.deployment(&format!("{id}@production")).await["state"],
        "applied"
    );

    // An emergency override is the exception: rewind into the window with a second change.
    let hotfix = app
        .submit(
            "dev",
            migration(
                "hotfix in a freeze",
                "low",
                "CREATE TABLE hotfix_t (id int);",
                None,
            ),
        )
        .await;
    let clock = app.clock.as_ref().unwrap();
    clock.advance(chrono::Duration::hours(-3));
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
    app.run_worker("production").await;
    assert_eq!(
        app.deployment(&format!("{hotfix}@production")).await["state"],
        "applied"
    );
    app.stop().await;
}

/// users.yml replaced by a file with a removed user but the old modification time: the removed
/// user's token stopped working only at SIGHUP. The content is what counts.
#[tokio::test]
async fn a_removed_user_loses_access_even_when_the_file_keeps_its_old_mtime() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let (status, _) = app.get("ops2", "/api/v1/environments").await;
    assert_eq!(status, StatusCode::OK);
    let path = app.config.config_dir.join("users.yml");
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with("  - name: ") {
            skipping = line == "  - name: ops2";
        }
        if !skipping {
            kept.push(line);
        }
    }
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before)
        .unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
    let mut status = StatusCode::OK;
    for _ in 0..80 {
        status = app.get("ops2", "/api/v1/environments").await.0;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.get("ops1", "/api/v1/environments").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

/// What approvers see of a migration's analysis: the rollback script linted too (dropping a
/// column the up script did not create makes it high risk), `-- sluice:ignore` with its reason
/// (the finding stays and still counts: an author's ignore never lowers the tier), rule, line,
/// column and fix over REST and gRPC.
#[tokio::test]
async fn findings_show_rule_position_fix_ignores_and_the_rollback_script() {
    let app = spawn_app().await;
    let (status, m) = app
        .post(
            "dev",
            "/api/v1/migrations",
            migration(
                "tidy",
                "low",
                "ALTER TABLE users ADD COLUMN tidy boolean;",
                Some("ALTER TABLE users DROP COLUMN tidy;\nALTER TABLE users DROP COLUMN email;"),
            ),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{m}");
    assert_eq!(m["effective_risk"], "high", "{m}");
    let lost = m["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "sluice-down-drops-data")
        .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(lost["script"], "down");
    assert_eq!(lost["line"], 2);
    assert!(lost["message"].as_str().unwrap().contains("users.email"));

    let (_, m) = app
        .post(
            "dev",
            "/api/v1/migrations",
            migration(
                "reset settings",
                "low",
                "-- sluice:ignore sluice-unguarded-delete settings holds one row, rewritten below\nDELETE FROM settings;\nINSERT INTO settings VALUES (1);",
                None,
            ),
        )
        .await;
    // The author's ignore is shown, and does not lower the tier (issue 19).
    assert_eq!(m["effective_risk"], "high", "{m}");
    let finding = &m["findings"][0];
    assert_eq!(finding["rule"], "sluice-unguarded-delete");
    assert_eq!(
        finding["ignored"],
        "settings holds one row, rewritten below"
    );
    assert_eq!(
        (finding["line"].as_i64(), finding["column"].as_i64()),
        (Some(2), Some(1))
    );
    let mut grpc = app.grpc().await;
    let got = grpc
        .get_migration(app.grpc_request(
            "dev",
            sluice::api::grpc::pb::GetMigrationRequest {
                id: m["id"].as_str().unwrap().to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.findings[0].ignored,
        "settings holds one row, rewritten below"
    );
    assert!(
        got.findings[0].fix.contains("WHERE"),
        "{:?}",
        got.findings[0]
    );
    assert_eq!(got.findings[0].column, 1);
    app.stop().await;
}

/// `migrate?wait=true` answers as soon as nothing more can happen, saying why: a failure
/// halting the queue ends the wait at once (it used to wait for the whole timeout).
#[tokio::test]
async fn migrate_wait_returns_when_a_failure_halts_the_queue() {
    let app = spawn_app_with(AppOptions {
        edit_environments: Some(|text| {
            text.replacen(
                "auto_apply: true            # approved",
                "auto_apply: false           # approved",
                1,
            )
        }),
        ..AppOptions::default()
    })
    .await;
    let bad = app
        .submit(
            "dev",
            migration("bad", "low", "ALTER TABLE missing ADD COLUMN x int;", None),
        )
        .await;
    let good = app
        .submit(
            "dev",
            migration("good", "low", "CREATE TABLE fine (id int);", None),
        )
        .await;
    let (status, body) = app
        .post(
            "dev",
            "/api/v1/environments/development/migrate?wait=true&timeout_seconds=600",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settled"], false, "{body}");
    let stopped = body["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains(&format!(
            "the queue is halted by the failed deployment {bad}@development"
        )),
        "{body}"
    );
    assert_eq!(
        app.deployment(&format!("{good}@development")).await["state"],
        "queued"
    );
    // Cancelling the failure lets the queue go on: the next wait sees it applied.
    app.post(
        "dev",
        &format!("/api/v1/deployments/{bad}@development/cancel"),
        json!({}),
    )
    .await;
    let (_, body) = app
        .post(
            "dev",
            "/api/v1/environments/development/migrate?wait=true&timeout_seconds=600",
            json!({}),
        )
        .await;
    assert_eq!(body["settled"], true, "{body}");
    assert!(body["stopped"].is_null(), "{body}");
    assert_eq!(
        app.deployment(&format!("{good}@development")).await["state"],
        "applied"
    );
    app.stop().await;
}

/// The id a migration's file carries is the id the server keeps; submitting it again with the
/// same scripts changes nothing, with other scripts amends it, with other metadata is refused;
/// two submissions of one new id at once make one migration.
#[tokio::test]
async fn a_submitted_id_is_kept_and_resubmission_is_idempotent() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let id = "007_20261129_101500_add_flags";
    let body = |up: &str, description: &str| {
        let mut m = migration(description, "low", up, None);
        m["id"] = json!(id);
        m
    };
    let (status, first) = app
        .post(
            "dev",
            "/api/v1/migrations",
            body("CREATE TABLE flags (id int);", "add flags"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["id"], id);
    let (status, again) = app
        .post(
            "dev",
            "/api/v1/migrations",
            body("CREATE TABLE flags (id int);", "add flags"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["checksum"], first["checksum"]);
    let (status, amended) = app
        .post(
            "dev",
            "/api/v1/migrations",
            body("CREATE TABLE flags (id int, on_ boolean);", "add flags"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{amended}");
    assert_ne!(amended["checksum"], first["checksum"]);
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={id}"))
        .await;
    assert!(audit.to_string().contains("\"amended\""), "{audit}");
    let (status, refused) = app
        .post(
            "dev",
            "/api/v1/migrations",
            body("CREATE TABLE flags (id int);", "other words"),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused.to_string().contains("description"), "{refused}");
    // Another person's migration: amending it needs an operator.
    let (status, body2) = app
        .post(
            "dev2",
            "/api/v1/migrations",
            body("CREATE TABLE flags (x int);", "add flags"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body2}");
    let mut bad = migration("x", "low", "SELECT 1;", None);
    bad["id"] = json!("not an id");
    let (status, body3) = app.post("dev", "/api/v1/migrations", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body3}");
    assert!(
        body3.to_string().contains("id: invalid migration id"),
        "{body3}"
    );

    // Two at once.
    let twin = || {
        let mut m = migration("twin", "low", "CREATE TABLE twin (id int);", None);
        m["id"] = json!("008_20261129_101600_twin");
        app.post("dev", "/api/v1/migrations", m)
    };
    let (a, b) = tokio::join!(twin(), twin());
    let mut codes = [a.0.as_u16(), b.0.as_u16()];
    codes.sort_unstable();
    assert_eq!(codes, [200, 201], "{} {}", a.1, b.1);
    let d = app.deployment("008_20261129_101600_twin@development").await;
    assert_eq!(d["state"], "queued", "one deployment, auto-approved: {d}");
    app.stop().await;
}

/// POST /migrations:batch: many migrations in one transaction, an item may depend on one
/// before it; one bad item refuses them all with every item's error; resubmitted ids with the
/// same scripts are left unchanged.
#[tokio::test]
async fn a_batch_is_all_or_nothing_with_every_items_error() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let item = |id: &str, up: &str, depends: &[&str]| {
        let mut m = migration(id, "low", up, None);
        m["id"] = json!(id);
        m["depends_on"] = json!(depends);
        m
    };
    let first = "001_20240101_000000_users";
    let second = "002_20240102_000000_orders";
    let (status, refused) = app
        .post(
            "dev",
            "/api/v1/migrations:batch",
            json!({"migrations": [
                item(first, "CREATE TABLE users (id int);", &[]),
                item(second, "CREATE TABLE orders (id int);\nROLLBACK;", &[first]),
                item("003_20240103_000000_x", "SELECT 1;", &["009_20240109_000000_nowhere"]),
                item(first, "SELECT 2;", &[]),
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let items = refused["error"]["items"].as_array().unwrap();
    let indexes: Vec<i64> = items.iter().map(|i| i["index"].as_i64().unwrap()).collect();
    assert_eq!(indexes, [1, 2, 3], "{refused}");
    assert!(
        items[0]["message"].as_str().unwrap().contains("line 2"),
        "{refused}"
    );
    assert!(
        items[1]["message"]
            .as_str()
            .unwrap()
            .contains("no migration"),
        "{refused}"
    );
    assert!(
        items[2]["message"]
            .as_str()
            .unwrap()
            .contains("appears twice"),
        "{refused}"
    );
    let (_, list) = app.get("dev", "/api/v1/migrations").await;
    assert!(
        !list.to_string().contains(first),
        "nothing was submitted: {list}"
    );

    let batch = json!({"migrations": [
        item(first, "CREATE TABLE users (id int);", &[]),
        item(second, "CREATE TABLE orders (id int);", &[first]),
    ]});
    let (status, made) = app
        .post("dev", "/api/v1/migrations:batch", batch.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let ids: Vec<&str> = made["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first, second]);
    assert_eq!(made["created"][1]["depends_on"], json!([first]));
    // What the batch answers is what reading each back gives.
    for view in made["created"].as_array().unwrap() {
        let (_, read) = app
            .get(
                "dev",
                &format!("/api/v1/migrations/{}", view["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(&read, view);
    }
    // Again: unchanged; one more item is created alone.
    let mut again = batch.clone();
    again["migrations"].as_array_mut().unwrap().push(item(
        "003_20240103_000000_items",
        "CREATE TABLE items (id int);",
        &[second],
    ));
    let (status, made) = app.post("dev", "/api/v1/migrations:batch", again).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["unchanged"], json!([first, second]));
    assert_eq!(made["created"][0]["id"], "003_20240103_000000_items");
    // They apply in the batch's order.
    app.run_worker("development").await;
    for id in [first, second, "003_20240103_000000_items"] {
        assert_eq!(
            app.deployment(&format!("{id}@development")).await["state"],
            "applied"
        );
    }
    // Over gRPC: a refused item is named.
    let mut grpc = app.grpc().await;
    let status = grpc
        .submit_migrations(app.grpc_request(
            "dev",
            sluice::api::grpc::pb::SubmitMigrationsRequest {
                migrations: vec![sluice::api::grpc::pb::SubmitMigrationRequest {
                    id: String::new(),
                    kind: "schema_change".into(),
                    description: "bad".into(),
                    risk: "low".into(),
                    ticket: "T-1".into(),
                    estimated_duration: "five minutes".into(),
                    up_sql: "SELECT 1;".into(),
                    down_sql: None,
                    depends_on: vec![],
                }],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("migrations[0]: estimated_duration"),
        "{status:?}"
    );
    let (status, body) = app
        .post("dev", "/api/v1/migrations:batch", json!({"migrations": []}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

/// Baseline: on a database where golang-migrate already ran versions 1 and 2, a lead records
/// them as applied without running them (checked against schema_migrations); version 3 then
/// applies as usual. What the other tool does not vouch for is refused.
#[tokio::test]
async fn a_baseline_records_what_already_ran_checked_against_the_tools_history() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let target = app.targets["staging"].client().await;
    target
        .batch_execute(
            "CREATE TABLE users (id int); CREATE TABLE orders (id int);\
             CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);\
             INSERT INTO schema_migrations VALUES (2, false)",
        )
        .await
        .unwrap();
    let item = |id: &str, up: &str| {
        let mut m = migration(id, "low", up, None);
        m["id"] = json!(id);
        m
    };
    let (status, made) = app
        .post(
            "dev",
            "/api/v1/migrations:batch",
            json!({"migrations": [
                item("V000001__users", "CREATE TABLE users (id int);"),
                item("V000002__orders", "CREATE TABLE orders (id int);"),
                item("V000003__items", "CREATE TABLE items (id int);"),
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let path = "/api/v1/environments/staging/baseline";
    let (status, body) = app.post("ops1", path, json!({"up_to": "2"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.post("lead", path, json!({"up_to": "000003"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.to_string()
            .contains("schema_migrations on staging does not record as applied: V000003__items"),
        "{body}"
    );
    assert_eq!(
        app.deployment("V000001__users@staging").await["state"],
        "awaiting_approval",
        "nothing was baselined"
    );
    // Two leads at once: one baselines, the other finds the target busy or nothing left.
    let ((s1, b1), (s2, b2)) = tokio::join!(
        app.post("lead", path, json!({"up_to": "2"})),
        app.post("admin", path, json!({"up_to": "2"})),
    );
    assert!(
        s1 == StatusCode::OK || s2 == StatusCode::OK,
        "{s1} {b1} {s2} {b2}"
    );
    let (other, body) = if s1 == StatusCode::OK {
        (s2, b1)
    } else {
        (s1, b2)
    };
    assert!(
        matches!(other, StatusCode::CONFLICT | StatusCode::NOT_FOUND),
        "{other} {body}"
    );
    assert_eq!(
        body["baselined"],
        json!(["V000001__users", "V000002__orders"])
    );
    assert_eq!(body["verified_by"], "schema_migrations");
    assert_eq!(
        app.deployment("V000002__orders@staging").await["state"],
        "applied"
    );
    let recorded: i64 = target
        .query_one(
            "SELECT count(*) FROM sluice_schema_history WHERE success AND applied_by LIKE 'baseline by %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 2);
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    assert!(audit.to_string().contains("\"baselined\""), "{audit}");
    // Version 3 applies as usual (1 and 2 are not run again: their tables exist).
    app.approve("ops1", "V000003__items@staging", "data_ops")
        .await;
    app.approve("ops2", "V000003__items@staging", "data_ops")
        .await;
    // Staging applies after development, as the promotion order wants.
    app.run_worker("development").await;
    app.run_worker("staging").await;
    assert_eq!(
        app.deployment("V000003__items@staging").await["state"],
        "applied"
    );
    assert!(app.table_exists("staging", "items").await);
    let (status, body) = app.post("lead", path, json!({"up_to": "2"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.stop().await;
}

/// A baseline writes the target's history row, then the store: a kill -9 between the two
/// leaves the row and an unchanged deployment. Asked again, the baseline does not write the
/// row twice, and marks the deployment applied; nothing ran.
#[tokio::test]
async fn a_baseline_interrupted_between_its_two_writes_completes_when_asked_again() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let mut m = migration(
        "V7",
        "low",
        "CREATE TABLE would_fail_if_run (id int);",
        None,
    );
    m["id"] = json!("V7__once");
    let made = app.submit("dev", m).await;
    let checksum = app.deployment(&format!("{made}@staging")).await["checksum"]
        .as_str()
        .unwrap()
        .to_owned();
    // What the first write left when the daemon died: the history row, nothing in the store.
    let target = app.targets["staging"].client().await;
    target
        .batch_execute(
            "CREATE TABLE would_fail_if_run (id int);\
             CREATE TABLE sluice_schema_history (migration_id TEXT PRIMARY KEY, checksum TEXT NOT NULL, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_by TEXT NOT NULL, execution_ms BIGINT NOT NULL, \
             success BOOLEAN NOT NULL, transactional BOOLEAN NOT NULL, error TEXT, statements_done BIGINT, \
             statements_total BIGINT, rollback_done BIGINT)",
        )
        .await
        .unwrap();
    target
        .execute(
            "INSERT INTO sluice_schema_history (migration_id, checksum, applied_by, execution_ms, success, transactional) \
             VALUES ('V7__once', $1, 'baseline by lead', 0, true, true)",
            &[&checksum],
        )
        .await
        .unwrap();
    assert_eq!(
        app.deployment("V7__once@staging").await["state"],
        "awaiting_approval"
    );
    let (status, body) = app
        .post(
            "lead",
            "/api/v1/environments/staging/baseline",
            json!({"up_to": "7"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.deployment("V7__once@staging").await["state"], "applied");
    let rows: i64 = target
        .query_one("SELECT count(*) FROM sluice_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    app.stop().await;
}

/// Statements Sluice cannot run (COPY ... FROM STDIN, LOAD DATA LOCAL INFILE) and writes to its
/// own history table are refused before they reach a worker: by `sluice validate` and at
/// submission (REST and the CLI), naming the script, the line and why (issue 19, item 8; before,
/// they were accepted, and the worker retried them every second as a target error).
#[tokio::test]
async fn scripts_sluice_cannot_run_or_that_write_its_history_are_refused_at_validate_and_submit() {
    let app = spawn_app().await;
    for (up_sql, line, why) in [
        (
            "CREATE TABLE loaded (n int);\nCOPY loaded FROM STDIN;\n",
            2,
            "\"COPY loaded FROM STDIN\" cannot run in a migration: COPY ... FROM STDIN reads its rows from the client",
        ),
        (
            "-- tidy up\nDROP TABLE sluice_schema_history;\n",
            2,
            "\"DROP TABLE sluice_schema_history\" changes sluice_schema_history, Sluice's own record of what is applied",
        ),
        (
            "CREATE TABLE t (n int);\n\nDELETE FROM public.sluice_schema_history\n  WHERE migration_id = 'x';\n",
            3,
            "changes sluice_schema_history",
        ),
    ] {
        let (status, body) = app
            .post(
                "dev",
                "/api/v1/migrations",
                migration("refused", "low", up_sql, None),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{up_sql}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("up_sql: line {line}: ")) && message.contains(why),
            "{up_sql}: {body}"
        );
    }
    // A rollback script is held to the same rule.
    let (status, body) = app
        .post(
            "dev",
            "/api/v1/migrations",
            migration(
                "refused down",
                "low",
                "CREATE TABLE t (n int);",
                Some("DROP TABLE t;\nTRUNCATE sluice_schema_history;"),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(
            |m| m.starts_with("down_sql: line 2: \"TRUNCATE sluice_schema_history\" changes")
        ),
        "{body}"
    );

    // `sluice validate`, offline, says the same of a file and of its rollback script.
    let dir = std::env::temp_dir().join(format!("sluice-unrunnable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("rollbacks")).unwrap();
    let file = dir.join("scripts/001_20240101_000000_load.sql");
    std::fs::write(
        &file,
        "-- Migration: 001_20240101_000000_load\n-- Type: DATA_MIGRATION\n-- Description: load rows\n-- Risk: LOW\n-- Estimated-Duration: 1m\n-- Ticket: T-1\nCREATE TABLE loaded (n int);\nCOPY loaded FROM STDIN;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rollbacks/001_20240101_000000_load_rollback.sql"),
        "DROP TABLE loaded;\nDELETE FROM sluice_schema_history WHERE migration_id = '001_20240101_000000_load';\n",
    )
    .unwrap();
    let run = crate::cli::sluice(&app, None, &dir, &["validate", file.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("001_20240101_000000_load.sql:8")
            && run
                .stdout
                .contains("COPY ... FROM STDIN reads its rows from the client"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("001_20240101_000000_load_rollback.sql:2")
            && run.stdout.contains("changes sluice_schema_history"),
        "{}",
        run.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}
