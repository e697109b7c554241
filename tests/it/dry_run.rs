//! Dry runs (issue 9): a deployment's script applied in a transaction on its target and rolled
//! back before approval; the result is kept with the deployment and shown to approvers.

use crate::harness::{AppOptions, migration, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn statuses(run: &Value) -> Vec<&str> {
    run["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_dry_run_tries_the_script_rolls_it_back_and_shows_approvers_what_it_locks() {
    let app = spawn_app_with(AppOptions {
        background_workers: false,
        ..AppOptions::default()
    })
    .await;
    let db = &app.targets["staging"];
    let target = db.client().await;
    target
        .batch_execute("CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1), (2)")
        .await
        .unwrap();

    // Runs: every statement ok, the locks it took, nothing left behind.
    let good = app
        .submit(
            "dev",
            migration(
                "add note",
                "low",
                "-- keep notes\nALTER TABLE accounts ADD COLUMN note text;\nUPDATE accounts SET note = 'x' WHERE id > 0;",
                None,
            ),
        )
        .await;
    let deployment = format!("{good}@staging");
    let path = format!("/api/v1/deployments/{deployment}/dry-run");
    let (status, body) = app.post("dev", &path, json!({})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a developer outside development: {body}"
    );
    // An operator may not dry-run SQL they wrote where it needs approval: unreviewed SQL
    // (a function with effects outside the transaction) would run on the target.
    let own = app
        .submit(
            "lead",
            migration("lead's own", "low", "SELECT pg_sleep(0);", None),
        )
        .await;
    let own_path = format!("/api/v1/deployments/{own}@staging/dry-run");
    let (status, body) = app.post("lead", &own_path, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("wrote this migration"), "{body}");
    let (status, body) = app.post("dba", &own_path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, run) = app.post("dba", &path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["outcome"], "ok", "{run}");
    assert_eq!(statuses(&run), ["ok", "ok"], "{run}");
    assert_eq!(run["statements"][0]["line"], 2, "{run}");
    assert_eq!(run["by"], "dba");
    assert_eq!(run["stale"], false);
    let locks = run["locks"].as_array().unwrap();
    assert!(
        locks.iter().any(|l| l["relation"] == "public.accounts"
            && l["mode"] == "AccessExclusiveLock"
            && l["blocks"] == "reads and writes"),
        "{run}"
    );
    let note: i64 = target
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, 0, "the dry run was rolled back");
    let recorded: i64 = target
        .query_one("SELECT count(*) FROM sluice_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        recorded, 0,
        "a dry run is not recorded in the target's history"
    );

    // Kept with the deployment, shown where approvers look, and audited.
    let d = app.deployment(&deployment).await;
    assert_eq!(d["state"], "awaiting_approval");
    assert_eq!(d["dry_run"]["outcome"], "ok", "{d}");
    let (_, env) = app.get("dev", "/api/v1/environments/staging").await;
    let queued = env["queue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == deployment.as_str())
        .unwrap();
    assert_eq!(queued["dry_run"]["outcome"], "ok", "{env}");
    let (_, audit) = app.get("admin", "/api/v1/audit?environment=staging").await;
    assert!(audit.to_string().contains("\"dry_run\""), "{audit}");

    // The CLI: either order of the arguments; status --verbose shows it to approvers.
    let dir = std::env::temp_dir();
    let run = crate::cli::sluice(&app, Some("dba"), &dir, &["dry-run", &good, "staging"]).await;
    crate::cli::ok(&run);
    assert!(
        run.stdout
            .contains(&format!("dry run {deployment} by dba at "))
            && run.stdout.contains(": ok in ")
            && run.stdout.contains("statement 2 (line 3): ok")
            && run
                .stdout
                .contains("lock AccessExclusiveLock on public.accounts (blocks reads and writes)"),
        "{}",
        run.stdout
    );
    let run = crate::cli::sluice(&app, Some("dba"), &dir, &["dry-run", "staging", &good]).await;
    crate::cli::ok(&run);
    let run = crate::cli::sluice(
        &app,
        Some("tech"),
        &dir,
        &["status", "staging", "--verbose"],
    )
    .await;
    crate::cli::ok(&run);
    assert!(
        run.stdout
            .contains(&format!("      dry run {deployment} by dba at ")),
        "{}",
        run.stdout
    );

    // An amendment makes it stale.
    let (status, body) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{good}"),
            Some(json!({"up_sql": "ALTER TABLE accounts ADD COLUMN note2 text;"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.deployment(&deployment).await["dry_run"]["stale"], true);

    // Fails: the failing statement, and what was never reached.
    let bad = app
        .submit(
            "dev",
            migration(
                "broken",
                "low",
                "ALTER TABLE accounts ADD COLUMN x int;\nALTER TABLE missing ADD COLUMN y int;\nSELECT 1;",
                None,
            ),
        )
        .await;
    let (status, run) = app
        .post(
            "lead",
            &format!("/api/v1/deployments/{bad}@staging/dry-run"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["outcome"], "error", "{run}");
    assert_eq!(statuses(&run), ["ok", "error", "not_run"], "{run}");
    let cli = crate::cli::sluice(&app, Some("lead"), &dir, &["dry-run", &bad, "staging"]).await;
    assert_eq!(cli.code, 1, "{} {}", cli.stdout, cli.stderr);
    assert!(cli.stderr.contains("the dry run of"), "{}", cli.stderr);
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with("statement 2 (line 2): ") && error.contains("\"missing\""),
        "{error}"
    );
    // The lock statement 1 took (the failure let it go: it was noted before).
    assert!(
        run["locks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "public.accounts"),
        "{run}"
    );

    // A statement that cannot run in a transaction stops it: not dry-runnable, the rest not run.
    let partial = app
        .submit(
            "dev",
            migration(
                "index",
                "low",
                "CREATE TABLE t2 (id int);\nCREATE INDEX CONCURRENTLY t2_id ON t2 (id);\nINSERT INTO t2 VALUES (1);",
                None,
            ),
        )
        .await;
    let mut grpc = app.grpc().await;
    let run = grpc
        .dry_run(app.grpc_request(
            "lead",
            sluice::api::grpc::pb::DeploymentActionRequest {
                deployment_id: format!("{partial}@staging"),
                reason: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.outcome, "partial");
    let got: Vec<&str> = run.statements.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(got, ["ok", "not_dry_runnable", "not_run"]);
    assert!(
        run.statements[1]
            .reason
            .contains("cannot run inside a transaction block"),
        "{:?}",
        run.statements[1]
    );
    assert!(
        run.locks.iter().any(|l| l.relation == "public.t2"),
        "{run:?}"
    );

    // Refused: unknown, malformed, or a deployment that has run; a runner at work.
    let (status, _) = app
        .post(
            "lead",
            "/api/v1/deployments/001_20260101_000000_nope@staging/dry-run",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post("lead", "/api/v1/deployments/garbage/dry-run", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let status = grpc
        .dry_run(app.grpc_request(
            "lead",
            sluice::api::grpc::pb::DeploymentActionRequest {
                deployment_id: format!("{good}@nowhere"),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    app.targets["development"]
        .client()
        .await
        .batch_execute("CREATE TABLE accounts (id int)")
        .await
        .unwrap();
    app.run_worker("development").await;
    let (status, body) = app
        .post(
            "dev",
            &format!("/api/v1/deployments/{good}@development/dry-run"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("is applied"), "{body}");
    let runner = db.client().await;
    runner
        .batch_execute("SELECT pg_advisory_lock(7426010002)")
        .await
        .unwrap();
    let (status, body) = app.post("dba", &path, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("a runner is applying"), "{body}");
    drop(runner);

    // A dry run gives way to a lock holder like an apply does, and runs when it is gone.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; SELECT * FROM accounts")
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        blocker.batch_execute("COMMIT").await.unwrap();
    });
    let (status, run) = app.post("dba", &path, json!({})).await;
    release.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["outcome"], "ok", "{run}");
    assert_eq!(run["stale"], false, "{run}");
    assert!(
        run["log"].to_string().contains("a lock was not granted"),
        "{run}"
    );
    app.stop().await;
}
