//! The commands that need no daemon: tokens, validate, new.

use super::*;

pub(in crate::cli) fn new_token(
    user: &str,
    roles: &[String],
    add_to: Option<&Path>,
    output: Output,
) -> CliResult {
    let name: crate::domain::UserName = user
        .parse()
        .map_err(|e: crate::domain::DomainError| Failure::usage(e.to_string()))?;
    let roles: Vec<String> = roles
        .iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    if roles.is_empty() {
        return Err(Failure::usage(
            "--roles: name at least one role (developer, data_ops, data_ops_lead, dba, tech_lead, cto, admin)",
        ));
    }
    for role in &roles {
        role.parse::<crate::domain::Role>()
            .map_err(|e| Failure::usage(e.to_string()))?;
    }
    let token = crate::auth::new_token()
        .map_err(|e| Failure::operation(format!("cannot read random bytes: {e}")))?;
    let hash = crate::auth::token_sha256(&token);
    let entry = format!(
        "  - name: {name}\n    roles: [{}]\n    token_sha256: \"{hash}\"\n",
        roles.join(", ")
    );
    if let Some(path) = add_to {
        add_user(path, &entry)?;
    }
    if output == Output::Json {
        return print_json(&serde_json::json!({
            "user": name.as_str(),
            "roles": roles,
            "token": token,
            "token_sha256": hash,
            "users_yml_entry": entry,
            "added_to": add_to.map(|p| p.display().to_string()),
        }));
    }
    if let Some(path) = add_to {
        println!("token (give it to {name}; it is shown only once): {token}");
        println!("added {name} to {}", path.display());
        return Ok(());
    }
    println!("token (give it to {name}; it is shown only once): {token}");
    println!();
    println!("add to users.yml:");
    print!("{entry}");
    Ok(())
}

/// Appends a user entry to users.yml: `users: []` (or a file without `users:`) becomes a
/// list first; the result is loaded as the daemon loads it before it replaces the file, so a
/// duplicate name or a broken file is refused and the file is left as it was.
fn add_user(path: &Path, entry: &str) -> CliResult {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Failure::operation(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let list = lines
        .iter()
        .position(|l| l.trim_end() == "users: []" || l.trim_end() == "users:");
    match list {
        Some(i) => lines[i] = "users:".into(),
        None => lines.push("users:".into()),
    }
    let mut updated = lines.join("\n");
    updated.push('\n');
    updated.push_str(entry);
    let temporary = path.with_extension("yml.new");
    std::fs::write(&temporary, &updated)
        .map_err(|e| Failure::operation(format!("cannot write {}: {e}", temporary.display())))?;
    if let Err(e) = crate::config::load_users(&temporary) {
        let _ = std::fs::remove_file(&temporary);
        return Err(Failure::operation(format!(
            "{} was left as it was: with the new entry it would not load: {}",
            path.display(),
            e.to_string().replace(
                &temporary.display().to_string(),
                &path.display().to_string()
            )
        )));
    }
    std::fs::rename(&temporary, path)
        .map_err(|e| Failure::operation(format!("cannot replace {}: {e}", path.display())))
}

pub(in crate::cli) fn validate(
    paths: &[PathBuf],
    dialect: crate::lint::Dialect,
    format: OutputArg,
) -> CliResult {
    let mut all = Vec::new();
    for path in paths {
        let problems = scripts::validate_file(path, dialect);
        if format == OutputArg::Table {
            if problems.iter().all(|p| !p.counts()) {
                println!("{}: ok", path.display());
            }
            for problem in &problems {
                println!("{problem}");
            }
        }
        all.extend(problems);
    }
    match format {
        OutputArg::Json => {
            let list: Vec<serde_json::Value> = all.iter().map(super::lint_output::json).collect();
            print_json(&list)?;
        }
        OutputArg::Sarif => print_json(&super::lint_output::sarif(&all))?,
        OutputArg::Github => {
            for problem in &all {
                println!("{}", super::lint_output::github(problem));
            }
        }
        OutputArg::Table => {}
    }
    let counted = all.iter().filter(|p| p.counts()).count();
    if counted == 0 {
        Ok(())
    } else {
        Err(Failure::operation(format!(
            "{counted} finding(s) in {} script(s)",
            paths.len()
        )))
    }
}

/// One answer `sluice new` needs: the flag's value when given (checked; a bad one is a usage
/// error), else asked at the terminal, showing the choices and re-asking after a bad answer
/// without losing the earlier ones; without a terminal the default, or a usage error naming
/// the flag.
struct Question<'a, T> {
    label: &'a str,
    flag: &'a str,
    choices: Option<&'a str>,
    default: Option<String>,
    parse: &'a dyn Fn(&str) -> Result<T, String>,
}

