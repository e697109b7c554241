//! Loads and validates the daemon's configuration once at start: sluice.yml (layered with
//! `SLUICE__...` environment variables), environments.yml (with `${VAR}` and `${VAR:-default}`
//! interpolation), approval_matrix.yml and users.yml. Everything is checked here, so the rest of
//! the program only ever sees typed, valid values. Errors name the file, the key and what is
//! allowed. This module never opens a database or a socket.

mod notifications;

pub use notifications::{
    ChannelConfig, ChannelKind, DeliverySettings, EmailSettings, NotificationConfig, Recipient,
    ReminderSettings, SmtpSecurity, load_notifications,
};

use crate::domain::{ApprovalPolicy, EnvironmentName, Risk, Role, UserName};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(file: &Path, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{}: {message}", file.display()))
}

/// A value that must not appear in logs: its Debug prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The daemon's own settings (sluice.yml, then `SLUICE__SECTION__KEY` variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    #[serde(default)]
    pub backup: BackupSettings,
    #[serde(default)]
    pub tracing: TracingSettings,
    #[serde(default)]
    pub log: LogSettings,
}

/// OpenTelemetry traces, exported over OTLP/gRPC (Jaeger and collectors take it). Off unless an
/// endpoint is set here (`SLUICE__TRACING__OTLP_ENDPOINT`) or in `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of traces kept (0 to 1) where no caller's `traceparent` decided it.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sampling_ratio: default_sampling_ratio(),
        }
    }
}

impl TracingSettings {
    /// The endpoint spans go to, if tracing is on.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
    }
}

fn default_service_name() -> String {
    "sluice".into()
}
fn default_sampling_ratio() -> f64 {
    1.0
}

/// The daemon's log lines (stderr).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (default) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where backups taken before applying (environments with `backup_required`) go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// One folder per environment below this one.
    #[serde(default = "default_backup_dir")]
    pub dir: String,
    /// The pg_dump program for PostgreSQL targets.
    #[serde(default = "default_pg_dump")]
    pub pg_dump: String,
    /// The mysqldump (or mariadb-dump) program for MySQL and MariaDB targets.
    #[serde(default = "default_mysqldump")]
    pub mysqldump: String,
    /// The pg_restore program (rollback tests restore a target's schema into a scratch
    /// database with it).
    #[serde(default = "default_pg_restore")]
    pub pg_restore: String,
    /// The psql program (`sluice restore` replays a PostgreSQL backup through it, in one
    /// transaction with the removal of what is there).
    #[serde(default = "default_psql")]
    pub psql: String,
    /// How many backups to keep per environment: after a new one, the oldest beyond this
    /// number are removed (0: keep them all).
    #[serde(default)]
    pub keep_per_environment: usize,
}

fn default_pg_restore() -> String {
    "pg_restore".into()
}

fn default_psql() -> String {
    "psql".into()
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            dir: default_backup_dir(),
            pg_dump: default_pg_dump(),
            mysqldump: default_mysqldump(),
            pg_restore: default_pg_restore(),
            psql: default_psql(),
            keep_per_environment: 0,
        }
    }
}

fn default_backup_dir() -> String {
    "data/backups".into()
}
fn default_pg_dump() -> String {
    "pg_dump".into()
}
fn default_mysqldump() -> String {
    "mysqldump".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(default = "default_rest_addr")]
    pub rest_addr: String,
    /// Reserved for the gRPC API; accepted so that one settings file serves both.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: String,
    /// Seconds in-flight requests and running migrations get to finish on shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// How many gRPC watch streams may be open at once (each holds a task and a subscription).
    #[serde(default = "default_max_watch_streams")]
    pub max_watch_streams: usize,
    /// How many REST `migrate?wait=true` calls may wait at once; more are refused with 429 and
    /// `Retry-After` before anything is released.
    #[serde(default = "default_max_migrate_waiters")]
    pub max_migrate_waiters: usize,
    /// Where people reach this Sluice (the dashboard or API), for links in notifications.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Serve `GET /metrics` on this address of its own instead of the REST listener (e.g. a
    /// port only the monitoring network reaches). Empty or absent: on the REST listener.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

impl ServerSettings {
    /// `metrics_addr`, when it names one.
    pub fn metrics_addr(&self) -> Option<&str> {
        self.metrics_addr
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            rest_addr: default_rest_addr(),
            grpc_addr: default_grpc_addr(),
            shutdown_grace_seconds: default_grace(),
            max_watch_streams: default_max_watch_streams(),
            max_migrate_waiters: default_max_migrate_waiters(),
            public_url: None,
            metrics_addr: None,
        }
    }
}

