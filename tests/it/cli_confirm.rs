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
        // Real lines, not escaped ones.
        "\n-UPDATE missing_flags SET flag = 1;\n",
        "\n+CREATE TABLE flags (id int, flag int);\n",
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

    // Applied in development with no down script: nothing can undo it to apply another
    // version, so another change is refused, naming the file.
    std::fs::write(script, format!("{fixed}SELECT 1;\n")).unwrap();
    let refused = sluice(&app, Some("dev"), dir, &["submit", script, "--yes"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(script) && refused.stderr.contains("has no down_sql"),
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
    let checksum = app.deployment(&format!("{id}@staging")).await["checksum"]
        .as_str()
        .unwrap()
        .to_owned();
    for (user, role) in [("ops1", "data_ops"), ("ops2", "data_ops")] {
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
                "staging",
                "--checksum",
                &checksum,
            ],
        )
        .await);
    }
    app.wait_for_state(&format!("{id}@staging"), &["applied"])
        .await;
    // An emergency override asks first too (the environment's name typed back); without a
    // terminal nothing is overridden.
    app.wait_for_state(&format!("{id}@production"), &["awaiting_approval"])
        .await;
    let forced = sluice(
        &app,
        Some("lead"),
        dir,
        &["migrate", "production", "--force", "--emergency", "outage"],
    )
    .await;
    assert_eq!(forced.code, 2, "{}", forced.stderr);
    assert!(
        forced
            .stderr
            .contains("emergency override in production (outage)")
            && forced
                .stderr
                .contains(&format!("{id}@production (missing:"))
            && forced.stderr.contains("add --yes"),
        "{}",
        forced.stderr
    );
    app.wait_for_state(&format!("{id}@production"), &["awaiting_approval"])
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
                "--checksum",
                &checksum,
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

/// The CLI in a pseudo-terminal, as a person at a keyboard uses it.
pub(crate) fn at_terminal(
    args: &[&str],
    dir: &std::path::Path,
    env: &[(&str, String)],
) -> rexpect::session::PtySession {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .current_dir(dir)
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .env_remove("SLUICE_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    rexpect::session::spawn_command(command, Some(20_000)).expect("the CLI starts in a pty")
}

pub(crate) fn exit_code(session: &mut rexpect::session::PtySession) -> i32 {
    match session.process_mut().wait().expect("the CLI ends") {
        nix::sys::wait::WaitStatus::Exited(_, code) => code,
        other => panic!("the CLI ended with {other:?}"),
    }
}

/// `sluice new` at a terminal: the prompts list the choices, a bad answer is said and asked
/// again, and what was typed before is kept (before, `Risk [LOW]: SUPER` ended the session).
#[test]
fn new_at_a_terminal_re_asks_a_bad_answer_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = at_terminal(&["new"], dir.path(), &[("USER", "tester".into())]);
    p.exp_string("Type (SCHEMA_CHANGE, DATA_MIGRATION, HOTFIX)")
        .unwrap();
    p.send_line("hotfix").unwrap();
    p.exp_string("Description").unwrap();
    p.send_line("Fix the flags").unwrap();
    p.exp_string("Risk (LOW, MEDIUM, HIGH)").unwrap();
    p.send_line("SUPER").unwrap();
    p.exp_string("unknown risk \"SUPER\" (known: low, medium, high)")
        .unwrap();
    p.send_line("medium").unwrap();
    p.exp_string("Estimated duration (30s, 5m, 2h, 1h30m)")
        .unwrap();
    p.send_line("five minutes").unwrap();
    p.exp_string("is not a duration").unwrap();
    p.send_line("10m").unwrap();
    p.exp_string("Author").unwrap();
    p.send_line("").unwrap();
    p.exp_string("Ticket").unwrap();
    p.send_line("T-42").unwrap();
    p.exp_string("created").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 0);
    let script = std::fs::read_dir(dir.path().join("scripts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&script).unwrap();
    for line in [
        "-- Type: HOTFIX",
        "-- Description: Fix the flags",
        "-- Risk: MEDIUM",
        "-- Estimated-Duration: 10m",
        "-- Author: tester",
        "-- Ticket: T-42",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
}

/// At a terminal a dangerous verb asks: "n" (or anything but yes) changes nothing, "y" goes on;
/// reset wants the environment's name typed back.
#[tokio::test]
async fn dangerous_verbs_ask_at_a_terminal() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("rollbacks")).unwrap();
    std::fs::write(
        dir.join("scripts/001_20261129_000000_gizmos.sql"),
        "-- Migration: 001_20261129_000000_gizmos\n-- Type: SCHEMA_CHANGE\n-- Description: gizmos\n-- Risk: LOW\n-- Ticket: T-9\nCREATE TABLE gizmos (id int);\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rollbacks/001_20261129_000000_gizmos_rollback.sql"),
        "DROP TABLE gizmos;\n",
    )
    .unwrap();
    let id = first_id(
        &sluice(
            &app,
            Some("dev"),
            &dir,
            &["submit", "scripts/001_20261129_000000_gizmos.sql"],
        )
        .await
        .stdout,
    );
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    let env = vec![
        (
            "SLUICE_ADDR",
            format!("http://{}", app.running.as_ref().unwrap().grpc_addr),
        ),
        ("SLUICE_TOKEN", app.token("lead").to_owned()),
    ];
    let answer = |args: Vec<String>, expect: &'static str, reply: &'static str| {
        let (dir, env) = (dir.clone(), env.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut p = at_terminal(&args, &dir, &env);
            let shown = p.exp_string(expect).unwrap();
            p.send_line(reply).unwrap();
            let rest = p.exp_eof().unwrap();
            (exit_code(&mut p), format!("{shown}{expect}{rest}"))
        })
    };
    let rollback = vec!["rollback".to_owned(), "development".into(), id.clone()];
    let (code, said) = answer(rollback.clone(), "Go on?", "n").await.unwrap();
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("| DROP TABLE gizmos;") && said.contains("stopped: nothing was changed"),
        "{said}"
    );
    assert!(app.table_exists("development", "gizmos").await);
    let (code, said) = answer(rollback, "Go on?", "y").await.unwrap();
    assert_eq!(code, 0, "{said}");
    app.wait_for_state(&format!("{id}@development"), &["rolled_back"])
        .await;
    assert!(!app.table_exists("development", "gizmos").await);

    // Reset: "yes" is not the environment's name; nothing is dropped.
    let reset = vec!["reset".to_owned(), "development".into()];
    let (code, said) = answer(reset, "Type development to go on", "yes")
        .await
        .unwrap();
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("stopped: nothing was changed"), "{said}");
    let (status, audit) = app.get("lead", "/api/v1/audit?actor=lead").await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // The query sees the lead's actions (the rollback they confirmed), and no reset among them.
    assert!(actions.contains(&"rollback_requested"), "{audit}");
    assert!(!actions.contains(&"reset"), "no reset was made: {audit}");
}

