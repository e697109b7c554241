//! The commands that need no daemon: tokens, validate, new (which asks the daemon, when a
//! token is at hand, who the author is and what SQL the targets speak, and works without it).

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

/// One answer `sluice new` needs: the flag's value when given (checked), else asked at the
/// terminal, showing the choices and re-asking after a bad answer; without a terminal the
/// default. What is wrong with the flags is collected first, so that one usage error names
/// every missing or invalid flag at once.
struct Question<'a, T> {
    label: &'a str,
    flag: &'a str,
    choices: Option<&'a str>,
    default: Option<String>,
    parse: &'a dyn Fn(&str) -> Result<T, String>,
}

/// A question's answer from the flags alone, or that it is to be asked at the terminal.
enum Answer<T> {
    Given(T),
    Ask,
}

impl<T> Question<'_, T> {
    /// The answer from the flag or the default; a problem (pushed to `problems`) makes it
    /// None.
    fn answer_from_flags(
        &self,
        given: Option<String>,
        terminal: bool,
        problems: &mut Vec<String>,
    ) -> Option<Answer<T>> {
        let flag = self.flag;
        let parsed = |value: &str, problems: &mut Vec<String>| match (self.parse)(value.trim()) {
            Ok(value) => Some(Answer::Given(value)),
            Err(e) => {
                problems.push(format!("--{flag}: {e}"));
                None
            }
        };
        match (given, terminal, &self.default) {
            (Some(value), _, _) => parsed(&value, problems),
            (None, true, _) => Some(Answer::Ask),
            (None, false, Some(default)) => parsed(default, problems),
            (None, false, None) => {
                problems.push(format!("--{flag} is required when not run at a terminal"));
                None
            }
        }
    }

    /// The answer, asked at the terminal when the flags left it open.
    fn answer(self, answer: Answer<T>) -> CliResult<T> {
        if let Answer::Given(value) = answer {
            return Ok(value);
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
        parse(answer.trim()).map_err(|e| Failure::usage(format!("--{}: {e}", self.flag)))
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

/// What the daemon tells `new`, when a token is at hand and it answers: who the token's user
/// is, and the dialect of its environments' databases.
struct FromDaemon {
    user: Option<String>,
    dialect: Option<(scripts::TemplateDialect, String)>,
}

/// Asks the daemon (within a few seconds) who the token's user is and what its targets speak.
/// Without a token nothing is asked; a daemon that does not answer is said on stderr and the
/// offline defaults are used: `new` works without a daemon.
async fn ask_daemon(
    connection: (Option<String>, Option<String>, Option<String>),
    need_user: bool,
    need_dialect: bool,
) -> FromDaemon {
    let nothing = FromDaemon {
        user: None,
        dialect: None,
    };
    if !need_user && !need_dialect {
        return nothing;
    }
    let (server, token, context) = connection;
    let Ok((server, Some(token))) = super::super::context::resolve(server, token, context) else {
        return nothing;
    };
    let asked = async {
        let mut client = Client::connect(&server, Some(token)).await?;
        let user = if need_user {
            Some(super::who_am_i(&mut client).await?.name)
        } else {
            None
        };
        let dialect = if need_dialect {
            let request = client.request(pb::ListEnvironmentsRequest {})?;
            let environments = client
                .inner
                .list_environments(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner()
                .environments;
            dialect_of(&environments)
        } else {
            None
        };
        CliResult::Ok(FromDaemon { user, dialect })
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failure)) => {
            eprintln!(
                "note: the daemon at {server} did not answer ({}): the author defaults to $USER and the template to sqlite",
                failure.message
            );
            nothing
        }
        Err(_) => {
            eprintln!(
                "note: the daemon at {server} did not answer within 5 s: the author defaults to $USER and the template to sqlite"
            );
            nothing
        }
    }
}

/// The template dialect for the daemon's environments, with why: the one they all speak, else
/// the last environment's of the promotion order (the list's order), where the script matters
/// most.
fn dialect_of(
    environments: &[pb::EnvironmentStatus],
) -> Option<(scripts::TemplateDialect, String)> {
    let known: Vec<(&str, scripts::TemplateDialect)> = environments
        .iter()
        .filter_map(|e| {
            Some((
                e.name.as_str(),
                scripts::TemplateDialect::of_url(&e.database)?,
            ))
        })
        .collect();
    let (last_name, last) = *known.last()?;
    if known.iter().all(|(_, d)| *d == last) {
        Some((last, "the daemon's environments".into()))
    } else {
        Some((
            last,
            format!(
                "{last_name}'s, the last environment: the environments differ; --dialect chooses"
            ),
        ))
    }
}

pub(in crate::cli) async fn new_migration(
    args: NewArgs,
    connection: (Option<String>, Option<String>, Option<String>),
    output: Output,
) -> CliResult {
    let NewArgs {
        kind,
        description,
        risk,
        duration,
        author,
        ticket,
        dir,
        dialect,
    } = args;
    use crate::domain::{MigrationKind, Risk, text};
    let daemon = ask_daemon(connection, author.is_none(), dialect.is_none()).await;
    let (dialect, dialect_from) = match (dialect, daemon.dialect) {
        (Some(dialect), _) => (dialect, "--dialect".to_owned()),
        (None, Some((dialect, from))) => (dialect, from),
        (None, None) => (
            scripts::TemplateDialect::Sqlite,
            "the default: the shipped environments.yml targets SQLite files; --dialect chooses"
                .to_owned(),
        ),
    };
    let author_default = daemon
        .user
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()));
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let kind_question = Question {
        label: "Type",
        flag: "type",
        choices: Some("SCHEMA_CHANGE, DATA_MIGRATION, HOTFIX"),
        default: Some("SCHEMA_CHANGE".into()),
        parse: &|v: &str| v.parse::<MigrationKind>().map_err(|e| e.to_string()),
    };
    let description_question = Question {
        label: "Description",
        flag: "description",
        choices: None,
        default: None,
        parse: &text_answer("description", text::DESCRIPTION),
    };
    let risk_question = Question {
        label: "Risk",
        flag: "risk",
        choices: Some("LOW, MEDIUM, HIGH"),
        default: Some("LOW".into()),
        parse: &|v: &str| v.parse::<Risk>().map_err(|e| e.to_string()),
    };
    let duration_question = Question {
        label: "Estimated duration",
        flag: "duration",
        choices: Some("30s, 5m, 2h, 1h30m"),
        default: Some("5m".into()),
        parse: &|v: &str| scripts::check_duration(v).map(|()| v.to_owned()),
    };
    let author_question = Question {
        label: "Author",
        flag: "author",
        choices: None,
        default: author_default,
        parse: &text_answer("author", text::NAME),
    };
    let ticket_question = Question {
        label: "Ticket",
        flag: "ticket",
        choices: None,
        default: None,
        parse: &text_answer("ticket", text::TICKET),
    };
    // Every flag is checked before anything is asked or refused.
    let mut problems = Vec::new();
    let kind = kind_question.answer_from_flags(kind, terminal, &mut problems);
    let description = description_question.answer_from_flags(description, terminal, &mut problems);
    let risk = risk_question.answer_from_flags(risk, terminal, &mut problems);
    let duration = duration_question.answer_from_flags(duration, terminal, &mut problems);
    let author = author_question.answer_from_flags(author, terminal, &mut problems);
    let ticket = ticket_question.answer_from_flags(ticket, terminal, &mut problems);
    let (Some(kind), Some(description), Some(risk), Some(duration), Some(author), Some(ticket)) =
        (kind, description, risk, duration, author, ticket)
    else {
        return Err(Failure::usage(match problems.as_slice() {
            [one] => one.clone(),
            several => format!(
                "{} flags are missing or invalid:\n  {}",
                several.len(),
                several.join("\n  ")
            ),
        }));
    };
    let spec = scripts::NewMigration {
        kind: kind_question.answer(kind)?,
        description: description_question.answer(description)?,
        risk: risk_question.answer(risk)?,
        duration: duration_question.answer(duration)?,
        author: author_question.answer(author)?,
        ticket: ticket_question.answer(ticket)?,
        dialect,
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
            "author": spec.author,
            "dialect": dialect.as_str(),
        }));
    }
    println!("created {}", script.display());
    println!("created {}", rollback.display());
    println!(
        "template in {} SQL ({dialect_from}); check it with: sluice validate --dialect {} {}",
        dialect.as_str(),
        dialect.as_str(),
        script.display()
    );
    Ok(())
}
