//! Approvals bound to what the approver read (issue 19): `approve` without `--checksum` shows
//! the scripts (or what changed since the version approved or applied elsewhere), the findings
//! and the checksum, and sends the checksum it showed once the approver says yes; `show --sql`
//! and `--diff` print the scripts; a refused approval because the scripts changed says what
//! changed; `show` names who approved which checksum and why a deployment was rejected.

use crate::cli::{ok, sluice};
use crate::cli_confirm::{at_terminal, exit_code};
use crate::harness::{TestApp, spawn_app};
use std::path::{Path, PathBuf};

const ID: &str = "001_20261204_000000_widgets";
const UP: &str =
    "CREATE TABLE widgets (id int);\nCOMMENT ON TABLE widgets IS 'tab\there, bell \u{7} there';\n";
const UP2: &str = "CREATE TABLE widgets (id int, name text);\nCOMMENT ON TABLE widgets IS 'tab\there, bell \u{7} there';\n";

/// A migration awaiting two data_ops approvals in staging; development is locked so that it
/// stays amendable (nothing applied anywhere). Returns the folder and the checksum.
async fn widgets(app: &TestApp) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    std::fs::create_dir_all(path.join("scripts")).unwrap();
    std::fs::create_dir_all(path.join("rollbacks")).unwrap();
    std::fs::write(
        path.join(format!("scripts/{ID}.sql")),
        format!(
            "-- Migration: {ID}\n-- Type: SCHEMA_CHANGE\n-- Description: widgets\n-- Risk: LOW\n-- Ticket: T-19\n{UP}"
        ),
    )
    .unwrap();
    std::fs::write(
        path.join(format!("rollbacks/{ID}_rollback.sql")),
        "DROP TABLE widgets;\n",
    )
    .unwrap();
    ok(&sluice(app, Some("lead"), path, &["lock", "development", "hold"]).await);
    ok(&sluice(
        app,
        Some("dev"),
        path,
        &["submit", &format!("scripts/{ID}.sql")],
    )
    .await);
    let checksum = app.deployment(&format!("{ID}@staging")).await["checksum"]
        .as_str()
        .unwrap()
        .to_owned();
    (dir, checksum)
}

