//! The CLI's small edges found by trying it as a new user (issue 19): multi-line errors shown
//! as lines, a closed pipe, an address without a scheme, swapped arguments, JSON errors with the
//! API's code, JSON fields in REST's forms, test-rollback's default environment, `new`'s flags,
//! author and templates, `pending` after a cancel, and an emergency `migrate` naming its migration.

use crate::cli::{ok, sluice};
use crate::harness::{TestApp, migration, spawn_app};

/// Submits `up` (with a rollback) as dev over REST and waits for development to end.
async fn submitted(app: &TestApp, up: &str, down: Option<&str>, end: &[&str]) -> String {
    let id = app.submit("dev", migration("edges", "low", up, down)).await;
    app.wait_for_state(&format!("{id}@development"), end).await;
    id
}

#[tokio::test]
async fn show_prints_a_multi_line_error_as_lines() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let id = submitted(
        &app,
        "UPDATE nowhere SET x = 1 WHERE id = 1;",
        None,
        &["failed"],
    )
    .await;
    let error = app.deployment(&format!("{id}@development")).await["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains('\n'),
        "the case needs a multi-line error: {error}"
    );
    let shown = sluice(&app, Some("dev"), dir.path(), &["show", &id]).await;
    ok(&shown);
    assert!(!shown.stdout.contains("\\u{a}"), "{}", shown.stdout);
    let first = error.lines().next().unwrap();
    assert!(shown.stdout.contains(first), "{}", shown.stdout);
}

/// `sluice status | head`: the reader went away; the CLI ends quietly instead of panicking.
#[tokio::test]
async fn a_closed_pipe_ends_the_cli_quietly() {
    let app = spawn_app().await;
    let addr = format!("http://{}", app.running.as_ref().unwrap().grpc_addr);
    let token = app.token("dev").to_owned();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["status"])
            .env("SLUICE_ADDR", addr)
            .env("SLUICE_TOKEN", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reading end closes before the CLI has anything to print.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn an_address_without_a_scheme_is_read_as_http() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc = app.running.as_ref().unwrap().grpc_addr.to_string();
    let run = sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["--server", &grpc, "whoami"],
    )
    .await;
    ok(&run);
    assert!(
        run.stdout.contains(&format!("http://{grpc}")),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn swapped_arguments_are_a_usage_error_naming_the_order() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let id = "001_20240101_000000_swapped";
    for args in [
        vec!["retry", id, "development"],
        vec!["--yes", "cancel", id, "development"],
        vec!["--yes", "rollback", id, "development"],
        vec!["watch", id, "development"],
        vec!["show", "development", id],
        vec!["review", "development", id, "ok"],
    ] {
        let run = sluice(&app, Some("lead"), dir.path(), &args).await;
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("the other way round"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// `-o json` errors have one shape, with the API's code for what the daemon refused.
#[tokio::test]
async fn json_errors_carry_the_apis_code() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let error = |run: &crate::cli::Run| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", run.stdout, run.stderr));
        assert_eq!(v["error"]["exit_code"], run.code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        v["error"]["code"].clone()
    };
    let missing = sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["-o", "json", "show", "001_20240101_000000_nope"],
    )
    .await;
    assert_eq!(error(&missing), "not_found");
    let forbidden = sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["-o", "json", "lock", "production", "mine"],
    )
    .await;
    assert_eq!(error(&forbidden), "forbidden");
    let unlocked = sluice(
        &app,
        Some("lead"),
        dir.path(),
        &["-o", "json", "unlock", "staging"],
    )
    .await;
    assert_eq!(error(&unlocked), "conflict");
    let usage = sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["-o", "json", "audit", "--since", "soon"],
    )
    .await;
    assert_eq!(error(&usage), "invalid");
    let away = sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["-o", "json", "--server", "http://127.0.0.1:1", "whoami"],
    )
    .await;
    assert_eq!(error(&away), "unavailable");
}