fn default_max_watch_streams() -> usize {
    256
}

fn default_max_migrate_waiters() -> usize {
    64
}

fn default_rest_addr() -> String {
    "127.0.0.1:8080".into()
}
fn default_grpc_addr() -> String {
    "127.0.0.1:50051".into()
}
fn default_grace() -> u64 {
    30
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://path` (default `sqlite://data/sluice.db`) or `postgres://...`.
    #[serde(default = "default_store_url")]
    pub url: String,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: default_store_url(),
            max_connections: default_pool(),
        }
    }
}

fn default_store_url() -> String {
    "sqlite://data/sluice.db".into()
}
fn default_pool() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// How often an idle worker looks for work it was not told about (milliseconds).
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// At most this many finished deployments are recorded in the state store in one commit.
    #[serde(default = "default_batch")]
    pub record_batch_size: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            poll_interval_ms: default_poll(),
            record_batch_size: default_batch(),
        }
    }
}

fn default_poll() -> u64 {
    1000
}
fn default_batch() -> usize {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// How often deadlines are checked (seconds).
    #[serde(default = "default_tick")]
    pub tick_seconds: u64,
    /// How often each environment's live schema is compared with the one Sluice left there
    /// (seconds; 0: never, but the worker still checks before it applies).
    #[serde(default = "default_drift_check")]
    pub drift_check_seconds: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            tick_seconds: default_tick(),
            drift_check_seconds: default_drift_check(),
        }
    }
}

fn default_drift_check() -> u64 {
    300
}

fn default_tick() -> u64 {
    30
}

/// Connection parameters that carry or point at a credential (libpq's, MySQL's and the
/// drivers' spellings): their values are never shown.
const SECRET_PARAMETERS: &[&str] = &[
    "password",
    "pass",
    "pwd",
    "passwd",
    "sslpassword",
    "passfile",
    "sslkey",
    "ssl-key",
    "ssl_key",
    "sslcert",
    "ssl-cert",
    "secret",
    "token",
    "access_token",
    "auth_token",
    "api_key",
];

fn is_secret_parameter(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    SECRET_PARAMETERS.contains(&name.as_str()) || name.contains("password")
}

/// A database URL fit for logs, status and errors: the password of the user part and every
/// credential parameter of the query string (or of a libpq `key=value` string) replaced by
/// `***`. The URL is parsed, not pattern-matched; one that does not parse keeps only its
/// scheme and host part.
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") {
        return redact_key_value_string(url);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let shown = if is_secret_parameter(&key) {
                            "***".to_owned()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), shown)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            if parsed.fragment().is_some() {
                parsed.set_fragment(None);
            }
            parsed.to_string()
        }
        Err(_) => {
            // Not a URL the parser accepts (several hosts, say): keep the scheme and what
            // follows the user part up to the query, drop the rest.
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            let rest = rest.split(['?', '#']).next().unwrap_or_default();
            if url.contains('@') || url.contains('?') {
                format!("{scheme}://***@{rest}?***")
            } else {
                format!("{scheme}://{rest}")
            }
        }
    }
}

/// libpq's `host=... password=...` form.
fn redact_key_value_string(text: &str) -> String {
    let mut out = Vec::new();
    let mut hide_next_value = false;
    for word in text.split_whitespace() {
        if hide_next_value {
            out.push("***".to_owned());
            hide_next_value = false;
            continue;
        }
        match word.split_once('=') {
            Some((key, value)) if is_secret_parameter(key) => {
                if value.is_empty() {
                    // `password = secret`: the value is the next word.
                    hide_next_value = true;
                }
                out.push(format!("{key}=***"));
            }
            _ => out.push(word.to_owned()),
        }
    }
    out.join(" ")
}

impl EnvironmentConfig {
    /// Whether an author may approve, dry-run and test the rollback of their own migration
    /// here without a second person (`domain::authz::authors_act_alone`, the one rule).
    pub fn authors_act_alone(&self) -> bool {
        crate::domain::authz::authors_act_alone(self.auto_approve, self.allow_self_approval)
    }
}

/// One target environment, validated.
#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    pub name: EnvironmentName,
    pub url: Secret,
    pub auto_approve: bool,
    pub auto_apply: bool,
    pub allow_self_approval: bool,
    pub backup_required: bool,
    /// How long a statement may wait for its locks in all, across its attempts.
    pub lock_timeout_seconds: u64,
    /// How long one attempt waits for a lock before giving way to the sessions queued behind
    /// it (PostgreSQL's lock_timeout per attempt).
    pub lock_attempt_ms: u64,
    pub statement_timeout_seconds: u64,
    /// PostgreSQL: how long a running statement may keep other sessions waiting for its locks
    /// before the blocking watchdog cancels it and fails the deployment (0: never).
    pub blocking_limit_seconds: u64,
    /// No approval is taken without a passing rollback test of the current scripts.
    pub require_rollback_test: bool,
    /// When the environment starts no new deployment (an emergency override excepted).
    pub freeze_windows: Vec<crate::domain::freeze::FreezeWindow>,
    /// `sluice reset` may empty the environment's database (the default only for the
    /// environment named development).
    pub allow_reset: bool,
}