/// Amends the migration's up script over REST (as its author); the new checksum.
async fn amend(app: &TestApp, up: &str) -> String {
    let (status, body) = app
        .request(
            reqwest::Method::PUT,
            Some("dev"),
            &format!("/api/v1/migrations/{ID}"),
            Some(serde_json::json!({"up_sql": up, "down_sql": "DROP TABLE widgets;\n", "reason": "a name"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["checksum"].as_str().unwrap().to_owned()
}

async fn approvals(app: &TestApp) -> Vec<serde_json::Value> {
    app.deployment(&format!("{ID}@staging")).await["approvals"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn approve_names_the_checksum_read_and_show_prints_scripts_diffs_and_who_signed_what() {
    let app = spawn_app().await;
    let (dir, c1) = widgets(&app).await;
    let dir = dir.path();

    // No terminal, no --checksum: refused before anything is sent, saying how to name it.
    let refused = sluice(
        &app,
        Some("ops1"),
        dir,
        &["approve", ID, "data_ops", "ops1", "read it"],
    )
    .await;
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains(&format!("--checksum {c1}")),
        "{}",
        refused.stderr
    );
    // --yes does not stand for having read the scripts: the exact command to run is said.
    let blind = sluice(
        &app,
        Some("ops1"),
        dir,
        &["--yes", "approve", ID, "data_ops", "ops1", "read it"],
    )
    .await;
    assert_eq!(blind.code, 2, "{}{}", blind.stdout, blind.stderr);
    assert!(
        blind.stderr.contains(&format!(
            "sluice approve {ID} data_ops ops1 'read it' --environment staging --checksum {c1}"
        )),
        "{}",
        blind.stderr
    );
    assert!(approvals(&app).await.is_empty(), "nothing was sent");
    ok(&sluice(
        &app,
        Some("ops1"),
        dir,
        &[
            "approve",
            ID,
            "data_ops",
            "ops1",
            "read it",
            "--checksum",
            &c1,
        ],
    )
    .await);

    // show names who approved, as what, and the checksum they approved.
    let shown = sluice(&app, Some("ops1"), dir, &["show", ID, "staging"]).await;
    ok(&shown);
    assert!(
        shown.stdout.contains("ops1 as data_ops")
            && shown.stdout.contains(&format!("checksum {c1}")),
        "{}",
        shown.stdout
    );

    // show --sql: the scripts as they are (real lines, a tab kept), control characters shown.
    let sql = sluice(&app, Some("ops1"), dir, &["show", ID, "--sql"]).await;
    ok(&sql);
    assert!(
        sql.stdout.contains("CREATE TABLE widgets (id int);\nCOMMENT ON TABLE widgets IS 'tab\there, bell \\u{7} there';\n"),
        "{}",
        sql.stdout
    );
    assert!(sql.stdout.contains("DROP TABLE widgets;"), "{}", sql.stdout);
    assert!(!sql.stdout.contains('\u{7}'), "{}", sql.stdout);

    // The scripts change: the approval by ops1 is void; an approval of the old checksum is
    // refused and says what changed since.
    let c2 = amend(&app, UP2).await;
    assert_ne!(c1, c2);
    let stale = sluice(
        &app,
        Some("ops2"),
        dir,
        &["approve", ID, "data_ops", "ops2", "lgtm", "--checksum", &c1],
    )
    .await;
    assert_eq!(stale.code, 1, "{}{}", stale.stdout, stale.stderr);
    assert!(
        stale.stderr.contains(&c1)
            && stale.stderr.contains(&c2)
            && stale.stderr.contains("-CREATE TABLE widgets (id int);")
            && stale
                .stderr
                .contains("+CREATE TABLE widgets (id int, name text);"),
        "{}",
        stale.stderr
    );

    // show --diff: against the version approved in staging.
    let diff = sluice(&app, Some("ops2"), dir, &["show", ID, "--diff"]).await;
    ok(&diff);
    assert!(
        diff.stdout.contains("approved in staging")
            && diff.stdout.contains(&c1)
            && diff.stdout.contains("-CREATE TABLE widgets (id int);")
            && diff
                .stdout
                .contains("+CREATE TABLE widgets (id int, name text);"),
        "{}",
        diff.stdout
    );

    // A rejection says who and why.
    ok(&sluice(
        &app,
        Some("ops2"),
        dir,
        &[
            "reject",
            ID,
            "needs a backfill plan",
            "--environment",
            "staging",
        ],
    )
    .await);
    let shown = sluice(&app, Some("ops2"), dir, &["show", ID, "staging"]).await;
    ok(&shown);
    assert!(
        shown.stdout.contains("rejected     by ops2")
            && shown.stdout.contains("needs a backfill plan"),
        "{}",
        shown.stdout
    );

    // The CLI's JSON is still REST's, with the new fields in both.
    let json = sluice(&app, Some("ops2"), dir, &["-o", "json", "show", ID]).await;
    ok(&json);
    let cli: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let (status, rest) = app.get("ops2", &format!("/api/v1/migrations/{ID}")).await;
    assert_eq!(status, 200, "{rest}");
    let mut found = Vec::new();
    crate::cli_json::differences("show", &rest, &cli, &mut found);
    assert!(
        found.is_empty(),
        "CLI JSON differs from REST:\n{}",
        found.join("\n")
    );
    assert_eq!(
        rest["previous_versions"][0]["checksum"],
        c1.as_str(),
        "{rest}"
    );
    assert_eq!(
        rest["previous_versions"][0]["approved_in"],
        serde_json::json!(["staging"]),
        "{rest}"
    );
    let staging = &rest["deployments"][1];
    assert_eq!(staging["rejection"]["by"], "ops2", "{rest}");
    assert_eq!(
        staging["rejection"]["reason"], "needs a backfill plan",
        "{rest}"
    );
}

/// At a terminal, `approve` shows the scripts and the checksum, then what changed since the
/// version approved before; yes sends the checksum shown, no sends nothing.
#[tokio::test]
async fn approve_at_a_terminal_shows_what_it_approves_and_sends_that_checksum() {
    let app = spawn_app().await;
    let (dir, c1) = widgets(&app).await;
    let dir: PathBuf = dir.path().to_owned();
    let answer = |user: &'static str, reply: &'static str, dir: &Path| {
        let dir = dir.to_owned();
        let env = vec![
            (
                "SLUICE_ADDR",
                format!("http://{}", app.running.as_ref().unwrap().grpc_addr),
            ),
            ("SLUICE_TOKEN", app.token(user).to_owned()),
        ];
        tokio::task::spawn_blocking(move || {
            let mut p = at_terminal(&["approve", ID, "data_ops", user, "read it"], &dir, &env);
            let shown = p.exp_string("Go on?").unwrap();
            p.send_line(reply).unwrap();
            let rest = p.exp_eof().unwrap();
            (exit_code(&mut p), format!("{shown}{rest}"))
        })
    };
    let (code, said) = answer("ops1", "y", &dir).await.unwrap();
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("CREATE TABLE widgets (id int);")
            && said.contains("DROP TABLE widgets;")
            && said.contains(&c1),
        "{said}"
    );
    let signed = approvals(&app).await;
    assert_eq!(signed.len(), 1, "{signed:?}");
    assert_eq!(signed[0]["checksum"], c1.as_str());

    let c2 = amend(&app, UP2).await;
    let (code, said) = answer("ops2", "n", &dir).await.unwrap();
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("-CREATE TABLE widgets (id int);")
            && said.contains("+CREATE TABLE widgets (id int, name text);")
            && said.contains(&c2)
            && said.contains("approved in staging"),
        "{said}"
    );
    assert!(
        approvals(&app).await.is_empty(),
        "no was said: nothing sent"
    );
}

/// The replaced versions are kept on the SQLite store too; amending back to a version and away
/// again keeps one row for it, with its latest replacement.
#[tokio::test]
async fn replaced_versions_are_kept_on_the_sqlite_store_too() {
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        backend: crate::harness::Backend::Sqlite,
        ..Default::default()
    })
    .await;
    let (status, body) = app
        .post(
            "lead",
            "/api/v1/environments/development/lock",
            serde_json::json!({"reason": "hold"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = app
        .submit(
            "dev",
            crate::harness::migration("kept", "low", "CREATE TABLE kept (a int);", None),
        )
        .await;
    let amend = |up: &'static str| {
        let (app, id) = (&app, id.clone());
        async move {
            let (status, body) = app
                .request(
                    reqwest::Method::PUT,
                    Some("dev"),
                    &format!("/api/v1/migrations/{id}"),
                    Some(serde_json::json!({"up_sql": up})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    amend("CREATE TABLE kept (b int);").await;
    amend("CREATE TABLE kept (a int);").await;
    let now = amend("CREATE TABLE kept (b int);").await;
    let versions = now["previous_versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{now}");
    assert_eq!(versions[0]["up_sql"], "CREATE TABLE kept (a int);", "{now}");
    assert_eq!(versions[0]["replaced_by"], "dev", "{now}");
}
