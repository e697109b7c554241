//! What an approver reads before signing: a migration's scripts as they are (`show --sql`),
//! what changed since the version approved or applied before (`show --diff`, and a refused
//! approval whose scripts changed), and the `approve` flow that shows them and sends the
//! checksum of exactly what it showed. Never obeys what a script holds: control characters
//! other than newlines and tabs are shown as `\u{..}`.

use super::*;

/// A script for a terminal: its lines kept, tabs kept, every other control character shown.
pub(super) fn printable_script(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Both scripts, each under a comment line naming it (the output is still SQL).
pub(super) fn scripts_text(id: &str, up: &str, down: Option<&str>, checksum: &str) -> String {
    let mut text = format!("-- {id}: up (checksum {checksum})\n");
    text.push_str(&printable_script(up));
    if !up.ends_with('\n') {
        text.push('\n');
    }
    match down {
        Some(down) => {
            text.push_str(&format!("-- {id}: down (the rollback script)\n"));
            text.push_str(&printable_script(down));
            if !down.ends_with('\n') {
                text.push('\n');
            }
        }
        None => text.push_str(&format!("-- {id}: no rollback script\n")),
    }
    text
}

/// A unified diff of each script that differs, from `was` to `now`, its lines made printable.
pub(super) fn scripts_diff(
    was: (&str, Option<&str>),
    now: (&str, Option<&str>),
    was_label: &str,
    now_label: &str,
) -> String {
    let mut out = String::new();
    for (name, old, new) in [
        ("up", was.0, now.0),
        ("down", was.1.unwrap_or(""), now.1.unwrap_or("")),
    ] {
        if old == new {
            continue;
        }
        let diff = similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{name} ({was_label})"),
                &format!("{name} ({now_label})"),
            )
            .to_string();
        for line in diff.lines() {
            out.push_str(&printable(line));
            out.push('\n');
        }
    }
    if out.is_empty() {
        out.push_str("(the scripts are the same)\n");
    }
    out
}

/// "approved in staging; applied in development", or "never approved nor applied".
pub(super) fn where_reviewed(v: &pb::MigrationVersion) -> String {
    let mut parts = Vec::new();
    if !v.approved_in.is_empty() {
        parts.push(format!("approved in {}", v.approved_in.join(", ")));
    }
    if !v.applied_in.is_empty() {
        parts.push(format!("applied in {}", v.applied_in.join(", ")));
    }
    if parts.is_empty() {
        "never approved nor applied".into()
    } else {
        parts.join("; ")
    }
}

/// The version to compare the scripts with: the newest one amendments replaced that was
/// approved or applied in another environment than `environment`, else in any environment.
pub(super) fn reviewed_before<'a>(
    m: &'a pb::Migration,
    environment: Option<&str>,
) -> Option<&'a pb::MigrationVersion> {
    let elsewhere = |v: &&pb::MigrationVersion| {
        v.approved_in
            .iter()
            .chain(&v.applied_in)
            .any(|e| Some(e.as_str()) != environment)
    };
    let anywhere =
        |v: &&pb::MigrationVersion| !v.approved_in.is_empty() || !v.applied_in.is_empty();
    m.previous_versions
        .iter()
        .find(elsewhere)
        .or_else(|| m.previous_versions.iter().find(anywhere))
}

/// What changed from version `v` to the scripts now, introduced by a line saying which
/// version it is; the scripts in full when `v`'s were not kept.
pub(super) fn changes_since(m: &pb::Migration, v: &pb::MigrationVersion, title: &str) -> String {
    match &v.up_sql {
        Some(up) => format!(
            "{title} (checksum {}, {}; replaced at {} by {}) to the scripts now (checksum {}):\n{}",
            v.checksum,
            where_reviewed(v),
            v.replaced_at,
            v.replaced_by,
            m.checksum,
            scripts_diff(
                (up, v.down_sql.as_deref()),
                (&m.up_sql, m.down_sql.as_deref()),
                &short(&v.checksum),
                &short(&m.checksum),
            )
        ),
        None => format!(
            "{title} (checksum {}, {}) was replaced at {} by {}, before Sluice kept the scripts of replaced versions: its text is not stored. The scripts now:\n{}",
            v.checksum,
            where_reviewed(v),
            v.replaced_at,
            v.replaced_by,
            scripts_text(&m.id, &m.up_sql, m.down_sql.as_deref(), &m.checksum)
        ),
    }
}