impl<T> Question<'_, T> {
    fn ask(self, given: Option<String>) -> CliResult<T> {
        let flag = self.flag;
        if let Some(value) = given {
            return (self.parse)(value.trim())
                .map_err(|e| Failure::usage(format!("--{flag}: {e}")));
        }
        let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !terminal {
            return match &self.default {
                Some(d) => (self.parse)(d).map_err(|e| Failure::usage(format!("--{flag}: {e}"))),
                None => Err(Failure::usage(format!(
                    "--{flag} is required when not run at a terminal"
                ))),
            };
        }
        let prompt = match self.choices {
            Some(choices) => format!("{} ({choices})", self.label),
            None => self.label.to_owned(),
        };
        let theme = dialoguer::theme::SimpleTheme;
        let mut input = dialoguer::Input::<String>::with_theme(&theme).with_prompt(prompt);
        if let Some(d) = &self.default {
            input = input.default(d.clone());
        }
        let parse = self.parse;
        let answer = input
            .validate_with(|value: &String| parse(value.trim()).map(|_| ()))
            .interact_text()
            .map_err(terminal_failed)?;
        parse(answer.trim()).map_err(|e| Failure::usage(format!("--{flag}: {e}")))
    }
}

/// A non-empty text field with the server's limits.
fn text_answer(name: &'static str, max: usize) -> impl Fn(&str) -> Result<String, String> {
    move |value: &str| {
        if value.is_empty() {
            return Err(format!("{name} is required"));
        }
        crate::domain::text::field(name, value, max).map_err(|e| e.to_string())?;
        Ok(value.to_owned())
    }
}

pub(in crate::cli) fn new_migration(args: NewArgs, output: Output) -> CliResult {
    let NewArgs {
        kind,
        description,
        risk,
        duration,
        author,
        ticket,
        dir,
    } = args;
    use crate::domain::{MigrationKind, Risk, text};
    let kind = Question {
        label: "Type",
        flag: "type",
        choices: Some("SCHEMA_CHANGE, DATA_MIGRATION, HOTFIX"),
        default: Some("SCHEMA_CHANGE".into()),
        parse: &|v: &str| v.parse::<MigrationKind>().map_err(|e| e.to_string()),
    }
    .ask(kind)?;
    let description = Question {
        label: "Description",
        flag: "description",
        choices: None,
        default: None,
        parse: &text_answer("description", text::DESCRIPTION),
    }
    .ask(description)?;
    let risk = Question {
        label: "Risk",
        flag: "risk",
        choices: Some("LOW, MEDIUM, HIGH"),
        default: Some("LOW".into()),
        parse: &|v: &str| v.parse::<Risk>().map_err(|e| e.to_string()),
    }
    .ask(risk)?;
    let duration = Question {
        label: "Estimated duration",
        flag: "duration",
        choices: Some("30s, 5m, 2h, 1h30m"),
        default: Some("5m".into()),
        parse: &|v: &str| scripts::check_duration(v).map(|()| v.to_owned()),
    }
    .ask(duration)?;
    let author = Question {
        label: "Author",
        flag: "author",
        choices: None,
        default: std::env::var("USER").ok().filter(|u| !u.is_empty()),
        parse: &text_answer("author", text::NAME),
    }
    .ask(author)?;
    let ticket = Question {
        label: "Ticket",
        flag: "ticket",
        choices: None,
        default: None,
        parse: &text_answer("ticket", text::TICKET),
    }
    .ask(ticket)?;
    let spec = scripts::NewMigration {
        kind,
        description,
        risk,
        duration,
        author,
        ticket,
    };
    let timestamp = chrono::Utc::now().format("%Y%m%d_%H%M%S").to_string();
    let (script, rollback) = scripts::write_new(&dir, &spec, &timestamp)
        .map_err(|e| Failure::operation(format!("cannot write the scripts: {e}")))?;
    if output == Output::Json {
        let id = script.file_stem().map(|s| s.to_string_lossy().into_owned());
        return print_json(&serde_json::json!({
            "id": id,
            "script": script.display().to_string(),
            "rollback": rollback.display().to_string(),
        }));
    }
    println!("created {}", script.display());
    println!("created {}", rollback.display());
    Ok(())
}
