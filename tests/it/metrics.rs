//! Prometheus metrics: `GET /metrics` after a real story (applied, failed, awaiting approval,
//! a lock), gauges derived from the store and the same after a restart, counters by bounded
//! labels (never an id).

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;

/// The value of the sample `name{labels}` (labels as the text format writes them, in order).
pub(crate) fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().unwrap())
}

pub(crate) async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

/// The gauges a store-derived scrape must show for the story below.
fn check_gauges(text: &str, applied: &str, failed: &str) {
    let env = |e: &str| format!("environment=\"{e}\"");
    assert_eq!(
        sample(
            text,
            "sluice_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "sluice_environment_locked", &env("production")),
        Some(1.0)
    );
    assert_eq!(
        sample(text, "sluice_environment_locked", &env("staging")),
        Some(0.0)
    );
    assert_eq!(
        sample(text, "sluice_environment_halted", &env("development")),
        Some(1.0)
    );
    assert_eq!(
        sample(text, "sluice_environment_halted", &env("staging")),
        Some(0.0)
    );
    assert_eq!(
        sample(text, "sluice_freeze_active", &env("production")),
        Some(0.0)
    );
    assert!(
        sample(
            text,
            "sluice_environment_locked_seconds",
            &env("production")
        )
        .unwrap()
            >= 0.0
    );
    assert_eq!(
        sample(text, "sluice_environment_locked_seconds", &env("staging")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            text,
            "sluice_deployment_overrun_seconds",
            &env("development")
        ),
        Some(0.0)
    );
    // Staging waits 72 h for approvals: the nearest deadline is hours away.
    assert!(
        sample(
            text,
            "sluice_next_approval_deadline_seconds",
            &env("staging")
        )
        .unwrap()
            > 3600.0
    );
    assert_eq!(
        sample(
            text,
            "sluice_next_approval_deadline_seconds",
            &env("development")
        ),
        None
    );
    assert_eq!(
        sample(text, "sluice_target_up", &env("development")),
        Some(1.0)
    );
    // Both migrations wait for approval in staging and production.
    assert_eq!(
        sample(text, "sluice_pending_approvals", &env("staging")),
        Some(2.0)
    );
    assert_eq!(
        sample(text, "sluice_pending_approvals", &env("production")),
        Some(2.0)
    );
    assert_eq!(
        sample(text, "sluice_pending_approvals", &env("development")),
        Some(0.0)
    );
    assert!(
        sample(
            text,
            "sluice_oldest_pending_approval_age_seconds",
            &env("staging")
        )
        .unwrap()
            >= 0.0
    );
    assert_eq!(
        sample(
            text,
            "sluice_queue_depth",
            "environment=\"development\",state=\"failed\""
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            "sluice_queue_depth",
            "environment=\"staging\",state=\"awaiting_approval\""
        ),
        Some(2.0)
    );
    // Labels are bounded: no migration or deployment id anywhere.
    assert!(!text.contains(applied) && !text.contains(failed), "{text}");
}

#[tokio::test]
async fn metrics_tell_the_story_and_the_gauges_survive_a_restart() {
    let mut app = spawn_app().await;
    let applied = app
        .submit(
            "dev",
            migration("Metrics ok", "low", "CREATE TABLE metered (id int);", None),
        )
        .await;
    app.wait_for_state(&format!("{applied}@development"), &["applied"])
        .await;
    let failed = app
        .submit(
            "dev",
            migration(
                "Metrics broken",
                "low",
                "CREATE TABLE metered (id int);",
                None,
            ),
        )
        .await;
    app.wait_for_state(&format!("{failed}@development"), &["failed"])
        .await;
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/environments/production/lock",
            json!({"reason": "metrics test"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let text = scrape(&app.base).await;
    check_gauges(&text, &applied, &failed);
    // Counters are per process (tests share one): at least this story's.
    for outcome in ["applied", "failed"] {
        let n = sample(
            &text,
            "sluice_deployments_total",
            &format!("environment=\"development\",outcome=\"{outcome}\""),
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{outcome}: {text}");
    }
    assert!(
        text.contains("sluice_deployment_duration_seconds_bucket{environment=\"development\""),
        "{text}"
    );
    let submits = sample(
        &text,
        "sluice_http_requests_total",
        "method=\"POST\",route=\"/api/v1/migrations\",status=\"201\"",
    )
    .or_else(|| {
        sample(
            &text,
            "sluice_http_requests_total",
            "route=\"/api/v1/migrations\",method=\"POST\",status=\"201\"",
        )
    });
    assert!(submits.unwrap_or(0.0) >= 2.0, "{text}");
    assert!(
        text.contains("sluice_http_request_duration_seconds_bucket"),
        "{text}"
    );

    // A restart: the gauges come from the store, not from counting since the start.
    app.running.take().unwrap().stop().await;
    let again = sluice::start(app.config.clone(), sluice::StartOptions::default())
        .await
        .unwrap();
    let text = scrape(&format!("http://{}", again.rest_addr)).await;
    check_gauges(&text, &applied, &failed);
    again.stop().await;
}

/// Counters and histograms of what happens: statements, approvals (submission to approval),
/// backups before applying, gRPC calls by method and code, notification attempts, the
/// workers' last rounds.
#[tokio::test]
async fn metrics_count_statements_approvals_backups_grpc_calls_and_notifications() {
    let http = crate::receivers::Receiver::start().await;
    let app = spawn_app_with(AppOptions {
        notifications: Some(format!(
            "delivery:\n  first_retry_seconds: 0.05\n  max_retry_seconds: 0.2\n  timeout_seconds: 0.5\nchannels:\n  hook:\n    type: webhook\n    url: {}\n    secret: metrics-secret\n",
            http.url("/hook")
        )),
        ..AppOptions::default()
    })
    .await;
    let id = app
        .submit(
            "dev",
            migration(
                "Counted",
                "low",
                "CREATE TABLE counted (id int);",
                Some("DROP TABLE counted;"),
            ),
        )
        .await;
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    let staging = format!("{id}@staging");
    app.approve("ops1", &staging, "data_ops").await;
    app.approve("ops2", &staging, "data_ops").await;
    app.wait_for_state(&staging, &["applied"]).await;
    http.wait_for("/hook", "the staging deployment's events", |r| {
        r.iter()
            .any(|r| r.header("x-sluice-event") == "applied" && r.json["environment"] == "staging")
    })
    .await;
    // Staging rolled back with the down script.
    let (status, body) = app
        .post(
            "dba",
            &format!("/api/v1/deployments/{staging}/rollback"),
            serde_json::json!({"reason": "metrics rollback"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rolled = app
        .wait_for_state(&staging, &["rolled_back", "failed"])
        .await;
    assert_eq!(rolled["state"], "rolled_back", "{rolled}");
    // One gRPC call that succeeds and one the server refuses.
    let mut client = app.grpc().await;
    client
        .get_environment_status(app.grpc_request(
            "dev",
            sluice::api::grpc::pb::GetEnvironmentStatusRequest {
                environment: "staging".into(),
            },
        ))
        .await
        .unwrap();
    let refused = client
        .get_environment_status(app.grpc_request(
            "dev",
            sluice::api::grpc::pb::GetEnvironmentStatusRequest {
                environment: "nowhere".into(),
            },
        ))
        .await
        .unwrap_err();

    let text = scrape(&app.base).await;
    let at_least_one = |prefix: &str| {
        let n: f64 = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(n >= 1.0, "{prefix}: {text}");
    };
    at_least_one("sluice_statement_duration_seconds_count{environment=\"staging\",outcome=\"ok\"}");
    at_least_one("sluice_deployments_total{environment=\"staging\",outcome=\"applied\"}");
    at_least_one("sluice_deployments_total{environment=\"staging\",outcome=\"rolled_back\"}");
    at_least_one("sluice_approval_wait_seconds_count{environment=\"staging\",role=\"data_ops\"}");
    at_least_one("sluice_backups_total{environment=\"staging\",outcome=\"taken\"}");
    at_least_one("sluice_backup_duration_seconds_count{environment=\"staging\"}");
    at_least_one("sluice_notification_attempts_total{channel=\"hook\",outcome=\"delivered\"}");
    at_least_one("sluice_grpc_requests_total{method=\"GetEnvironmentStatus\",code=\"Ok\"}");
    at_least_one(&format!(
        "sluice_grpc_requests_total{{method=\"GetEnvironmentStatus\",code=\"{:?}\"}}",
        refused.code()
    ));
    at_least_one("sluice_worker_last_round_timestamp_seconds{environment=\"staging\"}");
    assert_eq!(
        sample(&text, "sluice_notifications_dead", "channel=\"hook\""),
        Some(0.0)
    );
    // Every metric the Grafana dashboard and the alert rules name is one Sluice exports.
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["grafana/sluice.json", "prometheus/alerts.yml"] {
        let content = std::fs::read_to_string(root.join(file)).unwrap();
        let mut named = 0;
        for (i, _) in content.match_indices("sluice_") {
            let name: String = content[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name == "sluice_" {
                continue;
            }
            named += 1;
            assert!(
                exported.contains(name.as_str()),
                "{file} names {name}, which /metrics does not export: {exported:?}"
            );
        }
        assert!(named >= 8, "{file}: {named} metrics named");
    }
    app.stop().await;
}

/// `server.metrics_addr` moves /metrics off the REST port.
#[tokio::test]
async fn metrics_move_to_their_own_address_when_configured() {
    let app = spawn_app_with(AppOptions {
        edit_config: Some(|config| {
            config.settings.server.metrics_addr = Some("127.0.0.1:0".into());
        }),
        ..AppOptions::default()
    })
    .await;
    let (status, _) = app.get("dev", "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let addr = app.running.as_ref().unwrap().metrics_addr.unwrap();
    let text = scrape(&format!("http://{addr}")).await;
    assert!(text.contains("sluice_build_info"), "{text}");
    app.stop().await;
}
