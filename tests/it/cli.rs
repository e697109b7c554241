//! The `sluice` CLI end to end against the daemon on port 0 with PostgreSQL targets: the seed's
//! quick start (new, validate, submit, migrate, approve x2, status, lock/unlock, rollback) and
//! its exit codes.

use crate::harness::{TestApp, spawn_app};
use std::path::Path;

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) async fn sluice(app: &TestApp, user: Option<&str>, dir: &Path, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .current_dir(dir)
        .env(
            "SLUICE_ADDR",
            format!("http://{}", app.running.as_ref().unwrap().grpc_addr),
        )
        .env_remove("SLUICE_TOKEN");
    if let Some(user) = user {
        command.env("SLUICE_TOKEN", app.token(user));
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("the CLI finishes within a minute")
        .expect("the CLI runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub(crate) fn ok(run: &Run) {
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
}

#[tokio::test]
async fn the_seed_quick_start_through_the_cli() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let created = sluice(
        &app,
        None,
        &dir,
        &[
            "new",
            "--type",
            "SCHEMA_CHANGE",
            "--description",
            "Add user preferences table",
            "--risk",
            "LOW",
            "--duration",
            "5m",
            "--author",
            "dev",
            "--ticket",
            "PROJ-123",
        ],
    )
    .await;
    ok(&created);
    let script = created
        .stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("created "))
        .unwrap()
        .to_owned();
    assert!(
        script.contains("scripts/001_") && script.ends_with("_add_user_preferences_table.sql"),
        "{script}"
    );
    // The template as `new` wrote it is not a migration yet: validate says so, and passes
    // once the example is replaced (here by the seed's table).
    let untouched = sluice(&app, None, &dir, &["validate", &script]).await;
    assert_eq!(untouched.code, 1, "{}", untouched.stdout);
    assert!(
        untouched
            .stdout
            .contains("the template's example is still here")
            && untouched
                .stdout
                .contains("the template's rollback is still here"),
        "{}",
        untouched.stdout
    );
    let rollback = dir.join("rollbacks").join(format!(
        "{}_rollback.sql",
        std::path::Path::new(&script)
            .file_stem()
            .unwrap()
            .to_string_lossy()
    ));
    for file in [dir.join(&script), rollback] {
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("example_table", "user_preferences")).unwrap();
    }
    ok(&sluice(&app, None, &dir, &["validate", &script]).await);
    let five_minutes = sluice(
        &app,
        None,
        &dir,
        &[
            "new",
            "--type",
            "HOTFIX",
            "--description",
            "x",
            "--risk",
            "LOW",
            "--duration",
            "five minutes",
            "--author",
            "dev",
            "--ticket",
            "T-1",
        ],
    )
    .await;
    assert_eq!(five_minutes.code, 2, "{}", five_minutes.stderr);
    assert!(
        five_minutes
            .stderr
            .contains("\"five minutes\" is not a duration"),
        "{}",
        five_minutes.stderr
    );
    let edited = std::fs::read_to_string(dir.join(&script)).unwrap();
    let bad_duration = dir.join("bad_duration.sql");
    std::fs::write(
        &bad_duration,
        edited.replace(
            "-- Estimated-Duration: 5m",
            "-- Estimated-Duration: five minutes",
        ),
    )
    .unwrap();
    let refused = sluice(
        &app,
        None,
        &dir,
        &["validate", bad_duration.to_str().unwrap()],
    )
    .await;
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stdout
            .contains("Estimated-Duration: \"five minutes\" is not a duration"),
        "{}",
        refused.stdout
    );
    std::fs::remove_file(&bad_duration).unwrap();

    let submitted = sluice(&app, Some("dev"), &dir, &["submit", &script]).await;
    ok(&submitted);
    let id = submitted
        .stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_owned();
    assert!(id.starts_with("001_"), "{}", submitted.stdout);
    // The id is the one `new` wrote in the file's name and header.
    assert!(
        script.ends_with(&format!("scripts/{id}.sql")),
        "{script} vs {id}"
    );
    // Submitting the same file again changes nothing.
    let again = sluice(&app, Some("dev"), &dir, &["submit", &script]).await;
    ok(&again);
    assert!(
        again.stdout.contains(&format!("{id} unchanged")),
        "{}",
        again.stdout
    );

    ok(&sluice(
        &app,
        Some("dev"),
        &dir,
        &["migrate", "development", "--wait"],
    )
    .await);
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    assert!(app.table_exists("development", "user_preferences").await);
    // Watching a deployment that already rests prints its state and ends with its outcome.
    let watched = sluice(&app, Some("dev"), &dir, &["watch", "development", &id]).await;
    ok(&watched);
    assert!(
        watched
            .stdout
            .contains(&format!("{id}@development applied")),
        "{}",
        watched.stdout
    );

    // Approvals keep the seed's positional arguments; the approver must be the token's user.
    let impostor = sluice(
        &app,
        Some("ops1"),
        &dir,
        &["approve", &id, "data_ops", "ops2", "lgtm"],
    )
    .await;
    assert_eq!(impostor.code, 1, "{}", impostor.stderr);
    assert!(
        impostor.stderr.contains("is not the token's user (ops1)"),
        "{}",
        impostor.stderr
    );
    // Without a terminal an approval names the checksum of the scripts read.
    let checksum = app.deployment(&format!("{id}@staging")).await["checksum"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = sluice(
        &app,
        Some("ops1"),
        &dir,
        &[
            "approve",
            &id,
            "data_ops",
            "ops1",
            "lgtm",
            "--checksum",
            &checksum,
        ],
    )
    .await;
    ok(&first);
    assert!(
        first.stdout.contains("awaiting_approval") && first.stdout.contains("still needed"),
        "{}",
        first.stdout
    );
    ok(&sluice(
        &app,
        Some("ops2"),
        &dir,
        &[
            "approve",
            &id,
            "data_ops",
            "ops2",
            "ship it",
            "--checksum",
            &checksum,
        ],
    )
    .await);
    app.wait_for_state(&format!("{id}@staging"), &["applied"])
        .await;
    assert!(app.table_exists("staging", "user_preferences").await);

    let status = sluice(&app, Some("ops1"), &dir, &["status", "staging"]).await;
    ok(&status);
    assert!(
        status.stdout.contains(&format!("last applied {id}")),
        "{}",
        status.stdout
    );
    let production = sluice(
        &app,
        Some("lead"),
        &dir,
        &["status", "production", "--verbose"],
    )
    .await;
    ok(&production);
    assert!(
        production.stdout.contains("needs: data_ops_lead, dba"),
        "{}",
        production.stdout
    );

    ok(&sluice(
        &app,
        Some("lead"),
        &dir,
        &["lock", "production", "release freeze"],
    )
    .await);
    let locked = sluice(&app, Some("lead"), &dir, &["status", "production"]).await;
    assert!(
        locked.stdout.contains("locked by lead") && locked.stdout.contains("release freeze"),
        "{}",
        locked.stdout
    );
    let refused = sluice(&app, Some("lead"), &dir, &["migrate", "production"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("locked by lead"),
        "{}",
        refused.stderr
    );
    ok(&sluice(&app, Some("lead"), &dir, &["unlock", "production"]).await);

    // A rollback asks first; with no terminal to ask at it shows what would run and needs --yes.
    let unconfirmed = sluice(
        &app,
        Some("ops1"),
        &dir,
        &["rollback", "staging", &id, "--wait"],
    )
    .await;
    assert_eq!(unconfirmed.code, 2, "{}", unconfirmed.stderr);
    assert!(
        unconfirmed
            .stderr
            .contains(&format!("roll back {id}@staging (applied"))
            && unconfirmed.stderr.contains("| DROP TABLE")
            && unconfirmed.stderr.contains("add --yes"),
        "{}",
        unconfirmed.stderr
    );
    assert!(app.table_exists("staging", "user_preferences").await);
    let rollback = sluice(
        &app,
        Some("ops1"),
        &dir,
        &["rollback", "staging", &id, "--wait", "--yes"],
    )
    .await;
    ok(&rollback);
    assert!(!app.table_exists("staging", "user_preferences").await);

    let history = sluice(&app, Some("dev"), &dir, &["history"]).await;
    ok(&history);
    // A header, environments in promotion order, one column each.
    let header = history.stdout.lines().next().unwrap();
    assert!(header.starts_with("id "), "{}", history.stdout);
    let (dev, staging, prod) = (
        header.find("development").unwrap(),
        header.find("staging").unwrap(),
        header.find("production").unwrap(),
    );
    assert!(dev < staging && staging < prod, "{header}");
    let row = history
        .stdout
        .lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap();
    assert_eq!(
        row.get(staging..staging + 11),
        Some("rolled_back"),
        "{}",
        history.stdout
    );
    let whoami = sluice(&app, Some("dev"), &dir, &["whoami"]).await;
    ok(&whoami);
    assert!(whoami.stdout.contains("user     dev"), "{}", whoami.stdout);
    assert!(
        whoami.stdout.contains("roles    developer"),
        "{}",
        whoami.stdout
    );
    assert!(
        whoami.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        whoami.stdout
    );
    let audit = sluice(&app, Some("admin"), &dir, &["audit", "--migration", &id]).await;
    ok(&audit);
    assert!(
        audit.stdout.contains("rollback_requested"),
        "{}",
        audit.stdout
    );
    let json = sluice(
        &app,
        Some("dev"),
        &dir,
        &["--output", "json", "status", "development"],
    )
    .await;
    ok(&json);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed["last_applied"]["migration_id"], id.as_str());
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn exit_codes_tell_failure_usage_and_reach_apart() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("sluice-cli-codes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let bad = dir.join("scripts/001_20261125_000000_broken.sql");
    std::fs::write(
        &bad,
        "-- Type: HOTFIX\n-- Description: broken\n-- Risk: LOW\n-- Ticket: T-9\nINSERT INTO nowhere VALUES (1);\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    ok(&sluice(&app, None, &dir, &["validate", bad]).await);
    let submitted = sluice(&app, Some("dev"), &dir, &["submit", bad]).await;
    ok(&submitted);
    // The migration fails in development: --wait ends with exit code 1 and the database's error.
    let failed = sluice(
        &app,
        Some("dev"),
        &dir,
        &["migrate", "development", "--wait"],
    )
    .await;
    let id = submitted
        .stdout
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    app.wait_for_state(&format!("{id}@development"), &["failed"])
        .await;
    // Whether the deployment failed before `migrate` ran (auto_apply) or while --wait followed
    // it, the exit code is 1 and the database's error is told; before, an already failed
    // deployment gave "nothing to apply" and exit 0.
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("relation \"nowhere\" does not exist"),
        "{}",
        failed.stderr
    );
    // Run again now that it has failed: nothing can run, and it says why and what to do.
    let halted = sluice(
        &app,
        Some("dev"),
        &dir,
        &["migrate", "development", "--wait"],
    )
    .await;
    assert_eq!(halted.code, 1, "{}", halted.stderr);
    for expected in [
        "nothing can run: the queue is halted by",
        "relation \"nowhere\" does not exist",
        "sluice retry development",
        "sluice cancel development",
    ] {
        assert!(
            halted.stderr.contains(expected),
            "{expected}: {}",
            halted.stderr
        );
    }
    let status = sluice(
        &app,
        Some("dev"),
        &dir,
        &["status", "development", "--verbose"],
    )
    .await;
    assert!(status.stdout.contains("halted by"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("relation \"nowhere\" does not exist"),
        "{}",
        status.stdout
    );
    // Retrying without fixing fails again; skipping it (cancel) clears the halt.
    ok(&sluice(&app, Some("dev"), &dir, &["retry", "development", &id]).await);
    app.wait_for_state(&format!("{id}@development"), &["failed"])
        .await;
    // Cancel is a dangerous verb: without a terminal to confirm at, it needs --yes, says what
    // it would do, and changes nothing.
    let unconfirmed = sluice(
        &app,
        Some("dev"),
        &dir,
        &["cancel", "development", &id, "superseded"],
    )
    .await;
    assert_eq!(unconfirmed.code, 2, "{}", unconfirmed.stderr);
    assert!(
        unconfirmed
            .stderr
            .contains("the failed deployment is skipped")
            && unconfirmed.stderr.contains("add --yes"),
        "{}",
        unconfirmed.stderr
    );
    app.wait_for_state(&format!("{id}@development"), &["failed"])
        .await;
    ok(&sluice(
        &app,
        Some("dev"),
        &dir,
        &["cancel", "development", &id, "superseded", "--yes"],
    )
    .await);
    let cleared = sluice(&app, Some("dev"), &dir, &["status", "development"]).await;
    assert!(!cleared.stdout.contains("halted by"), "{}", cleared.stdout);

    let no_token = sluice(&app, None, &dir, &["status", "development"]).await;
    assert_eq!(no_token.code, 3, "{}", no_token.stderr);
    let wrong_role = sluice(&app, Some("dev"), &dir, &["lock", "production", "mine"]).await;
    assert_eq!(wrong_role.code, 3, "{}", wrong_role.stderr);
    assert!(
        wrong_role.stderr.starts_with("sluice: not authorized:"),
        "{}",
        wrong_role.stderr
    );
    let usage = sluice(&app, Some("dev"), &dir, &["approve", "only-one-arg"]).await;
    assert_eq!(usage.code, 2);
    let unknown_env = sluice(&app, Some("dev"), &dir, &["status", "prodution"]).await;
    assert_eq!(unknown_env.code, 1);
    assert!(
        unknown_env
            .stderr
            .contains("unknown environment \"prodution\""),
        "{}",
        unknown_env.stderr
    );
    assert!(
        unknown_env.stderr.contains("did you mean \"production\"?"),
        "{}",
        unknown_env.stderr
    );
    // Every command that names an environment or a role checks it the same way.
    let history = sluice(&app, Some("dev"), &dir, &["history", "prodution"]).await;
    assert_eq!(history.code, 1, "{}{}", history.stdout, history.stderr);
    assert!(
        history.stderr.contains("unknown environment \"prodution\"")
            && history.stderr.contains("did you mean \"production\"?"),
        "{}",
        history.stderr
    );
    let audit = sluice(
        &app,
        Some("dev"),
        &dir,
        &["audit", "--environment", "stagin"],
    )
    .await;
    assert_eq!(audit.code, 1, "{}{}", audit.stdout, audit.stderr);
    assert!(
        audit.stderr.contains("did you mean \"staging\"?"),
        "{}",
        audit.stderr
    );
    let role = sluice(
        &app,
        Some("ops1"),
        &dir,
        &[
            "approve",
            "001_20240101_000000_x",
            "dataops",
            "ops1",
            "fine",
        ],
    )
    .await;
    assert_eq!(role.code, 2, "{}", role.stderr);
    assert!(
        role.stderr.contains("unknown role \"dataops\"")
            && role.stderr.contains("did you mean \"data_ops\"?"),
        "{}",
        role.stderr
    );
    let invalid = dir.join("invalid.sql");
    std::fs::write(
        &invalid,
        "-- Type: HOTFIX\n-- Description: x\n-- Risk: LOW\n-- Ticket: T\nSELECT 'open;\n",
    )
    .unwrap();
    let findings = sluice(&app, None, &dir, &["validate", invalid.to_str().unwrap()]).await;
    assert_eq!(findings.code, 1);
    assert!(
        findings
            .stdout
            .contains("invalid.sql:5: unterminated string"),
        "{}",
        findings.stdout
    );
    let completions = sluice(&app, None, &dir, &["completions", "bash"]).await;
    ok(&completions);
    assert!(completions.stdout.contains("sluice"));

    let mut unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    let output = unreachable
        .args([
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "x",
            "status",
            "development",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach sluice at http://127.0.0.1:9 (connection refused); start it with \"sluice server\" or set SLUICE_ADDR"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

/// `validate` for CI: rule ids, line and column, the fix, `-- sluice:ignore` with its reason,
/// the rollback script linted too (dropping what the up script did not create), and the
/// findings as JSON, SARIF 2.1.0 and GitHub annotations.
#[tokio::test]
async fn validate_speaks_json_sarif_and_github_annotations() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("sluice-lint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("rollbacks")).unwrap();
    let script = "scripts/001_20261129_120000_prune.sql";
    std::fs::write(
        dir.join(script),
        "-- Type: DATA_MIGRATION\n-- Description: prune\n-- Risk: LOW\n-- Estimated-Duration: 5m\n-- Author: dev\n-- Ticket: T-1\n-- Rollback: rollbacks/prune_rollback.sql\n\
         ALTER TABLE users ADD COLUMN pruned boolean;\n\
         -- sluice:ignore sluice-unguarded-delete the table holds one settings row\n\
         DELETE FROM settings;\n\
         UPDATE users SET pruned = true;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rollbacks/prune_rollback.sql"),
        "ALTER TABLE users DROP COLUMN pruned;\nALTER TABLE users DROP COLUMN email;\n",
    )
    .unwrap();

    let table = sluice(&app, None, &dir, &["validate", script]).await;
    assert_eq!(table.code, 1, "{}", table.stdout);
    assert!(
        table.stdout.contains(&format!("{script}:11:1: HIGH risk: changes every row of a table (no WHERE clause) (raises the declared risk LOW to HIGH) [sluice-unguarded-update]"))
            && table.stdout.contains("    fix: add a WHERE clause")
            && table.stdout.contains("(ignored: the table holds one settings row)")
            && table.stdout.contains("rollbacks/prune_rollback.sql:2:1: HIGH risk: the rollback drops the column users.email"),
        "{}",
        table.stdout
    );

    let json = sluice(&app, None, &dir, &["validate", "--output", "json", script]).await;
    assert_eq!(json.code, 1);
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let update = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "sluice-unguarded-update")
        .unwrap();
    assert_eq!(update["line"], 11);
    assert_eq!(update["column"], 1);
    assert_eq!(update["severity"], "error");
    assert_eq!(update["risk"], "high");
    assert!(update["fix"].as_str().unwrap().contains("WHERE"));

    let sarif = sluice(&app, None, &dir, &["validate", "--output", "sarif", script]).await;
    assert_eq!(sarif.code, 1);
    let log: serde_json::Value = serde_json::from_str(&sarif.stdout).unwrap();
    assert_eq!(log["version"], "2.1.0");
    assert_eq!(log["runs"][0]["tool"]["driver"]["name"], "sluice");
    let results = log["runs"][0]["results"].as_array().unwrap();
    let ignored = results
        .iter()
        .find(|r| r["ruleId"] == "sluice-unguarded-delete")
        .unwrap();
    assert_eq!(ignored["level"], "note");
    assert_eq!(
        ignored["suppressions"][0]["justification"],
        "the table holds one settings row"
    );
    let location = &results
        .iter()
        .find(|r| r["ruleId"] == "sluice-down-drops-data")
        .unwrap()["locations"][0]["physicalLocation"];
    assert_eq!(
        location["artifactLocation"]["uri"],
        "rollbacks/prune_rollback.sql"
    );
    assert_eq!(location["region"]["startLine"], 2);
    assert!(
        log["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "sluice-unguarded-update")
    );

    let github = sluice(
        &app,
        None,
        &dir,
        &["validate", "--output", "github", script],
    )
    .await;
    assert_eq!(github.code, 1);
    assert!(
        github.stdout.lines().any(|l| l.starts_with(&format!(
            "::error file={script},line=11,col=1,title=sluice-unguarded-update::HIGH risk: changes every row"
        ))),
        "{}",
        github.stdout
    );
    assert!(
        github.stdout.lines().any(|l| l.starts_with("::notice ")
            && l.contains("Ignored: the table holds one settings row")),
        "{}",
        github.stdout
    );

    // Only validate speaks SARIF.
    let usage = sluice(
        &app,
        Some("dev"),
        &dir,
        &["status", "staging", "--output", "sarif"],
    )
    .await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(
        usage.stderr.contains("are for `sluice validate`"),
        "{}",
        usage.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

/// `sluice submit` sends every file in one batch: one refused file submits none, and the error
/// names the file.
#[tokio::test]
async fn submit_sends_a_folder_as_one_batch_and_names_the_refused_file() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("sluice-batch-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let header = |id: &str| {
        format!(
            "-- Migration: {id}\n-- Type: SCHEMA_CHANGE\n-- Description: {id}\n-- Risk: LOW\n-- Estimated-Duration: 1m\n-- Ticket: T-1\n"
        )
    };
    let good = "scripts/001_20240101_000000_good.sql";
    let bad = "scripts/002_20240102_000000_bad.sql";
    std::fs::write(
        dir.join(good),
        header("001_20240101_000000_good") + "CREATE TABLE good (id int);\n",
    )
    .unwrap();
    std::fs::write(
        dir.join(bad),
        header("002_20240102_000000_bad") + "CREATE TABLE bad (id int);\nROLLBACK;\n",
    )
    .unwrap();
    let run = sluice(&app, Some("dev"), &dir, &["submit", good, bad]).await;
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{bad} (002_20240102_000000_bad): up_sql: line 8")),
        "{}",
        run.stderr
    );
    let (_, list) = app.get("dev", "/api/v1/migrations").await;
    assert!(
        !list.to_string().contains("001_20240101_000000_good"),
        "{list}"
    );
    std::fs::write(
        dir.join(bad),
        header("002_20240102_000000_bad") + "CREATE TABLE bad (id int);\n",
    )
    .unwrap();
    let run = sluice(&app, Some("dev"), &dir, &["submit", good, bad]).await;
    ok(&run);
    assert!(
        run.stdout
            .contains(&format!("{good}: submitted as 001_20240101_000000_good"))
            && run
                .stdout
                .contains(&format!("{bad}: submitted as 002_20240102_000000_bad")),
        "{}",
        run.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

/// `sluice import` reads golang-migrate, Flyway and dbmate folders as the tools write them
/// (no header), keeps each version in its id and applies them in the source's order; a
/// second import changes nothing.
#[tokio::test]
async fn import_reads_golang_migrate_flyway_and_dbmate_folders() {
    let app = spawn_app().await;
    let root = std::env::temp_dir().join(format!("sluice-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let write = |dir: &str, name: &str, text: &str| {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(name), text).unwrap();
    };
    // golang-migrate: version 10 after 9 (numeric order), an empty down.
    write(
        "gm",
        "000009_create_users.up.sql",
        "CREATE TABLE gm_users (id int);\n",
    );
    write(
        "gm",
        "000009_create_users.down.sql",
        "DROP TABLE gm_users;\n",
    );
    write(
        "gm",
        "000010_add_email.up.sql",
        "ALTER TABLE gm_users ADD COLUMN email text;\n",
    );
    write("gm", "000010_add_email.down.sql", "");
    // Flyway: 1.10 after 1.9, an undo script, a comment-only migration, a repeatable left out.
    write("fw", "V1.9__init.sql", "CREATE TABLE fw_items (id int);\n");
    write(
        "fw",
        "V1_10__Add_name.sql",
        "ALTER TABLE fw_items ADD COLUMN name text;\n",
    );
    write(
        "fw",
        "U1_10__Add_name.sql",
        "ALTER TABLE fw_items DROP COLUMN name;\n",
    );
    write("fw", "V2__placeholder.sql", "-- intentionally empty\n");
    write(
        "fw",
        "R__views.sql",
        "CREATE OR REPLACE VIEW v AS SELECT 1;\n",
    );
    // dbmate: sections, transaction:false.
    write(
        "db",
        "20240105120000_create_things.sql",
        "-- migrate:up\nCREATE TABLE db_things (id int);\n\n-- migrate:down\nDROP TABLE db_things;\n",
    );
    write(
        "db",
        "20240106120000_index_things.sql",
        "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY db_things_id ON db_things (id);\n\n-- migrate:down\nDROP INDEX db_things_id;\n",
    );
    for (dir, format, ids) in [
        (
            "gm",
            "golang-migrate",
            vec!["V000009__create_users", "V000010__add_email"],
        ),
        (
            "fw",
            "flyway",
            vec!["V1.9__init", "V1.10__add_name", "V2__placeholder"],
        ),
        (
            "db",
            "dbmate",
            vec![
                "V20240105120000__create_things",
                "V20240106120000__index_things",
            ],
        ),
    ] {
        let run = sluice(&app, Some("dev"), &root, &["import", dir]).await;
        ok(&run);
        assert!(
            run.stdout.contains(&format!(
                "imported {} {format} migrations from {dir}: {} created, 0 unchanged",
                ids.len(),
                ids.len()
            )),
            "{}",
            run.stdout
        );
        for id in &ids {
            app.wait_for_state(&format!("{id}@development"), &["applied"])
                .await;
        }
        let again = sluice(&app, Some("dev"), &root, &["import", dir]).await;
        ok(&again);
        assert!(again.stdout.contains("0 created"), "{}", again.stdout);
    }
    let fw = sluice(&app, Some("dev"), &root, &["import", "fw"]).await;
    assert!(
        fw.stderr
            .contains("R__views.sql: not a flyway migration, left out"),
        "{}",
        fw.stderr
    );
    let m = app.get("dev", "/api/v1/migrations/V1.10__add_name").await.1;
    assert_eq!(
        m["down_sql"], "ALTER TABLE fw_items DROP COLUMN name;\n",
        "{m}"
    );
    let m = app
        .get("dev", "/api/v1/migrations/V000010__add_email")
        .await
        .1;
    assert_eq!(m["down_sql"], "", "an empty down: nothing to undo: {m}");
    assert!(app.table_exists("development", "db_things").await);
    let unknown = sluice(&app, Some("dev"), &root, &["import", "."]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("cannot tell the format"),
        "{}",
        unknown.stderr
    );
    let _ = std::fs::remove_dir_all(&root);
    app.stop().await;
}

/// `validate` reads every statement with PostgreSQL's grammar: the typos the issue found
/// (`SELEC 1`, `CREAT TABLE`, `(id int,,`, an unclosed parenthesis) fail with their line and
/// column, in the up and in the rollback script; a real-world script passes.
#[tokio::test]
async fn validate_finds_syntax_errors_with_line_and_column() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("sluice-cli-syntax-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let header = "-- Type: SCHEMA_CHANGE\n-- Description: x\n-- Risk: LOW\n-- Ticket: T-1\n";
    for (name, body, expected) in [
        ("selec.sql", "SELEC 1;\n", "selec.sql:5:1: syntax error"),
        (
            "creat.sql",
            "SELECT 1;\nCREAT TABLE t (id int);\n",
            "creat.sql:6:1: syntax error",
        ),
        (
            "commas.sql",
            "CREATE TABLE t (id int,, name text);\n",
            "commas.sql:5:",
        ),
        (
            "paren.sql",
            "CREATE TABLE t (\n  id int\n;\n",
            "paren.sql:6:",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, format!("{header}{body}")).unwrap();
        let run = sluice(&app, None, &dir, &["validate", path.to_str().unwrap()]).await;
        assert_eq!(run.code, 1, "{name}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains(expected) && run.stdout.contains("syntax error"),
            "{name}: {}",
            run.stdout
        );
    }
    // The rollback script is read too, under its own name.
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("rollbacks")).unwrap();
    let up = dir.join("scripts").join("with_down.sql");
    std::fs::write(&up, format!("{header}CREATE TABLE t (id int);\n")).unwrap();
    std::fs::write(
        dir.join("rollbacks").join("with_down_rollback.sql"),
        "DROP TABEL t;\n",
    )
    .unwrap();
    let run = sluice(&app, None, &dir, &["validate", up.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("with_down_rollback.sql:1:") && run.stdout.contains("syntax error"),
        "{}",
        run.stdout
    );
    let good = dir.join("good.sql");
    std::fs::write(
        &good,
        format!(
            "{header}-- a comment; with a semicolon\nCREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);\nDO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN CREATE TYPE mood AS ENUM ('ok'); END IF; END $$;\nCREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN NEW.email := lower(NEW.email); RETURN NEW; END $fn$;\nCOMMENT ON TABLE users IS 'people; really';\n"
        ),
    )
    .unwrap();
    ok(&sluice(&app, None, &dir, &["validate", good.to_str().unwrap()]).await);

    // SQLite scripts (the default configuration's targets): a trigger's body is read as
    // SQLite reads it; PostgreSQL's grammar refuses the same file.
    let sqlite = dir.join("sqlite.sql");
    std::fs::write(
        &sqlite,
        format!("{header}CREATE TABLE o (id INTEGER PRIMARY KEY AUTOINCREMENT);\nCREATE TRIGGER o_logged AFTER INSERT ON o\nBEGIN\n  INSERT INTO o_log VALUES (new.id);\nEND;\n"),
    )
    .unwrap();
    let sqlite = sqlite.to_str().unwrap();
    ok(&sluice(
        &app,
        None,
        &dir,
        &["validate", "--dialect", "sqlite", sqlite],
    )
    .await);
    let as_pg = sluice(&app, None, &dir, &["validate", sqlite]).await;
    assert_eq!(as_pg.code, 1, "{}", as_pg.stdout);

    // MySQL scripts: typos fail with line and column; what sqlparser's MySQL grammar does not
    // read (VARCHAR ... BINARY, ENGINE=) is shown and does not fail.
    let mysql = dir.join("mysql.sql");
    std::fs::write(
        &mysql,
        format!("{header}CREATE TABLE m (id int, name VARCHAR(10) BINARY) ENGINE=InnoDB;\nALTER TABLE m ENGINE=InnoDB;\n"),
    )
    .unwrap();
    let lagging = sluice(
        &app,
        None,
        &dir,
        &["validate", "--dialect", "mysql", mysql.to_str().unwrap()],
    )
    .await;
    ok(&lagging);
    assert!(
        lagging.stdout.contains("not read by the MySQL grammar")
            && lagging.stdout.contains("not counted"),
        "{}",
        lagging.stdout
    );
    std::fs::write(
        &mysql,
        format!("{header}CREAT TABLE m (id int);\nINSERT INTO m VALUES (1,, 2);\n"),
    )
    .unwrap();
    let typos = sluice(
        &app,
        None,
        &dir,
        &["validate", "--dialect", "mysql", mysql.to_str().unwrap()],
    )
    .await;
    assert_eq!(typos.code, 1, "{}", typos.stdout);
    let lines = header.lines().count();
    for expected in [
        format!(
            "mysql.sql:{}:1: syntax error: \"CREAT\" starts no MySQL statement; did you mean \"CREATE\"?",
            lines + 1
        ),
        format!(
            "mysql.sql:{}:25: syntax error: an empty item in a list",
            lines + 2
        ),
    ] {
        assert!(
            typos.stdout.contains(&expected),
            "{expected}: {}",
            typos.stdout
        );
    }
    app.stop().await;
}

/// The CLI pointed at the REST port says so, and exits 3 ("cannot reach"), instead of
/// "protocol error: received message with invalid compression flag: 123" with exit 1.
#[tokio::test]
async fn the_cli_pointed_at_the_rest_port_says_so() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "--server",
            &app.base,
            "--token",
            app.token("dev"),
            "status",
            "development",
        ])
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("REST port"), "{stderr}");
    assert!(stderr.contains("50051"), "{stderr}");
    app.stop().await;
}

/// `sluice show`: everything about a migration, per environment; `--log` with the NOTICEs a
/// finished deployment left; errors with the failing statement; JSON that parses.
#[tokio::test]
async fn show_describes_a_migration_with_its_log_and_errors() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("sluice-cli-show-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shown = app
        .submit(
            "dev",
            crate::harness::migration(
                "shown",
                "low",
                "CREATE TABLE shown (id int);\nDO $$ BEGIN RAISE NOTICE 'copied % rows', 3; END $$;",
                Some("DROP TABLE shown;"),
            ),
        )
        .await;
    let broken = app
        .submit(
            "dev",
            crate::harness::migration("broken", "low", "SELECT 1;\nSELECT 1/0;", None),
        )
        .await;
    app.wait_for_state(&format!("{shown}@development"), &["applied"])
        .await;
    app.wait_for_state(&format!("{broken}@development"), &["failed"])
        .await;

    let all = sluice(&app, Some("dev"), &dir, &["show", &shown]).await;
    ok(&all);
    for expected in [
        format!("migration    {shown}"),
        "development  applied".to_owned(),
        "staging  awaiting_approval".to_owned(),
        "needs        data_ops".to_owned(),
        "rollback     yes".to_owned(),
    ] {
        assert!(all.stdout.contains(&expected), "{expected}: {}", all.stdout);
    }
    assert!(!all.stdout.contains("copied 3 rows"), "{}", all.stdout);
    let logged = sluice(
        &app,
        Some("dev"),
        &dir,
        &["show", &shown, "development", "--log"],
    )
    .await;
    ok(&logged);
    assert!(logged.stdout.contains("copied 3 rows"), "{}", logged.stdout);
    assert!(!logged.stdout.contains("staging"), "{}", logged.stdout);

    let failed = sluice(&app, Some("dev"), &dir, &["show", &broken, "development"]).await;
    ok(&failed);
    assert!(
        failed.stdout.contains("development  failed"),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains("division by zero") && failed.stdout.contains("statement 2"),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains("none: not undoable"),
        "{}",
        failed.stdout
    );

    let json = sluice(
        &app,
        Some("dev"),
        &dir,
        &["-o", "json", "show", &shown, "--log"],
    )
    .await;
    ok(&json);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed["id"], shown.as_str());
    assert_eq!(parsed["deployments"].as_array().unwrap().len(), 3);

    let unknown = sluice(&app, Some("dev"), &dir, &["show", &shown, "prodution"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("did you mean \"production\"?"),
        "{}",
        unknown.stderr
    );
    let missing = sluice(
        &app,
        Some("dev"),
        &dir,
        &["show", "001_20200101_000000_nothing"],
    )
    .await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no migration"),
        "{}",
        missing.stderr
    );
    app.stop().await;
}

/// `audit` shows the newest first, so that `--limit` keeps the recent activity; `--since` and
/// `--until` bound it (durations or RFC 3339); each record's detail is a column. REST takes
/// `order=desc`, `since`, `until`, `before_id`, naming a bad value.
#[tokio::test]
async fn audit_lists_the_newest_first_within_since_and_until() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir();
    for reason in ["first lock", "second lock", "third lock"] {
        let (status, body) = app
            .post(
                "lead",
                "/api/v1/environments/staging/lock",
                serde_json::json!({"reason": reason}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        let (status, _) = app
            .delete("lead", "/api/v1/environments/staging/lock")
            .await;
        assert_eq!(status, reqwest::StatusCode::OK);
    }
    let recent = sluice(
        &app,
        Some("dev"),
        &dir,
        &["audit", "--environment", "staging", "--limit", "2"],
    )
    .await;
    ok(&recent);
    let lines: Vec<&str> = recent.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", recent.stdout);
    assert!(
        lines[0].trim_start().starts_with("id  at "),
        "{}",
        recent.stdout
    );
    assert!(
        lines[1].contains("environment_unlocked"),
        "{}",
        recent.stdout
    );
    assert!(
        lines[2].contains("environment_locked") && lines[2].contains("reason=third lock"),
        "{}",
        recent.stdout
    );
    // --after the id of the last lock: what came since, oldest first (the unlock).
    let third_lock = lines[2].split_whitespace().next().unwrap();
    let since = sluice(
        &app,
        Some("dev"),
        &dir,
        &["audit", "--environment", "staging", "--after", third_lock],
    )
    .await;
    ok(&since);
    let after: Vec<&str> = since.stdout.lines().skip(1).collect();
    assert_eq!(after.len(), 1, "{}", since.stdout);
    assert!(
        after[0].contains("environment_unlocked"),
        "{}",
        since.stdout
    );
    let oldest = sluice(
        &app,
        Some("dev"),
        &dir,
        &[
            "audit",
            "--environment",
            "staging",
            "--limit",
            "1",
            "--oldest-first",
        ],
    )
    .await;
    ok(&oldest);
    assert!(
        oldest.stdout.contains("reason=first lock"),
        "{}",
        oldest.stdout
    );
    let none = sluice(
        &app,
        Some("dev"),
        &dir,
        &["audit", "--environment", "staging", "--until", "1h"],
    )
    .await;
    ok(&none);
    assert!(
        none.stdout.contains("no audit record matches"),
        "{}",
        none.stdout
    );
    let since = sluice(
        &app,
        Some("dev"),
        &dir,
        &["audit", "--environment", "staging", "--since", "10m"],
    )
    .await;
    ok(&since);
    assert_eq!(since.stdout.lines().count(), 7, "{}", since.stdout);
    let bad = sluice(&app, Some("dev"), &dir, &["audit", "--since", "yesterday"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--since yesterday"), "{}", bad.stderr);

    let (status, newest) = app
        .get(
            "dev",
            "/api/v1/audit?environment=staging&order=desc&limit=1",
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{newest}");
    assert_eq!(newest[0]["action"], "environment_unlocked");
    let id = newest[0]["id"].as_i64().unwrap();
    let (_, before) = app
        .get(
            "dev",
            &format!("/api/v1/audit?environment=staging&order=desc&limit=1&before_id={id}"),
        )
        .await;
    assert_eq!(before[0]["action"], "environment_locked", "{before}");
    assert_eq!(before[0]["detail"]["reason"], "third lock", "{before}");
    let (status, refused) = app.get("dev", "/api/v1/audit?since=yesterday").await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since: "),
        "{refused}"
    );
    let (status, refused) = app.get("dev", "/api/v1/audit?order=sideways").await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "{refused}"
    );
    app.stop().await;
}

/// With `--output json` stdout is one JSON document whatever happens: an error is
/// `{"error": {"code", "exit_code", "message"}}`, and `migrate --wait` with nothing to apply
/// prints the API's answer.
#[tokio::test]
async fn json_output_is_json_for_errors_and_empty_migrations_too() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir();
    let failed = sluice(
        &app,
        Some("dev"),
        &dir,
        &["-o", "json", "status", "prodution"],
    )
    .await;
    assert_eq!(failed.code, 1);
    let error: serde_json::Value =
        serde_json::from_str(&failed.stdout).unwrap_or_else(|e| panic!("{e}: {}", failed.stdout));
    assert_eq!(error["error"]["code"], "not_found");
    assert_eq!(error["error"]["exit_code"], 1);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown environment \"prodution\""),
        "{error}"
    );
    let denied = sluice(&app, None, &dir, &["-o", "json", "status", "development"]).await;
    let error: serde_json::Value = serde_json::from_str(&denied.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", denied.stdout, denied.stderr));
    assert_eq!(error["error"]["exit_code"], denied.code);
    let nothing = sluice(
        &app,
        Some("lead"),
        &dir,
        &["-o", "json", "migrate", "development", "--wait"],
    )
    .await;
    ok(&nothing);
    let parsed: serde_json::Value =
        serde_json::from_str(&nothing.stdout).unwrap_or_else(|e| panic!("{e}: {}", nothing.stdout));
    assert_eq!(parsed["environment"], "development", "{parsed}");
    app.stop().await;
}

/// `sluice status` without an environment: a line per environment in promotion order, saying
/// what holds each (here a lock) and how many wait.
#[tokio::test]
async fn status_without_an_environment_gives_a_line_each() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir();
    ok(&sluice(
        &app,
        Some("lead"),
        &dir,
        &["lock", "staging", "quarter close"],
    )
    .await);
    let all = sluice(&app, Some("dev"), &dir, &["status"]).await;
    ok(&all);
    let lines: Vec<&str> = all.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", all.stdout);
    assert!(lines[0].starts_with("environment "), "{}", all.stdout);
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["development", "staging", "production"]);
    assert!(
        lines[2].contains("locked") && lines[2].contains("by lead: quarter close"),
        "{}",
        all.stdout
    );
    assert!(lines[1].contains(" ok "), "{}", all.stdout);
    let json = sluice(&app, Some("dev"), &dir, &["-o", "json", "status"]).await;
    ok(&json);
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(list[1]["lock"]["reason"], "quarter close", "{list}");
}

