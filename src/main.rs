//! The `sluice` binary: `sluice server` runs the daemon; `sluice token new` makes an API token.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Database-migration control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: REST API, one worker per environment, the scheduler.
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server { config_dir } => run_server(config_dir),
        Command::CheckConfig { config_dir } => sluice::config::Config::load(&config_dir)
            .map(|c| {
                println!(
                    "{}: configuration is valid ({} environments: {}; {} users)",
                    config_dir.display(),
                    c.environments.len(),
                    c.environment_names(),
                    c.users.len()
                );
            })
            .map_err(anyhow::Error::new),
        Command::Token {
            command: TokenCommand::New { user, roles },
        } => new_token(&user, &roles),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn new_token(user: &str, roles: &[String]) -> anyhow::Result<()> {
    let name: sluice::domain::UserName = user.parse()?;
    for role in roles {
        role.parse::<sluice::domain::Role>()?;
    }
    let token =
        sluice::auth::new_token().map_err(|e| anyhow::anyhow!("cannot read random bytes: {e}"))?;
    let hash = sluice::auth::token_sha256(&token);
    println!("token (give it to {name}; it is shown only once): {token}");
    println!();
    println!("add to users.yml:");
    println!("  - name: {name}");
    println!("    roles: [{}]", roles.join(", "));
    println!("    token_sha256: \"{hash}\"");
    Ok(())
}

fn run_server(config_dir: PathBuf) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = sluice::config::Config::load(&config_dir)?;
    if config.users.is_empty() {
        tracing::warn!(
            "{} lists no users: every API call will be refused until you add one (run `sluice token new`)",
            config_dir.join("users.yml").display()
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let running = sluice::start(config, sluice::StartOptions::default()).await?;
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
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