/// At a terminal, states are coloured (applied green); NO_COLOR and pipes get plain text.
#[tokio::test]
async fn states_are_coloured_at_a_terminal_unless_no_color() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("scripts/001_20261129_000000_paint.sql"),
        "-- Migration: 001_20261129_000000_paint\n-- Type: SCHEMA_CHANGE\n-- Description: paint\n-- Risk: LOW\n-- Ticket: T-9\nCREATE TABLE paint (id int);\n",
    )
    .unwrap();
    let id = first_id(
        &sluice(
            &app,
            Some("dev"),
            &dir,
            &["submit", "scripts/001_20261129_000000_paint.sql"],
        )
        .await
        .stdout,
    );
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    let addr = format!("http://{}", app.running.as_ref().unwrap().grpc_addr);
    let token = app.token("dev").to_owned();
    let history = |no_color: bool| {
        let (dir, addr, token) = (dir.clone(), addr.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            let mut env = vec![("SLUICE_ADDR", addr), ("SLUICE_TOKEN", token)];
            if no_color {
                env.push(("NO_COLOR", "1".into()));
            }
            let mut p = at_terminal(&["history"], &dir, &env);
            let text = p.exp_eof().unwrap();
            assert_eq!(exit_code(&mut p), 0, "{text}");
            text
        })
    };
    let coloured = history(false).await.unwrap();
    assert!(coloured.contains("\u{1b}[32mapplied"), "{coloured:?}");
    assert!(
        coloured.contains("\u{1b}[33mawaiting_approval"),
        "{coloured:?}"
    );
    let plain = history(true).await.unwrap();
    assert!(
        plain.contains("applied") && !plain.contains('\u{1b}'),
        "{plain:?}"
    );
    let piped = sluice(&app, Some("dev"), &dir, &["history"]).await;
    assert!(
        piped.stdout.contains("applied") && !piped.stdout.contains('\u{1b}'),
        "{:?}",
        piped.stdout
    );
}

/// Ctrl-C while `migrate --wait` follows a deployment: the CLI says the work goes on in the
/// daemon and how to follow it, exits 130, and the deployment does finish.
#[tokio::test]
async fn ctrl_c_during_migrate_wait_leaves_the_deployment_running() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("scripts/001_20261129_000000_slow.sql"),
        "-- Migration: 001_20261129_000000_slow\n-- Type: DATA_MIGRATION\n-- Description: slow\n-- Risk: LOW\n-- Ticket: T-9\nSELECT pg_sleep(3);\nCREATE TABLE slow_done (id int);\n",
    )
    .unwrap();
    let id = first_id(
        &sluice(
            &app,
            Some("dev"),
            &dir,
            &["submit", "scripts/001_20261129_000000_slow.sql"],
        )
        .await
        .stdout,
    );
    app.wait_for_state(&format!("{id}@development"), &["running"])
        .await;
    let env = vec![
        (
            "SLUICE_ADDR",
            format!("http://{}", app.running.as_ref().unwrap().grpc_addr),
        ),
        ("SLUICE_TOKEN", app.token("dev").to_owned()),
    ];
    let (code, said) = tokio::task::spawn_blocking(move || {
        let mut p = at_terminal(&["migrate", "development", "--wait"], &dir, &env);
        p.exp_string("running").unwrap();
        p.send_control('c').unwrap();
        let rest = p.exp_eof().unwrap();
        (exit_code(&mut p), rest)
    })
    .await
    .unwrap();
    assert_eq!(code, 130, "{said}");
    assert!(
        said.contains("interrupted: the deployments go on in the daemon")
            && said.contains("sluice watch development"),
        "{said}"
    );
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    assert!(app.table_exists("development", "slow_done").await);
}