/// JSON in REST's forms: a backup that preceded nothing has `preceded: null` (not ""), and a
/// watch event's state is `"state"` (not `"State"`).
#[tokio::test]
async fn backups_and_watch_events_in_rests_json_forms() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    ok(&sluice(&app, Some("lead"), dir.path(), &["backup", "staging"]).await);
    let cli = sluice(
        &app,
        Some("lead"),
        dir.path(),
        &["-o", "json", "backups", "staging"],
    )
    .await;
    ok(&cli);
    let cli: serde_json::Value = serde_json::from_str(&cli.stdout).unwrap();
    let (status, rest) = app
        .get("lead", "/api/v1/environments/staging/backups")
        .await;
    assert_eq!(status, 200, "{rest}");
    let mut found = Vec::new();
    crate::cli_json::differences("backups", &rest, &cli, &mut found);
    assert!(found.is_empty(), "{}", found.join("\n"));

    let id = submitted(&app, "CREATE TABLE watched (id int);", None, &["applied"]).await;
    let watched = sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["-o", "json", "watch", "development", &id],
    )
    .await;
    ok(&watched);
    let first: serde_json::Value =
        serde_json::from_str(watched.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["state"], "applied", "{}", watched.stdout);
}

/// Without an environment, test-rollback takes the first one where the migration is not
/// applied (development applied it at once, where the test can only fail).
#[tokio::test]
async fn test_rollback_defaults_to_the_first_environment_not_applied() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let id = submitted(
        &app,
        "CREATE TABLE tried (id int);",
        Some("DROP TABLE tried;"),
        &["applied"],
    )
    .await;
    let run = sluice(&app, Some("ops1"), dir.path(), &["test-rollback", &id]).await;
    ok(&run);
    assert!(
        run.stdout.contains(&format!("{id}@staging")),
        "{}",
        run.stdout
    );
}

/// Issue 19: a migration cancelled in development is withdrawn from every later environment,
/// so no approver is asked for it any more: `pending` lists it before the cancel and nowhere
/// after.
#[tokio::test]
async fn pending_no_longer_lists_a_migration_cancelled_in_development() {
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        background_workers: false,
        ..crate::harness::AppOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let id = app
        .submit(
            "dev",
            migration("withdrawn", "low", "CREATE TABLE withdrawn (id int);", None),
        )
        .await;
    // Staging waits for data_ops, production for data_ops_lead and dba.
    for approver in ["ops1", "lead", "dba"] {
        let run = sluice(&app, Some(approver), dir.path(), &["pending"]).await;
        ok(&run);
        assert!(run.stdout.contains(&id), "{approver}: {}", run.stdout);
    }
    ok(&sluice(
        &app,
        Some("dev"),
        dir.path(),
        &["cancel", "development", &id, "not needed", "--yes"],
    )
    .await);
    for approver in ["ops1", "lead", "dba"] {
        let run = sluice(&app, Some(approver), dir.path(), &["pending"]).await;
        ok(&run);
        assert!(!run.stdout.contains(&id), "{approver}: {}", run.stdout);
        let json = sluice(&app, Some(approver), dir.path(), &["pending", "-o", "json"]).await;
        ok(&json);
        assert_eq!(json.stdout.trim(), "[]", "{approver}");
    }
    app.stop().await;
}

/// Issue 19: `migrate ENV --force --emergency` overrode every deployment awaiting approval in
/// the environment. Now it overrides the one `--migration` names; with several waiting and none
/// named it refuses (exit 2) and prints the command for each, overriding nothing.
#[tokio::test]
async fn an_emergency_migrate_overrides_only_the_migration_it_names() {
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        background_workers: false,
        ..crate::harness::AppOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let urgent = app
        .submit(
            "dev",
            migration("urgent", "low", "CREATE TABLE urgent (id int);", None),
        )
        .await;
    let other = app
        .submit(
            "dev",
            migration("other", "low", "CREATE TABLE other (id int);", None),
        )
        .await;
    let forced = |extra: &'static [&'static str]| {
        let mut args = vec![
            "migrate",
            "production",
            "--force",
            "--emergency",
            "outage",
            "--yes",
        ];
        args.extend_from_slice(extra);
        args
    };
    let refused = sluice(&app, Some("lead"), dir.path(), &forced(&[])).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    for id in [&urgent, &other] {
        assert!(
            refused.stderr.contains(&format!(
                "sluice migrate production --force --emergency outage --migration {id}"
            )),
            "{}",
            refused.stderr
        );
    }
    for id in [&urgent, &other] {
        let d = app.deployment(&format!("{id}@production")).await;
        assert_eq!(d["state"], "awaiting_approval", "nothing overridden: {d}");
    }
    let args = [forced(&[]), vec!["--migration", urgent.as_str()]].concat();
    let run = sluice(&app, Some("lead"), dir.path(), &args).await;
    ok(&run);
    let d = app.deployment(&format!("{urgent}@production")).await;
    assert_eq!(d["emergency_reason"], "outage", "{d}");
    assert_ne!(d["state"], "awaiting_approval", "{d}");
    let d = app.deployment(&format!("{other}@production")).await;
    assert_eq!(d["state"], "awaiting_approval", "not carried along: {d}");
    assert!(d["emergency_reason"].is_null(), "{d}");
    app.stop().await;
}

