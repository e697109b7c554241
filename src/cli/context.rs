//! The CLI's own configuration, like kubectl's contexts: `~/.config/sluice/config.yml` (or
//! `$SLUICE_CONFIG`, or `$XDG_CONFIG_HOME/sluice/config.yml`) names daemons and how to get a
//! token for each, and which one is current:
//!
//! ```yaml
//! current_context: staging
//! contexts:
//!   local:
//!     server: http://127.0.0.1:50051
//!     token_command: cat ~/.sluice-token
//!   staging:
//!     server: https://sluice.staging.internal:50051
//!     token_command: pass show sluice/staging
//! ```
//!
//! What decides, first to last: `--server`/`--token`, `SLUICE_ADDR`/`SLUICE_TOKEN`, the
//! context (`--context`, `SLUICE_CONTEXT`, else `current_context`), the default address. A
//! `token:` written in the file is read only when nobody else can read the file (like ssh's
//! keys); `token_command` keeps it out of the file altogether.

use super::*;
use serde::Deserialize;

pub(super) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliConfig {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Context {
    server: Option<String>,
    token: Option<String>,
    token_command: Option<String>,
}

/// Where the CLI's configuration file is (it need not exist).
pub(super) fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("sluice").join("config.yml"))
}

fn load(path: &Path) -> CliResult<Option<CliConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::usage(format!(
                "{}: cannot read: {e}",
                path.display()
            )));
        }
    };
    if text.trim().is_empty() {
        return Ok(Some(CliConfig::default()));
    }
    serde_norway::from_str(&text)
        .map(Some)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// The daemon's address and the token to send, from the flags, the environment and the
/// context, in that order.
pub(super) fn resolve(
    server: Option<String>,
    token: Option<String>,
    context: Option<String>,
) -> CliResult<(String, Option<String>)> {
    let path = config_path();
    let config = match &path {
        Some(path) => load(path)?,
        None => None,
    };
    let wanted = context.or_else(|| config.as_ref().and_then(|c| c.current_context.clone()));
    let Some(name) = wanted else {
        return Ok((server.unwrap_or_else(|| DEFAULT_SERVER.into()), token));
    };
    let shown = path
        .as_ref()
        .map_or("the CLI configuration".into(), |p| p.display().to_string());
    let config = config.unwrap_or_default();
    let Some(ctx) = config.contexts.get(&name) else {
        let known: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
        return Err(Failure::usage(format!(
            "{shown}: no context \"{name}\" (known: {}){}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
            crate::domain::text::did_you_mean(&name, known.iter().copied())
        )));
    };
    let server = server
        .or_else(|| ctx.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.into());
    if token.is_some() {
        return Ok((server, token));
    }
    let token = match (&ctx.token, &ctx.token_command) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(format!(
                "{shown}: context \"{name}\" has both token and token_command; keep one"
            )));
        }
        (Some(token), None) => {
            if let Some(path) = &path {
                private(path, &name)?;
            }
            Some(token.trim().to_owned())
        }
        (None, Some(command)) => Some(run_token_command(&name, command)?),
        (None, None) => None,
    };
    Ok((server, token))
}

/// A token written in the file is taken only when the file is its owner's alone.
fn private(path: &Path, context: &str) -> CliResult {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Failure::usage(format!(
                "{}: context \"{context}\" holds a token and others can read the file (mode {:o}): chmod 600 it, or use token_command",
                path.display(),
                mode & 0o777
            )));
        }
    }
    Ok(())
}

/// Runs a context's `token_command` with sh and takes its output, trimmed.
fn run_token_command(context: &str, command: &str) -> CliResult<String> {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Failure::usage(format!(
                "context \"{context}\": cannot run its token_command: {e}"
            ))
        })?;
    if !output.status.success() {
        return Err(Failure {
            code: 3,
            message: format!(
                "context \"{context}\": its token_command `{command}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            api_code: Some("unauthenticated"),
        });
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if token.is_empty() {
        return Err(Failure {
            code: 3,
            message: format!(
                "context \"{context}\": its token_command `{command}` printed no token"
            ),
            api_code: Some("unauthenticated"),
        });
    }
    Ok(token)
}

/// `sluice context`: list the contexts (the current one marked), or make one current.
pub(super) fn command(use_context: Option<String>, output: Output) -> CliResult {
    let path = config_path().ok_or_else(|| {
        Failure::usage("no configuration file: set SLUICE_CONFIG or HOME".to_owned())
    })?;
    let config = load(&path)?.unwrap_or_default();
    if let Some(name) = use_context {
        if !config.contexts.contains_key(&name) {
            let known: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
            return Err(Failure::usage(format!(
                "{}: no context \"{name}\" (known: {}){}",
                path.display(),
                known.join(", "),
                crate::domain::text::did_you_mean(&name, known.iter().copied())
            )));
        }
        set_current(&path, &name)?;
        if output == Output::Json {
            return print_json(&serde_json::json!({"current_context": name}));
        }
        println!("current context: {name} ({})", path.display());
        return Ok(());
    }
    let current = config.current_context.clone().unwrap_or_default();
    if output == Output::Json {
        let contexts: Vec<serde_json::Value> = config
            .contexts
            .iter()
            .map(|(name, c)| {
                serde_json::json!({
                    "name": name,
                    "current": *name == current,
                    "server": c.server.as_deref().unwrap_or(DEFAULT_SERVER),
                    "token": if c.token_command.is_some() { "token_command" } else if c.token.is_some() { "in the file" } else { "none" },
                })
            })
            .collect();
        return print_json(&contexts);
    }
    if config.contexts.is_empty() {
        println!(
            "{}: no context (see `sluice context --help` for the file's shape)",
            path.display()
        );
        return Ok(());
    }
    for (name, c) in &config.contexts {
        let mark = if *name == current { "*" } else { " " };
        let token = if c.token_command.is_some() {
            "token_command"
        } else if c.token.is_some() {
            "token in the file"
        } else {
            "no token"
        };
        println!(
            "{mark} {name:<16} {:<40} {token}",
            c.server.as_deref().unwrap_or(DEFAULT_SERVER)
        );
    }
    Ok(())
}

/// Rewrites the `current_context:` line (or adds one at the top), keeping the rest of the
/// file, comments included, as it was.
fn set_current(path: &Path, name: &str) -> CliResult {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::operation(format!("{}: cannot read: {e}", path.display())))?;
    // A plain name stays plain; any other is written as a YAML double-quoted string.
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let line = if plain {
        format!("current_context: {name}")
    } else {
        format!(
            "current_context: {}",
            serde_json::to_string(name).unwrap_or_default()
        )
    };
    let mut replaced = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            if !replaced && l.starts_with("current_context:") {
                replaced = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !replaced {
        lines.insert(0, line);
    }
    let mut updated = lines.join("\n");
    updated.push('\n');
    // Written beside and renamed over: a crash leaves the old file or the new one.
    let temporary = path.with_extension("yml.tmp");
    std::fs::write(&temporary, updated)
        .and_then(|()| {
            let permissions = std::fs::metadata(path)?.permissions();
            std::fs::set_permissions(&temporary, permissions)?;
            std::fs::rename(&temporary, path)
        })
        .map_err(|e| Failure::operation(format!("{}: cannot write: {e}", path.display())))
}
