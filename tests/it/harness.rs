//! Starts the real daemon on port 0 against real databases: a fresh PostgreSQL database per
//! test for the state store and one per target environment (or SQLite files in a fresh folder),
//! all dropped when the test ends. PostgreSQL is found at SLUICE_TEST_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres); when it is not reachable the test fails with
//! a message saying so.

use reqwest::StatusCode;
use serde_json::Value;
use sluice::api::grpc::pb::sluice_client::SluiceClient;
use sluice::config::Config;
use sluice::engine::{Outcome, Worker};
use sluice::service::{Clock, ManualClock};
use sluice::{Running, StartOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

pub fn admin_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random bytes");
    hex::encode(bytes)
}

pub async fn admin_client() -> tokio_postgres::Client {
    let url = admin_url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}); start it (pg_ctlcluster 15 main start) or set SLUICE_TEST_PG_URL"
        )
    });
    tokio::spawn(connection);
    client
}

/// A PostgreSQL database that exists for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create(label: &str) -> TestDatabase {
        let name = format!("sluice_test_{label}_{}", random_suffix());
        admin_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name} STRATEGY FILE_COPY"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        TestDatabase {
            url: with_database(&admin_url(), &name),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: use a runtime of its own on a plain thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Every user the tests use, with the roles of the seed's organisation.
pub const USERS: &[(&str, &[&str])] = &[
    ("dev", &["developer"]),
    ("dev2", &["developer"]),
    ("ops1", &["data_ops"]),
    ("ops2", &["data_ops"]),
    ("lead", &["data_ops_lead"]),
    ("dba", &["dba"]),
    ("tech", &["tech_lead"]),
    ("cto", &["cto"]),
    ("admin", &["admin"]),
    // Holds a developer's and a lead's roles at once: the hostile case for self-approval.
    ("devlead", &["developer", "data_ops_lead"]),
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
    /// A PostgreSQL state store with MariaDB (MySQL) targets.
    MySqlTargets,
}

pub fn mysql_admin_url() -> String {
    std::env::var("SLUICE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into())
}

async fn mysql_admin() -> sqlx::mysql::MySqlConnection {
    use sqlx::Connection;
    let url = mysql_admin_url();
    sqlx::mysql::MySqlConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "MariaDB/MySQL is not reachable at {url} ({e}); start it (start-stop-daemon --start --background --exec /usr/sbin/mariadbd) or set SLUICE_TEST_MYSQL_URL"
        )
    })
}

/// A MariaDB (MySQL) database that exists for one test.
pub struct TestMySqlDatabase {
    pub name: String,
    pub url: String,
}

impl TestMySqlDatabase {
    pub async fn create(label: &str) -> TestMySqlDatabase {
        let name = format!("sluice_test_{label}_{}", random_suffix());
        let mut admin = mysql_admin().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        TestMySqlDatabase {
            url: with_database(&mysql_admin_url(), &name),
            name,
        }
    }

    pub async fn connect(&self) -> sqlx::mysql::MySqlConnection {
        use sqlx::Connection;
        sqlx::mysql::MySqlConnection::connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for TestMySqlDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) =
                    sqlx::mysql::MySqlConnection::connect(&mysql_admin_url()).await
                {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name}"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

pub struct AppOptions {
    pub backend: Backend,
    pub background_workers: bool,
    pub manual_clock: bool,
    /// Edits the shipped environments.yml before the daemon reads it.
    pub edit_environments: Option<fn(String) -> String>,
    /// Edits the loaded configuration before the daemon starts.
    pub edit_config: Option<fn(&mut Config)>,
    /// The daemon's notifications.yml (none: no channel).
    pub notifications: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            backend: Backend::Postgres,
            background_workers: true,
            manual_clock: false,
            edit_environments: None,
            edit_config: None,
            notifications: None,
        }
    }
}

