//! The `sluice` command line. `sluice server` runs the daemon; every other command is a thin
//! gRPC client of it (or works offline: `validate`, `new`, `token new`, `check-config`,
//! `completions`). The seed's migrate.sh and create-migration.sh commands keep their names and
//! arguments.
//!
//! Exit codes: 0 success, 1 the operation failed (a failed migration, validation findings,
//! a refused request, a confirmation answered no), 2 usage error (a confirmation with no
//! terminal to ask at included), 3 cannot reach the daemon or not authorized, 130 interrupted
//! while following (the work goes on in the daemon).

mod args;
mod client;
mod commands;
mod completion;
mod confirm;
mod context;
mod follow;
mod import;
mod lint_output;
mod notifications;
mod render;
mod review;
pub mod scripts;

use args::*;
use client::*;
use commands::*;
use confirm::*;
use follow::*;
use render::*;

use crate::api::grpc::pb;
use crate::api::grpc::pb::sluice_client::SluiceClient;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
    /// The API's error code when the daemon refused (not_found, conflict, forbidden, invalid,
    /// unavailable, ...): what `--output json` prints, as REST does.
    api_code: Option<&'static str>,
}

impl Failure {
    fn operation(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
            api_code: None,
        }
    }
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
            api_code: None,
        }
    }
    /// The code `--output json` gives: the API's when the daemon answered with an error;
    /// otherwise `invalid` for a usage error, `unavailable` when the daemon cannot be reached,
    /// `failed` when the work itself failed (a migration, a test, a declined confirmation).
    fn json_code(&self) -> &'static str {
        self.api_code.unwrap_or(match self.code {
            2 => "invalid",
            3 => "unavailable",
            130 => "interrupted",
            _ => "failed",
        })
    }
}

