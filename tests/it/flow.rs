//! No dead ends (issue 19): a migration's way through development -> staging -> production
//! always moves on after a rollback, a cancel or an amendment, and a rollback the daemon
//! accepts is one that runs. Driven through the REST API with the workers run by hand.

use crate::harness::{AppOptions, TestApp, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use sluice::engine::Outcome;

async fn manual_app() -> TestApp {
    spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await
}

async fn approve_staging(app: &TestApp, id: &str) {
    let deployment = format!("{id}@staging");
    app.approve("ops1", &deployment, "data_ops").await;
    app.approve("ops2", &deployment, "data_ops").await;
}

async fn state(app: &TestApp, deployment: &str) -> String {
    app.deployment(deployment).await["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn blocked_by(app: &TestApp, environment: &str, migration_id: &str) -> String {
    let (status, value) = app
        .get("ops1", &format!("/api/v1/environments/{environment}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value["queue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["migration_id"] == migration_id)
        .unwrap_or_else(|| panic!("{migration_id} not in {environment}'s queue: {value}"))
        ["blocked_by"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_rollback_in_development_is_retried_and_staging_moves_on() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration(
                "rolled back then retried",
                "low",
                "CREATE TABLE again (id int);",
                Some("DROP TABLE again;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    assert_eq!(state(&app, &format!("{id}@development")).await, "applied");
    approve_staging(&app, &id).await;
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{id}@development/rollback"),
            json!({"reason": "try again"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    app.run_worker("development").await;
    assert_eq!(
        state(&app, &format!("{id}@development")).await,
        "rolled_back"
    );
    assert!(!app.table_exists("development", "again").await);
    // Staging waits for development again, and says what leads on.
    assert_eq!(app.run_worker("staging").await, Outcome::Blocked);
    let why = blocked_by(&app, "staging", &id).await;
    assert!(
        why.contains("must be applied in development first") && why.contains("retry it there"),
        "{why}"
    );
    // Retry of the rolled-back deployment: development approves itself and applies it again.
    let (status, value) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{id}@development/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["state"], "queued", "{value}");
    app.run_worker("development").await;
    assert_eq!(state(&app, &format!("{id}@development")).await, "applied");
    assert!(app.table_exists("development", "again").await);
    // Staging's approvals were given to this very checksum: it moves on.
    app.run_worker("staging").await;
    assert_eq!(state(&app, &format!("{id}@staging")).await, "applied");
    app.stop().await;
}

#[tokio::test]
async fn a_rolled_back_deployment_where_approvals_are_needed_goes_back_to_approval() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration(
                "staging rollback",
                "low",
                "CREATE TABLE st (id int);",
                Some("DROP TABLE st;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    approve_staging(&app, &id).await;
    app.run_worker("staging").await;
    assert_eq!(state(&app, &format!("{id}@staging")).await, "applied");
    let deployment = format!("{id}@staging");
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{deployment}/rollback"),
            json!({"reason": "bad"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    app.run_worker("staging").await;
    assert_eq!(state(&app, &deployment).await, "rolled_back");
    // A developer may not retry in staging; an operator may, and approval starts again.
    let (status, _) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{deployment}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{deployment}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["state"], "awaiting_approval", "{value}");
    assert!(
        value["approvals"].as_array().is_none_or(|a| a.is_empty()),
        "approvals spent on the undone apply are void: {value}"
    );
    approve_staging(&app, &id).await;
    app.run_worker("staging").await;
    assert_eq!(state(&app, &deployment).await, "applied");
    assert!(app.table_exists("staging", "st").await);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_in_development_withdraws_the_migration_from_later_environments() {
    let app = manual_app().await;
    let first = app
        .submit(
            "dev",
            migration("withdrawn", "low", "CREATE TABLE withdrawn (id int);", None),
        )
        .await;
    let second = app
        .submit(
            "dev",
            migration("passes it", "low", "CREATE TABLE passes (id int);", None),
        )
        .await;
    // Both approved in staging before development runs anything.
    approve_staging(&app, &first).await;
    approve_staging(&app, &second).await;
    let (status, value) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{first}@development/cancel"),
            json!({"reason": "not needed after all"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    for environment in ["staging", "production"] {
        let d = app.deployment(&format!("{first}@{environment}")).await;
        assert_eq!(d["state"], "cancelled", "{environment}: {d}");
    }
    // The cancellation in the later environments is audited with its cause.
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={first}"))
        .await;
    let text = audit.to_string();
    assert!(
        text.contains("withdrawn: cancelled in development by dev: not needed after all"),
        "{text}"
    );
    // The later migration passes it everywhere.
    app.run_worker("development").await;
    assert_eq!(
        state(&app, &format!("{second}@development")).await,
        "applied"
    );
    app.run_worker("staging").await;
    assert_eq!(state(&app, &format!("{second}@staging")).await, "applied");
    assert!(!app.table_exists("staging", "withdrawn").await);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_in_a_later_environment_leaves_the_earlier_ones_applied() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration("staging only", "low", "CREATE TABLE so (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{id}@staging/cancel"),
            json!({"reason": "not for staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(state(&app, &format!("{id}@development")).await, "applied");
    assert_eq!(state(&app, &format!("{id}@production")).await, "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn amending_a_migration_applied_in_development_rolls_the_old_version_back_and_applies_the_new()
 {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration(
                "amend after apply",
                "low",
                "CREATE TABLE old_shape (id int);",
                Some("DROP TABLE old_shape;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    assert!(app.table_exists("development", "old_shape").await);
    approve_staging(&app, &id).await;
    let (status, value) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({
                "up_sql": "CREATE TABLE new_shape (id bigint);",
                "down_sql": "DROP TABLE new_shape;",
                "reason": "bigint"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(
        state(&app, &format!("{id}@development")).await,
        "rolling_back"
    );
    let staging = app.deployment(&format!("{id}@staging")).await;
    assert_eq!(staging["state"], "awaiting_approval", "{staging}");
    // One round undoes the old version with its own down script; the amended version goes
    // back to approval, development approves itself, and the next round applies it.
    app.run_worker("development").await;
    assert!(!app.table_exists("development", "old_shape").await);
    assert_eq!(state(&app, &format!("{id}@development")).await, "queued");
    app.run_worker("development").await;
    assert_eq!(state(&app, &format!("{id}@development")).await, "applied");
    assert!(app.table_exists("development", "new_shape").await);
    // Staging needs approvals of the new checksum and then applies the new version.
    approve_staging(&app, &id).await;
    app.run_worker("staging").await;
    assert!(app.table_exists("staging", "new_shape").await);
    assert!(!app.table_exists("staging", "old_shape").await);
    // Once past development, the migration is frozen.
    let (status, value) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE third (id int);", "reason": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert!(value.to_string().contains("past development"), "{value}");
    app.stop().await;
}

#[tokio::test]
async fn amending_an_applied_migration_without_a_down_script_is_refused_and_changes_nothing() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration("no down", "low", "CREATE TABLE no_down (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    let before = app.deployment(&format!("{id}@development")).await;
    let (status, value) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE no_down2 (id int);", "reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert!(value.to_string().contains("no down_sql"), "{value}");
    let after = app.deployment(&format!("{id}@development")).await;
    assert_eq!(before["checksum"], after["checksum"]);
    assert_eq!(after["state"], "applied");
    app.stop().await;
}

#[tokio::test]
async fn two_concurrent_amendments_one_wins_and_no_author_is_lost() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration("raced", "low", "CREATE TABLE raced (id int);", None),
        )
        .await;
    let amend = |user: &'static str, table: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.request(
                reqwest::Method::PUT,
                Some(user),
                &format!("/api/v1/migrations/{id}"),
                Some(
                    json!({"up_sql": format!("CREATE TABLE {table} (id int);"), "reason": "race"}),
                ),
            )
            .await
        }
    };
    let ((a, va), (b, vb)) = tokio::join!(amend("dev", "by_dev"), amend("ops1", "by_ops"));
    let statuses = [a, b];
    assert!(
        statuses.contains(&StatusCode::OK),
        "one amendment wins: {va} {vb}"
    );
    let stored = {
        let store = &app.service().store;
        let mut conn = store.conn().await.unwrap();
        store.migration(&mut conn, &id).await.unwrap().unwrap()
    };
    if a == StatusCode::OK && b == StatusCode::OK {
        // One after the other: both wrote a version, both are authors.
        for user in ["dev", "ops1"] {
            assert!(
                stored.author == user || stored.authors.iter().any(|x| x == user),
                "{user} lost: {:?}",
                stored.authors
            );
        }
    } else {
        let (winner, loser, loser_status) = if a == StatusCode::OK {
            ("dev", &vb, b)
        } else {
            ("ops1", &va, a)
        };
        assert_eq!(loser_status, StatusCode::CONFLICT, "{loser}");
        assert!(
            stored.author == winner || stored.authors.iter().any(|x| x == winner),
            "{:?}",
            stored.authors
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_rollback_on_a_halted_queue_is_refused_and_nothing_runs() {
    let app = manual_app().await;
    let v1 = app
        .submit(
            "dev",
            migration(
                "v1",
                "low",
                "CREATE TABLE v1_table (id int);",
                Some("DROP TABLE v1_table;"),
            ),
        )
        .await;
    let v2 = app
        .submit(
            "dev",
            migration(
                "v2",
                "low",
                "CREATE TABLE v2_table (id int);",
                Some("DROP TABLE missing_table_for_the_rollback;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    assert!(app.table_exists("development", "v2_table").await);
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{v2}@development/rollback"),
            json!({"reason": "undo"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    app.run_worker("development").await;
    let failed = app.deployment(&format!("{v2}@development")).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    // The queue is halted by V2's failed rollback: rolling V1 back now is refused, and V1 stays.
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{v1}@development/rollback"),
            json!({"reason": "undo v1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    let text = value.to_string();
    assert!(text.contains("halted by") && text.contains(&v2), "{text}");
    app.run_worker("development").await;
    assert_eq!(state(&app, &format!("{v1}@development")).await, "applied");
    assert!(app.table_exists("development", "v1_table").await);
    assert!(app.table_exists("development", "v2_table").await);
    app.stop().await;
}

/// Drift voids an emergency override with the approvals: approved again by ordinary
/// approvals, the deployment waits for the promotion order like any other (before, it kept
/// its emergency standing and ran in production while development had not applied it).
#[tokio::test]
async fn drift_voids_an_emergency_override_with_the_approvals() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration("forced", "low", "CREATE TABLE forced (id int);", None),
        )
        .await;
    let production = format!("{id}@production");
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{production}/override"),
            json!({"reason": "outage"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
    assert!(app.service().check_drift("production").await.is_ok());
    app.targets["production"]
        .client()
        .await
        .batch_execute("CREATE TABLE by_hand (id int)")
        .await
        .unwrap();
    assert!(app.service().check_drift("production").await.unwrap());
    let d = app.deployment(&production).await;
    assert_eq!(d["state"], "awaiting_approval", "{d}");
    assert!(d["emergency_reason"].is_null(), "{d}");
    assert!(d["approvals"].as_array().unwrap().is_empty(), "{d}");
    // Two ordinary approvals and a migrate: it waits for staging, and nothing runs.
    app.approve("lead", &production, "data_ops_lead").await;
    app.approve("dba", &production, "dba").await;
    let (status, body) = app
        .post("ops1", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(app.run_worker("production").await, Outcome::Blocked);
    assert!(!app.table_exists("production", "forced").await);
    let why = blocked_by(&app, "production", &id).await;
    assert!(why.contains("must be applied in staging first"), "{why}");
    app.stop().await;
}

/// A rejection or an expiry in staging withdraws the migration from production, as a cancel
/// does: production no longer waits for ever for a staging that will never apply it, and later
/// migrations pass it. A queued deployment held by a lock says so. (Found by flow_property.)
#[tokio::test]
async fn rejecting_or_expiring_in_staging_withdraws_the_migration_from_production() {
    let app = spawn_app_with(AppOptions {
        backend: crate::harness::Backend::Sqlite,
        background_workers: false,
        manual_clock: true,
        ..AppOptions::default()
    })
    .await;
    let rejected = app
        .submit(
            "dev",
            migration("rejected", "low", "CREATE TABLE rj (id int);", None),
        )
        .await;
    let expired = app
        .submit(
            "dev",
            migration("expired", "low", "CREATE TABLE ex (id int);", None),
        )
        .await;
    let later = app
        .submit(
            "dev",
            migration("passes", "low", "CREATE TABLE la (id int);", None),
        )
        .await;
    app.run_worker("development").await;
    // Production approved for all three before staging decides.
    for id in [&rejected, &expired, &later] {
        let production = format!("{id}@production");
        app.approve("lead", &production, "data_ops_lead").await;
        app.approve("dba", &production, "dba").await;
    }
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{rejected}@staging/reject"),
            json!({"comment": "wrong table"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let d = app.deployment(&format!("{rejected}@production")).await;
    assert_eq!(d["state"], "cancelled", "{d}");
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={rejected}"))
        .await;
    assert!(
        audit
            .to_string()
            .contains("withdrawn: rejected in staging by ops1: wrong table"),
        "{audit}"
    );
    // Staging's deadline (72 h) passes for `expired`; `later` was approved in time.
    approve_staging(&app, &later).await;
    app.clock
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::hours(73));
    assert_eq!(app.service().expire_overdue().await.unwrap(), 1);
    assert_eq!(state(&app, &format!("{expired}@staging")).await, "expired");
    assert_eq!(
        state(&app, &format!("{expired}@production")).await,
        "cancelled"
    );
    // Nothing else holds `later` in staging but a lock, and status says so.
    let (status, value) = app
        .post(
            "ops1",
            "/api/v1/environments/staging/lock",
            json!({"reason": "hold"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let why = blocked_by(&app, "staging", &later).await;
    assert!(why.contains("locked by ops1"), "{why}");
    let (status, value) = app
        .delete("ops1", "/api/v1/environments/staging/lock")
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    app.run_worker("staging").await;
    assert_eq!(state(&app, &format!("{later}@staging")).await, "applied");
    let (status, value) = app
        .post("ops1", "/api/v1/environments/production/migrate", json!({}))
        .await;
    assert!(status.is_success(), "{value}");
    app.run_worker("production").await;
    assert_eq!(state(&app, &format!("{later}@production")).await, "applied");
    app.stop().await;
}

/// An amendment voids the approvals of the old checksum on deployments that have ended too: no
/// approval of a script that no longer exists stays listed. (Found by flow_property.)
#[tokio::test]
async fn an_amendment_voids_the_approvals_of_deployments_that_have_ended() {
    let app = spawn_app_with(AppOptions {
        backend: crate::harness::Backend::Sqlite,
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration("ended", "low", "CREATE TABLE en (id int);", None),
        )
        .await;
    let staging = format!("{id}@staging");
    app.approve("ops1", &staging, "data_ops").await;
    let (status, value) = app
        .post(
            "ops2",
            &format!("/api/v1/deployments/{staging}/reject"),
            json!({"comment": "not yet"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let (status, value) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE en2 (id int);", "reason": "v2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let d = app.deployment(&staging).await;
    assert_eq!(d["state"], "rejected", "{d}");
    assert!(d["approvals"].as_array().unwrap().is_empty(), "{d}");
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={id}"))
        .await;
    assert!(audit.to_string().contains("approvals_voided"), "{audit}");
    app.stop().await;
}

/// A developer may cancel anything in development (it approves itself), but the withdrawal
/// from later environments is a cancel there too: someone else's migration is not withdrawn
/// from production by a developer through development.
#[tokio::test]
async fn a_developer_cannot_withdraw_someone_elses_migration_from_production_through_development() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration("not yours", "low", "CREATE TABLE not_yours (id int);", None),
        )
        .await;
    let (status, value) = app
        .post(
            "dev2",
            &format!("/api/v1/deployments/{id}@development/cancel"),
            json!({"reason": "mine now"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    assert!(
        value.to_string().contains("withdraws it from staging too"),
        "{value}"
    );
    for environment in ["development", "staging", "production"] {
        let d = app.deployment(&format!("{id}@{environment}")).await;
        assert_ne!(d["state"], "cancelled", "nothing changed: {d}");
    }
    // Its author may.
    let (status, value) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{id}@development/cancel"),
            json!({"reason": "withdrawn by its author"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(state(&app, &format!("{id}@production")).await, "cancelled");
    app.stop().await;
}

/// A daemon killed between the two writes of an amendment's undo (the rollback of the old
/// version recorded, the reopening for the new one not yet): the next worker (a restarted
/// daemon) reopens it and applies the amended version; nothing is run twice.
#[tokio::test]
async fn an_amendment_interrupted_between_its_rollback_and_its_reopening_completes_after_a_restart()
{
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration(
                "crash amend",
                "low",
                "CREATE TABLE crash_old (id int);",
                Some("DROP TABLE crash_old;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    let (status, value) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{id}"),
            Some(json!({"up_sql": "CREATE TABLE crash_new (id int);", "down_sql": "DROP TABLE crash_new;", "reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    // What a worker killed right after recording the rollback leaves: the target rolled back
    // (table and history row gone), the deployment rolled_back with the kept down script.
    app.targets["development"]
        .client()
        .await
        .batch_execute(&format!(
            "DROP TABLE crash_old; DELETE FROM sluice_schema_history WHERE migration_id = '{id}'"
        ))
        .await
        .unwrap();
    app.store
        .as_ref()
        .unwrap()
        .client()
        .await
        .execute(
            "UPDATE deployments SET state = 'rolled_back', version = version + 1 WHERE id = $1",
            &[&format!("{id}@development")],
        )
        .await
        .unwrap();
    // The restarted daemon's worker: reopened, re-approved, queued, then applied.
    app.run_worker("development").await;
    app.run_worker("development").await;
    assert_eq!(state(&app, &format!("{id}@development")).await, "applied");
    assert!(app.table_exists("development", "crash_new").await);
    assert!(!app.table_exists("development", "crash_old").await);
    app.stop().await;
}

/// Two retries of one rolled-back deployment at once: one reopens it, the other is refused;
/// one audit record of the reopening.
#[tokio::test]
async fn two_retries_of_a_rolled_back_deployment_at_once_end_coherently() {
    let app = manual_app().await;
    let id = app
        .submit(
            "dev",
            migration(
                "retried twice",
                "low",
                "CREATE TABLE twice_retried (id int);",
                Some("DROP TABLE twice_retried;"),
            ),
        )
        .await;
    app.run_worker("development").await;
    approve_staging(&app, &id).await;
    app.run_worker("staging").await;
    let deployment = format!("{id}@staging");
    let (status, value) = app
        .post(
            "ops1",
            &format!("/api/v1/deployments/{deployment}/rollback"),
            json!({"reason": "undo"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    app.run_worker("staging").await;
    assert_eq!(state(&app, &deployment).await, "rolled_back");
    let path = format!("/api/v1/deployments/{deployment}/retry");
    let ((a, va), (b, vb)) = tokio::join!(
        app.post("ops1", &path, json!({})),
        app.post("ops2", &path, json!({}))
    );
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{va} {vb}"
    );
    assert_eq!(state(&app, &deployment).await, "awaiting_approval");
    let (_, audit) = app
        .get("admin", "/api/v1/audit?environment=staging&limit=1000")
        .await;
    let reopenings = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "approvals_voided" && r["deployment_id"] == deployment.as_str())
        .count();
    assert_eq!(reopenings, 1, "{audit}");
    app.stop().await;
}

/// Hostile author: where the first environment takes approvals, amending a migration applied
/// there would roll it back and run new SQL there on the author's word alone: refused (403),
/// nothing changed; an operator may.
#[tokio::test]
async fn an_author_alone_cannot_amend_what_a_reviewed_first_environment_applied() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        edit_environments: Some(|text| {
            text.replacen(
                "auto_approve: true          # deployments here need no approval",
                "auto_approve: false",
                1,
            )
            .replacen(
                "allow_self_approval: true   # the author may approve their own migration here",
                "allow_self_approval: false",
                1,
            )
        }),
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration(
                "reviewed first",
                "low",
                "CREATE TABLE reviewed (id int);",
                Some("DROP TABLE reviewed;"),
            ),
        )
        .await;
    app.approve("dev2", &format!("{id}@development"), "developer")
        .await;
    let (status, body) = app
        .post(
            "ops1",
            "/api/v1/environments/development/migrate",
            json!({}),
        )
        .await;
    assert!(status.is_success(), "{body}");
    app.run_worker("development").await;
    assert_eq!(state(&app, &format!("{id}@development")).await, "applied");
    let amend = |user: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.request(
                reqwest::Method::PUT,
                Some(user),
                &format!("/api/v1/migrations/{id}"),
                Some(json!({"up_sql": "DROP TABLE reviewed; CREATE TABLE other (id int);", "down_sql": "DROP TABLE other;", "reason": "sneak"})),
            )
            .await
        }
    };
    let (status, value) = amend("dev").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    let d = app.deployment(&format!("{id}@development")).await;
    assert_eq!(d["state"], "applied", "{d}");
    app.run_worker("development").await;
    assert!(app.table_exists("development", "reviewed").await);
    let (status, value) = amend("ops1").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(
        state(&app, &format!("{id}@development")).await,
        "rolling_back"
    );
    app.stop().await;
}