pub struct TestApp {
    pub running: Option<Running>,
    pub base: String,
    pub http: reqwest::Client,
    pub tokens: HashMap<String, String>,
    pub targets: HashMap<String, TestDatabase>,
    pub mysql_targets: HashMap<String, TestMySqlDatabase>,
    pub sqlite_dir: Option<PathBuf>,
    pub clock: Option<Arc<ManualClock>>,
    pub config: Config,
    pub store: Option<TestDatabase>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    // reqwest is built without a default TLS provider (the daemon installs ring at start).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = rustls_free_logging();
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", random_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    for file in ["sluice.yml", "environments.yml", "approval_matrix.yml"] {
        std::fs::copy(shipped.join(file), dir.join(file)).unwrap();
    }
    let mut tokens = HashMap::new();
    let mut users_yml = String::from("users:\n");
    for (name, roles) in USERS {
        let token = sluice::auth::new_token().unwrap();
        // Every user has an address and a Slack id, so that notifications can find them.
        users_yml.push_str(&format!(
            "  - name: {name}\n    roles: [{}]\n    token_sha256: \"{}\"\n    email: {name}@example.com\n    slack: U{}\n",
            roles.join(", "),
            sluice::auth::token_sha256(&token),
            name.to_uppercase()
        ));
        tokens.insert(name.to_string(), token);
    }
    std::fs::write(dir.join("users.yml"), users_yml).unwrap();
    if let Some(text) = &options.notifications {
        std::fs::write(dir.join("notifications.yml"), text).unwrap();
    }
    if let Some(edit) = options.edit_environments {
        let text = std::fs::read_to_string(dir.join("environments.yml")).unwrap();
        std::fs::write(dir.join("environments.yml"), edit(text)).unwrap();
    }

    let mut env: HashMap<String, String> = HashMap::new();
    let mut targets = HashMap::new();
    let mut mysql_targets = HashMap::new();
    let mut store_db = None;
    let mut sqlite_dir = None;
    env.insert("SLUICE__SERVER__REST_ADDR".into(), "127.0.0.1:0".into());
    env.insert("SLUICE__SERVER__GRPC_ADDR".into(), "127.0.0.1:0".into());
    match options.backend {
        Backend::Postgres => {
            // Creating databases is the slow part of a test: do all four at once.
            let (store, dev, staging, production) = tokio::join!(
                TestDatabase::create("store"),
                TestDatabase::create("dev"),
                TestDatabase::create("stag"),
                TestDatabase::create("prod"),
            );
            env.insert("SLUICE__STORE__URL".into(), store.url.clone());
            store_db = Some(store);
            for (environment, var, db) in [
                ("development", "DEV_DB_URL", dev),
                ("staging", "STAGING_DB_URL", staging),
                ("production", "PROD_DB_URL", production),
            ] {
                env.insert(var.into(), db.url.clone());
                targets.insert(environment.to_string(), db);
            }
        }
        Backend::MySqlTargets => {
            let (store, dev, staging, production) = tokio::join!(
                TestDatabase::create("store"),
                TestMySqlDatabase::create("dev"),
                TestMySqlDatabase::create("stag"),
                TestMySqlDatabase::create("prod"),
            );
            env.insert("SLUICE__STORE__URL".into(), store.url.clone());
            store_db = Some(store);
            for (environment, var, db) in [
                ("development", "DEV_DB_URL", dev),
                ("staging", "STAGING_DB_URL", staging),
                ("production", "PROD_DB_URL", production),
            ] {
                env.insert(var.into(), db.url.clone());
                mysql_targets.insert(environment.to_string(), db);
            }
        }
        Backend::Sqlite => {
            let data = dir.join("data");
            env.insert(
                "SLUICE__STORE__URL".into(),
                format!("sqlite://{}", data.join("sluice.db").display()),
            );
            for (environment, var) in [
                ("development", "DEV_DB_URL"),
                ("staging", "STAGING_DB_URL"),
                ("production", "PROD_DB_URL"),
            ] {
                env.insert(
                    var.into(),
                    format!(
                        "sqlite://{}",
                        data.join(format!("{environment}.db")).display()
                    ),
                );
            }
            sqlite_dir = Some(data);
        }
    }
    env.insert("SLUICE__WORKER__POLL_INTERVAL_MS".into(), "200".into());
    let mut config = load_config(&dir, &env);
    if let Some(edit) = options.edit_config {
        edit(&mut config);
    }
    let clock = options
        .manual_clock
        .then(|| Arc::new(ManualClock::new(chrono::Utc::now())));
    let start_options = StartOptions {
        clock: match &clock {
            Some(c) => c.clone() as Arc<dyn Clock>,
            None => Arc::new(sluice::service::SystemClock),
        },
        background_workers: options.background_workers,
    };
    let running = sluice::start(config.clone(), start_options)
        .await
        .expect("daemon starts");
    TestApp {
        base: format!("http://{}", running.rest_addr),
        running: Some(running),
        http: reqwest::Client::new(),
        tokens,
        targets,
        mysql_targets,
        sqlite_dir,
        clock,
        config,
        store: store_db,
    }
}

