//! The environment lock under concurrent requests: one lock wins, one unlock wins, and every
//! other request is a 409 that names the holder (never a 500 from a unique violation, never a
//! second audit record).

use crate::harness::{AppOptions, Backend, TestApp, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

const LOCKERS: usize = 40;
const UNLOCKERS: usize = 20;
const ROUNDS: usize = 4;

async fn audit_actions(app: &TestApp, action: &str) -> usize {
    let (status, audit) = app
        .get("admin", "/api/v1/audit?environment=staging&limit=5000")
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    audit
        .as_array()
        .expect("the audit trail is a list")
        .iter()
        .filter(|r| r["action"] == action)
        .count()
}

/// Many lock requests at once, then many unlocks at once, over real HTTP, a few times.
async fn one_lock_and_one_unlock_win(backend: Backend) {
    let app = spawn_app_with(AppOptions {
        backend,
        ..AppOptions::default()
    })
    .await;
    // Several rounds: a race that one round misses, another finds.
    for round in 1..=ROUNDS {
        let locks = futures_util::future::join_all((0..LOCKERS).map(|i| {
            let user = if i % 2 == 0 { "lead" } else { "admin" };
            let app = &app;
            async move {
                let (status, body) = app
                    .post(
                        user,
                        "/api/v1/environments/staging/lock",
                        json!({"reason": format!("incident {round}.{i}")}),
                    )
                    .await;
                (user, i, status, body)
            }
        }))
        .await;
        let winners: Vec<_> = locks
            .iter()
            .filter(|(_, _, status, _)| *status == StatusCode::OK)
            .collect();
        assert_eq!(winners.len(), 1, "exactly one lock wins: {locks:#?}");
        let (holder, number, _, body) = winners[0];
        assert_eq!(body["lock"]["locked_by"], *holder, "{body}");
        assert_eq!(
            body["lock"]["reason"],
            format!("incident {round}.{number}"),
            "{body}"
        );
        for (_, _, status, body) in &locks {
            if *status == StatusCode::OK {
                continue;
            }
            assert_eq!(*status, StatusCode::CONFLICT, "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("locked by {holder}"))
                    && message.contains(&format!("incident {round}.{number}")),
                "the refusal names who holds the lock and why: {message}"
            );
        }
        assert_eq!(audit_actions(&app, "environment_locked").await, round);

        let unlocks = futures_util::future::join_all((0..UNLOCKERS).map(|i| {
            let user = if i % 2 == 0 { "lead" } else { "admin" };
            let app = &app;
            async move { app.delete(user, "/api/v1/environments/staging/lock").await }
        }))
        .await;
        let ok = unlocks
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "exactly one unlock wins: {unlocks:#?}");
        for (status, body) in &unlocks {
            assert!(
                *status == StatusCode::OK || *status == StatusCode::CONFLICT,
                "{status} {body}"
            );
            if *status == StatusCode::CONFLICT {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("not locked"), "{message}");
            }
        }
        assert_eq!(audit_actions(&app, "environment_unlocked").await, round);
    }
    let (_, status) = app.get("dev", "/api/v1/environments/staging").await;
    assert!(status["lock"].is_null(), "{status}");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_locks_and_unlocks_on_a_postgres_store_have_one_winner_each() {
    one_lock_and_one_unlock_win(Backend::Postgres).await;
}

#[tokio::test]
async fn concurrent_locks_and_unlocks_on_a_sqlite_store_have_one_winner_each() {
    one_lock_and_one_unlock_win(Backend::Sqlite).await;
}
