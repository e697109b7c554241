//! `--output json`: every command prints one JSON document, with the REST API's field names
//! and nulls (the CLI reads gRPC; its JSON must not differ from what a script gets over REST).

use crate::cli::{ok, sluice};
use crate::harness::spawn_app;
use serde_json::Value;

/// Where `cli` differs from `rest`: a key missing or extra, null against a value, another
/// scalar. Paths like `deployments[2].error`.
pub(crate) fn differences(path: &str, rest: &Value, cli: &Value, out: &mut Vec<String>) {
    match (rest, cli) {
        (Value::Object(r), Value::Object(c)) => {
            for (k, rv) in r {
                match c.get(k) {
                    Some(cv) => differences(&format!("{path}.{k}"), rv, cv, out),
                    None => out.push(format!("{path}.{k}: missing (REST: {rv})")),
                }
            }
            for k in c.keys().filter(|k| !r.contains_key(*k)) {
                out.push(format!("{path}.{k}: not in REST ({})", c[k]));
            }
        }
        (Value::Array(r), Value::Array(c)) if r.len() == c.len() => {
            for (i, (rv, cv)) in r.iter().zip(c).enumerate() {
                differences(&format!("{path}[{i}]"), rv, cv, out);
            }
        }
        (r, c) if r == c => {}
        (r, c) => out.push(format!("{path}: REST {r}, CLI {c}")),
    }
}

fn json(run: &crate::cli::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}\n{}",
            run.stdout, run.stderr
        )
    })
}

#[tokio::test]
async fn cli_json_is_the_rest_apis_json() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("scripts/001_20261129_000000_parity.sql"),
        "-- Migration: 001_20261129_000000_parity\n-- Type: HOTFIX\n-- Description: parity\n-- Risk: LOW\n-- Ticket: T-1\nUPDATE nowhere SET x = 1;\n",
    )
    .unwrap();
    let submitted = sluice(
        &app,
        Some("dev"),
        dir,
        &[
            "-o",
            "json",
            "submit",
            "scripts/001_20261129_000000_parity.sql",
        ],
    )
    .await;
    ok(&submitted);
    let id = json(&submitted)[0]["id"].as_str().unwrap().to_owned();
    app.wait_for_state(&format!("{id}@development"), &["failed"])
        .await;
    ok(&sluice(&app, Some("lead"), dir, &["lock", "staging", "freeze"]).await);

    let mut found = Vec::new();
    for (args, path) in [
        (
            vec!["show", id.as_str()],
            format!("/api/v1/migrations/{id}"),
        ),
        (
            vec!["status", "development"],
            "/api/v1/environments/development".into(),
        ),
        (
            vec!["status", "staging"],
            "/api/v1/environments/staging".into(),
        ),
        (vec!["audit", "--oldest-first"], "/api/v1/audit".into()),
    ] {
        let mut full = vec!["-o", "json"];
        full.extend(&args);
        let run = sluice(&app, Some("lead"), dir, &full).await;
        ok(&run);
        let (status, rest) = app.get("lead", &path).await;
        assert_eq!(status, 200, "{path}: {rest}");
        differences(&args.join(" "), &rest, &json(&run), &mut found);
    }
    assert!(
        found.is_empty(),
        "CLI JSON differs from REST:\n{}",
        found.join("\n")
    );
}

/// Every command with `-o json` prints exactly one JSON document on stdout, whether it
/// succeeds or not (a script reads stdout; the human text goes to stderr).
#[tokio::test]
async fn every_command_prints_one_json_document() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("rollbacks")).unwrap();
    let script = "scripts/001_20261129_000000_every.sql";
    std::fs::write(
        dir.join(script),
        "-- Migration: 001_20261129_000000_every\n-- Type: SCHEMA_CHANGE\n-- Description: every\n-- Risk: LOW\n-- Ticket: T-1\nCREATE TABLE every_cmd (id int);\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rollbacks/001_20261129_000000_every_rollback.sql"),
        "DROP TABLE every_cmd;\n",
    )
    .unwrap();
    let id = "001_20261129_000000_every";
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("dev", vec!["validate", script]),
        ("dev", vec!["submit", script]),
        ("dev", vec!["submit", script]),
        ("dev", vec!["migrate", "development", "--wait"]),
        ("dev", vec!["status", "development", "--verbose"]),
        ("dev", vec!["status"]),
        ("ops2", vec!["pending"]),
        ("dev", vec!["show", id, "--log"]),
        ("dev", vec!["history"]),
        ("dev", vec!["history", "staging"]),
        ("dev", vec!["audit", "--since", "1h"]),
        ("dev", vec!["whoami"]),
        ("dev", vec!["dry-run", id, "staging"]),
        ("dev", vec!["test-rollback", id]),
        ("lead", vec!["drift", "development"]),
        ("lead", vec!["backups", "staging"]),
        ("lead", vec!["backup", "staging"]),
        ("lead", vec!["lock", "production", "freeze"]),
        ("lead", vec!["unlock", "production"]),
        (
            "ops1",
            vec![
                "approve",
                id,
                "data_ops",
                "ops1",
                "ok",
                "--environment",
                "staging",
            ],
        ),
        (
            "ops2",
            vec!["reject", id, "no", "--environment", "production"],
        ),
        (
            "dev",
            vec!["rollback", "development", id, "--yes", "--wait"],
        ),
        ("dev", vec!["retry", "development", id]),
        ("dev", vec!["cancel", "staging", id, "--yes"]),
        ("lead", vec!["migrate", "staging"]),
        ("lead", vec!["notifications"]),
        ("lead", vec!["notifications", "--dead"]),
        ("lead", vec!["notify", "channels"]),
        (
            "lead",
            vec!["baseline", "production", "--up-to", "nothing-like-it"],
        ),
        ("lead", vec!["restore", "staging", "nothing.dump", "--yes"]),
        ("dev", vec!["status", "prodution"]),
        ("dev", vec!["approve", id, "dataops", "dev", "x"]),
        (
            "dev",
            vec![
                "new",
                "--type",
                "HOTFIX",
                "--description",
                "x",
                "--risk",
                "LOW",
                "--duration",
                "5m",
                "--author",
                "dev",
                "--ticket",
                "T-2",
            ],
        ),
    ];
    let config_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut commands = commands;
    commands.extend([
        (
            "dev",
            vec!["token", "new", "--user", "zed", "--roles", "dba"],
        ),
        ("dev", vec!["check-config", "--config-dir", config_dir]),
    ]);
    let mut broken = Vec::new();
    for (user, args) in &commands {
        let mut full = vec!["-o", "json"];
        full.extend(args);
        let run = sluice(&app, Some(user), dir, &full).await;
        match serde_json::from_str::<Value>(&run.stdout) {
            Ok(Value::Object(o))
                if o.len() == 1 && o.get("error").is_some_and(Value::is_object) =>
            {
                assert_eq!(
                    o["error"]["exit_code"], run.code,
                    "{args:?}: {}",
                    run.stdout
                );
                assert_ne!(run.code, 0, "{args:?}: {}", run.stdout);
            }
            Ok(_) => assert!(
                // A report whose outcome is a failure: the report, exit 1.
                run.code == 0 || matches!(args[0], "drift" | "test-rollback"),
                "{args:?} printed JSON without an error but exited {}: {}",
                run.code,
                run.stderr
            ),
            Err(e) => broken.push(format!(
                "{args:?} (exit {}): {e}\n{}\n{}",
                run.code, run.stdout, run.stderr
            )),
        }
    }
    assert!(
        broken.is_empty(),
        "not one JSON document:\n{}",
        broken.join("\n\n")
    );
}