fn rustls_free_logging() -> Option<()> {
    // Tests log through the daemon's own tracing when RUST_LOG is set.
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    Some(())
}

/// Loads the configuration the way the daemon does, with `env` standing in for the process
/// environment (tests run in parallel and must not share variables).
pub fn load_config(dir: &Path, env: &HashMap<String, String>) -> Config {
    let env = env.clone();
    let lookup = move |name: &str| env.get(name).cloned();
    // SLUICE__ variables are layered by the `config` crate from the real environment; apply
    // the test's ones by hand on top of the loaded settings.
    let mut config = Config::load_with_env(dir, &lookup).expect("test configuration loads");
    if let Some(url) = lookup("SLUICE__STORE__URL") {
        config.settings.store.url = url;
    }
    if let Some(addr) = lookup("SLUICE__SERVER__REST_ADDR") {
        config.settings.server.rest_addr = addr;
    }
    if let Some(addr) = lookup("SLUICE__SERVER__GRPC_ADDR") {
        config.settings.server.grpc_addr = addr;
    }
    if let Some(poll) = lookup("SLUICE__WORKER__POLL_INTERVAL_MS") {
        config.settings.worker.poll_interval_ms = poll.parse().unwrap();
    }
    config.settings.server.shutdown_grace_seconds = 5;
    config.settings.backup.dir = dir.join("backups").display().to_string();
    config
}

