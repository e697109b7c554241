//! The CLI's contexts (~/.config/sluice/config.yml, like kubectl's): which daemon, which
//! token, and what wins over what.

use crate::harness::spawn_app;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The CLI with only the given environment: no SLUICE_ADDR or SLUICE_TOKEN unless set here.
async fn cli(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .env_remove("SLUICE_ADDR")
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_CONTEXT")
        .env("SLUICE_CONFIG", config);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn contexts_pick_the_daemon_and_token_and_flags_win() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    let addr = format!("http://{}", app.running.as_ref().unwrap().grpc_addr);
    let token_file = dir.path().join("lead.token");
    std::fs::write(&token_file, app.token("lead")).unwrap();
    std::fs::write(
        &config,
        format!(
            "# my daemons\ncurrent_context: local\ncontexts:\n  local:\n    server: {addr}\n    token_command: cat {}\n  nowhere:\n    server: http://127.0.0.1:1\n    token: not-a-real-one\n  failing:\n    server: {addr}\n    token_command: echo no vault here >&2; exit 4\n",
            token_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The current context: its daemon, its token (from the command).
    let me = cli(&config, &[], &["whoami"]).await;
    assert_eq!(me.code, 0, "{}", me.stderr);
    assert!(me.stdout.contains("lead"), "{}", me.stdout);

    // Another context by flag: its unreachable daemon, exit 3.
    let away = cli(&config, &[], &["--context", "nowhere", "whoami"]).await;
    assert_eq!(away.code, 3, "{}", away.stderr);
    assert!(away.stderr.contains("127.0.0.1:1"), "{}", away.stderr);
    // ... but SLUICE_ADDR and --token win over the context.
    let token = app.token("dev").to_owned();
    let overridden = cli(
        &config,
        &[("SLUICE_ADDR", &addr)],
        &["--context", "nowhere", "--token", &token, "whoami"],
    )
    .await;
    assert_eq!(overridden.code, 0, "{}", overridden.stderr);
    assert!(overridden.stdout.contains("dev"), "{}", overridden.stdout);

    // A misspelt context: exit 2 with the known ones and a guess.
    let typo = cli(&config, &[], &["--context", "locl", "whoami"]).await;
    assert_eq!(typo.code, 2, "{}", typo.stderr);
    assert!(
        typo.stderr
            .contains("no context \"locl\" (known: failing, local, nowhere)")
            && typo.stderr.contains("did you mean \"local\""),
        "{}",
        typo.stderr
    );
    // A token command that fails says which and why.
    let failing = cli(&config, &[], &["--context", "failing", "whoami"]).await;
    assert_eq!(failing.code, 3, "{}", failing.stderr);
    assert!(
        failing.stderr.contains("token_command") && failing.stderr.contains("no vault here"),
        "{}",
        failing.stderr
    );

    // A token written in a file others can read is refused.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exposed = cli(
        &config,
        &[("SLUICE_ADDR", &addr)],
        &["--context", "nowhere", "whoami"],
    )
    .await;
    assert_eq!(exposed.code, 2, "{}", exposed.stderr);
    assert!(exposed.stderr.contains("chmod 600"), "{}", exposed.stderr);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    // `sluice context` lists them; `sluice context NAME` switches, keeping the file's comments.
    let listed = cli(&config, &[], &["context"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("* local"), "{}", listed.stdout);
    assert!(
        !listed.stdout.contains("not-a-real-one"),
        "no token shown: {}",
        listed.stdout
    );
    let switched = cli(&config, &[], &["context", "nowhere"]).await;
    assert_eq!(switched.code, 0, "{}", switched.stderr);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# my daemons\ncurrent_context: nowhere\n"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let now_away = cli(&config, &[], &["whoami"]).await;
    assert_eq!(now_away.code, 3, "{}", now_away.stderr);
    // A name YAML would misread unquoted (": ", "#") is written quoted and reads back.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "contexts:\n",
            &format!(
                "contexts:\n  \"odd: name #1\":\n    server: {addr}\n    token_command: cat {}\n",
                token_file.display()
            ),
        ),
    )
    .unwrap();
    let odd = cli(&config, &[], &["context", "odd: name #1"]).await;
    assert_eq!(odd.code, 0, "{}", odd.stderr);
    let me = cli(&config, &[], &["whoami"]).await;
    assert_eq!(me.code, 0, "{}", me.stderr);
    assert!(me.stdout.contains("lead"), "{}", me.stdout);

    // A broken file is named with its line; nothing else is tried.
    std::fs::write(&config, "contexts:\n  local:\n    sever: x\n").unwrap();
    let broken = cli(&config, &[], &["whoami"]).await;
    assert_eq!(broken.code, 2, "{}", broken.stderr);
    assert!(
        broken.stderr.contains("config.yml") && broken.stderr.contains("sever"),
        "{}",
        broken.stderr
    );
    // No file at all: the default address, as before.
    let none = cli(&dir.path().join("absent.yml"), &[], &["whoami"]).await;
    assert_eq!(none.code, 3, "{}", none.stderr);
    assert!(
        none.stderr.contains("127.0.0.1:50051") || none.stderr.contains("no token"),
        "{}",
        none.stderr
    );
}