impl EnvironmentConfig {
    pub fn display_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentsFile {
    promotion_order: Vec<String>,
    environments: BTreeMap<String, EnvironmentEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentEntry {
    database: DatabaseEntry,
    #[serde(default)]
    migration: MigrationEntry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseEntry {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationEntry {
    #[serde(default)]
    auto_approve: bool,
    #[serde(default = "yes")]
    auto_apply: bool,
    #[serde(default)]
    allow_self_approval: bool,
    #[serde(default)]
    backup_required: bool,
    /// Statement timeout in seconds (the seed's `timeout`).
    #[serde(default = "default_statement_timeout")]
    timeout: u64,
    #[serde(default = "default_lock_timeout")]
    lock_timeout: u64,
    #[serde(default = "default_lock_attempt_ms")]
    lock_attempt_ms: u64,
    #[serde(default)]
    blocking_limit: u64,
    #[serde(default)]
    require_rollback_test: bool,
    #[serde(default)]
    freeze_windows: Vec<FreezeEntry>,
    /// Default: only for the environment named development.
    #[serde(default)]
    allow_reset: Option<bool>,
}

/// A freeze window: `schedule` (cron, UTC) + `duration`, or `start` + `end`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeEntry {
    name: String,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    start: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    end: Option<chrono::DateTime<chrono::Utc>>,
}

impl Default for MigrationEntry {
    fn default() -> Self {
        MigrationEntry {
            auto_approve: false,
            auto_apply: true,
            allow_self_approval: false,
            backup_required: false,
            timeout: default_statement_timeout(),
            lock_timeout: default_lock_timeout(),
            lock_attempt_ms: default_lock_attempt_ms(),
            blocking_limit: 0,
            require_rollback_test: false,
            freeze_windows: Vec::new(),
            allow_reset: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_statement_timeout() -> u64 {
    300
}
fn default_lock_timeout() -> u64 {
    600
}
fn default_lock_attempt_ms() -> u64 {
    150
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    required_approvals: u32,
    required_roles: Vec<Role>,
    #[serde(default)]
    timeout_hours: Option<u32>,
    #[serde(default)]
    emergency_override: bool,
}

/// The approval matrix: environment x effective risk -> policy.
#[derive(Debug, Clone)]
pub struct ApprovalMatrix {
    policies: BTreeMap<(EnvironmentName, Risk), ApprovalPolicy>,
}

impl ApprovalMatrix {
    pub fn policy(&self, environment: &EnvironmentName, risk: Risk) -> &ApprovalPolicy {
        // Validation guarantees an entry for every configured environment and risk.
        &self.policies[&(environment.clone(), risk)]
    }
}

impl Config {
    /// Policies of the matrix that the users of users.yml can never satisfy (a role no one
    /// holds, fewer holders than the policy needs): a deployment there would wait for ever.
    /// Not an error (users are added without a restart), a warning at start and in
    /// `check-config`. Environments that approve themselves need no approvers.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for env in self.environments.iter().filter(|e| !e.auto_approve) {
            for risk in Risk::ALL {
                let policy = self.matrix.policy(&env.name, risk);
                let mut roles: Vec<Role> = policy.required_roles.clone();
                roles.sort();
                roles.dedup();
                for role in &roles {
                    let needed = policy.required_roles.iter().filter(|r| *r == role).count();
                    let holders = self.users.iter().filter(|u| u.roles.contains(role)).count();
                    if holders < needed {
                        warnings.push(format!(
                            "approval_matrix.yml: {}.{}: needs {needed} {role} approval(s) but {holders} user(s) in users.yml hold {role}: such deployments can never be approved (add users, or change the matrix)",
                            env.name,
                            risk.as_str().to_uppercase()
                        ));
                    }
                }
                let approvers = self
                    .users
                    .iter()
                    .filter(|u| u.roles.iter().any(|r| roles.contains(r)))
                    .count();
                if (approvers as u32) < policy.required_approvals && !roles.is_empty() {
                    warnings.push(format!(
                        "approval_matrix.yml: {}.{}: needs {} distinct approvers but only {approvers} user(s) hold one of its roles ({})",
                        env.name,
                        risk.as_str().to_uppercase(),
                        policy.required_approvals,
                        roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        warnings
    }
}

/// A user of the API, from users.yml.
#[derive(Debug, Clone)]
pub struct User {
    pub name: UserName,
    pub roles: Vec<Role>,
    pub token_sha256: String,
    /// Where email notifications for this user go.
    pub email: Option<String>,
    /// A Slack member id (U123ABC): approval requests mention the user.
    pub slack: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    /// `users:` with nothing under it (the shipped file) is an empty list.
    #[serde(default)]
    users: Option<Vec<UserEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    roles: Vec<Role>,
    token_sha256: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    slack: Option<String>,
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub config_dir: PathBuf,
    pub settings: Settings,
    /// In promotion order.
    pub environments: Vec<EnvironmentConfig>,
    pub matrix: ApprovalMatrix,
    pub users: Vec<User>,
    pub notifications: NotificationConfig,
}

impl Config {
    pub fn environment(&self, name: &EnvironmentName) -> Option<&EnvironmentConfig> {
        self.environments.iter().find(|e| &e.name == name)
    }

    pub fn environment_names(&self) -> String {
        self.environments
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The environment before `name` in the promotion order.
    pub fn previous_environment(&self, name: &EnvironmentName) -> Option<&EnvironmentConfig> {
        let index = self.environments.iter().position(|e| &e.name == name)?;
        index.checked_sub(1).map(|i| &self.environments[i])
    }

    /// Loads every file from `dir`, with `SLUICE__...` variables from `env` layered on top of
    /// sluice.yml and `${VAR}` in environments.yml resolved from `env` too.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(dir, &|name| std::env::var(name).ok())
    }

    pub fn load_with_env(
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if !dir.is_dir() {
            return Err(ConfigError(format!(
                "configuration directory {} does not exist (pass --config-dir)",
                dir.display()
            )));
        }
        let settings = load_settings(&dir.join("sluice.yml"))?;
        let environments = load_environments(&dir.join("environments.yml"), env)?;
        let matrix = load_matrix(&dir.join("approval_matrix.yml"), &environments)?;
        let users = load_users(&dir.join("users.yml"))?;
        let notifications = load_notifications(&dir.join("notifications.yml"), &environments, env)?;
        if let Some(url) = &settings.server.public_url
            && !url.is_empty()
            && !matches!(url::Url::parse(url), Ok(u) if matches!(u.scheme(), "http" | "https"))
        {
            return Err(err(
                &dir.join("sluice.yml"),
                format!("server.public_url: \"{url}\" is not an http(s) URL"),
            ));
        }
        let ratio = settings.tracing.sampling_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(err(
                &dir.join("sluice.yml"),
                format!("tracing.sampling_ratio: {ratio} is not between 0 and 1"),
            ));
        }
        if let Some(endpoint) = settings.tracing.endpoint()
            && !matches!(url::Url::parse(&endpoint), Ok(u) if matches!(u.scheme(), "http" | "https"))
        {
            return Err(err(
                &dir.join("sluice.yml"),
                format!(
                    "tracing.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT): \"{endpoint}\" is not an http(s) URL such as http://jaeger:4317"
                ),
            ));
        }
        Ok(Config {
            config_dir: dir.to_owned(),
            settings,
            environments,
            matrix,
            users,
            notifications,
        })
    }
}

fn load_settings(path: &Path) -> Result<Settings, ConfigError> {
    if path.exists() {
        // Parse the file alone first so that a typo'd key is reported with the file's name.
        let text = read(path)?;
        let _: Settings = parse_yaml(path, &text)?;
    }
    let built = config::Config::builder()
        .add_source(
            config::File::from(path)
                .format(config::FileFormat::Yaml)
                .required(false),
        )
        .add_source(
            config::Environment::with_prefix("SLUICE")
                .prefix_separator("__")
                .separator("__"),
        )
        .build()
        .map_err(|e| err(path, e))?;
    built.try_deserialize::<Settings>().map_err(|e| {
        err(
            path,
            format!("{e} (after applying SLUICE__* environment variables)"),
        )
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))
}

fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            err(path, e.into_inner())
        } else {
            err(path, format!("{at}: {}", e.into_inner()))
        }
    })
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of the document.
fn interpolate(
    path: &Path,
    at: &str,
    value: &mut serde_norway::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        serde_norway::Value::String(s) => {
            let expanded = shellexpand::env_with_context(s.as_str(), |name: &str| {
                env(name).map(Some).ok_or("not set")
            })
            .map_err(|e| {
                err(
                    path,
                    format!(
                        "{at}: environment variable {} is not set (write ${{{}:-default}} to give a default)",
                        e.var_name, e.var_name
                    ),
                )
            })?;
            *s = expanded.into_owned();
        }
        serde_norway::Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                let key = key.as_str().unwrap_or("?");
                let child_at = if at.is_empty() {
                    key.to_owned()
                } else {
                    format!("{at}.{key}")
                };
                interpolate(path, &child_at, child, env)?;
            }
        }
        serde_norway::Value::Sequence(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                interpolate(path, &format!("{at}[{i}]"), child, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn load_environments(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<EnvironmentConfig>, ConfigError> {
    let text = read(path)?;
    let mut document: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| err(path, e))?;
    interpolate(path, "", &mut document, env)?;
    let file: EnvironmentsFile = serde_path_to_error::deserialize(document)
        .map_err(|e| err(path, format!("{}: {}", e.path(), e.inner())))?;
    let known: BTreeSet<&String> = file.environments.keys().collect();
    let mut seen = BTreeSet::new();
    let mut environments = Vec::new();
    for (i, name) in file.promotion_order.iter().enumerate() {
        let entry = file.environments.get(name).ok_or_else(|| {
            err(
                path,
                format!(
                    "promotion_order[{i}]: unknown environment \"{name}\" (defined: {})",
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        if !seen.insert(name) {
            return Err(err(
                path,
                format!("promotion_order[{i}]: \"{name}\" is listed twice"),
            ));
        }
        let parsed: EnvironmentName = name
            .parse()
            .map_err(|e| err(path, format!("promotion_order[{i}]: {e}")))?;
        let url = entry.database.url.trim().to_owned();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:")
            || crate::target::is_mysql(&url))
        {
            return Err(err(
                path,
                format!(
                    "environments.{name}.database.url: unsupported database URL \"{}\" (use postgres://..., mysql://..., mariadb://... or sqlite://path)",
                    redact_url(&url)
                ),
            ));
        }
        if !(10..=60_000).contains(&entry.migration.lock_attempt_ms) {
            return Err(err(
                path,
                format!(
                    "environments.{name}.migration.lock_attempt_ms: {} is not between 10 and 60000",
                    entry.migration.lock_attempt_ms
                ),
            ));
        }
        if entry.migration.blocking_limit > 0
            && entry.migration.blocking_limit * 1000 <= entry.migration.lock_attempt_ms
        {
            return Err(err(
                path,
                format!(
                    "environments.{name}.migration.blocking_limit: {} s is not longer than lock_attempt_ms ({} ms): the watchdog would cancel statements that only wait their turn",
                    entry.migration.blocking_limit, entry.migration.lock_attempt_ms
                ),
            ));
        }
        if entry.migration.lock_timeout == 0 || entry.migration.timeout == 0 {
            return Err(err(
                path,
                format!(
                    "environments.{name}.migration: timeout and lock_timeout must be at least 1 second"
                ),
            ));
        }
        let mut freeze_windows = Vec::new();
        for (w, entry) in entry.migration.freeze_windows.iter().enumerate() {
            let at = format!("environments.{name}.migration.freeze_windows[{w}]");
            let window = match (&entry.schedule, &entry.duration, entry.start, entry.end) {
                (Some(schedule), Some(duration), None, None) => {
                    crate::domain::freeze::FreezeWindow::recurring(&entry.name, schedule, duration)
                }
                (None, None, Some(start), Some(end)) => {
                    crate::domain::freeze::FreezeWindow::fixed(&entry.name, start, end)
                }
                _ => Err(
                    "give either schedule (cron, UTC) and duration, or start and end (RFC 3339)"
                        .to_owned(),
                ),
            }
            .map_err(|e| {
                // Errors about one field name it after a dot; others follow a colon.
                let field = ["schedule:", "duration:", "end:"]
                    .iter()
                    .any(|f| e.starts_with(f));
                err(path, format!("{at}{}{e}", if field { "." } else { ": " }))
            })?;
            freeze_windows.push(window);
        }
        environments.push(EnvironmentConfig {
            name: parsed,
            url: Secret::new(url),
            auto_approve: entry.migration.auto_approve,
            auto_apply: entry.migration.auto_apply,
            allow_self_approval: entry.migration.allow_self_approval,
            backup_required: entry.migration.backup_required,
            lock_timeout_seconds: entry.migration.lock_timeout,
            lock_attempt_ms: entry.migration.lock_attempt_ms,
            statement_timeout_seconds: entry.migration.timeout,
            blocking_limit_seconds: entry.migration.blocking_limit,
            require_rollback_test: entry.migration.require_rollback_test,
            freeze_windows,
            allow_reset: entry
                .migration
                .allow_reset
                .unwrap_or(name.as_str() == "development"),
        });
    }
    if let Some(missing) = known.iter().find(|name| !seen.contains(**name)) {
        return Err(err(
            path,
            format!("environments.{missing}: not listed in promotion_order"),
        ));
    }
    if environments.is_empty() {
        return Err(err(
            path,
            "promotion_order: at least one environment is needed",
        ));
    }
    Ok(environments)
}

fn load_matrix(
    path: &Path,
    environments: &[EnvironmentConfig],
) -> Result<ApprovalMatrix, ConfigError> {
    let text = read(path)?;
    let file: BTreeMap<String, BTreeMap<String, PolicyEntry>> = parse_yaml(path, &text)?;
    let mut policies = BTreeMap::new();
    for (env_name, by_risk) in &file {
        let Some(environment) = environments.iter().find(|e| e.name.as_str() == env_name) else {
            return Err(err(
                path,
                format!(
                    "{env_name}: unknown environment (environments.yml defines: {})",
                    environments
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        for (risk_key, entry) in by_risk {
            let at = format!("{env_name}.{risk_key}");
            let risks: Vec<Risk> = if risk_key.eq_ignore_ascii_case("any") {
                Risk::ALL.to_vec()
            } else {
                vec![risk_key.parse().map_err(|_| {
                    err(
                        path,
                        format!("{at}: unknown risk level \"{risk_key}\" (known: ANY, LOW, MEDIUM, HIGH)"),
                    )
                })?]
            };
            if entry.required_roles.is_empty() {
                return Err(err(
                    path,
                    format!("{at}.required_roles: at least one role is needed"),
                ));
            }
            if (entry.required_approvals as usize) < entry.required_roles.len() {
                return Err(err(
                    path,
                    format!(
                        "{at}.required_approvals: {} is fewer than the {} required_roles, each of which needs its own approver",
                        entry.required_approvals,
                        entry.required_roles.len()
                    ),
                ));
            }
            let policy = ApprovalPolicy {
                required_roles: entry.required_roles.clone(),
                required_approvals: entry.required_approvals,
                timeout_hours: entry.timeout_hours,
                emergency_override: entry.emergency_override,
            };
            for risk in risks {
                // A specific risk level wins over ANY, whatever order the file lists them in.
                let specific = !risk_key.eq_ignore_ascii_case("any");
                let key = (environment.name.clone(), risk);
                if specific || !policies.contains_key(&key) {
                    policies.insert(key, policy.clone());
                }
            }
        }
    }
    for environment in environments {
        for risk in Risk::ALL {
            if !policies.contains_key(&(environment.name.clone(), risk)) {
                return Err(err(
                    path,
                    format!(
                        "{}: no policy for risk {} (add {}.{} or {}.ANY)",
                        environment.name,
                        risk.as_str().to_uppercase(),
                        environment.name,
                        risk.as_str().to_uppercase(),
                        environment.name
                    ),
                ));
            }
        }
    }
    Ok(ApprovalMatrix { policies })
}

/// Reads and validates users.yml (no file: no users).
pub fn load_users(path: &Path) -> Result<Vec<User>, ConfigError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = read(path)?;
    let file: UsersFile = parse_yaml(path, &text)?;
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    let mut users = Vec::new();
    for (i, entry) in file.users.unwrap_or_default().into_iter().enumerate() {
        let at = format!("users[{i}]");
        let name: UserName = entry
            .name
            .parse()
            .map_err(|e| err(path, format!("{at}.name: {e}")))?;
        if !names.insert(name.clone()) {
            return Err(err(
                path,
                format!("{at}.name: user \"{name}\" is listed twice"),
            ));
        }
        let hash = entry.token_sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                path,
                format!(
                    "{at}.token_sha256: expected 64 hex characters (the SHA-256 of the token; `sluice token new` prints one)"
                ),
            ));
        }
        if !hashes.insert(hash.clone()) {
            return Err(err(
                path,
                format!("{at}.token_sha256: the same token hash is given to two users"),
            ));
        }
        if entry.roles.is_empty() {
            return Err(err(
                path,
                format!("{at}.roles: at least one role is needed"),
            ));
        }
        let email = entry.email.map(|e| e.trim().to_owned());
        if let Some(email) = &email
            && email.parse::<lettre::Address>().is_err()
        {
            return Err(err(
                path,
                format!("{at}.email: \"{email}\" is not an email address"),
            ));
        }
        let slack = entry.slack.map(|s| s.trim().to_owned());
        if let Some(slack) = &slack
            && (slack.is_empty()
                || slack.len() > 32
                || !slack.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(err(
                path,
                format!(
                    "{at}.slack: \"{slack}\" is not a Slack member id (letters and digits, like U123ABC)"
                ),
            ));
        }
        users.push(User {
            name,
            roles: entry.roles,
            token_sha256: hash,
            email,
            slack,
        });
    }
    Ok(users)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The shipped environments, for tests of the other files.
    pub fn environments() -> Vec<EnvironmentConfig> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/environments.yml");
        load_environments(&path, &|_| None).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_form_is_redacted() {
        let cases = [
            (
                "postgres://migrator:s3cret@db:5432/app",
                "postgres://migrator:***@db:5432/app",
            ),
            (
                "postgres://migrator@db/app?password=s3cret&sslmode=require",
                "postgres://migrator@db/app?password=***&sslmode=require",
            ),
            (
                "postgres://db/app?sslpassword=s3cret&passfile=/home/m/.pgpass&application_name=x",
                "postgres://db/app?sslpassword=***&passfile=***&application_name=x",
            ),
            (
                "mysql://root:p%40ss%3Aword@db:3306/app?ssl-key=/k.pem",
                "mysql://root:***@db:3306/app?ssl-key=***",
            ),
            (
                "postgres://u@db/app?PASSWORD=s3cret",
                "postgres://u@db/app?PASSWORD=***",
            ),
            (
                "host=db user=migrator password=s3cret dbname=app",
                "host=db user=migrator password=*** dbname=app",
            ),
            (
                "sqlite://data/development.db",
                "sqlite://data/development.db",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3cret"), "{url}");
        }
        let odd = redact_url("postgres://u:s3cret@h1,h2:5432/app?password=s3cret");
        assert!(!odd.contains("s3cret"), "{odd}");
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn shipped_config_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    fn copy_shipped(dir: &Path) {
        for file in [
            "sluice.yml",
            "environments.yml",
            "approval_matrix.yml",
            "users.yml",
        ] {
            std::fs::copy(shipped_config_dir().join(file), dir.join(file)).unwrap();
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn shipped_configuration_loads_with_the_seed_matrix() {
        let config = Config::load_with_env(&shipped_config_dir(), &|_| None).unwrap();
        let names: Vec<&str> = config
            .environments
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["development", "staging", "production"]);
        assert_eq!(
            config.environments[0].url.expose(),
            "sqlite://data/development.db"
        );
        let production: EnvironmentName = "production".parse().unwrap();
        let high = config.matrix.policy(&production, Risk::High);
        assert_eq!(
            high.required_roles,
            [Role::DataOpsLead, Role::Dba, Role::TechLead, Role::Cto]
        );
        assert!(high.emergency_override);
        assert!(high.timeout_hours.is_some());
        let staging: EnvironmentName = "staging".parse().unwrap();
        assert_eq!(
            config.matrix.policy(&staging, Risk::Low).required_approvals,
            2
        );
        assert!(config.users.is_empty(), "no default users or tokens ship");
    }

    #[test]
    fn policies_no_user_can_satisfy_are_warned_about() {
        let mut config = Config::load_with_env(&shipped_config_dir(), &|_| None).unwrap();
        let user = |name: &str, roles: &[Role]| User {
            name: name.parse().unwrap(),
            roles: roles.to_vec(),
            token_sha256: String::new(),
            email: None,
            slack: None,
        };
        config.users = vec![
            user("a", &[Role::DataOps]),
            user("b", &[Role::DataOps]),
            user("lead", &[Role::DataOpsLead]),
            user("dba", &[Role::Dba]),
            user("tech", &[Role::TechLead]),
        ];
        let warnings = config.warnings();
        // Nobody holds cto: production HIGH can never be approved; development approves itself.
        assert!(
            warnings.iter().any(|w| w.starts_with(
                "approval_matrix.yml: production.HIGH: needs 1 cto approval(s) but 0 user(s)"
            )),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().all(|w| !w.contains("development.")),
            "{warnings:#?}"
        );
        config.users.push(user("cto", &[Role::Cto]));
        assert_eq!(config.warnings(), Vec::<String>::new());
    }

    #[test]
    fn environment_urls_are_interpolated() {
        let config = Config::load_with_env(&shipped_config_dir(), &|name| {
            (name == "PROD_DB_URL").then(|| "postgres://u:pw@db/prod".to_owned())
        })
        .unwrap();
        assert_eq!(
            config.environments[2].url.expose(),
            "postgres://u:pw@db/prod"
        );
        assert_eq!(
            config.environments[2].display_url(),
            "postgres://u:***@db/prod"
        );
        assert_eq!(format!("{:?}", config.environments[2].url), "[redacted]");
    }

    #[test]
    fn unknown_role_in_matrix_names_file_key_and_allowed_values() {
        let dir = temp_dir("role");
        copy_shipped(&dir);
        let matrix = std::fs::read_to_string(dir.join("approval_matrix.yml"))
            .unwrap()
            .replace("      - cto", "      - cfo");
        write(&dir, "approval_matrix.yml", &matrix);
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("approval_matrix.yml"), "{e}");
        assert!(e.contains("production.HIGH.required_roles[3]"), "{e}");
        assert!(e.contains("cfo") && e.contains("data_ops_lead"), "{e}");
    }

    #[test]
    fn typo_in_environment_key_is_named() {
        let dir = temp_dir("typo");
        copy_shipped(&dir);
        let envs = std::fs::read_to_string(dir.join("environments.yml"))
            .unwrap()
            .replacen("auto_approve", "auto_aprove", 1);
        write(&dir, "environments.yml", &envs);
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("environments.yml"), "{e}");
        assert!(e.contains("auto_aprove"), "{e}");
        assert!(e.contains("environments.development.migration"), "{e}");
    }

    #[test]
    fn lock_settings_are_validated() {
        let dir = temp_dir("locks");
        copy_shipped(&dir);
        let shipped = std::fs::read_to_string(dir.join("environments.yml")).unwrap();
        for (from, to, expected) in [
            (
                "lock_attempt_ms: 150",
                "lock_attempt_ms: 5",
                "environments.development.migration.lock_attempt_ms: 5 is not between 10 and 60000",
            ),
            (
                "lock_attempt_ms: 150\n      blocking_limit: 10",
                "lock_attempt_ms: 2000\n      blocking_limit: 2",
                "environments.staging.migration.blocking_limit: 2 s is not longer than lock_attempt_ms (2000 ms)",
            ),
            ("blocking_limit: 0", "blocking_limit: -1", "blocking_limit"),
        ] {
            assert!(shipped.contains(from), "{from}");
            write(&dir, "environments.yml", &shipped.replacen(from, to, 1));
            let e = Config::load_with_env(&dir, &|_| None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn unset_variable_without_default_is_named() {
        let dir = temp_dir("unset");
        copy_shipped(&dir);
        let envs = std::fs::read_to_string(dir.join("environments.yml"))
            .unwrap()
            .replace(
                "${PROD_DB_URL:-sqlite://data/production.db}",
                "${PROD_DB_URL}",
            );
        write(&dir, "environments.yml", &envs);
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "environments.production.database.url: environment variable PROD_DB_URL is not set"
            ),
            "{e}"
        );
    }

    #[test]
    fn users_file_is_validated() {
        let dir = temp_dir("users");
        copy_shipped(&dir);
        write(
            &dir,
            "users.yml",
            "users:\n  - name: alice\n    roles: [developer, cfo]\n    token_sha256: \"00\"\n",
        );
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("users.yml") && e.contains("users[0].roles[1]"),
            "{e}"
        );
        write(
            &dir,
            "users.yml",
            "users:\n  - name: alice\n    roles: [developer]\n    token_sha256: \"00\"\n",
        );
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("users[0].token_sha256: expected 64 hex"), "{e}");
    }

    #[test]
    fn freeze_windows_are_validated() {
        let dir = temp_dir("freeze");
        copy_shipped(&dir);
        let envs = std::fs::read_to_string(dir.join("environments.yml")).unwrap();
        let with = |window: &str| {
            // After production's (the only 1800 s statement timeout).
            envs.replacen(
                "      timeout: 1800\n",
                &format!("      timeout: 1800\n      freeze_windows:\n{window}"),
                1,
            )
        };
        write(
            &dir,
            "environments.yml",
            &with(
                "        - {name: weekend, schedule: \"0 16 * * FRI\", duration: 64h}\n        - {name: release, start: 2026-12-20T00:00:00Z, end: 2027-01-05T00:00:00Z}\n",
            ),
        );
        let config = Config::load_with_env(&dir, &|_| None).unwrap();
        assert_eq!(config.environments[2].freeze_windows.len(), 2);
        write(
            &dir,
            "environments.yml",
            &with("        - {name: weekend, schedule: \"every friday\", duration: 64h}\n"),
        );
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("environments.production.migration.freeze_windows[0].schedule: \"every friday\" is not a cron pattern"),
            "{e}"
        );
        write(
            &dir,
            "environments.yml",
            &with("        - {name: half, start: 2026-12-20T00:00:00Z}\n"),
        );
        let e = Config::load_with_env(&dir, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("freeze_windows[0]: give either schedule"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://a:b@h:5432/d"),
            "postgres://a:***@h:5432/d"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