impl TestApp {
    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .get(user)
            .unwrap_or_else(|| panic!("no test user {user}"))
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        user: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(user) = user {
            request = request.bearer_auth(self.token(user));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the daemon");
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, user: &str, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, Some(user), path, None)
            .await
    }

    pub async fn post(&self, user: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, Some(user), path, Some(body))
            .await
    }

    pub async fn delete(&self, user: &str, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, Some(user), path, None)
            .await
    }

    /// Submits a migration as `user` and returns its id.
    pub async fn submit(&self, user: &str, body: Value) -> String {
        let (status, value) = self.post(user, "/api/v1/migrations", body).await;
        assert_eq!(status, StatusCode::CREATED, "submit failed: {value}");
        value["id"].as_str().unwrap().to_owned()
    }

    /// Approves as a reviewer would: reads the deployment, then approves the checksum it shows.
    pub async fn approve(&self, user: &str, deployment: &str, role: &str) -> Value {
        let checksum = self.deployment(deployment).await["checksum"].clone();
        let (status, value) = self
            .post(
                user,
                &format!("/api/v1/deployments/{deployment}/approvals"),
                serde_json::json!({"role": role, "comment": format!("ok from {user}"), "checksum": checksum}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "approval by {user} as {role} failed: {value}"
        );
        value
    }

    pub async fn deployment(&self, id: &str) -> Value {
        let (status, value) = self
            .get("admin", &format!("/api/v1/deployments/{id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        value
    }

    /// Waits (polling the API, bounded) until the deployment reaches one of `states`.
    pub async fn wait_for_state(&self, id: &str, states: &[&str]) -> Value {
        for _ in 0..600 {
            let d = self.deployment(id).await;
            if states.contains(&d["state"].as_str().unwrap_or("")) {
                return d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!(
            "deployment {id} never reached {states:?}; last: {}",
            self.deployment(id).await
        );
    }

    /// A gRPC client of the daemon.
    pub async fn grpc(&self) -> SluiceClient<tonic::transport::Channel> {
        let addr = self.running.as_ref().unwrap().grpc_addr;
        SluiceClient::connect(format!("http://{addr}"))
            .await
            .expect("gRPC connects")
    }

    /// A gRPC request carrying `user`'s token.
    pub fn grpc_request<T>(&self, user: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token(user)).parse().unwrap(),
        );
        request
    }

    pub fn service(&self) -> &sluice::service::Service {
        &self.running.as_ref().unwrap().service
    }

    /// Runs one round of an environment's worker (for tests started without background
    /// workers).
    pub async fn run_worker(&self, environment: &str) -> Outcome {
        let env = self
            .config
            .environments
            .iter()
            .find(|e| e.name.as_str() == environment)
            .unwrap()
            .clone();
        Worker::new(self.service().clone(), env, CancellationToken::new())
            .run_once()
            .await
            .expect("worker round")
    }

    /// Whether a table exists in an environment's target database.
    pub async fn table_exists(&self, environment: &str, table: &str) -> bool {
        if let Some(db) = self.mysql_targets.get(environment) {
            use sqlx::Row;
            let mut conn = db.connect().await;
            let row = sqlx::query(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(table)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            return row.get::<i64, _>(0) == 1;
        }
        match &self.sqlite_dir {
            None => {
                let client = self.targets[environment].client().await;
                client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await
                    .unwrap()
                    .get(0)
            }
            Some(dir) => {
                use sqlx::{ConnectOptions, Row};
                let file = dir.join(format!("{environment}.db"));
                if !file.exists() {
                    return false;
                }
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file);
                let mut conn = options.connect().await.unwrap();
                let row = sqlx::query(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
                )
                .bind(table)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                row.get::<i64, _>(0) == 1
            }
        }
    }

    /// Runs SQL on an environment's SQLite target file behind Sluice's back.
    pub async fn sqlite_execute(&self, environment: &str, sql: &str) {
        use sqlx::ConnectOptions;
        let dir = self.sqlite_dir.as_ref().expect("SQLite targets");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join(format!("{environment}.db")));
        let mut conn = options.connect().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// environments.yml with a freeze window from five minutes ago for two hours (in real time:
/// the manual clock starts at it) added after each `anchor` (the end of an environment's
/// `migration:` settings).
pub fn with_freeze_window(text: String, anchors: &[&str]) -> String {
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    let end = start + chrono::Duration::hours(2);
    let window = format!(
        "      freeze_windows:\n        - {{name: release freeze, start: {}, end: {}}}\n",
        start.to_rfc3339(),
        end.to_rfc3339()
    );
    anchors.iter().fold(text, |text, anchor| {
        text.replace(anchor, &format!("{anchor}{window}"))
    })
}

/// The end of production's settings in the shipped environments.yml.
pub const PRODUCTION_SETTINGS_END: &str = "      timeout: 1800\n      lock_timeout: 600\n      lock_attempt_ms: 150\n      blocking_limit: 10\n";
/// The end of staging's settings in the shipped environments.yml.
pub const STAGING_SETTINGS_END: &str = "      timeout: 600\n      lock_timeout: 600\n      lock_attempt_ms: 150\n      blocking_limit: 10\n";

pub fn migration(description: &str, risk: &str, up: &str, down: Option<&str>) -> Value {
    serde_json::json!({
        "kind": "schema_change",
        "description": description,
        "risk": risk,
        "ticket": "PROJ-123",
        "estimated_duration": "5m",
        "up_sql": up,
        "down_sql": down,
    })
}
