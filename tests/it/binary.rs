//! The `sluice` binary itself: `sluice server` with layered configuration from real environment
//! variables, a clear startup error for a bad file, `token new`.

use crate::harness::TestDatabase;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn shipped_config() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[tokio::test]
async fn server_reads_sluice_variables_and_environment_urls() {
    // reqwest is built without a default TLS provider: installed here too, so that the test
    // does not depend on another test having installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = TestDatabase::create("binstore").await;
    let prod = TestDatabase::create("binprod").await;
    let data = std::env::temp_dir().join(format!("sluice-bin-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let mut child = sluice()
        .args(["server", "--config-dir"])
        .arg(shipped_config())
        .current_dir(&data)
        .env("SLUICE__SERVER__REST_ADDR", "127.0.0.1:0")
        .env("SLUICE__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("SLUICE__STORE__URL", &store.url)
        .env("PROD_DB_URL", &prod.url)
        .env_remove("DEV_DB_URL")
        .env_remove("STAGING_DB_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(data.join("server.log")).unwrap(),
        ))
        .spawn()
        .expect("sluice starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("sluice listening on ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    let health = reqwest::get(format!("{addr}/healthz")).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    // The shipped users.yml has no users: nothing gets in.
    let denied = reqwest::get(format!("{addr}/api/v1/environments"))
        .await
        .unwrap();
    assert_eq!(denied.status(), reqwest::StatusCode::UNAUTHORIZED);
    // The state store is the PostgreSQL database named by SLUICE__STORE__URL.
    let tables: i64 = store
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'deployments'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM shuts down cleanly: {status}");
    // Its log, written to a file, has no terminal colour codes.
    let log = std::fs::read_to_string(data.join("server.log")).unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
    // SLUICE__STORE__URL replaced the default SQLite store under ./data.
    assert!(!data.join("data/sluice.db").exists());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_typo_in_the_configuration_stops_the_daemon_with_file_and_key() {
    let dir = std::env::temp_dir().join(format!("sluice-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in [
        "sluice.yml",
        "environments.yml",
        "approval_matrix.yml",
        "users.yml",
    ] {
        std::fs::copy(shipped_config().join(file), dir.join(file)).unwrap();
    }
    let settings = std::fs::read_to_string(dir.join("sluice.yml"))
        .unwrap()
        .replace("rest_addr:", "rest_adr:");
    std::fs::write(dir.join("sluice.yml"), settings).unwrap();
    let output = sluice()
        .args(["server", "--config-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sluice.yml"), "{stderr}");
    assert!(stderr.contains("rest_adr"), "{stderr}");
    assert!(
        stderr.contains("rest_addr"),
        "names what is allowed: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_new_prints_a_token_and_its_users_entry() {
    let output = sluice()
        .args(["token", "new", "--user", "carol", "--roles", "dba,data_ops"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let hash = sluice::auth::token_sha256(&token);
    assert!(
        text.contains(&format!("token_sha256: \"{hash}\"")),
        "{text}"
    );
    assert!(text.contains("roles: [dba, data_ops]"), "{text}");
    // Roles with spaces after the commas, as people type them.
    let spaced = sluice()
        .args(["token", "new", "--user", "erin", "--roles", "data_ops, dba"])
        .output()
        .unwrap();
    assert!(
        spaced.status.success(),
        "{}",
        String::from_utf8_lossy(&spaced.stderr)
    );
    assert!(String::from_utf8_lossy(&spaced.stdout).contains("roles: [data_ops, dba]"));
    // No user named: no token for a made-up one.
    let nameless = sluice().args(["token", "new"]).output().unwrap();
    assert_eq!(nameless.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nameless.stderr).contains("--user"));
    let bad = sluice()
        .args(["token", "new", "--user", "frank", "--roles", "cfo"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role \"cfo\""));
}

/// The shipped users.yml takes the printed entry as a plain append, and `--add-to` appends it
/// itself, checked first: a second entry of the same name is refused and the file kept.
#[test]
fn token_new_adds_its_entry_to_users_yml() {
    let dir = std::env::temp_dir().join(format!("sluice-users-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.yml");
    let shipped = std::fs::read_to_string(shipped_config().join("users.yml")).unwrap();

    // A plain append of the printed entry to the shipped file loads.
    let printed = sluice()
        .args(["token", "new", "--user", "dave", "--roles", "developer"])
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    let entry: String = printed
        .lines()
        .skip_while(|l| !l.starts_with("add to users.yml"))
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, format!("{shipped}\n{entry}")).unwrap();
    let users = sluice::config::load_users(&file).unwrap();
    assert_eq!(users.len(), 1, "{shipped}{entry}");

    // --add-to on the shipped file.
    std::fs::write(&file, &shipped).unwrap();
    let added = sluice()
        .args([
            "token",
            "new",
            "--user",
            "erin",
            "--roles",
            "dba,data_ops",
            "--add-to",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let users = sluice::config::load_users(&file).unwrap();
    assert_eq!(users.len(), 1);
    let token = String::from_utf8(added.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains(&sluice::auth::token_sha256(&token))
    );
    // The same name again: refused, the file as it was.
    let before = std::fs::read_to_string(&file).unwrap();
    let again = sluice()
        .args(["token", "new", "--user", "erin", "--add-to"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("was left as it was") && stderr.contains("erin"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    // A file that does not exist yet is made.
    let fresh = dir.join("fresh.yml");
    let made = sluice()
        .args(["token", "new", "--user", "fay", "--add-to"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(made.status.success());
    assert_eq!(sluice::config::load_users(&fresh).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