/// Completion asks the daemon: environment names, migration ids (not file names), roles; in a
/// real bash through the hook `sluice completions bash` prints.
#[tokio::test]
async fn completion_offers_environments_migrations_and_roles_from_the_daemon() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(
        dir.path().join("scripts/001_20261129_000000_complete_me.sql"),
        "-- Migration: 001_20261129_000000_complete_me\n-- Type: SCHEMA_CHANGE\n-- Description: complete me\n-- Risk: LOW\n-- Ticket: T-1\nCREATE TABLE complete_me (id int);\n",
    )
    .unwrap();
    crate::cli::ok(
        &crate::cli::sluice(
            &app,
            Some("dev"),
            dir.path(),
            &["submit", "scripts/001_20261129_000000_complete_me.sql"],
        )
        .await,
    );
    let addr = format!("http://{}", app.running.as_ref().unwrap().grpc_addr);
    let token = app.token("dev").to_owned();
    let config = dir.path().join("none.yml");
    let complete = |index: &'static str, words: &'static [&'static str]| {
        let (config, addr, token) = (config.clone(), addr.clone(), token.clone());
        async move {
            let mut args = vec!["--", "sluice"];
            args.extend(words);
            cli(
                &config,
                &[
                    ("COMPLETE", "bash"),
                    ("_CLAP_COMPLETE_INDEX", index),
                    ("SLUICE_ADDR", &addr),
                    ("SLUICE_TOKEN", &token),
                ],
                &args,
            )
            .await
        }
    };
    let environments = complete("2", &["status", ""]).await;
    assert_eq!(environments.code, 0, "{}", environments.stderr);
    for env in ["development", "staging", "production"] {
        assert!(
            environments.stdout.lines().any(|l| l == env),
            "{env}: {}",
            environments.stdout
        );
    }
    let staging = complete("2", &["status", "st"]).await;
    assert_eq!(
        staging.stdout.lines().next(),
        Some("staging"),
        "{}",
        staging.stdout
    );
    let ids = complete("2", &["show", "001"]).await;
    assert!(
        ids.stdout
            .lines()
            .any(|l| l == "001_20261129_000000_complete_me"),
        "{}",
        ids.stdout
    );
    assert!(
        !ids.stdout.contains("scripts/"),
        "no file names: {}",
        ids.stdout
    );
    let roles = complete("3", &["approve", "001_20261129_000000_complete_me", ""]).await;
    for role in ["data_ops", "dba", "tech_lead", "cto"] {
        assert!(
            roles.stdout.lines().any(|l| l == role),
            "{role}: {}",
            roles.stdout
        );
    }
    // No daemon: no candidates from it, no error on the terminal.
    let away = cli(
        &config,
        &[
            ("COMPLETE", "bash"),
            ("_CLAP_COMPLETE_INDEX", "2"),
            ("SLUICE_ADDR", "http://127.0.0.1:1"),
        ],
        &["--", "sluice", "status", "st"],
    )
    .await;
    assert_eq!(away.code, 0, "{}", away.stderr);
    assert!(
        away.stdout.trim().is_empty() && away.stderr.is_empty(),
        "{}{}",
        away.stdout,
        away.stderr
    );

    // A context whose token_command hangs (a vault waiting for a passphrase) does not hang
    // the shell: no candidates, exit 0 (the guard is a minute; the command would take two).
    let slow = dir.path().join("slow.yml");
    std::fs::write(
        &slow,
        format!("current_context: slow\ncontexts:\n  slow:\n    server: {addr}\n    token_command: sleep 120; echo never\n"),
    )
    .unwrap();
    let patient = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        cli(
            &slow,
            &[("COMPLETE", "bash"), ("_CLAP_COMPLETE_INDEX", "2")],
            &["--", "sluice", "status", "st"],
        ),
    )
    .await
    .expect("completion gives up on a hanging token_command");
    assert_eq!(patient.code, 0, "{}", patient.stderr);
    assert!(patient.stdout.trim().is_empty(), "{}", patient.stdout);

    // A real bash: the hook `sluice completions bash` prints, then the completion function.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = "source <(sluice completions bash)\nCOMP_WORDS=(sluice status pro)\nCOMP_CWORD=2\nCOMP_TYPE=9\n_clap_complete_sluice sluice pro status\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n";
    let bash = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .env("SLUICE_ADDR", &addr)
        .env("SLUICE_TOKEN", &token)
        .env("SLUICE_CONFIG", &config)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.status.success() && said.lines().any(|l| l == "production"),
        "{said}{}",
        String::from_utf8_lossy(&bash.stderr)
    );
}
