//! Notifications end to end: events written to the outbox with the changes that cause them,
//! delivered to a real HTTP receiver (standing in for Slack and a webhook endpoint) and a real
//! SMTP server on loopback, through outages, restarts and two daemons on one store; reminders,
//! escalation, expiry and post-emergency reviews driven by the manual clock.

use crate::harness::*;
use crate::receivers::{Mode, Receiver, SmtpSink, kinds_once};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const SLACK: &str = "/slack/T000/B000/SECRETPART";
const HOOK: &str = "/hook";
const HMAC_KEY: &str = "s3cr3t-hmac-key";

const FAST_DELIVERY: &str = "delivery:\n  first_retry_seconds: 0.05\n  max_retry_seconds: 0.2\n  give_up_after_hours: 1\n  timeout_seconds: 0.5\n  claim_seconds: 2\n";

fn channels(http: &Receiver, smtp: Option<&SmtpSink>) -> String {
    let mut text = format!(
        "channels:\n  chat:\n    type: slack\n    url: {}\n  audit:\n    type: webhook\n    url: {}\n    secret: {HMAC_KEY}\n",
        http.url(SLACK),
        http.url(HOOK)
    );
    if let Some(smtp) = smtp {
        text.push_str(&format!(
            "  mail:\n    type: email\n    smtp_server: 127.0.0.1:{}\n    security: none\n    from: sluice@example.com\n    events: [approval_requested, reminder, escalation, expired, emergency_override, review_owed]\n",
            smtp.port
        ));
    }
    text
}

async fn spawn_with(notifications: String, options: AppOptions) -> TestApp {
    spawn_app_with(AppOptions {
        notifications: Some(notifications),
        ..options
    })
    .await
}