fn short(checksum: &str) -> String {
    checksum.get(..12).unwrap_or(checksum).to_owned()
}

/// `sluice show ID --sql`: the scripts; `--diff`: what changed since the version approved or
/// applied before. JSON: the migration as the API gives it (its scripts and previous versions
/// are in it).
pub(super) async fn show_scripts(
    client: &mut Client,
    migration_id: &str,
    diff: bool,
    output: Output,
) -> CliResult {
    let m = migration_of(client, migration_id).await?;
    if output == Output::Json {
        return print_json(&m);
    }
    if !diff {
        print!(
            "{}",
            scripts_text(&m.id, &m.up_sql, m.down_sql.as_deref(), &m.checksum)
        );
        return Ok(());
    }
    match reviewed_before(&m, None).or(m.previous_versions.first()) {
        Some(v) => print!("{}", changes_since(&m, v, "changes since the version")),
        None => println!(
            "{}: its scripts have not changed since it was submitted (checksum {}); `sluice show {} --sql` prints them",
            m.id, m.checksum, m.id
        ),
    }
    Ok(())
}

/// A word for a shell: quoted when it holds anything but plain characters.
pub(super) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@=,+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What `approve` is about to sign, for the approver to read: the scripts (or what changed
/// since the version approved or applied before), the findings and the checksum.
fn approval_plan(m: &pb::Migration, environment: &str, role: &str) -> String {
    let mut plan = format!(
        "approve {}@{environment} as {role}: {} ({} risk, by {})\n",
        m.id,
        printable(&m.description),
        m.effective_risk,
        m.author
    );
    match reviewed_before(m, Some(environment)) {
        Some(v) => plan.push_str(&changes_since(m, v, "what changed since the version")),
        None => {
            let reviewed: Vec<&str> = m
                .deployments
                .iter()
                .filter(|d| {
                    d.environment != environment
                        && (d.state == "applied" || d.approvals.iter().any(|a| a.current))
                })
                .map(|d| d.environment.as_str())
                .collect();
            if !reviewed.is_empty() {
                plan.push_str(&format!(
                    "these scripts are the ones approved or applied in {}\n",
                    reviewed.join(", ")
                ));
            }
            plan.push_str(&scripts_text(
                &m.id,
                &m.up_sql,
                m.down_sql.as_deref(),
                &m.checksum,
            ));
        }
    }
    if m.findings.is_empty() {
        plan.push_str("findings: none\n");
    } else {
        plan.push_str("findings:\n");
        for f in &m.findings {
            let script = if f.script.is_empty() { "up" } else { &f.script };
            let ignored = if f.ignored.is_empty() {
                String::new()
            } else {
                format!(" (ignored: {})", printable(&f.ignored))
            };
            plan.push_str(&format!(
                "  {script} line {}: {} {} [{}]{ignored}\n",
                f.line,
                f.risk.to_uppercase(),
                printable(&f.message),
                f.rule
            ));
        }
    }
    plan.push_str(&format!(
        "checksum {}: the approval names it; a change to the scripts after this voids it\n",
        m.checksum
    ));
    plan
}

/// What `approve` needs said before anything is sent.
pub(super) struct ApproveArgs {
    pub(super) migration_id: String,
    pub(super) role: String,
    pub(super) approver: String,
    pub(super) comment: String,
    pub(super) environment: String,
    pub(super) checksum: Option<String>,
}

/// Approves: with `--checksum`, that checksum; without, at a terminal, after showing what is
/// approved and a yes, the checksum of what was shown. `--yes` without `--checksum`, or no
/// terminal, is refused (nothing sent) with the command that names the checksum.
pub(super) async fn approve(
    client: &mut Client,
    args: ApproveArgs,
    output: Output,
    yes: bool,
) -> CliResult {
    let ApproveArgs {
        migration_id,
        role,
        approver,
        comment,
        environment,
        checksum,
    } = args;
    let named = checksum.is_some();
    let checksum = match checksum {
        Some(checksum) => checksum,
        None => {
            let m = migration_of(client, &migration_id).await?;
            let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
            if yes || !terminal {
                let command = format!(
                    "sluice approve {} {} {} {} --environment {} --checksum {}",
                    shell_word(&migration_id),
                    shell_word(&role),
                    shell_word(&approver),
                    shell_word(&comment),
                    shell_word(&environment),
                    m.checksum
                );
                let why = if yes {
                    "--yes does not say which scripts you read"
                } else {
                    "there is no terminal to show the scripts at"
                };
                return Err(Failure::usage(format!(
                    "an approval names the checksum of the scripts its approver read, and {why}: read them (`sluice show {migration_id} --sql`, or `--diff` for what changed since the version approved before), then approve that checksum:\n  {command}"
                )));
            }
            confirm(false, &approval_plan(&m, &environment, &role), Ask::YesNo)?;
            m.checksum
        }
    };
    let request = client.request(pb::ApproveRequest {
        deployment_id: format!("{migration_id}@{environment}"),
        role,
        comment,
        checksum: checksum.clone(),
    })?;
    let answer = client.inner.approve(request).await;
    let deployment = match answer {
        Ok(answer) => answer.into_inner(),
        Err(status) => {
            let failure = client.failed(status);
            // Refused because the scripts changed since the version read: say what changed.
            if named && failure.api_code == Some("conflict") {
                let m = migration_of(client, &migration_id).await?;
                if m.checksum != checksum {
                    let said = match m.previous_versions.iter().find(|v| v.checksum == checksum) {
                        Some(v) => changes_since(&m, v, "what changed since the version you read"),
                        None => format!(
                            "no version of {migration_id} had the checksum {checksum}; the scripts now:\n{}",
                            scripts_text(&m.id, &m.up_sql, m.down_sql.as_deref(), &m.checksum)
                        ),
                    };
                    eprint!("{said}");
                }
            }
            return Err(failure);
        }
    };
    match output {
        Output::Json => print_json(&deployment),
        Output::Table => {
            println!("{}: {}", deployment.id, deployment.state);
            if !deployment.missing_roles.is_empty() || deployment.additional_approvals_needed > 0 {
                println!("  still needed: {}", still_needed(&deployment));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_keeps_its_lines_and_tabs_and_shows_other_control_characters() {
        assert_eq!(
            printable_script("a\tb\nc\r\n\u{1b}[2J"),
            "a\tb\nc\\u{d}\n\\u{1b}[2J"
        );
    }

    #[test]
    fn the_command_to_run_is_quoted_for_a_shell() {
        assert_eq!(shell_word("data_ops"), "data_ops");
        assert_eq!(shell_word("read it"), "'read it'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn the_version_compared_with_is_the_newest_reviewed_elsewhere_first() {
        let version = |checksum: &str, approved: &[&str], applied: &[&str]| pb::MigrationVersion {
            checksum: checksum.into(),
            approved_in: approved.iter().map(|e| e.to_string()).collect(),
            applied_in: applied.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        let m = pb::Migration {
            previous_versions: vec![
                version("c3", &[], &[]),
                version("c2", &["staging"], &[]),
                version("c1", &[], &["development"]),
            ],
            ..Default::default()
        };
        let pick = |env| reviewed_before(&m, env).map(|v| v.checksum.as_str());
        assert_eq!(pick(Some("production")), Some("c2"));
        // Approving in staging: development's applied version is from another environment.
        assert_eq!(pick(Some("staging")), Some("c1"));
        assert_eq!(pick(None), Some("c2"));
        let only_here = pb::Migration {
            previous_versions: vec![version("c2", &["staging"], &[])],
            ..Default::default()
        };
        assert_eq!(
            reviewed_before(&only_here, Some("staging")).map(|v| v.checksum.as_str()),
            Some("c2")
        );
    }
}
