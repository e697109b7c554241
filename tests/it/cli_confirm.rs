//! The CLI's care with what cannot be taken back: dangerous verbs confirm first (or need
//! `--yes` without a terminal), `submit` tells the effective risk and who must approve, a
//! changed file amends its migration after showing the diff, and `migrate --wait` says why
//! nothing runs.

use crate::cli::{ok, sluice};
use crate::harness::spawn_app;

fn first_id(stdout: &str) -> String {
    stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn submit_tells_the_risk_and_amends_a_changed_file_after_showing_its_diff() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let script = dir.join("scripts/001_20261129_000000_flags.sql");
    let header = "-- Migration: 001_20261129_000000_flags\n-- Type: HOTFIX\n-- Description: flags\n-- Risk: LOW\n-- Ticket: T-7\n";
    std::fs::write(
        &script,
        format!("{header}UPDATE missing_flags SET flag = 1;\n"),
    )
    .unwrap();
    let script = script.to_str().unwrap();

    let submitted = sluice(&app, Some("dev"), dir, &["submit", script]).await;
    ok(&submitted);
    let id = first_id(&submitted.stdout);
    assert_eq!(id, "001_20261129_000000_flags", "{}", submitted.stdout);
    // The analysis raised the risk: said with the finding, and who must approve where.
    for expected in [
        "risk HIGH (declared LOW; raised by the analysis)",
        "line 6: changes every row of a table (no WHERE clause)",
        "(sluice-unguarded-update)",
    ] {
        assert!(
            submitted.stdout.contains(expected),
            "{expected}: {}",
            submitted.stdout
        );
    }
    let production = submitted
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("production"))
        .unwrap_or_else(|| panic!("{}", submitted.stdout));
    assert!(
        production.contains("awaiting_approval: needs")
            && production.contains("data_ops_lead")
            && production.contains("cto"),
        "{production}"
    );
    // Development runs it (auto_apply) and it fails: the table is missing.
    app.wait_for_state(&format!("{id}@development"), &["failed"])
        .await;

    // The file is fixed and submitted again: without a terminal the amendment is shown, not made.
    let fixed =
        format!("{header}CREATE TABLE flags (id int, flag int);\nUPDATE flags SET flag = 1;\n");
    std::fs::write(script, &fixed).unwrap();
    let unconfirmed = sluice(&app, Some("dev"), dir, &["submit", script]).await;
    assert_eq!(unconfirmed.code, 2, "{}", unconfirmed.stderr);
    for expected in [
        "001_20261129_000000_flags exists with other scripts; submitting amends it",
        "every approval is void",
        "-UPDATE missing_flags SET flag = 1;",
        "+CREATE TABLE flags (id int, flag int);",
        "add --yes",
    ] {
        assert!(
            unconfirmed.stderr.contains(expected),
            "{expected}: {}",
            unconfirmed.stderr
        );
    }
    let (_, before) = app.get("dev", &format!("/api/v1/migrations/{id}")).await;
    assert!(
        before["up_sql"].as_str().unwrap().contains("missing_flags"),
        "nothing changed: {before}"
    );
    // Only one migration exists: no second one was made from the same file.
    let (_, list) = app.get("dev", "/api/v1/migrations").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    let amended = sluice(&app, Some("dev"), dir, &["submit", script, "--yes"]).await;
    ok(&amended);
    assert!(
        amended.stdout.contains(&format!("amended {id}"))
            && amended.stdout.contains("+CREATE TABLE flags"),
        "{}",
        amended.stdout
    );
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    assert!(app.table_exists("development", "flags").await);

    // Once it has run somewhere its scripts are fixed: another change is refused, naming the file.
    std::fs::write(script, format!("{fixed}SELECT 1;\n")).unwrap();
    let refused = sluice(&app, Some("dev"), dir, &["submit", script, "--yes"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(script)
            && refused
                .stderr
                .contains("has touched a target cannot be changed"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn migrate_wait_says_why_nothing_runs_and_production_asks_first() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let script = dir.join("scripts/001_20261129_000000_things.sql");
    std::fs::write(
        &script,
        "-- Migration: 001_20261129_000000_things\n-- Type: SCHEMA_CHANGE\n-- Description: things\n-- Risk: LOW\n-- Ticket: T-8\nCREATE TABLE things (id int);\n",
    )
    .unwrap();
    let script = script.to_str().unwrap();
    let id = first_id(
        &sluice(&app, Some("dev"), dir, &["submit", script])
            .await
            .stdout,
    );
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;

    // Development applied it on its own: nothing to apply, and it says so (a success).
    let dev = sluice(
        &app,
        Some("dev"),
        dir,
        &["migrate", "development", "--wait"],
    )
    .await;
    ok(&dev);
    assert!(
        dev.stdout.contains("nothing to apply: auto_apply")
            && dev
                .stdout
                .contains(&format!("the last, {id}, was applied at")),
        "{}",
        dev.stdout
    );

    // Staging waits for approvals: nothing can run, exit 1, naming who must approve.
    let staging = sluice(&app, Some("ops1"), dir, &["migrate", "staging", "--wait"]).await;
    assert_eq!(staging.code, 1, "{}", staging.stderr);
    assert!(
        staging
            .stderr
            .contains("nothing to apply: 1 awaiting approval")
            && staging.stderr.contains(&format!("{id} needs")),
        "{}",
        staging.stderr
    );

    // Approved through staging and production, production's migrate asks first.
    for (user, role) in [("ops1", "data_ops"), ("ops2", "data_ops")] {
        ok(&sluice(
            &app,
            Some(user),
            dir,
            &["approve", &id, role, user, "ok", "--environment", "staging"],
        )
        .await);
    }
    app.wait_for_state(&format!("{id}@staging"), &["applied"])
        .await;
    for (user, role) in [("lead", "data_ops_lead"), ("dba", "dba")] {
        ok(&sluice(
            &app,
            Some(user),
            dir,
            &[
                "approve",
                &id,
                role,
                user,
                "ok",
                "--environment",
                "production",
            ],
        )
        .await);
    }
    app.wait_for_state(&format!("{id}@production"), &["approved"])
        .await;
    let unconfirmed = sluice(&app, Some("lead"), dir, &["migrate", "production"]).await;
    assert_eq!(unconfirmed.code, 2, "{}", unconfirmed.stderr);
    assert!(
        unconfirmed
            .stderr
            .contains("apply to production, in this order:")
            && unconfirmed.stderr.contains(&format!("{id} (low risk)"))
            && unconfirmed.stderr.contains("add --yes"),
        "{}",
        unconfirmed.stderr
    );
    app.wait_for_state(&format!("{id}@production"), &["approved"])
        .await;
    ok(&sluice(
        &app,
        Some("lead"),
        dir,
        &["migrate", "production", "--wait", "--yes"],
    )
    .await);
    assert!(app.table_exists("production", "things").await);
}

#[tokio::test]
async fn restore_and_reset_need_yes_or_confirm_without_a_terminal() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["reset", "development"][..],
        &["restore", "development", "development-x.dump"][..],
    ] {
        let refused = sluice(&app, Some("lead"), dir.path(), args).await;
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("add --yes (or --confirm)"),
            "{}",
            refused.stderr
        );
    }
    // --yes is --confirm's equal: the daemon is asked (and the made-up backup is not found).
    let asked = sluice(
        &app,
        Some("lead"),
        dir.path(),
        &["restore", "development", "development-x.dump", "--yes"],
    )
    .await;
    assert_eq!(asked.code, 1, "{}", asked.stderr);
    assert!(
        asked.stderr.contains("development-x.dump"),
        "{}",
        asked.stderr
    );
}