/// `sluice pending`: what awaits the caller's approval, across environments, with the command
/// to give it; gone once they approved.
#[tokio::test]
async fn pending_lists_what_awaits_the_callers_approval() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("scripts/001_20261129_000000_inbox.sql"),
        "-- Migration: 001_20261129_000000_inbox\n-- Type: SCHEMA_CHANGE\n-- Description: inbox\n-- Risk: LOW\n-- Ticket: T-1\nCREATE TABLE inbox (id int);\n",
    )
    .unwrap();
    ok(&sluice(
        &app,
        Some("dev"),
        dir,
        &["submit", "scripts/001_20261129_000000_inbox.sql"],
    )
    .await);
    let id = "001_20261129_000000_inbox";
    let ops1 = sluice(&app, Some("ops1"), dir, &["pending"]).await;
    ok(&ops1);
    assert!(
        ops1.stdout
            .contains(&format!("{id}@staging  low risk, by dev"))
            && ops1
                .stdout
                .contains(&format!("sluice approve {id} data_ops ops1"))
            && !ops1.stdout.contains("@production"),
        "{}",
        ops1.stdout
    );
    let dba = sluice(&app, Some("dba"), dir, &["-o", "json", "pending"]).await;
    ok(&dba);
    let list: serde_json::Value = serde_json::from_str(&dba.stdout).unwrap();
    assert_eq!(
        list[0]["deployment_id"],
        format!("{id}@production"),
        "{list}"
    );
    assert_eq!(list[0]["you_can_approve_as"], serde_json::json!(["dba"]));
    let checksum = list[0]["checksum"].as_str().unwrap().to_owned();
    ok(&sluice(
        &app,
        Some("ops1"),
        dir,
        &[
            "approve",
            id,
            "data_ops",
            "ops1",
            "ok",
            "--environment",
            "staging",
            "--checksum",
            &checksum,
        ],
    )
    .await);
    let after = sluice(&app, Some("ops1"), dir, &["pending"]).await;
    assert!(
        after.stdout.contains("nothing awaits your approval"),
        "{}",
        after.stdout
    );
    let ops2 = sluice(&app, Some("ops2"), dir, &["pending"]).await;
    assert!(
        ops2.stdout.contains(&format!("{id}@staging")),
        "{}",
        ops2.stdout
    );
    let dev = sluice(&app, Some("dev"), dir, &["pending"]).await;
    assert!(
        dev.stdout.contains("nothing awaits your approval"),
        "{}",
        dev.stdout
    );
}