type CliResult<T = ()> = Result<T, Failure>;

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    // A shell asking for completions (COMPLETE=bash ...) is answered here, and nothing else runs.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = Cli::parse();
    let json = cli.output == OutputArg::Json && !matches!(cli.command, Command::Validate { .. });
    // `sluice status | head`: once the reader has gone, printing fails (Rust ignores SIGPIPE,
    // so `println!` panics). That is the reader's choice, not an error: end quietly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !stdout_closed(info.payload()) {
            hook(info);
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cli.command {
        Command::Server { ref config_dir } => run_server(config_dir.clone()),
        _ => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run(cli)),
            Err(e) => Err(Failure::operation(format!("cannot start the runtime: {e}"))),
        },
    }));
    let result = match outcome {
        Ok(result) => result,
        Err(payload) if stdout_closed(&*payload) => return ExitCode::SUCCESS,
        Err(payload) => std::panic::resume_unwind(payload),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                if json && !JSON_PRINTED.load(std::sync::atomic::Ordering::SeqCst) {
                    // With --output json, stdout is always one JSON document: the error too,
                    // shaped as the REST API's (unless the answer was printed already).
                    let code = failure.json_code();
                    println!(
                        "{}",
                        serde_json::json!({"error": {"code": code, "exit_code": failure.code, "message": failure.message}})
                    );
                }
                eprintln!("sluice: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Whether a panic is `println!` finding stdout closed (the reader of a pipe went away).
fn stdout_closed(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

fn run_server(config_dir: PathBuf) -> CliResult {
    let config =
        crate::config::Config::load(&config_dir).map_err(|e| Failure::operation(e.to_string()))?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::operation(format!("cannot start the runtime: {e}")))?;
    // The trace exporter's connection lives on the runtime.
    let traces = {
        let _entered = runtime.enter();
        crate::telemetry::traces::init(&config.settings)
            .map_err(|e| Failure::operation(format!("cannot start logging and tracing: {e}")))?
    };
    if config.users.is_empty() {
        let users = config_dir.join("users.yml");
        tracing::warn!(
            "{} lists no users: every API call will be refused until you add one (sluice token new --user <name> --roles <roles> --add-to {})",
            users.display(),
            users.display()
        );
    } else {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
    }
    let result = runtime.block_on(async move {
        let running = crate::start(config, crate::StartOptions::default())
            .await
            .map_err(|e| Failure::operation(format!("{e:#}")))?;
        let shutdown = shutdown_signal();
        match running.metrics_addr {
            Some(metrics) => println!(
                "sluice listening on http://{} (REST) and http://{} (gRPC); metrics at http://{metrics}/metrics",
                running.rest_addr, running.grpc_addr
            ),
            None => println!(
                "sluice listening on http://{} (REST) and http://{} (gRPC)",
                running.rest_addr, running.grpc_addr
            ),
        }
        shutdown.await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok(())
    });
    // Spans not yet exported go out now (bounded by the exporter's timeout).
    let _entered = runtime.enter();
    traces.shutdown();
    result
}

/// Waits for SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// returned future is first polled: a signal sent right after the daemon says it listens must
/// find them in place (a test caught SIGTERM arriving first and killing the daemon outright).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(cli: Cli) -> CliResult {
    let format = cli.output;
    let output = match format {
        OutputArg::Table => Output::Table,
        OutputArg::Json => Output::Json,
        _ if matches!(cli.command, Command::Validate { .. }) => Output::Table,
        _ => {
            return Err(Failure::usage(
                "--output sarif and --output github are for `sluice validate`; other commands print table or json",
            ));
        }
    };
    match cli.command {
        Command::Server { .. } => unreachable!("handled before the runtime starts"),
        Command::CheckConfig { config_dir } => {
            let config = crate::config::Config::load(&config_dir)
                .map_err(|e| Failure::operation(e.to_string()))?;
            if output == Output::Json {
                let channels: Vec<serde_json::Value> = config
                    .notifications
                    .channels
                    .iter()
                    .map(|c| serde_json::json!({"name": c.name, "type": c.kind.type_name(), "enabled": true, "disabled_reason": null}))
                    .chain(config.notifications.disabled.iter().map(|(name, why)| {
                        serde_json::json!({"name": name, "type": null, "enabled": false, "disabled_reason": why})
                    }))
                    .collect();
                return print_json(&serde_json::json!({
                    "config_dir": config_dir.display().to_string(),
                    "valid": true,
                    "environments": config.environments.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(),
                    "users": config.users.len(),
                    "notification_channels": channels,
                    "warnings": config.warnings(),
                }));
            }
            println!(
                "{}: configuration is valid ({} environments: {}; {} users)",
                config_dir.display(),
                config.environments.len(),
                config.environment_names(),
                config.users.len()
            );
            for channel in &config.notifications.channels {
                println!(
                    "notification channel {} ({}): on",
                    channel.name,
                    channel.kind.type_name()
                );
            }
            for (name, why) in &config.notifications.disabled {
                println!("notification channel {name}: off ({why})");
            }
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::New {
                    user,
                    roles,
                    add_to,
                },
        } => new_token(&user, &roles, add_to.as_deref(), output),
        Command::Completions { shell } => completion::print_hook(shell),
        Command::Validate { scripts, dialect } => validate(&scripts, dialect.into(), format),
        Command::New(args) => {
            new_migration(args, (cli.server, cli.token, cli.context), output).await
        }
        Command::Context { name } => context::command(name, output),
        mut command => {
            // What the user must still say comes before any connection: an emergency's reason.
            if let Command::Migrate { emergency, .. } | Command::Rollback { emergency, .. } =
                &mut command
            {
                *emergency = emergency_reason(emergency.take())?;
            }
            arguments_in_order(&command)?;
            let (server, token) = context::resolve(cli.server, cli.token, cli.context)?;
            let mut client = Client::connect(&server, token).await?;
            remote(&mut client, command, output, cli.yes).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn who_must_still_approve_reads_as_a_person_would_say_it() {
        use super::{pb, still_needed};
        let d = |required: &[&str], missing: &[&str], extra: u32| pb::Deployment {
            required_roles: required.iter().map(|r| r.to_string()).collect(),
            missing_roles: missing.iter().map(|r| r.to_string()).collect(),
            additional_approvals_needed: extra,
            ..Default::default()
        };
        // Staging's two data_ops: before it said "data_ops and 1 more approval(s)".
        assert_eq!(
            still_needed(&d(&["data_ops"], &["data_ops"], 1)),
            "2 approvals from data_ops"
        );
        assert_eq!(
            still_needed(&d(&["data_ops"], &[], 1)),
            "1 more from data_ops"
        );
        assert_eq!(
            still_needed(&d(&["data_ops_lead", "dba"], &["data_ops_lead", "dba"], 0)),
            "data_ops_lead, dba"
        );
        assert_eq!(still_needed(&d(&["dba"], &[], 0)), "no more approval");
    }

    /// Every command says what each of its arguments is for and shows examples; a new
    /// argument without a help line fails here.
    #[test]
    fn every_command_has_examples_and_every_argument_a_help_line() {
        use clap::{CommandFactory, Parser};
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let leaf = command.get_subcommands().next().is_none();
            if leaf {
                let examples = command
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !examples.contains("Examples:") || !examples.contains(&path) {
                    missing.push(format!("{path}: no examples"));
                }
                // Each example parses as the command line it shows.
                for line in examples.lines().filter(|l| l.contains("sluice ")) {
                    let shown = line.split("  #").next().unwrap_or(line);
                    let shown = shown.split(['|', '>']).next().unwrap_or(shown);
                    let shown = shown.split("&&").next().unwrap_or(shown);
                    let words = shell_words::split(shown).unwrap_or_default();
                    // `VAR=value sluice ...`: the command after the assignments; lines where
                    // sluice is not the command (`source <(sluice ...)`) are not parsed.
                    let start = words.iter().take_while(|w| w.contains('=')).count();
                    if words.get(start).map(String::as_str) != Some("sluice") {
                        continue;
                    }
                    if let Err(e) = super::Cli::try_parse_from(&words[start..]) {
                        missing.push(format!("{path}: example {shown:?} does not parse: {e}"));
                    }
                }
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} <{id}>: no help line"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        let cli = super::Cli::command();
        for sub in cli.get_subcommands() {
            if sub.get_name() != "help" {
                walk(sub, "sluice", &mut missing);
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn terminal_escapes_from_the_daemon_are_shown_not_obeyed() {
        assert_eq!(
            printable("ok \u{1b}[2J\u{1b}]0;pwned\u{7} done"),
            "ok \\u{1b}[2J\\u{1b}]0;pwned\\u{7} done"
        );
        assert_eq!(printable("tab\tkept, é kept"), "tab\tkept, é kept");
    }
}