/// `sluice new` as a script runs it: no terminal, $USER set, a token only when given.
async fn new_without_a_terminal(
    app: &TestApp,
    dir: &std::path::Path,
    user: Option<&str>,
    args: &[&str],
) -> crate::cli::Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("new")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .env("USER", "from-user-variable")
        .env(
            "SLUICE_ADDR",
            format!("http://{}", app.running.as_ref().unwrap().grpc_addr),
        )
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_CONTEXT");
    if let Some(user) = user {
        command.env("SLUICE_TOKEN", app.token(user));
    }
    let output = command.output().await.unwrap();
    crate::cli::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Issue 19: `new` reported one missing flag at a time, took the author from $USER even with a
/// token, and wrote PostgreSQL-only templates for the SQLite targets of the shipped config.
#[tokio::test]
async fn new_names_every_missing_flag_and_follows_the_token_and_the_targets() {
    let app = spawn_app().await; // PostgreSQL targets
    let dir = tempfile::tempdir().unwrap();
    // Every missing or invalid flag in one usage error; nothing written.
    let refused = new_without_a_terminal(
        &app,
        dir.path(),
        None,
        &["--risk", "HUGE", "--duration", "soon"],
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    for flag in ["--description", "--ticket", "--risk", "--duration"] {
        assert!(refused.stderr.contains(flag), "{flag}: {}", refused.stderr);
    }
    assert!(refused.stderr.contains("4 flags"), "{}", refused.stderr);
    assert!(!dir.path().join("scripts").exists());

    let created = |run: &crate::cli::Run| {
        ok(run);
        let script = run
            .stdout
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("created "))
            .unwrap();
        std::fs::read_to_string(dir.path().join(script)).unwrap()
    };
    let flags = ["--description", "Add prefs", "--ticket", "T-1"];
    // With a token: the author is the token's user, the template the targets' (PostgreSQL).
    let run = new_without_a_terminal(&app, dir.path(), Some("dev"), &flags).await;
    let text = created(&run);
    assert!(text.contains("-- Author: dev\n"), "{text}");
    assert!(text.contains("BIGSERIAL"), "{text}");
    assert!(run.stdout.contains("postgres"), "{}", run.stdout);
    // Offline (no token): $USER and SQLite, as the shipped environments.yml targets.
    let run = new_without_a_terminal(&app, dir.path(), None, &flags).await;
    let text = created(&run);
    assert!(text.contains("-- Author: from-user-variable\n"), "{text}");
    assert!(text.contains("id INTEGER PRIMARY KEY"), "{text}");
    assert!(!text.contains("BIGSERIAL"), "{text}");
    // --dialect and --author win over the daemon's answers.
    let with = [&flags[..], &["--dialect", "mysql", "--author", "carol"]].concat();
    let text = created(&new_without_a_terminal(&app, dir.path(), Some("dev"), &with).await);
    assert!(text.contains("-- Author: carol\n"), "{text}");
    assert!(text.contains("AUTO_INCREMENT"), "{text}");
    app.stop().await;
}

/// `sluice status ENV` says what someone must do before a waiting deployment moves on (the
/// daemon's `needs`): here a later migration waits behind a failure halting the queue.
#[tokio::test]
async fn status_says_what_a_waiting_deployment_needs_to_move_on() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let failed = submitted(
        &app,
        "UPDATE nowhere SET x = 1 WHERE id = 1;",
        None,
        &["failed"],
    )
    .await;
    let later = app
        .submit(
            "dev",
            migration("behind it", "low", "CREATE TABLE behind (id int);", None),
        )
        .await;
    let (_, status) = app.get("dev", "/api/v1/environments/development").await;
    let needs = status["queue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["migration_id"] == later.as_str())
        .and_then(|d| d["needs"].as_str())
        .unwrap_or_else(|| panic!("the daemon names what is needed: {status}"))
        .to_owned();
    let shown = sluice(&app, Some("dev"), dir.path(), &["status", "development"]).await;
    ok(&shown);
    assert!(
        shown.stdout.contains(&format!("to move on: {needs}")) && needs.contains(&failed),
        "{}",
        shown.stdout
    );
}