fn event_of<'a>(
    requests: &'a [crate::receivers::Received],
    kind: &str,
    environment: &str,
) -> Option<&'a crate::receivers::Received> {
    requests.iter().find(|r| {
        r.header("x-sluice-event") == kind
            && (r.json["environment"] == environment
                    // Slack messages carry blocks, not the event: look at their text.
                    || r.json["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(&format!("[{environment}]"))))
    })
}

/// Waits until every event is fanned out from its audit record and nothing is pending in the
/// outbox (through the API).
async fn wait_until_nothing_pending(app: &TestApp) {
    let store = &app.service().store;
    for _ in 0..600 {
        let (status, pending) = app
            .get("admin", "/api/v1/notifications?state=pending")
            .await;
        assert_eq!(status, StatusCode::OK, "{pending}");
        let unsent = {
            let mut conn = store.conn().await.unwrap();
            store.unsent_audit_events(&mut conn, 1).await.unwrap().len()
        };
        if unsent == 0 && pending.as_array().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("notifications stayed pending");
}

#[tokio::test]
async fn approvers_hear_through_slack_email_and_a_signed_webhook_in_order() {
    let http = Receiver::start().await;
    let smtp = SmtpSink::start();
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, Some(&smtp))),
        AppOptions::default(),
    )
    .await;
    let id = app
        .submit(
            "dev",
            migration(
                "Add user preferences <!channel> & friends",
                "low",
                "CREATE TABLE prefs (id int);",
                Some("DROP TABLE prefs;"),
            ),
        )
        .await;

    // Slack: the staging approval request names the migration, what is missing and mentions
    // the holders of the missing role, never the author; what the author wrote is escaped.
    let slack = http
        .wait_for(SLACK, "the staging approval request", |r| {
            event_of(r, "approval_requested", "staging").is_some()
        })
        .await;
    let request = event_of(&slack, "approval_requested", "staging").unwrap();
    let text = request.json.to_string();
    assert_eq!(request.json["blocks"][0]["type"], "header");
    assert!(text.contains(&id), "{text}");
    assert!(
        text.contains("<@UOPS1>") && text.contains("<@UOPS2>"),
        "{text}"
    );
    assert!(!text.contains("<@UDEV>"), "the author is not asked: {text}");
    assert!(text.contains("Still needed"), "{text}");
    assert!(!text.contains("<!channel>"), "{text}");
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    assert!(request.header("x-sluice-signature").is_empty());

    // Email: the approval request goes to the holders of the missing role.
    let mails = smtp
        .wait_for("the staging approval mail", |m| {
            m.iter().any(|m| {
                m.subject()
                    .starts_with("[sluice][staging] approval needed: ")
            })
        })
        .await;
    let mail = mails
        .iter()
        .find(|m| {
            m.subject()
                .starts_with("[sluice][staging] approval needed: ")
        })
        .unwrap();
    assert_eq!(
        mail.subject(),
        format!("[sluice][staging] approval needed: {id} (LOW)")
    );
    assert!(
        mail.to.contains(&"ops1@example.com".to_string()),
        "{:?}",
        mail.to
    );
    assert!(
        mail.to.contains(&"ops2@example.com".to_string()),
        "{:?}",
        mail.to
    );
    assert!(
        !mail.to.contains(&"dev@example.com".to_string()),
        "{:?}",
        mail.to
    );
    assert!(mail.data.contains("text/html"), "{}", mail.data);
    assert_eq!(mail.from, "sluice@example.com");

    // Two approvals in staging: the webhook hears every step, signed, in order.
    let staging = format!("{id}@staging");
    app.approve("ops1", &staging, "data_ops").await;
    app.approve("ops2", &staging, "data_ops").await;
    app.wait_for_state(&staging, &["applied"]).await;
    let hooks = http
        .wait_for(HOOK, "the staging deployment applied", |r| {
            event_of(r, "applied", "staging").is_some()
        })
        .await;
    for hook in &hooks {
        assert_eq!(
            hook.header("x-sluice-signature"),
            sluice::notify::signature(HMAC_KEY.as_bytes(), &hook.body),
            "every webhook body is signed"
        );
        assert_eq!(hook.header("x-sluice-event-id"), hook.json["event_id"]);
    }
    let staging_kinds: Vec<String> = kinds_once(
        &hooks
            .iter()
            .filter(|h| h.json["environment"] == "staging")
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        staging_kinds,
        [
            "approval_requested",
            "approval_recorded",
            "approved",
            "started",
            "applied"
        ],
        "{staging_kinds:?}"
    );
    let applied = event_of(&hooks, "applied", "staging").unwrap();
    assert_eq!(applied.json["migration"]["id"], id.as_str());
    assert_eq!(applied.json["approvals"].as_array().unwrap().len(), 2);
    // The submission is announced once, for the migration as a whole.
    assert_eq!(
        hooks
            .iter()
            .filter(|h| h.header("x-sluice-event") == "submitted")
            .count(),
        1
    );
    // A failure says what failed, and that the queue is halted.
    let broken = app
        .submit(
            "dev",
            migration("Broken", "low", "CREATE TABLE prefs (id int);", None),
        )
        .await;
    app.wait_for_state(&format!("{broken}@development"), &["failed"])
        .await;
    let hooks = http
        .wait_for(HOOK, "the failure", |r| {
            event_of(r, "failed", "development").is_some()
        })
        .await;
    let failed = event_of(&hooks, "failed", "development").unwrap();
    assert!(
        failed.json["error"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{}",
        failed.json
    );
    let slack = http
        .wait_for(SLACK, "the failure in Slack", |r| {
            event_of(r, "failed", "development").is_some()
        })
        .await;
    let text = event_of(&slack, "failed", "development")
        .unwrap()
        .json
        .to_string();
    assert!(text.contains("FAILED, queue halted"), "{text}");
    let (status, channels) = app.get("dev", "/api/v1/notifications/channels").await;
    assert_eq!(status, StatusCode::OK);
    let audit = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit")
        .unwrap();
    assert_eq!(audit["type"], "webhook");
    assert!(audit["delivered"].as_i64().unwrap() >= 5, "{audit}");
    assert!(audit["last_success_at"].is_string(), "{audit}");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_outage_loses_nothing_and_keeps_each_migrations_order() {
    let http = Receiver::reserved().await; // down: connections are refused
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions::default(),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            app.submit(
                "dev",
                migration(
                    &format!("table {n}"),
                    "low",
                    &format!("CREATE TABLE outage_{n} (id int);"),
                    None,
                ),
            )
            .await,
        );
    }
    // An API call and the workers go on while the receiver is down.
    let staging = format!("{}@staging", ids[0]);
    app.approve("ops1", &staging, "data_ops").await;
    app.approve("ops2", &staging, "data_ops").await;
    app.wait_for_state(&staging, &["applied"]).await;

    // Undelivered events are listed with their last error, which names no secret.
    let mut pending = Value::Null;
    for _ in 0..200 {
        pending = app
            .get("dev", "/api/v1/notifications?state=pending")
            .await
            .1;
        if pending
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["last_error"].is_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = pending.to_string();
    assert!(
        listed.contains("cannot connect to the receiver"),
        "{listed}"
    );
    assert!(!listed.contains("SECRETPART"), "{listed}");
    let (_, status) = app.get("dev", "/api/v1/notifications/channels").await;
    let text = status.to_string();
    assert!(!text.contains("SECRETPART"), "{text}");
    let chat = status
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "chat")
        .unwrap();
    assert!(chat["pending"].as_i64().unwrap() > 0, "{chat}");
    assert!(chat["last_error"].is_string(), "{chat}");

    // Back, but failing; then too slow; then well.
    http.set_mode(Mode::Status(500));
    http.up().await;
    for _ in 0..200 {
        if http.requests().iter().filter(|r| r.answered == 500).count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.set_mode(Mode::Slow(Duration::from_millis(1500)));
    for _ in 0..200 {
        if http
            .requests()
            .iter()
            .any(|r| matches!(r.mode, Mode::Slow(_)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.set_mode(Mode::Ok);
    wait_until_nothing_pending(&app).await;
    let (_, dead) = app.get("admin", "/api/v1/notifications?state=dead").await;
    assert_eq!(dead, json!([]), "nothing was given up");

    // Every event arrived, and each migration's events arrived in the order they happened.
    let store = &app.service().store;
    let mut conn = store.conn().await.unwrap();
    let rows = store.outbox(&mut conn, "delivered", 1000).await.unwrap();
    assert!(rows.len() >= 2 * 3 * 4, "{} rows", rows.len());
    for (path, channel) in [(SLACK, "chat"), (HOOK, "audit")] {
        let delivered = http.delivered(path);
        for id in &ids {
            let expected: Vec<&str> = rows
                .iter()
                .filter(|r| r.channel == channel && r.migration_id.as_deref() == Some(id))
                .map(|r| r.event_id.as_str())
                .collect();
            let mut seen = std::collections::HashSet::new();
            let got: Vec<String> = delivered
                .iter()
                .filter(|r| {
                    r.header("x-sluice-event-id").len() > 1
                        && expected.contains(&r.header("x-sluice-event-id"))
                })
                .map(|r| r.header("x-sluice-event-id").to_owned())
                .filter(|e| seen.insert(e.clone()))
                .collect();
            assert_eq!(
                got, expected,
                "{channel}: events of {id} out of order or lost"
            );
        }
    }
    drop(conn); // closing the store waits for every connection to come back
    app.stop().await;
}

#[tokio::test]
async fn dead_notifications_are_listed_and_requeued_by_a_lead() {
    let http = Receiver::start().await;
    http.set_mode(Mode::Status(500));
    let delivery = "delivery:\n  first_retry_seconds: 0.05\n  max_retry_seconds: 0.1\n  give_up_after_hours: 0.0003\n  timeout_seconds: 0.5\n  claim_seconds: 2\n";
    let config = format!(
        "{delivery}channels:\n  audit:\n    type: webhook\n    url: {}\n    secret: {HMAC_KEY}\n",
        http.url(HOOK)
    );
    let app = spawn_with(config, AppOptions::default()).await;
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/staging/lock",
            json!({"reason": "release freeze"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut dead = Value::Null;
    for _ in 0..300 {
        dead = app.get("dev", "/api/v1/notifications?state=dead").await.1;
        if !dead.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = &dead[0];
    assert_eq!(row["kind"], "environment_locked", "{dead}");
    assert!(
        row["attempts"].as_i64().unwrap() >= 2,
        "retried first: {row}"
    );
    assert!(
        row["last_error"].as_str().unwrap().contains("HTTP 500"),
        "{row}"
    );
    assert_eq!(row["subject"], "[sluice][staging] environment locked");
    let id = row["id"].as_i64().unwrap();
    let event_id = row["event_id"].as_str().unwrap().to_owned();

    // Who may requeue, and what is refused.
    let retry = |n: String| format!("/api/v1/notifications/{n}/retry");
    let (status, body) = app.post("dev", &retry(id.to_string()), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.post("lead", &retry("abc".into()), json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app.post("lead", &retry("999999".into()), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app
        .get("dev", "/api/v1/notifications?state=delivered")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    http.set_mode(Mode::Ok);
    let (status, body) = app.post("lead", &retry(id.to_string()), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    let delivered = http
        .wait_for(HOOK, "the requeued event", |r| {
            r.iter().any(|r| r.header("x-sluice-event-id") == event_id)
        })
        .await;
    assert_eq!(delivered.len(), 1);
    wait_until_nothing_pending(&app).await;
    let (status, body) = app.post("lead", &retry(id.to_string()), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "delivered: {body}");
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    assert!(
        audit.to_string().contains("notification_requeued"),
        "{audit}"
    );

    // A receiver that refuses the message itself (a 4xx) is not retried for hours.
    http.set_mode(Mode::Status(400));
    app.delete("lead", "/api/v1/environments/staging/lock")
        .await;
    let mut dead = Value::Null;
    for _ in 0..300 {
        dead = app.get("dev", "/api/v1/notifications?state=dead").await.1;
        if !dead.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead[0]["kind"], "environment_unlocked", "{dead}");
    assert_eq!(dead[0]["attempts"], 1, "{dead}");
    app.stop().await;
}

#[tokio::test]
async fn events_pending_when_a_daemon_dies_are_delivered_by_the_next_one() {
    let http = Receiver::reserved().await;
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions::default(),
    )
    .await;
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/production/lock",
            json!({"reason": "incident 42"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut app = app;
    app.running.take().unwrap().stop().await;

    // A daemon that died between claiming the rows and sending them leaves its claim behind.
    let store = sluice::store::Store::connect(&app.config.settings.store.url, 2)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let claimed = store
        .claim_outbox(now + 60_000, now + 1_500, "a-daemon-that-died", 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "one row per channel");
    store.close().await;

    http.up().await;
    let next = sluice::start(app.config.clone(), sluice::StartOptions::default())
        .await
        .unwrap();
    let hooks = http
        .wait_for(HOOK, "the lock announced after the restart", |r| {
            r.iter()
                .any(|r| r.header("x-sluice-event") == "environment_locked")
        })
        .await;
    http.wait_for(SLACK, "the lock in Slack", |r| !r.is_empty())
        .await;
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].json["reason"], "incident 42");
    next.stop().await;
}

#[tokio::test]
async fn two_daemons_on_one_store_deliver_each_event_once() {
    let http = Receiver::start().await;
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions::default(),
    )
    .await;
    let second = sluice::start(app.config.clone(), sluice::StartOptions::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            app.submit(
                "dev",
                migration(
                    &format!("twice {n}"),
                    "low",
                    &format!("CREATE TABLE twice_{n} (id int);"),
                    None,
                ),
            )
            .await,
        );
    }
    // Wait for the conditions, not for a count that timing can change: every migration
    // applied in development (its last events written), then nothing left to send.
    for id in &ids {
        app.wait_for_state(&format!("{id}@development"), &["applied"])
            .await;
    }
    wait_until_nothing_pending(&app).await;
    let store = &app.service().store;
    let mut conn = store.conn().await.unwrap();
    let rows = store.outbox(&mut conn, "delivered", 1000).await.unwrap();
    for (path, channel) in [(SLACK, "chat"), (HOOK, "audit")] {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in http.requests().iter().filter(|r| r.path == path) {
            *counts
                .entry(r.header("x-sluice-event-id").to_owned())
                .or_default() += 1;
        }
        let expected = rows.iter().filter(|r| r.channel == channel).count();
        assert!(expected >= 8 * 4, "{expected} rows for {channel}");
        assert_eq!(counts.len(), expected, "{channel}: every event arrived");
        assert!(
            counts.values().all(|n| *n == 1),
            "{channel}: an event was sent twice: {counts:?}"
        );
    }
    drop(conn); // closing the store waits for every connection to come back
    second.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn reminders_escalation_expiry_and_reviews_follow_the_clock() {
    let http = Receiver::start().await;
    let smtp = SmtpSink::start();
    let config = format!(
        "{FAST_DELIVERY}escalate_to:\n  production: [cto, oncall@example.com]\nreminders:\n  at: [0.5, 0.9]\n  review_every_hours: 24\n{}",
        channels(&http, Some(&smtp))
    );
    let app = spawn_with(
        config,
        AppOptions {
            manual_clock: true,
            background_workers: false,
            ..AppOptions::default()
        },
    )
    .await;
    let clock = app.clock.clone().unwrap();
    let service = app.service().clone();
    let notifier = sluice::notify::Notifier::new(service.clone()).unwrap();
    let id = app
        .submit(
            "dev",
            migration("Remind me", "low", "CREATE TABLE remind (id int);", None),
        )
        .await;
    let production = format!("{id}@production");
    let hour = chrono::Duration::hours(1);

    // Production LOW waits 48 h for data_ops_lead + dba; staging 72 h for two data_ops.
    clock.advance(hour * 23);
    assert_eq!(service.send_scheduled_notices().await.unwrap().reminders, 0);
    clock.advance(hour * 2); // 25 h: half of production's wait
    let round = service.send_scheduled_notices().await.unwrap();
    assert_eq!((round.reminders, round.escalations), (1, 0), "{round:?}");
    assert_eq!(
        service.send_scheduled_notices().await.unwrap().reminders,
        0,
        "each reminder point once"
    );
    clock.advance(hour * 19); // 44 h: 90% of production's, half of staging's
    let round = service.send_scheduled_notices().await.unwrap();
    assert_eq!((round.reminders, round.escalations), (2, 1), "{round:?}");
    while notifier.run_once().await.unwrap().handled() > 0 {}
    let hooks = http.delivered(HOOK);
    let reminders: Vec<_> = hooks
        .iter()
        .filter(|h| h.header("x-sluice-event") == "reminder")
        .collect();
    assert_eq!(reminders.len(), 3, "two for production, one for staging");
    assert!(
        reminders[0].json["note"]
            .as_str()
            .unwrap()
            .contains("left before the deadline")
    );
    let escalation = event_of(&hooks, "escalation", "production").unwrap();
    assert_eq!(
        escalation.json["missing_roles"],
        json!(["data_ops_lead", "dba"])
    );
    let mails = smtp
        .wait_for("the escalation mail", |m| {
            m.iter().any(|m| m.subject().contains("ESCALATION"))
        })
        .await;
    let mail = mails
        .iter()
        .find(|m| m.subject().contains("ESCALATION"))
        .unwrap();
    for who in [
        "cto@example.com",
        "oncall@example.com",
        "lead@example.com",
        "dba@example.com",
    ] {
        assert!(mail.to.contains(&who.to_string()), "{who} in {:?}", mail.to);
    }

    // Past the deadline the deployment expires; the author hears.
    clock.advance(hour * 5);
    assert!(service.expire_overdue().await.unwrap() >= 1);
    assert_eq!(app.deployment(&production).await["state"], "expired");
    while notifier.run_once().await.unwrap().handled() > 0 {}
    let mails = smtp
        .wait_for("the expiry mail", |m| {
            m.iter().any(|m| {
                m.subject()
                    .starts_with("[sluice][production] expired unapproved")
            })
        })
        .await;
    let expired = mails
        .iter()
        .find(|m| {
            m.subject()
                .starts_with("[sluice][production] expired unapproved")
        })
        .unwrap();
    assert!(
        expired.to.contains(&"dev@example.com".to_string()),
        "{:?}",
        expired.to
    );

    // An emergency override owes a review from the role it skipped, reminded daily.
    let forced = app
        .submit(
            "dev",
            migration("Hotfix", "low", "CREATE TABLE hotfix (id int);", None),
        )
        .await;
    let forced_production = format!("{forced}@production");
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{forced_production}/override"),
            json!({"reason": "outage: orders table full"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = app.deployment(&forced_production).await;
    assert_eq!(view["review_owed"], true, "{view}");
    assert_eq!(view["reviews"][0]["role"], "dba", "{view}");
    let (_, env) = app.get("dev", "/api/v1/environments/production").await;
    assert_eq!(
        env["owed_reviews"][0]["deployment_id"],
        forced_production.as_str()
    );
    while notifier.run_once().await.unwrap().handled() > 0 {}
    let hooks = http.delivered(HOOK);
    let forced_events: Vec<String> = kinds_once(
        &hooks
            .iter()
            .filter(|h| h.json["deployment_id"] == forced_production.as_str())
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(
        // The override (with the reviews it opens) comes first, then the approval it causes.
        forced_events.ends_with(&[
            "emergency_override".into(),
            "review_owed".into(),
            "approved".into()
        ]),
        "{forced_events:?}"
    );
    clock.advance(hour * 25);
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .review_reminders,
        1
    );
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .review_reminders,
        0
    );

    let review = format!("/api/v1/deployments/{forced_production}/review");
    let (status, body) = app.post("tech", &review, json!({"comment": "fine"})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "tech holds no owed role: {body}"
    );
    let (status, body) = app.post("dba", &review, json!({"comment": ""})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app
        .post("dba", &review, json!({"comment": "checked the rows; ok"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["review_owed"], Value::Null, "{body}");
    assert_eq!(body["reviews"][0]["reviewer"], "dba");
    let (status, body) = app.post("dba", &review, json!({"comment": "again"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, env) = app.get("dev", "/api/v1/environments/production").await;
    assert_eq!(env["owed_reviews"], json!([]));
    clock.advance(hour * 25);
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .review_reminders,
        0
    );
    // Delivered events are kept a week, then deleted; nothing undelivered ever is.
    while notifier.run_once().await.unwrap().handled() > 0 {}
    assert_eq!(service.send_scheduled_notices().await.unwrap().pruned, 0);
    clock.advance(hour * 24 * 8);
    let round = service.send_scheduled_notices().await.unwrap();
    assert!(round.pruned >= 20, "{round:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_test_message_reports_the_receivers_answer() {
    let http = Receiver::start().await;
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions::default(),
    )
    .await;
    let (status, body) = app
        .post("dev", "/api/v1/notifications/channels/chat/test", json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .post(
            "lead",
            "/api/v1/notifications/channels/nope/test",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body.to_string().contains("chat, audit") || body.to_string().contains("audit, chat"),
        "{body}"
    );
    let (status, body) = app
        .post(
            "lead",
            "/api/v1/notifications/channels/chat/test",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], true, "{body}");
    assert_eq!(body["answer"], "HTTP 200 OK: ok");
    http.set_mode(Mode::Status(503));
    let (_, body) = app
        .post(
            "admin",
            "/api/v1/notifications/channels/audit/test",
            json!({}),
        )
        .await;
    assert_eq!(body["delivered"], false, "{body}");
    assert!(body["answer"].as_str().unwrap().contains("503"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_cli_lists_undelivered_notifications_tests_channels_and_records_reviews() {
    use crate::cli::{ok, sluice};
    let http = Receiver::reserved().await; // down
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions::default(),
    )
    .await;
    let dir = std::env::temp_dir();
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/staging/lock",
            json!({"reason": "release freeze"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut listed = None;
    for _ in 0..100 {
        let run = sluice(&app, Some("dev"), &dir, &["notifications"]).await;
        ok(&run);
        if run.stdout.contains("last error: cannot connect") {
            listed = Some(run.stdout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = listed.expect("the pending notification with its error");
    assert!(
        listed.contains("[sluice][staging] environment locked"),
        "{listed}"
    );
    assert!(!listed.contains("SECRETPART"), "{listed}");
    let run = sluice(&app, Some("dev"), &dir, &["notifications", "--dead"]).await;
    ok(&run);
    assert!(
        run.stdout.contains("no dead notification"),
        "{}",
        run.stdout
    );

    // A test message while the receiver is down fails with exit 1 and says why.
    let run = sluice(&app, Some("lead"), &dir, &["notify", "test", "audit"]).await;
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(run.stdout.contains("NOT delivered"), "{}", run.stdout);
    http.up().await;
    let run = sluice(&app, Some("lead"), &dir, &["notify", "test", "audit"]).await;
    ok(&run);
    assert!(run.stdout.contains("audit: delivered"), "{}", run.stdout);
    let run = sluice(&app, Some("dev"), &dir, &["notify", "test", "audit"]).await;
    assert_eq!(run.code, 3, "not authorized: {}", run.stderr);
    assert!(
        run.stderr.contains("only a data_ops_lead or an admin"),
        "{}",
        run.stderr
    );
    wait_until_nothing_pending(&app).await;
    let run = sluice(&app, Some("dev"), &dir, &["notify", "channels"]).await;
    ok(&run);
    assert!(run.stdout.contains("chat"), "{}", run.stdout);
    assert!(run.stdout.contains("pending 0"), "{}", run.stdout);

    // An override owes a review; status says so until it is recorded.
    let id = app
        .submit(
            "dev",
            migration("Hotfix", "low", "CREATE TABLE cli_hotfix (id int);", None),
        )
        .await;
    let (status, body) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{id}@production/override"),
            json!({"reason": "outage"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = sluice(&app, Some("dev"), &dir, &["status", "production"]).await;
    ok(&run);
    assert!(run.stdout.contains("review owed"), "{}", run.stdout);
    assert!(run.stdout.contains("by dba"), "{}", run.stdout);
    let run = sluice(
        &app,
        Some("dba"),
        &dir,
        &["review", &id, "production", "looked at it; fine"],
    )
    .await;
    ok(&run);
    assert!(
        run.stdout.contains("no review is owed any more"),
        "{}",
        run.stdout
    );
    let run = sluice(&app, Some("dev"), &dir, &["status", "production"]).await;
    assert!(!run.stdout.contains("review owed"), "{}", run.stdout);
    app.stop().await;
}

#[tokio::test]
async fn freeze_windows_announce_their_start_and_end_once_on_a_sqlite_store() {
    let http = Receiver::start().await;
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions {
            backend: Backend::Sqlite,
            manual_clock: true,
            background_workers: false,
            edit_environments: Some(|text| with_freeze_window(text, &[PRODUCTION_SETTINGS_END])),
            ..AppOptions::default()
        },
    )
    .await;
    let clock = app.clock.clone().unwrap();
    let service = app.service().clone();
    let notifier = sluice::notify::Notifier::new(service.clone()).unwrap();
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .freeze_notices,
        1
    );
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .freeze_notices,
        0
    );
    clock.advance(chrono::Duration::hours(3));
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .freeze_notices,
        1
    );
    assert_eq!(
        service
            .send_scheduled_notices()
            .await
            .unwrap()
            .freeze_notices,
        0
    );
    while notifier.run_once().await.unwrap().handled() > 0 {}
    let kinds = kinds_once(&http.delivered(HOOK));
    assert_eq!(kinds, ["freeze_started", "freeze_ended"]);
    let started = &http.delivered(HOOK)[0];
    assert_eq!(started.json["environment"], "production");
    assert!(
        started.json["note"]
            .as_str()
            .unwrap()
            .contains("no deployment starts in production"),
        "{}",
        started.json
    );
    // Slack got both too, in order.
    let slack = http.delivered(SLACK);
    assert_eq!(slack.len(), 2);
    assert!(
        slack[0].json["text"]
            .as_str()
            .unwrap()
            .contains("freeze window started")
    );
    app.stop().await;
}

#[tokio::test]
async fn events_pending_when_the_daemon_is_killed_are_delivered_after_its_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    use crate::interrupted::{call, start_daemon};
    let (store, dev) = tokio::join!(
        TestDatabase::create("n9store"),
        TestDatabase::create("n9dev")
    );
    let http = Receiver::reserved().await; // down
    let dir = std::env::temp_dir().join(format!("sluice-n9-{}", dev.name));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let shipped = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    for file in ["sluice.yml", "environments.yml", "approval_matrix.yml"] {
        std::fs::copy(shipped.join(file), config.join(file)).unwrap();
    }
    std::fs::write(
        config.join("notifications.yml"),
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
    )
    .unwrap();
    let token = sluice::auth::new_token().unwrap();
    std::fs::write(
        config.join("users.yml"),
        format!(
            "users:\n  - name: dev\n    roles: [developer]\n    token_sha256: \"{}\"\n",
            sluice::auth::token_sha256(&token)
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let mut daemon = start_daemon(&config, &dir, &store.url, &dev.url);
    let (status, body) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/migrations", daemon.rest),
        &token,
        Some(migration(
            "killed",
            "low",
            "CREATE TABLE killed (id int);",
            None,
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    // Wait until delivery has been tried and failed, then kill the daemon outright.
    for _ in 0..200 {
        let (_, pending) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/api/v1/notifications", daemon.rest),
            &token,
            None,
        )
        .await;
        if pending.to_string().contains("applied") && pending.to_string().contains("cannot connect")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();

    http.up().await;
    let mut daemon = start_daemon(&config, &dir, &store.url, &dev.url);
    let hooks = http
        .wait_for(HOOK, "the events written before the kill", |r| {
            event_of(r, "applied", "development").is_some()
        })
        .await;
    let kinds = kinds_once(&hooks);
    assert_eq!(kinds[0..1], ["submitted"], "{kinds:?}");
    assert!(kinds.contains(&"started".to_string()), "{kinds:?}");
    assert_eq!(hooks.len(), kinds.len(), "each event once: {kinds:?}");
    assert!(
        hooks
            .iter()
            .all(|h| h.json["migration"]["id"] == id.as_str())
    );
    let _ = std::process::Command::new("kill")
        .arg(daemon.child.id().to_string())
        .status();
    daemon.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA and a certificate for localhost signed by it, as PEM files in `dir`: (ca, cert, key).
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

/// A `mail` channel trusting the private CA and an `unverified` one that does not, both to the
/// server on `port` with this `security`: the first delivers, the second sends nothing.
async fn mail_goes_only_to_a_server_whose_certificate_verifies(
    security: &str,
    port: u16,
    ca: &str,
    smtp: &SmtpSink,
) {
    let config = format!(
        "{FAST_DELIVERY}channels:\n  mail:\n    type: email\n    smtp_server: localhost:{port}\n    security: {security}\n    ca_file: {ca}\n    from: sluice@example.com\n    recipients: [ops@example.com]\n  unverified:\n    type: email\n    smtp_server: localhost:{port}\n    security: {security}\n    from: sluice@example.com\n    recipients: [ops@example.com]\n"
    );
    let app = spawn_with(config, AppOptions::default()).await;
    let (status, body) = app
        .post(
            "lead",
            "/api/v1/notifications/channels/mail/test",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], true, "{body}");
    assert!(
        body["answer"].as_str().unwrap().starts_with("SMTP 250"),
        "{body}"
    );
    let mails = smtp
        .wait_for(&format!("the test mail over {security}"), |m| !m.is_empty())
        .await;
    assert_eq!(mails[0].subject(), "[sluice][all] test message");
    assert_eq!(
        mails[0].to,
        ["ops@example.com", "lead@example.com"],
        "the channel's and the caller's"
    );

    // The same server without its CA trusted: nothing is sent, in the clear or otherwise.
    let (_, body) = app
        .post(
            "lead",
            "/api/v1/notifications/channels/unverified/test",
            json!({}),
        )
        .await;
    assert_eq!(body["delivered"], false, "{body}");
    let answer = body["answer"].as_str().unwrap();
    assert!(
        answer.to_lowercase().contains("certificate") || answer.contains("UnknownIssuer"),
        "{body}"
    );
    assert_eq!(smtp.mails().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn email_goes_over_starttls_and_only_to_a_server_whose_certificate_verifies() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
    let (ca, cert, key) = private_ca(&dir);
    let smtp = SmtpSink::start_tls(&cert, &key);
    mail_goes_only_to_a_server_whose_certificate_verifies("starttls", smtp.port, &ca, &smtp).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Implicit TLS (port 465): TLS from the first byte, through a TLS front to the plain sink.
#[tokio::test]
async fn email_goes_over_implicit_tls_and_only_to_a_server_whose_certificate_verifies() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("sluice-tls465-{}", std::process::id()));
    let (ca, cert, key) = private_ca(&dir);
    let smtp = SmtpSink::start();
    let port = crate::receivers::implicit_tls_front(&cert, &key, smtp.port).await;
    mail_goes_only_to_a_server_whose_certificate_verifies("tls", port, &ca, &smtp).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reviews_come_from_people_not_involved_and_concurrent_calls_end_coherently() {
    let http = Receiver::start().await;
    let app = spawn_with(
        format!("{FAST_DELIVERY}{}", channels(&http, None)),
        AppOptions::default(),
    )
    .await;
    // devlead writes the fix (and holds data_ops_lead); admin forces it through.
    let id = app
        .submit(
            "devlead",
            migration("Hotfix", "low", "CREATE TABLE involved (id int);", None),
        )
        .await;
    let deployment = format!("{id}@production");
    let (status, body) = app
        .post(
            "admin",
            &format!("/api/v1/deployments/{deployment}/override"),
            json!({"reason": "outage"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = app.deployment(&deployment).await;
    let owed: Vec<&str> = view["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(owed, ["data_ops_lead", "dba"], "{view}");
    let review = format!("/api/v1/deployments/{deployment}/review");
    // The author may not review their own emergency change, whatever roles they hold.
    let (status, body) = app
        .post("devlead", &review, json!({"comment": "my own fix is fine"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("author"), "{body}");
    assert_eq!(app.deployment(&deployment).await["review_owed"], true);

    // Two reviews of the same owed role at once: one is recorded, the other is told why not.
    let comment = json!({"comment": "checked"});
    let (first, second) = tokio::join!(
        app.post("dba", &review, comment.clone()),
        app.post("dba", &review, comment.clone()),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{first:?} {second:?}"
    );
    let (status, body) = app.post("lead", &review, comment.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = app.deployment(&deployment).await;
    assert_eq!(view["review_owed"], Value::Null, "{view}");
    assert_eq!(
        view["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reviewer"].is_string())
            .count(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn two_leads_requeueing_one_dead_notification_requeue_it_once() {
    let http = Receiver::start().await;
    http.set_mode(Mode::Status(400)); // refused: dead at once
    let app = spawn_with(
        format!(
            "{FAST_DELIVERY}channels:\n  audit:\n    type: webhook\n    url: {}\n    secret: {HMAC_KEY}\n",
            http.url(HOOK)
        ),
        AppOptions::default(),
    )
    .await;
    app.post(
        "lead",
        "/api/v1/environments/staging/lock",
        json!({"reason": "freeze"}),
    )
    .await;
    let mut dead = Value::Null;
    for _ in 0..300 {
        dead = app.get("dev", "/api/v1/notifications?state=dead").await.1;
        if !dead.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!("/api/v1/notifications/{}/retry", dead[0]["id"]);
    http.set_mode(Mode::Ok);
    let (first, second) = tokio::join!(
        app.post("lead", &path, json!({})),
        app.post("admin", &path, json!({})),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{first:?} {second:?}"
    );
    wait_until_nothing_pending(&app).await;
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    assert_eq!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "notification_requeued")
            .count(),
        1
    );
    assert_eq!(http.delivered(HOOK).len(), 1, "sent once after the requeue");
    app.stop().await;
}

/// An event of kind `kind` as a change would write it, for the store-level tests.
fn event(
    kind: sluice::domain::notice::NoticeKind,
    n: usize,
) -> sluice::service::notifications::Event {
    use sluice::service::notifications::{Event, Notice};
    Event {
        notice: Notice {
            event_id: format!("test-event-{n}"),
            kind,
            at: "2026-11-29T10:00:00.000Z".into(),
            actor: "lead".into(),
            environment: Some("production".into()),
            deployment_id: None,
            state: None,
            migration: None,
            approvals: Vec::new(),
            missing_roles: Vec::new(),
            deadline: None,
            error: None,
            reason: Some(format!("reason {n}")),
            link: None,
            commands: Vec::new(),
            recipients: Vec::new(),
            addresses: Vec::new(),
            note: None,
        },
        ordering_key: "environment:production".into(),
        risk: None,
        at: 1_800_000_000_000 + n as i64,
    }
}

async fn write_audit_with_event(
    store: &sluice::store::Store,
    conn: &mut sqlx::AnyConnection,
    n: usize,
) {
    let entry = sluice::store::AuditRow {
        id: 0,
        at: 1_800_000_000_000,
        actor: "lead".into(),
        action: "environment_locked".into(),
        environment: Some("production".into()),
        migration_id: None,
        deployment_id: None,
        detail: "{}".into(),
        events: None,
    };
    let entry = sluice::service::notifications::carrying(
        entry,
        &[event(
            sluice::domain::notice::NoticeKind::EnvironmentLocked,
            n,
        )],
    )
    .unwrap();
    store.insert_audit(conn, &entry).await.unwrap();
}

/// Events ride on the audit record of their change: the change writes no outbox row; the
/// fan-out moves them, a row per channel, exactly once, also when (PostgreSQL) a record with
/// a smaller id commits after a fan-out that took a larger one, and when two daemons fan out
/// at once.
#[tokio::test]
async fn events_ride_on_audit_records_and_each_is_fanned_out_once() {
    events_are_fanned_out_once(Backend::Postgres).await;
}

/// The same on the embedded store, where the fan-out keeps a cursor instead of clearing the
/// records (one writer commits them in id order).
#[tokio::test]
async fn events_ride_on_audit_records_and_each_is_fanned_out_once_on_a_sqlite_store() {
    events_are_fanned_out_once(Backend::Sqlite).await;
}

async fn events_are_fanned_out_once(backend: Backend) {
    let http = Receiver::start().await;
    let app = spawn_with(
        channels(&http, None),
        AppOptions {
            background_workers: false,
            backend,
            ..AppOptions::default()
        },
    )
    .await;
    let service = app.service().clone();
    let store = service.store.clone();
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/production/lock",
            json!({"reason": "incident 7"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    {
        let mut conn = store.conn().await.unwrap();
        assert!(
            store
                .outbox(&mut conn, "pending", 100)
                .await
                .unwrap()
                .is_empty(),
            "the change itself writes no outbox row"
        );
        let carried = store.unsent_audit_events(&mut conn, 10).await.unwrap();
        assert_eq!(carried.len(), 1, "{carried:?}");
        assert!(carried[0].1.contains("incident 7"), "{carried:?}");
    }

    if backend == Backend::Postgres {
        // A record that takes its id first but commits after a fan-out of a later one.
        let mut early = store.begin().await.unwrap();
        write_audit_with_event(&store, &mut early, 1).await;
        let mut late = store.begin().await.unwrap();
        write_audit_with_event(&store, &mut late, 2).await;
        late.commit().await.unwrap();
        assert_eq!(
            service.fan_out_events(100).await.unwrap(),
            2,
            "the lock and #2"
        );
        early.commit().await.unwrap();
        assert_eq!(
            service.fan_out_events(100).await.unwrap(),
            1,
            "#1, committed after the fan-out that took #2, is not skipped"
        );
    } else {
        // One writer: records commit in id order (#2 is written first here).
        let mut tx = store.begin().await.unwrap();
        write_audit_with_event(&store, &mut tx, 2).await;
        write_audit_with_event(&store, &mut tx, 1).await;
        tx.commit().await.unwrap();
        assert_eq!(service.fan_out_events(100).await.unwrap(), 3);
    }
    assert_eq!(service.fan_out_events(100).await.unwrap(), 0);

    // Two daemons fanning out at once, in small batches.
    {
        let mut tx = store.begin().await.unwrap();
        for n in 3..43 {
            write_audit_with_event(&store, &mut tx, n).await;
        }
        tx.commit().await.unwrap();
    }
    let fan = |service: sluice::service::Service| async move {
        let mut total = 0;
        loop {
            let n = service.fan_out_events(3).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    };
    let (a, b) = tokio::join!(fan(service.clone()), fan(service.clone()));
    assert_eq!(a + b, 40, "{a} + {b}");

    let mut conn = store.conn().await.unwrap();
    let rows = store.outbox(&mut conn, "pending", 1000).await.unwrap();
    let mut per_event: HashMap<(String, String), usize> = HashMap::new();
    for r in &rows {
        *per_event
            .entry((r.event_id.clone(), r.channel.clone()))
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), 43 * 2, "every event, once per channel");
    assert!(per_event.values().all(|n| *n == 1), "{per_event:?}");
    // Each channel's rows follow the events' order (their ordering key is one).
    for channel in ["chat", "audit"] {
        let order: Vec<usize> = rows
            .iter()
            .filter(|r| r.channel == channel && r.event_id.starts_with("test-event-"))
            .map(|r| r.event_id["test-event-".len()..].parse().unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order.len(), 42);
        // #1 committed last, so it follows #2; from #3 on the audit order holds.
        assert_eq!(&order[..2], &[2, 1], "{order:?}");
        assert_eq!(&order[2..], &sorted[2..], "{order:?}");
    }
    drop(conn);
    app.stop().await;
}

/// A failure halts its environment's queue: channels that list `queue_halted` (an incident
/// tool's webhook) hear it as an event of its own; a channel without an `events` list gets the
/// failure once, as `failed`, which says so.
#[tokio::test]
async fn a_failure_tells_the_channels_that_list_it_that_the_queue_is_halted() {
    const PAGER: &str = "/pager";
    let http = Receiver::start().await;
    let app = spawn_with(
        format!(
            "{FAST_DELIVERY}channels:\n  chat:\n    type: slack\n    url: {}\n  pager:\n    type: webhook\n    url: {}\n    secret: {HMAC_KEY}\n    events: [queue_halted]\n",
            http.url(SLACK),
            http.url(PAGER)
        ),
        AppOptions::default(),
    )
    .await;
    app.submit(
        "dev",
        migration("Halts", "low", "CREATE TABLE halts (id int);", None),
    )
    .await;
    let broken = app
        .submit(
            "dev",
            migration("Halts again", "low", "CREATE TABLE halts (id int);", None),
        )
        .await;
    app.wait_for_state(&format!("{broken}@development"), &["failed"])
        .await;
    http.wait_for(PAGER, "the halted queue", |r| !r.is_empty())
        .await;
    wait_until_nothing_pending(&app).await;
    let pages = http.delivered(PAGER);
    assert_eq!(pages.len(), 1, "the pager takes only queue_halted");
    let page = &pages[0];
    assert_eq!(page.header("x-sluice-event"), "queue_halted");
    assert_eq!(page.json["environment"], "development");
    assert_eq!(page.json["migration"]["id"], broken.as_str());
    assert!(
        page.json["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already exists"),
        "{}",
        page.json
    );
    assert!(
        page.json["note"]
            .as_str()
            .unwrap_or_default()
            .contains("until it is retried, rolled back or cancelled"),
        "{}",
        page.json
    );
    let chat = http.delivered(SLACK);
    let kinds: Vec<&str> = chat.iter().map(|r| r.header("x-sluice-event")).collect();
    assert!(kinds.contains(&"failed"), "{kinds:?}");
    assert!(!kinds.contains(&"queue_halted"), "{kinds:?}");
    app.stop().await;
}

/// Issue 19: `sluice notify test CHANNEL` reaches the channel it names and no other: with two
/// webhooks and a Slack channel on one receiver (a path each), each test message arrives once,
/// on its channel's path, shaped as that channel's type.
#[tokio::test]
async fn notify_test_reaches_the_named_channel_and_no_other() {
    use crate::cli::{ok, sluice};
    let http = Receiver::start().await;
    let second_hook = "/hook-two";
    let app = spawn_with(
        format!(
            "{FAST_DELIVERY}{}  audit2:\n    type: webhook\n    url: {}\n    secret: other-key\n",
            channels(&http, None),
            http.url(second_hook)
        ),
        AppOptions::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tests_on = |path: &str| {
        http.requests()
            .into_iter()
            .filter(|r| r.header("x-sluice-event") == "test" && r.path == path)
            .count()
    };
    let tests_in_all = || {
        http.requests()
            .into_iter()
            .filter(|r| r.header("x-sluice-event") == "test")
            .count()
    };
    for (channel, path, sent) in [
        ("audit2", second_hook, 1),
        ("chat", SLACK, 2),
        ("audit", HOOK, 3),
    ] {
        let run = sluice(&app, Some("lead"), dir.path(), &["notify", "test", channel]).await;
        ok(&run);
        assert!(
            run.stdout.contains(&format!("{channel}: delivered")),
            "{}",
            run.stdout
        );
        assert_eq!(tests_on(path), 1, "{channel} on {path}");
        assert_eq!(
            tests_in_all(),
            sent,
            "{channel}: only its own URL is called"
        );
    }
    // Each arrived in its channel's shape: Slack's text, the webhook's signed event.
    let slack = http
        .requests()
        .into_iter()
        .find(|r| r.path == SLACK && r.header("x-sluice-event") == "test")
        .unwrap();
    assert!(slack.json["text"].is_string(), "{}", slack.json);
    let hook = http
        .requests()
        .into_iter()
        .find(|r| r.path == HOOK && r.header("x-sluice-event") == "test")
        .unwrap();
    assert_eq!(hook.json["kind"], "test", "{}", hook.json);
    assert!(
        hook.header("x-sluice-signature").starts_with("sha256="),
        "{:?}",
        hook.headers
    );
    app.stop().await;
}
