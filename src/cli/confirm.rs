//! Confirmations before the verbs that change a database or undo work: what will happen is
//! shown, and the command goes on only on a "yes" typed at a terminal or `--yes`. Without a
//! terminal (a script, CI) these commands are refused unless `--yes` says it was meant.

use super::*;

/// How sure the user must be.
#[derive(Clone, Copy)]
pub(super) enum Ask<'a> {
    /// y/N.
    YesNo,
    /// The user types this word (the environment's name) back: for what cannot be undone.
    TypeBack(&'a str),
}

/// Goes on when `yes` is set or the user agrees at the terminal; `plan` says what will happen
/// (printed on stderr before the question). Refused (exit 2) without a terminal; declined
/// (exit 1, nothing done) when the user says no.
pub(super) fn confirm(yes: bool, plan: &str, ask: Ask) -> CliResult {
    confirm_or(yes, plan, ask, "--yes")
}

/// For what cannot be undone: the environment's name is typed back (`--confirm` or `--yes`
/// skip it).
pub(super) fn confirm_typed(yes: bool, plan: &str, environment: &str) -> CliResult {
    confirm_or(
        yes,
        plan,
        Ask::TypeBack(environment),
        "--yes (or --confirm)",
    )
}

fn confirm_or(yes: bool, plan: &str, ask: Ask, flag: &str) -> CliResult {
    if yes {
        return Ok(());
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal {
        return Err(Failure::usage(format!(
            "{}\nthis needs a confirmation and there is no terminal to ask at: add {flag} to do it",
            plan.trim_end()
        )));
    }
    eprintln!("{}", plan.trim_end());
    let theme = dialoguer::theme::SimpleTheme;
    let agreed = match ask {
        Ask::YesNo => dialoguer::Confirm::with_theme(&theme)
            .with_prompt("Go on?")
            .default(false)
            .wait_for_newline(true)
            .interact_opt()
            .map_err(terminal_failed)?
            .unwrap_or(false),
        Ask::TypeBack(word) => {
            let typed: String = dialoguer::Input::with_theme(&theme)
                .with_prompt(format!("Type {word} to go on (anything else stops)"))
                .allow_empty(true)
                .interact_text()
                .map_err(terminal_failed)?;
            typed.trim() == word
        }
    };
    if agreed {
        Ok(())
    } else {
        Err(Failure::operation("stopped: nothing was changed"))
    }
}

pub(super) fn terminal_failed(e: dialoguer::Error) -> Failure {
    Failure::operation(format!("cannot read the terminal: {e}"))
}

/// The reason an `--emergency` needs: the one given, else asked at a terminal; without a
/// terminal an empty reason is a usage error (it is recorded and sent to the channels).
pub(super) fn emergency_reason(given: Option<String>) -> CliResult<Option<String>> {
    let Some(given) = given else {
        return Ok(None);
    };
    if !given.trim().is_empty() {
        return Ok(Some(given.trim().to_owned()));
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal {
        return Err(Failure::usage(
            "--emergency needs a reason: --emergency \"<why>\" (it is recorded, sent to the channels and owed a review)",
        ));
    }
    let reason: String = dialoguer::Input::with_theme(&dialoguer::theme::SimpleTheme)
        .with_prompt("Reason for the emergency")
        .validate_with(|r: &String| {
            if r.trim().is_empty() {
                Err("a reason is required")
            } else {
                Ok(())
            }
        })
        .interact_text()
        .map_err(terminal_failed)?;
    Ok(Some(reason.trim().to_owned()))
}