/// The legacy `rollback <env> <id> --force --emergency` (no reason): at a terminal the reason
/// is asked for; without one it is a usage error before anything is sent.
#[tokio::test]
async fn an_emergency_without_a_reason_is_asked_for_one() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("rollbacks")).unwrap();
    std::fs::write(
        dir.join("scripts/001_20261129_000000_sprockets.sql"),
        "-- Migration: 001_20261129_000000_sprockets\n-- Type: SCHEMA_CHANGE\n-- Description: sprockets\n-- Risk: LOW\n-- Ticket: T-9\nCREATE TABLE sprockets (id int);\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rollbacks/001_20261129_000000_sprockets_rollback.sql"),
        "DROP TABLE sprockets;\n",
    )
    .unwrap();
    let id = first_id(
        &sluice(
            &app,
            Some("dev"),
            &dir,
            &["submit", "scripts/001_20261129_000000_sprockets.sql"],
        )
        .await
        .stdout,
    );
    app.wait_for_state(&format!("{id}@development"), &["applied"])
        .await;
    let unasked = sluice(
        &app,
        Some("lead"),
        &dir,
        &[
            "rollback",
            "development",
            &id,
            "--force",
            "--emergency",
            "--yes",
        ],
    )
    .await;
    assert_eq!(unasked.code, 2, "{}", unasked.stderr);
    assert!(
        unasked.stderr.contains("--emergency needs a reason"),
        "{}",
        unasked.stderr
    );
    let env = vec![
        (
            "SLUICE_ADDR",
            format!("http://{}", app.running.as_ref().unwrap().grpc_addr),
        ),
        ("SLUICE_TOKEN", app.token("lead").to_owned()),
    ];
    let args = [
        "rollback".to_owned(),
        "development".into(),
        id.clone(),
        "--force".into(),
        "--emergency".into(),
        "--yes".into(),
    ];
    let (code, said) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = at_terminal(&args, &dir, &env);
        p.exp_string("Reason for the emergency").unwrap();
        p.send_line("disk filling up").unwrap();
        let rest = p.exp_eof().unwrap();
        (exit_code(&mut p), rest)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{said}");
    app.wait_for_state(&format!("{id}@development"), &["rolled_back"])
        .await;
    let (_, audit) = app.get("lead", "/api/v1/audit?actor=lead").await;
    assert!(
        audit.to_string().contains("EMERGENCY: disk filling up"),
        "{audit}"
    );
}

/// A file submitted again with the same scripts but another header (the risk raised, say) is
/// not "unchanged": a submitted migration's metadata cannot change, and the answer says which
/// field and what to do (before, the batch answered "unchanged" and kept the old risk).
#[tokio::test]
async fn a_changed_header_with_the_same_scripts_is_refused_not_unchanged() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let script = dir.join("scripts/001_20261129_000000_meta.sql");
    let text = "-- Migration: 001_20261129_000000_meta\n-- Type: SCHEMA_CHANGE\n-- Description: meta\n-- Risk: LOW\n-- Ticket: T-1\nCREATE TABLE meta (id int);\n";
    std::fs::write(&script, text).unwrap();
    let script = script.to_str().unwrap();
    ok(&sluice(&app, Some("dev"), dir, &["submit", script]).await);
    std::fs::write(script, text.replace("-- Risk: LOW", "-- Risk: HIGH")).unwrap();
    let again = sluice(&app, Some("dev"), dir, &["submit", script]).await;
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains(script) && again.stderr.contains("risk \"low\", not \"high\""),
        "{}",
        again.stderr
    );
    let (_, m) = app
        .get("dev", "/api/v1/migrations/001_20261129_000000_meta")
        .await;
    assert_eq!(m["declared_risk"], "low", "{m}");
    // Over REST, a batch with the same scripts and another risk: refused too (it answered
    // "unchanged" before).
    let (status, answer) = app
        .post(
            "dev",
            "/api/v1/migrations:batch",
            serde_json::json!({"migrations": [{
                "id": "001_20261129_000000_meta",
                "kind": "schema_change",
                "description": "meta",
                "risk": "high",
                "ticket": "T-1",
                "estimated_duration": "5m",
                "up_sql": m["up_sql"],
                "down_sql": m["down_sql"],
            }]}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("risk \\\"low\\\", not \\\"high\\\""),
        "{answer}"
    );
}
