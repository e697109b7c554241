//! The `sluice` command line. `sluice server` runs the daemon; every other command is a thin
//! gRPC client of it (or works offline: `validate`, `new`, `token new`, `check-config`,
//! `completions`). The seed's migrate.sh and create-migration.sh commands keep their names and
//! arguments.
//!
//! Exit codes: 0 success, 1 the operation failed (a failed migration, validation findings,
//! a refused request), 2 usage error, 3 cannot reach the daemon or not authorized.

pub mod scripts;

use crate::api::grpc::pb;
use crate::api::grpc::pb::sluice_client::SluiceClient;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Database-migration control plane")]
pub struct Cli {
    /// The daemon's gRPC address.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// API token (see `sluice token new`).
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DialectArg {
    Postgres,
    Mysql,
    Both,
}

impl From<DialectArg> for crate::lint::Dialect {
    fn from(d: DialectArg) -> Self {
        match d {
            DialectArg::Postgres => crate::lint::Dialect::Postgres,
            DialectArg::Mysql => crate::lint::Dialect::MySql,
            DialectArg::Both => crate::lint::Dialect::Both,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: REST and gRPC APIs, one worker per environment, the scheduler.
    Server {
        /// Folder with sluice.yml, environments.yml, approval_matrix.yml and users.yml.
        #[arg(long, env = "SLUICE_CONFIG_DIR", default_value = "config")]
        config_dir: PathBuf,
    },
    /// Check the configuration files and exit.
    CheckConfig {
        #[arg(long, env = "SLUICE_CONFIG_DIR", default_value = "config")]
        config_dir: PathBuf,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Release every approved deployment of an environment to its worker.
    Migrate {
        environment: String,
        /// Follow the deployments until they finish; the exit code is their outcome.
        #[arg(long)]
        wait: bool,
        /// With --emergency: approve everything awaiting approval there without the full set.
        #[arg(long, requires = "emergency")]
        force: bool,
        /// The reason for an emergency override (needs --force).
        #[arg(long, requires = "force", value_name = "REASON")]
        emergency: Option<String>,
    },
    /// An environment's queue, pending approvals, lock and last applied migration.
    Status {
        environment: String,
        #[arg(long)]
        verbose: bool,
    },
    /// Roll back a migration in an environment with its rollback script.
    Rollback {
        environment: String,
        migration_id: String,
        #[arg(long, requires = "emergency")]
        force: bool,
        #[arg(long, requires = "force", value_name = "REASON")]
        emergency: Option<String>,
        /// Follow the rollback until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Retry a failed deployment (after fixing its cause).
    Retry {
        environment: String,
        migration_id: String,
    },
    /// Cancel a deployment that has not run (or skip a failed one).
    Cancel {
        environment: String,
        migration_id: String,
        #[arg(default_value = "")]
        reason: String,
    },
    /// Check migration scripts offline: header, syntax, forbidden statements, risk findings.
    Validate {
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
        /// The SQL the target databases speak: decides the risk analysis (mysql covers MariaDB;
        /// both when environments of the two kinds take the scripts).
        #[arg(long, value_enum, default_value = "postgres")]
        dialect: DialectArg,
    },
    /// Approve a migration in the role given (the approver must be the token's user).
    Approve {
        migration_id: String,
        role: String,
        approver: String,
        comment: String,
        /// Default: the first environment of the promotion order where it awaits this role.
        #[arg(long)]
        environment: Option<String>,
        /// The checksum of the scripts you reviewed (`sluice show`/`status --verbose` print it).
        /// Default: the checksum the daemon shows now, printed before approving.
        #[arg(long)]
        checksum: Option<String>,
    },
    /// Reject a migration.
    Reject {
        migration_id: String,
        comment: String,
        /// Default: the first environment where it awaits approval.
        #[arg(long)]
        environment: Option<String>,
    },
    /// Lock an environment: nothing new starts there.
    Lock { environment: String, reason: String },
    /// Unlock an environment.
    Unlock {
        environment: String,
        /// Accepted for the seed's `unlock --force`; unlocking needs an operator role either way.
        #[arg(long)]
        force: bool,
    },
    /// Write a new migration script and its rollback from a template.
    New {
        /// SCHEMA_CHANGE, DATA_MIGRATION or HOTFIX.
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// LOW, MEDIUM or HIGH.
        #[arg(long)]
        risk: Option<String>,
        /// Estimated duration, e.g. 5m.
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        author: Option<String>,
        #[arg(long)]
        ticket: Option<String>,
        /// The folder holding scripts/ and rollbacks/.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Submit migration scripts (with the metadata `new` wrote in their header).
    Submit {
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
    },
    /// Migrations and their state per environment (or in one environment).
    History {
        environment: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The audit trail: every state change, who, what, when.
    Audit {
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        migration: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Follow an environment's deployments as they change (until Ctrl-C), or one migration's
    /// deployment there until it finishes.
    Watch {
        environment: String,
        migration_id: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token and the users.yml entry that grants it.
    New {
        /// The user's name in users.yml.
        #[arg(long, default_value = "alice")]
        user: String,
        /// Roles, comma separated: developer, data_ops, data_ops_lead, dba, tech_lead, cto, admin.
        #[arg(long, value_delimiter = ',', default_value = "developer")]
        roles: Vec<String>,
    },
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn operation(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

type CliResult<T = ()> = Result<T, Failure>;

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server { ref config_dir } => run_server(config_dir.clone()),
        _ => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run(cli)),
            Err(e) => Err(Failure::operation(format!("cannot start the runtime: {e}"))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("sluice: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn run_server(config_dir: PathBuf) -> CliResult {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config =
        crate::config::Config::load(&config_dir).map_err(|e| Failure::operation(e.to_string()))?;
    if config.users.is_empty() {
        tracing::warn!(
            "{} lists no users: every API call will be refused until you add one (run `sluice token new`)",
            config_dir.join("users.yml").display()
        );
    }
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::operation(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let running = crate::start(config, crate::StartOptions::default())
            .await
            .map_err(|e| Failure::operation(format!("{e:#}")))?;
        println!(
            "sluice listening on http://{} (REST) and http://{} (gRPC)",
            running.rest_addr, running.grpc_addr
        );
        shutdown_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The connection to the daemon, with the token.
struct Client {
    inner: SluiceClient<Channel>,
    token: Option<String>,
    server: String,
}

impl Client {
    async fn connect(server: &str, token: Option<String>) -> CliResult<Client> {
        let unreachable = |reason: String| Failure {
            code: 3,
            message: format!(
                "cannot reach sluice at {server} ({reason}); start it with \"sluice server\" or set SLUICE_ADDR"
            ),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
            .map_err(|e| Failure::usage(format!("--server {server}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(root_cause(&e)))?;
        Ok(Client {
            inner: SluiceClient::new(channel),
            token,
            server: server.to_owned(),
        })
    }

    fn request<T>(&self, message: T) -> CliResult<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let token = self.token.as_deref().ok_or_else(|| Failure {
            code: 3,
            message: "no token: pass --token or set SLUICE_TOKEN (an administrator makes one with `sluice token new`)".into(),
        })?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Failure::usage("the token holds characters a header cannot carry"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    fn failed(&self, status: tonic::Status) -> Failure {
        use tonic::Code;
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Failure {
                code: 3,
                message: format!("not authorized: {}", status.message()),
            },
            Code::Unavailable => Failure {
                code: 3,
                message: format!(
                    "cannot reach sluice at {} ({}); start it with \"sluice server\" or set SLUICE_ADDR",
                    self.server,
                    status.message()
                ),
            },
            _ => Failure::operation(status.message().to_owned()),
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    // "Connection refused (os error 111)" reads better as "connection refused".
    match text.split(" (os error").next() {
        Some(short) if !short.is_empty() => short.to_ascii_lowercase(),
        _ => text,
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> CliResult {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::operation(format!("cannot encode the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

async fn run(cli: Cli) -> CliResult {
    let output = cli.output;
    match cli.command {
        Command::Server { .. } => unreachable!("handled before the runtime starts"),
        Command::CheckConfig { config_dir } => {
            let config = crate::config::Config::load(&config_dir)
                .map_err(|e| Failure::operation(e.to_string()))?;
            println!(
                "{}: configuration is valid ({} environments: {}; {} users)",
                config_dir.display(),
                config.environments.len(),
                config.environment_names(),
                config.users.len()
            );
            Ok(())
        }
        Command::Token {
            command: TokenCommand::New { user, roles },
        } => new_token(&user, &roles),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(())
        }
        Command::Validate { scripts, dialect } => validate(&scripts, dialect.into(), output),
        Command::New {
            kind,
            description,
            risk,
            duration,
            author,
            ticket,
            dir,
        } => new_migration(kind, description, risk, duration, author, ticket, &dir),
        command => {
            let mut client = Client::connect(&cli.server, cli.token).await?;
            remote(&mut client, command, output).await
        }
    }
}

fn new_token(user: &str, roles: &[String]) -> CliResult {
    let name: crate::domain::UserName = user
        .parse()
        .map_err(|e: crate::domain::DomainError| Failure::usage(e.to_string()))?;
    for role in roles {
        role.parse::<crate::domain::Role>()
            .map_err(|e| Failure::usage(e.to_string()))?;
    }
    let token = crate::auth::new_token()
        .map_err(|e| Failure::operation(format!("cannot read random bytes: {e}")))?;
    let hash = crate::auth::token_sha256(&token);
    println!("token (give it to {name}; it is shown only once): {token}");
    println!();
    println!("add to users.yml:");
    println!("  - name: {name}");
    println!("    roles: [{}]", roles.join(", "));
    println!("    token_sha256: \"{hash}\"");
    Ok(())
}

fn validate(paths: &[PathBuf], dialect: crate::lint::Dialect, output: Output) -> CliResult {
    let mut all = Vec::new();
    for path in paths {
        let problems = scripts::validate_file(path, dialect);
        if output == Output::Table {
            if problems.is_empty() {
                println!("{}: ok", path.display());
            }
            for problem in &problems {
                println!("{problem}");
            }
        }
        all.extend(problems);
    }
    if output == Output::Json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|p| serde_json::json!({"path": p.path, "line": p.line, "message": p.message}))
            .collect();
        print_json(&list)?;
    }
    if all.is_empty() {
        Ok(())
    } else {
        Err(Failure::operation(format!(
            "{} finding(s) in {} script(s)",
            all.len(),
            paths.len()
        )))
    }
}

/// Asks on the terminal for a value the flags did not give.
fn ask(label: &str, given: Option<String>, default: Option<&str>) -> CliResult<String> {
    if let Some(value) = given {
        return Ok(value);
    }
    if !std::io::stdin().is_terminal() {
        return match default {
            Some(d) => Ok(d.to_owned()),
            None => Err(Failure::usage(format!(
                "--{} is required when not run at a terminal",
                label.to_ascii_lowercase().replace(' ', "-")
            ))),
        };
    }
    loop {
        match default {
            Some(d) => eprint!("{label} [{d}]: "),
            None => eprint!("{label}: "),
        }
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Failure::operation(format!("cannot read the terminal: {e}")))?;
        let value = line.trim();
        if !value.is_empty() {
            return Ok(value.to_owned());
        }
        if let Some(d) = default {
            return Ok(d.to_owned());
        }
    }
}

fn new_migration(
    kind: Option<String>,
    description: Option<String>,
    risk: Option<String>,
    duration: Option<String>,
    author: Option<String>,
    ticket: Option<String>,
    dir: &std::path::Path,
) -> CliResult {
    let usage = |e: crate::domain::DomainError| Failure::usage(e.to_string());
    let kind = ask("Type", kind, Some("SCHEMA_CHANGE"))?
        .parse()
        .map_err(usage)?;
    let description = ask("Description", description, None)?;
    let risk = ask("Risk", risk, Some("LOW"))?.parse().map_err(usage)?;
    let duration = ask("Duration", duration, Some("5m"))?;
    let default_author = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let author = ask("Author", author, Some(&default_author))?;
    let ticket = ask("Ticket", ticket, None)?;
    let spec = scripts::NewMigration {
        kind,
        description,
        risk,
        duration,
        author,
        ticket,
    };
    let timestamp = chrono::Utc::now().format("%Y%m%d_%H%M%S").to_string();
    let (script, rollback) = scripts::write_new(dir, &spec, &timestamp)
        .map_err(|e| Failure::operation(format!("cannot write the scripts: {e}")))?;
    println!("created {}", script.display());
    println!("created {}", rollback.display());
    Ok(())
}

async fn remote(client: &mut Client, command: Command, output: Output) -> CliResult {
    match command {
        Command::Migrate {
            environment,
            wait,
            force: _,
            emergency,
        } => migrate(client, &environment, wait, emergency, output).await,
        Command::Status {
            environment,
            verbose,
        } => {
            let request = client.request(pb::GetEnvironmentStatusRequest { environment })?;
            let status = client
                .inner
                .get_environment_status(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&status),
                Output::Table => {
                    print_status(&status, verbose);
                    Ok(())
                }
            }
        }
        Command::Rollback {
            environment,
            migration_id,
            force: _,
            emergency,
            wait,
        } => {
            let reason = match emergency {
                Some(reason) => format!("EMERGENCY: {reason}"),
                None => "requested with `sluice rollback`".into(),
            };
            let deployment_id = format!("{migration_id}@{environment}");
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: deployment_id.clone(),
                reason,
            })?;
            let deployment = client
                .inner
                .rollback(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            if output == Output::Json && !wait {
                return print_json(&deployment);
            }
            println!("{deployment_id}: {}", deployment.state);
            if wait {
                let outcomes = follow(client, &environment, &[deployment_id]).await?;
                return finish(outcomes, output);
            }
            Ok(())
        }
        Command::Approve {
            migration_id,
            role,
            approver,
            comment,
            environment,
            checksum,
        } => {
            let me = client
                .inner
                .who_am_i(client.request(pb::WhoAmIRequest {})?)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            if me.name != approver {
                return Err(Failure::operation(format!(
                    "the approver named ({approver}) is not the token's user ({}); approvals are signed by the token's owner",
                    me.name
                )));
            }
            let environment = match environment {
                Some(e) => e,
                None => awaiting_environment(client, &migration_id, Some(&role)).await?,
            };
            let checksum = match checksum {
                Some(c) => c,
                None => {
                    let shown = current_checksum(client, &migration_id).await?;
                    if output == Output::Table {
                        println!("approving {migration_id} with the checksum {shown}");
                    }
                    shown
                }
            };
            let request = client.request(pb::ApproveRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                role,
                comment,
                checksum,
            })?;
            let deployment = client
                .inner
                .approve(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&deployment),
                Output::Table => {
                    println!("{}: {}", deployment.id, deployment.state);
                    if !deployment.missing_roles.is_empty()
                        || deployment.additional_approvals_needed > 0
                    {
                        println!("  still needed: {}", still_needed(&deployment));
                    }
                    Ok(())
                }
            }
        }
        Command::Reject {
            migration_id,
            comment,
            environment,
        } => {
            let environment = match environment {
                Some(e) => e,
                None => awaiting_environment(client, &migration_id, None).await?,
            };
            let request = client.request(pb::RejectRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                comment,
            })?;
            let deployment = client
                .inner
                .reject(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&deployment),
                Output::Table => {
                    println!("{}: {}", deployment.id, deployment.state);
                    Ok(())
                }
            }
        }
        Command::Lock {
            environment,
            reason,
        } => {
            let request = client.request(pb::LockEnvironmentRequest {
                environment,
                reason,
            })?;
            let status = client
                .inner
                .lock_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&status),
                Output::Table => {
                    if let Some(lock) = &status.lock {
                        println!(
                            "{} locked by {} at {}: {}",
                            status.name, lock.locked_by, lock.locked_at, lock.reason
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Unlock {
            environment,
            force: _,
        } => {
            let request = client.request(pb::UnlockEnvironmentRequest { environment })?;
            let status = client
                .inner
                .unlock_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&status),
                Output::Table => {
                    println!("{} unlocked", status.name);
                    Ok(())
                }
            }
        }
        Command::Retry {
            environment,
            migration_id,
        } => {
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                reason: String::new(),
            })?;
            let deployment = client
                .inner
                .retry(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            print_deployment(&deployment, output)
        }
        Command::Cancel {
            environment,
            migration_id,
            reason,
        } => {
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                reason,
            })?;
            let deployment = client
                .inner
                .cancel(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            print_deployment(&deployment, output)
        }
        Command::Submit { scripts } => submit(client, &scripts, output).await,
        Command::Watch {
            environment,
            migration_id,
        } => watch(client, &environment, migration_id, output).await,
        Command::History { environment, limit } => {
            let request = client.request(pb::ListMigrationsRequest {
                limit,
                before_seq: None,
            })?;
            let list = client
                .inner
                .list_migrations(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&list),
                Output::Table => {
                    for m in &list.migrations {
                        let states = match &environment {
                            Some(env) => m.states.get(env).cloned().unwrap_or_default(),
                            None => m
                                .states
                                .iter()
                                .map(|(env, state)| format!("{env}={state}"))
                                .collect::<Vec<_>>()
                                .join(" "),
                        };
                        println!(
                            "{}  {:<6}  {:<10}  {}",
                            m.id, m.effective_risk, m.author, states
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Audit {
            environment,
            migration,
            actor,
            limit,
        } => {
            let request = client.request(pb::ListAuditRequest {
                environment,
                migration_id: migration,
                actor,
                after_id: None,
                limit,
            })?;
            let audit = client
                .inner
                .list_audit(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&audit),
                Output::Table => {
                    for e in &audit.entries {
                        let subject = if e.deployment_id.is_empty() {
                            if e.migration_id.is_empty() {
                                e.environment.clone()
                            } else {
                                e.migration_id.clone()
                            }
                        } else {
                            e.deployment_id.clone()
                        };
                        println!("{}  {:<10}  {:<20}  {}", e.at, e.actor, e.action, subject);
                    }
                    Ok(())
                }
            }
        }
        Command::Server { .. }
        | Command::CheckConfig { .. }
        | Command::Token { .. }
        | Command::Validate { .. }
        | Command::New { .. }
        | Command::Completions { .. } => unreachable!("offline commands run before connecting"),
    }
}

fn print_deployment(deployment: &pb::Deployment, output: Output) -> CliResult {
    match output {
        Output::Json => print_json(deployment),
        Output::Table => {
            println!("{}: {}", deployment.id, deployment.state);
            Ok(())
        }
    }
}

fn still_needed(d: &pb::Deployment) -> String {
    let mut parts: Vec<String> = d.missing_roles.clone();
    if d.additional_approvals_needed > 0 {
        parts.push(format!(
            "{} more from {}",
            d.additional_approvals_needed,
            d.required_roles.join("/")
        ));
    }
    parts.join(", ")
}

/// The first environment, in promotion order, where the migration awaits approval (and, with
/// a role, where that role can still sign).
/// The checksum of a migration's scripts as the daemon has them now.
async fn current_checksum(client: &mut Client, migration_id: &str) -> CliResult<String> {
    let request = client.request(pb::GetMigrationRequest {
        id: migration_id.to_owned(),
    })?;
    Ok(client
        .inner
        .get_migration(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner()
        .checksum)
}

async fn awaiting_environment(
    client: &mut Client,
    migration_id: &str,
    role: Option<&str>,
) -> CliResult<String> {
    let request = client.request(pb::GetMigrationRequest {
        id: migration_id.to_owned(),
    })?;
    let migration = client
        .inner
        .get_migration(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    migration
        .deployments
        .iter()
        .find(|d| {
            d.state == "awaiting_approval"
                && role.is_none_or(|r| {
                    d.missing_roles.iter().any(|m| m == r)
                        || (d.additional_approvals_needed > 0
                            && d.required_roles.iter().any(|m| m == r))
                })
        })
        .map(|d| d.environment.clone())
        .ok_or_else(|| {
            Failure::operation(format!(
                "{migration_id} awaits no approval{} in any environment; name one with --environment",
                role.map(|r| format!(" from {r}")).unwrap_or_default()
            ))
        })
}

fn print_status(status: &pb::EnvironmentStatus, verbose: bool) {
    println!("environment  {}", status.name);
    println!("database     {}", status.database);
    match &status.lock {
        Some(lock) => println!(
            "lock         locked by {} at {}: {}",
            lock.locked_by,
            lock.locked_at,
            printable(&lock.reason)
        ),
        None => println!("lock         unlocked"),
    }
    if let Some(freeze) = &status.freeze {
        println!(
            "freeze       in the window {} until {}: only emergency overrides start",
            freeze.window, freeze.until
        );
    }
    if !status.halted_by.is_empty() {
        println!(
            "halted by    {} (retry, roll back or cancel it)",
            status.halted_by
        );
    }
    if !status.target_error.is_empty() {
        println!(
            "target       unreachable since {}: {}",
            status.target_error_since,
            printable(&status.target_error)
        );
    }
    match &status.last_applied {
        Some(d) => println!("last applied {} at {}", d.migration_id, d.finished_at),
        None => println!("last applied none"),
    }
    if status.queue.is_empty() {
        println!("queue        empty");
        return;
    }
    println!("queue:");
    for d in &status.queue {
        let mut line = format!("  {:<60} {:<18}", d.migration_id, d.state);
        if d.state == "awaiting_approval" {
            line.push_str(&format!(" needs: {}", still_needed(d)));
        } else if !d.blocked_by.is_empty() {
            line.push_str(&format!(" {}", printable(&d.blocked_by)));
        }
        println!("{line}");
        if verbose {
            for a in &d.approvals {
                println!(
                    "      approved by {} as {} at {}{}: {}",
                    a.approver,
                    a.role,
                    a.approved_at,
                    if a.current {
                        ""
                    } else {
                        " (void: script changed)"
                    },
                    printable(&a.comment)
                );
            }
            if !d.deadline_at.is_empty() {
                println!("      approval deadline {}", d.deadline_at);
            }
            if !d.error.is_empty() {
                for line in d.error.lines() {
                    println!("      error: {}", printable(line));
                }
            }
        }
    }
}

/// Text from the daemon made safe for a terminal: control characters (escape sequences that
/// could move the cursor, clear the screen or retitle the window) are shown as `\u{..}`.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

async fn migrate(
    client: &mut Client,
    environment: &str,
    wait: bool,
    emergency: Option<String>,
    output: Output,
) -> CliResult {
    if let Some(reason) = emergency {
        let request = client.request(pb::GetEnvironmentStatusRequest {
            environment: environment.to_owned(),
        })?;
        let status = client
            .inner
            .get_environment_status(request)
            .await
            .map_err(|s| client.failed(s))?
            .into_inner();
        for d in &status.pending_approvals {
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: d.id.clone(),
                reason: reason.clone(),
            })?;
            client
                .inner
                .emergency_override(request)
                .await
                .map_err(|s| client.failed(s))?;
            eprintln!("{}: emergency override ({reason}); a review is owed", d.id);
        }
    }
    // Subscribe before releasing anything, so that no event falls in between.
    let events = if wait {
        let request = client.request(pb::WatchEnvironmentRequest {
            environment: environment.to_owned(),
        })?;
        Some(
            client
                .inner
                .watch_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner(),
        )
    } else {
        None
    };
    let request = client.request(pb::MigrateEnvironmentRequest {
        environment: environment.to_owned(),
    })?;
    let result = client
        .inner
        .migrate_environment(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    let Some(events) = events else {
        return match output {
            Output::Json => print_json(&result),
            Output::Table => {
                println!(
                    "{}: released {}, {} queued or running",
                    result.environment,
                    result.released.len(),
                    result.queued.len()
                );
                for id in &result.queued {
                    println!("  {id}");
                }
                Ok(())
            }
        };
    };
    if result.queued.is_empty() {
        println!("{environment}: nothing to apply");
        return Ok(());
    }
    let outcomes = follow_stream(client, environment, events, &result.queued).await?;
    finish(outcomes, output)
}

/// Follows deployments to their outcome over a fresh environment watch.
async fn follow(
    client: &mut Client,
    environment: &str,
    ids: &[String],
) -> CliResult<BTreeMap<String, (String, String)>> {
    let request = client.request(pb::WatchEnvironmentRequest {
        environment: environment.to_owned(),
    })?;
    let events = client
        .inner
        .watch_environment(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    follow_stream(client, environment, events, ids).await
}

fn resting(state: &str) -> bool {
    matches!(
        state,
        "applied" | "failed" | "rolled_back" | "rejected" | "expired" | "cancelled"
    )
}

/// Shows progress (a bar per deployment at a terminal, plain lines otherwise) until every
/// deployment rests. Returns each one's final state and error.
async fn follow_stream(
    client: &mut Client,
    environment: &str,
    mut events: tonic::Streaming<pb::DeploymentEvent>,
    ids: &[String],
) -> CliResult<BTreeMap<String, (String, String)>> {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let mut progress: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, (String, String)> = BTreeMap::new();
    let wanted: HashSet<&String> = ids.iter().collect();
    for id in ids {
        if terminal {
            let bar = bars.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(id.clone());
            bar.set_message("queued");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            progress.insert(id.clone(), bar);
        }
    }
    // Deployments that finished before the watch began produce no event: read them once.
    for id in ids {
        let request = client.request(pb::GetDeploymentRequest { id: id.clone() })?;
        let d = client
            .inner
            .get_deployment(request)
            .await
            .map_err(|s| client.failed(s))?
            .into_inner();
        if resting(&d.state) {
            outcomes.insert(id.clone(), (d.state.clone(), d.error.clone()));
            if let Some(bar) = progress.get(id) {
                bar.finish_with_message(d.state.clone());
            } else {
                println!("{id}: {}", d.state);
            }
        }
    }
    let mut seen_running: HashSet<String> = HashSet::new();
    // A queue that is halted or locked will not move: say so instead of waiting forever.
    if let Some(reason) = stuck(client, environment, ids).await? {
        give_up(ids, &mut outcomes, &progress, &reason);
    }
    while outcomes.len() < ids.len() {
        let Some(event) = events.next().await else {
            return Err(Failure {
                code: 3,
                message: "the daemon closed the watch stream before the deployments finished"
                    .into(),
            });
        };
        let event = event.map_err(|s| client.failed(s))?;
        let state_is = |wanted_state: &str| matches!(&event.event, Some(pb::deployment_event::Event::State(s)) if s == wanted_state);
        let (halting, requeued, running) =
            (state_is("failed"), state_is("queued"), state_is("running"));
        if !wanted.contains(&event.deployment_id) || outcomes.contains_key(&event.deployment_id) {
            if halting {
                let reason = format!("the queue is halted by {}", event.deployment_id);
                give_up(ids, &mut outcomes, &progress, &reason);
            }
            continue;
        }
        if running {
            seen_running.insert(event.deployment_id.clone());
        }
        // Back in the queue after running: the environment was locked or the daemon is stopping.
        if requeued
            && seen_running.contains(&event.deployment_id)
            && let Some(reason) = stuck(client, environment, ids).await?
        {
            give_up(ids, &mut outcomes, &progress, &reason);
            continue;
        }
        let bar = progress.get(&event.deployment_id);
        match event.event {
            Some(pb::deployment_event::Event::State(state)) => {
                if resting(&state) {
                    outcomes.insert(
                        event.deployment_id.clone(),
                        (state.clone(), event.error.clone()),
                    );
                }
                match bar {
                    Some(bar) if resting(&state) => bar.finish_with_message(state),
                    Some(bar) => bar.set_message(state),
                    None => println!("{}: {state}", event.deployment_id),
                }
            }
            Some(pb::deployment_event::Event::Log(line)) => match bar {
                Some(bar) => {
                    bar.set_message(format!("{}: {}", line.level, printable(&line.message)))
                }
                None => println!(
                    "{}: {}: {}",
                    event.deployment_id,
                    line.level,
                    printable(&line.message)
                ),
            },
            Some(pb::deployment_event::Event::Missed(_)) | None => {}
        }
    }
    Ok(outcomes)
}

/// Why the environment's queue cannot move (a failure outside `ids`, a lock), if it cannot.
async fn stuck(
    client: &mut Client,
    environment: &str,
    ids: &[String],
) -> CliResult<Option<String>> {
    let request = client.request(pb::GetEnvironmentStatusRequest {
        environment: environment.to_owned(),
    })?;
    let status = client
        .inner
        .get_environment_status(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    if let Some(lock) = &status.lock {
        return Ok(Some(format!(
            "{environment} is locked by {}: {}",
            lock.locked_by, lock.reason
        )));
    }
    if !status.halted_by.is_empty() && !ids.contains(&status.halted_by) {
        return Ok(Some(format!("the queue is halted by {}", status.halted_by)));
    }
    Ok(None)
}

/// Ends the wait for every deployment without an outcome yet.
fn give_up(
    ids: &[String],
    outcomes: &mut BTreeMap<String, (String, String)>,
    progress: &BTreeMap<String, indicatif::ProgressBar>,
    reason: &str,
) {
    for id in ids {
        if outcomes.contains_key(id) {
            continue;
        }
        outcomes.insert(id.clone(), ("blocked".into(), reason.to_owned()));
        match progress.get(id) {
            Some(bar) => bar.abandon_with_message(format!("blocked: {reason}")),
            None => println!("{id}: blocked: {reason}"),
        }
    }
}

fn finish(outcomes: BTreeMap<String, (String, String)>, output: Output) -> CliResult {
    let failed: Vec<(&String, &(String, String))> = outcomes
        .iter()
        .filter(|(_, (state, _))| state != "applied" && state != "rolled_back")
        .collect();
    if output == Output::Json {
        let map: BTreeMap<&String, serde_json::Value> = outcomes
            .iter()
            .map(|(id, (state, error))| (id, serde_json::json!({"state": state, "error": error})))
            .collect();
        print_json(&map)?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut message = String::new();
    for (id, (state, error)) in failed {
        message.push_str(&format!("{id} is {state}"));
        if !error.is_empty() {
            message.push_str(&format!(": {error}"));
        }
        message.push('\n');
    }
    Err(Failure::operation(message.trim_end().to_owned()))
}

async fn watch(
    client: &mut Client,
    environment: &str,
    migration_id: Option<String>,
    output: Output,
) -> CliResult {
    let mut events = match &migration_id {
        Some(id) => {
            let request = client.request(pb::WatchDeploymentRequest {
                deployment_id: format!("{id}@{environment}"),
                follow_resting: false,
            })?;
            client
                .inner
                .watch_deployment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner()
        }
        None => {
            let request = client.request(pb::WatchEnvironmentRequest {
                environment: environment.to_owned(),
            })?;
            client
                .inner
                .watch_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner()
        }
    };
    let mut last_state = String::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| client.failed(s))?;
        if output == Output::Json {
            print_json(&event)?;
            continue;
        }
        match &event.event {
            Some(pb::deployment_event::Event::State(state)) => {
                last_state = state.clone();
                let error = if event.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", event.error.lines().next().unwrap_or(""))
                };
                println!("{} {} {state}{error}", event.at, event.deployment_id);
            }
            Some(pb::deployment_event::Event::Log(line)) => println!(
                "{} {} {}: {}",
                line.at, event.deployment_id, line.level, line.message
            ),
            Some(pb::deployment_event::Event::Missed(n)) => {
                println!("(missed {n} events: the watcher fell behind)")
            }
            None => {}
        }
    }
    // A watched deployment ends the stream when it rests: its outcome is the exit code.
    if migration_id.is_some() && last_state != "applied" && last_state != "rolled_back" {
        return Err(Failure::operation(format!(
            "the deployment is {last_state}"
        )));
    }
    Ok(())
}

async fn submit(client: &mut Client, paths: &[PathBuf], output: Output) -> CliResult {
    let mut submitted = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::operation(format!("{}: cannot read: {e}", path.display())))?;
        let header =
            scripts::read_header(path, &text).map_err(|p| Failure::operation(p.to_string()))?;
        let rollback_path = scripts::rollback_path(path, &header);
        let down_sql = match std::fs::read_to_string(&rollback_path) {
            Ok(text) => Some(text),
            Err(_) if header.rollback.is_none() => None,
            Err(e) => {
                return Err(Failure::operation(format!(
                    "{}: cannot read: {e}",
                    rollback_path.display()
                )));
            }
        };
        let request = client.request(pb::SubmitMigrationRequest {
            kind: header.kind.as_str().into(),
            description: header.description.clone(),
            risk: header.risk.as_str().into(),
            ticket: header.ticket.clone(),
            estimated_duration: header.estimated_duration.clone(),
            up_sql: text,
            down_sql,
            depends_on: header.depends_on.clone(),
        })?;
        let migration = client
            .inner
            .submit_migration(request)
            .await
            .map_err(|s| {
                let failure = client.failed(s);
                Failure {
                    code: failure.code,
                    message: format!("{}: {}", path.display(), failure.message),
                }
            })?
            .into_inner();
        if output == Output::Table {
            println!("{}: submitted as {}", path.display(), migration.id);
            for d in &migration.deployments {
                println!("  {:<12} {}", d.environment, d.state);
            }
        }
        submitted.push(migration);
    }
    if output == Output::Json {
        print_json(&submitted)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn terminal_escapes_from_the_daemon_are_shown_not_obeyed() {
        assert_eq!(
            printable("ok \u{1b}[2J\u{1b}]0;pwned\u{7} done"),
            "ok \\u{1b}[2J\\u{1b}]0;pwned\\u{7} done"
        );
        assert_eq!(printable("tab\tkept, é kept"), "tab\tkept, é kept");
    }
}
