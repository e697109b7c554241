//! Shell completion that knows the daemon: environment names and migration ids are asked of
//! it (through SLUICE_ADDR/SLUICE_TOKEN or the current context) while completing; roles are
//! Sluice's own. The shell calls `sluice` back for each completion (clap_complete's dynamic
//! completion, `sluice completions <shell>` prints the hook). A daemon that does not answer
//! within a second and a half gives no candidates, never an error on the terminal.

use super::*;
use clap_complete::CompletionCandidate;

const PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Asks the daemon, on a runtime of its own (completion runs before `main`'s runtime).
fn ask<T>(question: impl AsyncFnOnce(&mut Client) -> CliResult<T>) -> Option<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    // A context's token_command may be slow (a vault, a prompt): it counts in the patience
    // too, on a thread of its own that is left behind if it does not answer in time.
    let started = std::time::Instant::now();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let var = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
        let _ = sender.send(context::resolve(
            var("SLUICE_ADDR"),
            var("SLUICE_TOKEN"),
            var("SLUICE_CONTEXT"),
        ));
    });
    let (server, token) = receiver.recv_timeout(PATIENCE).ok()?.ok()?;
    let left = PATIENCE.saturating_sub(started.elapsed());
    runtime.block_on(async {
        tokio::time::timeout(left, async {
            let mut client = Client::connect(&server, token).await.ok()?;
            question(&mut client).await.ok()
        })
        .await
        .ok()
        .flatten()
    })
}

/// The environments, in promotion order.
pub(super) fn environments() -> Vec<CompletionCandidate> {
    ask(async |client: &mut Client| environment_names(client).await)
        .unwrap_or_default()
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
}

/// The newest migrations' ids, each with its description as help.
pub(super) fn migrations() -> Vec<CompletionCandidate> {
    ask(async |client: &mut Client| {
        let request = client.request(pb::ListMigrationsRequest {
            limit: 200,
            before_seq: None,
            environment: String::new(),
        })?;
        Ok(client
            .inner
            .list_migrations(request)
            .await
            .map_err(|s| client.failed(s))?
            .into_inner()
            .migrations)
    })
    .unwrap_or_default()
    .into_iter()
    .map(|m| CompletionCandidate::new(m.id).help(Some(printable(&m.description).into())))
    .collect()
}

/// The roles an approval can be given in.
pub(super) fn roles() -> Vec<CompletionCandidate> {
    crate::domain::Role::ALL
        .iter()
        .filter(|r| **r != crate::domain::Role::Developer)
        .map(|r| CompletionCandidate::new(r.as_str()))
        .collect()
}

/// `sluice completions <shell>`: the hook that makes the shell call `sluice` back.
pub(super) fn print_hook(shell: clap_complete::Shell) -> CliResult {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| Failure::usage(format!("no completion hook for {name}")))?;
    let mut out = std::io::stdout();
    completer
        .write_registration("COMPLETE", "sluice", "sluice", "sluice", &mut out)
        .map_err(|e| Failure::operation(format!("cannot write the hook: {e}")))
}
